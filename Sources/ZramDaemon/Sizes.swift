// Byte sizes as people type them (the kernel's memparse) and as zramctl prints them.
import ZramDevice

public enum ByteSize {
    /// The largest size the daemon accepts anywhere (disk size, mem_limit; flags, config files,
    /// `ctl add`, `ctl mem-limit`): 16 TiB, what 32-bit page numbers address (2^32 pages of 4 KiB).
    /// The pool's page numbers are 32-bit, so it can never hold more; a disk of that size costs
    /// 64 GiB of slot-table address space and a 16 TiB pool reservation, both untouched until used.
    /// See ZramConfig.maxDiskSize and maxMemLimit, which the device checks again.
    public static let maximum = UInt64(ZramConfig.maxDiskSize)

    /// The kernel's memparse, as zram's `disksize`/`mem_limit` accept it: an integer in
    /// simple_strtoull's base 0 (decimal, 0x hex, a leading 0 octal) with an optional
    /// K/M/G/T/P/E suffix in powers of 1024. The kernel ignores what follows the number or suffix:
    /// "4GiB" and "4GB" are 4 GiB in both, "512B" is 512. Other trailing text, which the kernel
    /// would silently drop ("1.5G" is 1 byte there), is refused.
    /// Sizes above `maximum` and negative ones are refused with a message naming `text`.
    public static func parse(_ text: String, maximum: UInt64 = ByteSize.maximum) throws(DaemonError) -> UInt64 {
        let s = text.trimmed()
        if s.hasPrefix("-"), s.dropFirst().first?.isNumber == true { throw .invalidValue("invalid size '\(text)': must not be negative") }
        var digits = Substring(s)
        var radix = 10
        if digits.hasPrefix("0x") || digits.hasPrefix("0X") {
            digits = digits.dropFirst(2); radix = 16
        } else if digits.count > 1, digits.first == "0", digits.dropFirst().first?.isNumber == true {
            radix = 8   // simple_strtoull base 0: echo 010 > mem_limit is 8 bytes
        }
        let numberEnd = digits.firstIndex { !$0.isHexDigit || (radix != 16 && !$0.isNumber) } ?? digits.endIndex
        let number = digits[..<numberEnd]
        var suffix = digits[numberEnd...].lowercased()
        guard !number.isEmpty, let value = UInt64(number, radix: radix) else {
            throw .invalidValue("invalid size '\(text)': expected a number with an optional K, M, G or T suffix")
        }
        if suffix.hasSuffix("ib") { suffix.removeLast(2) } else if suffix.count == 2, suffix.hasSuffix("b") { suffix.removeLast() }
        let shift: UInt64
        switch suffix {
        case "", "b": shift = 0
        case "k": shift = 10
        case "m": shift = 20
        case "g": shift = 30
        case "t": shift = 40
        case "p": shift = 50
        case "e": shift = 60
        default:
            throw .invalidValue("invalid size '\(text)': unknown suffix '\(digits[numberEnd...])' (use K, M, G or T)")
        }
        let (result, overflow) = value.multipliedReportingOverflow(by: 1 << shift)
        guard !overflow, result <= maximum else { throw tooLarge(text, maximum: maximum) }
        return result
    }

