import Dispatch
import Glibc
import NBD
import Testing

/// Distinct bytes per position and seed; big patterns repeat a 4 KiB tile stamped with its index
/// (fast to build even in debug builds).
func pattern(_ count: Int, seed: UInt8) -> [UInt8] {
    let tile = (0..<min(count, 4096)).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(seed)) }
    guard count > 4096 else { return tile }
    var out: [UInt8] = []
    out.reserveCapacity(count)
    var block = 0
    while out.count < count {
        let start = out.count
        out += tile.prefix(count - out.count)
        out[start] = UInt8(truncatingIfNeeded: block)
        if out.count > start + 1 { out[start + 1] = UInt8(truncatingIfNeeded: block >> 8) }
        block += 1
    }
    return out
}

/// The server over a real unix socket, spoken to byte by byte.
@Suite struct ServerTests {
    @Test func writeReadTrimWithSimpleReplies() throws {
        let s = try TestServer()
        let c = try RawClient(unixPath: s.socketPath)
        let (size, flags) = try c.negotiate(structured: false)
        #expect(size == 16 << 20)
        #expect(flags == 0xd6d)

        let data = pattern(8192, seed: 1)
        try c.request(.write, flags: .fua, cookie: 1, offset: 4096, length: 8192, payload: data)
        #expect(try c.simpleReply() == (0, 1))
        try c.request(.read, cookie: 2, offset: 4096, length: 8192)
        #expect(try c.simpleReply() == (0, 2))
        #expect(try c.receive(8192) == data)
        try c.request(.flush, cookie: 3)
        #expect(try c.simpleReply() == (0, 3))
        try c.request(.trim, cookie: 4, offset: 4096, length: 4096)
        #expect(try c.simpleReply() == (0, 4))
        try c.request(.read, cookie: 5, offset: 4096, length: 8192)
        #expect(try c.simpleReply() == (0, 5))
        #expect(try c.receive(8192) == [UInt8](repeating: 0, count: 4096) + data[4096...])
        try c.request(.writeZeroes, flags: .noHole, cookie: 6, offset: 8192, length: 4096)
        #expect(try c.simpleReply() == (0, 6))
        try c.request(.cache, cookie: 7, offset: 0, length: 4096)
        #expect(try c.simpleReply() == (0, 7))
        try c.request(.disconnect, cookie: 8)
        #expect(c.closedByServer())
    }

    /// Busy polling takes over from read() while a client streams: every byte it brings in
    /// must count like read()'s, a quiet spell must end in a sleeping read that still wakes up,
    /// and a bad request or a disconnect seen while polling ends the connection as usual.
    @Test(arguments: [false, true])
    func busyPollingConnectionServesStreamsQuietSpellsAndEndings(endWithGarbage: Bool) throws {
        let s = try TestServer(busyPoll: .milliseconds(20))
        let c = try RawClient(unixPath: s.socketPath)
        try c.negotiate(structured: false)
        // A stream: each request follows the previous reply at once, inside the poll window;
        // lengths vary so requests straddle what one recv() returns.
        for i in 0..<300 {
            let length = 4096 * (1 + i % 3)
            try c.request(.write, cookie: UInt64(i), offset: UInt64(i % 16) * 12288, length: UInt32(length),
                          payload: pattern(length, seed: UInt8(truncatingIfNeeded: i)))
            #expect(try c.simpleReply() == (0, UInt64(i)))
        }
        // Longer than the poll window: the server has gone back to sleeping in read().
        usleep(50_000)
        try c.request(.read, cookie: 1000, offset: 0, length: 4096)
        #expect(try c.simpleReply() == (0, 1000))
        #expect(try c.receive(4096) == pattern(4096, seed: UInt8(truncatingIfNeeded: 288)))  // the last write at 0
        // Streaming again, then the end arrives while the server polls.
        try c.request(.flush, cookie: 1001)
        #expect(try c.simpleReply() == (0, 1001))
        if endWithGarbage {
            try c.send([UInt8](repeating: 0x58, count: 28))
        } else {
            try c.request(.disconnect, cookie: 1002)
        }
        #expect(c.closedByServer())
    }

