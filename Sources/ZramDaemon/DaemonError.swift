#if canImport(Glibc)
import Glibc
#endif
import Posix

/// Everything that goes wrong in the daemon, with the sentence a user reads.
public enum DaemonError: Error, Equatable, Sendable, CustomStringConvertible {
    /// A value on the command line or in a control request is malformed (exit status 2).
    case invalidValue(String)
    /// A configuration file is malformed at `file:line` (exit status 2).
    case config(file: String, line: Int, String)
    /// A system call failed.
    case system(String, errno: Int32)
    /// A device or export could not be set up or changed.
    case device(String)
    /// The control socket could not be reached or the daemon refused the request.
    case control(String)

    public var description: String {
        switch self {
        case .invalidValue(let m): return m
        case .config(let file, let line, let m): return line > 0 ? "\(file):\(line): \(m)" : "\(file): \(m)"
        case .system(let call, let e): return "\(call): \(String(cString: strerror(e)))"
        case .device(let m), .control(let m): return m
        }
    }

    /// Exit status of the command that failed with this error: 2 for bad input, 1 otherwise.
    public var exitStatus: Int32 {
        switch self {
        case .invalidValue, .config: return 2
        case .system, .device, .control: return 1
        }
    }

    static func errno(_ call: String) -> DaemonError { .system(call, errno: Glibc.errno) }

    /// The daemon's words for a failed system call or socket setup.
    init(_ e: PosixError) {
        switch e {
        case .system(let call, let code): self = .system(call, errno: code)
        case .socketPathTooLong(let path, let max): self = .invalidValue("socket path '\(path)' is longer than \(max) bytes")
        case .socketInUse(let path): self = .device("\(path) is in use by another process")
        case .notASocket(let path): self = .device("\(path) exists and is not a socket")
        case .message(let m): self = .device(m)
        }
    }
}
