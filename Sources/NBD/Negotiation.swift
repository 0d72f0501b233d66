// The fixed-newstyle handshake as a state machine with no I/O and no logging (postgres-nio style):
// the driver (Connection) feeds it every byte the client sends, in the amounts the machine asks
// for, and carries out the step each event returns: send these bytes, then read N more, enter
// transmission, or hang up. The step's `log` sentences are for the driver to log.
// Rules: shared/docs/nbd.md §1.2-1.4.

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
    /// What the driver does after sending `Step.reply`.
    public enum Next: Sendable {
        /// Read exactly `byteCount` bytes and pass them to `receive(_:)`.
        case readClientFlags
        case readOptionHeader
        case readOptionPayload(Int)
        /// Negotiation is over; serve requests.
        case transmission(Session)
        /// Hang up (after sending the reply, if any).
        case close(reason: String)

        /// Bytes to read next; nil once negotiation is over.
        public var byteCount: Int? {
            switch self {
            case .readClientFlags: return Wire.clientFlagsSize
            case .readOptionHeader: return Wire.optionHeaderSize
            case .readOptionPayload(let n): return n
            case .transmission, .close: return nil
            }
        }
    }

    /// The answer to every event.
    public struct Step: Sendable {
        /// Bytes to send to the client, possibly none.
        public var reply: [UInt8]
        public var next: Next
        /// What the machine decided, as sentences for the driver's debug log.
        public var log: [String]
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

    /// What the client has settled so far; it lives in the states of the option phase.
    private struct Options: Sendable {
        var clientFlags: HandshakeFlags
        var optionsSeen = 0
        var optionLimit: Int
        var listed = false
        var structuredReplies = false
        /// The export the last SET_META_CONTEXT named, if it selected base:allocation.
        var metaContextExport: String?
        var shuttingDown: Bool
    }

    private enum State: Sendable {
        case awaitingClientFlags(shuttingDown: Bool)
        case awaitingOptionHeader(Options)
        case awaitingOptionPayload(Options, code: UInt32, length: Int)
        case finished
    }

    public let catalog: ExportCatalog
    public let limits: NegotiationLimits
    private var state = State.awaitingClientFlags(shuttingDown: false)

    public init(catalog: ExportCatalog, limits: NegotiationLimits = NegotiationLimits()) {
        self.catalog = catalog
        self.limits = limits
    }

    // MARK: - Events

    /// The bytes the last step asked for.
    public mutating func receive(_ bytes: ArraySlice<UInt8>) -> Step {
        switch state {
        case .awaitingClientFlags:
            guard bytes.count == Wire.clientFlagsSize else { return fail("truncated client flags") }
            return receiveClientFlags(bytes.reduce(UInt32(0)) { $0 << 8 | UInt32($1) })
        case .awaitingOptionHeader:
            return receiveOptionHeader(bytes)
        case .awaitingOptionPayload:
            return receiveOptionPayload(bytes)
        case .finished:
            return fail("data after the negotiation ended")
        }
    }

    /// The server is stopping: every further option but ABORT gets ERR_SHUTDOWN. The read in
    /// progress goes on.
    public mutating func beginShutdown() -> Step {
        let next: Next
        switch state {
        case .awaitingClientFlags:
            state = .awaitingClientFlags(shuttingDown: true)
            next = .readClientFlags
        case .awaitingOptionHeader(var o):
            o.shuttingDown = true
            state = .awaitingOptionHeader(o)
            next = .readOptionHeader
        case .awaitingOptionPayload(var o, let code, let length):
            o.shuttingDown = true
            state = .awaitingOptionPayload(o, code: code, length: length)
            next = .readOptionPayload(length)
        case .finished:
            return Step(reply: [], next: .close(reason: "server is stopping"), log: [])
        }
        return Step(reply: [], next: next, log: ["server is stopping: further options get NBD_REP_ERR_SHUTDOWN"])
    }

    /// The client's u32 flags, sent right after our hello.
    public mutating func receiveClientFlags(_ raw: UInt32) -> Step {
        guard case .awaitingClientFlags(let shuttingDown) = state else { return fail("client flags arrived out of order") }
        var log = ["client flags: 0x\(String(raw, radix: 16))"]
        guard raw & ~UInt32(Negotiation.serverFlags.rawValue) == 0 else {
            return fail("client requested unknown flags 0x\(String(raw, radix: 16))", log)
        }
        let flags = HandshakeFlags(rawValue: UInt16(raw))
        if !flags.contains(.fixedNewstyle) {
            log.append("client did not ask for fixed newstyle; it may only send NBD_OPT_EXPORT_NAME")
        }
        state = .awaitingOptionHeader(Options(clientFlags: flags, optionLimit: limits.maxOptions, shuttingDown: shuttingDown))
        return Step(reply: [], next: .readOptionHeader, log: log)
    }

    /// A 16-byte option header: IHAVEOPT, option code, payload length.
    public mutating func receiveOptionHeader(_ header: ArraySlice<UInt8>) -> Step {
        guard case .awaitingOptionHeader(var o) = state else { return fail("option header arrived out of order") }
        var r = ByteReader(header)
        guard header.count == Wire.optionHeaderSize, let magic = r.u64(), let code = r.u32(),
              let length = r.u32() else { return fail("truncated option header") }
        guard magic == Wire.optionMagic else {
            return fail("bad option magic 0x\(String(magic, radix: 16)) (expected IHAVEOPT)")
        }
        o.optionsSeen += 1
        guard o.optionsSeen <= o.optionLimit else {
            return fail("client sent more than \(o.optionLimit) options")
        }
        guard length <= limits.maxOptionLength else {
            return fail("\(OptionCode.name(code)) payload of \(length) bytes exceeds the limit of \(limits.maxOptionLength)")
        }
        state = .awaitingOptionPayload(o, code: code, length: Int(length))
        return Step(reply: [], next: .readOptionPayload(Int(length)), log: [])
    }

    /// The payload of the option whose header came last.
    public mutating func receiveOptionPayload(_ payload: ArraySlice<UInt8>) -> Step {
        guard case .awaitingOptionPayload(var o, let code, _) = state else { return fail("option payload arrived out of order") }
        let name = OptionCode.name(code)
        let received = "client sent \(name) with \(payload.count) bytes of data"
        var step: Step
        switch OptionCode(rawValue: code) {
        case .exportName:
            step = exportName(payload, o)
        case .abort:
            step = Step(reply: optionReply(code, .ack), next: .close(reason: "client sent NBD_OPT_ABORT"),
                        log: ["client aborted negotiation; replying to \(name) with NBD_REP_ACK and closing"])
        case _ where o.shuttingDown:
            step = error(code, .errShutdown, "server is shutting down")
        case _ where !o.clientFlags.contains(.fixedNewstyle):
            step = error(code, .errInvalid, "only NBD_OPT_EXPORT_NAME is allowed without fixed newstyle")
        case .list:
            step = list(payload, &o)
        case .startTLS:
            step = payload.isEmpty ? error(code, .errPolicy, "TLS is not configured on this server")
                : error(code, .errInvalid, "NBD_OPT_STARTTLS takes no data")
        case .info, .go:
            step = infoOrGo(code, payload, o)
        case .structuredReply:
            step = structuredReply(payload, &o)
        case .listMetaContext, .setMetaContext:
            step = metaContext(code, payload, &o)
        case .peekExport, .extendedHeaders, nil:
            step = error(code, .errUnsupported, "\(name) is not supported")
        }
        step.log.insert(received, at: 0)
        switch step.next {
        case .transmission, .close: state = .finished
        default: state = .awaitingOptionHeader(o)
        }
        return step
    }

    // MARK: - Options

    private func exportName(_ payload: ArraySlice<UInt8>, _ o: Options) -> Step {
        let name = String(decoding: payload, as: UTF8.self)
        guard !o.shuttingDown else { return failure("NBD_OPT_EXPORT_NAME while shutting down") }
        guard payload.count <= Wire.maxStringLength, !payload.contains(0),
              let export = catalog.lookup(name) else {
            // EXPORT_NAME has no error reply: hanging up is the only answer.
            return failure("NBD_OPT_EXPORT_NAME: export '\(name)' not available")
        }
        let session = Session(export: export, structuredReplies: o.structuredReplies,
                              metaContextID: metaContextID(for: export, o))
        var w = ByteWriter()
        w.u64(session.size)
        w.u16(session.flags.rawValue)
        if !o.clientFlags.contains(.noZeroes) { w.zeros(Wire.exportNameZeroPad) }
        return Step(reply: w.bytes, next: .transmission(session),
                    log: ["NBD_OPT_EXPORT_NAME: serving export '\(export.name)', size \(session.size), flags 0x\(String(session.flags.rawValue, radix: 16))"])
    }

    private func list(_ payload: ArraySlice<UInt8>, _ o: inout Options) -> Step {
        let code = OptionCode.list.rawValue
        guard payload.isEmpty else { return error(code, .errInvalid, "NBD_OPT_LIST takes no data") }
        guard !o.listed else { return error(code, .errInvalid, "NBD_OPT_LIST may be sent only once") }
        o.listed = true
        o.optionLimit += limits.maxOptions * catalog.exports.count
        var reply: [UInt8] = []
        var log: [String] = []
        for e in catalog.exports {
            var w = ByteWriter()
            w.u32(UInt32(e.name.utf8.count))
            w.raw(e.name.utf8)
            w.raw(e.description.utf8)
            reply += optionReply(code, .server, w.bytes)
            log.append("NBD_OPT_LIST: advertising export '\(e.name)'")
        }
        reply += optionReply(code, .ack)
        log.append("replying to NBD_OPT_LIST with NBD_REP_ACK")
        return Step(reply: reply, next: .readOptionHeader, log: log)
    }

    private func structuredReply(_ payload: ArraySlice<UInt8>, _ o: inout Options) -> Step {
        let code = OptionCode.structuredReply.rawValue
        guard payload.isEmpty else { return error(code, .errInvalid, "NBD_OPT_STRUCTURED_REPLY takes no data") }
        guard !o.structuredReplies else { return error(code, .errInvalid, "structured replies are already on") }
        o.structuredReplies = true
        return Step(reply: optionReply(code, .ack), next: .readOptionHeader,
                    log: ["replying to NBD_OPT_STRUCTURED_REPLY with NBD_REP_ACK: structured replies on"])
    }

    private func infoOrGo(_ code: UInt32, _ payload: ArraySlice<UInt8>, _ o: Options) -> Step {
        let optName = OptionCode.name(code)
        var r = ByteReader(payload)
        guard let nameLength = r.u32(), Int(nameLength) <= payload.count - 6,
              let nameBytes = r.bytes(Int(nameLength)), let count = r.u16(),
              r.remaining == 2 * Int(count) else {
            return error(code, .errInvalid, "\(optName): malformed request (lengths do not add up)")
        }
        var log: [String] = []
        var requested: [InfoType] = []
        for _ in 0..<count {
            guard let raw = r.u16() else { break }
            if let t = InfoType(rawValue: raw) {
                if !requested.contains(t) { requested.append(t) }
            } else {
                log.append("\(optName): ignoring unknown info request \(raw)")
            }
        }
        let name = String(decoding: nameBytes, as: UTF8.self)
        guard !nameBytes.contains(0), let export = catalog.lookup(name) else {
            return error(code, .errUnknown, "export '\(name)' not available")
        }
        let session = Session(export: export, structuredReplies: o.structuredReplies,
                              metaContextID: metaContextID(for: export, o))
        log.append("\(optName): client asked for export '\(name)' -> '\(export.name)' with info [\(requested.map(\.description).joined(separator: ", "))]")

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
        log.append("replying to \(optName) with NBD_REP_INFO (size \(session.size), flags 0x\(String(session.flags.rawValue, radix: 16))) and NBD_REP_ACK")
        let next: Next = code == OptionCode.go.rawValue ? .transmission(session) : .readOptionHeader
        return Step(reply: reply, next: next, log: log)
    }

    private func metaContext(_ code: UInt32, _ payload: ArraySlice<UInt8>, _ o: inout Options) -> Step {
        let isSet = code == OptionCode.setMetaContext.rawValue
        let optName = OptionCode.name(code)
        if isSet { o.metaContextExport = nil }  // a SET replaces the selection even when it fails
        guard o.structuredReplies else {
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
        let matched: Bool
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
        if isSet && matched { o.metaContextExport = export.name }
        reply += optionReply(code, .ack)
        return Step(reply: reply, next: .readOptionHeader,
                    log: ["replying to \(optName) for export '\(export.name)' with \(matched ? "base:allocation" : "no contexts") and NBD_REP_ACK"])
    }

    // MARK: - Helpers

    private func metaContextID(for export: Export, _ o: Options) -> UInt32? {
        guard o.structuredReplies, o.metaContextExport == export.name else { return nil }
        return MetaContext.baseAllocationID
    }

    /// Hang up: the state becomes finished.
    private mutating func fail(_ reason: String, _ log: [String] = []) -> Step {
        state = .finished
        return failure(reason, log)
    }

    private func failure(_ reason: String, _ log: [String] = []) -> Step {
        Step(reply: [], next: .close(reason: reason), log: log)
    }

    private func error(_ code: UInt32, _ type: OptionReplyType, _ message: String) -> Step {
        Step(reply: optionReply(code, type, Array(message.utf8)), next: .readOptionHeader,
             log: ["replying to \(OptionCode.name(code)) with \(type.name): \(message)"])
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
