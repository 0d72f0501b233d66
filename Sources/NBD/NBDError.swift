#if canImport(Glibc)
import Glibc
#endif

/// The error numbers NBD puts on the wire (they are not the host's errno values).
public struct NBDErrno: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let eperm = NBDErrno(rawValue: 1)
    public static let eio = NBDErrno(rawValue: 5)
    public static let enomem = NBDErrno(rawValue: 12)
    public static let einval = NBDErrno(rawValue: 22)
    public static let enospc = NBDErrno(rawValue: 28)
    public static let eoverflow = NBDErrno(rawValue: 75)
    public static let enotsup = NBDErrno(rawValue: 95)
    public static let eshutdown = NBDErrno(rawValue: 108)

    public var description: String {
        switch self {
        case .eperm: return "EPERM"
        case .eio: return "EIO"
        case .enomem: return "ENOMEM"
        case .einval: return "EINVAL"
        case .enospc: return "ENOSPC"
        case .eoverflow: return "EOVERFLOW"
        case .enotsup: return "ENOTSUP"
        case .eshutdown: return "ESHUTDOWN"
        default: return "error \(rawValue)"
        }
    }

    /// The one errno map (nbdkit's nbd_errno()): a host errno to the NBD error a client sees,
    /// restricted to what the request may legally receive.
    public static func fromHost(_ error: Int32, flags: CommandFlags = []) -> NBDErrno {
        let e: NBDErrno
        switch error {
        case EROFS, EPERM: e = .eperm
        case EIO: e = .eio
        case ENOMEM: e = .enomem
        case EDQUOT, EFBIG, ENOSPC: e = .enospc
        case ESHUTDOWN: e = .eshutdown
        case ENOTSUP: e = .enotsup
        case EOVERFLOW: e = .eoverflow
        default: e = .einval
        }
        return e.legal(for: flags)
    }

    /// The one legality rule: ENOTSUP only answers FAST_ZERO and EOVERFLOW only DF reads;
    /// everywhere else they, and anything unknown, become EINVAL.
    func legal(for flags: CommandFlags) -> NBDErrno {
        switch self {
        case .enotsup: return flags.contains(.fastZero) ? .enotsup : .einval
        case .eoverflow: return flags.contains(.dontFragment) ? .eoverflow : .einval
        case .eperm, .eio, .enomem, .einval, .enospc, .eshutdown: return self
        default: return .einval
        }
    }
}

/// Everything that goes wrong in the NBD module.
public enum NBDError: Error, Sendable, Equatable, CustomStringConvertible {
    /// A backend refused or failed a request; the client gets `errno` and, with structured
    /// replies, `message`.
    case request(NBDErrno, message: String? = nil)
    /// A system call failed while setting up the server.
    case system(String, errno: Int32)
    /// The server configuration or an endpoint is unusable.
    case invalidConfiguration(String)

    public static let notSupported = NBDError.request(.enotsup)

    public var description: String {
        switch self {
        case .request(let e, let m): return m.map { "\(e): \($0)" } ?? "\(e)"
        case .system(let call, let e): return "\(call): \(String(cString: strerror(e)))"
        case .invalidConfiguration(let m): return m
        }
    }

    /// What a client is told about this error.
    var wireErrno: NBDErrno {
        switch self {
        case .request(let e, _): return e
        case .system(_, let e): return .fromHost(e)
        case .invalidConfiguration: return .einval
        }
    }

    var message: String? {
        switch self {
        case .request(_, let m): return m
        case .system, .invalidConfiguration: return description
        }
    }
}
