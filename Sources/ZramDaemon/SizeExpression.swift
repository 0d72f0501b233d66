// zram-generator's size expressions: `min(ram / 2, 4096)`, in MiB, with `ram` = MemTotal in MiB.
//
// zram-generator evaluates them with fasteval 0.2 built without default features (its Cargo.toml),
// so this follows fasteval's parser and interpreter (src/parser.rs, src/evaler.rs) and not a
// textbook grammar where they differ:
//   * a number may carry an SI suffix: p n u µ m (10^-12 ... 10^-3), k K M G T (10^3 ... 10^12);
//     `2G` is 2e9 MiB, not 2 GiB;
//   * precedence from high to low: ^ (right to left), %, /, * , -, +, comparisons, &&, ||;
//     unary - + ! bind tighter than ^ (`-2^2` is 4);
//   * `e()` and `pi()` are functions; `log(x)` is base 10, `log(b, x)` base b; `round(m, x)`
//     rounds to a multiple of m; no `ln`, `sqrt`, `and`/`or`, `NaN`/`inf` (default features off);
//   * arithmetic is IEEE: `1/0` is inf, only the final value is checked;
//   * `[...]` groups like `(...)`; arguments are separated by `,` or `;`;
//   * at most 4096 bytes and 32 levels of nesting.

/// A parsed zram-generator (fasteval) expression.
public struct SizeExpression: Sendable {
    public let text: String

    public init(_ text: String) { self.text = text }

    /// Parses without evaluating: what zram-generator checks when it reads a line.
    public func check() throws(DaemonError) {
        _ = try parse()
    }

    /// Evaluates with `variables` (zram-generator provides `ram`, and `set!` adds more). Throws a
    /// one-line message that names the problem.
    public func evaluate(_ variables: [String: Double]) throws(DaemonError) -> Double {
        let ctx = EvalContext(variables: variables, source: text)
        let value = try ctx.eval(try parse())
        guard value.isFinite else { throw .invalidValue("expression '\(Self.shown(text))' is not a finite number (\(value))") }
        return value
    }

    /// Like `evaluate`, but any finite or infinite value is returned (for `set!`, whose result may
    /// be used in a later expression that makes it finite again, as in zram-generator).
    func evaluateRaw(_ variables: [String: Double]) throws(DaemonError) -> Double {
        let ctx = EvalContext(variables: variables, source: text)
        return try ctx.eval(try parse())
    }

    /// The size in bytes this expression gives in MiB, as zram-generator computes it
    /// (`value * 1024 * 1024`, truncated); negative results are an error.
    /// At most ByteSize.maximum.
    public func bytes(ramMiB: Double, variables: [String: Double] = [:]) throws(DaemonError) -> UInt64 {
        var vars = variables
        vars["ram"] = ramMiB   // zram-generator looks `ram` up before any set! variable
        let ctx = EvalContext(variables: vars, source: text)
        return try Self.bytes(mib: try ctx.eval(try parse()), text: text)
    }

    /// `mib` MiB in bytes (truncated), refused when negative, not a number or above
    /// ByteSize.maximum; `text` names the value in the message.
    static func bytes(mib: Double, text: String) throws(DaemonError) -> UInt64 {
        guard !mib.isNaN else { throw .invalidValue("invalid size '\(shown(text))': not a number") }
        guard mib >= 0 else { throw .invalidValue("invalid size '\(shown(text))': must not be negative (\(mib) MiB)") }
        let bytes = mib * 1_048_576
        guard bytes.isFinite, bytes <= Double(ByteSize.maximum) else {
            // The usual cause: a unit suffix taken for bytes ("2G") where fasteval reads 2e9 MiB.
            let hint = hasSISuffix(text) ? "; the value is in MiB, and k, M, G, T are powers of 1000 as in zram-generator" : ""
            throw .invalidValue("invalid size '\(shown(text))': too large (at most \(ByteSize.human(ByteSize.maximum)))\(hint)")
        }
        return UInt64(bytes)
    }

