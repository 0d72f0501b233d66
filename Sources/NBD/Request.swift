// Transmission requests as values: parse the 28-byte header, then validate it against the session
// before anything touches the backend (nbdkit's validate_request). Rules: shared/docs/nbd.md §1.6-1.8.

/// A request header as it arrived.
public struct RequestHeader: Sendable, Equatable {
    public var flags: CommandFlags
    public var type: UInt16
    public var cookie: UInt64
    public var offset: UInt64
    public var length: UInt32

    public init(flags: CommandFlags = [], type: UInt16, cookie: UInt64, offset: UInt64, length: UInt32) {
        self.flags = flags
        self.type = type
        self.cookie = cookie
        self.offset = offset
        self.length = length
    }

    /// Parses 28 bytes at `p`; nil if the magic is wrong (the connection must then be dropped).
    @inline(__always)
    public static func parse(_ p: UnsafeRawPointer) -> RequestHeader? {
        guard p.loadBE(UInt32.self, at: 0) == Wire.requestMagic else { return nil }
        return RequestHeader(flags: CommandFlags(rawValue: p.loadBE(UInt16.self, at: 4)),
                             type: p.loadBE(UInt16.self, at: 6),
                             cookie: p.loadUnaligned(fromByteOffset: 8, as: UInt64.self),  // echoed as is
                             offset: p.loadBE(UInt64.self, at: 16),
                             length: p.loadBE(UInt32.self, at: 24))
    }

    /// Writes the header (used by tests and the fuzzer; the cookie goes out byte for byte).
    public func encode(into p: UnsafeMutableRawPointer) {
        p.storeBE(Wire.requestMagic, at: 0)
        p.storeBE(flags.rawValue, at: 4)
        p.storeBE(type, at: 6)
        p.storeBytes(of: cookie, toByteOffset: 8, as: UInt64.self)
        p.storeBE(offset, at: 16)
        p.storeBE(length, at: 24)
    }

    /// Bytes of payload that follow this header on the wire (only WRITE carries one).
    public var payloadLength: Int { type == CommandType.write.rawValue ? Int(length) : 0 }
}

/// A validated request, ready for the backend.
public enum Command: Sendable, Equatable {
    case read(offset: UInt64, length: Int, dontFragment: Bool)
    case write(offset: UInt64, length: Int, fua: Bool)
    case flush
    case trim(offset: UInt64, length: UInt64, fua: Bool)
    case cache(offset: UInt64, length: UInt64)
    case writeZeroes(offset: UInt64, length: UInt64, fua: Bool, mayTrim: Bool, fast: Bool)
    case blockStatus(offset: UInt64, length: UInt64, reqOne: Bool)
}

/// What the connection does with a request header (nbdkit's validate_request and its callers).
public enum RequestVerdict: Sendable, Equatable {
    /// Serve it.
    case serve(Command)
    /// Answer with this error (and message, with structured replies); the connection stays.
    case refuse(NBDErrno, String)
    /// NBD_CMD_DISC: answer what is in flight, then close.
    case disconnect
    /// Close without replying: a WRITE whose payload is too big to read and throw away.
    case hangUp(String)
}

/// Everything validation needs to know about the connection.
public struct RequestRules: Sendable {
    public var size: UInt64
    public var flags: TransmissionFlags
    public var structuredReplies: Bool
    public var metaContextID: UInt32?
    /// Largest READ/WRITE served (above the advertised maximum, for clients that did not ask).
    public var maxPayload: UInt32 = BlockSize.acceptedPayload
    /// A refused WRITE's payload up to this size is read and thrown away; a bigger one drops the
    /// connection (nbdkit: twice the maximum request).
    public var maxDiscard: UInt64

    public init(size: UInt64, flags: TransmissionFlags, structuredReplies: Bool, metaContextID: UInt32?) {
        self.size = size
        self.flags = flags
        self.structuredReplies = structuredReplies
        self.metaContextID = metaContextID
        maxDiscard = 2 * UInt64(maxPayload)
    }

    static let knownFlags = CommandFlags(rawValue: CommandFlags.fua.rawValue | CommandFlags.noHole.rawValue
                                         | CommandFlags.dontFragment.rawValue | CommandFlags.reqOne.rawValue
                                         | CommandFlags.fastZero.rawValue)

    public init(_ s: Session) {
        self.init(size: s.size, flags: s.flags, structuredReplies: s.structuredReplies,
                  metaContextID: s.metaContextID)
    }

