// The control socket: server side (run on the daemon's control thread) and client side (the
// `status` and `ctl` commands).
#if canImport(Glibc)
import Glibc
#endif
import Posix

/// Accepts control connections; each one is a single request and reply.
final class ControlServer {
    let path: String
    let fd: Int32

    /// Listens on `path` with mode 0600: only root (and the daemon's own user) may connect. A
    /// stale socket file (nobody accepts on it) is replaced; a live one is an error, so two
    /// daemons never steal each other's socket. Missing directories are created.
    init(path: String) throws(DaemonError) {
        self.path = path
        do { _ = try Sockets.unixAddress(path) } catch { throw DaemonError(error) }  // before any mkdir
        let dir = path.lastIndex(of: "/").map { String(path[..<$0]) } ?? ""
        if !dir.isEmpty { try FileSystem.makeDirectories(dir) }
        do { fd = try Sockets.listenUnix(path, mode: 0o600, backlog: 64) } catch { throw DaemonError(error) }
    }

    /// Serves one pending connection with `handler` (call when `fd` is readable).
    func serveOne(_ handler: (ControlRequest) -> ControlReply) {
        guard let conn = Sockets.accept(fd) else { return }
        defer { Glibc.close(conn) }
        // The socket mode already keeps others out; the credential check also covers a socket
        // directory someone made world-writable.
        if let uid = Sockets.peerUID(conn), uid != 0, uid != geteuid() {
            FileSystem.writeAll(conn, ControlReply.error("permission denied").text)
            return
        }
        guard let bytes = Sockets.readMessage(conn, limit: 65536, timeout: 2000, stopAtNewline: true),
              let line = String(decoding: bytes, as: UTF8.self).split(separator: "\n").first else {
            return
        }
        let reply: ControlReply
        do throws(DaemonError) { reply = handler(try ControlRequest.parse(String(line))) } catch { reply = .error(error.description) }
        FileSystem.writeAll(conn, reply.text)
    }

    func close() {
        Glibc.close(fd)
        unlink(path)
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
        guard FileSystem.writeAll(fd, request.line + "\n") else { throw .errno("write \(socket)") }
        shutdown(fd, Int32(SHUT_WR))
        guard let bytes = Sockets.readMessage(fd, limit: 16 << 20, timeout: timeout, stopAtNewline: false) else {
            throw .control("no reply from the daemon on \(socket)")
        }
        switch try ControlReply.parse(String(decoding: bytes, as: UTF8.self)) {
        case .ok(let lines): return lines
        case .error(let m): throw .control(m)
        }
    }
}

/// A tiny HTTP/1.0 responder for Prometheus scrapes: GET /metrics, everything else 404.
final class MetricsServer {
    let fd: Int32
    /// The bound port (useful when asked for port 0).
    let port: UInt16

    init(address: HostPort) throws(DaemonError) {
        do {
            let l = try Sockets.listenTCP(host: address.host, port: address.port, backlog: 64)
            fd = l.fd
            port = l.port ?? 0
        } catch {
            throw DaemonError(error)
        }
    }

    func serveOne(_ body: () -> String) {
        guard let conn = Sockets.accept(fd) else { return }
        defer { Glibc.close(conn) }
        guard let bytes = Sockets.readMessage(conn, limit: 8192, timeout: 2000, stopAtNewline: true) else { return }
        let requestLine = String(decoding: bytes, as: UTF8.self).split(separator: "\r\n").first ?? ""
        let parts = requestLine.split(separator: " ")
        let ok = parts.count >= 2 && (parts[0] == "GET" || parts[0] == "HEAD")
            && (parts[1] == "/metrics" || parts[1].hasPrefix("/metrics?"))
        let content = ok ? body() : "not found; try /metrics\n"
        var response = (ok ? "HTTP/1.0 200 OK\r\n" : "HTTP/1.0 404 Not Found\r\n")
            + "Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
            + "Content-Length: \(content.utf8.count)\r\nConnection: close\r\n\r\n"
        if parts.first != "HEAD" { response += content }
        FileSystem.writeAll(conn, response)
    }

    func close() { Glibc.close(fd) }
}
