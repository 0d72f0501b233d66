// The options of the fixed-newstyle handshake, each a function from the option's payload (and
// what the client settled so far) to the step that answers it. Rules: shared/docs/nbd.md §1.3-1.4.

extension Negotiation {
    func exportName(_ payload: ArraySlice<UInt8>, _ o: Options) -> Step {
        let name = String(decoding: payload, as: UTF8.self)
        guard !o.shuttingDown else { return failure("NBD_OPT_EXPORT_NAME while shutting down") }
        guard payload.count <= Wire.maxStringLength, !payload.contains(0),
              let export = catalog.lookup(name), export.admits(o.peer) else {
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

    func list(_ payload: ArraySlice<UInt8>, _ o: inout Options) -> Step {
        let code = OptionCode.list.rawValue
        guard payload.isEmpty else { return error(code, .errInvalid, "NBD_OPT_LIST takes no data") }
        guard !o.listed else { return error(code, .errInvalid, "NBD_OPT_LIST may be sent only once") }
        o.listed = true
        o.optionLimit += limits.maxOptions * catalog.exports.count
        var reply: [UInt8] = []
        var log: [String] = []
        for e in catalog.exports where e.admits(o.peer) {
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

    func structuredReply(_ payload: ArraySlice<UInt8>, _ o: inout Options) -> Step {
        let code = OptionCode.structuredReply.rawValue
        guard payload.isEmpty else { return error(code, .errInvalid, "NBD_OPT_STRUCTURED_REPLY takes no data") }
        guard !o.structuredReplies else { return error(code, .errInvalid, "structured replies are already on") }
        o.structuredReplies = true
        return Step(reply: optionReply(code, .ack), next: .readOptionHeader,
                    log: ["replying to NBD_OPT_STRUCTURED_REPLY with NBD_REP_ACK: structured replies on"])
    }

    func infoOrGo(_ code: UInt32, _ payload: ArraySlice<UInt8>, _ o: Options) -> Step {
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
        if let refusal = refusal(code, export, o) { return refusal }
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

    func metaContext(_ code: UInt32, _ payload: ArraySlice<UInt8>, _ o: inout Options) -> Step {
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
        if let refusal = refusal(code, export, o) { return refusal }

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

    func startTLS(_ payload: ArraySlice<UInt8>, _ o: Options) -> Step {
        let code = OptionCode.startTLS.rawValue
        guard payload.isEmpty else { return error(code, .errInvalid, "NBD_OPT_STARTTLS takes no data") }
        guard tls != .off else { return error(code, .errPolicy, "TLS is not configured on this server") }
        guard o.peer == nil else { return error(code, .errInvalid, "TLS is already on") }
        return Step(reply: optionReply(code, .ack), next: .startTLS,
                    log: ["replying to NBD_OPT_STARTTLS with NBD_REP_ACK; the TLS handshake follows"])
    }

    // MARK: - Helpers

    /// The reply refusing an export this client may not use (Export.allowedPeers), or nil. In
    /// the clear that is ERR_TLS_REQD where the socket offers TLS (the spec's reply for "TLS
    /// first, then you may"), else, like to a TLS peer with another name, ERR_POLICY.
    func refusal(_ code: UInt32, _ export: Export, _ o: Options) -> Step? {
        guard !export.admits(o.peer) else { return nil }
        if o.peer == nil && tls != .off {
            return error(code, .errTLSRequired, "export '\(export.name)' is only served over TLS")
        }
        return error(code, .errPolicy, "export '\(export.name)' is not served to this peer")
    }

    func metaContextID(for export: Export, _ o: Options) -> UInt32? {
        guard o.structuredReplies, o.metaContextExport == export.name else { return nil }
        return MetaContext.baseAllocationID
    }

    func failure(_ reason: String, _ log: [String] = []) -> Step {
        Step(reply: [], next: .close(reason: reason), log: log)
    }

    func error(_ code: UInt32, _ type: OptionReplyType, _ message: String) -> Step {
        Step(reply: optionReply(code, type, Array(message.utf8)), next: .readOptionHeader,
             log: ["replying to \(OptionCode.name(code)) with \(type.name): \(message)"])
    }
}
