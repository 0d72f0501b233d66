// zram-generator's size expressions: `min(ram / 2, 4096)`, in MiB, with `ram` = MemTotal in MiB.

/// An arithmetic expression over named variables: numbers, + - * / % ^, unary minus,
/// parentheses, the constants pi and e, and the functions min, max (any number of arguments),
/// floor, ceil, round, int, abs.
/// This is the subset of zram-generator's (fasteval) language that size settings use.
public struct SizeExpression: Sendable {
    public let text: String

    public init(_ text: String) { self.text = text }

    /// Evaluates with `variables` (zram-generator provides `ram`). Throws a one-line message that
    /// points at the offending token.
    public func evaluate(_ variables: [String: Double]) throws(DaemonError) -> Double {
        var parser = Parser(text: Array(text.utf8), variables: variables, source: text)
        let value = try parser.expression()
        parser.skipBlanks()
        guard parser.atEnd else { throw parser.error("unexpected '\(parser.rest)'") }
        guard value.isFinite else { throw .invalidValue("expression '\(text)' is not a finite number") }
        return value
    }

    /// The size in bytes this expression gives in MiB, as zram-generator computes it
    /// (`value * 1024 * 1024`, truncated); negative results are an error.
    /// At most ByteSize.maximum.
    public func bytes(ramMiB: Double) throws(DaemonError) -> UInt64 {
        try Self.bytes(mib: try evaluate(["ram": ramMiB]), text: text)
    }

    /// `mib` MiB in bytes (truncated), refused when negative, not finite or above ByteSize.maximum;
    /// `text` names the value in the message.
    static func bytes(mib: Double, text: String) throws(DaemonError) -> UInt64 {
        guard !mib.isNaN else { throw .invalidValue("invalid size '\(text)': not a number") }
        guard mib >= 0 else { throw .invalidValue("invalid size '\(text)': must not be negative (\(mib) MiB)") }
        let bytes = mib * 1_048_576
        guard bytes.isFinite, bytes <= Double(ByteSize.maximum) else { throw ByteSize.tooLarge(text) }
        return UInt64(bytes)
    }

    private struct Parser {
        let text: [UInt8]
        let variables: [String: Double]
        let source: String
        var pos = 0
        /// Nesting of unary/parenthesised/argument levels now: bounded, so a line of a million
        /// '(' or '-' is an error instead of a stack overflow.
        var depth = 0
        static let maxDepth = 64

        var atEnd: Bool { pos >= text.count }
        /// What is left (at most 40 bytes of it), for messages.
        var rest: String {
            let tail = text[pos...]
            return String(decoding: tail.prefix(40), as: UTF8.self) + (tail.count > 40 ? "..." : "")
        }

        func error(_ what: String) -> DaemonError {
            // A long expression is shortened: the message stays one readable line.
            let shown = source.count > 80 ? String(source.prefix(80)) + "..." : source
            return .invalidValue("invalid expression '\(shown)': \(what)")
        }

        mutating func skipBlanks() {
            while pos < text.count, text[pos] == 0x20 || text[pos] == 0x09 { pos += 1 }
        }

        mutating func take(_ c: Character) -> Bool {
            skipBlanks()
            guard pos < text.count, let ascii = c.asciiValue, text[pos] == ascii else { return false }
            pos += 1
            return true
        }

        mutating func expression() throws(DaemonError) -> Double {
            var value = try term()
            while true {
                if take("+") { value += try term() } else if take("-") { value -= try term() } else { return value }
            }
        }

        mutating func term() throws(DaemonError) -> Double {
            var value = try unary()
            while true {
                if take("*") {
                    value *= try unary()
                } else if take("/") {
                    let d = try unary()
                    guard d != 0 else { throw error("division by zero") }
                    value /= d
                } else if take("%") {
                    let d = try unary()
                    guard d != 0 else { throw error("division by zero") }
                    value = value.truncatingRemainder(dividingBy: d)
                } else {
                    return value
                }
            }
        }

        mutating func unary() throws(DaemonError) -> Double {
            depth += 1
            defer { depth -= 1 }
            guard depth <= Self.maxDepth else { throw error("nested more than \(Self.maxDepth) levels deep") }
            if take("-") { return -(try unary()) }
            if take("+") { return try unary() }
            let base = try primary()
            if take("^") { return pow(base, try unary()) }
            return base
        }

        mutating func primary() throws(DaemonError) -> Double {
            skipBlanks()
            guard pos < text.count else { throw error("unexpected end") }
            let c = text[pos]
            if c == UInt8(ascii: "(") {
                pos += 1
                let v = try expression()
                guard take(")") else { throw error("missing ')'") }
                return v
            }
            if isDigit(c) || c == UInt8(ascii: ".") { return try number() }
            if isLetter(c) {
                let start = pos
                while pos < text.count, isLetter(text[pos]) || isDigit(text[pos]) || text[pos] == UInt8(ascii: "_") { pos += 1 }
                let name = String(decoding: text[start..<pos], as: UTF8.self)
                if take("(") { return try call(name) }
                if let v = variables[name] { return v }
                if name == "pi" { return Double.pi }
                if name == "e" { return exp(1) }
                throw error("unknown name '\(name)'")
            }
            throw error("unexpected '\(rest)'")
        }

        mutating func number() throws(DaemonError) -> Double {
            let start = pos
            while pos < text.count, isDigit(text[pos]) || text[pos] == UInt8(ascii: ".") { pos += 1 }
            if pos < text.count, text[pos] == UInt8(ascii: "e") || text[pos] == UInt8(ascii: "E") {
                var p = pos + 1
                if p < text.count, text[p] == UInt8(ascii: "-") || text[p] == UInt8(ascii: "+") { p += 1 }
                if p < text.count, isDigit(text[p]) {
                    pos = p
                    while pos < text.count, isDigit(text[pos]) { pos += 1 }
                }
            }
            let s = String(decoding: text[start..<pos], as: UTF8.self)
            guard let v = Double(s) else { throw error("bad number '\(s)'") }
            return v
        }

        mutating func call(_ name: String) throws(DaemonError) -> Double {
            var args: [Double] = []
            if !take(")") {
                repeat { args.append(try expression()) } while take(",")
                guard take(")") else { throw error("missing ')' after arguments of \(name)") }
            }
            func one() throws(DaemonError) -> Double {
                guard args.count == 1 else { throw error("\(name)() takes one argument") }
                return args[0]
            }
            switch name {
            case "min":
                guard let m = args.min() else { throw error("min() needs arguments") }
                return m
            case "max":
                guard let m = args.max() else { throw error("max() needs arguments") }
                return m
            case "floor": return try one().rounded(.down)
            case "ceil": return try one().rounded(.up)
            case "round": return try one().rounded(.toNearestOrAwayFromZero)
            case "abs": return abs(try one())
            case "int": return try one().rounded(.towardZero)
            default: throw error("unknown function '\(name)'")
            }
        }

        func isDigit(_ c: UInt8) -> Bool { c >= 0x30 && c <= 0x39 }
        func isLetter(_ c: UInt8) -> Bool { (c | 0x20) >= 0x61 && (c | 0x20) <= 0x7a }
    }
}

#if canImport(Glibc)
import Glibc
#endif
