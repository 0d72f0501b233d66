// The data path of one connection: socket → request → backend → reply.
//
// The connection's thread is the reader: one read() brings in as many requests as the client has
// sent, each is validated and given a Job, and the batch is then run according to the execution
// model (inline on this thread, on the shared worker pool, or both: all but the last one to the
// pool). Replies are written whole: whichever thread finds replies waiting and nobody writing
// becomes the writer and sends everything that is ready with one writev (replies go out in
// completion order, so they may overtake each other). DESIGN.md has the measurements.

#if canImport(Glibc)
import Glibc
#endif
import Posix

/// Where requests of a connection run.
public enum ExecutionModel: String, Sendable, CaseIterable {
    /// On the connection's own thread, one batch at a time (parallelism only across connections).
    case inline
    /// On the server's worker pool; the connection thread only reads and parses.
    case workers
    /// The last request of each batch on the connection thread, the others on the pool (QD1 pays
    /// no thread hand-off, deep queues use every core).
    case hybrid
}

final class Transmission: @unchecked Sendable {  // @unchecked: shared fields are guarded by `state`
    let inFD: Int32
    let outFD: Int32
    let session: Session
    let rules: RequestRules
    let backend: any BlockBackend
    let model: ExecutionModel
    let pool: WorkerPool?
    let log: NBDLogger
    let maxInFlight: Int
    private let structured: Bool
    private let sparseReads: Bool

    // Reader-only state. The input buffer holds several of the usual big requests (nbdcopy's
    // 256 KiB writes, the kernel client's 128 KiB), so their payloads are used where read() put
    // them: unparsed bytes move to the front only when the request in progress would not fit
    // behind them (a 256 KiB buffer copied ~3/4 of every such payload once more).
    private static let inputCapacity = 2 << 20
    /// Fewest free bytes a read() gets: the front is reclaimed below this.
    private static let minimumRead = 64 << 10
    /// READ data ready in a batch that is sent before the batch ends (inline execution).
    private static let earlyReplyBytes = 128 << 10
    private let input = UnsafeMutableRawPointer.allocate(byteCount: Transmission.inputCapacity, alignment: 64)
    private var start = 0
    private var end = 0
    /// Bytes from `start` that the request being parsed needs in the buffer.
    private var needed = Wire.requestSize
    /// Busy polling (Configuration.busyPoll); 0 when off or the input is not a socket.
    private var busyPollNanoseconds: Int
    /// The last wait for requests was short: the client is streaming, poll before sleeping.
    private var streaming = false
    /// A wait longer than this means the client went quiet.
    private static let quietNanoseconds = 1_000_000
    private var batch: [Job] = []

    // Shared state, guarded by `state`.
    private let state = ConditionLock()
    private var free: [Job] = []
    private var jobsMade = 0
    private var inFlight = 0
    private var pending: [Job] = []
    private var writing = false
    private var readerBatching = false
    private var broken = false
    /// One big buffer kept for requests over Job.retainedDataCapacity (at most one per connection).
    private var spare: UnsafeMutableRawPointer?
    private var spareCapacity = 0

    // Writer-only state (valid while `writing` is true).
    private var sending: [Job] = []
    private let iovs: UnsafeMutablePointer<iovec>
    private let iovsCapacity: Int

    init(inFD: Int32, outFD: Int32, session: Session, model: ExecutionModel, pool: WorkerPool?,
         maxInFlight: Int, busyPoll: Duration = .zero, log: NBDLogger) {
        self.inFD = inFD
        self.outFD = outFD
        self.session = session
        rules = RequestRules(session)
        backend = session.export.backend
        self.model = pool == nil ? .inline : model
        self.pool = pool
        self.maxInFlight = max(1, maxInFlight)
        let (seconds, attoseconds) = busyPoll.components
        busyPollNanoseconds = max(0, Int(clamping: seconds) &* 1_000_000_000 &+ Int(attoseconds / 1_000_000_000))
        self.log = log
        structured = session.structuredReplies
        sparseReads = session.capabilities.contains(.extents)
        batch.reserveCapacity(self.maxInFlight)
        free.reserveCapacity(self.maxInFlight)
        pending.reserveCapacity(self.maxInFlight)
        sending.reserveCapacity(self.maxInFlight)
        iovsCapacity = self.maxInFlight * Job.iovCapacity
        iovs = .allocate(capacity: iovsCapacity)
    }

