// libFuzzer entry for the NBD wire parsers: the handshake (client flags, option headers and
// payloads through the Negotiation state machine) and transmission requests (header parsing and
// validation). Built by scripts/fuzz.sh together with Sources/NBD/*.swift into one module, so it
// sees internal API too. Every reply the state machine produces is checked for framing, and every
// accepted request against the export bounds; a violation traps, which libFuzzer reports.

// Exports the fuzzer negotiates against, made once.
nonisolated(unsafe) private var catalog: ExportCatalog?

private func makeCatalog() -> ExportCatalog {
    if let c = catalog { return c }
    let a = try! MemoryBackend(size: 1 << 20)
    let b = try! MemoryBackend(size: 64 << 10)
    let c = try! ExportCatalog([Export(name: "zram0", description: "first", backend: a),
                                Export(name: "ro", description: "", backend: b, readOnly: true)],
                               defaultExport: "zram0")
    catalog = c
    return c
}

/// Option replies must be well framed: magic, then a length that matches the bytes that follow.
private func checkOptionReplies(_ bytes: [UInt8]) {
    var i = 0
    while i < bytes.count {
        precondition(bytes.count - i >= 20, "truncated option reply")
        let magic = bytes[i..<(i + 8)].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        precondition(magic == Wire.optionReplyMagic, "bad option reply magic")
        let length = bytes[(i + 16)..<(i + 20)].reduce(0) { $0 << 8 | Int($1) }
        precondition(bytes.count - i - 20 >= length, "option reply length overruns")
        i += 20 + length
    }
}

private func fuzzNegotiation(_ input: ArraySlice<UInt8>) {
    var n = Negotiation(catalog: makeCatalog(), limits: NegotiationLimits(maxOptions: 64, maxOptionLength: 4096))
    var rest = input
    func take(_ k: Int) -> ArraySlice<UInt8>? {
        guard rest.count >= k else { return nil }
        defer { rest = rest.dropFirst(k) }
        return rest.prefix(k)
    }
    guard let flags = take(4) else { return }
    var step = n.receiveClientFlags(flags.reduce(UInt32(0)) { $0 << 8 | UInt32($1) })
    while true {
        switch step.next {
        case .readClientFlags:
            preconditionFailure("client flags asked twice")
        case .readOptionHeader:
            guard let h = take(16) else { return }
            step = n.receiveOptionHeader(h)
            precondition(step.reply.isEmpty)
        case .readOptionPayload(let k):
            precondition(k <= 4096, "payload above the limit accepted")
            // Short inputs still exercise the payload parser with what is left.
            let p = take(k) ?? rest
            rest = []
            step = n.receiveOptionPayload(p)
            if case .transmission = step.next {} else { checkOptionReplies(step.reply) }
            if p.count < k { return }
        case .transmission(let session):
            precondition(session.size > 0)
            precondition(session.flags.contains(.hasFlags))
            precondition(!session.flags.contains(.sendDF) || session.structuredReplies)
            if session.metaContextID != nil { precondition(session.structuredReplies) }
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
            case .failure(let r):
                precondition(r.errno != .enotsup, "ENOTSUP outside FAST_ZERO")
                if r.disconnect { precondition(h.type == CommandType.write.rawValue) }
            case .success(let c):
                switch c {
                case .read(let o, let l, _), .write(let o, let l, _):
                    precondition(l > 0 && l <= Int(BlockSize.maximumPayload))
                    precondition(o <= size && UInt64(l) <= size - o)
                    if case .write = c { precondition(!flags.contains(.readOnly)) }
                case .trim(let o, let l, _), .writeZeroes(let o, let l, _, _, _):
                    precondition(l > 0 && o <= size && l <= size - o)
                    precondition(!flags.contains(.readOnly))
                case .cache(let o, let l), .blockStatus(let o, let l, _):
                    precondition(l > 0 && o <= size && l <= size - o)
                    if case .blockStatus = c { precondition(structured && rules.metaContextID != nil) }
                case .flush, .disconnect:
                    break
                }
            }
            // The error chunk encoder with whatever text the input holds.
            var buffer = [UInt8](repeating: 0, count: StructuredReply.maxErrorSize)
            let text = String(decoding: UnsafeRawBufferPointer(start: p, count: Wire.requestSize), as: UTF8.self)
            let n = buffer.withUnsafeMutableBytes {
                StructuredReply.error(into: $0.baseAddress!, cookie: h.cookie, error: .einval, message: text)
            }
            precondition(n <= StructuredReply.maxErrorSize)
        }
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    guard size > 0 else { return 0 }
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    if bytes[0] & 1 == 0 {
        fuzzNegotiation(bytes.dropFirst())
    } else {
        fuzzRequests(bytes.dropFirst())
    }
    return 0
}
