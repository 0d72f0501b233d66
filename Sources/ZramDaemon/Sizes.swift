// Byte sizes as people type them (the kernel's memparse) and as zramctl prints them.
import ZramDevice

public enum ByteSize {
    /// The largest size the daemon accepts anywhere (disk size, mem_limit; flags, config files,
    /// `ctl add`, `ctl mem-limit`): 16 TiB, what 32-bit page numbers address (2^32 pages of 4 KiB).
    /// The pool's page numbers are 32-bit, so it can never hold more; a disk of that size costs
    /// 64 GiB of slot-table address space and a 16 TiB pool reservation, both untouched until used.
    /// See ZramConfig.maxDiskSize and maxMemLimit, which the device checks again.
    public static let maximum = UInt64(ZramConfig.maxDiskSize)

    /// The kernel's memparse, as zram's `disksize`/`mem_limit` accept it: a decimal (or 0x hex)
    /// integer with an optional K/M/G/T/P/E suffix in powers of 1024. Also accepts the spellings
    /// people copy from other tools: "4GiB", "4GB" (still 1024-based, like zramctl), "512B".
    /// Sizes above `maximum` and negative ones are refused with a message naming `text`.
    public static func parse(_ text: String, maximum: UInt64 = ByteSize.maximum) throws(DaemonError) -> UInt64 {
        let s = text.trimmed()
        if s.hasPrefix("-"), s.dropFirst().first?.isNumber == true { throw .invalidValue("invalid size '\(text)': must not be negative") }
        var digits = Substring(s)
        var radix = 10
        if digits.hasPrefix("0x") || digits.hasPrefix("0X") { digits = digits.dropFirst(2); radix = 16 }
        let numberEnd = digits.firstIndex { !$0.isHexDigit || (radix == 10 && !$0.isNumber) } ?? digits.endIndex
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