    /// util-linux's strtosize (ul_parse_size), as zramctl's `--size` takes it: an integer in
    /// strtoumax's base 0 (0x hex, leading 0 octal), optionally a fraction ("1.5G"), and a suffix
    /// K/M/G/T/P/E (also lower case; Z and Y are beyond 64 bits) alone or with "iB" for powers of
    /// 1024, or with "B" for powers of 1000: "1K" = "1KiB" = 1024, "1KB" = 1000. Plain numbers are
    /// bytes; "512B", a fraction without a suffix and anything after the suffix are refused, as
    /// util-linux refuses them. At most `maximum`.
    public static func strtosize(_ text: String, maximum: UInt64 = ByteSize.maximum) throws(DaemonError) -> UInt64 {
        func invalid(_ why: String) -> DaemonError {
            .invalidValue("invalid size '\(text)': \(why)")
        }
        let shape = "expected a number with an optional K, M, G or T suffix (KiB = 1024, KB = 1000)"
        var u = Array(text.utf8)[...]
        while let c = u.first, c == 0x20 || (0x09...0x0d).contains(c) { u = u.dropFirst() }   // strtoumax skips isspace
        if u.first == UInt8(ascii: "-") { throw invalid("must not be negative") }
        if u.first == UInt8(ascii: "+") { u = u.dropFirst() }

        /// strtoumax(base 0) on the front of `u`: the value and the rest; nil if no digit.
        func number(_ u: inout ArraySlice<UInt8>) throws(DaemonError) -> UInt64? {
            var radix: UInt64 = 10
            var rest = u
            if rest.count >= 3, rest.first == UInt8(ascii: "0"), rest.dropFirst().first.map({ $0 | 0x20 == UInt8(ascii: "x") }) == true,
               let h = rest.dropFirst(2).first, hexValue(h) != nil {
                radix = 16; rest = rest.dropFirst(2)
            } else if rest.first == UInt8(ascii: "0") {
                radix = 8
            }
            var value: UInt64 = 0
            var any = false
            while let c = rest.first, let d = hexValue(c), d < radix {
                let (m, o1) = value.multipliedReportingOverflow(by: radix)
                let (a, o2) = m.addingReportingOverflow(d)
                if o1 || o2 { throw tooLarge(text, maximum: maximum) }
                value = a; any = true
                rest = rest.dropFirst()
            }
            guard any else { return nil }
            u = rest
            return value
        }

        guard var x = try number(&u) else { throw invalid(shape) }
        var frac: UInt64 = 0, fracZeros = 0
        var base: UInt64 = 1024
        while true {
            guard let suffix = u.first else {   // a number alone is bytes
                guard x <= maximum else { throw tooLarge(text, maximum: maximum) }
                return x
            }
            let next = u.dropFirst()
            if next.first == UInt8(ascii: "i"), let b = next.dropFirst().first, b | 0x20 == UInt8(ascii: "b"), next.count == 2 {
                base = 1024
            } else if let b = next.first, b | 0x20 == UInt8(ascii: "b"), next.count == 1 {
                base = 1000
            } else if !next.isEmpty {
                // The decimal point (the C locale's), once: "1.5G", "0.05M".
                guard frac == 0, fracZeros == 0, suffix == UInt8(ascii: ".") else { throw invalid(shape) }
                var f = next
                while f.first == UInt8(ascii: "0") { fracZeros += 1; f = f.dropFirst() }
                if let c = f.first, (0x30...0x39).contains(c) {
                    guard let v = try number(&f) else { throw invalid(shape) }
                    frac = v
                }
                guard !f.isEmpty else { throw invalid(shape) }   // a fraction needs a suffix
                u = f
                continue
            }
            let letters = Array("KMGTPEZY".utf8), lower = Array("kmgtpezy".utf8)
            guard let i = letters.firstIndex(of: suffix) ?? lower.firstIndex(of: suffix) else {
                throw invalid("unknown suffix '\(String(decoding: u, as: UTF8.self))' (use K, M, G or T; KiB = 1024, KB = 1000)")
            }
            let power = i + 1
            var unit: UInt64 = 1
            for _ in 0..<power {
                let (m, o) = unit.multipliedReportingOverflow(by: base)
                if o { throw tooLarge(text, maximum: maximum) }
                unit = m
            }
            let (scaled, o) = x.multipliedReportingOverflow(by: unit)
            if o { throw tooLarge(text, maximum: maximum) }
            x = scaled
            if frac != 0 {
                // util-linux's digit-by-digit fraction: each digit d at position p adds
                // unit / (10^p / d), truncating, so 1.5G = 1G + 1G/2 and 0.1K = 1024/10 = 102.
                var fracDiv: UInt64 = 10, fracPos: UInt64 = 1
                while fracDiv < frac { if fracDiv <= UInt64.max / 10 { fracDiv *= 10 } else { frac /= 10 } }
                for _ in 0..<fracZeros {   // the zeros after the point: 0.05 is 5 in a divisor of 100
                    if fracDiv <= UInt64.max / 10 { fracDiv *= 10 } else { frac /= 10 }
                }
                repeat {
                    let seg = frac % 10
                    let segDiv = fracDiv / fracPos
                    frac /= 10
                    if fracPos <= UInt64.max / 10 { fracPos *= 10 }
                    if seg != 0, segDiv / seg != 0 {
                        let (sum, o2) = x.addingReportingOverflow(unit / (segDiv / seg))
                        if o2 { throw tooLarge(text, maximum: maximum) }
                        x = sum
                    }
                } while frac != 0
            }
            guard x <= maximum else { throw tooLarge(text, maximum: maximum) }
            return x
        }
    }

