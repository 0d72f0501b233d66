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
