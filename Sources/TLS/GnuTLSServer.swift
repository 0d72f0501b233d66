// TLS for the NBD server through GnuTLS, the library nbdkit, qemu and nbd-client use, so their
// key files (certtool's PEM directory, psktool's `user:hexkey` file) work unchanged.
//
// Vocabulary: *credentials* are what the server proves itself with (X.509 certificates or
// pre-shared keys), loaded once at start; a *channel* is one connection's session after the
// handshake. The socket is non-blocking under a channel and every wait is a poll, so the
// handshake deadline bounds every read and write of the negotiation, TLS records included.
// kTLS: GnuTLS moves the records into the kernel when its system configuration says `ktls =
// true` and the kernel has CONFIG_TLS; the channel's calls stay the same.

#if canImport(Glibc)
import Glibc
#endif
import CGnuTLS
import NBD
import Posix

/// A credential file or directory that cannot be used; the message names it.
public struct TLSSetupError: Error, Sendable, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}

public final class GnuTLSServer: TLSServer, @unchecked Sendable {  // @unchecked: immutable after init; GnuTLS credentials are thread-safe for sessions to share
    private enum Credentials {
        case certificates(gnutls_certificate_credentials_t, verifyPeer: Bool)
        case psk(gnutls_psk_server_credentials_t)
    }
    private let credentials: Credentials
    private let priority: gnutls_priority_t
    /// What the server authenticates with, for the start-up log.
    public let summary: String

    private init(_ credentials: Credentials, summary: String) throws(TLSSetupError) {
        var p: gnutls_priority_t?
        // nbdkit's priorities: the system's NORMAL, plus the PSK key exchanges when they are used.
        let text: String
        if case .psk = credentials { text = "NORMAL:+ECDHE-PSK:+DHE-PSK:+PSK" } else { text = "NORMAL" }
        let r = gnutls_priority_init(&p, text, nil)
        guard r >= 0, let p else {
            Self.free(credentials)
            throw TLSSetupError("GnuTLS priority \(text): \(Self.message(r))")
        }
        self.credentials = credentials
        priority = p
        self.summary = summary
    }

    deinit {
        gnutls_priority_deinit(priority)
        Self.free(credentials)
    }

    private static func free(_ c: Credentials) {
        switch c {
        case .certificates(let x, _): gnutls_certificate_free_credentials(x)
        case .psk(let k): gnutls_psk_free_server_credentials(k)
        }
    }

    /// X.509 from `directory`, laid out as nbdkit and qemu want it: ca-cert.pem, server-cert.pem,
    /// server-key.pem, and ca-crl.pem if there is one. With `verifyPeer` a client must present a
    /// certificate signed by that CA (and not revoked).
    public static func certificates(directory: String, verifyPeer: Bool) throws(TLSSetupError) -> GnuTLSServer {
        let ca = directory + "/ca-cert.pem", cert = directory + "/server-cert.pem"
        let key = directory + "/server-key.pem", crl = directory + "/ca-crl.pem"
        for f in [ca, cert, key] where access(f, R_OK) != 0 {
            throw TLSSetupError("TLS certificates: cannot read \(f): \(String(cString: strerror(errno)))")
        }
        var x: gnutls_certificate_credentials_t?
        guard gnutls_certificate_allocate_credentials(&x) >= 0, let x else {
            throw TLSSetupError("TLS certificates: out of memory")
        }
        func fail(_ what: String, _ r: Int32) -> TLSSetupError {
            gnutls_certificate_free_credentials(x)
            return TLSSetupError("TLS certificates: \(what): \(message(r))")
        }
        var r = gnutls_certificate_set_x509_trust_file(x, ca, GNUTLS_X509_FMT_PEM)
        // A CA file with no certificate in it loads as 0 certificates, not as an error.
        if r <= 0 { throw fail(ca, r == 0 ? GNUTLS_E_NO_CERTIFICATE_FOUND : r) }
        if access(crl, F_OK) == 0 {
            r = gnutls_certificate_set_x509_crl_file(x, crl, GNUTLS_X509_FMT_PEM)
            if r < 0 { throw fail(crl, r) }
        }
        r = gnutls_certificate_set_x509_key_file(x, cert, key, GNUTLS_X509_FMT_PEM)
        if r < 0 { throw fail("\(cert) with \(key)", r) }
        _ = gnutls_certificate_set_known_dh_params(x, GNUTLS_SEC_PARAM_MEDIUM)
        return try GnuTLSServer(.certificates(x, verifyPeer: verifyPeer),
                                summary: "X.509 certificates from \(directory)\(verifyPeer ? ", client certificates required" : "")")
    }

