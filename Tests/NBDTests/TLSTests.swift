import Foundation
import Glibc
import NBD
import TLS
import Testing
import TestSupport

/// STARTTLS with real clients and real key files: libnbd's nbdinfo and nbdcopy, qemu-io with
/// qemu's TLS objects; PSK and X.509, refusals of the wrong key, of no key, of the wrong peer.
@Suite struct TLSTests {
    let keys: TLSFixture
    let dir = TempDir()

    init() throws { keys = try TLSFixture.make(in: dir) }

    func pskServer(_ mode: TLSMode, exports: [Export] = [], allowedPeers: [String]? = nil, tcp: Bool = false,
                   handshakeLimit: Duration = .seconds(10)) throws -> TestServer {
        let psk = try GnuTLSServer.psk(file: keys.serverPSK)
        return try TestServer(exports: exports, handshakeLimit: handshakeLimit, tcp: tcp, tls: (mode, psk), allowedPeers: allowedPeers)
    }

    func pskURI(_ s: TestServer, user: String = "alice", file: String? = nil, export: String = "disk") -> String {
        "nbds+unix://\(user)@/\(export)?socket=\(s.socketPath)&tls-psk-file=\(file ?? keys.alicePSK)"
    }

    @Test func pskClientsGetTLSAndTheirDataBack() throws {
        let s = try pskServer(.require)
        let info = try run(["nbdinfo", "--json", pskURI(s)], in: s.dir, "info")
        #expect(info.succeeded, "\(info.stderr)")
        let json = try JSONSerialization.jsonObject(with: Data(info.stdout.utf8)) as? [String: Any]
        #expect(json?["TLS"] as? Bool == true)
        #expect(json?["structured"] as? Bool == true, "structured replies are negotiated again after STARTTLS")

        let source = s.dir.file("in.img"), back = s.dir.file("out.img")
        #expect(FileManager.default.createFile(atPath: source, contents: Data(pattern(4 << 20, seed: 21))))
        let put = try run(["nbdcopy", source, pskURI(s)], in: s.dir, "put")
        #expect(put.succeeded, "\(put.stderr)")
        let get = try run(["nbdcopy", pskURI(s), back], in: s.dir, "get")
        #expect(get.succeeded, "\(get.stderr)")
        let copied = try Data(contentsOf: URL(fileURLWithPath: back))
        #expect(copied.prefix(4 << 20) == Data(pattern(4 << 20, seed: 21)))
        #expect(copied.count == 16 << 20)
    }

    @Test func requireRefusesClientsInTheClearAndWrongKeys() throws {
        let s = try pskServer(.require)
        #expect(try !run(["nbdinfo", s.uri], in: s.dir, "plain").succeeded)
        // libnbd shows its own errno text, so the reply itself is checked on the wire.
        let raw = try RawClient(unixPath: s.socketPath)
        try raw.hello()
        for option in [OptionCode.list, .info, .go] {
            try raw.option(option, option == .list ? [] : infoPayload("disk"))
            #expect(try raw.optionReplies().map(\.type) == [OptionReplyType.errTLSRequired.rawValue], "\(option)")
        }
        let wrong = try run(["nbdinfo", pskURI(s, file: keys.wrongAlicePSK)], in: s.dir, "wrong")
        #expect(!wrong.succeeded)
        // A user the server does not know is refused as well.
        dir.write("mallory.psk", "mallory:" + String(repeating: "cd", count: 32) + "\n")
        let stranger = try run(["nbdinfo", pskURI(s, user: "mallory", file: dir.file("mallory.psk"))], in: s.dir, "stranger")
        #expect(!stranger.succeeded)
        // Nothing above broke the server for the next client.
        #expect(try run(["nbdinfo", pskURI(s)], in: s.dir, "after").succeeded)
    }

    @Test func onLetsClientsChooseTLSOrNot() throws {
        let s = try pskServer(.on)
        #expect(try run(["nbdinfo", s.uri], in: s.dir, "plain").succeeded)
        let tls = try run(["nbdinfo", "--json", pskURI(s)], in: s.dir, "tls")
        #expect(tls.succeeded, "\(tls.stderr)")
        #expect(tls.stdout.contains("\"TLS\": true"), "\(tls.stdout)")
    }

    @Test func offAnswersStartTLSWithPolicyAndServesInTheClear() throws {
        let s = try TestServer()
        let tls = try run(["nbdinfo", pskURI(s)], in: s.dir, "tls")
        #expect(!tls.succeeded, "libnbd's default tls=require must fail against a server without TLS")
        #expect(try run(["nbdinfo", s.uri], in: s.dir, "plain").succeeded)
    }

