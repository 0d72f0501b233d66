// Stream sockets: unix and TCP listeners (with the stale-socket probe), connect, accept, and the
// small queries and reads the control and metrics channels need.

#if canImport(Glibc)
import Glibc
#endif

public enum Sockets {
    /// SOCK_STREAM as socket(2) takes it.
    public static let stream = Int32(SOCK_STREAM.rawValue)
    static let closeOnExec = Int32(SOCK_CLOEXEC.rawValue)

    /// sockaddr_un for `path`; throws `.socketPathTooLong` when it is empty or does not fit sun_path.
    public static func unixAddress(_ path: String) throws(PosixError) -> sockaddr_un {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let capacity = MemoryLayout.size(ofValue: addr.sun_path)
        guard !path.isEmpty, path.utf8.count < capacity else {
            throw .socketPathTooLong(path, maxBytes: capacity - 1)
        }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in path.utf8.enumerated() { raw[i] = b }
        }
        return addr
    }

    /// A listening unix stream socket at `path`, created with `mode` (set before listen(), so the
    /// mode is never too open). A stale socket file (nobody accepts on it) is replaced; a live one
    /// is `.socketInUse`, so two servers never steal each other's socket; anything else at the
    /// path is `.notASocket`.
    public static func listenUnix(_ path: String, mode: mode_t, backlog: Int32 = 128) throws(PosixError) -> Int32 {
        var addr = try unixAddress(path)
        try removeStaleSocket(path: path, addr: addr)
        let fd = try unixSocket(&addr, "bind \(path)", bind)
        guard chmod(path, mode) == 0 else {
            let e = Glibc.errno
            close(fd)
            unlink(path)
            throw .system("chmod \(path)", errno: e)
        }
        guard listen(fd, backlog) == 0 else {
            let e = Glibc.errno
            close(fd)
            unlink(path)
            throw .system("listen \(path)", errno: e)
        }
        return fd
    }

    /// A socket file left by a dead server is removed; one a live server listens on is an error.
    private static func removeStaleSocket(path: String, addr: sockaddr_un) throws(PosixError) {
        var st = stat()
        guard lstat(path, &st) == 0 else { return }
        guard st.st_mode & S_IFMT == S_IFSOCK else { throw .notASocket(path) }
        var a = addr
        let probe: Int32
        do {
            probe = try unixSocket(&a, "connect \(path)", connect)
        } catch {
            if case .system("socket", _) = error { throw error }  // no probe: do not guess
            unlink(path)  // nobody accepts there: stale
            return
        }
        close(probe)
        throw .socketInUse(path)
    }

    /// A unix stream socket connected to `path` (close-on-exec). A failed connect is
    /// `.system("connect <path>", errno:)`.
    public static func connectUnix(_ path: String) throws(PosixError) -> Int32 {
        var addr = try unixAddress(path)
        return try unixSocket(&addr, "connect \(path)", connect)
    }

    /// A new unix stream socket (close-on-exec) on which `call` (bind or connect) was made with
    /// `addr`; on failure it is closed and the error names `what`.
    private static func unixSocket(_ addr: inout sockaddr_un, _ what: String,
                                   _ call: (Int32, UnsafePointer<sockaddr>, socklen_t) -> Int32) throws(PosixError) -> Int32 {
        let fd = socket(AF_UNIX, stream | closeOnExec, 0)
        guard fd >= 0 else { throw .lastError("socket") }
        let r = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { call(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard r == 0 else {
            let e = Glibc.errno
            close(fd)
            throw .system(what, errno: e)
        }
        return fd
    }

    /// A listening TCP socket on `host` (an IPv4 or IPv6 literal or a name; empty: every
    /// address) and `port` (0 picks a free one). Tries each address the host resolves to.
    /// Returns the socket and the port it is bound to.
    public static func listenTCP(host: String, port: UInt16, backlog: Int32 = 128) throws(PosixError) -> (fd: Int32, port: UInt16?) {
        var hints = addrinfo()
        hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = stream
        var list: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host.isEmpty ? nil : host, String(port), &hints, &list)
        guard rc == 0, let first = list else {
            throw .message("cannot resolve \(host): \(String(cString: gai_strerror(rc)))")
        }
        defer { freeaddrinfo(list) }
        var lastErrno: Int32 = 0
        var ai: UnsafeMutablePointer<addrinfo>? = first
        while let a = ai {
            ai = a.pointee.ai_next
            let fd = socket(a.pointee.ai_family, a.pointee.ai_socktype | closeOnExec, a.pointee.ai_protocol)
            if fd < 0 { lastErrno = Glibc.errno; continue }
            var one: Int32 = 1
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
            if bind(fd, a.pointee.ai_addr, a.pointee.ai_addrlen) != 0 || listen(fd, backlog) != 0 {
                lastErrno = Glibc.errno
                close(fd)
                continue
            }
            return (fd, boundPort(fd))
        }
        throw .system("bind tcp \(host):\(port)", errno: lastErrno)
    }

    /// The port an IPv4 or IPv6 socket is bound to; nil if getsockname fails.
    public static func boundPort(_ fd: Int32) -> UInt16? {
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

    /// accept4(2) with close-on-exec set; nil on failure, with errno saying why.
    @inline(__always)
    public static func accept(_ fd: Int32) -> Int32? {
        let c = c_accept4(fd, nil, nil, closeOnExec)
        return c >= 0 ? c : nil
    }

    /// The socket's domain (AF_UNIX, AF_INET, AF_INET6, ...).
    public static func domain(of fd: Int32) throws(PosixError) -> Int32 {
        var domain: Int32 = 0
        var len = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) == 0 else {
            throw .lastError("getsockopt(fd \(fd))")
        }
        return domain
    }

    /// Sets FD_CLOEXEC on a descriptor we inherited.
    public static func setCloseOnExec(_ fd: Int32) {
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
    }

    /// The path a unix socket is bound to (nil for other families or unnamed sockets).
    public static func unixPath(of fd: Int32) -> String? {
        var addr = sockaddr_un()
        var len = socklen_t(MemoryLayout<sockaddr_un>.size)
        let ok = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        guard ok == 0, addr.sun_family == sa_family_t(AF_UNIX) else { return nil }
        let path = withUnsafeBytes(of: addr.sun_path) { raw -> String in
            let bytes = raw.prefix(max(0, Int(len) - MemoryLayout<sa_family_t>.size))
            return String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self)
        }
        return path.isEmpty ? nil : path
    }

    /// The uid of the process on the other end of a unix socket.
    public static func peerUID(_ fd: Int32) -> uid_t? {
        // struct ucred { pid_t pid; uid_t uid; gid_t gid; } (hidden behind _GNU_SOURCE in Glibc).
        var cred: (Int32, UInt32, UInt32) = (0, 0, 0)
        var len = socklen_t(MemoryLayout<(Int32, UInt32, UInt32)>.size)
        guard getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0 else { return nil }
        return cred.1
    }

    /// Waits until `fd` is readable (or `timeout` ms pass); false on timeout or error.
    public static func waitReadable(_ fd: Int32, timeout: Int32) -> Bool {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        while true {
            let n = poll(&p, 1, timeout)
            if n < 0, Glibc.errno == EINTR { continue }
            return n > 0
        }
    }

    /// Reads until the peer closes, `limit` bytes, or `stopAtNewline` sees a newline; each wait
    /// for data is bounded by `timeout` ms so a stuck peer cannot hold the caller. Nil on a
    /// timeout or error.
    public static func readMessage(_ fd: Int32, limit: Int, timeout: Int32, stopAtNewline: Bool) -> [UInt8]? {
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while out.count < limit {
            guard waitReadable(fd, timeout: timeout) else { return nil }
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 { if Glibc.errno == EINTR { continue }; return nil }
            if n == 0 { break }
            out += chunk[0..<n]
            if stopAtNewline, chunk[0..<n].contains(UInt8(ascii: "\n")) { break }
        }
        return out
    }
}
