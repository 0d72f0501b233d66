// libFuzzer entry for the NBD module: the handshake (client flags, option headers and payloads
// through the Negotiation state machine, on sockets with TLS off, on and required), transmission requests (header parsing and validation),
// and the shipped connection engine itself, fed the input as a client's byte stream over a pipe
// against a RAM disk. Built by scripts/fuzz.sh together with Sources/NBD/*.swift into one module,
// so it sees internal API too. Every reply the state machine produces is checked for framing, every
// accepted request against the export bounds, and every reply the engine sends for framing and
// cookies; a violation traps, which libFuzzer reports.

#if canImport(Glibc)
import Glibc
#endif

// Exports the fuzzer negotiates against, made once.
nonisolated(unsafe) private var catalog: ExportCatalog?

private func makeCatalog() -> ExportCatalog {
    if let c = catalog { return c }
    let a = try! MemoryBackend(size: 1 << 20)
    let b = try! MemoryBackend(size: 64 << 10)
    // "secret" is only for a TLS peer named alice (Export.allowedPeers).
    let c = try! ExportCatalog([Export(name: "zram0", description: "first", backend: a),
                                Export(name: "ro", description: "", backend: b, readOnly: true),
                                Export(name: "secret", description: "", backend: b, allowedPeers: ["alice"])],
                               defaultExport: "zram0")
    catalog = c
    return c
}

/// Option replies must be well framed: magic, then a length that matches the bytes that follow.
private func checkOptionReplies(_ bytes: [UInt8]) {
    var i = 0
    while i < bytes.count {
        check(bytes.count - i >= 20, "truncated option reply")
        let magic = bytes[i..<(i + 8)].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        check(magic == Wire.optionReplyMagic, "bad option reply magic")
        let length = bytes[(i + 16)..<(i + 20)].reduce(0) { $0 << 8 | Int($1) }
        check(bytes.count - i - 20 >= length, "option reply length overruns")
        i += 20 + length
    }
}

/// Option reply types of an option phase: each reply's type, in order.
private func optionReplyTypes(_ bytes: [UInt8]) -> [UInt32] {
    var types: [UInt32] = []
    var i = 0
    while i + 20 <= bytes.count {
        types.append(bytes[(i + 12)..<(i + 16)].reduce(UInt32(0)) { $0 << 8 | UInt32($1) })
        i += 20 + bytes[(i + 16)..<(i + 20)].reduce(0) { $0 << 8 | Int($1) }
    }
    return types
}

/// The handshake through `receive(_:)`, as Connection drives it, on a socket whose TLS mode
/// (off, on, require) and the peer's TLS names come from `mode` (the dispatch byte, so the
/// seeds of the first corpus stay in the clear). Checks the TLS rules: no STARTTLS where TLS is
/// off; where it is required, nothing but errors (and ACKs to ABORT/STARTTLS) before the
/// upgrade and no transmission; an export limited to peers is only entered by one of them.
private func fuzzNegotiation(_ input: ArraySlice<UInt8>, mode: UInt8) {
    let tls: TLSMode = [.off, .on, .require][Int(mode / 3 % 3)]
    let names: [String] = [[], ["alice"], ["CN=mallory,O=x", "mallory"]][Int(mode / 9 % 3)]
    var n = Negotiation(catalog: makeCatalog(), limits: NegotiationLimits(maxOptions: 64, maxOptionLength: 4096), tls: tls)
    var peer: [String]?
    var rest = input
    func take(_ k: Int) -> ArraySlice<UInt8>? {
        guard rest.count >= k else { return nil }
        defer { rest = rest.dropFirst(k) }
        return rest.prefix(k)
    }
    guard let flags = take(4) else { return }
    var step = n.receive(flags)
    var lastCode: UInt32 = 0
    while true {
        if tls == .require && peer == nil {
            // Only STARTTLS's ACK, ABORT's ACK and errors go out in the clear on a TLS-only socket.
            for t in optionReplyTypes(step.reply) {
                check(t & 0x8000_0000 != 0 || lastCode == OptionCode.startTLS.rawValue
                             || lastCode == OptionCode.abort.rawValue, "a reply in the clear where TLS is required")
            }
        }
        switch step.next {
        case .readClientFlags:
            fail("client flags asked twice")
        case .readOptionHeader:
            guard let h = take(16) else { return }
            lastCode = h.dropFirst(8).prefix(4).reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
            step = n.receive(h)
            check(step.reply.isEmpty)
        case .readOptionPayload(let k):
            check(k <= 4096, "payload above the limit accepted")
            // Short inputs still exercise the payload parser with what is left.
            let p = take(k) ?? rest
            rest = []
            step = n.receive(p)
            if case .transmission = step.next {} else { checkOptionReplies(step.reply) }
            if p.count < k { return }
        case .startTLS:
            check(tls != .off, "STARTTLS accepted where TLS is off")
            check(peer == nil, "STARTTLS accepted twice")
            check(step.reply == optionReply(OptionCode.startTLS.rawValue, .ack))
            // The next input byte picks what the driver does: the handshake succeeds, the
            // client sends options without doing it (a confused or hostile client), or the
            // server begins shutting down first.
            switch take(1)?.first.map({ $0 % 4 }) {
            case nil: return
            case 1:
                step = n.receive(rest.prefix(16))
                guard case .close = step.next else { fail("options accepted in place of the TLS handshake") }
                return
            case 2:
                step = n.beginShutdown()
                guard case .startTLS = step.next else { fail("shutdown skipped the TLS handshake") }
                fallthrough
            default:
                peer = names
                step = n.tlsEstablished(peerNames: names)
                check(step.reply.isEmpty)
            }
        case .transmission(let session):
            check(session.size > 0)
            check(session.flags.contains(.hasFlags))
            check(!session.flags.contains(.sendDF) || session.structuredReplies)
            if session.metaContextID != nil { check(session.structuredReplies) }
            check(tls != .require || peer != nil, "transmission in the clear where TLS is required")
            check(session.export.admits(peer), "export entered by a peer it does not admit")
            return
        case .close:
            return
        }
    }
}