    /// True when a number in `text` has an SI suffix ("2G", "1.5k").
    static func hasSISuffix(_ text: String) -> Bool {
        let b = Array(text.utf8)
        for i in b.indices.dropFirst() where "kKMGT".utf8.contains(b[i]) {
            let prev = b[i - 1]
            if (prev >= 0x30 && prev <= 0x39) || prev == UInt8(ascii: ".") { return true }
        }
        return false
    }

    /// A long expression is shortened: messages stay one readable line.
    static func shown(_ s: String) -> String {
        let one = s.split(whereSeparator: { $0 == "\n" || $0 == "\r" }).joined(separator: " ")
        return one.count > 80 ? String(one.prefix(80)) + "..." : one
    }

    static let lengthLimit = 4096
    static let depthLimit = 32

    func parse() throws(DaemonError) -> Node {
        guard text.utf8.count <= Self.lengthLimit else {
            throw .invalidValue("invalid expression '\(Self.shown(text))': longer than \(Self.lengthLimit) bytes")
        }
        var p = Parser(text: Array(text.utf8), source: text)
        return try p.expression(depth: 0, toEnd: true)
    }

    // MARK: syntax

    enum BinaryOp: Int, Sendable {
        case or, and, ne, eq, ge, le, gt, lt, add, sub, mul, div, mod, exp
    }

    indirect enum Node: Sendable {
        case number(Double)
        case variable(String)
        /// A name with arguments that is no builtin: zram-generator's namespace knows none.
        case call(String, [Node])
        case builtin(String, [Node])
        case negate(Node)
        case not(Node)
        case chain(Node, [(BinaryOp, Node)])
        case print([PrintArg])
    }

    enum PrintArg: Sendable {
        case expr(Node)
        case string(String)
    }

    /// fasteval's builtins and how many arguments each takes.
    static let builtins: [String: ClosedRange<Int>] = [
        "int": 1...1, "ceil": 1...1, "floor": 1...1, "abs": 1...1, "sign": 1...1,
        "log": 1...2, "round": 1...2, "min": 1...Int.max, "max": 1...Int.max, "e": 0...0, "pi": 0...0,
        "sin": 1...1, "cos": 1...1, "tan": 1...1, "asin": 1...1, "acos": 1...1, "atan": 1...1,
        "sinh": 1...1, "cosh": 1...1, "tanh": 1...1, "asinh": 1...1, "acosh": 1...1, "atanh": 1...1,
    ]

    private struct Parser {
        let text: [UInt8]
        let source: String
        var pos = 0

        var atEnd: Bool { pos >= text.count }
        func peek(_ ahead: Int = 0) -> UInt8? { pos + ahead < text.count ? text[pos + ahead] : nil }
        /// What is left (at most 40 bytes of it), for messages.
        var rest: String {
            let tail = text[pos...]
            return SizeExpression.shown(String(decoding: tail.prefix(40), as: UTF8.self)) + (tail.count > 40 ? "..." : "")
        }

        func error(_ what: String) -> DaemonError {
            .invalidValue("invalid expression '\(SizeExpression.shown(source))': \(what)")
        }

        mutating func skipSpaces() {
            while let c = peek(), c == 0x20 || c == 0x0a || c == 0x09 || c == 0x0d { pos += 1 }
        }

        mutating func expression(depth: Int, toEnd: Bool) throws(DaemonError) -> Node {
            guard depth <= SizeExpression.depthLimit else { throw error("nested more than \(SizeExpression.depthLimit) levels deep") }
            let first = try value(depth: depth)
            var pairs: [(BinaryOp, Node)] = []
            while let op = binaryOp() { pairs.append((op, try value(depth: depth))) }
            skipSpaces()
            if toEnd, !atEnd { throw error("unexpected '\(rest)'") }
            return pairs.isEmpty ? first : .chain(first, pairs)
        }

