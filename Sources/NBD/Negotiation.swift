// The fixed-newstyle handshake as a value with no I/O (postgres-nio style): the connection feeds it
// the client's bytes and carries out the returned step (send these bytes, then read N more bytes,
// enter transmission, or hang up). Rules: shared/docs/nbd.md §1.2-1.4.

/// Caps that keep an unauthenticated client from costing us anything.
public struct NegotiationLimits: Sendable {
    /// Options per connection before we hang up (nbdkit: 32); a LIST adds this many per export
    /// so that a client can still INFO every export it was shown.
    public var maxOptions: Int = 32
    /// Longest option payload we read; longer ones close the connection without reading.
    public var maxOptionLength: Int = 16 << 10

    public init(maxOptions: Int = 32, maxOptionLength: Int = 16 << 10) {
        self.maxOptions = maxOptions
        self.maxOptionLength = maxOptionLength
    }
}

/// What a client agreed on when it entered transmission.
public struct Session: Sendable {
    public let export: Export
    public let size: UInt64
    public let flags: TransmissionFlags
    public let structuredReplies: Bool
    /// Id of base:allocation if the client selected it for this export, else nil.
    public let metaContextID: UInt32?
    public let capabilities: BackendCapabilities

    public init(export: Export, structuredReplies: Bool, metaContextID: UInt32?) {
        self.export = export
        size = export.backend.size
        capabilities = export.backend.capabilities
        flags = Session.transmissionFlags(capabilities: capabilities, readOnly: export.readOnly,
                                          structuredReplies: structuredReplies)
        self.structuredReplies = structuredReplies
        self.metaContextID = metaContextID
    }

    /// Export flags, derived once from what the backend can do (0xded with structured replies,
    /// 0xd6d without, for a backend that can do everything).
    public static func transmissionFlags(capabilities c: BackendCapabilities, readOnly: Bool,
                                         structuredReplies: Bool) -> TransmissionFlags {
        var f: TransmissionFlags = [.hasFlags]
        if readOnly { f.insert(.readOnly) }
        if c.contains(.flush) { f.insert(.sendFlush) }
        if !readOnly {
            if c.contains(.fua) { f.insert(.sendFUA) }
            if c.contains(.trim) { f.insert(.sendTrim) }
            if c.contains(.zero) {
                f.insert(.sendWriteZeroes)
                if c.contains(.fastZero) { f.insert(.sendFastZero) }
            }
        }
        if structuredReplies { f.insert(.sendDF) }
        if c.contains(.multiConn) { f.insert(.canMultiConn) }
        if c.contains(.cache) { f.insert(.sendCache) }
        return f
    }
}

public struct Negotiation: Sendable {
    /// What the connection does after sending `Step.reply`.
    public enum Next: Sendable {
        /// Read exactly this many bytes and pass them to the matching `receive…` call.
        case readClientFlags
        case readOptionHeader
        case readOptionPayload(Int)
        /// Negotiation is over; serve requests.
        case transmission(Session)
        /// Hang up (after sending the reply, if any).
        case close(reason: String)
    }

    public struct Step: Sendable {
        public var reply: [UInt8]
        public var next: Next
    }

    /// The 18-byte server greeting: NBDMAGIC, IHAVEOPT, handshake flags.
    public static let hello: [UInt8] = {
        var w = ByteWriter()
        w.u64(Wire.nbdMagic)
        w.u64(Wire.optionMagic)
        w.u16(Negotiation.serverFlags.rawValue)
        return w.bytes
    }()

    static let serverFlags: HandshakeFlags = [.fixedNewstyle, .noZeroes]

    private enum Phase { case clientFlags, optionHeader, optionPayload(code: UInt32), finished }

    public let catalog: ExportCatalog
    public let limits: NegotiationLimits
    private let log: NBDLogger
    private var phase = Phase.clientFlags
    private var clientFlags: HandshakeFlags = []
    private var optionsSeen = 0
    private var optionLimit: Int
    private var listed = false
    public private(set) var structuredReplies = false
    /// The export the last SET_META_CONTEXT named, if it selected base:allocation.
    private var metaContextExport: String?
    public private(set) var shuttingDown = false

