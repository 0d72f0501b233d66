// The data path of one connection, on the connection's own thread: read a batch of requests,
// parse and validate each, let the RequestHandler serve it, and send the batch's replies with one
// writev. Nothing here is shared with another thread, so there is no lock. DESIGN.md has the
// measurements behind each number.

#if canImport(Glibc)
import Glibc
#endif
import Posix

final class ConnectionEngine {
    private let inFD: Int32
    private let outFD: Int32
    private let rules: RequestRules
    private let handler: RequestHandler
    private let log: NBDLogger
    private let maxInFlight: Int
    /// Set when the client upgraded with STARTTLS: every byte goes through it.
    private let tls: (any TLSChannel)?
    /// This connection's counters, in its export's statistics.
    private let statistics: ExportStatistics
    private let shard: IOShard
    /// When the last request served ended, while requests are served back to back: the next
    /// one starts there, so a batch costs one clock read per request, not two. nil after any
    /// wait or send, whose time is not the backend's.
    private var lastEnded: Int?

    // The input buffer holds several of the usual big requests (nbdcopy's 256 KiB writes, the
    // kernel client's 128 KiB), so their payloads are used where read() put them: unparsed bytes
    // move to the front only when the request in progress would not fit behind them.
    private static let inputCapacity = 2 << 20
    /// Fewest free bytes a read() gets: the front is reclaimed below this.
    private static let minimumRead = 64 << 10
    /// Once this much READ data is ready it is sent at once: it is still in cache for the copy
    /// into the socket, and its buffer returns for the next READ to fill while still hot (a batch
    /// of 64 × 256 KiB otherwise cycles 16 MiB through the cache, twice).
    private static let earlyReplyBytes = 128 << 10
    private let input = UnsafeMutableRawPointer.allocate(byteCount: ConnectionEngine.inputCapacity, alignment: 64)
    private var start = 0
    private var end = 0
    /// Bytes from `start` that the request being parsed needs in the buffer.
    private var needed = Wire.requestSize

    /// Busy polling (NBDServer.Configuration.busyPoll); 0 when off or the input is not a socket.
    private var busyPollNanoseconds: Int
    /// The last wait for requests was short: the client is streaming, poll before sleeping.
    private var streaming = false
    /// A wait longer than this means the client went quiet.
    private static let quietNanoseconds = 1_000_000

    /// Replies of the current batch: `replies[0..<pending]` wait to be sent.
    private var replies: [ReplyBuffer] = []
    private var pending = 0
    private var pendingReadBytes = 0
    private let spare: SpareBuffer
    private let iovs: UnsafeMutablePointer<iovec>
    private let iovsCapacity: Int
    /// A send failed: the client is gone, replies are dropped until reading fails too.
    private var broken = false
    /// Where a hand-over parks this engine between requests (nil: never).
    private let gate: PauseGate?

    init(inFD: Int32, outFD: Int32, session: Session, maxInFlight: Int, busyPoll: Duration = .zero,
         payloadBudget: PayloadBudget = PayloadBudget(bytes: .max), tls: (any TLSChannel)? = nil,
         gate: PauseGate? = nil, unread: [UInt8] = [], log: NBDLogger) {
        spare = SpareBuffer(budget: payloadBudget)
        self.gate = gate
        self.inFD = inFD
        self.outFD = outFD
        rules = RequestRules(session)
        handler = RequestHandler(session)
        self.log = log
        self.maxInFlight = max(1, maxInFlight)
        self.tls = tls
        statistics = session.export.statistics
        shard = statistics.open()
        let (seconds, attoseconds) = busyPoll.components
        // Busy polling peeks at the socket, which under TLS holds records, not requests.
        busyPollNanoseconds = tls != nil ? 0 : max(0, Int(clamping: seconds) &* 1_000_000_000 &+ Int(attoseconds / 1_000_000_000))
        replies.reserveCapacity(self.maxInFlight)
        iovsCapacity = self.maxInFlight * ReplyBuffer.iovCapacity
        iovs = .allocate(capacity: iovsCapacity)
        // A predecessor's partial request (at most one request header plus a payload that fits).
        let carried = min(unread.count, ConnectionEngine.inputCapacity)
        unread.withUnsafeBytes { b in if let from = b.baseAddress, carried > 0 { input.copyMemory(from: from, byteCount: carried) } }
        end = carried
    }

