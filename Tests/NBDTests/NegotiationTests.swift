import NBD
import Testing

/// The handshake state machine, fed bytes directly (no sockets).
@Suite struct NegotiationTests {
    let disk: MemoryBackend
    let catalog: ExportCatalog

    init() throws {
        disk = try MemoryBackend(size: 1 << 20)
        let other = try MemoryBackend(size: 2 << 20)
        catalog = try ExportCatalog([
            Export(name: "zram0", description: "first", backend: disk),
            Export(name: "ro", description: "read only", backend: other, readOnly: true),
        ], defaultExport: "zram0")
    }

    /// A negotiation past the client flags.
    func started(flags: UInt32 = 3, limits: NegotiationLimits = NegotiationLimits()) -> Negotiation {
        var n = Negotiation(catalog: catalog, limits: limits)
        let step = n.receiveClientFlags(flags)
        #expect(step.reply.isEmpty)
        return n
    }

    /// Sends one option and returns its step.
    func send(_ n: inout Negotiation, _ code: UInt32, _ payload: [UInt8] = []) -> Negotiation.Step {
        let h = n.receiveOptionHeader(optionHeader(code, length: payload.count)[...])
        guard case .readOptionPayload(let len) = h.next else {
            Issue.record("header not accepted: \(h.next)")
            return h
        }
        #expect(len == payload.count)
        return n.receiveOptionPayload(payload[...])
    }

    func send(_ n: inout Negotiation, _ code: OptionCode, _ payload: [UInt8] = []) -> Negotiation.Step {
        send(&n, code.rawValue, payload)
    }

    func isClose(_ next: Negotiation.Next) -> Bool {
        if case .close = next { return true }
        return false
    }

    func isOptionLoop(_ next: Negotiation.Next) -> Bool {
        if case .readOptionHeader = next { return true }
        return false
    }

    @Test func helloIsFixedNewstyleWithNoZeroes() {
        let h = Negotiation.hello
        #expect(h.count == 18)
        #expect(be64(h[...], 0) == 0x4e42_444d_4147_4943)
        #expect(be64(h[...], 8) == 0x4948_4156_454f_5054)
        #expect(be16(h[...], 16) == 0x0003)
    }

    @Test(arguments: [UInt32(4), 0x8000_0000, 0xffff_ffff, 0x7])
    func unknownClientFlagsCloseTheConnection(flags: UInt32) {
        var n = Negotiation(catalog: catalog)
        #expect(isClose(n.receiveClientFlags(flags).next))
    }

    @Test func badOptionMagicCloses() {
        var n = started()
        let step = n.receiveOptionHeader(optionHeader(7, length: 0, magic: 0x2560_9513_0000_0000)[...])
        #expect(isClose(step.next))
    }

    @Test func hugeOptionLengthClosesWithoutReading() {
        var n = started()
        let step = n.receiveOptionHeader(optionHeader(99, length: Int(UInt32.max))[...])
        #expect(isClose(step.next))
    }

    @Test(arguments: [UInt32(4), 11, 12, 99, 0x7fff_ffff])
    func unknownOptionsGetErrUnsupAndKeepGoing(code: UInt32) {
        var n = started()
        let step = send(&n, code, [1, 2, 3])
        let r = parseOptionReplies(step.reply)
        #expect(r.count == 1)
        #expect(r[0].option == code)
        #expect(r[0].type == OptionReplyType.errUnsupported.rawValue)
        #expect(isOptionLoop(step.next))
    }

    @Test func startTLSIsRefusedByPolicy() {
        var n = started()
        #expect(parseOptionReplies(send(&n, .startTLS).reply).first?.type == OptionReplyType.errPolicy.rawValue)
        #expect(parseOptionReplies(send(&n, .startTLS, [0]).reply).first?.type == OptionReplyType.errInvalid.rawValue)
    }

    func startedWithTLS(_ mode: TLSMode) -> Negotiation {
        var n = Negotiation(catalog: catalog, tls: mode)
        _ = n.receiveClientFlags(3)
        return n
    }

    func isStartTLS(_ next: Negotiation.Next) -> Bool {
        if case .startTLS = next { return true }
        return false
    }

    @Test func requireAnswersEveryOptionButStartTLSAndAbortWithTLSRequired() {
        var n = startedWithTLS(.require)
        for (code, payload) in [(OptionCode.list, [UInt8]()), (.info, infoPayload("zram0")), (.go, infoPayload("zram0")),
                                (.structuredReply, []), (.listMetaContext, metaPayload("zram0", ["base:"]))] {
            let step = send(&n, code, payload)
            #expect(parseOptionReplies(step.reply).map(\.type) == [OptionReplyType.errTLSRequired.rawValue], "\(code)")
            #expect(isOptionLoop(step.next))
        }
        // Unknown options too: the client learns nothing before TLS.
        #expect(parseOptionReplies(send(&n, 99).reply).first?.type == OptionReplyType.errTLSRequired.rawValue)
        // EXPORT_NAME has no error reply, so it is a hang-up.
        #expect(isClose(send(&n, .exportName, Array("zram0".utf8)).next))
        var aborting = startedWithTLS(.require)
        #expect(isClose(send(&aborting, .abort).next))
    }