    @Test func certificatesWithVerifiedClients() throws {
        let x509 = try GnuTLSServer.certificates(directory: keys.serverDirectory, verifyPeer: true)
        let log = LogLines()
        let s = try TestServer(tcp: true, logLevel: .debug, logSink: log.sink, tls: (.require, x509), allowedPeers: ["alice"])
        func uri(_ clientDir: String) -> String { "nbds://localhost:\(s.tcpPort)/disk?tls-certificates=\(clientDir)" }
        let alice = try run(["nbdinfo", "--json", uri(keys.aliceDirectory)], in: s.dir, "alice")
        #expect(alice.succeeded, "\(alice.stderr)")
        #expect(alice.stdout.contains("\"TLS\": true"))
        // Bob's certificate is valid, but the export is alice's (CN match).
        #expect(try !run(["nbdinfo", uri(keys.bobDirectory)], in: s.dir, "bob").succeeded)
        #expect(!log.matching("not served to this peer").isEmpty, "bob's refusal is logged with its reason")
        // Without a certificate the handshake itself fails.
        let anonymous = try run(["nbdinfo", uri(keys.anonymousDirectory)], in: s.dir, "anonymous")
        #expect(!anonymous.succeeded)
    }

    @Test func qemuWithPSKAndX509Objects() throws {
        let psk = try pskServer(.require, tcp: true)
        let withPSK = try run(["qemu-io", "--object", "tls-creds-psk,id=tls0,endpoint=client,dir=\(keys.alicePSKDirectory),username=alice",
                               "--image-opts", "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=\(psk.tcpPort),export=disk,tls-creds=tls0",
                               "-c", "write -P 0x5a 0 1M", "-c", "read -P 0x5a 0 1M", "-c", "discard 0 64k", "-c", "read -P 0 0 64k"],
                              in: psk.dir, "qemu-psk")
        #expect(withPSK.succeeded && !withPSK.stdout.contains("fail"), "\(withPSK.stdout)\(withPSK.stderr)")
        #expect(withPSK.stdout.components(separatedBy: "read ").count - 1 == 2, "\(withPSK.stdout)")

        let x509 = try GnuTLSServer.certificates(directory: keys.serverDirectory, verifyPeer: false)
        let certs = try TestServer(tcp: true, tls: (.require, x509))
        let withX509 = try run(["qemu-io", "--object", "tls-creds-x509,id=tls0,endpoint=client,dir=\(keys.aliceDirectory)",
                                "--image-opts", "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=\(certs.tcpPort),export=disk,tls-creds=tls0",
                                "-c", "write -P 0xa5 1M 1M", "-c", "read -P 0xa5 1M 1M"],
                               in: certs.dir, "qemu-x509")
        #expect(withX509.succeeded && !withX509.stdout.contains("fail"), "\(withX509.stdout)\(withX509.stderr)")
    }

    @Test func anExportForNamedPeersIsHiddenFromOthers() throws {
        let open = Export(name: "open", backend: try MemoryBackend(size: 1 << 20))
        let s = try pskServer(.on, exports: [open], allowedPeers: ["alice"])
        func list(_ uri: String, _ name: String) throws -> [String] {
            let r = try run(["nbdinfo", "--list", "--json", uri], in: s.dir, name)
            #expect(r.succeeded, "\(r.stderr)")
            let json = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]
            return (json?["exports"] as? [[String: Any]] ?? []).compactMap { $0["export-name"] as? String }
        }
        #expect(try list(pskURI(s), "alice") == ["disk", "open"])
        #expect(try list(pskURI(s, user: "bob", file: keys.bobPSK), "bob") == ["open"])
        #expect(try list("nbd+unix:///?socket=\(s.socketPath)", "plain") == ["open"])
        #expect(try !run(["nbdinfo", pskURI(s, user: "bob", file: keys.bobPSK)], in: s.dir, "bob-disk").succeeded)
        #expect(try !run(["nbdinfo", s.uri], in: s.dir, "plain-disk").succeeded)
        // In the clear the refusal says TLS would help; to bob (over TLS) it is policy.
        let raw = try RawClient(unixPath: s.socketPath)
        try raw.hello()
        try raw.option(.go, infoPayload("disk"))
        let reply = try raw.optionReplies()
        #expect(reply.map(\.type) == [OptionReplyType.errTLSRequired.rawValue])
        #expect(reply.first?.text.contains("only served over TLS") == true, "\(reply)")
        try raw.option(.go, infoPayload("open"))
        #expect(try raw.optionReplies().last?.type == OptionReplyType.ack.rawValue, "the open export is still served in the clear")
    }

    /// STARTTLS and then silence: the handshake limit covers the TLS handshake too.
    @Test func aStalledTLSHandshakeIsCutAtTheHandshakeLimit() throws {
        let s = try pskServer(.require, handshakeLimit: .milliseconds(300))
        let c = try RawClient(unixPath: s.socketPath)
        try c.hello()
        try c.option(.startTLS)
        #expect(try c.optionReplies().map(\.type) == [OptionReplyType.ack.rawValue])
        #expect(c.closedByServer(timeout: 5000))
    }
}