    public init(catalog: ExportCatalog, limits: NegotiationLimits = NegotiationLimits(),
                logger: NBDLogger = .disabled) {
        self.catalog = catalog
        self.limits = limits
        log = logger
        optionLimit = limits.maxOptions
    }

    /// The server is stopping: every further option but ABORT gets ERR_SHUTDOWN.
    public mutating func beginShutdown() { shuttingDown = true }

    // MARK: - Input

    /// The client's u32 flags, sent right after our hello.
    public mutating func receiveClientFlags(_ raw: UInt32) -> Step {
        guard case .clientFlags = phase else { return fail("client flags arrived out of order") }
        log.debug("client flags: 0x\(String(raw, radix: 16))")
        guard raw & ~UInt32(Negotiation.serverFlags.rawValue) == 0 else {
            return fail("client requested unknown flags 0x\(String(raw, radix: 16))")
        }
        clientFlags = HandshakeFlags(rawValue: UInt16(raw))
        if !clientFlags.contains(.fixedNewstyle) {
            log.debug("client did not ask for fixed newstyle; it may only send NBD_OPT_EXPORT_NAME")
        }
        phase = .optionHeader
        return Step(reply: [], next: .readOptionHeader)
    }

    /// A 16-byte option header: IHAVEOPT, option code, payload length.
    public mutating func receiveOptionHeader(_ header: ArraySlice<UInt8>) -> Step {
        guard case .optionHeader = phase else { return fail("option header arrived out of order") }
        var r = ByteReader(header)
        guard header.count == Wire.optionHeaderSize, let magic = r.u64(), let code = r.u32(),
              let length = r.u32() else { return fail("truncated option header") }
        guard magic == Wire.optionMagic else {
            return fail("bad option magic 0x\(String(magic, radix: 16)) (expected IHAVEOPT)")
        }
        optionsSeen += 1
        guard optionsSeen <= optionLimit else {
            return fail("client sent more than \(optionLimit) options")
        }
        guard length <= limits.maxOptionLength else {
            return fail("\(OptionCode.name(code)) payload of \(length) bytes exceeds the limit of \(limits.maxOptionLength)")
        }
        phase = .optionPayload(code: code)
        return Step(reply: [], next: .readOptionPayload(Int(length)))
    }

    /// The payload of the option whose header came last.
    public mutating func receiveOptionPayload(_ payload: ArraySlice<UInt8>) -> Step {
        guard case .optionPayload(let code) = phase else { return fail("option payload arrived out of order") }
        phase = .optionHeader
        let name = OptionCode.name(code)
        log.debug("client sent \(name) with \(payload.count) bytes of data")
        let option = OptionCode(rawValue: code)

        if option == .exportName { return exportName(payload) }
        if option == .abort {
            log.debug("client aborted negotiation; replying to \(name) with NBD_REP_ACK and closing")
            phase = .finished
            return Step(reply: optionReply(code, .ack), next: .close(reason: "client sent NBD_OPT_ABORT"))
        }
        if shuttingDown {
            return error(code, .errShutdown, "server is shutting down")
        }
        if !clientFlags.contains(.fixedNewstyle) {
            return error(code, .errInvalid, "only NBD_OPT_EXPORT_NAME is allowed without fixed newstyle")
        }
        switch option {
        case .list: return list(payload)
        case .startTLS:
            if !payload.isEmpty { return error(code, .errInvalid, "NBD_OPT_STARTTLS takes no data") }
            return error(code, .errPolicy, "TLS is not configured on this server")
        case .info, .go: return infoOrGo(code, payload)
        case .structuredReply: return structuredReply(payload)
        case .listMetaContext, .setMetaContext: return metaContext(code, payload)
        case .exportName, .abort, .peekExport, .extendedHeaders, nil:
            return error(code, .errUnsupported, "\(name) is not supported")
        }
    }

    // MARK: - Options

