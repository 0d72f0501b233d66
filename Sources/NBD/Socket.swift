// Plain POSIX sockets: listening endpoints, systemd socket activation, and blocking I/O helpers.

#if canImport(Glibc)
import Glibc
#endif

/// Where the server listens.
public enum Endpoint: Sendable, Equatable, CustomStringConvertible {
    /// A unix socket; created with `mode` (0600 by default: only our user may connect).
    case unix(path: String, mode: UInt32 = 0o600)
    /// TCP; port 0 picks a free port (see `ListeningSocket.port`).
    case tcp(host: String, port: UInt16)
    /// An already listening socket we inherit (systemd socket activation).
    case listeningSocket(fd: Int32)

    public var description: String {
        switch self {
        case .unix(let path, _): return "unix:\(path)"
        case .tcp(let host, let port): return "tcp:\(host):\(port)"
        case .listeningSocket(let fd): return "fd:\(fd)"
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
        var env: [String: String] = [:]
        for key in ["LISTEN_PID", "LISTEN_FDS"] {
            if let v = getenv(key) { env[key] = String(cString: v) }
        }
        let sockets = systemdSockets(environment: env, pid: getpid())
        if !sockets.isEmpty {
            unsetenv("LISTEN_PID")
            unsetenv("LISTEN_FDS")
            unsetenv("LISTEN_FDNAMES")
        }
        return sockets
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
        switch endpoint {
        case .unix(let path, let mode): return try openUnix(path: path, mode: mode, endpoint: endpoint)
        case .tcp(let host, let port): return try openTCP(host: host, port: port, endpoint: endpoint)
        case .listeningSocket(let fd):
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            var domain: Int32 = 0
            var len = socklen_t(MemoryLayout<Int32>.size)
            guard getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) == 0 else {
                throw .system("getsockopt(fd \(fd))", errno: errno)
            }
            return ListeningSocket(endpoint: endpoint, fd: fd, port: nil,
                                   isTCP: domain == AF_INET || domain == AF_INET6, ownedPath: nil)
        }
    }

    private static func openUnix(path: String, mode: UInt32, endpoint: Endpoint) throws(NBDError) -> ListeningSocket {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let capacity = MemoryLayout.size(ofValue: addr.sun_path)
        guard path.utf8.count < capacity, !path.isEmpty else {
            throw .invalidConfiguration("unix socket path too long (max \(capacity - 1) bytes): \(path)")
        }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in path.utf8.enumerated() { raw[i] = b }
        }
        try removeStaleSocket(path: path, addr: addr)
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw .system("socket", errno: errno) }
        let bound = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard bound == 0 else {
            let e = errno
            close(fd)
            throw .system("bind \(path)", errno: e)
        }
        // chmod before listen(): until listen() nobody can connect, so the mode is never too open.
        guard chmod(path, mode_t(mode)) == 0 else {
            let e = errno
            close(fd)
            unlink(path)
            throw .system("chmod \(path)", errno: e)
        }
        guard Glibc.listen(fd, 128) == 0 else {
            let e = errno
            close(fd)
            unlink(path)
            throw .system("listen \(path)", errno: e)
        }
        return ListeningSocket(endpoint: endpoint, fd: fd, port: nil, isTCP: false, ownedPath: path)
    }

    /// A socket file left by a dead server is removed; one a live server listens on is an error.
    private static func removeStaleSocket(path: String, addr: sockaddr_un) throws(NBDError) {
        var st = stat()
        guard lstat(path, &st) == 0 else { return }
        guard st.st_mode & S_IFMT == S_IFSOCK else {
            throw .invalidConfiguration("\(path) exists and is not a socket")
        }
        let probe = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard probe >= 0 else { throw .system("socket", errno: errno) }
        defer { close(probe) }
        var a = addr
        let r = withUnsafePointer(to: &a) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(probe, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        if r == 0 { throw .invalidConfiguration("\(path): another server is listening there") }
        unlink(path)
    }

    private static func openTCP(host: String, port: UInt16, endpoint: Endpoint) throws(NBDError) -> ListeningSocket {
        var hints = addrinfo()
        hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host.isEmpty ? nil : host, String(port), &hints, &list)
        guard rc == 0, let first = list else {
            throw .invalidConfiguration("cannot resolve \(host): \(String(cString: gai_strerror(rc)))")
        }
        defer { freeaddrinfo(list) }
        var lastErrno: Int32 = 0
        var ai: UnsafeMutablePointer<addrinfo>? = first
        while let a = ai {
            ai = a.pointee.ai_next
            let fd = socket(a.pointee.ai_family, a.pointee.ai_socktype | Int32(SOCK_CLOEXEC.rawValue), a.pointee.ai_protocol)
            if fd < 0 { lastErrno = errno; continue }
            var one: Int32 = 1
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
            if bind(fd, a.pointee.ai_addr, a.pointee.ai_addrlen) != 0 || Glibc.listen(fd, 128) != 0 {
                lastErrno = errno
                close(fd)
                continue
            }
            return ListeningSocket(endpoint: endpoint, fd: fd, port: boundPort(fd), isTCP: true, ownedPath: nil)
        }
        throw .system("bind tcp \(host):\(port)", errno: lastErrno)
    }

    private static func boundPort(_ fd: Int32) -> UInt16? {
        var storage = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let ok = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) == 0 }
        }
        guard ok else { return nil }
        return withUnsafeBytes(of: storage) { raw in
            // sin_port and sin6_port sit at the same offset, in network byte order.
            UInt16(bigEndian: raw.loadUnaligned(fromByteOffset: 2, as: UInt16.self))
        }
    }

    func closeAndUnlink() {
        close(fd)
        if let ownedPath { unlink(ownedPath) }
    }
}