    @Test func structuredReadSendsHolesAndData() throws {
        let s = try TestServer()
        let c = try RawClient(unixPath: s.socketPath)
        try c.negotiate()
        let data = pattern(4096, seed: 9)
        try c.request(.write, cookie: 1, offset: 4096, length: 4096, payload: data)
        #expect(try c.reply().payload == [0, 0, 0, 0])
        try c.request(.read, cookie: 2, offset: 0, length: 16384)
        var covered = [UInt8](repeating: 0xee, count: 16384)
        var chunks: [UInt16] = []
        while true {
            let ch = try c.reply()
            #expect(ch.cookie == 2)
            chunks.append(ch.type)
            let off = Int(be64(ch.payload[...], 0))
            if ch.type == ChunkType.offsetHole.rawValue {
                let n = Int(be32(ch.payload[...], 8))
                for i in off..<(off + n) { covered[i] = 0 }
            } else {
                #expect(ch.type == ChunkType.offsetData.rawValue)
                covered.replaceSubrange(off..<(off + ch.payload.count - 8), with: ch.payload[8...])
            }
            if ch.flags & 1 != 0 { break }
        }
        #expect(chunks == [2, 1, 2])
        #expect(covered == [UInt8](repeating: 0, count: 4096) + data + [UInt8](repeating: 0, count: 8192))

        // DF: one chunk only.
        try c.request(.read, flags: .dontFragment, cookie: 3, offset: 0, length: 16384)
        let one = try c.reply()
        #expect(one.type == ChunkType.offsetData.rawValue && one.flags == 1 && one.payload.count == 8 + 16384)
    }

    @Test func blockStatusReportsMergedRuns() throws {
        let s = try TestServer()
        let c = try RawClient(unixPath: s.socketPath)
        try c.negotiate()
        try c.request(.write, cookie: 1, offset: 0, length: 8192, payload: pattern(8192, seed: 2))
        _ = try c.reply()
        try c.request(.writeZeroes, flags: .noHole, cookie: 2, offset: 8192, length: 4096)
        _ = try c.reply()
        try c.request(.blockStatus, cookie: 3, offset: 0, length: 1 << 20)
        let bs = try c.reply()
        #expect(bs.type == ChunkType.blockStatus.rawValue && bs.flags == 1)
        #expect(be32(bs.payload[...], 0) != 0)
        let d = bs.payload.dropFirst(4)
        let descriptors = stride(from: 0, to: d.count, by: 8).map { (be32(d, $0), be32(d, $0 + 4)) }
        #expect(descriptors.map(\.0) == [8192, 4096, (1 << 20) - 12288])
        #expect(descriptors.map(\.1) == [0, 2, 3])

        try c.request(.blockStatus, flags: .reqOne, cookie: 4, offset: 4096, length: 1 << 20)
        let one = try c.reply()
        #expect(one.payload.count == 12)
        #expect(be32(one.payload[...], 4) == 4096)
        #expect(be32(one.payload[...], 8) == 0)
    }

    @Test func largeRequestsBeyondTheInputBuffer() throws {
        let s = try TestServer(size: 64 << 20)
        let c = try RawClient(unixPath: s.socketPath)
        try c.negotiate(structured: false)
        let big = pattern(32 << 20, seed: 3)
        try c.request(.write, cookie: 1, offset: 4096, length: UInt32(big.count), payload: big)
        #expect(try c.simpleReply() == (0, 1))
        try c.request(.read, cookie: 2, offset: 4096, length: UInt32(big.count))
        #expect(try c.simpleReply() == (0, 2))
        #expect(try c.receive(big.count) == big)
        // And small ones still work after the big buffer went back.
        try c.request(.read, cookie: 3, offset: 4096, length: 512)
        #expect(try c.simpleReply() == (0, 3))
        #expect(try c.receive(512) == Array(big[0..<512]))
    }

    @Test func exportsAreSeparateAndConnectionsShareOne() throws {
        let other = try MemoryBackend(size: 1 << 20)
        let s = try TestServer(exports: [Export(name: "other", backend: other)])
        let a = try RawClient(unixPath: s.socketPath)
        let b = try RawClient(unixPath: s.socketPath)
        let o = try RawClient(unixPath: s.socketPath)
        try a.negotiate(export: "disk", structured: false)
        try b.negotiate(export: "", structured: false)
        #expect(try o.negotiate(export: "other", structured: false).0 == 1 << 20)
        let data = pattern(4096, seed: 4)
        try a.request(.write, cookie: 1, offset: 0, length: 4096, payload: data)
        _ = try a.simpleReply()
        try b.request(.read, cookie: 2, offset: 0, length: 4096)
        _ = try b.simpleReply()
        #expect(try b.receive(4096) == data)
        try o.request(.read, cookie: 3, offset: 0, length: 4096)
        _ = try o.simpleReply()
        #expect(try o.receive(4096) == [UInt8](repeating: 0, count: 4096))
    }

