import Testing
import TestSupport

/// The config and control fuzz targets (scripts/fuzz.sh --long) build from a subset of the
/// daemon's sources; a change that pulls a new module into a parser once broke their build
/// unnoticed. Each runs 20,000 inputs here, so the build and a first pass stay checked.
@Suite struct FuzzTargetTests {
    @Test(.timeLimit(.minutes(30)))   // 50 s alone; 5+ min beside the qemu guests
    func configAndControlTargetsBuildAndRun() throws {
        let packageRoot = "/" + "\(#filePath)".split(separator: "/").dropLast(3).joined(separator: "/")
        let dir = TempDir()
        let result = try Subprocess.run(["/bin/bash", packageRoot + "/scripts/fuzz.sh", "--long", "20000", "config", "control"],
                                        outputPrefix: dir.path + "/fuzz",
                                        environment: ["FUZZ_OUT": dir.path + "/out"], timeout: .seconds(580))
        print(result.stderr.split(separator: "\n").suffix(4).joined(separator: "\n"))
        #expect(result.succeeded, "fuzz.sh: \(result.termination)\n\(result.stderr.suffix(3000))")
        #expect(result.stderr.contains("config: 20000 inputs, no crash"))
        #expect(result.stderr.contains("control: 20000 inputs, no crash"))
    }
}