        mutating func value(depth: Int) throws(DaemonError) -> Node {
            guard depth <= SizeExpression.depthLimit else { throw error("nested more than \(SizeExpression.depthLimit) levels deep") }
            if let c = try constant() { return .number(c) }
            skipSpaces()
            guard let c = peek() else { throw error("unexpected end") }
            switch c {
            case UInt8(ascii: "+"): pos += 1; return try value(depth: depth + 1)
            case UInt8(ascii: "-"): pos += 1; return .negate(try value(depth: depth + 1))
            case UInt8(ascii: "!"): pos += 1; return .not(try value(depth: depth + 1))
            case UInt8(ascii: "("), UInt8(ascii: "["):
                pos += 1
                let close = c == UInt8(ascii: "(") ? UInt8(ascii: ")") : UInt8(ascii: "]")
                let inner = try expression(depth: depth + 1, toEnd: false)
                skipSpaces()
                guard let got = peek() else { throw error("missing '\(Character(Unicode.Scalar(close)))'") }
                guard got == close else { throw error("expected '\(Character(Unicode.Scalar(close)))', got '\(rest)'") }
                pos += 1
                return inner
            default: break
            }
            if let name = varName() {
                skipSpaces()
                guard let open = peek(), open == UInt8(ascii: "(") || open == UInt8(ascii: "[") else { return .variable(name) }
                pos += 1
                let close = open == UInt8(ascii: "(") ? UInt8(ascii: ")") : UInt8(ascii: "]")
                if name == "print" { return .print(try printArgs(close: close, depth: depth)) }
                let args = try arguments(of: name, close: close, depth: depth)
                if let arity = SizeExpression.builtins[name] {
                    guard arity.contains(args.count) else { throw error(Self.arityMessage(name, arity)) }
                    return .builtin(name, args)
                }
                return .call(name, args)
            }
            throw error("unexpected '\(rest)'")
        }

        static func arityMessage(_ name: String, _ arity: ClosedRange<Int>) -> String {
            switch (name, arity.lowerBound, arity.upperBound) {
            case ("log", _, _): return "expected log(x) or log(base, x)"
            case ("round", _, _): return "expected round(x) or round(modulus, x)"
            case (_, 0, 0): return "\(name)() takes no arguments"
            case (_, 1, 1): return "\(name)() takes one argument"
            default: return "\(name)() needs arguments"
            }
        }

        /// fasteval's read_const: digits, '.', a leading sign, an exponent, then one SI suffix.
        mutating func constant() throws(DaemonError) -> Double? {
            skipSpaces()
            var len = 0
            var signOK = true, suffixOK = true, sawValue = false
            while let b = peek(len) {
                if (b >= 0x30 && b <= 0x39) || b == UInt8(ascii: ".") {
                    sawValue = true; signOK = false; len += 1
                } else if signOK, b == UInt8(ascii: "-") || b == UInt8(ascii: "+") {
                    signOK = false; len += 1
                } else if sawValue, b == UInt8(ascii: "e") || b == UInt8(ascii: "E") {
                    suffixOK = false; signOK = true; len += 1
                } else {
                    break
                }
            }
            guard sawValue else { return nil }
            var token = String(decoding: text[pos..<(pos + len)], as: UTF8.self)
            if suffixOK, let b = peek(len) {
                var exponent = 0, suffixLength = 1
                switch b {
                case UInt8(ascii: "k"), UInt8(ascii: "K"): exponent = 3
                case UInt8(ascii: "M"): exponent = 6
                case UInt8(ascii: "G"): exponent = 9
                case UInt8(ascii: "T"): exponent = 12
                case UInt8(ascii: "m"): exponent = -3
                case UInt8(ascii: "u"), 0xb5: exponent = -6
                case 0xc2 where peek(len + 1) == 0xb5: exponent = -6; suffixLength = 2   // UTF-8 µ
                case UInt8(ascii: "n"): exponent = -9
                case UInt8(ascii: "p"): exponent = -12
                default: break
                }
                if exponent != 0 { token += "e\(exponent)"; len += suffixLength }
            }
            // Rust's f64 syntax: digits with at most one '.', an optional exponent; no hex, inf, nan.
            guard Self.isDecimal(token), let v = Double(token) else { throw error("bad number '\(token)'") }
            pos += len
            return v
        }

