import Foundation
import NBD
import Testing
import TestSupport
@testable import ZramDaemon

/// The daemon's TLS settings (issue 13): flags and config keys as nbdkit has them, the rule that
/// a TCP address beyond loopback is served only over TLS, and the daemon with real clients.
@Suite("TLS in the daemon")
struct TLSDaemonTests {
    func settings(_ flags: [String]) throws -> DaemonSettings {
        try Serve.parse(["--size", "1G"] + flags).settings(ramMiB: 8000).settings
    }

    @Test("flags and config keys")
    func parsing() throws {
        #expect(try settings([]).tls.effectiveMode == .off)
        let s = try settings(["--tls-psk", "/k.psk", "--tls-identities", "alice,bob"])
        #expect(s.tls.effectiveMode == .on, "credentials alone turn TLS on, like nbdkit")
        #expect(s.devices[0].tlsIdentities == ["alice", "bob"])
        let x = try settings(["--tls=require", "--tls-certificates", "/pki", "--tls-verify-peer"]).tls
        #expect(x.mode == .require && x.certificates == "/pki" && x.verifyPeer)

        let c = try ConfigFile.parse([("c.conf", """
            [zramnbd]
            tls = require
            tls-psk = /etc/zramnbd/keys.psk
            [zram0]
            zram-size = 1024
            listen = 0.0.0.0:10809
            tls-identities = alice bob
            """)], ramMiB: 1000)
        #expect(c.warnings.isEmpty, "\(c.warnings)")
        #expect(c.settings.tls.mode == .require && c.settings.tls.psk == "/etc/zramnbd/keys.psk")
        #expect(c.settings.devices[0].tlsIdentities == ["alice", "bob"])
    }

    @Test("TCP beyond loopback requires TLS unless --tls=off")
    func nonLoopback() throws {
        var t = TLSSettings()
        #expect(try t.tcpMode("127.0.0.1:1") == .off && t.tcpMode("[::1]:1") == .off && t.tcpMode("localhost:1") == .off)
        #expect(throws: DaemonError.self) { try t.tcpMode(":10809") }
        t.psk = "/k"
        #expect(try t.tcpMode("127.0.0.1:1") == .on)
        #expect(try t.tcpMode("0.0.0.0:1") == .require && t.tcpMode("192.0.2.1:1") == .require && t.tcpMode("[::]:1") == .require)
        t.mode = .off
        #expect(try t.tcpMode("0.0.0.0:1") == .off, "an explicit --tls=off is obeyed")
        #expect(t.inTheClearBeyondLoopback("0.0.0.0:1") && !t.inTheClearBeyondLoopback("127.0.0.1:1"))
    }

    @Test("mistakes are refused with one line naming them", arguments: [
        (["--listen", ":10809"], "listen :10809 is not loopback, so it is served only over TLS"),
        (["--tls=require"], "--tls=require needs --tls-certificates DIR or --tls-psk FILE"),
        (["--tls=on"], "--tls=on needs"),
        (["--tls=maybe"], "invalid --tls 'maybe': expected off, on or require"),
        (["--tls-verify-peer", "--tls-psk", "/k"], "--tls-verify-peer needs --tls-certificates"),
        (["--tls-psk", "/k", "--tls-certificates", "/d"], "--tls-certificates and --tls-psk cannot be combined"),
        (["--tls-identities", "alice"], "zram0: tls-identities needs TLS"),
        (["--tls-identities", ","], "expected one or more names"),
    ])
    func refused(_ flags: [String], _ message: String) throws {
        let cmd = try Serve.parse(["--size", "1G"] + flags)
        do {
            _ = try cmd.settings(ramMiB: 8000)
            Issue.record("accepted: \(flags)")
        } catch {
            #expect(error.description.hasPrefix(message), "\(error)")
            #expect(error.exitStatus == 2)
        }
    }

    @Test("config mistakes are refused", arguments: [
        ("[zramnbd]\ntls = yes\n", "b.conf:2: tls: expected off, on or require, got 'yes'"),
        ("[zramnbd]\ntls-verify-peer = maybe\n", "b.conf:2: tls-verify-peer: expected yes or no"),
        ("[zram0]\ntls-identities =\n", "b.conf:2: tls-identities: expected one or more names"),
    ])
    func configRefused(_ text: String, _ message: String) { expectConfigRefused(text, message) }