    /// Pre-shared keys from a psktool file: one `username:hexkey` per line.
    public static func psk(file: String) throws(TLSSetupError) -> GnuTLSServer {
        let users = try checkPSKFile(file)
        var k: gnutls_psk_server_credentials_t?
        guard gnutls_psk_allocate_server_credentials(&k) >= 0, let k else {
            throw TLSSetupError("TLS PSK: out of memory")
        }
        let r = gnutls_psk_set_server_credentials_file(k, file)
        if r < 0 {
            gnutls_psk_free_server_credentials(k)
            throw TLSSetupError("TLS PSK file \(file): \(message(r))")
        }
        return try GnuTLSServer(.psk(k), summary: "pre-shared keys from \(file) (\(users) user\(users == 1 ? "" : "s"))")
    }

    /// GnuTLS reads the file only when a client names a user, and skips what it cannot parse;
    /// the file is checked here so that a mistake is a start-up error naming the line. Returns
    /// how many users it has.
    static func checkPSKFile(_ file: String) throws(TLSSetupError) -> Int {
        let text: String
        do { text = String(decoding: try IO.readFile(file, limit: 1 << 20), as: UTF8.self) } catch {
            throw TLSSetupError("TLS PSK file \(file): \(error)")
        }
        var users = 0
        for (i, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let l = line.hasSuffix("\r") ? line.dropLast() : line
            if l.isEmpty { continue }
            let parts = l.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false)
            guard parts.count == 2, !parts[0].isEmpty, !parts[1].isEmpty, parts[1].count % 2 == 0,
                  parts[1].allSatisfy(\.isHexDigit) else {
                throw TLSSetupError("TLS PSK file \(file):\(i + 1): expected USERNAME:HEXKEY (as psktool writes it)")
            }
            users += 1
        }
        guard users > 0 else { throw TLSSetupError("TLS PSK file \(file): no keys in it") }
        return users
    }

    static func message(_ code: Int32) -> String { String(cString: gnutls_strerror(code)) }

    // MARK: - Handshake

    public func handshake(inFD: Int32, outFD: Int32, until deadline: timespec?) -> Result<any TLSChannel, TLSFailure> {
        var s: gnutls_session_t?
        guard gnutls_init(&s, zramnbd_gnutls_server_flags()) >= 0, let s else { return .failure(TLSFailure("out of memory")) }
        // From here the channel owns the session: its deinit frees it.
        let channel = GnuTLSChannel(session: s, inFD: inFD, outFD: outFD)
        var r: Int32
        switch credentials {
        case .certificates(let x, let verifyPeer):
            r = gnutls_credentials_set(s, GNUTLS_CRD_CERTIFICATE, UnsafeMutableRawPointer(x))
            if verifyPeer {
                gnutls_certificate_server_set_request(s, GNUTLS_CERT_REQUIRE)
                gnutls_session_set_verify_cert(s, nil, 0)
            }
        case .psk(let k):
            r = gnutls_credentials_set(s, GNUTLS_CRD_PSK, UnsafeMutableRawPointer(k))
        }
        if r >= 0 { r = gnutls_priority_set(s, priority) }
        guard r >= 0 else { return .failure(TLSFailure(Self.message(r))) }
        for fd in Set([inFD, outFD]) { _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) }
        gnutls_transport_set_int2(s, inFD, outFD)
        while true {
            r = gnutls_handshake(s)
            if r == 0 { break }
            if r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED {
                guard channel.wait(until: deadline) else { return .failure(TLSFailure("not done within the handshake limit")) }
                continue
            }
            if gnutls_error_is_fatal(r) == 0 { continue }  // a warning alert
            return .failure(TLSFailure(Self.message(r)))
        }
        channel.established()
        return .success(channel)
    }
}

/// One connection's TLS session, after the handshake.
final class GnuTLSChannel: TLSChannel {
    private let session: gnutls_session_t
    private let inFD: Int32
    private let outFD: Int32
    private(set) var peerNames: [String] = []
    private(set) var summary = ""
    /// Writes below this many bytes are gathered into one record (corked); a bigger buffer is
    /// sent from where it lies, without the copy (nbdkit uncorks at 64 KiB too).
    private static let corkLimit = 64 << 10

    init(session: gnutls_session_t, inFD: Int32, outFD: Int32) {
        self.session = session
        self.inFD = inFD
        self.outFD = outFD
    }

    deinit { gnutls_deinit(session) }

