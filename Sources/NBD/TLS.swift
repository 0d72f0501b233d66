// TLS as the NBD module sees it: when a connection may or must upgrade (NBD_OPT_STARTTLS), who
// may use which export, and the two protocols a TLS library implements for the server. The NBD
// module links no TLS library; the TLS module (GnuTLS) provides one and the daemon passes it in.

#if canImport(Glibc)
import Glibc
#endif

/// What a listening socket asks of its clients (nbdkit's --tls).
public enum TLSMode: String, Sendable, CaseIterable {
    /// STARTTLS gets ERR_POLICY; everything is in the clear.
    case off
    /// A client may upgrade with STARTTLS, or not.
    case on
    /// Before STARTTLS every option but ABORT gets ERR_TLS_REQD (EXPORT_NAME, which has no error
    /// reply, a hang-up).
    case require
}

/// The server side of TLS: a handshake on a connected socket. One value serves every connection.
public protocol TLSServer: Sendable {
    /// Runs the handshake on the socket (`inFD` = `outFD` but for stdio), all of it by
    /// `deadline` (nil: none); the secured channel, or why it failed, as a sentence.
    func handshake(inFD: Int32, outFD: Int32, until deadline: timespec?) -> Result<any TLSChannel, TLSFailure>
}

public struct TLSFailure: Error, Sendable, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// One connection's TLS records. Used by one thread at a time: the connection's.
public protocol TLSChannel: AnyObject {
    /// The names the peer authenticated as: a PSK username, or a client certificate's subject
    /// DN and its CN; empty for an anonymous peer (server certificate only).
    var peerNames: [String] { get }
    /// Protocol, key exchange, cipher and whether the kernel does the records (kTLS), for the log.
    var summary: String { get }
    /// Decrypted bytes are waiting inside the library: a poll on the socket would not see them.
    var hasBufferedInput: Bool { get }
    /// Reads up to `count` bytes: the count, 0 at the peer's end of stream, -1 on an error or
    /// once `deadline` (nil: none) passes.
    func read(into buffer: UnsafeMutableRawPointer, count: Int, until deadline: timespec?) -> Int
    /// Writes every byte of the `count` buffers; false on an error or once `deadline` passes.
    func write(_ iov: UnsafePointer<iovec>, count: Int, until deadline: timespec?) -> Bool
    /// Says goodbye (close_notify), best effort; the socket stays open.
    func close()
}

extension Export {
    /// Whether a client TLS-authenticated under the names `peer` (nil: in the clear) may use
    /// the export (`allowedPeers`).
    func admits(_ peer: [String]?) -> Bool {
        guard let allowed = allowedPeers else { return true }
        guard let peer else { return false }
        return peer.contains { allowed.contains($0) }
    }
}
