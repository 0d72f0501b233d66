import CNBD
import Foundation
import Glibc
import NBD
import TestSupport
import Testing

/// A libnbd handle (CNBD), closed explicitly before the server stops.
final class LibNBD {
    let h: OpaquePointer

    init() throws {
        guard let h = nbd_create() else { throw LibNBD.error() }
        self.h = h
    }

    deinit { nbd_close(h) }

    static func error() -> TestError { TestError(String(cString: nbd_get_error())) }

    func check(_ rc: Int32) throws { if rc < 0 { throw LibNBD.error() } }

    func pwrite(_ data: [UInt8], at offset: UInt64) throws {
        try check(data.withUnsafeBytes { nbd_pwrite(h, $0.baseAddress, $0.count, offset, 0) })
    }

    func pread(_ count: Int, at offset: UInt64) throws -> [UInt8] {
        var buf = [UInt8](repeating: 0, count: count)
        try check(buf.withUnsafeMutableBytes { nbd_pread(h, $0.baseAddress, count, offset, 0) })
        return buf
    }

    static var noCompletion: nbd_completion_callback { nbd_completion_callback(callback: nil, user_data: nil, free: nil) }

    /// Polls until `done` holds; throws after `seconds`.
    func poll(until done: () -> Bool, seconds: Double = 20) throws {
        let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
        while !done() {
            guard ContinuousClock.now < deadline else { throw TestError("libnbd poll timed out") }
            try check(nbd_poll(h, 1000))
        }
    }

    /// Cookies of completed commands, in the order their replies arrived; retires them.
    func retireCompleted() throws -> [Int64] {
        var out: [Int64] = []
        while true {
            let c = nbd_aio_peek_command_completed(h)
            if c <= 0 { break }
            let r = nbd_aio_command_completed(h, UInt64(c))
            if r < 0 { throw LibNBD.error() }
            out.append(c)
        }
        return out
    }
}

func run(_ argv: [String], in dir: TempDir, _ name: String) throws -> CommandResult {
    try Subprocess.run(argv, outputPrefix: dir.file(name), environment: ["PATH": "/usr/bin:/bin:/usr/sbin:/sbin"])
}

