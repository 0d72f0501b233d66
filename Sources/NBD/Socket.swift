// Where the server listens: endpoints, systemd socket activation, and the listening sockets
// (opened by Posix.Sockets).

#if canImport(Glibc)
import Glibc
#endif
import Posix

/// Where the server listens.
public enum Endpoint: Sendable, Equatable, CustomStringConvertible {
    /// A unix socket; created with `mode` (0600 by default: only our user may connect).
    case unix(path: String, mode: UInt32 = 0o600)
    /// TCP; port 0 picks a free port (see `ListeningSocket.port`).
    case tcp(host: String, port: UInt16)
    /// An already listening socket we inherit (systemd socket activation).
    case listeningSocket(fd: Int32)
    /// A listening socket a predecessor process of this server handed over (NBDServer.suspend);
    /// `ownedPath` is its unix socket path, unlinked at stop as if we had created it.
    case handedOver(fd: Int32, ownedPath: String?)

    public var description: String {
        switch self {
        case .unix(let path, _): return "unix:\(path)"
        case .tcp(let host, let port): return "tcp:\(host):\(port)"
        case .listeningSocket(let fd): return "fd:\(fd)"
        case .handedOver(let fd, let path): return path.map { "unix:\($0)" } ?? "fd:\(fd)"
        }
    }

    /// The sockets systemd passed us (LISTEN_PID must be our pid; fds start at 3). Empty when
    /// not socket activated. `environment` and `pid` are parameters so this is testable.
    public static func systemdSockets(environment: [String: String], pid: Int32) -> [Endpoint] {
        guard let listenPID = environment["LISTEN_PID"].flatMap({ Int32($0) }), listenPID == pid,
              let count = environment["LISTEN_FDS"].flatMap({ Int32($0) }), count > 0, count < 1024 else {
            return []
        }
        return (0..<count).map { .listeningSocket(fd: 3 + $0) }
    }

    /// `systemdSockets` for this process; also clears LISTEN_* so children don't inherit them.
    public static func systemdSockets() -> [Endpoint] {
        systemdDescriptors().map { .listeningSocket(fd: $0.fd) }
    }

    /// Every descriptor systemd passed (LISTEN_FDS), with its LISTEN_FDNAMES name ("" if none):
    /// sockets of socket units, and whatever the service put into its fd store (FDSTORE=1).
    /// Clears LISTEN_* so children don't inherit them.
    public static func systemdDescriptors() -> [(fd: Int32, name: String)] {
        var env: [String: String] = [:]
        for key in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
            if let v = getenv(key) { env[key] = String(cString: v) }
        }
        let fds = systemdSockets(environment: env, pid: getpid()).compactMap { e -> Int32? in
            if case .listeningSocket(let fd) = e { return fd }
            return nil
        }
        if !fds.isEmpty {
            unsetenv("LISTEN_PID")
            unsetenv("LISTEN_FDS")
            unsetenv("LISTEN_FDNAMES")
        }
        let names = (env["LISTEN_FDNAMES"] ?? "").split(separator: ":", omittingEmptySubsequences: false).map(String.init)
        return fds.enumerated().map { (i, fd) in (fd, i < names.count ? names[i] : "") }
    }
}

/// A socket the server accepts on.
public struct ListeningSocket: Sendable, CustomStringConvertible {
    public let endpoint: Endpoint
    public let fd: Int32
    /// The bound TCP port (useful with port 0), else nil.
    public let port: UInt16?
    let isTCP: Bool
    /// A unix socket path we created and unlink on stop.
    let ownedPath: String?

    public var description: String {
        if let port, case .tcp(let host, _) = endpoint { return "tcp:\(host):\(port)" }
        return endpoint.description
    }

    static func open(_ endpoint: Endpoint) throws(NBDError) -> ListeningSocket {
        do {
            switch endpoint {
            case .unix(let path, let mode):
                let fd = try Sockets.listenUnix(path, mode: mode_t(mode))
                return ListeningSocket(endpoint: endpoint, fd: fd, port: nil, isTCP: false, ownedPath: path)
            case .tcp(let host, let port):
                let l = try Sockets.listenTCP(host: host, port: port)
                return ListeningSocket(endpoint: endpoint, fd: l.fd, port: l.port, isTCP: true, ownedPath: nil)
            case .listeningSocket(let fd), .handedOver(let fd, _):
                Sockets.setCloseOnExec(fd)
                let domain = try Sockets.domain(of: fd)
                var owned: String?
                if case .handedOver(_, let path) = endpoint { owned = path }
                return ListeningSocket(endpoint: endpoint, fd: fd, port: nil,
                                       isTCP: domain == AF_INET || domain == AF_INET6, ownedPath: owned)
            }
        } catch {
            throw NBDError(error)
        }
    }

    func closeAndUnlink() {
        close(fd)
        if let ownedPath { unlink(ownedPath) }
    }
}

extension NBDError {
    /// NBD's words for a failed system call or endpoint (a bad or busy path is a configuration error).
    init(_ e: PosixError) {
        switch e {
        case .system(let call, let code): self = .system(call, errno: code)
        case .socketPathTooLong(let path, let max):
            self = .invalidConfiguration("unix socket path too long (max \(max) bytes): \(path)")
        case .socketInUse(let path): self = .invalidConfiguration("\(path): another server is listening there")
        case .notASocket(let path): self = .invalidConfiguration("\(path) exists and is not a socket")
        case .message(let m): self = .invalidConfiguration(m)
        }
    }
}