        static func isDecimal(_ s: String) -> Bool {
            var u = Substring(s).utf8[...]
            if let f = u.first, f == UInt8(ascii: "+") || f == UInt8(ascii: "-") { u = u.dropFirst() }
            var digits = 0, dots = 0
            while let c = u.first, (c >= 0x30 && c <= 0x39) || c == UInt8(ascii: ".") {
                if c == UInt8(ascii: ".") { dots += 1 } else { digits += 1 }
                u = u.dropFirst()
            }
            guard digits > 0, dots <= 1 else { return false }
            if let e = u.first {
                guard e == UInt8(ascii: "e") || e == UInt8(ascii: "E") else { return false }
                u = u.dropFirst()
                if let f = u.first, f == UInt8(ascii: "+") || f == UInt8(ascii: "-") { u = u.dropFirst() }
                guard !u.isEmpty, u.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else { return false }
            }
            return true
        }

        mutating func varName() -> String? {
            skipSpaces()
            let start = pos
            while let b = peek() {
                let letter = (b | 0x20) >= 0x61 && (b | 0x20) <= 0x7a
                let digit = b >= 0x30 && b <= 0x39
                guard letter || b == UInt8(ascii: "_") || (digit && pos > start) else { break }
                pos += 1
            }
            return pos > start ? String(decoding: text[start..<pos], as: UTF8.self) : nil
        }

        mutating func binaryOp() -> BinaryOp? {
            skipSpaces()
            guard let b = peek() else { return nil }
            let next = peek(1)
            let op: BinaryOp
            var length = 1
            switch b {
            case UInt8(ascii: "+"): op = .add
            case UInt8(ascii: "-"): op = .sub
            case UInt8(ascii: "*"): op = .mul
            case UInt8(ascii: "/"): op = .div
            case UInt8(ascii: "%"): op = .mod
            case UInt8(ascii: "^"): op = .exp
            case UInt8(ascii: "<"): if next == UInt8(ascii: "=") { op = .le; length = 2 } else { op = .lt }
            case UInt8(ascii: ">"): if next == UInt8(ascii: "=") { op = .ge; length = 2 } else { op = .gt }
            case UInt8(ascii: "=") where next == UInt8(ascii: "="): op = .eq; length = 2
            case UInt8(ascii: "!") where next == UInt8(ascii: "="): op = .ne; length = 2
            case UInt8(ascii: "|") where next == UInt8(ascii: "|"): op = .or; length = 2
            case UInt8(ascii: "&") where next == UInt8(ascii: "&"): op = .and; length = 2
            default: return nil
            }
            pos += length
            return op
        }

        mutating func arguments(of name: String, close: UInt8, depth: Int) throws(DaemonError) -> [Node] {
            try list(of: name, close: close) { (p) throws(DaemonError) in try p.expression(depth: depth + 1, toEnd: false) }
        }

        mutating func printArgs(close: UInt8, depth: Int) throws(DaemonError) -> [PrintArg] {
            try list(of: "print", close: close) { (p) throws(DaemonError) -> PrintArg in
                p.skipSpaces()
                guard p.peek() == UInt8(ascii: "\"") else { return .expr(try p.expression(depth: depth + 2, toEnd: false)) }
                p.pos += 1
                guard let end = p.text[p.pos...].firstIndex(of: UInt8(ascii: "\"")) else { throw p.error("unterminated string") }
                defer { p.pos = end + 1 }
                return .string(String(decoding: p.text[p.pos..<end], as: UTF8.self))
            }
        }