/// Real clients: libnbd tools, qemu-io, libnbd from Swift.
@Suite struct ClientTests {
    @Test func nbdinfoJSONDescribesTheExport() throws {
        let s = try TestServer()
        let r = try run(["nbdinfo", "--json", s.uri], in: s.dir, "nbdinfo")
        #expect(r.succeeded, "\(r.stderr)")
        let json = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]
        #expect(json?["protocol"] as? String == "newstyle-fixed")
        #expect(json?["structured"] as? Bool == true)
        let export = (json?["exports"] as? [[String: Any]])?.first
        #expect(export?["export-name"] as? String == "disk")
        #expect(export?["description"] as? String == "test disk")
        #expect(export?["export-size"] as? Int == 16 << 20)
        #expect(export?["contexts"] as? [String] == ["base:allocation"])
        for flag in ["can_cache", "can_df", "can_fast_zero", "can_flush", "can_fua", "can_multi_conn", "can_trim", "can_zero"] {
            #expect(export?[flag] as? Bool == true, "\(flag)")
        }
        #expect(export?["is_read_only"] as? Bool == false)
        #expect(export?["block_size_minimum"] as? Int == 1)
        #expect(export?["block_size_preferred"] as? Int == 4096)
        #expect(export?["block_size_maximum"] as? Int == 32 << 20)
    }

    @Test func nbdinfoListShowsEveryExport() throws {
        let s = try TestServer(exports: [Export(name: "spare", description: "second disk",
                                                backend: try MemoryBackend(size: 1 << 20), readOnly: true)])
        let r = try run(["nbdinfo", "--list", "--json", s.uri], in: s.dir, "list")
        #expect(r.succeeded, "\(r.stderr)")
        let json = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]
        let exports = json?["exports"] as? [[String: Any]] ?? []
        #expect(exports.map { $0["export-name"] as? String } == ["disk", "spare"])
        #expect(exports.map { $0["description"] as? String } == ["test disk", "second disk"])
        #expect(exports.map { $0["is_read_only"] as? Bool } == [false, true])
    }

    @Test func nbdinfoMapShowsDataZeroAndHoles() throws {
        let s = try TestServer(size: 1 << 20)
        let c = try LibNBD()
        try c.check(nbd_connect_unix(c.h, s.socketPath))
        try c.pwrite(pattern(8192, seed: 1), at: 0)
        try c.check(nbd_zero(c.h, 65536, 4096, UInt32(LIBNBD_CMD_FLAG_NO_HOLE)))  // count, offset
        try c.check(nbd_shutdown(c.h, 0))
        let r = try run(["nbdinfo", "--map", s.uri], in: s.dir, "map")
        #expect(r.succeeded, "\(r.stderr)")
        let rows = r.stdout.split(separator: "\n").map { $0.split(separator: " ", omittingEmptySubsequences: true).map(String.init) }
        #expect(rows == [
            ["0", "4096", "0", "data"],
            ["4096", "65536", "2", "zero"],
            ["69632", "978944", "3", "hole,zero"],
        ])
    }

    @Test func qemuIoPatternWriteReadDiscardZero() throws {
        let s = try TestServer(size: 64 << 20)
        let target = "nbd:unix:\(s.socketPath)"
        let r = try run(["qemu-io", "-f", "raw",
                         "-c", "write -P 0xab 0 1M", "-c", "read -P 0xab 0 1M",
                         "-c", "write -z 1M 1M", "-c", "read -P 0 1M 1M",
                         "-c", "write -z -u 2M 64k", "-c", "read -P 0 2M 64k",
                         "-c", "discard 3M 1M", "-c", "read -P 0 3M 1M",
                         "-c", "flush",
                         "-c", "write -f -P 0xcd 4M 64k", "-c", "read -P 0xcd 4M 64k",
                         "-c", "aio_write -P 0x11 8M 64k", "-c", "aio_write -P 0x22 9M 64k", "-c", "aio_flush",
                         "-c", "read -P 0x11 8M 64k", "-c", "read -P 0x22 9M 64k",
                         "-c", "read -P 0 60M 4M",
                         target], in: s.dir, "qemu-io")
        #expect(r.succeeded, "\(r.stderr)")
        #expect(!r.stdout.contains("fail") && !r.stdout.contains("mismatch") && !r.stderr.contains("error"),
                "\(r.stdout)\(r.stderr)")
        #expect(r.stdout.components(separatedBy: "read ").count - 1 == 8)
    }

    @Test func qemuImgConvertAndCompare() throws {
        let s = try TestServer(size: 8 << 20)
        let image = s.dir.file("src.img")
        #expect(FileManager.default.createFile(atPath: image, contents: Data(pattern(4 << 20, seed: 5) + [UInt8](repeating: 0, count: 4 << 20))))
        let target = "nbd:unix:\(s.socketPath)"
        let convert = try run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", image, target], in: s.dir, "convert")
        #expect(convert.succeeded, "\(convert.stderr)")
        let compare = try run(["qemu-img", "compare", "-f", "raw", "-F", "raw", image, target], in: s.dir, "compare")
        #expect(compare.succeeded, "\(compare.stdout)\(compare.stderr)")
        #expect(compare.stdout.contains("Images are identical"))
    }

    /// 16 writes then 16 reads in flight at once through libnbd's asynchronous API: the engine
    /// takes them as batches, answers every one, and the data reads back.
    @Test func libnbdAioBurstQD16AllComplete() throws {
        let s = try TestServer()
        let c = try LibNBD()
        try c.check(nbd_connect_unix(c.h, s.socketPath))

        let blocks = (0..<16).map { pattern(4096, seed: UInt8($0)) }
        var writes: [Int64] = []
        for (i, b) in blocks.enumerated() {
            let cookie = b.withUnsafeBytes {
                nbd_aio_pwrite(c.h, $0.baseAddress, 4096, UInt64(i) * 4096, LibNBD.noCompletion, 0)
            }
            #expect(cookie > 0)
            writes.append(cookie)
        }
        var done: [Int64] = []
        try c.poll(until: {
            done += (try? c.retireCompleted()) ?? []
            return done.count == 16
        })
        #expect(Set(done) == Set(writes))

        let buffers = UnsafeMutableRawPointer.allocate(byteCount: 16 * 4096, alignment: 4096)
        defer { buffers.deallocate() }
        var reads: [Int64] = []
        for i in 0..<16 {
            reads.append(nbd_aio_pread(c.h, buffers + i * 4096, 4096, UInt64(i) * 4096, LibNBD.noCompletion, 0))
        }
        #expect(nbd_aio_in_flight(c.h) == 16)
        var order: [Int64] = []
        try c.poll(until: {
            order += (try? c.retireCompleted()) ?? []
            return order.count == 16
        })
        #expect(Set(order) == Set(reads))
        for i in 0..<16 {
            #expect(Array(UnsafeRawBufferPointer(start: buffers + i * 4096, count: 4096)) == blocks[i])
        }
    }

    @Test func stdioModeServesOneConnection() throws {
        let backend = try MemoryBackend(size: 1 << 20)
        let server = try NBDServer(NBDServer.Configuration(catalog: try ExportCatalog([Export(name: "x", backend: backend)], defaultExport: "x")))
        var fds: [Int32] = [0, 0]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
        let serverFD = fds[0]
        let served = Background { server.serve(input: serverFD, output: serverFD, closeWhenDone: true) }
        do {
            let c = try LibNBD()
            try c.check(nbd_connect_socket(c.h, fds[1]))
            #expect(nbd_get_size(c.h) == 1 << 20)
            try c.pwrite(pattern(4096, seed: 3), at: 8192)
            #expect(try c.pread(4096, at: 8192) == pattern(4096, seed: 3))
            try c.check(nbd_shutdown(c.h, 0))
        }
        #expect(served.wait())
        server.stop()
    }

    @Test func tcpEndpointWithAnEphemeralPort() throws {
        let backend = try MemoryBackend(size: 1 << 20)
        let server = try NBDServer(NBDServer.Configuration(catalog: try ExportCatalog([Export(name: "t", backend: backend)], defaultExport: "t")))
        defer { server.stop() }
        let sockets = try server.listen(on: [.tcp(host: "127.0.0.1", port: 0)])
        let port = try #require(sockets.first?.port)
        #expect(port != 0)
        let c = try LibNBD()
        try c.check(nbd_connect_tcp(c.h, "127.0.0.1", String(port)))
        try c.pwrite(pattern(512, seed: 8), at: 512)
        #expect(try c.pread(512, at: 512) == pattern(512, seed: 8))
    }
}