    /// Checks `h` against the protocol and the export; the order follows nbdkit so that errno
    /// values match it (read-only first, then range, then flags, then capabilities).
    public func validate(_ h: RequestHeader) -> RequestVerdict {
        // Hot path: nothing here may allocate unless the request is refused.
        var name: String { CommandType.name(h.type) }
        let type = CommandType(rawValue: h.type)

        // A WRITE whose payload we refuse to skip costs the connection, whatever else is wrong.
        if type == .write && UInt64(h.length) > maxDiscard {
            return .hangUp("\(name) of \(h.length) bytes is too large to accept")
        }
        guard let type else { return .refuse(.einval, "unknown \(name)") }
        if type == .disconnect { return .disconnect }

        if flags.contains(.readOnly) && (type == .write || type == .trim || type == .writeZeroes) {
            return .refuse(.eperm, "\(name) on a read-only export")
        }

        switch type {
        case .read, .write, .trim, .cache, .writeZeroes, .blockStatus:
            if h.length == 0 {
                return .refuse(.einval, "\(name) with length 0")
            }
            // offset + length may overflow u64, so compare without adding.
            if h.offset > size || UInt64(h.length) > size - h.offset {
                let errno: NBDErrno = (type == .write || type == .writeZeroes) ? .enospc : .einval
                return .refuse(errno, "\(name) out of range: offset \(h.offset) + length \(h.length) > size \(size)")
            }
        case .flush:
            if h.offset != 0 || h.length != 0 {
                return .refuse(.einval, "\(name) needs offset and length 0")
            }
        case .disconnect:
            break
        }

        if !h.flags.subtracting(RequestRules.knownFlags).isEmpty {
            return .refuse(.einval, "\(name): unknown flags 0x\(String(h.flags.rawValue, radix: 16))")
        }
        if h.flags.contains(.noHole) && type != .writeZeroes {
            return .refuse(.einval, "\(name): NO_HOLE needs NBD_CMD_WRITE_ZEROES")
        }
        if h.flags.contains(.fastZero) && type != .writeZeroes {
            return .refuse(.einval, "\(name): FAST_ZERO needs NBD_CMD_WRITE_ZEROES")
        }
        if h.flags.contains(.dontFragment) && (type != .read || !structuredReplies) {
            return .refuse(.einval, "\(name): DF needs NBD_CMD_READ with structured replies")
        }
        if h.flags.contains(.reqOne) && type != .blockStatus {
            return .refuse(.einval, "\(name): REQ_ONE needs NBD_CMD_BLOCK_STATUS")
        }
        if h.flags.contains(.fua) && !flags.contains(.sendFUA) {
            return .refuse(.einval, "\(name): FUA was not offered")
        }
        if h.flags.contains(.fastZero) && !flags.contains(.sendFastZero) {
            return .refuse(.einval, "\(name): FAST_ZERO was not offered")
        }
        if (type == .read || type == .write) && h.length > maxPayload {
            return .refuse(.einval, "\(name) of \(h.length) bytes exceeds the maximum payload \(maxPayload)")
        }

        let fua = h.flags.contains(.fua)
        switch type {
        case .read:
            return .serve(.read(offset: h.offset, length: Int(h.length), dontFragment: h.flags.contains(.dontFragment)))
        case .write:
            return .serve(.write(offset: h.offset, length: Int(h.length), fua: fua))
        case .disconnect:
            return .disconnect
        case .flush:
            guard flags.contains(.sendFlush) else { return .refuse(.einval, "\(name) was not offered") }
            return .serve(.flush)
        case .trim:
            guard flags.contains(.sendTrim) else { return .refuse(.einval, "\(name) was not offered") }
            return .serve(.trim(offset: h.offset, length: UInt64(h.length), fua: fua))
        case .cache:
            // Some clients send CACHE without checking the flag; it is only a hint, so accept it.
            return .serve(.cache(offset: h.offset, length: UInt64(h.length)))
        case .writeZeroes:
            guard flags.contains(.sendWriteZeroes) else { return .refuse(.einval, "\(name) was not offered") }
            return .serve(.writeZeroes(offset: h.offset, length: UInt64(h.length), fua: fua,
                                         mayTrim: !h.flags.contains(.noHole), fast: h.flags.contains(.fastZero)))
        case .blockStatus:
            guard structuredReplies else {
                return .refuse(.einval, "\(name) needs structured replies")
            }
            guard metaContextID != nil else {
                return .refuse(.einval, "\(name) needs a meta context (NBD_OPT_SET_META_CONTEXT base:allocation)")
            }
            return .serve(.blockStatus(offset: h.offset, length: UInt64(h.length), reqOne: h.flags.contains(.reqOne)))
        }
    }
}