    private mutating func exportName(_ payload: ArraySlice<UInt8>) -> Step {
        let name = String(decoding: payload, as: UTF8.self)
        guard !shuttingDown else { return fail("NBD_OPT_EXPORT_NAME while shutting down") }
        guard payload.count <= Wire.maxStringLength, !payload.contains(0),
              let export = catalog.lookup(name) else {
            // EXPORT_NAME has no error reply: hanging up is the only answer.
            return fail("NBD_OPT_EXPORT_NAME: export '\(name)' not available")
        }
        let session = Session(export: export, structuredReplies: structuredReplies,
                              metaContextID: metaContextID(for: export))
        var w = ByteWriter()
        w.u64(session.size)
        w.u16(session.flags.rawValue)
        if !clientFlags.contains(.noZeroes) { w.zeros(Wire.exportNameZeroPad) }
        log.debug("NBD_OPT_EXPORT_NAME: serving export '\(export.name)', size \(session.size), flags 0x\(String(session.flags.rawValue, radix: 16))")
        phase = .finished
        return Step(reply: w.bytes, next: .transmission(session))
    }

    private mutating func list(_ payload: ArraySlice<UInt8>) -> Step {
        let code = OptionCode.list.rawValue
        guard payload.isEmpty else { return error(code, .errInvalid, "NBD_OPT_LIST takes no data") }
        guard !listed else { return error(code, .errInvalid, "NBD_OPT_LIST may be sent only once") }
        listed = true
        optionLimit += limits.maxOptions * catalog.exports.count
        var reply: [UInt8] = []
        for e in catalog.exports {
            var w = ByteWriter()
            w.u32(UInt32(e.name.utf8.count))
            w.raw(e.name.utf8)
            w.raw(e.description.utf8)
            reply += optionReply(code, .server, w.bytes)
            log.debug("NBD_OPT_LIST: advertising export '\(e.name)'")
        }
        reply += optionReply(code, .ack)
        log.debug("replying to NBD_OPT_LIST with NBD_REP_ACK")
        return Step(reply: reply, next: .readOptionHeader)
    }

    private mutating func structuredReply(_ payload: ArraySlice<UInt8>) -> Step {
        let code = OptionCode.structuredReply.rawValue
        guard payload.isEmpty else { return error(code, .errInvalid, "NBD_OPT_STRUCTURED_REPLY takes no data") }
        guard !structuredReplies else { return error(code, .errInvalid, "structured replies are already on") }
        structuredReplies = true
        log.debug("replying to NBD_OPT_STRUCTURED_REPLY with NBD_REP_ACK: structured replies on")
        return Step(reply: optionReply(code, .ack), next: .readOptionHeader)
    }

    private mutating func infoOrGo(_ code: UInt32, _ payload: ArraySlice<UInt8>) -> Step {
        let optName = OptionCode.name(code)
        var r = ByteReader(payload)
        guard let nameLength = r.u32(), Int(nameLength) <= payload.count - 6,
              let nameBytes = r.bytes(Int(nameLength)), let count = r.u16(),
              r.remaining == 2 * Int(count) else {
            return error(code, .errInvalid, "\(optName): malformed request (lengths do not add up)")
        }
        var requested: [InfoType] = []
        for _ in 0..<count {
            guard let raw = r.u16() else { break }
            if let t = InfoType(rawValue: raw), !requested.contains(t) { requested.append(t) }
            else if InfoType(rawValue: raw) == nil { log.debug("\(optName): ignoring unknown info request \(raw)") }
        }
        let name = String(decoding: nameBytes, as: UTF8.self)
        guard !nameBytes.contains(0), let export = catalog.lookup(name) else {
            return error(code, .errUnknown, "export '\(name)' not available")
        }
        let session = Session(export: export, structuredReplies: structuredReplies,
                              metaContextID: metaContextID(for: export))
        log.debug("\(optName): client asked for export '\(name)' -> '\(export.name)' with info [\(requested.map(\.description).joined(separator: ", "))]")

        // NBD_INFO_EXPORT always, even when not asked (qemu relies on it).
        var w = ByteWriter()
        w.u16(InfoType.export.rawValue)
        w.u64(session.size)
        w.u16(session.flags.rawValue)
        var reply = optionReply(code, .info, w.bytes)
        for item in requested {
            var w = ByteWriter()
            w.u16(item.rawValue)
            switch item {
            case .export: continue
            case .name: w.raw(export.name.utf8)
            case .description:
                if export.description.isEmpty { continue }
                w.raw(export.description.utf8)
            case .blockSize:
                w.u32(BlockSize.minimum)
                w.u32(BlockSize.preferred)
                w.u32(BlockSize.maximumPayload)
            }
            reply += optionReply(code, .info, w.bytes)
        }
        reply += optionReply(code, .ack)
        log.debug("replying to \(optName) with NBD_REP_INFO (size \(session.size), flags 0x\(String(session.flags.rawValue, radix: 16))) and NBD_REP_ACK")
        if code == OptionCode.go.rawValue {
            phase = .finished
            return Step(reply: reply, next: .transmission(session))
        }
        return Step(reply: reply, next: .readOptionHeader)
    }

