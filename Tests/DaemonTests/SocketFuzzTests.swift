import Testing
import TestSupport

/// The built daemon under scripts/socket-fuzz.py for a few seconds: mutated handshakes and
/// requests over its NBD socket, abrupt closes, hanging connections; the daemon must stay up,
/// keep its stats files current and keep every pattern the libnbd reference client wrote.
@Suite struct SocketFuzzTests {
    // The script has its own 90 s limit (Subprocess.run); this one only catches a test that never
    // ends. It is long because the test's completion waits for a free test thread, which the
    // kernel-guest tests hold for minutes on a 2-core machine (seen: done at 55 s, ended at 603 s).
    @Test(.timeLimit(.minutes(30)))
    func daemonSurvivesMutatedTrafficOverItsSocket() throws {
        let dir = TempDir()
        defer { dir.remove() }
        let result = try Subprocess.run(["/usr/bin/python3", packageRoot + "/scripts/socket-fuzz.py",
                                         "--binary", zramnbdBinary, "--duration", "12"],
                                        outputPrefix: dir.file("socket-fuzz"), timeout: .seconds(90))
        // 77: python3-libnbd is missing (install-deps.sh installs it); the script says so.
        if result.termination == .exited(77) { print("skipping: \(result.stdout)"); return }
        print(result.stdout.split(separator: "\n").suffix(3).joined(separator: "\n"))
        #expect(result.succeeded, "socket-fuzz.py: \(result.termination)\n\(result.stdout.suffix(4000))\n\(result.stderr.suffix(2000))")
    }
}