private func fuzzRequests(_ input: ArraySlice<UInt8>) {
    guard input.count >= 2 else { return }
    let mode = input[input.startIndex]
    let size: UInt64 = [1 << 20, 4096, 1 << 40, UInt64.max / 2][Int(mode & 3)]
    let structured = mode & 4 != 0
    let flags: TransmissionFlags = mode & 8 != 0
        ? [.hasFlags, .readOnly, .sendFlush]
        : TransmissionFlags(rawValue: structured ? 0xded : 0xd6d)
    let rules = RequestRules(size: size, flags: flags, structuredReplies: structured,
                             metaContextID: mode & 16 != 0 ? 1 : nil)
    var bytes = Array(input.dropFirst())
    bytes.withUnsafeMutableBytes { raw in
        var at = 0
        while raw.count - at >= Wire.requestSize {
            let p = UnsafeRawPointer(raw.baseAddress! + at)
            at += Wire.requestSize
            guard let h = RequestHeader.parse(p) else { continue }
            switch rules.validate(h) {
            case .refuse(let errno, _):
                check(errno != .enotsup, "ENOTSUP outside FAST_ZERO")
            case .hangUp:
                check(h.type == CommandType.write.rawValue)
            case .disconnect:
                check(h.type == CommandType.disconnect.rawValue)
            case .serve(let c):
                switch c {
                case .read(let o, let l, _), .write(let o, let l, _):
                    check(l > 0 && l <= Int(rules.maxPayload))
                    check(o <= size && UInt64(l) <= size - o)
                    if case .write = c { check(!flags.contains(.readOnly)) }
                case .trim(let o, let l, _), .writeZeroes(let o, let l, _, _, _):
                    check(l > 0 && o <= size && l <= size - o)
                    check(!flags.contains(.readOnly))
                case .cache(let o, let l), .blockStatus(let o, let l, _):
                    check(l > 0 && o <= size && l <= size - o)
                    if case .blockStatus = c { check(structured && rules.metaContextID != nil) }
                case .flush:
                    break
                }
            }
            // The error chunk encoder with whatever text the input holds.
            var buffer = [UInt8](repeating: 0, count: StructuredReply.maxErrorSize)
            let text = String(decoding: UnsafeRawBufferPointer(start: p, count: Wire.requestSize), as: UTF8.self)
            let n = buffer.withUnsafeMutableBytes {
                StructuredReply.error(into: $0.baseAddress!, cookie: h.cookie, error: .einval, message: text)
            }
            check(n <= StructuredReply.maxErrorSize)
        }
    }
}

