// The control socket (server and the client the `status` and `ctl` commands use) and the HTTP
// /metrics responder. Neither server runs on the daemon's control loop: each has a few worker
// threads (ConnectionWorkers) that accept a connection and serve it within its deadline, so a
// slow or stalled peer holds one worker for a bounded time, never the other workers and never
// the loop that refreshes the stats, pings the watchdog and handles SIGTERM.
#if canImport(Glibc)
import Glibc
#endif
import Posix

/// How long one control or metrics connection may take, and how many are served at once (the
/// NBD server's ConnectionLimits are its sockets' slots, another thing).
enum PeerLimits {
    /// Seconds a peer has to send its whole request (not per byte: a trickle does not extend it).
    static let request = 2.0
    /// Seconds we spend writing a reply to a peer that reads slowly or not at all.
    static let reply = 5.0
    /// Worker threads per server.
    static let workers = 4
}

/// One accepted connection whose every wait is bounded by a deadline and cut short when the
/// server stops (`stop` becomes readable).
struct PeerConnection {
    let fd: Int32
    /// Readable once the server stops; -1: never.
    let stop: Int32

    /// Waits for `events` on the connection until `deadline` (monotonic seconds); false on a
    /// timeout, an error or the server stopping.
    func wait(_ events: Int32, until deadline: Double) -> Bool {
        while true {
            let ms = ((deadline - SystemInfo.now()) * 1000).rounded(.up)
            guard ms > 0 else { return false }
            var fds = [pollfd(fd: fd, events: Int16(events), revents: 0), pollfd(fd: stop, events: Int16(POLLIN), revents: 0)]
            let n = poll(&fds, stop >= 0 ? 2 : 1, Int32(min(ms, 60_000)))
            if n < 0 {
                if errno == EINTR { continue }
                return false
            }
            if n == 0 { continue }   // re-check the deadline
            if stop >= 0, fds[1].revents != 0 { return false }
            return fds[0].revents != 0
        }
    }

    /// Reads until the peer shuts its side, `limit` bytes, or (`line`) a newline, all before
    /// `deadline`. Nil on a timeout, an error or the server stopping.
    func readRequest(limit: Int, line: Bool, until deadline: Double) -> [UInt8]? {
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while out.count < limit {
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, min($0.count, limit - out.count), Int32(MSG_DONTWAIT)) }
            if n > 0 {
                out += chunk[0..<n]
                if line, chunk[0..<n].contains(UInt8(ascii: "\n")) { break }
                continue
            }
            if n == 0 { break }
            if errno == EINTR { continue }
            guard errno == EAGAIN || errno == EWOULDBLOCK, wait(POLLIN, until: deadline) else { return nil }
        }
        return out
    }

    /// Writes all of `text` before `deadline`; false if the peer did not take it in time or went
    /// away. Never raises SIGPIPE.
    @discardableResult
    func write(_ text: String, until deadline: Double) -> Bool {
        let bytes = Array(text.utf8)
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + done, $0.count - done, Int32(MSG_NOSIGNAL | MSG_DONTWAIT)) }
            if n > 0 { done += n; continue }
            if n < 0, errno == EINTR { continue }
            guard n < 0, errno == EAGAIN || errno == EWOULDBLOCK, wait(POLLOUT, until: deadline) else { return false }
        }
        return true
    }
}

/// A few threads serving one listening socket: each accepts a connection and serves it to the
/// end (within the connection's deadlines) before it accepts the next one.
final class ConnectionWorkers: @unchecked Sendable {   // @unchecked: the vars are guarded by `lock`; the rest is immutable
    private let listener: Int32
    /// Written once by `stop`; every worker polls the read end and leaves when it is readable.
    private let wake: (read: Int32, write: Int32)
    private var wakeClosed = false
    private let lock = ConditionLock()
    private var running = 0
    private var stopped = false
    /// A descriptor held back (/dev/null) so this socket can accept when NBD connections have
    /// taken every other one: closed to accept, reopened after. -1 = none, or lent out.
    private var reserve: Int32 = -1
    private let wantsReserve: Bool

