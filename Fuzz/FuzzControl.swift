// libFuzzer entry for the control protocol: request lines (ControlRequest.parse and the device
// actions' argument parsers), records' %XX escaping, replies, and the server's per-connection
// code (ControlServer.serve) fed the input as a peer's bytes over a socketpair. Built by
// scripts/fuzz.sh --long with the ZramDaemon files that parse input into one module. Checked:
// nothing traps, escape/unescape and every printer/parser pair round-trip, and what the server
// sends is one well-framed reply. A violation traps, which libFuzzer reports.

#if canImport(Glibc)
import Glibc
#endif

/// What a record value may not contain once escaped: blanks, control bytes, '=' (the separators).
private func checkEscaped(_ e: String) {
    check(!e.utf8.contains { $0 <= 0x20 || $0 == 0x7f || $0 == UInt8(ascii: "=") }, "escape left a separator in '\(e)'")
}

/// escape/unescape, records built from fields and parsed from lines.
private func fuzzRecords(_ input: ArraySlice<UInt8>) {
    let s = text(input)
    let e = ControlRecord.escape(s)
    checkEscaped(e)
    check(ControlRecord.unescape(e) == s, "unescape(escape(s)) != s")
    _ = ControlRecord.unescape(s)
    // Fields from the input (NUL separates pairs, SOH key from value) survive a line.
    let fields = input.split(separator: 0, omittingEmptySubsequences: false).map { part -> (String, String) in
        let kv = part.split(separator: 1, maxSplits: 1, omittingEmptySubsequences: false)
        return (text(kv[0]), kv.count > 1 ? text(kv[1]) : "")
    }
    let record = ControlRecord(fields)
    let back = ControlRecord.parse(record.line)
    check(back.fields.elementsEqual(fields, by: { $0 == $1 }), "record '\(record.line)' does not round-trip")
    // Any line parses, and its printed form parses to the same record.
    let parsed = ControlRecord.parse(s)
    check(ControlRecord.parse(parsed.line).line == parsed.line, "record line does not settle")
}

/// Request lines: any line is parsed or refused; what parses prints a line that parses back.
private func fuzzRequests(_ input: ArraySlice<UInt8>) {
    let s = text(input)
    guard let r = try? ControlRequest.parse(s) else { return }
    let line = r.line
    check(!line.utf8.contains(UInt8(ascii: "\n")), "request line with a newline")
    guard let back = try? ControlRequest.parse(line) else { fail("'\(line)' (from '\(s)') does not parse back") }
    check(back.line == line, "request '\(line)' does not round-trip")
    if case .memLimit(_, let v) = r { check(v <= ByteSize.maximum, "mem-limit above the maximum") }
}

/// Replies: printed replies parse back; any text parses or is refused.
private func fuzzReplies(_ input: ArraySlice<UInt8>) {
    let s = text(input)
    _ = try? ControlReply.parse(s)
    let lines = s.unicodeScalars.split(separator: "\n", omittingEmptySubsequences: false).map { String(Substring($0)) }
    let ok = ControlReply.ok(lines)
    checkFramed(ok.text)
    // Lines cannot hold a newline, so an ok reply reads back as the same lines.
    check((try? ControlReply.parse(ok.text)) == ok, "ok reply does not round-trip")
    let err = ControlReply.error(s)
    checkFramed(err.text)
    check((try? ControlReply.parse(err.text)) == .error(s.replacingNewlines()), "error reply does not round-trip")
}

/// One reply: ends with a newline, starts with "ok" or "error ", and an error is one line.
private func checkFramed(_ t: String) {
    check(t.utf8.last == UInt8(ascii: "\n"), "reply without its final newline")
    let first = t.utf8.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false)[0]
    let isError = first.starts(with: "error ".utf8)
    check(first.elementsEqual("ok".utf8) || isError, "reply starts with '\(String(decoding: first, as: UTF8.self))'")
    if isError { check(t.utf8.filter { $0 == UInt8(ascii: "\n") }.count == 1, "error reply of several lines") }
}

/// The bytes as a peer's request to ControlServer.serve over a socketpair; the handler echoes
/// the parsed request (what a device action would print) so the reply carries fuzzed text.
private func fuzzServe(_ input: ArraySlice<UInt8>) {
    var fds: [Int32] = [0, 0]
    guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0 else { return }
    defer { close(fds[0]); close(fds[1]) }
    // Inputs are far smaller than the socket buffer: the write cannot block.
    let bytes = Array(input.prefix(60_000))
    let written = bytes.withUnsafeBytes { send(fds[1], $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    check(bytes.isEmpty || written == bytes.count)
    shutdown(fds[1], Int32(SHUT_WR))
    ControlServer.serve(PeerConnection(fd: fds[0], stop: -1)) { request in
        switch request {
        // Replies stay about as long as the request: the reply is read only after serve returns,
        // so it must fit the socket buffer.
        case .status(let d): return .ok(d.map { ControlRecord([("name", $0), ("n", "\(d.count)")]).line })
        case .attach(_, let nbd): return .error("attach \(nbd ?? "none")\nsecond line")
        default: return .ok([request.line, ""])
        }
    }
    shutdown(fds[0], Int32(SHUT_WR))
    var reply: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = chunk.withUnsafeMutableBytes { recv(fds[1], $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
        if n <= 0 { break }
        reply += chunk[0..<n]
    }
    // No line, no reply (the peer sent nothing or only a newline-less nothing): the server closes.
    let hasLine = bytes.split(separator: UInt8(ascii: "\n")).first != nil
    guard hasLine else { check(reply.isEmpty, "a reply to no request"); return }
    let t = String(decoding: reply, as: UTF8.self)
    checkFramed(t)
    check((try? ControlReply.parse(t)) != nil)
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    dispatch(data, size, [fuzzRecords, fuzzRequests, fuzzReplies, fuzzServe])
}