/// The bytes as one client's request stream into the engine that ships; checks that what comes
/// back is a sequence of well-framed replies. The stream ends at EOF, DISC or a protocol error.
private func fuzzEngine(_ input: ArraySlice<UInt8>) {
    guard let mode = input.first else { return }
    let export = makeCatalog().exports[Int(mode & 1)]
    let session = Session(export: export, structuredReplies: mode & 2 != 0,
                          metaContextID: mode & 6 == 6 ? MetaContext.baseAllocationID : nil)
    var toEngine: [Int32] = [0, 0], fromEngine: [Int32] = [0, 0]
    guard pipe(&toEngine) == 0 else { return }
    guard pipe(&fromEngine) == 0 else { close(toEngine[0]); close(toEngine[1]); return }
    defer { close(fromEngine[0]) }
    // Fuzz inputs are small: the whole stream fits the pipe, so writing cannot block.
    let stream = Array(input.dropFirst().prefix(60_000))
    let written = stream.withUnsafeBytes { write(toEngine[1], $0.baseAddress, $0.count) }
    check(stream.isEmpty || written == stream.count)
    close(toEngine[1])
    // Replies go through a pipe drained by the fuzzer thread after the engine stops; to never
    // block the engine, the read end is emptied on a second thread meanwhile.
    let drained = UnsafeMutablePointer<[UInt8]>.allocate(capacity: 1)
    drained.initialize(to: [])
    defer { drained.deinitialize(count: 1); drained.deallocate() }
    let reader = fromEngine[0]
    var thread = pthread_t()
    let box = Unmanaged.passRetained(DrainJob(fd: reader, out: drained)).toOpaque()
    check(pthread_create(&thread, nil, { raw in
        let job = Unmanaged<DrainJob>.fromOpaque(raw!).takeRetainedValue()
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(job.fd, $0.baseAddress, $0.count) }
            if n <= 0 { break }
            job.out.pointee += chunk[0..<n]
        }
        return nil
    }, box) == 0)
    let engine = ConnectionEngine(inFD: toEngine[0], outFD: fromEngine[1], session: session, maxInFlight: 8, log: .disabled)
    _ = engine.run()
    close(toEngine[0])
    close(fromEngine[1])
    pthread_join(thread, nil)
    checkTransmissionReplies(drained.pointee, structured: session.structuredReplies)
}

private final class DrainJob {
    let fd: Int32
    let out: UnsafeMutablePointer<[UInt8]>
    init(fd: Int32, out: UnsafeMutablePointer<[UInt8]>) {
        self.fd = fd
        self.out = out
    }
}

/// Without structured replies a READ's data follows its simple reply and cannot be told apart
/// without the requests, so only the first reply is checked. With them, READ data only travels
/// in chunks, so the stream is walked reply by reply: 16-byte simple replies and chunks.
private func checkTransmissionReplies(_ bytes: [UInt8], structured: Bool) {
    func be32(_ i: Int) -> UInt32 { bytes[i..<(i + 4)].reduce(UInt32(0)) { $0 << 8 | UInt32($1) } }
    guard !bytes.isEmpty else { return }
    check(bytes.count >= Wire.simpleReplySize, "truncated reply")
    guard structured else {
        check(be32(0) == Wire.simpleReplyMagic, "bad simple reply magic")
        return
    }
    var i = 0
    while i < bytes.count {
        check(bytes.count - i >= Wire.simpleReplySize, "truncated reply")
        if be32(i) == Wire.simpleReplyMagic {
            i += Wire.simpleReplySize
            continue
        }
        check(be32(i) == Wire.structuredReplyMagic, "bad reply magic")
        check(bytes.count - i >= Wire.chunkHeaderSize, "truncated chunk header")
        let length = Int(be32(i + 16))
        check(bytes.count - i - Wire.chunkHeaderSize >= length, "chunk length overruns")
        i += Wire.chunkHeaderSize + length
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    guard size > 0 else { return 0 }
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    switch bytes[0] % 3 {
    case 0: fuzzNegotiation(bytes.dropFirst(), mode: bytes[0])
    case 1: fuzzRequests(bytes.dropFirst())
    default: fuzzEngine(bytes.dropFirst())
    }
    return 0
}