    /// Starts `count` threads named `name`-N on `listener` (made non-blocking: workers race for
    /// each connection and the losers must not block in accept). With `reserveDescriptor`, one
    /// connection at a time is served even when the process is out of descriptors.
    init(name: String, listener: Int32, count: Int, reserveDescriptor: Bool = false,
         serve: @escaping @Sendable (PeerConnection) -> Void) throws(DaemonError) {
        self.listener = listener
        do { wake = try IO.makePipe() } catch { throw DaemonError(error) }
        wantsReserve = reserveDescriptor
        if reserveDescriptor { reserve = open("/dev/null", O_RDONLY | O_CLOEXEC) }
        _ = fcntl(listener, F_SETFL, fcntl(listener, F_GETFL) | O_NONBLOCK)
        for i in 0..<count {
            lock.withLock { running += 1 }
            do {
                try Threads.spawn(name: "\(name)-\(i)") { [self] in
                    loop(serve)
                    lock.withLock {
                        running -= 1
                        lock.broadcast()
                    }
                }
            } catch {
                lock.withLock { running -= 1 }
                stop()
                throw DaemonError(error)
            }
        }
    }

    private func loop(_ serve: (PeerConnection) -> Void) {
        while true {
            var fds = [pollfd(fd: wake.read, events: Int16(POLLIN), revents: 0), pollfd(fd: listener, events: Int16(POLLIN), revents: 0)]
            let n = poll(&fds, 2, -1)
            if n < 0 {
                if errno == EINTR { continue }
                return
            }
            if fds[0].revents != 0 || fds[1].revents & Int16(POLLERR | POLLNVAL) != 0 { return }
            guard fds[1].revents & Int16(POLLIN) != 0 else { continue }
            var conn = Sockets.accept(listener)
            if conn == nil, errno == EMFILE || errno == ENFILE, let spare = takeReserve() {
                close(spare)
                conn = Sockets.accept(listener)
            }
            guard let conn else {
                let e = errno
                refillReserve()
                // Another worker took it, or the peer left (EAGAIN, ECONNABORTED). Out of
                // descriptors (EMFILE, ENFILE, ENOBUFS): the connection stays queued, so pause
                // instead of spinning on it.
                if e != EAGAIN, e != EWOULDBLOCK, e != EINTR, e != ECONNABORTED {
                    _ = poll(&fds, 1, 100)
                }
                continue
            }
            serve(PeerConnection(fd: conn, stop: wake.read))
            close(conn)
            refillReserve()
        }
    }

    private func takeReserve() -> Int32? {
        lock.withLock {
            guard reserve >= 0 else { return nil }
            defer { reserve = -1 }
            return reserve
        }
    }

    /// Reopens the reserve if it is lent out or could not be opened; failing that (something
    /// else took the descriptor), the next connection tries again.
    private func refillReserve() {
        guard wantsReserve, lock.withLock({ reserve < 0 }) else { return }
        let fd = open("/dev/null", O_RDONLY | O_CLOEXEC)
        lock.withLock { if reserve < 0 { reserve = fd } else if fd >= 0 { close(fd) } }
    }

    /// Tells every worker to leave (connections in progress are dropped at their next wait) and
    /// waits up to `seconds` for them; a worker inside a host call finishes it first.
    func stop(waitingAtMost seconds: Double = 5) {
        lock.lock()
        defer { lock.unlock() }
        if !stopped {
            stopped = true
            var one: UInt8 = 1
            _ = Glibc.write(wake.write, &one, 1)
        }
        let deadline = Clock.deadline(after: seconds)
        while running > 0, lock.wait(until: deadline) {}
        // The pipe stays open while a late worker may still poll it.
        if running == 0, !wakeClosed {
            wakeClosed = true
            close(wake.read)
            close(wake.write)
            if reserve >= 0 { close(reserve); reserve = -1 }
        }
    }
}

/// Accepts control connections; each one is a single request and reply.
final class ControlServer {
    let path: String
    let fd: Int32
    /// The socket file we bound: close() removes it only while it is still that file.
    private let socketFile: FileIdentity?
    private var workers: ConnectionWorkers?
    private var closed = false