        /// A function's arguments up to `close`, separated by ',' or ';' (fasteval takes both),
        /// each read by `element`.
        mutating func list<T>(of name: String, close: UInt8,
                              _ element: (inout Parser) throws(DaemonError) -> T) throws(DaemonError) -> [T] {
            var items: [T] = []
            while true {
                skipSpaces()
                guard let b = peek() else { throw error("missing ')' after the arguments of \(name)") }
                if b == close { pos += 1; return items }
                if !items.isEmpty {
                    guard b == UInt8(ascii: ",") || b == UInt8(ascii: ";") else {
                        throw error("expected ',' or ';' between the arguments of \(name), got '\(rest)'")
                    }
                    pos += 1
                }
                items.append(try element(&self))
            }
        }
    }

    // MARK: evaluation

    private struct EvalContext {
        let variables: [String: Double]
        let source: String

        func error(_ what: String) -> DaemonError {
            .invalidValue("invalid expression '\(SizeExpression.shown(source))': \(what)")
        }

        /// fasteval's f64_eq: equal within 8 ULPs of 1.
        static func equal(_ a: Double, _ b: Double) -> Bool { abs(a - b) <= 8 * Double.ulpOfOne }

        func eval(_ node: Node) throws(DaemonError) -> Double {
            switch node {
            case .number(let v): return v
            case .variable(let name):
                guard let v = variables[name] else { throw error("unknown name '\(name)'" + Self.hint(name)) }
                return v
            case .call(let name, let args):
                // zram-generator's namespace answers only argument-less lookups: `ram()` is ram.
                for a in args { _ = try eval(a) }
                guard args.isEmpty, let v = variables[name] else { throw error("unknown function '\(name)'") }
                return v
            case .negate(let n): return -(try eval(n))
            case .not(let n): return Self.equal(try eval(n), 0) ? 1 : 0
            case .builtin(let name, let args):
                var v: [Double] = []
                for a in args { v.append(try eval(a)) }
                return Self.builtin(name, v)
            case .print(let args):
                var value = 0.0
                var out: [String] = []
                for a in args {
                    switch a {
                    case .expr(let n):
                        value = try eval(n)
                        out.append(Self.rustString(value))
                    case .string(let s):
                        guard out.count > 0 || !s.contains("%") else { throw error("printf formatting is not supported") }
                        out.append(Self.unescape(s))
                    }
                }
                _ = FileSystem.writeAll(2, out.joined(separator: " ") + "\n")   // fasteval prints to stderr
                return value
            case .chain(let first, let pairs):
                var vals = [try eval(first)]
                var ops: [BinaryOp] = []
                for (op, n) in pairs { ops.append(op); vals.append(try eval(n)) }
                // fasteval's order: each level in turn, right to left or left to right.
                Self.reduce(&vals, &ops, [.exp], rightToLeft: true)
                Self.reduce(&vals, &ops, [.mod], rightToLeft: false)
                Self.reduce(&vals, &ops, [.div], rightToLeft: false)
                Self.reduce(&vals, &ops, [.mul], rightToLeft: true)
                Self.reduce(&vals, &ops, [.sub], rightToLeft: false)
                Self.reduce(&vals, &ops, [.add], rightToLeft: true)
                Self.reduce(&vals, &ops, [.lt, .gt, .le, .ge, .eq, .ne], rightToLeft: false)
                Self.reduce(&vals, &ops, [.and], rightToLeft: false)
                Self.reduce(&vals, &ops, [.or], rightToLeft: false)
                return vals.first ?? .nan
            }
        }

        /// fasteval's process_str: the two-character sequences \n and \t become a newline and a tab.
        static func unescape(_ s: String) -> String {
            var out = ""
            var backslash = false
            for c in s {
                if backslash {
                    backslash = false
                    if c == "n" { out.append("\n"); continue }
                    if c == "t" { out.append("\t"); continue }
                    out.append("\\")
                }
                if c == "\\" { backslash = true } else { out.append(c) }
            }
            if backslash { out.append("\\") }
            return out
        }

