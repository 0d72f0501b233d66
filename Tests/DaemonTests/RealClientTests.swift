import Testing
#if canImport(Glibc)
import Glibc
#endif
import TestSupport
@testable import ZramDaemon

/// The built daemon, driven by the real clients people use: libnbd (conformance suite), qemu-io and
/// qemu-img, fio, nbdcopy, nbdfuse + loop + ext4, nbd 3.24's nbd-tester-client, and the Linux kernel's
/// own NBD client in a qemu guest (ext4, discard, swap). Each suite prints a PASS/FAIL line per check.
@Suite struct RealClientTests {
    static let packageRoot = "/" + "\(#filePath)".split(separator: "/").dropLast(3).joined(separator: "/")

    /// Runs a suite script against a fresh daemon and fails with its FAIL lines.
    private func runSuite(_ argv: (RunningDaemon) -> [String], size: String = "256M", extra: [String] = [],
                          environment: [String: String] = [:], timeout: Duration = .seconds(300)) throws {
        let dir = TempDir()
        defer { dir.remove() }
        let daemon = try RunningDaemon(dir, size: size, extra: extra + ["-v"])
        let result = try Subprocess.run(argv(daemon), outputPrefix: dir.file("suite"), environment: environment,
                                        timeout: timeout)
        let lines = result.stdout.split(separator: "\n")
        print(lines.filter { $0.hasPrefix("SKIP") || $0.hasPrefix("FAIL") }.joined(separator: "\n"))
        print(lines.last.map(String.init) ?? "(no output)")
        #expect(result.succeeded, """
            \(argv(daemon).joined(separator: " ")): \(result.termination)
            \(lines.filter { $0.hasPrefix("FAIL") }.joined(separator: "\n"))
            \(result.stderr.suffix(2000))
            daemon stderr: \(daemon.process.stderr.suffix(2000))
            """)
        let stopped = daemon.stop()
        #expect(stopped == .exited(0), "the daemon survived the suite and stops cleanly: \(daemon.process.stderr.suffix(3000))")
    }

    @Test func libnbdConformanceSuite() throws {
        try runSuite({ ["/usr/bin/python3", Self.packageRoot + "/Tests/conformance/nbd_conformance.py",
                        "--unix", $0.socket, "--size", "\(256 << 20)", "--profile", "zramnbd"] })
    }

    @Test func libnbdConformanceSuiteReadOnly() throws {
        try runSuite({ ["/usr/bin/python3", Self.packageRoot + "/Tests/conformance/nbd_conformance.py",
                        "--unix", $0.socket, "--size", "\(256 << 20)", "--read-only"] },
                     extra: ["--read-only"])
    }

    @Test func qemuFioNbdcopyNbdfuseExt4() throws {
        try runSuite({ ["/bin/bash", Self.packageRoot + "/scripts/client-suite.sh", $0.socket, "--quick"] })
    }

    @Test func nbdTesterClient() throws {
        try runSuite({ ["/bin/bash", Self.packageRoot + "/scripts/nbd-tester-client.sh", $0.socket, "zram0"] },
                     environment: ["SKIP_IF_NO_SOURCE": "1"], timeout: .seconds(400))
    }

    /// The primary use case: the kernel's nbd.ko (Debian 12's kernel in qemu) with ext4, discards and
    /// swap on our export. Skips with a reason where ../shared or qemu is absent (scripts/kernel-nbd.sh).
    @Test(.timeLimit(.minutes(30)))
    func linuxKernelClientFilesystemTrimAndSwap() throws {
        // qemu's chardev connects to the socket when the VM starts; the guest's nbd-client speaks
        // through it only after boot (10-20 s under TCG): longer than the default handshake limit.
        try runSuite({ ["/bin/bash", Self.packageRoot + "/scripts/kernel-nbd.sh", $0.socket, "fs,trim,swap"] },
                     size: "1G", extra: ["--handshake-limit", "0"],
                     environment: ["KNBD_EXPORT": "zram0", "KNBD_S_FS_RAND_FILES": "2", "KNBD_S_FS_TREE_COPIES": "1",
                                   "KNBD_S_SWAP_DISCARD": "1", "KNBD_TIMEOUT": "900"],
                     timeout: .seconds(960))
    }

    /// Swap from the kernel client while the daemon writes idle pages back to a file on its own
    /// (--writeback-idle-after 2): memfill's pages go out to swap, to the backing file, and back.
    @Test(.timeLimit(.minutes(30)))
    func linuxKernelClientSwapWithWriteback() throws {
        let dir = TempDir()
        defer { dir.remove() }
        let daemon = try RunningDaemon(dir, size: "1G", extra: ["-v", "--handshake-limit", "0", "--backing-dev", dir.file("backing"),
                                                                 "--writeback-idle-after", "2"])
        let result = try Subprocess.run(["/bin/bash", Self.packageRoot + "/scripts/kernel-nbd.sh", daemon.socket,
                                         Self.packageRoot + "/scripts/kernel-nbd/swap-host.sh"],
                                        outputPrefix: dir.file("suite"),
                                        environment: ["KNBD_EXPORT": "zram0", "KNBD_TIMEOUT": "800"], timeout: .seconds(840))
        let lines = result.stdout.split(separator: "\n")
        print(lines.last.map(String.init) ?? "(no output)")
        #expect(result.succeeded, "\(lines.filter { $0.hasPrefix("FAIL") })\n\(result.stderr.suffix(2000))\n\(daemon.process.stderr.suffix(2000))")
        if result.stdout.contains("SKIP") { return }
        let show = try daemon.ctl(["show"]).stdout
        print(show.split(separator: "\n").filter { $0.hasPrefix("bd_") }.joined(separator: " "))
        let bd = { (k: String) in show.split(separator: "\n").first { $0.hasPrefix(k + "=") }.flatMap { UInt64($0.dropFirst(k.count + 1)) } ?? 0 }
        #expect(bd("bd_writes") > 1000 && bd("bd_reads") > 1000, "\(show)")   // pages went to the file and came back
        #expect(daemon.stop() == .exited(0))
    }

    /// nbd-client's own TLS (GnuTLS, its userspace proxy in front of nbd.ko) against --tls=require
    /// with verified client certificates and an export limited to alice: ext4 on top.
    @Test(.timeLimit(.minutes(30)))
    func linuxKernelClientOverTLS() throws {
        let keysDir = TempDir()
        defer { keysDir.remove() }
        let keys = try TLSFixture.make(in: keysDir)
        // The harness puts only scenario scripts into the guest, and runs them after nbd-client
        // has connected: each key file goes in as one, "exit 0" ahead of the PEM block (GnuTLS
        // looks for the BEGIN line and skips what precedes it).
        var scenarios: [String] = []
        for (file, name) in [("ca-cert.pem", "tls-ca"), ("client-cert.pem", "tls-cert"), ("client-key.pem", "tls-key")] {
            let pem = try String(contentsOfFile: keys.aliceDirectory + "/" + file, encoding: .utf8)
            keysDir.write(name + ".sh", "exit 0\n" + pem)
            scenarios.append(keysDir.file(name + ".sh"))
        }
        let guestKeys = "/knbd/scenarios"
        try runSuite({ ["/bin/bash", Self.packageRoot + "/scripts/kernel-nbd.sh", $0.socket, (scenarios + ["fs"]).joined(separator: ",")] },
                     size: "512M",
                     extra: ["--handshake-limit", "0", "--tls=require", "--tls-certificates", keys.serverDirectory,
                             "--tls-verify-peer", "--tls-identities", "alice"],
                     environment: ["KNBD_EXPORT": "zram0", "KNBD_S_FS_RAND_FILES": "1", "KNBD_S_FS_TREE_COPIES": "1",
                                   "KNBD_S_FS_TEXT_MB": "16", "KNBD_TIMEOUT": "300",
                                   "KNBD_CLIENT_OPTS": "-b 4096 -cacertfile \(guestKeys)/tls-ca.sh -certfile \(guestKeys)/tls-cert.sh "
                                       + "-keyfile \(guestKeys)/tls-key.sh -tlshostname localhost"],
                     timeout: .seconds(360))
    }
}