    deinit {
        statistics.close(shard)
        input.deallocate()
        iovs.deallocate()
        replies.removeAll()  // their big buffers go back to the budget first, then the spare
        spare.budget.retire(spare)
    }

    /// Serves requests until the client disconnects, sends NBD_CMD_DISC or breaks the protocol;
    /// returns once every request read has been answered. The result says why it ended.
    func run() -> String {
        let reason = serve()
        send()
        return reason
    }

    private func serve() -> String {
        while true {
            needed = Wire.requestSize
            parsing: while end - start >= Wire.requestSize {
                guard let header = RequestHeader.parse(input + start) else { return "bad request magic" }
                switch rules.validate(header) {
                case .serve(let command):
                    let payloadLength = header.payloadLength
                    let buffered = end - start - Wire.requestSize
                    if payloadLength <= buffered {
                        let payload = payloadLength > 0 ? UnsafeRawPointer(input + start + Wire.requestSize) : nil
                        start += Wire.requestSize + payloadLength
                        answer(header, command, payload: payload)
                    } else if Wire.requestSize + payloadLength <= ConnectionEngine.inputCapacity {
                        needed = Wire.requestSize + payloadLength  // the rest is on its way
                        break parsing
                    } else if !serveOversized(header, command, buffered: buffered) {
                        return "client vanished in the middle of a write payload"
                    }
                case .refuse(let errno, let message):
                    log.debug("refusing \(CommandType.name(header.type)) (cookie \(header.cookie)): \(errno): \(message)")
                    start += Wire.requestSize
                    guard discardPayload(header.payloadLength) else { return "client vanished in the middle of a write payload" }
                    handler.refuse(header, errno, message, into: nextReply())
                    if let c = IOCommand(type: header.type) {
                        shard.record(c, bytes: Int(header.length), nanoseconds: 0, errno: errno)
                    } else {
                        shard.recordError(errno)
                    }
                    queued()
                case .disconnect:
                    start += Wire.requestSize
                    return "client sent NBD_CMD_DISC"
                case .hangUp(let reason):
                    return reason
                }
            }
            send()  // answer what we have before waiting for the client
            guard readMore() else { return "client closed the connection" }
        }
    }

    @inline(__always)
    private func answer(_ header: RequestHeader, _ command: Command, payload: UnsafeRawPointer?) {
        let reply = nextReply()
        let started = lastEnded ?? Clock.monotonicNanoseconds()
        let error = handler.handle(header, command, payload: payload, into: reply)
        let ended = Clock.monotonicNanoseconds()
        if let c = IOCommand(type: header.type) {   // always: a served request has a known type
            shard.record(c, bytes: IOCommand.bytes(command), nanoseconds: ended - started,
                         errno: error.map { RequestHandler.replyErrno($0, header) })
        }
        lastEnded = ended
        if let error { log.debug("\(CommandType.name(header.type)) at \(header.offset) failed: \(error)") }
        queued()
    }

    /// A WRITE bigger than the input buffer: its payload is read straight into the reply's data
    /// buffer. False if the client went away meanwhile.
    private func serveOversized(_ header: RequestHeader, _ command: Command, buffered: Int) -> Bool {
        send()  // answer what we have before blocking on the client
        let reply = nextReply()
        let length = header.payloadLength
        let data = reply.reserveData(length)
        data.copyMemory(from: input + start + Wire.requestSize, byteCount: buffered)
        start = 0
        end = 0
        guard readFully(data + buffered, length - buffered) else { return false }
        answer(header, command, payload: UnsafeRawPointer(data))  // the same reply: WRITE needs no data of its own
        return true
    }

    // MARK: - Replies

    private func nextReply() -> ReplyBuffer {
        if pending == replies.count { replies.append(ReplyBuffer(spare: spare)) }
        return replies[pending]
    }

    /// The reply from nextReply() is encoded: send the batch if it is full, holds enough READ
    /// data, or holds a buffer of the payload budget. So between requests a connection holds
    /// none of the budget but its spare, and a connection waiting for room never waits for itself.
    @inline(__always)
    private func queued() {
        let reply = replies[pending]
        pendingReadBytes += reply.readBytes
        pending += 1
        if pending == maxInFlight || pendingReadBytes >= ConnectionEngine.earlyReplyBytes || reply.holdsBigData { send() }
    }

