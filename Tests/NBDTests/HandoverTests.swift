import CNBD
import Glibc
import NBD
import TestSupport
import Testing

/// A server hands its listening sockets and live connections to a successor (issue 15), here a
/// second NBDServer in the same process standing in for the exec'd one: the clients go on with
/// no error and no reconnect. The predecessor relinquishes the sockets (its stop() would shut
/// them down under the successor); its parked threads end with the test process.
@Suite struct HandoverTests {
    func successor(of a: TestServer, _ handed: SuspendedServer) throws -> NBDServer {
        let b = try NBDServer(a.server.configuration)
        try b.listen(on: handed.listeners.map { .handedOver(fd: $0.fd, ownedPath: $0.ownedPath) })
        #expect(b.adopt(handed.connections).isEmpty)
        a.server.relinquish()
        return b
    }

    @Test func libnbdConnectionGoesOnInTheSuccessor() throws {
        let a = try TestServer()
        let c = try LibNBD()
        try c.check(nbd_connect_unix(c.h, a.socketPath))
        try c.pwrite(pattern(65536, seed: 1), at: 0)
        let handed = try a.server.suspend(within: .seconds(5))
        #expect(handed.connections.count == 1)
        #expect(handed.connections.first?.exportName == "disk")
        #expect(handed.connections.first?.structuredReplies == true)
        #expect(handed.connections.first?.unread.isEmpty == true)
        let b = try successor(of: a, handed)
        defer { b.stop() }
        // The same handle, the same socket: reads what it wrote, writes on.
        #expect(try c.pread(65536, at: 0) == pattern(65536, seed: 1))
        try c.pwrite(pattern(4096, seed: 2), at: 1 << 20)
        #expect(try c.pread(4096, at: 1 << 20) == pattern(4096, seed: 2))
        #expect(b.connectionCount == 1)
        // A new client on the handed-over socket reaches the successor.
        let d = try LibNBD()
        try d.check(nbd_connect_unix(d.h, a.socketPath))
        #expect(try d.pread(4096, at: 1 << 20) == pattern(4096, seed: 2))
        #expect(b.connectionCount == 2)
    }

    /// Half a request had arrived when the server stopped: the successor gets its bytes and
    /// answers it when the rest comes.
    @Test func aPartialRequestTravelsWithItsConnection() throws {
        let a = try TestServer()
        let c = try RawClient(unixPath: a.socketPath)
        _ = try c.negotiate(export: "disk")
        let data = pattern(4096, seed: 7)
        let write = requestBytes(type: .write, cookie: 11, offset: 8192, length: 4096) + data
        try c.send(Array(write[..<1000]))
        // The engine has the 1000 bytes once it waits for more; only then can the hand-over see them.
        let handed = try a.server.suspend(within: .seconds(5))
        if handed.connections.first?.unread.count != 1000 {
            // The suspend came before the engine read them: they are still in the socket, also fine.
            #expect(handed.connections.first?.unread.isEmpty == true)
        }
        let b = try successor(of: a, handed)
        defer { b.stop() }
        try c.send(Array(write[1000...]))
        let r = try c.reply()
        #expect(r.cookie == 11 && r.errorCode == 0)
        try c.request(.read, cookie: 12, offset: 8192, length: 4096)
        var got: [UInt8] = []
        while true {
            let chunk = try c.reply()
            if chunk.type == 1 { got += chunk.payload.dropFirst(8) }
            if chunk.flags & 1 != 0 { break }
        }
        #expect(got == data)
    }

    /// A failed hand-over: resume() and the same server goes on with the same connection.
    @Test func resumeAfterSuspendKeepsServing() throws {
        let a = try TestServer()
        let c = try LibNBD()
        try c.check(nbd_connect_unix(c.h, a.socketPath))
        try c.pwrite(pattern(4096, seed: 3), at: 0)
        let handed = try a.server.suspend(within: .seconds(5))
        #expect(handed.connections.count == 1)
        a.server.resume()
        #expect(try c.pread(4096, at: 0) == pattern(4096, seed: 3))
        let d = try LibNBD()
        try d.check(nbd_connect_unix(d.h, a.socketPath))
        #expect(try d.pread(4096, at: 0) == pattern(4096, seed: 3))
    }

    /// Connections still negotiating are closed, not handed over: their clients reconnect.
    @Test func negotiatingConnectionsAreClosed() throws {
        let a = try TestServer()
        let raw = try RawClient(unixPath: a.socketPath)
        try raw.hello()
        #expect(eventually { a.server.connectionCount == 1 })
        let handed = try a.server.suspend(within: .seconds(5))
        #expect(handed.connections.isEmpty)
        #expect(raw.closedByServer())
        a.server.resume()
    }
}