/// Endpoints: permissions, stale sockets, socket activation.
@Suite struct EndpointTests {
    func server() throws -> NBDServer {
        var config = NBDServer.Configuration(catalog: try ExportCatalog([Export(name: "e", backend: try MemoryBackend(size: 1 << 20))]))
        config.stopGrace = .milliseconds(300)  // the raw clients below idle in negotiation
        return try NBDServer(config)
    }

    @Test func unixSocketIsPrivateByDefaultAndModeIsConfigurable() throws {
        let dir = TempDir()
        let a = try server()
        let b = try server()
        defer {
            a.stop()
            b.stop()
        }
        try a.listen(on: [.unix(path: dir.file("a.sock"))])
        try b.listen(on: [.unix(path: dir.file("b.sock"), mode: 0o660)])
        var st = stat()
        #expect(stat(dir.file("a.sock"), &st) == 0 && st.st_mode & 0o777 == 0o600)
        #expect(stat(dir.file("b.sock"), &st) == 0 && st.st_mode & 0o777 == 0o660)
        a.stop()
        #expect(access(dir.file("a.sock"), F_OK) != 0)  // removed on stop
    }

    @Test func staleSocketIsReplacedButALiveOneIsNot() throws {
        let dir = TempDir()
        let path = dir.file("s.sock")
        let live = try server()
        try live.listen(on: [.unix(path: path)])
        let second = try server()
        #expect(throws: NBDError.self) { try second.listen(on: [.unix(path: path)]) }
        live.stop()
        // Leave a socket file behind with nobody listening, as a crashed server would.
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in for (i, b) in path.utf8.enumerated() { raw[i] = b } }
        _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        close(fd)
        #expect(access(path, F_OK) == 0)
        try second.listen(on: [.unix(path: path)])
        do {
            let c = try RawClient(unixPath: path)
            try c.hello()
        }
        second.stop()
    }

    @Test func systemdActivationNeedsOurPid() {
        #expect(Endpoint.systemdSockets(environment: ["LISTEN_PID": "42", "LISTEN_FDS": "2"], pid: 42)
            == [.listeningSocket(fd: 3), .listeningSocket(fd: 4)])
        #expect(Endpoint.systemdSockets(environment: ["LISTEN_PID": "41", "LISTEN_FDS": "2"], pid: 42).isEmpty)
        #expect(Endpoint.systemdSockets(environment: ["LISTEN_FDS": "1"], pid: 42).isEmpty)
        #expect(Endpoint.systemdSockets(environment: ["LISTEN_PID": "42", "LISTEN_FDS": "0"], pid: 42).isEmpty)
    }

    @Test func inheritedListeningSocketIsServed() throws {
        let dir = TempDir()
        let path = dir.file("inherited.sock")
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in for (i, b) in path.utf8.enumerated() { raw[i] = b } }
        #expect(withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } } == 0)
        #expect(listen(fd, 8) == 0)
        let s = try server()
        defer { s.stop() }
        try s.listen(on: [.listeningSocket(fd: fd)])
        let c = try RawClient(unixPath: path)
        try c.hello()
        try c.option(.list)
        #expect(try c.optionReplies().map(\.type) == [2, 1])
    }
}