    /// One writev for every pending reply (more only past the iovec budget).
    private func send() {
        lastEnded = nil
        guard pending > 0 else { return }
        if !broken {
            var n = 0
            var ok = true
            for i in 0..<pending where ok {
                let r = replies[i]
                if n + r.iovCount > iovsCapacity {
                    ok = writeFully(iovs, n)
                    n = 0
                }
                (iovs + n).update(from: r.iov, count: r.iovCount)
                n += r.iovCount
            }
            if ok { ok = writeFully(iovs, n) }
            if !ok {
                broken = true
                log.info("cannot send replies (\(String(cString: strerror(errno)))); dropping the rest")
            }
        }
        for i in 0..<pending { replies[i].sent() }
        pending = 0
        pendingReadBytes = 0
    }

    // MARK: - Input

    /// Reads more after the unparsed bytes (moved to the front first if the request in progress
    /// would not fit); false on EOF or error.
    private func readMore() -> Bool {
        if let gate, gate.requested { park(gate) }
        if start == end {
            start = 0
            end = 0
        } else if start + max(needed, ConnectionEngine.minimumRead) > ConnectionEngine.inputCapacity {
            memmove(input, input + start, end - start)
            end -= start
            start = 0
        }
        if busyPollNanoseconds > 0 {
            if streaming, let more = pollSocket(for: busyPollNanoseconds) { return more }
            let before = Clock.monotonicNanoseconds()
            defer { streaming = Clock.monotonicNanoseconds() - before < ConnectionEngine.quietNanoseconds }
            return readBlocking()
        }
        return readBlocking()
    }

    private func readBlocking() -> Bool {
        while true {
            let n = tls != nil ? readSome(input + end, ConnectionEngine.inputCapacity - end)
                : read(inFD, input + end, ConnectionEngine.inputCapacity - end)
            if n < 0 && errno == EINTR {
                if let gate, gate.requested { park(gate) }
                continue
            }
            guard n > 0 else { return false }
            end += n
            return true
        }
    }

    /// A hand-over: every request read has been answered (send() runs before every read), so
    /// only the bytes of a partial request go with the connection.
    private func park(_ gate: PauseGate) {
        send()
        gate.park(unread: Array(UnsafeRawBufferPointer(start: input + start, count: end - start)))
    }

    /// What read(2) returns, from the socket or through TLS; EINTR retried.
    @inline(__always)
    private func readSome(_ buffer: UnsafeMutableRawPointer, _ count: Int) -> Int {
        if let tls { return tls.read(into: buffer, count: count, until: nil) }
        while true {
            let n = read(inFD, buffer, count)
            if n < 0 && errno == EINTR { continue }
            return n
        }
    }

    private func readFully(_ buffer: UnsafeMutableRawPointer, _ count: Int) -> Bool {
        var got = 0
        while got < count {
            let n = readSome(buffer + got, count - got)
            if n <= 0 { return false }
            got += n
        }
        return true
    }

    private func writeFully(_ iov: UnsafeMutablePointer<iovec>, _ count: Int) -> Bool {
        if let tls { return tls.write(iov, count: count, until: nil) }
        return IO.writeFully(outFD, iov, count)
    }

    /// Polls the socket for up to `nanoseconds`: true/false when data/EOF came, nil when it
    /// stayed empty (or is no socket: then polling is off for good).
    private func pollSocket(for nanoseconds: Int) -> Bool? {
        let deadline = Clock.monotonicNanoseconds() + nanoseconds
        while true {
            let n = recv(inFD, input + end, ConnectionEngine.inputCapacity - end, Int32(MSG_DONTWAIT))
            if n > 0 {
                end += n
                return true
            }
            if n == 0 { return false }
            if errno == ENOTSOCK {
                busyPollNanoseconds = 0
                return nil
            }
            if errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR { return nil }  // read() reports it
            if Clock.monotonicNanoseconds() >= deadline { return nil }
            sched_yield()
        }
    }

    /// Skips a refused WRITE's payload; false if the client went away.
    private func discardPayload(_ count: Int) -> Bool {
        let buffered = min(count, end - start)
        start += buffered
        var left = count - buffered
        if left == 0 { return true }
        send()
        start = 0
        end = 0
        while left > 0 {
            let n = readSome(input, min(left, ConnectionEngine.inputCapacity))
            if n <= 0 { return false }
            left -= n
        }
        return true
    }
}