    /// The control socket a predecessor handed over at an upgrade (`fd` listens on `path`).
    init(adopting fd: Int32, path: String) {
        self.path = path
        self.fd = fd
        Sockets.setCloseOnExec(fd)
        socketFile = FileSystem.identity(path)
    }

    /// Listens on `path` with mode 0600: only root (and the daemon's own user) may connect. A
    /// stale socket file (nobody accepts on it) is replaced; a live one is an error, so two
    /// daemons never steal each other's socket; anything else at the path (a file, a link) is
    /// refused and left alone. Missing directories are created.
    init(path: String) throws(DaemonError) {
        self.path = path
        do { _ = try Sockets.unixAddress(path) } catch { throw DaemonError(error) }  // before any mkdir
        let dir = path.lastIndex(of: "/").map { String(path[..<$0]) } ?? ""
        if !dir.isEmpty { try FileSystem.makeDirectories(dir) }
        do { fd = try Sockets.listenUnix(path, mode: 0o600, backlog: 64) } catch { throw DaemonError(error) }
        socketFile = FileSystem.identity(path)
    }

    /// Serves connections on `threads` worker threads with `handler` until `close`.
    /// `upgrade`: serves `upgrade` requests with the connection's descriptor (the successor
    /// process answers it); without it they go to `handler` like any other.
    func start(threads: Int = PeerLimits.workers, _ handler: @escaping @Sendable (ControlRequest) -> ControlReply,
               upgrade: (@Sendable (String?, Int32) -> ControlReply)? = nil) throws(DaemonError) {
        // The control socket is how an operator sees and fixes a daemon that is out of
        // descriptors, so it keeps one back.
        workers = try ConnectionWorkers(name: "zramnbd-ctl", listener: fd, count: threads, reserveDescriptor: true) { conn in
            ControlServer.serve(conn, handler, upgrade: upgrade)
        }
    }

    /// Serves one connection on the calling thread, waiting up to 2 s for it (tests).
    func serveOne(_ handler: (ControlRequest) -> ControlReply) {
        guard Sockets.waitReadable(fd, timeout: 2000), let conn = Sockets.accept(fd) else { return }
        defer { Glibc.close(conn) }
        ControlServer.serve(PeerConnection(fd: conn, stop: -1), handler)
    }

    /// One request and its reply, within the connection limits.
    static func serve(_ conn: PeerConnection, _ handler: (ControlRequest) -> ControlReply,
                      upgrade: ((String?, Int32) -> ControlReply)? = nil) {
        let start = SystemInfo.now()
        // The socket mode already keeps others out; the credential check also covers a socket
        // directory someone made world-writable. The refusal is sent without reading the request.
        if let uid = Sockets.peerUID(conn.fd), uid != 0, uid != geteuid() {
            conn.write(ControlReply.error("permission denied").text, until: start + PeerLimits.reply)
            return
        }
        // The first line by bytes: in a String, "\r\n" is one Character that is not "\n".
        guard let bytes = conn.readRequest(limit: 65536, line: true, until: start + PeerLimits.request),
              let line = bytes.split(separator: UInt8(ascii: "\n")).first else {
            return
        }
        let reply: ControlReply
        do throws(DaemonError) {
            let request = try ControlRequest.parse(String(decoding: line, as: UTF8.self))
            if case .upgrade(let binary) = request, let upgrade {
                reply = upgrade(binary, conn.fd)
            } else {
                reply = handler(request)
            }
        } catch {
            reply = .error(error.description)
        }
        conn.write(reply.text, until: SystemInfo.now() + PeerLimits.reply)
    }

    /// Stops the workers, closes the socket and removes its file (again: nothing).
    func close() {
        guard !closed else { return }
        closed = true
        workers?.stop()
        Glibc.close(fd)
        if let s = socketFile, FileSystem.identity(path) == s { unlink(path) }
    }
}

