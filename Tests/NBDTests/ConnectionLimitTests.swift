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

/// Big requests share one byte budget: past it a connection waits, it never fails.
@Suite struct PayloadBudgetTests {
    /// Both connections need more than the whole budget for every request: they take turns.
    @Test func twoConnectionsWithATinyBudgetCompleteBigWritesAndReads() throws {
        let budget = PayloadBudget(bytes: 1 << 20)
        let s = try TestServer(size: 32 << 20, payloadBudget: budget)
        let results = (0..<2).map { i in
            Background {
                do {
                    let c = try RawClient(unixPath: s.socketPath)
                    try c.negotiate(structured: i == 1)
                    for round in 0..<3 {
                        let size = (4 << 20) + round * 4096  // over the 2 MiB input buffer: read straight into a big buffer
                        let offset = UInt64(i) * (16 << 20)
                        let data = pattern(size, seed: UInt8(10 * i + round))
                        try c.request(.write, cookie: 1, offset: offset, length: UInt32(size), payload: data)
                        let w = try c.reply()
                        guard w.cookie == 1, w.type == 0xffff, w.payload == [0, 0, 0, 0] else {
                            throw TestError("write \(round) of connection \(i) failed")
                        }
                        try c.request(.read, cookie: 2, offset: offset, length: UInt32(size))
                        var back: [UInt8]
                        if i == 0 {
                            guard try c.simpleReply() == (0, 2) else { throw TestError("read \(round) failed") }
                            back = try c.receive(size)
                        } else {
                            back = [UInt8](repeating: 0xee, count: size)
                            while true {
                                let ch = try c.reply()
                                let at = Int(be64(ch.payload[...], 0) - offset)
                                if ch.type == ChunkType.offsetHole.rawValue {
                                    let n = Int(be32(ch.payload[...], 8))
                                    back.replaceSubrange(at..<(at + n), with: repeatElement(0, count: n))
                                } else {
                                    guard ch.type == ChunkType.offsetData.rawValue else { throw TestError("read chunk \(ch.type)") }
                                    back.replaceSubrange(at..<(at + ch.payload.count - 8), with: ch.payload[8...])
                                }
                                if ch.flags & 1 != 0 { break }
                            }
                        }
                        guard back == data else { throw TestError("read \(round) of connection \(i) returned other data") }
                    }
                    try c.request(.disconnect, cookie: 3)
                } catch {
                    Issue.record("connection \(i): \(error)")
                }
            }
        }
        for r in results { #expect(r.wait(seconds: 60)) }
        #expect(eventually { s.server.connectionCount == 0 })
        #expect(budget.reservedBytes == 0)  // the spares went with their connections
    }

    /// A WRITE whose payload stalls holds its buffer; another connection's big READ waits for
    /// the room (it stops reading), then completes when the first one is done.
    @Test func aStalledWriteMakesOthersWaitNotFail() throws {
        let budget = PayloadBudget(bytes: 8 << 20)
        let s = try TestServer(size: 32 << 20, payloadBudget: budget)
        let writer = try RawClient(unixPath: s.socketPath)
        try writer.negotiate(structured: false)
        let reader = try RawClient(unixPath: s.socketPath)
        try reader.negotiate(structured: false)
        let small = try RawClient(unixPath: s.socketPath)
        try small.negotiate(structured: false)
        let data = pattern(8 << 20, seed: 33)
        try writer.send(requestBytes(type: .write, cookie: 1, offset: 0, length: UInt32(data.count)) + data[..<(3 << 20)])
        #expect(eventually { budget.reservedBytes == 8 << 20 })
        try reader.request(.read, cookie: 2, offset: 0, length: 4 << 20)
        #expect(eventually { budget.waitingConnections == 1 })
        // Requests of 256 KiB and less never touch the budget.
        try small.request(.read, cookie: 3, offset: 0, length: 256 << 10)
        #expect(try small.simpleReply() == (0, 3))
        _ = try small.receive(256 << 10)
        try writer.send(Array(data[(3 << 20)...]))
        #expect(try writer.simpleReply() == (0, 1))
        #expect(try reader.simpleReply() == (0, 2))
        #expect(try reader.receive(4 << 20) == Array(data[..<(4 << 20)]))
        #expect(budget.waitingConnections == 0)
        #expect(budget.reservedBytes <= 8 << 20)
    }
}