    deinit {
        input.deallocate()
        iovs.deallocate()
        spare?.deallocate()
    }

    // MARK: - Reader

    /// Serves requests until the client disconnects, sends NBD_CMD_DISC or breaks the protocol;
    /// returns once every request read has been answered. The result says why it ended.
    func run() -> String {
        var reason = "client closed the connection"
        reading: while true {
            beginBatch()
            needed = Wire.requestSize
            parsing: while end - start >= Wire.requestSize {
                guard let header = RequestHeader.parse(input + start) else {
                    reason = "bad request magic"
                    break reading
                }
                let payloadLength = header.payloadLength
                switch rules.validate(header) {
                case .failure(let rejection):
                    if rejection.disconnect {
                        reason = rejection.message
                        break reading
                    }
                    log.debug("refusing \(CommandType.name(header.type)) (cookie \(header.cookie)): \(rejection.errno): \(rejection.message)")
                    start += Wire.requestSize
                    guard discardPayload(payloadLength) else { break reading }
                    let job = acquireJob()
                    job.reset(header: header, command: .flush)
                    encodeError(job, rejection.errno, rejection.message)
                    job.answered = true
                    batch.append(job)
                case .success(.disconnect):
                    reason = "client sent NBD_CMD_DISC"
                    start += Wire.requestSize
                    break reading
                case .success(let command):
                    let buffered = end - start - Wire.requestSize
                    if payloadLength > buffered && Wire.requestSize + payloadLength <= Transmission.inputCapacity {
                        needed = Wire.requestSize + payloadLength
                        break parsing  // the rest of the payload is still on its way
                    }
                    let job = acquireJob()
                    job.reset(header: header, command: command)
                    if payloadLength > buffered {
                        // Too big for the input buffer: read it straight into the job's buffer.
                        ensureData(job, payloadLength)
                        job.data!.copyMemory(from: input + start + Wire.requestSize, byteCount: buffered)
                        start = end
                        flushBatch()  // answer what we have before blocking on the client
                        guard IO.readFully(inFD, job.data! + buffered, payloadLength - buffered) else {
                            abandon(job)
                            reason = "client vanished in the middle of a write payload"
                            break reading
                        }
                        job.payload = UnsafeRawPointer(job.data!)
                    } else {
                        if payloadLength > 0 {
                            job.payload = UnsafeRawPointer(input + start + Wire.requestSize)
                            job.payloadInInput = true
                        }
                        start += Wire.requestSize + payloadLength
                    }
                    batch.append(job)
                }
            }
            finishBatch()
            guard readMore() else { break }
        }
        finishBatch()
        state.lock()
        while inFlight > 0 { state.wait() }
        state.unlock()
        return reason
    }

    /// Reads more after the unparsed bytes (moved to the front first if the request in progress
    /// would not fit); false on EOF or error.
    private func readMore() -> Bool {
        if start == end {
            start = 0
            end = 0
        } else if start + max(needed, Transmission.minimumRead) > Transmission.inputCapacity {
            memmove(input, input + start, end - start)
            end -= start
            start = 0
        }
        if busyPollNanoseconds > 0 {
            if streaming, let more = pollSocket(for: busyPollNanoseconds) { return more }
            let before = Clock.monotonicNanoseconds()
            defer { streaming = Clock.monotonicNanoseconds() - before < Transmission.quietNanoseconds }
            return readBlocking()
        }
        return readBlocking()
    }

    private func readBlocking() -> Bool {
        while true {
            let n = read(inFD, input + end, Transmission.inputCapacity - end)
            if n > 0 {
                end += n
                return true
            }
            if n < 0 && errno == EINTR { continue }
            return false
        }
    }

    /// Polls the socket for up to `nanoseconds`: true/false when data/EOF came, nil when it
    /// stayed empty (or is no socket: then polling is off for good).
    private func pollSocket(for nanoseconds: Int) -> Bool? {
        let deadline = Clock.monotonicNanoseconds() + nanoseconds
        while true {
            let n = recv(inFD, input + end, Transmission.inputCapacity - end, Int32(MSG_DONTWAIT))
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
        flushBatch()
        start = 0
        end = 0
        while left > 0 {
            let n = read(inFD, input, min(left, Transmission.inputCapacity))
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return false }
            left -= n
        }
        return true
    }