    @Test("a key file that cannot be used stops the start, and --check, with its name")
    func badKeyFiles() throws {
        let dir = TempDir()
        dir.write("bad.psk", "alice:not-hex\n")
        for (flags, message) in [(["--tls-psk", dir.file("bad.psk")], "bad.psk"), (["--tls-psk", dir.file("none.psk")], "none.psk"),
                                 (["--tls-certificates", dir.file("nothing")], "nothing")] {
            let r = try runProcess([zramnbdBinary, "serve", "--check", "--size", "1G"] + flags, in: dir)
            #expect(r.status != 0)
            #expect(r.stderr.contains(message) && r.stderr.split(separator: "\n").count == 1, "\(r.stderr)")
        }
    }

    /// The daemon on 0.0.0.0 with a PSK file: TCP requires TLS (no --tls given), the unix socket
    /// lets clients choose; an identity-limited export is refused to other users.
    @Test("real clients against the daemon: nbds:// and nbds+unix:// with PSK")
    func daemonWithPSK() throws {
        let dir = TempDir()
        let keys = try TLSFixture.make(in: dir)
        let port = try freeTCPPort()
        let d = try RunningDaemon(dir, extra: ["--listen", "0.0.0.0:\(port)", "--tls-psk", keys.serverPSK, "--tls-identities", "alice"])
        defer { _ = d.stop() }
        #expect(d.process.stderr.contains("0.0.0.0:\(port): TLS required (not loopback)"), "\(d.process.stderr)")
        let tcp = "nbds://alice@127.0.0.1:\(port)/zram0?tls-psk-file=\(keys.alicePSK)"
        let payload = Data((0..<(1 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ $0 >> 12) })
        let source = dir.file("in.img")
        #expect(FileManager.default.createFile(atPath: source, contents: payload))
        let put = try runProcess(["/usr/bin/nbdcopy", source, tcp], in: dir, tag: "put")
        #expect(put.status == 0, "\(put.stderr)")
        let info = try runProcess(["/usr/bin/nbdinfo", "--json", tcp], in: dir, tag: "info")
        #expect(info.status == 0 && info.stdout.contains("\"TLS\": true"), "\(info.stdout)\(info.stderr)")
        #expect(try runProcess(["/usr/bin/nbdinfo", "nbd://127.0.0.1:\(port)/zram0"], in: dir, tag: "clear").status != 0,
                "in the clear over TCP")
        let unix = "nbds+unix://alice@/zram0?socket=\(d.socket)&tls-psk-file=\(keys.alicePSK)"
        let back = dir.file("out.img")
        let get = try runProcess(["/usr/bin/nbdcopy", unix, back], in: dir, tag: "get")
        #expect(get.status == 0, "\(get.stderr)")
        #expect((try? Data(contentsOf: URL(fileURLWithPath: back)).prefix(1 << 20)) == payload)
        let bob = "nbds+unix://bob@/zram0?socket=\(d.socket)&tls-psk-file=\(keys.bobPSK)"
        #expect(try runProcess(["/usr/bin/nbdinfo", bob], in: dir, tag: "bob").status != 0, "the export is alice's")
        #expect(try runProcess(["/usr/bin/nbdinfo", d.uri], in: dir, tag: "plain-unix").status != 0, "alice's export needs TLS")
        #expect(try d.ctl(["show"]).stdout.contains("tls_identities"))
    }

    @Test("ctl add on a daemon without credentials refuses a non-loopback address, and keeps running")
    func addRefusesNonLoopback() throws {
        let dir = TempDir()
        let d = try RunningDaemon(dir)
        defer { _ = d.stop() }
        let port = try freeTCPPort()
        let add = try d.zramnbd(["ctl", "--control-socket", d.control, "zram7", "add", "size=8M", "listen=0.0.0.0:\(port)",
                                 "socket=\(dir.file("z7.sock"))", "stats-dir=\(dir.file("z7"))"], tag: "add")
        #expect(!add.succeeded)
        #expect(add.stderr.contains("not loopback"), "\(add.stderr)")
        #expect(try d.ctl(["show"]).succeeded)
    }
}