public enum ControlClient {
    /// Sends `request` to the daemon at `socket` and returns the body lines of an "ok" reply.
    public static func send(_ request: ControlRequest, socket: String, timeout: Int32 = 120_000) throws(DaemonError) -> [String] {
        let fd: Int32
        do { fd = try Sockets.connectUnix(socket) } catch {
            if case .system(_, let e) = error {
                let why = e == ENOENT || e == ECONNREFUSED ? "is the daemon running? (zramnbd serve)"
                    : e == EACCES ? "permission denied (the control socket is for root)" : String(cString: strerror(e))
                throw .control("cannot connect to \(socket): \(why)")
            }
            throw DaemonError(error)
        }
        defer { close(fd) }
        // A daemon that refuses us replies and closes without reading the request: our write may
        // then fail (EPIPE, without a SIGPIPE) while its reply waits in our socket, so read it anyway.
        let sent = PeerConnection(fd: fd, stop: -1).write(request.line + "\n", until: SystemInfo.now() + Double(timeout) / 1000)
        let writeErrno = errno
        shutdown(fd, Int32(SHUT_WR))
        let bytes = readReply(fd, timeout: timeout)
        if bytes.isEmpty {
            if !sent { throw .system("write \(socket)", errno: writeErrno) }
            throw .control("no reply from the daemon on \(socket)")
        }
        switch try ControlReply.parse(String(decoding: bytes, as: UTF8.self)) {
        case .ok(let lines): return lines
        case .error(let m): throw .control(m)
        }
    }

    /// The reply: everything until the daemon closes (at most 16 MiB), each wait bounded by
    /// `timeout` ms. An error after the reply (ECONNRESET: the daemon closed with our request
    /// unread) ends it like a close; an incomplete reply fails to parse.
    static func readReply(_ fd: Int32, timeout: Int32) -> [UInt8] {
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while out.count < 16 << 20 {
            guard Sockets.waitReadable(fd, timeout: timeout) else { return out.last == UInt8(ascii: "\n") ? out : [] }
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0, errno == EINTR { continue }
            if n <= 0 { break }
            out += chunk[0..<n]
        }
        return out
    }
}

/// A tiny HTTP/1.0 responder for Prometheus scrapes: GET /metrics, everything else 404.
final class MetricsServer {
    let fd: Int32
    /// The bound port (useful when asked for port 0).
    let port: UInt16
    private var workers: ConnectionWorkers?
    private var closed = false

    init(address: HostPort) throws(DaemonError) {
        do {
            let l = try Sockets.listenTCP(host: address.host, port: address.port, backlog: 64)
            fd = l.fd
            port = l.port ?? 0
        } catch {
            throw DaemonError(error)
        }
    }

    /// Serves scrapes on `threads` worker threads with the text `body` renders, until `close`.
    func start(threads: Int = PeerLimits.workers, _ body: @escaping @Sendable () -> String) throws(DaemonError) {
        workers = try ConnectionWorkers(name: "zramnbd-http", listener: fd, count: threads) { conn in
            MetricsServer.serve(conn, body)
        }
    }

    /// Serves one connection on the calling thread, waiting up to 2 s for it (tests).
    func serveOne(_ body: () -> String) {
        guard Sockets.waitReadable(fd, timeout: 2000), let conn = Sockets.accept(fd) else { return }
        defer { Glibc.close(conn) }
        MetricsServer.serve(PeerConnection(fd: conn, stop: -1), body)
    }

    static func serve(_ conn: PeerConnection, _ body: () -> String) {
        let start = SystemInfo.now()
        guard let bytes = conn.readRequest(limit: 8192, line: true, until: start + PeerLimits.request) else { return }
        let requestLine = String(decoding: bytes, as: UTF8.self).split(separator: "\r\n").first ?? ""
        let parts = requestLine.split(separator: " ")
        let ok = parts.count >= 2 && (parts[0] == "GET" || parts[0] == "HEAD")
            && (parts[1] == "/metrics" || parts[1].hasPrefix("/metrics?"))
        let content = ok ? body() : "not found; try /metrics\n"
        var response = (ok ? "HTTP/1.0 200 OK\r\n" : "HTTP/1.0 404 Not Found\r\n")
            + "Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
            + "Content-Length: \(content.utf8.count)\r\nConnection: close\r\n\r\n"
        if parts.first != "HEAD" { response += content }
        conn.write(response, until: SystemInfo.now() + PeerLimits.reply)
    }

    /// Stops the workers and closes the socket (again: nothing).
    func close() {
        guard !closed else { return }
        closed = true
        workers?.stop()
        Glibc.close(fd)
    }
}