    /// A free job; when all are in flight, hands the batch over and waits for one.
    private func acquireJob() -> Job {
        state.lock()
        if let job = free.popLast() {
            inFlight += 1
            state.unlock()
            return job
        }
        if jobsMade < maxInFlight {
            jobsMade += 1
            inFlight += 1
            state.unlock()
            return Job(self)
        }
        state.unlock()
        finishBatch()
        state.lock()
        while free.isEmpty { state.wait() }
        let job = free.removeLast()
        inFlight += 1
        readerBatching = true
        state.unlock()
        return job
    }

    /// A job that never ran (client vanished mid-payload).
    private func abandon(_ job: Job) {
        state.lock()
        recycle(job)
        inFlight -= 1
        state.broadcast()
        state.unlock()
    }

    private func beginBatch() {
        state.lock()
        readerBatching = true
        state.unlock()
    }

    private func flushBatch() {
        finishBatch()
        beginBatch()
    }

    /// Runs or hands over the batch, then writes every reply that is ready.
    private func finishBatch() {
        if !batch.isEmpty {
            dispatch()
            batch.removeAll(keepingCapacity: true)
        }
        state.lock()
        readerBatching = false
        if !writing && !pending.isEmpty { drainLocked() }
        state.unlock()
    }

    private func dispatch() {
        switch model {
        case .inline:
            // Small replies go out together after the batch (one writev). Once 128 KiB of READ
            // data is ready it is sent at once instead: it is still in cache for the copy into the
            // socket, and its buffer returns for the next READ to fill while still hot (a batch of
            // 64 × 256 KiB otherwise cycles 16 MiB through the cache, twice).
            var from = 0
            var readyBytes = 0
            for i in batch.indices {
                let job = batch[i]
                if !job.answered {
                    execute(job)
                    if case .read(_, let length, _) = job.command { readyBytes += length }
                }
                if readyBytes >= Transmission.earlyReplyBytes && i + 1 < batch.count {
                    state.lock()
                    pending.append(contentsOf: batch[from...i])
                    drainLocked()
                    state.unlock()
                    from = i + 1
                    readyBytes = 0
                }
            }
            state.lock()
            pending.append(contentsOf: batch[from...])
            state.unlock()
        case .workers, .hybrid:
            // Refused requests are answered already; the rest go to the pool, except in hybrid
            // mode the last one, which this thread runs itself (so QD1 never changes threads).
            var inlineJob: Job?
            var answered = 0
            for j in batch.indices where batch[j].answered {
                batch.swapAt(j, answered)
                answered += 1
            }
            var toPool = batch[answered...]
            if model == .hybrid, let last = toPool.last {
                inlineJob = last
                toPool = toPool.dropLast()
            }
            for job in toPool where job.payloadInInput { detachPayload(job) }
            if answered > 0 {
                state.lock()
                pending.append(contentsOf: batch[..<answered])
                state.unlock()
            }
            pool!.submit(toPool)
            if let job = inlineJob {
                execute(job)
                state.lock()
                pending.append(job)
                state.unlock()
            }
        }
    }

    /// Copies a WRITE payload out of the input buffer so the job can run on another thread.
    private func detachPayload(_ job: Job) {
        let length = job.header.payloadLength
        ensureData(job, length)
        job.data!.copyMemory(from: job.payload!, byteCount: length)
        job.payload = UnsafeRawPointer(job.data!)
        job.payloadInInput = false
    }

    // MARK: - Writer

    /// A worker finished `job`: queue its reply and send it unless someone else will.
    func complete(_ job: Job) {
        state.lock()
        pending.append(job)
        if !writing && !readerBatching { drainLocked() }
        state.unlock()
    }

    /// Caller holds `state`. Sends all pending replies, repeatedly, until none are left.
    private func drainLocked() {
        writing = true
        while !pending.isEmpty {
            swap(&pending, &sending)
            let skip = broken
            state.unlock()
            let failure = skip ? 0 : writeReplies()
            state.lock()
            if failure != 0 {
                broken = true
                log.info("cannot send replies (\(String(cString: strerror(failure)))); dropping the rest")
            }
            for job in sending { recycle(job) }
            inFlight -= sending.count
            sending.removeAll(keepingCapacity: true)
            state.broadcast()
        }
        writing = false
    }

