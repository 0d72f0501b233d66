// The fixed-newstyle handshake as a state machine with no I/O and no logging (postgres-nio style):
// the driver (Connection) feeds it every byte the client sends, in the amounts the machine asks
// for, and carries out the step each event returns: send these bytes, then read N more, enter
// transmission, or hang up. The step's `log` sentences are for the driver to log.
// Rules: shared/docs/nbd.md §1.2-1.4.

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
        /// Run the TLS handshake (after sending the reply, NBD_OPT_STARTTLS's ACK), then call
        /// `tlsEstablished(peerNames:)`; hang up if it fails.
        case startTLS

        /// Bytes to read next; nil once negotiation is over.
        public var byteCount: Int? {
            switch self {
            case .readClientFlags: return Wire.clientFlagsSize
            case .readOptionHeader: return Wire.optionHeaderSize
            case .readOptionPayload(let n): return n
            case .transmission, .close, .startTLS: return nil
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
    struct Options: Sendable {
        var clientFlags: HandshakeFlags
        var optionsSeen = 0
        var optionLimit: Int
        var listed = false
        var structuredReplies = false
        /// The export the last SET_META_CONTEXT named, if it selected base:allocation.
        var metaContextExport: String?
        var shuttingDown: Bool
        /// Set once TLS is up: the names the peer authenticated as (maybe none). nil: in the clear.
        var peer: [String]?
    }

    private enum State: Sendable {
        case awaitingClientFlags(shuttingDown: Bool)
        case awaitingOptionHeader(Options)
        case awaitingOptionPayload(Options, code: UInt32, length: Int)
        case awaitingTLSHandshake(Options)
        case finished
    }

    public let catalog: ExportCatalog
    public let limits: NegotiationLimits
    /// What the listening socket asks of the client.
    public let tls: TLSMode
    private var state = State.awaitingClientFlags(shuttingDown: false)

    public init(catalog: ExportCatalog, limits: NegotiationLimits = NegotiationLimits(), tls: TLSMode = .off) {
        self.catalog = catalog
        self.limits = limits
        self.tls = tls
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
        case .awaitingTLSHandshake:
            return fail("data while the TLS handshake was due")
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
        case .awaitingTLSHandshake(var o):
            o.shuttingDown = true
            state = .awaitingTLSHandshake(o)
            next = .startTLS
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
        let inTheClearButRequired = tls == .require && o.peer == nil
        switch OptionCode(rawValue: code) {
        case .abort:
            step = Step(reply: optionReply(code, .ack), next: .close(reason: "client sent NBD_OPT_ABORT"),
                        log: ["client aborted negotiation; replying to \(name) with NBD_REP_ACK and closing"])
        case .exportName where inTheClearButRequired:
            step = failure("NBD_OPT_EXPORT_NAME in the clear, but this socket requires TLS")
        case .exportName:
            step = exportName(payload, o)
        case _ where o.shuttingDown:
            step = error(code, .errShutdown, "server is shutting down")
        case _ where !o.clientFlags.contains(.fixedNewstyle):
            step = error(code, .errInvalid, "only NBD_OPT_EXPORT_NAME is allowed without fixed newstyle")
        case .startTLS:
            step = startTLS(payload, o)
        case _ where inTheClearButRequired:
            step = error(code, .errTLSRequired, "this socket requires TLS: send NBD_OPT_STARTTLS first")
        case .list:
            step = list(payload, &o)
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
        case .startTLS: state = .awaitingTLSHandshake(o)
        default: state = .awaitingOptionHeader(o)
        }
        return step
    }

    /// The TLS handshake that `.startTLS` asked for succeeded; the peer authenticated under
    /// `peerNames` (maybe none). What was settled in the clear is forgotten, as nbdkit does: a
    /// man in the middle could have chosen it.
    public mutating func tlsEstablished(peerNames: [String]) -> Step {
        guard case .awaitingTLSHandshake(var o) = state else { return fail("TLS handshake out of order") }
        o.peer = peerNames
        o.structuredReplies = false
        o.metaContextExport = nil
        state = .awaitingOptionHeader(o)
        let who = peerNames.isEmpty ? "an anonymous peer" : "'\(peerNames[0])'"
        return Step(reply: [], next: .readOptionHeader,
                    log: ["TLS is up with \(who); options settled in the clear are forgotten"])
    }

    /// Hang up: the state becomes finished.
    private mutating func fail(_ reason: String, _ log: [String] = []) -> Step {
        state = .finished
        return failure(reason, log)
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