    /// Each connection runs on its own thread: a request held inside the backend on one
    /// connection does not hold up another connection's requests.
    @Test func aSlowRequestHoldsUpOnlyItsOwnConnection() throws {
        let inner = try MemoryBackend(size: 1 << 20)
        let gated = GatedBackend(inner: inner, heldOffset: 0)
        let s = try TestServer(backend: gated)
        let slow = try RawClient(unixPath: s.socketPath)
        let fast = try RawClient(unixPath: s.socketPath)
        try slow.negotiate(structured: false)
        try fast.negotiate(structured: false)
        try slow.request(.read, cookie: 1, offset: 0, length: 4096)
        #expect(eventually { gated.readsStarted.load(ordering: .sequentiallyConsistent) > 0 })
        for cookie in UInt64(2)...4 {
            try fast.request(.read, cookie: cookie, offset: 4096 * cookie, length: 4096)
            #expect(try fast.simpleReply() == (0, cookie))
            _ = try fast.receive(4096)
        }
        gated.releaseHeld()
        #expect(try slow.simpleReply() == (0, 1))
        _ = try slow.receive(4096)
    }

    @Test func backendErrorsReachTheClientWithText() throws {
        let s = try TestServer(backend: FailingBackend(.request(.enospc, message: "pool is full")))
        let c = try RawClient(unixPath: s.socketPath)
        try c.negotiate()
        try c.request(.write, cookie: 1, offset: 0, length: 4096, payload: pattern(4096, seed: 0))
        let w = try c.reply()
        #expect(w.isError && w.errorCode == 28 && w.errorMessage == "pool is full")
        try c.request(.read, cookie: 2, offset: 0, length: 4096)
        let r = try c.reply()
        #expect(r.isError && r.errorCode == 28 && r.flags == 1)
        // FAST_ZERO that cannot be fast: ENOTSUP; the same error elsewhere would be EINVAL.
        try c.request(.writeZeroes, flags: .fastZero, cookie: 3, offset: 0, length: 4096)
        #expect(try c.reply().errorCode == 95)
    }

    @Test func notSupportedOutsideFastZeroBecomesEinval() throws {
        let s = try TestServer(backend: FailingBackend(.notSupported))
        let c = try RawClient(unixPath: s.socketPath)
        try c.negotiate(structured: false)
        try c.request(.trim, cookie: 1, offset: 0, length: 4096)
        #expect(try c.simpleReply() == (22, 1))
    }

    @Test func multipleRequestsInOneWriteAreAllAnswered() throws {
        let s = try TestServer()
        let c = try RawClient(unixPath: s.socketPath)
        try c.negotiate(structured: false)
        var burst: [UInt8] = []
        for i in 0..<100 {
            burst += requestBytes(type: .write, cookie: UInt64(i), offset: UInt64(i) * 4096, length: 4096)
            burst += pattern(4096, seed: UInt8(i))
        }
        try c.send(burst)
        var cookies = Set<UInt64>()
        for _ in 0..<100 {
            let (err, cookie) = try c.simpleReply()
            #expect(err == 0)
            cookies.insert(cookie)
        }
        #expect(cookies.count == 100)
        for i in [0, 57, 99] {
            try c.request(.read, cookie: 1000, offset: UInt64(i) * 4096, length: 4096)
            _ = try c.simpleReply()
            #expect(try c.receive(4096) == pattern(4096, seed: UInt8(i)))
        }
    }
}

/// Stop, DISC and other ways a connection ends.
@Suite struct ShutdownTests {
    @Test func disconnectFinishesRequestsInFlight() throws {
        let s = try TestServer()
        let c = try RawClient(unixPath: s.socketPath)
        try c.negotiate(structured: false)
        let data = pattern(65536, seed: 5)
        try c.send(requestBytes(type: .write, cookie: 1, offset: 0, length: 65536) + data
                   + requestBytes(type: .disconnect, cookie: 2, offset: 0, length: 0))
        #expect(try c.simpleReply() == (0, 1))
        #expect(c.closedByServer())
        var back = [UInt8](repeating: 0, count: 65536)
        try back.withUnsafeMutableBytes { try s.backend.read(into: $0.baseAddress!, offset: 0, length: 65536) }
        #expect(back == data)
    }

