// Plain POSIX sockets for the side channels (control, metrics, sd_notify). The NBD data path has
// its own server in the NBD module.
#if canImport(Glibc)
import Glibc
#endif

enum Sockets {
    /// SOCK_STREAM as socket(2) takes it.
    static let stream = Int32(SOCK_STREAM.rawValue)

    /// sockaddr_un for `path`; throws when the path does not fit sun_path.
    static func unixAddress(_ path: String) throws(DaemonError) -> sockaddr_un {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: addr.sun_path)
        guard !bytes.isEmpty, bytes.count < capacity else {
            throw .invalidValue("socket path '\(path)' is longer than \(capacity - 1) bytes")
        }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
            raw[bytes.count] = 0
        }
        return addr
    }

    /// A listening unix stream socket at `path` with `mode`. A stale socket file (nobody accepts
    /// on it) is replaced; a live one is an error, so two daemons never steal each other's socket.
    static func listenUnix(_ path: String, mode: mode_t) throws(DaemonError) -> Int32 {
        var addr = try unixAddress(path)
        if FileSystem.exists(path) {
            if let probe = try? connectUnix(path) {
                close(probe)
                throw .device("\(path) is in use by another process")
            }
            unlink(path)
        }
        let dir = path.lastIndex(of: "/").map { String(path[..<$0]) } ?? ""
        if !dir.isEmpty { try FileSystem.makeDirectories(dir) }
        let fd = try unixSocket(&addr, "bind \(path)", bind)
        // Tighten before listen(): nobody can connect until the socket listens.
        guard chmod(path, mode) == 0, listen(fd, 64) == 0 else {
            let e = errno
            close(fd)
            unlink(path)
            throw .system("listen \(path)", errno: e)
        }
        return fd
    }

    static func connectUnix(_ path: String) throws(DaemonError) -> Int32 {
        var addr = try unixAddress(path)
        return try unixSocket(&addr, "connect \(path)", connect)
    }

    /// A new unix stream socket on which `call` (bind or connect) was made with `addr`; on
    /// failure it is closed and the error names `what`.
    private static func unixSocket(_ addr: inout sockaddr_un, _ what: String,
                                   _ call: (Int32, UnsafePointer<sockaddr>, socklen_t) -> Int32) throws(DaemonError) -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw .errno("socket") }
        let ok = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { call(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard ok == 0 else {
            let e = errno
            close(fd)
            throw .system(what, errno: e)
        }
        return fd
    }

    /// A listening TCP socket on `address` (IPv4 or IPv6 literal, or a resolvable name).
    static func listenTCP(_ address: HostPort) throws(DaemonError) -> Int32 {
        var hints = addrinfo()
        hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var result: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(address.host, String(address.port), &hints, &result)
        guard rc == 0, let first = result else {
            throw .device("cannot resolve \(address.host): \(String(cString: gai_strerror(rc)))")
        }
        defer { freeaddrinfo(result) }
        let ai = first.pointee
        let fd = socket(ai.ai_family, ai.ai_socktype | Int32(SOCK_CLOEXEC.rawValue), ai.ai_protocol)
        guard fd >= 0 else { throw .errno("socket") }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        guard bind(fd, ai.ai_addr, ai.ai_addrlen) == 0, listen(fd, 64) == 0 else {
            let e = errno
            close(fd)
            throw .system("listen \(address.host):\(address.port)", errno: e)
        }
        return fd
    }

    /// The path a unix socket is bound to (nil for other families or unnamed sockets).
    static func unixPath(of fd: Int32) -> String? {
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
    static func peerUID(_ fd: Int32) -> uid_t? {
        // struct ucred { pid_t pid; uid_t uid; gid_t gid; } (hidden behind _GNU_SOURCE in Glibc).
        var cred: (Int32, UInt32, UInt32) = (0, 0, 0)
        var len = socklen_t(MemoryLayout<(Int32, UInt32, UInt32)>.size)
        guard getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0 else { return nil }
        return cred.1
    }

    /// accept(2) with close-on-exec set (accept4 is not in Glibc's Swift module).
    static func acceptConnection(_ fd: Int32) -> Int32? {
        let c = accept(fd, nil, nil)
        guard c >= 0 else { return nil }
        _ = fcntl(c, F_SETFD, FD_CLOEXEC)
        return c
    }

    /// Waits until `fd` is readable (or `timeout` ms pass); false on timeout or error.
    static func waitReadable(_ fd: Int32, timeout: Int32) -> Bool {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        while true {
            let n = poll(&p, 1, timeout)
            if n < 0, errno == EINTR { continue }
            return n > 0
        }
    }

    /// Reads until the peer closes, `limit` bytes, or `stopAtNewline` sees a newline; each wait
    /// for data is bounded by `timeout` ms so a stuck peer cannot hold the caller.
    static func readMessage(_ fd: Int32, limit: Int, timeout: Int32, stopAtNewline: Bool) -> [UInt8]? {
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while out.count < limit {
            guard waitReadable(fd, timeout: timeout) else { return nil }
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 { if errno == EINTR { continue }; return nil }
            if n == 0 { break }
            out += chunk[0..<n]
            if stopAtNewline, chunk[0..<n].contains(UInt8(ascii: "\n")) { break }
        }
        return out
    }
}