    /// One writev for every reply in `sending`; 0 or the errno of the failed write.
    private func writeReplies() -> Int32 {
        var n = 0
        for job in sending {
            if n + job.iovCount > iovsCapacity {
                guard IO.writeFully(outFD, iovs, n) else { return errno }
                n = 0
            }
            (iovs + n).update(from: job.iov, count: job.iovCount)
            n += job.iovCount
        }
        return IO.writeFully(outFD, iovs, n) ? 0 : errno
    }

    /// Caller holds `state`. Returns a job to the free list. Small buffers stay with the job;
    /// big ones go back to the shared cache, where the next request takes the most recently used
    /// one: a stream of big READs keeps filling the same cache-hot buffer. Buffers over the
    /// cache's largest stay as the connection's one spare (at most the advertised maximum
    /// request size).
    private func recycle(_ job: Job) {
        if let data = job.data, job.dataCapacity >= Job.sharedDataCapacity {
            if job.dataCapacity <= Job.retainedDataCapacity {
                DataBuffers.give(data, job.dataCapacity)
            } else if job.dataCapacity > spareCapacity && job.dataCapacity <= Int(BlockSize.maximumPayload) {
                spare?.deallocate()
                spare = data
                spareCapacity = job.dataCapacity
            } else {
                data.deallocate()
            }
            job.data = nil
            job.dataCapacity = 0
        }
        job.payload = nil
        free.append(job)
    }

    /// Makes `job.data` hold at least `count` bytes (contents not kept).
    private func ensureData(_ job: Job, _ count: Int) {
        guard job.dataCapacity < count else { return }
        if let old = job.data { DataBuffers.give(old, job.dataCapacity) }
        job.data = nil
        job.dataCapacity = 0
        if count > Job.retainedDataCapacity {
            state.lock()
            if spareCapacity >= count, let s = spare {
                job.data = s
                job.dataCapacity = spareCapacity
                spare = nil
                spareCapacity = 0
            }
            state.unlock()
            if job.data != nil { return }
        }
        (job.data, job.dataCapacity) = DataBuffers.take(count)
    }

    // MARK: - Execution

    /// Runs a validated request against the backend and encodes its reply into the job.
    func execute(_ job: Job) {
        do throws(NBDError) {
            switch job.command {
            case .read(let offset, let length, let df):
                ensureData(job, length)
                if structured {
                    try readStructured(job, offset: offset, length: length, dontFragment: df)
                } else {
                    try backend.read(into: job.data!, offset: offset, length: length)
                    job.appendHead(SimpleReply.encode(into: job.head, error: nil, cookie: job.header.cookie))
                    job.appendData(job.data!, length)
                }
                return
            case .write(let offset, let length, let fua):
                try backend.write(from: job.payload!, offset: offset, length: length, fua: fua)
            case .flush:
                try backend.flush()
            case .trim(let offset, let length, let fua):
                try backend.trim(offset: offset, length: length)
                if fua { try backend.flush() }
            case .cache(let offset, let length):
                try backend.cache(offset: offset, length: length)
            case .writeZeroes(let offset, let length, let fua, let mayTrim, let fast):
                try backend.zero(offset: offset, length: length, mayTrim: mayTrim, fast: fast)
                if fua { try backend.flush() }
            case .blockStatus(let offset, let length, let reqOne):
                try blockStatus(job, offset: offset, length: length, reqOne: reqOne)
                return
            case .disconnect:
                return
            }
            job.appendHead(SimpleReply.encode(into: job.head, error: nil, cookie: job.header.cookie))
        } catch {
            job.clearReply()
            let code = error.wireErrno.legal(for: job.header.flags)
            log.debug("\(CommandType.name(job.header.type)) at \(job.header.offset) failed: \(error)")
            encodeError(job, code, error.message ?? "\(CommandType.name(job.header.type)) failed: \(code)")
        }
    }

    /// A simple error reply, or an ERROR chunk with text when structured replies are on.
    private func encodeError(_ job: Job, _ errno: NBDErrno, _ message: String) {
        if structured {
            job.appendHead(StructuredReply.error(into: job.head, cookie: job.header.cookie, error: errno, message: message))
        } else {
            job.appendHead(SimpleReply.encode(into: job.head, error: errno, cookie: job.header.cookie))
        }
    }