    private mutating func metaContext(_ code: UInt32, _ payload: ArraySlice<UInt8>) -> Step {
        let isSet = code == OptionCode.setMetaContext.rawValue
        let optName = OptionCode.name(code)
        if isSet { metaContextExport = nil }  // a SET replaces the selection even when it fails
        guard structuredReplies else {
            return error(code, .errInvalid, "\(optName) needs NBD_OPT_STRUCTURED_REPLY first")
        }
        var r = ByteReader(payload)
        guard let nameLength = r.u32(), let nameBytes = r.bytes(Int(nameLength)), let count = r.u32() else {
            return error(code, .errInvalid, "\(optName): malformed request")
        }
        var queries: [ArraySlice<UInt8>] = []
        for _ in 0..<count {
            guard let length = r.u32(), let q = r.bytes(Int(length)) else {
                return error(code, .errInvalid, "\(optName): malformed query list")
            }
            queries.append(q)
        }
        guard r.remaining == 0 else { return error(code, .errInvalid, "\(optName): trailing data") }
        let name = String(decoding: nameBytes, as: UTF8.self)
        guard !nameBytes.contains(0), let export = catalog.lookup(name) else {
            return error(code, .errUnknown, "export '\(name)' not available")
        }

        let baseAllocation = Array(MetaContext.baseAllocation.utf8)
        var matched: Bool
        if isSet {
            matched = queries.contains { $0.elementsEqual(baseAllocation) }
        } else {
            matched = queries.isEmpty || queries.contains {
                $0.elementsEqual(baseAllocation) || $0.elementsEqual("base:".utf8)
            }
        }
        var reply: [UInt8] = []
        if matched {
            var w = ByteWriter()
            w.u32(isSet ? MetaContext.baseAllocationID : 0)
            w.raw(baseAllocation)
            reply += optionReply(code, .metaContext, w.bytes)
        }
        if isSet && matched { metaContextExport = export.name }
        reply += optionReply(code, .ack)
        log.debug("replying to \(optName) for export '\(export.name)' with \(matched ? "base:allocation" : "no contexts") and NBD_REP_ACK")
        return Step(reply: reply, next: .readOptionHeader)
    }

    // MARK: - Helpers

    private func metaContextID(for export: Export) -> UInt32? {
        guard structuredReplies, metaContextExport == export.name else { return nil }
        return MetaContext.baseAllocationID
    }

    private mutating func fail(_ reason: String) -> Step {
        log.info("closing connection during negotiation: \(reason)")
        phase = .finished
        return Step(reply: [], next: .close(reason: reason))
    }

    private func error(_ code: UInt32, _ type: OptionReplyType, _ message: String) -> Step {
        log.debug("replying to \(OptionCode.name(code)) with \(type.name): \(message)")
        return Step(reply: optionReply(code, type, Array(message.utf8)), next: .readOptionHeader)
    }
}

/// Encodes one option reply: magic, echoed option, reply type, length, data.
public func optionReply(_ option: UInt32, _ type: OptionReplyType, _ data: [UInt8] = []) -> [UInt8] {
    var w = ByteWriter()
    w.u64(Wire.optionReplyMagic)
    w.u32(option)
    w.u32(type.rawValue)
    w.u32(UInt32(data.count))
    w.raw(data)
    return w.bytes
}
