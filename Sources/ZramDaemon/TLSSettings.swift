// Who may connect over NBD and how: the daemon's TLS settings (nbdkit's --tls flags), the rule
// that a non-loopback TCP address is served only over TLS unless --tls=off says otherwise, and
// the credentials (loaded in TLSCredentials.swift).
import NBD

public struct TLSSettings: Sendable, Equatable {
    /// nil: not given, which is `on` with credentials and `off` without.
    public var mode: TLSMode?
    /// nbdkit's --tls-certificates directory (ca-cert.pem, server-cert.pem, server-key.pem).
    public var certificates: String?
    /// Clients must present a certificate signed by the CA.
    public var verifyPeer = false
    /// psktool's `user:hexkey` file.
    public var psk: String?

    public init() {}

    var hasCredentials: Bool { certificates != nil || psk != nil }
    /// What the unix sockets ask of clients.
    public var effectiveMode: TLSMode { mode ?? (hasCredentials ? .on : .off) }

    public func validate() throws(DaemonError) {
        if certificates != nil && psk != nil {
            throw .invalidValue("--tls-certificates and --tls-psk cannot be combined: give one")
        }
        if verifyPeer && certificates == nil {
            throw .invalidValue("--tls-verify-peer needs --tls-certificates (the CA that signs client certificates)")
        }
        if let m = mode, m != .off, !hasCredentials {
            throw .invalidValue("--tls=\(m.rawValue) needs --tls-certificates DIR or --tls-psk FILE")
        }
    }

    /// What a TCP listener on `listen` asks of clients. Beyond loopback TLS is required, unless
    /// TLS was turned off explicitly: a peer on the network could otherwise read and overwrite
    /// the device (swap pages included).
    public func tcpMode(_ listen: String) throws(DaemonError) -> TLSMode {
        let address = try HostPort.parse(listen)
        guard !Self.isLoopback(address.host) else { return effectiveMode }
        if mode == .off { return .off }
        guard hasCredentials else {
            throw .invalidValue("listen \(listen) is not loopback, so it is served only over TLS: give --tls-psk FILE "
                                + "or --tls-certificates DIR (config: tls-psk, tls-certificates), or --tls=off to serve it in the clear")
        }
        return .require
    }

    /// A device's TCP address must get the TLS it needs, and its identities need TLS to mean anything.
    public func check(_ d: DeviceSpec) throws(DaemonError) {
        if let l = d.listen { _ = try tcpMode(l) }
        if d.tlsIdentities != nil, effectiveMode == .off {
            throw .invalidValue("\(d.name): tls-identities needs TLS (--tls-psk or --tls-certificates)")
        }
    }

    /// --tls=off on an address the network can reach: worth a warning at start.
    func inTheClearBeyondLoopback(_ listen: String) -> Bool {
        guard mode == .off, let address = try? HostPort.parse(listen) else { return false }
        return !Self.isLoopback(address.host)
    }

    static func isLoopback(_ host: String) -> Bool {
        host == "localhost" || host == "::1" || host.hasPrefix("127.")
    }

    /// The start-up line: what the unix sockets and each TCP address ask of clients.
    func describe(_ devices: [DeviceSpec]) -> String {
        var parts = ["tls=\(effectiveMode.rawValue)"]
        if let psk { parts.append("psk \(psk)") }
        if let certificates { parts.append("certificates \(certificates)" + (verifyPeer ? ", clients verified" : "")) }
        for d in devices { if let l = d.listen { parts.append("\(l): \(describeTCP(l))") } }
        return parts.joined(separator: "; ")
    }

    func describeTCP(_ listen: String) -> String {
        guard let address = try? HostPort.parse(listen), let m = try? tcpMode(listen) else { return "refused" }
        if m == .off { return Self.isLoopback(address.host) ? "in the clear" : "in the clear (--tls=off), not loopback" }
        return Self.isLoopback(address.host) || mode == .require ? "tls=\(m.rawValue)" : "TLS required (not loopback)"
    }
}
