import Testing
import TestSupport

/// The libFuzzer target for the handshake and request parsers runs for a bounded time on every test
/// run (scripts/fuzz.sh); a crash, hang or leak it finds fails the suite with the reproducer's path.
@Suite struct FuzzTests {
    @Test(.timeLimit(.minutes(30)))   // 30 s of fuzzing; the ASan build is slow beside the qemu guests, and the
    // test finishes only when a test thread is free (the qemu guests hold them for minutes)
    func wireParsersSurviveThirtySecondsOfFuzzing() throws {
        let packageRoot = "/" + "\(#filePath)".split(separator: "/").dropLast(3).joined(separator: "/")
        let dir = TempDir()
        let result = try Subprocess.run(["/bin/bash", packageRoot + "/scripts/fuzz.sh", "30"],
                                        outputPrefix: dir.path + "/fuzz",
                                        environment: ["FUZZ_OUT": dir.path + "/out"], timeout: .seconds(580))
        print(result.stderr.split(separator: "\n").suffix(4).joined(separator: "\n"))
        #expect(result.succeeded, "fuzz.sh: \(result.termination)\n\(result.stderr.suffix(3000))")
    }
}
