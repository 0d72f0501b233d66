import Glibc
import NBD
import Testing

/// What one client, or a flood of them, can hold: the handshake deadline, the slots of each
/// listening socket, the log of refusals, the memory of big requests.
@Suite struct ConnectionLimitTests {
    @Test func clientsThatDoNotNegotiateAreClosedAfterTheHandshakeLimit() throws {
        let s = try TestServer(handshakeLimit: .milliseconds(300))
        let started = ContinuousClock.now
        let served = try RawClient(unixPath: s.socketPath)
        try served.negotiate(structured: false)
        let silent = try RawClient(unixPath: s.socketPath)
        let flagsOnly = try RawClient(unixPath: s.socketPath)
        try flagsOnly.hello()
        let listing = try RawClient(unixPath: s.socketPath)
        try listing.hello()
        try listing.option(.list)
        _ = try listing.optionReplies()
        // Options kept it busy, but the limit covers the whole negotiation.
        #expect(silent.closedByServer(timeout: 5000))
        #expect(flagsOnly.closedByServer(timeout: 5000))
        #expect(listing.closedByServer(timeout: 5000))
        #expect(ContinuousClock.now - started >= .milliseconds(290))
        // The connection in transmission has no such limit.
        #expect(eventually { s.server.connectionCount == 1 })
        try served.request(.read, cookie: 1, offset: 0, length: 4096)
        #expect(try served.simpleReply() == (0, 1))
        _ = try served.receive(4096)
    }

    /// A client that sends options but never reads the replies blocks the server's writes, not
    /// its reads: the deadline must hold there too.
    @Test func clientThatReadsNoRepliesIsClosedAfterTheHandshakeLimit() throws {
        let log = LogLines()
        let s = try TestServer(limits: NegotiationLimits(maxOptions: 1 << 30), handshakeLimit: .milliseconds(300),
                               logLevel: .info, logSink: log.sink)
        let c = try RawClient(unixPath: s.socketPath)
        try c.hello()
        var burst: [UInt8] = []
        for _ in 0..<1024 { burst += optionHeader(OptionCode.list.rawValue, length: 0) }
        // Until both directions are full: the server is stuck writing replies nobody reads.
        var pending = burst[...]
        while true {
            let n = c.sendWithoutBlocking(Array(pending))
            if n <= 0 { break }
            pending = pending.dropFirst(n)
            if pending.isEmpty { pending = burst[...] }
        }
        #expect(eventually { s.server.connectionCount == 0 })
        #expect(log.matching("read no replies within the handshake limit").count == 1)
    }
}

/// Each listening socket has its own slots, and negotiating connections only a few of them.
@Suite struct ListenerSlotTests {
    /// The reproduced finding: idle TCP connections from anyone locked root's unix client out.
    @Test func aFullTCPSocketLeavesTheUnixSocketServing() throws {
        let s = try TestServer(grace: .milliseconds(300), tcp: true, tcpConnections: ConnectionLimits(open: 4, negotiating: 4))
        let idle = try (0..<4).map { _ in try RawClient(tcpPort: s.tcpPort) }
        #expect(eventually { s.server.connectionCount == 4 })
        let refused = try (0..<6).map { _ in try RawClient(tcpPort: s.tcpPort) }
        for c in refused { #expect(c.closedByServer(timeout: 5000)) }
        let unix = try RawClient(unixPath: s.socketPath)
        try unix.negotiate(structured: false)
        let data = pattern(4096, seed: 21)
        try unix.request(.write, cookie: 1, offset: 8192, length: 4096, payload: data)
        #expect(try unix.simpleReply() == (0, 1))
        try unix.request(.read, cookie: 2, offset: 8192, length: 4096)
        #expect(try unix.simpleReply() == (0, 2))
        #expect(try unix.receive(4096) == data)
        #expect(s.server.connectionCount == 5)
        _ = idle
    }

    /// A flood of idle connections only takes the negotiating slots, and each newcomer closes
    /// the oldest of them: a client that negotiates still gets in, on the same socket.
    @Test func idleConnectionsGiveWayToAClientThatNegotiates() throws {
        let log = LogLines()
        let s = try TestServer(grace: .milliseconds(300), tcp: true, tcpConnections: ConnectionLimits(open: 8, negotiating: 3),
                               logLevel: .error, logSink: log.sink)
        let first = try RawClient(tcpPort: s.tcpPort)
        #expect(eventually { s.server.connectionCount == 1 })
        let idle = try (0..<5).map { _ in try RawClient(tcpPort: s.tcpPort) }
        // Three negotiating slots: the first connection and the two oldest of the flood were cut.
        #expect(first.closedByServer(timeout: 5000))
        #expect(idle[0].closedByServer(timeout: 5000))
        #expect(idle[1].closedByServer(timeout: 5000))
        #expect(eventually { s.server.connectionCount == 3 })
        let client = try RawClient(tcpPort: s.tcpPort)
        try client.negotiate(structured: false)
        try client.request(.read, cookie: 1, offset: 0, length: 512)
        #expect(try client.simpleReply() == (0, 1))
        _ = try client.receive(512)
        // In transmission it holds an open slot, no longer a negotiating one.
        #expect(eventually { s.server.connectionCount == 3 })
        #expect(idle[2].closedByServer(timeout: 5000))
        #expect(eventually { log.total(after: "closed") == 4 })
        #expect(log.matching("that were still negotiating: limit 3 negotiating reached").count == log.matching("closed").count)
    }

    /// Refusals are counted and logged once a second, not once per connection.
    @Test func refusalsAreLoggedOncePerSecondWithTheirCount() throws {
        let log = LogLines()
        let s = try TestServer(grace: .milliseconds(300), tcp: true, tcpConnections: ConnectionLimits(open: 2, negotiating: 2),
                               logLevel: .error, logSink: log.sink)
        let held = try (0..<2).map { _ in try RawClient(tcpPort: s.tcpPort) }
        #expect(eventually { s.server.connectionCount == 2 })
        let started = ContinuousClock.now
        let refused = try (0..<50).map { _ in try RawClient(tcpPort: s.tcpPort) }
        for c in refused { #expect(c.closedByServer(timeout: 5000)) }
        #expect(eventually { log.total(after: "refused") == 50 })
        let lines = log.matching("refused")
        let seconds = Int((ContinuousClock.now - started) / .seconds(1))
        #expect(lines.count <= seconds + 2, "\(lines)")
        #expect(lines.allSatisfy { $0.contains("on tcp:127.0.0.1:\(s.tcpPort) in the last second: limit 2 reached") },
                "\(lines)")
        _ = held
    }
}
