// Key material for TLS tests, made with GnuTLS's own tools (certtool, psktool from gnutls-bin)
// the way an administrator would: a CA, a server certificate for localhost/127.0.0.1, client
// certificates for alice and bob, and psktool key files.

/// Where the fixture put everything, inside `dir`.
public struct TLSFixture: Sendable {
    /// nbdkit/qemu server layout: ca-cert.pem, server-cert.pem, server-key.pem.
    public let serverDirectory: String
    /// libnbd/qemu client layouts (ca-cert.pem, client-cert.pem, client-key.pem), CN alice and bob.
    public let aliceDirectory: String
    public let bobDirectory: String
    /// Only ca-cert.pem: a client that checks the server but has no certificate of its own.
    public let anonymousDirectory: String
    /// The server's psktool file (users alice and bob), and client files: alice's own key, and
    /// one with alice's name but another key.
    public let serverPSK: String
    public let alicePSK: String
    public let wrongAlicePSK: String
    public let bobPSK: String
    /// qemu's tls-creds-psk wants a directory holding keys.psk.
    public let alicePSKDirectory: String

    public static func make(in dir: TempDir) throws -> TLSFixture {
        func tool(_ argv: [String], _ name: String) throws {
            let r = try Subprocess.run(argv, outputPrefix: dir.file("tls-\(name)"), environment: ["PATH": "/usr/bin:/bin"])
            guard r.succeeded else { throw FixtureError("\(argv[0]) \(name): \(r.termination)\n\(r.stderr)") }
        }
        func key(_ path: String) throws { try tool(["certtool", "--generate-privkey", "--key-type=ecdsa", "--outfile", path], "key") }
        let ca = dir.file("tls/ca")
        dir.write("tls/ca/ca.info", "cn = zramnbd test CA\nca\ncert_signing_key\nexpiration_days = 3650\n")
        try key(ca + "/ca-key.pem")
        try tool(["certtool", "--generate-self-signed", "--load-privkey", ca + "/ca-key.pem", "--template", ca + "/ca.info",
                  "--outfile", ca + "/ca-cert.pem"], "ca")
        let caCert = dir.read("tls/ca/ca-cert.pem") ?? ""
        func certificate(_ dirName: String, _ prefix: String, _ template: String) throws -> String {
            let d = dir.file("tls/" + dirName)
            dir.write("tls/\(dirName)/cert.info", template + "expiration_days = 3650\n")
            dir.write("tls/\(dirName)/ca-cert.pem", caCert)
            try key(d + "/\(prefix)-key.pem")
            try tool(["certtool", "--generate-certificate", "--load-ca-certificate", ca + "/ca-cert.pem",
                      "--load-ca-privkey", ca + "/ca-key.pem", "--load-privkey", d + "/\(prefix)-key.pem",
                      "--template", d + "/cert.info", "--outfile", d + "/\(prefix)-cert.pem"], dirName)
            return d
        }
        let server = try certificate("server", "server", "organization = zramnbd\ncn = localhost\ndns_name = localhost\nip_address = 127.0.0.1\ntls_www_server\nencryption_key\nsigning_key\n")
        let alice = try certificate("alice", "client", "organization = zramnbd\ncn = alice\ntls_www_client\nencryption_key\nsigning_key\n")
        let bob = try certificate("bob", "client", "organization = zramnbd\ncn = bob\ntls_www_client\nencryption_key\nsigning_key\n")
        dir.write("tls/anonymous/ca-cert.pem", caCert)

        let serverPSK = dir.file("tls/server.psk")
        try tool(["psktool", "-u", "alice", "-p", serverPSK], "psk-alice")
        try tool(["psktool", "-u", "bob", "-p", serverPSK], "psk-bob")
        let lines = (dir.read("tls/server.psk") ?? "").split(separator: "\n").map(String.init)
        guard let aliceLine = lines.first(where: { $0.hasPrefix("alice:") }),
              let bobLine = lines.first(where: { $0.hasPrefix("bob:") }) else { throw FixtureError("psktool wrote no keys") }
        dir.write("tls/alice.psk", aliceLine + "\n")
        dir.write("tls/alice-psk/keys.psk", aliceLine + "\n")
        dir.write("tls/bob.psk", bobLine + "\n")
        dir.write("tls/wrong-alice.psk", "alice:" + String(repeating: "ab", count: 32) + "\n")
        return TLSFixture(serverDirectory: server, aliceDirectory: alice, bobDirectory: bob,
                          anonymousDirectory: dir.file("tls/anonymous"), serverPSK: serverPSK,
                          alicePSK: dir.file("tls/alice.psk"), wrongAlicePSK: dir.file("tls/wrong-alice.psk"),
                          bobPSK: dir.file("tls/bob.psk"), alicePSKDirectory: dir.file("tls/alice-psk"))
    }
}

public struct FixtureError: Error, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}
