// The control socket's line protocol, as values (no I/O here).
//
//   request: one line, words separated by blanks:  COMMAND [DEVICE] [ARGS...]\n
//            Each word is %XX-escaped like record values (add's KEY=VALUE words: the key and the
//            value each, around a plain '='). The commands: `status [DEVICE...]` and
//            the device actions of ControlActions.swift.
//   reply:   "ok\n" followed by zero or more body lines, or "error MESSAGE\n"; then the server
//            closes the connection.
//   Records (status, show) are one line per device of space-separated key=value pairs; values are
//   %XX-escaped for '%', blanks, '=' and control characters, so `awk`/`cut` can read them.

public enum ControlRequest: Equatable, Sendable {
    case status([String])
    case show(String)
    case compact(String)
    case reset(String)
    case memLimit(String, UInt64)
    case memUsedMaxReset(String)
    /// zram's hot_add: a new device from config-style key=value settings.
    case add(String, [(String, String)])
    /// zram's hot_remove.
    case remove(String)
    /// The setup tools report which kernel NBD device serves DEVICE (for MOUNTPOINT), or none.
    case attach(String, String?)
    /// Writes zram attribute NAME (its sysfs name: `writeback`, `idle`, ...) of DEVICE with the
    /// words one would echo into the file; `block_state` reads one.
    case attribute(String, name: String, [String])
    /// The daemon execs BINARY (nil: its own) with every device and connection (Upgrade.swift).
    case upgrade(String?)

    public static func == (a: ControlRequest, b: ControlRequest) -> Bool { a.line == b.line }

    /// The request as sent on the wire (without the newline).
    public var line: String {
        switch self {
        case .status(let d): return (["status"] + d).joined(separator: " ")
        case .show(let d): return "show \(d)"
        case .compact(let d): return "compact \(d)"
        case .reset(let d): return "reset \(d)"
        case .memLimit(let d, let v): return "mem-limit \(d) \(v)"
        case .memUsedMaxReset(let d): return "mem-used-max-reset \(d)"
        case .add(let d, let kv): return (["add", d] + kv.map { ControlRecord.escape($0.0) + "=" + ControlRecord.escape($0.1) }).joined(separator: " ")
        case .remove(let d): return "remove \(d)"
        case .attach(let d, let nbd): return nbd.map { "attach \(d) \(ControlRecord.escape($0))" } ?? "detach \(d)"
        case .attribute(let d, let name, let words):
            return ([ControlAction.actionName(sysfs: name), d] + words.map(ControlRecord.escape)).joined(separator: " ")
        case .upgrade(let binary): return binary.map { "upgrade " + ControlRecord.escape($0) } ?? "upgrade"
        }
    }

    /// A request line: `status [DEVICE...]`, or a device action of `ControlAction.all` (the words
    /// `zramnbd ctl DEVICE ACTION ARGS...` sends as `ACTION DEVICE ARGS...`).
    public static func parse(_ line: String) throws(DaemonError) -> ControlRequest {
        // Split on scalars, not Characters: "\r\n" is one Character, and a blank followed by a
        // combining mark is one too, so a Character split misses those separators.
        let words = line.unicodeScalars.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\r" || $0 == "\n" })
            .map { ControlRecord.unescape(String(Substring($0))) }
        if words.first == "status" {
            let devices = Array(words.dropFirst())
            for d in devices { try DeviceSpec.validateName(d) }
            return .status(devices)
        }
        if words.first == "upgrade" {
            guard words.count <= 2 else { throw .invalidValue("upgrade takes at most one binary path") }
            return .upgrade(words.count == 2 ? words[1] : nil)
        }
        return try ControlAction.request(words, from: .wire)
    }
}

/// A reply: success with body lines, or an error message.
public enum ControlReply: Equatable, Sendable {
    case ok([String])
    case error(String)

    public var text: String {
        switch self {
        case .ok(let lines): return "ok\n" + lines.map { $0 + "\n" }.joined()
        case .error(let m): return "error " + m.replacingNewlines() + "\n"
        }
    }

    public static func parse(_ text: String) throws(DaemonError) -> ControlReply {
        // Lines end at each "\n" scalar (a line ending in "\r" would swallow it as "\r\n").
        var lines = text.unicodeScalars.split(separator: "\n", omittingEmptySubsequences: false).map { String(Substring($0)) }
        if lines.last == "" { lines.removeLast() }
        guard let first = lines.first else { throw .control("the daemon closed the connection without a reply") }
        if first == "ok" { return .ok(Array(lines.dropFirst())) }
        // By scalars: a message starting with a combining mark joins the blank into one Character.
        if first.unicodeScalars.starts(with: "error ".unicodeScalars) {
            return .error(String(Substring(first.unicodeScalars.dropFirst(6))))
        }
        throw .control("unexpected reply from the daemon: '\(first)'")
    }
}

/// An ordered set of key=value pairs describing one device, one line on the wire.
public struct ControlRecord: Equatable, Sendable {
    public var fields: [(String, String)]

    public init(_ fields: [(String, String)]) { self.fields = fields }

    public static func == (a: ControlRecord, b: ControlRecord) -> Bool { a.line == b.line }

    public subscript(key: String) -> String? { fields.first { $0.0 == key }?.1 }

    public func uint(_ key: String) -> UInt64 { self[key].flatMap { UInt64($0) } ?? 0 }

    public var line: String { fields.map { ControlRecord.escape($0.0) + "=" + ControlRecord.escape($0.1) }.joined(separator: " ") }

    public static func parse(_ line: String) -> ControlRecord {
        // On scalars, as ControlRequest.parse: a value starting with a combining mark would
        // hide its '=' or the blank before it inside one Character.
        ControlRecord(line.unicodeScalars.split(separator: " ").map { pair in
            guard let eq = pair.firstIndex(of: "=") else { return (unescape(String(Substring(pair))), "") }
            return (unescape(String(Substring(pair[..<eq]))), unescape(String(Substring(pair[pair.index(after: eq)...]))))
        })
    }

    static func escape(_ s: String) -> String {
        var bytes: [UInt8] = []
        for b in s.utf8 {
            if b <= 0x20 || b == 0x7f || b == UInt8(ascii: "%") || b == UInt8(ascii: "=") {
                let hex = Array(String(b, radix: 16, uppercase: true).utf8)
                bytes.append(UInt8(ascii: "%"))
                if hex.count == 1 { bytes.append(UInt8(ascii: "0")) }
                bytes += hex
            } else {
                bytes.append(b)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    static func unescape(_ s: String) -> String {
        // The byte, not the Character: after a prepend mark (U+0600) "%" is part of one Character.
        guard s.utf8.contains(UInt8(ascii: "%")) else { return s }
        var bytes: [UInt8] = []
        let u = Array(s.utf8)
        var i = 0
        while i < u.count {
            if u[i] == UInt8(ascii: "%"), i + 2 < u.count,
               let v = UInt8(String(decoding: u[(i + 1)...(i + 2)], as: UTF8.self), radix: 16) {
                bytes.append(v)
                i += 3
            } else {
                bytes.append(u[i])
                i += 1
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

extension String {
    /// Every CR and LF scalar a blank ("\r\n" is one Character, so mapping Characters missed it).
    func replacingNewlines() -> String {
        var out = String.UnicodeScalarView()
        out.append(contentsOf: unicodeScalars.map { $0 == "\n" || $0 == "\r" ? " " : $0 })
        return String(out)
    }
}