    /// READ with structured replies: OFFSET_DATA for data, OFFSET_HOLE for ranges the backend
    /// reports as reading zeros (they need no copy and little bandwidth).
    private func readStructured(_ job: Job, offset: UInt64, length: Int, dontFragment: Bool) throws(NBDError) {
        var count = planRead(job, offset: offset, length: length)
        if dontFragment && count > 1 {  // DF: one content chunk only
            job.runs[0] = Job.ReadRun(start: 0, length: length, zero: false)
            count = 1
        }
        for i in 0..<count where !job.runs[i].zero {
            let r = job.runs[i]
            try backend.read(into: job.data! + r.start, offset: offset + UInt64(r.start), length: r.length)
        }
        let cookie = job.header.cookie
        for i in 0..<count {
            let r = job.runs[i]
            let done = i == count - 1
            if r.zero {
                job.appendHead(StructuredReply.offsetHole(into: job.head + job.headUsed, done: done, cookie: cookie,
                                                          offset: offset + UInt64(r.start), length: UInt32(r.length)))
            } else {
                job.appendHead(StructuredReply.offsetData(into: job.head + job.headUsed, done: done, cookie: cookie,
                                                          offset: offset + UInt64(r.start), dataLength: r.length))
                job.appendData(job.data! + r.start, r.length)
            }
        }
    }

    /// Splits a read into data and zero runs (at most Job.maxReadChunks; otherwise one data run).
    private func planRead(_ job: Job, offset: UInt64, length: Int) -> Int {
        let runs = job.runs
        runs[0] = Job.ReadRun(start: 0, length: length, zero: false)
        guard sparseReads else { return 1 }
        var count = 0
        var position = 0
        var tooMany = false
        do {
            try backend.blockStatus(offset: offset, length: UInt64(length)) { extentLength, flags in
                let l = Int(clamping: min(extentLength, UInt64(length - position)))
                guard l > 0 else { return position < length }
                let zero = flags.contains(.zero)
                if count > 0 && runs[count - 1].zero == zero {
                    runs[count - 1].length += l
                } else if count == Job.maxReadChunks {
                    tooMany = true
                    return false
                } else {
                    runs[count] = Job.ReadRun(start: position, length: l, zero: zero)
                    count += 1
                }
                position += l
                return position < length
            }
        } catch {
            tooMany = true  // no allocation map: plain read
        }
        if tooMany || count == 0 || position < length {
            runs[0] = Job.ReadRun(start: 0, length: length, zero: false)
            return 1
        }
        return count
    }

    /// BLOCK_STATUS: one chunk of merged (length, flags) descriptors for base:allocation.
    private func blockStatus(_ job: Job, offset: UInt64, length: UInt64, reqOne: Bool) throws(NBDError) {
        let limit = reqOne ? 1 : 1 << 20
        var count = 0
        var position: UInt64 = 0
        var runLength: UInt64 = 0
        var runFlags: UInt32 = 0
        ensureData(job, 64 * 8)
        func emit() {
            if (count + 1) * 8 > job.dataCapacity { growPreserving(job, 2 * job.dataCapacity) }
            job.data!.storeBE(UInt32(runLength), at: count * 8)
            job.data!.storeBE(runFlags, at: count * 8 + 4)
            count += 1
        }
        try backend.blockStatus(offset: offset, length: length) { extentLength, flags in
            // Clip to the request: the request length is a u32, so every descriptor fits one.
            let l = min(extentLength, length - position)
            guard l > 0 else { return position < length }
            let f = flags.rawValue & 3
            if runLength > 0 && f == runFlags {
                runLength += l
            } else {
                if runLength > 0 {
                    emit()
                    if count == limit { return false }
                }
                runLength = l
                runFlags = f
            }
            position += l
            return position < length
        }
        if runLength > 0 && count < limit { emit() }
        if count == 0 {  // the backend said nothing: call it data
            runLength = length
            runFlags = 0
            emit()
        }
        job.appendHead(StructuredReply.blockStatus(into: job.head, cookie: job.header.cookie,
                                                   contextID: session.metaContextID ?? MetaContext.baseAllocationID,
                                                   count: count))
        job.appendData(job.data!, count * 8)
    }

    private func growPreserving(_ job: Job, _ capacity: Int) {
        let (bigger, biggerCapacity) = DataBuffers.take(capacity)
        if let old = job.data {
            bigger.copyMemory(from: old, byteCount: job.dataCapacity)
            DataBuffers.give(old, job.dataCapacity)
        }
        job.data = bigger
        job.dataCapacity = biggerCapacity
    }
}