    /// Reads who the peer is and what was agreed, once the handshake is done.
    func established() {
        if let d = gnutls_session_get_desc(session) {
            summary = String(cString: d)
            zramnbd_gnutls_free(d)
        }
        let ktls = gnutls_transport_is_ktls_enabled(session)
        summary += ktls == GNUTLS_KTLS_DUPLEX ? ", kTLS" : ktls.rawValue != 0 ? ", kTLS one way" : ", no kTLS"
        if let user = gnutls_psk_server_get_username(session) {
            peerNames = [String(cString: user)]
        } else {
            peerNames = certificateNames()
        }
    }

    /// The client certificate's subject DN and its CN (verified when the server requires one).
    private func certificateNames() -> [String] {
        var count: UInt32 = 0
        guard let list = gnutls_certificate_get_peers(session, &count), count > 0 else { return [] }
        var crt: gnutls_x509_crt_t?
        guard gnutls_x509_crt_init(&crt) >= 0, let crt else { return [] }
        defer { gnutls_x509_crt_deinit(crt) }
        var der = list[0]
        guard gnutls_x509_crt_import(crt, &der, GNUTLS_X509_FMT_DER) >= 0 else { return [] }
        var names: [String] = []
        var dn = gnutls_datum_t()
        if gnutls_x509_crt_get_dn3(crt, &dn, 0) >= 0, let data = dn.data {
            names.append(String(decoding: UnsafeBufferPointer(start: data, count: Int(dn.size)), as: UTF8.self))
            zramnbd_gnutls_free(data)
        }
        var cn = [UInt8](repeating: 0, count: 256)
        var size = cn.count
        if gnutls_x509_crt_get_dn_by_oid(crt, "2.5.4.3", 0, 0, &cn, &size) >= 0, size <= cn.count {
            names.append(String(decoding: cn[..<size], as: UTF8.self))
        }
        return names
    }

    var hasBufferedInput: Bool { gnutls_record_check_pending(session) > 0 }

    /// Waits until the socket can do what GnuTLS last wanted (read or write); false once
    /// `deadline` passes, or on an error.
    func wait(until deadline: timespec?) -> Bool {
        let writing = gnutls_record_get_direction(session) == 1
        var p = pollfd(fd: writing ? outFD : inFD, events: Int16(writing ? POLLOUT : POLLIN), revents: 0)
        while true {
            if let deadline, Clock.millisecondsUntil(deadline) == 0 { return false }
            let r = poll(&p, 1, deadline.map(Clock.millisecondsUntil) ?? -1)
            if r > 0 { return true }
            if r < 0 && errno != EINTR { return false }
        }
    }

    func read(into buffer: UnsafeMutableRawPointer, count: Int, until deadline: timespec?) -> Int {
        while true {
            let n = gnutls_record_recv(session, buffer, count)
            if n >= 0 { return n }
            switch Int32(n) {
            case GNUTLS_E_AGAIN, GNUTLS_E_INTERRUPTED:
                guard wait(until: deadline) else { return -1 }
            // Closing the TCP connection without TLS's close_notify is how most clients hang up.
            case GNUTLS_E_PREMATURE_TERMINATION:
                return 0
            default:
                return -1
            }
        }
    }

    func write(_ iov: UnsafePointer<iovec>, count: Int, until deadline: timespec?) -> Bool {
        var corked = 0
        for i in 0..<count {
            guard let base = iov[i].iov_base else { continue }
            let length = iov[i].iov_len
            if length < Self.corkLimit && corked + length <= Self.corkLimit {
                if corked == 0 { gnutls_record_cork(session) }
                guard send(base, length, until: deadline) else { return false }
                corked += length
                continue
            }
            if corked > 0 {
                guard uncork(until: deadline) else { return false }
                corked = 0
            }
            guard send(base, length, until: deadline) else { return false }
        }
        return corked == 0 || uncork(until: deadline)
    }

    /// Sends (or, corked, buffers) all of it. GnuTLS wants a call that returned EAGAIN repeated
    /// with the same arguments: the pointer only moves past what it took.
    private func send(_ base: UnsafeMutableRawPointer, _ length: Int, until deadline: timespec?) -> Bool {
        var done = 0
        while done < length {
            let n = gnutls_record_send(session, base + done, length - done)
            if n > 0 {
                done += n
            } else if n == Int(GNUTLS_E_AGAIN) || n == Int(GNUTLS_E_INTERRUPTED) {
                guard wait(until: deadline) else { return false }
            } else {
                return false
            }
        }
        return true
    }

    private func uncork(until deadline: timespec?) -> Bool {
        while true {
            let r = gnutls_record_uncork(session, 0)
            if r >= 0 { return true }
            guard r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED, wait(until: deadline) else { return false }
        }
    }

    func close() {
        // One try, never a wait: a client that stopped reading must not hold the connection.
        _ = gnutls_bye(session, GNUTLS_SHUT_WR)
    }
}