    @Test func startTLSAcksOnceThenOptionsAreServed() {
        var n = startedWithTLS(.require)
        #expect(parseOptionReplies(send(&n, .startTLS, [0]).reply).first?.type == OptionReplyType.errInvalid.rawValue,
                "STARTTLS carries no data")
        let step = send(&n, .startTLS)
        #expect(parseOptionReplies(step.reply).map(\.type) == [OptionReplyType.ack.rawValue])
        #expect(isStartTLS(step.next))
        #expect(isOptionLoop(n.tlsEstablished(peerNames: ["alice"]).next))
        #expect(parseOptionReplies(send(&n, .startTLS).reply).first?.type == OptionReplyType.errInvalid.rawValue,
                "a second STARTTLS is invalid")
        #expect(parseOptionReplies(send(&n, .list).reply).last?.type == OptionReplyType.ack.rawValue)
    }

    /// Anything negotiated in the clear is forgotten at STARTTLS (a man in the middle could
    /// have injected it), so structured replies must be asked for again.
    @Test func startTLSForgetsStructuredReplies() {
        var n = startedWithTLS(.on)
        #expect(parseOptionReplies(send(&n, .structuredReply).reply).first?.type == OptionReplyType.ack.rawValue)
        #expect(isStartTLS(send(&n, .startTLS).next))
        _ = n.tlsEstablished(peerNames: [])
        let go = send(&n, .go, infoPayload("zram0"))
        guard case .transmission(let session) = go.next else { Issue.record("\(go.next)"); return }
        #expect(!session.structuredReplies)
    }

    @Test func tlsEstablishedOutOfOrderCloses() {
        var n = startedWithTLS(.on)
        #expect(isClose(n.tlsEstablished(peerNames: []).next))
    }

    @Test func abortAcksThenCloses() {
        var n = started()
        let step = send(&n, .abort)
        #expect(parseOptionReplies(step.reply).map(\.type) == [OptionReplyType.ack.rawValue])
        #expect(isClose(step.next))
    }

    @Test func listShowsEveryExportWithDescriptionThenAck() {
        var n = started()
        let r = parseOptionReplies(send(&n, .list).reply)
        #expect(r.map(\.type) == [2, 2, 1])
        let first = r[0].data[...]
        #expect(be32(first, 0) == 5)
        #expect(String(decoding: first.dropFirst(4).prefix(5), as: UTF8.self) == "zram0")
        #expect(String(decoding: first.dropFirst(9), as: UTF8.self) == "first")
        // A second LIST is refused; a LIST with data too.
        #expect(parseOptionReplies(send(&n, .list).reply).first?.type == OptionReplyType.errInvalid.rawValue)
        var m = started()
        #expect(parseOptionReplies(send(&m, .list, [0]).reply).first?.type == OptionReplyType.errInvalid.rawValue)
    }

    @Test func infoAlwaysSendsExportAndAnswersAskedItems() {
        var n = started()
        let step = send(&n, .info, infoPayload("", [1, 2, 3, 77]))
        let r = parseOptionReplies(step.reply)
        #expect(r.map(\.type) == [3, 3, 3, 3, 1])
        #expect(be16(r[0].data[...], 0) == 0)
        #expect(be64(r[0].data[...], 2) == 1 << 20)
        #expect(be16(r[0].data[...], 10) == 0xd6d)  // no structured replies negotiated
        #expect(r[1].data == [0, 1] + Array("zram0".utf8))  // canonical name of ""
        #expect(r[2].data == [0, 2] + Array("first".utf8))
        #expect(r[3].data.count == 14)
        #expect(be32(r[3].data[...], 2) == 1)
        #expect(be32(r[3].data[...], 6) == 4096)
        #expect(be32(r[3].data[...], 10) == 32 << 20)
        #expect(isOptionLoop(step.next))
    }

    @Test func infoForUnknownExportIsErrUnknownAndConnectionStays() {
        var n = started()
        let step = send(&n, .info, infoPayload("nope"))
        #expect(parseOptionReplies(step.reply).map(\.type) == [OptionReplyType.errUnknown.rawValue])
        #expect(isOptionLoop(step.next))
        let go = send(&n, .go, infoPayload("nope"))
        #expect(parseOptionReplies(go.reply).map(\.type) == [OptionReplyType.errUnknown.rawValue])
        #expect(isOptionLoop(go.next))
    }

    @Test(arguments: [
        [UInt8](),                          // shorter than 6 bytes
        [0, 0, 0, 9, 65, 0, 0],             // name longer than the payload
        infoPayload("zram0", [1]) + [0],    // info count does not match
        infoPayload("zram0", [1]).dropLast(1).map { $0 },
    ])
    func malformedInfoIsErrInvalid(payload: [UInt8]) {
        var n = started()
        let step = send(&n, .go, payload)
        #expect(parseOptionReplies(step.reply).map(\.type) == [OptionReplyType.errInvalid.rawValue])
        #expect(isOptionLoop(step.next))
    }

    @Test func goWithStructuredRepliesEntersTransmissionWithFlags0xded() throws {
        var n = started()
        #expect(parseOptionReplies(send(&n, .structuredReply).reply).map(\.type) == [1])
        #expect(parseOptionReplies(send(&n, .structuredReply).reply).map(\.type) == [OptionReplyType.errInvalid.rawValue])
        let step = send(&n, .go, infoPayload("zram0"))
        let r = parseOptionReplies(step.reply)
        #expect(r.map(\.type) == [3, 1])
        #expect(be16(r[0].data[...], 10) == 0xded)
        guard case .transmission(let s) = step.next else {
            Issue.record("expected transmission")
            return
        }
        #expect(s.flags.rawValue == 0xded)
        #expect(s.structuredReplies)
        #expect(s.metaContextID == nil)
        #expect(s.size == 1 << 20)
    }

    @Test func readOnlyExportDropsWriteFlags() {
        var n = started()
        let step = send(&n, .go, infoPayload("ro"))
        guard case .transmission(let s) = step.next else {
            Issue.record("expected transmission")
            return
        }
        #expect(s.flags.contains(.readOnly))
        #expect(!s.flags.contains(.sendTrim))
        #expect(!s.flags.contains(.sendWriteZeroes))
        #expect(!s.flags.contains(.sendFUA))
        #expect(s.flags.contains(.sendFlush))
    }

    @Test func exportNameRepliesWithPaddingUnlessNoZeroes() {
        var n = started(flags: 1)  // fixed newstyle, no NO_ZEROES
        let step = send(&n, .exportName, Array("zram0".utf8))
        #expect(step.reply.count == 8 + 2 + 124)
        #expect(be64(step.reply[...], 0) == 1 << 20)
        #expect(be16(step.reply[...], 8) == 0xd6d)
        var m = started(flags: 3)
        #expect(send(&m, .exportName, []).reply.count == 10)  // "" is the default export
    }

    @Test func exportNameForUnknownExportCloses() {
        var n = started()
        let step = send(&n, .exportName, Array("nope".utf8))
        #expect(step.reply.isEmpty)
        #expect(isClose(step.next))
    }

    @Test func withoutFixedNewstyleOnlyExportNameWorks() {
        var n = started(flags: 0)
        #expect(parseOptionReplies(send(&n, .list).reply).first?.type == OptionReplyType.errInvalid.rawValue)
        let step = send(&n, .exportName, Array("zram0".utf8))
        guard case .transmission = step.next else {
            Issue.record("expected transmission")
            return
        }
    }

    @Test func metaContextNeedsStructuredReplies() {
        var n = started()
        let r = parseOptionReplies(send(&n, .setMetaContext, metaPayload("zram0", ["base:allocation"])).reply)
        #expect(r.map(\.type) == [OptionReplyType.errInvalid.rawValue])
    }

    @Test func listMetaContextFindsBaseAllocation() {
        var n = started()
        _ = send(&n, .structuredReply)
        for queries in [[], ["base:"], ["base:allocation"], ["qemu:dirty-bitmap:x", "base:allocation"]] {
            let r = parseOptionReplies(send(&n, .listMetaContext, metaPayload("", queries)).reply)
            #expect(r.map(\.type) == [4, 1])
            #expect(r[0].data.dropFirst(4) == Array("base:allocation".utf8)[...])
        }
        let none = parseOptionReplies(send(&n, .listMetaContext, metaPayload("", ["other:thing"])).reply)
        #expect(none.map(\.type) == [1])
        let bad = parseOptionReplies(send(&n, .listMetaContext, metaPayload("", ["base:allocation"]) + [1]).reply)
        #expect(bad.map(\.type) == [OptionReplyType.errInvalid.rawValue])
        let unknown = parseOptionReplies(send(&n, .listMetaContext, metaPayload("nope", [])).reply)
        #expect(unknown.map(\.type) == [OptionReplyType.errUnknown.rawValue])
    }

    @Test func setMetaContextSelectsOnlyForTheNamedExport() {
        var n = started()
        _ = send(&n, .structuredReply)
        let r = parseOptionReplies(send(&n, .setMetaContext, metaPayload("", ["base:allocation"])).reply)
        #expect(r.map(\.type) == [4, 1])
        #expect(be32(r[0].data[...], 0) != 0)
        // "" and "zram0" are the same export.
        guard case .transmission(let s) = send(&n, .go, infoPayload("zram0")).next else {
            Issue.record("expected transmission")
            return
        }
        #expect(s.metaContextID == be32(r[0].data[...], 0))

        var m = started()
        _ = send(&m, .structuredReply)
        _ = send(&m, .setMetaContext, metaPayload("ro", ["base:allocation"]))
        guard case .transmission(let t) = send(&m, .go, infoPayload("zram0")).next else {
            Issue.record("expected transmission")
            return
        }
        #expect(t.metaContextID == nil)
    }

    @Test func aLaterSetReplacesTheSelection() {
        var n = started()
        _ = send(&n, .structuredReply)
        _ = send(&n, .setMetaContext, metaPayload("", ["base:allocation"]))
        #expect(parseOptionReplies(send(&n, .setMetaContext, metaPayload("", [])).reply).map(\.type) == [1])
        guard case .transmission(let s) = send(&n, .go, infoPayload("")).next else {
            Issue.record("expected transmission")
            return
        }
        #expect(s.metaContextID == nil)
    }

    @Test func optionFloodCloses() {
        var n = started(limits: NegotiationLimits(maxOptions: 5))
        for _ in 0..<5 { #expect(isOptionLoop(send(&n, 99).next)) }
        #expect(isClose(n.receiveOptionHeader(optionHeader(99, length: 0)[...]).next))
    }

    @Test func listRaisesTheOptionBudgetPerExport() {
        var n = started(limits: NegotiationLimits(maxOptions: 2))
        _ = send(&n, .list)
        for _ in 0..<(1 + 2 * 2) { #expect(isOptionLoop(send(&n, .info, infoPayload("ro")).next)) }
        #expect(isClose(n.receiveOptionHeader(optionHeader(99, length: 0)[...]).next))
    }

    @Test func shutdownRefusesOptionsButAbort() {
        var n = started()
        _ = n.beginShutdown()
        #expect(parseOptionReplies(send(&n, .go, infoPayload("")).reply).map(\.type) == [OptionReplyType.errShutdown.rawValue])
        #expect(isClose(send(&n, .exportName, []).next))
        var m = started()
        _ = m.beginShutdown()
        #expect(parseOptionReplies(send(&m, .abort).reply).map(\.type) == [1])
    }

    /// The machine logs nothing itself: every step carries its decisions as sentences, which
    /// the driver logs.
    @Test func everyDecisionIsLoggedAsASentence() {
        var log: [String] = []
        var n = Negotiation(catalog: catalog)
        log += n.receive([0, 0, 0, 3]).log
        log += send(&n, .structuredReply).log
        log += send(&n, 99).log
        log += send(&n, .go, infoPayload("", [3])).log
        #expect(log.contains("client flags: 0x3"))
        #expect(log.contains("replying to NBD_OPT_STRUCTURED_REPLY with NBD_REP_ACK: structured replies on"))
        #expect(log.contains("replying to option 99 with NBD_REP_ERR_UNSUP: option 99 is not supported"))
        #expect(log.contains { $0.hasPrefix("replying to NBD_OPT_GO with NBD_REP_INFO (size 1048576, flags 0xded)") })
    }

    /// The driver reads what `next.byteCount` says and feeds it to `receive`; nothing else.
    @Test func theDriverOnlyCountsBytes() {
        var n = Negotiation(catalog: catalog)
        var next = Negotiation.Next.readClientFlags
        var input: [UInt8] = [0, 0, 0, 3] + optionHeader(OptionCode.go.rawValue, length: infoPayload("zram0").count)
            + infoPayload("zram0")
        while let count = next.byteCount {
            #expect(count <= input.count)
            next = n.receive(input.prefix(count)).next
            input.removeFirst(count)
        }
        guard case .transmission(let s) = next else {
            Issue.record("expected transmission, got \(next)")
            return
        }
        #expect(s.export.name == "zram0")
        #expect(input.isEmpty)
        #expect(n.receive([0]).next.byteCount == nil)  // nothing more after the end
    }

    @Test func catalogRejectsDuplicatesAndUnknownDefault() throws {
        #expect(throws: NBDError.self) { try ExportCatalog([Export(name: "a", backend: disk), Export(name: "a", backend: disk)]) }
        #expect(throws: NBDError.self) { try ExportCatalog([Export(name: "a", backend: disk)], defaultExport: "b") }
        let c = try ExportCatalog([Export(name: "a", backend: disk)])
        #expect(c.lookup("") == nil)
        #expect(c.lookup("a")?.name == "a")
    }
}