/// Blocking I/O that retries on EINTR and short transfers.
enum IO {
    /// Reads exactly `count` bytes; false on EOF or error.
    static func readFully(_ fd: Int32, _ buffer: UnsafeMutableRawPointer, _ count: Int) -> Bool {
        var done = 0
        while done < count {
            let n = read(fd, buffer + done, count - done)
            if n > 0 { done += n; continue }
            if n < 0 && errno == EINTR { continue }
            return false
        }
        return true
    }

    static func writeFully(_ fd: Int32, _ buffer: UnsafeRawPointer, _ count: Int) -> Bool {
        var done = 0
        while done < count {
            let n = write(fd, buffer + done, count - done)
            if n > 0 { done += n; continue }
            if n < 0 && errno == EINTR { continue }
            return false
        }
        return true
    }

    static func writeFully(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        bytes.withUnsafeBytes { writeFully(fd, $0.baseAddress!, $0.count) }
    }

    /// Writes every byte the iovecs describe (the array is consumed in place); false on error.
    static func writeFully(_ fd: Int32, _ iov: UnsafeMutablePointer<iovec>, _ count: Int) -> Bool {
        var first = 0
        while first < count {
            let batch = Int32(min(count - first, 1024))  // IOV_MAX
            let n = writev(fd, iov + first, batch)
            if n < 0 {
                if errno == EINTR { continue }
                return false
            }
            var left = n
            while left > 0 && first < count {
                let len = iov[first].iov_len
                if left >= len {
                    left -= len
                    first += 1
                } else {
                    iov[first].iov_base = iov[first].iov_base! + left
                    iov[first].iov_len = len - left
                    left = 0
                }
            }
            while first < count && iov[first].iov_len == 0 { first += 1 }
        }
        return true
    }

    /// Replies of a deep queue of big READs (nbdcopy: 64 × 256 KiB per connection) wait in the
    /// socket instead of blocking the writer each 200 KiB: a unix socket's send buffer is all the
    /// room there is between us and the client (measured: read-back 10-20% faster with 4 MiB).
    /// Privileged daemons may exceed net.core.wmem_max; others get what it allows. TCP keeps its
    /// autotuning, which a fixed SO_SNDBUF would turn off.
    static func enlargeUnixSendBuffer(_ fd: Int32) {
        var domain: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &length) == 0, domain == AF_UNIX else { return }
        var bytes: Int32 = 4 << 20
        let size = socklen_t(MemoryLayout<Int32>.size)
        if setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &bytes, size) != 0 {
            _ = setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bytes, size)
        }
    }

    static func setNoDelay(_ fd: Int32) {
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
    }
}