    @Test func stopAnswersRequestsInFlightThenCloses() throws {
        let gate = DispatchSemaphore(value: 0)
        let gated = GatedBackend(inner: try MemoryBackend(size: 1 << 20), gate: gate)
        let s = try TestServer(backend: gated)
        let c = try RawClient(unixPath: s.socketPath)
        try c.negotiate(structured: false)
        try c.request(.read, cookie: 1, offset: 0, length: 4096)
        // Wait until the read is inside the backend, then stop while it is held there.
        let started = eventually { gated.readsStarted.load(ordering: .sequentiallyConsistent) > 0 }
        #expect(started)
        let stopped = Background { s.server.stop() }
        // The server stops reading, but the request already taken must still be answered.
        gate.signal()
        #expect(try c.simpleReply() == (0, 1))
        _ = try c.receive(4096)
        #expect(c.closedByServer())
        #expect(stopped.wait())
        #expect(s.server.connectionCount == 0)
        #expect((try? RawClient(unixPath: s.socketPath)) == nil)  // no longer accepting
    }

    @Test func stopAnswersErrShutdownDuringNegotiation() throws {
        let s = try TestServer()
        let c = try RawClient(unixPath: s.socketPath)
        try c.hello()
        try c.option(.list)
        _ = try c.optionReplies()
        let stopped = Background { s.server.stop() }
        // Stop is under way once the listening socket is gone.
        #expect(eventually { access(s.socketPath, F_OK) != 0 })
        try c.option(.go, infoPayload(""))
        #expect(try c.optionReply().type == OptionReplyType.errShutdown.rawValue)
        try c.option(.abort)
        #expect(try c.optionReply().type == OptionReplyType.ack.rawValue)
        #expect(c.closedByServer())
        #expect(stopped.wait())
    }

    @Test func stopCutsIdleNegotiationsAfterTheGracePeriod() throws {
        let s = try TestServer(grace: .milliseconds(200))
        let c = try RawClient(unixPath: s.socketPath)
        try c.hello()
        #expect(Background { s.server.stop() }.wait())
        #expect(c.closedByServer())
    }

    @Test func clientVanishingMidPayloadCostsOnlyItsConnection() throws {
        let s = try TestServer()
        let keep = try RawClient(unixPath: s.socketPath)
        try keep.negotiate(structured: false)
        let data = pattern(4096, seed: 6)
        try keep.request(.write, cookie: 1, offset: 0, length: 4096, payload: data)
        _ = try keep.simpleReply()

        for size in [4096, 1 << 20] {  // in the input buffer, and read straight into a reply buffer
            let gone = try RawClient(unixPath: s.socketPath)
            try gone.negotiate(structured: false)
            try gone.send(requestBytes(type: .write, cookie: 2, offset: 0, length: UInt32(size)) + pattern(size / 2, seed: 7))
            try gone.send(requestBytes(type: .read, cookie: 3, offset: 0, length: 4096))  // part of the payload
        }
        // Those clients are gone (deinit closed them); the first connection and its data are fine.
        try keep.request(.read, cookie: 4, offset: 0, length: 4096)
        #expect(try keep.simpleReply() == (0, 4))
        #expect(try keep.receive(4096) == data)
    }

    @Test func clientVanishingWithRepliesPendingLeavesNothingBehind() throws {
        let s = try TestServer()
        for _ in 0..<5 {
            let c = try RawClient(unixPath: s.socketPath)
            try c.negotiate(structured: false)
            var burst: [UInt8] = []
            for i in 0..<64 { burst += requestBytes(type: .read, cookie: UInt64(i), offset: 0, length: 1 << 20) }
            try c.send(burst)
        }
        // Every connection ends on its own; nothing is stuck.
        #expect(eventually { s.server.connectionCount == 0 })
        let c = try RawClient(unixPath: s.socketPath)
        try c.negotiate(structured: false)
        try c.request(.read, cookie: 9, offset: 0, length: 4096)
        #expect(try c.simpleReply() == (0, 9))
    }
}