    static func hexValue(_ c: UInt8) -> UInt64? {
        switch c {
        case 0x30...0x39: return UInt64(c - 0x30)
        case 0x61...0x66: return UInt64(c - 0x61 + 10)
        case 0x41...0x46: return UInt64(c - 0x41 + 10)
        default: return nil
        }
    }

    /// "invalid size '10E': too large (at most 16T)".
    static func tooLarge(_ text: String, maximum: UInt64 = ByteSize.maximum) -> DaemonError {
        .invalidValue("invalid size '\(text)': too large (at most \(human(maximum)))")
    }

    /// True when `text` reads as a memparse size rather than an expression: an optional '-', a
    /// digit, and a unit suffix at the end ("2G", "-1G", "10E", "1.5G").
    static func looksLikeMemparse(_ text: String) -> Bool {
        var s = Substring(text.trimmed())
        if s.first == "-" { s = s.dropFirst() }
        guard let first = s.first, first.isNumber, hasUnitSuffix(text) else { return false }
        return s.allSatisfy { $0.isHexDigit || $0 == "." || $0 == "x" || $0 == "X" || "kKmMgGtTpPeEiIbB".contains($0) }
    }

    /// True when `text` carries a memparse suffix ("2G", "512M"), as opposed to a bare number.
    static func hasUnitSuffix(_ text: String) -> Bool {
        guard let last = text.trimmed().last else { return false }
        return "kKmMgGtTpPeEbB".contains(last)
    }

    /// zramctl's human-readable size (util-linux size_to_human_string, one-letter suffixes):
    /// the largest power-of-1024 unit, one rounded decimal when not whole: "3.8G", "4K", "74B".
    public static func human(_ bytes: UInt64) -> String {
        let letters: [Character] = ["B", "K", "M", "G", "T", "P", "E"]
        var exp = 0
        while exp < 60, bytes >= (1 << UInt64(exp + 10)) { exp += 10 }
        var whole = exp == 0 ? bytes : bytes >> UInt64(exp)
        var frac: UInt64 = exp == 0 ? 0 : bytes & ((1 << UInt64(exp)) - 1)
        if frac != 0 {
            // Three digits after the point, then rounded to one, as util-linux does.
            frac = frac >= UInt64.max / 1000 ? ((frac / 1024) * 1000) >> UInt64(exp - 10) : (frac * 1000) >> UInt64(exp)
            frac = (frac + 50) / 100
            if frac == 10 { whole += 1; frac = 0 }
        }
        let unit = String(letters[exp / 10])
        return frac != 0 ? "\(whole).\(frac)\(unit)" : "\(whole)\(unit)"
    }
}

extension String {
    /// Without leading and trailing blanks (spaces, tabs, CR, LF).
    func trimmed() -> String {
        var s = Substring(self)
        while let c = s.first, c == " " || c == "\t" || c == "\n" || c == "\r" { s.removeFirst() }
        while let c = s.last, c == " " || c == "\t" || c == "\n" || c == "\r" { s.removeLast() }
        return String(s)
    }
}