        static func hint(_ name: String) -> String {
            name == "e" || name == "pi" ? " (write \(name)(), as in fasteval)" : ""
        }

        static func reduce(_ vals: inout [Double], _ ops: inout [BinaryOp], _ search: [BinaryOp], rightToLeft: Bool) {
            if rightToLeft {
                var i = ops.count - 1
                while i >= 0 {
                    if i < ops.count, search.contains(ops[i]) {
                        vals[i] = apply(ops[i], vals[i], vals[i + 1])
                        vals.remove(at: i + 1)
                        ops.remove(at: i)
                    }
                    i -= 1
                }
            } else {
                var i = 0
                while i < ops.count {
                    if search.contains(ops[i]) {
                        vals[i] = apply(ops[i], vals[i], vals[i + 1])
                        vals.remove(at: i + 1)
                        ops.remove(at: i)
                    } else {
                        i += 1
                    }
                }
            }
        }

        static func apply(_ op: BinaryOp, _ l: Double, _ r: Double) -> Double {
            switch op {
            case .add: return l + r
            case .sub: return l - r
            case .mul: return l * r
            case .div: return l / r
            case .mod: return l.truncatingRemainder(dividingBy: r)
            case .exp: return pow(l, r)
            case .lt: return l < r ? 1 : 0
            case .le: return l <= r ? 1 : 0
            case .gt: return l > r ? 1 : 0
            case .ge: return l >= r ? 1 : 0
            case .eq: return equal(l, r) ? 1 : 0
            case .ne: return equal(l, r) ? 0 : 1
            case .or: return equal(l, 0) ? r : l
            case .and: return equal(l, 0) ? l : r
            }
        }

        static func builtin(_ name: String, _ a: [Double]) -> Double {
            let x = a.last ?? .nan
            switch name {
            case "int": return x.rounded(.towardZero)
            case "ceil": return x.rounded(.up)
            case "floor": return x.rounded(.down)
            case "abs": return abs(x)
            case "sign": return x.isNaN ? .nan : (x.sign == .minus ? -1 : 1)   // Rust's signum
            case "log":
                let base = a.count == 2 ? a[0] : 10
                if equal(base, 2) { return log2(x) }
                if equal(base, 10) { return log10(x) }
                return log(x) / log(base)
            case "round":
                let m = a.count == 2 ? a[0] : 1
                return (x / m).rounded(.toNearestOrAwayFromZero) * m
            case "min", "max":
                // Rust's f64::min/max skip a NaN argument; fasteval returns NaN only when the
                // running value itself became NaN (a NaN first argument).
                guard var m = a.first else { return .nan }
                var sawNaN = m.isNaN
                for v in a.dropFirst() {
                    m = v.isNaN ? m : (m.isNaN ? v : (name == "min" ? Swift.min(m, v) : Swift.max(m, v)))
                    sawNaN = sawNaN || m.isNaN
                }
                return sawNaN ? .nan : m
            case "e": return exp(1)
            case "pi": return Double.pi
            case "sin": return sin(x)
            case "cos": return cos(x)
            case "tan": return tan(x)
            case "asin": return asin(x)
            case "acos": return acos(x)
            case "atan": return atan(x)
            case "sinh": return sinh(x)
            case "cosh": return cosh(x)
            case "tanh": return tanh(x)
            case "asinh": return asinh(x)
            case "acosh": return acosh(x)
            case "atanh": return atanh(x)
            default: return .nan
            }
        }

        /// f64's Display in Rust: "3", "0.5", "inf", "NaN".
        static func rustString(_ v: Double) -> String {
            if v.isNaN { return "NaN" }
            if v.isInfinite { return v < 0 ? "-inf" : "inf" }
            if v == v.rounded(), abs(v) < 1e15 { return String(Int64(v)) }
            return String(v)
        }
    }
}

#if canImport(Glibc)
import Glibc
#endif
