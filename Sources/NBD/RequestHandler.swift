// Serving one request (nbdkit's protocol_recv_request_send_reply minus the I/O): a validated
// command and its payload in, backend calls, the encoded reply out. No sockets, no threads, no
// logging: the engine feeds it, and tests drive it against a MemoryBackend directly.

#if canImport(Glibc)
import Glibc
#endif

/// The request handler of one connection: what the client negotiated, and the export's backend.
struct RequestHandler {
    let backend: any BlockBackend
    let structuredReplies: Bool
    /// The backend reports zero ranges (`.extents`): READ answers them with OFFSET_HOLE chunks.
    let sparseReads: Bool
    let metaContextID: UInt32

    init(_ session: Session) {
        backend = session.export.backend
        structuredReplies = session.structuredReplies
        sparseReads = session.structuredReplies && session.capabilities.contains(.extents)
        metaContextID = session.metaContextID ?? MetaContext.baseAllocationID
    }

    /// Runs `command` on the backend and encodes its reply into `reply` (cleared first). `payload`
    /// is the WRITE's data. Returns the backend's error, if any, after encoding it as the reply.
    @discardableResult
    func handle(_ header: RequestHeader, _ command: Command, payload: UnsafeRawPointer?,
                into reply: ReplyBuffer) -> NBDError? {
        reply.clear()
        do throws(NBDError) {
            switch command {
            case .read(let offset, let length, let dontFragment):
                try read(header.cookie, offset: offset, length: length, dontFragment: dontFragment, into: reply)
                return nil
            case .write(let offset, let length, let fua):
                guard let payload else { throw NBDError.request(.einval, message: "NBD_CMD_WRITE without its payload") }
                try backend.write(from: payload, offset: offset, length: length, fua: fua)
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
                try blockStatus(header.cookie, offset: offset, length: length, reqOne: reqOne, into: reply)
                return nil
            }
            reply.appendHead(SimpleReply.encode(into: reply.headEnd, error: nil, cookie: header.cookie))
            return nil
        } catch {
            reply.clear()
            let code = Self.replyErrno(error, header)
            refuse(header, code, error.message ?? "\(CommandType.name(header.type)) failed: \(code)", into: reply)
            return error
        }
    }

    /// The errno the reply to `header` carries for `error`.
    static func replyErrno(_ error: NBDError, _ header: RequestHeader) -> NBDErrno { error.wireErrno.legal(for: header.flags) }

    /// An error reply: simple, or an ERROR chunk with `message` when structured replies are on.
    func refuse(_ header: RequestHeader, _ errno: NBDErrno, _ message: String, into reply: ReplyBuffer) {
        reply.clear()
        if structuredReplies {
            reply.appendHead(StructuredReply.error(into: reply.headEnd, cookie: header.cookie, error: errno, message: message))
        } else {
            reply.appendHead(SimpleReply.encode(into: reply.headEnd, error: errno, cookie: header.cookie))
        }
    }

    // MARK: - READ

    private func read(_ cookie: UInt64, offset: UInt64, length: Int, dontFragment: Bool,
                      into reply: ReplyBuffer) throws(NBDError) {
        let data = reply.reserveData(length)
        reply.readBytes = length
        guard structuredReplies else {
            try backend.read(into: data, offset: offset, length: length)
            reply.appendHead(SimpleReply.encode(into: reply.headEnd, error: nil, cookie: cookie))
            reply.appendData(data, length)
            return
        }
        let count = sparseReads ? try readPlanned(data, offset: offset, length: length, dontFragment: dontFragment, reply.runs)
            : try readWhole(data, offset: offset, length: length, reply.runs)
        for i in 0..<count {
            let r = reply.runs[i]
            let done = i == count - 1
            if r.zero {
                reply.appendHead(StructuredReply.offsetHole(into: reply.headEnd, done: done, cookie: cookie,
                                                            offset: offset + UInt64(r.start), length: UInt32(r.length)))
            } else {
                reply.appendHead(StructuredReply.offsetData(into: reply.headEnd, done: done, cookie: cookie,
                                                            offset: offset + UInt64(r.start), dataLength: r.length))
                reply.appendData(data + r.start, r.length)
            }
        }
    }

    private func readWhole(_ data: UnsafeMutableRawPointer, offset: UInt64, length: Int,
                           _ runs: UnsafeMutablePointer<ReplyBuffer.ReadRun>) throws(NBDError) -> Int {
        try backend.read(into: data, offset: offset, length: length)
        runs[0] = ReplyBuffer.ReadRun(start: 0, length: length, zero: false)
        return 1
    }

    /// One pass over the backend: data is read, zero ranges come back as runs (at most
    /// maxReadChunks, and one data run under DF; otherwise the zeros are filled in and the
    /// whole range goes as data). Returns the number of runs.
    private func readPlanned(_ data: UnsafeMutableRawPointer, offset: UInt64, length: Int, dontFragment: Bool,
                             _ runs: UnsafeMutablePointer<ReplyBuffer.ReadRun>) throws(NBDError) -> Int {
        var count = 0
        var covered = 0
        var overflow = false
        func add(_ start: Int, _ end: Int, zero: Bool) {
            guard end > start else { return }
            if count > 0 && runs[count - 1].zero == zero && runs[count - 1].start + runs[count - 1].length == start {
                runs[count - 1].length += end - start
            } else if count < ReplyBuffer.maxReadChunks {
                runs[count] = ReplyBuffer.ReadRun(start: start, length: end - start, zero: zero)
                count += 1
            } else {
                overflow = true
            }
        }
        try backend.read(into: data, offset: offset, length: length) { start, zeroLength in
            let s = max(start, covered), e = min(start + zeroLength, length)
            guard e > s else { return }
            if overflow {
                memset(data + s, 0, e - s)  // going out as data after all
            } else {
                add(covered, s, zero: false)
                add(s, e, zero: true)
                if overflow { memset(data + s, 0, e - s) }
            }
            covered = e
        }
        add(covered, length, zero: false)
        if overflow || (dontFragment && count > 1) {
            for i in 0..<count where runs[i].zero { memset(data + runs[i].start, 0, runs[i].length) }
            runs[0] = ReplyBuffer.ReadRun(start: 0, length: length, zero: false)
            return 1
        }
        return count
    }

    // MARK: - BLOCK_STATUS

    /// One chunk of merged (length, flags) descriptors for base:allocation.
    private func blockStatus(_ cookie: UInt64, offset: UInt64, length: UInt64, reqOne: Bool,
                             into reply: ReplyBuffer) throws(NBDError) {
        let limit = reqOne ? 1 : 1 << 20
        var count = 0
        var position: UInt64 = 0
        var runLength: UInt64 = 0
        var runFlags: UInt32 = 0
        var descriptors = reply.reserveData(64 * 8)
        var capacity = reply.dataCapacity
        func emit() {
            if (count + 1) * 8 > capacity {
                descriptors = reply.growData(to: 2 * capacity)
                capacity = reply.dataCapacity
            }
            descriptors.storeBE(UInt32(runLength), at: count * 8)
            descriptors.storeBE(runFlags, at: count * 8 + 4)
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
        reply.appendHead(StructuredReply.blockStatus(into: reply.headEnd, cookie: cookie, contextID: metaContextID,
                                                     count: count))
        reply.appendData(descriptors, count * 8)
    }
}
