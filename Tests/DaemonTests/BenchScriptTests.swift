import Testing
import TestSupport

/// scripts/bench.sh --quick runs on every test run so the benchmark never rots. Its numbers mean
/// nothing here (sub-second runs); it fails only when something broke, e.g. a read-back mismatch.
@Suite struct BenchScriptTests {
    @Test(.timeLimit(.minutes(30)))   // 1-2 min alone; the suite runs four qemu guests beside it
    func quickBenchmarkRunsAndReportsEveryTarget() throws {
        let root = "/" + "\(#filePath)".split(separator: "/").dropLast(3).joined(separator: "/")
        let dir = TempDir()
        defer { dir.remove() }
        let r = try Subprocess.run(["/bin/bash", root + "/scripts/bench.sh", "--quick", "--no-build",
                                    "--bin", root + "/.build/debug/zramnbd", "--out", dir.file("bench")],
                                   outputPrefix: dir.file("bench-run"), timeout: .seconds(580))
        #expect(r.succeeded, "bench.sh --quick: \(r.termination)\n\(r.stdout.suffix(2000))\n\(r.stderr.suffix(2000))")
        let report = Subprocess.readFile(dir.file("bench/report.txt"))
        #expect(report.contains("Targets of issue 6"), "report.txt: \(report.prefix(500))")
    }
}
