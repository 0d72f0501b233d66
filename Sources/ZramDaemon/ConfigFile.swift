// The configuration file: zram-generator's INI format and keys, plus the daemon's own.
//
//   /etc/zramnbd.conf, then /etc/zramnbd.conf.d/*.conf in file-name order; a later file's value
//   for a key replaces an earlier one. One [zramN] section per device, [zramnbd] for the daemon.

import NBD

/// Result of reading the configuration: the settings plus warnings ("file:line: ...") to print.
public struct LoadedConfig: Sendable {
    public var settings: DaemonSettings
    public var warnings: [String]
    /// The files that were read, in order.
    public var files: [String]
}

public enum ConfigFile {
    /// The files making up the configuration at `path`: the file itself (if present), then
    /// `path.d/*.conf` sorted by name.
    public static func fragments(of path: String) -> [String] {
        var files: [String] = []
        if FileSystem.exists(path) { files.append(path) }
        let dir = path + ".d"
        files += FileSystem.listDirectory(dir).filter { $0.hasSuffix(".conf") }.sorted().map { dir + "/" + $0 }
        return files
    }

    /// Reads and resolves the configuration at `path` (see `fragments(of:)`). Returns nil when
    /// there is no file at all (the caller then uses the default device).
    public static func load(path: String, ramMiB: Double) throws(DaemonError) -> LoadedConfig? {
        let files = fragments(of: path)
        if files.isEmpty { return nil }
        var sources: [(String, String)] = []
        for f in files {
            // A drop-in linked to /dev/null masks the vendor file of that name (systemd's convention).
            sources.append((f, try FileSystem.readText(f)))
        }
        return try parse(sources, ramMiB: ramMiB)
    }

    /// Resolves already-read files, given as (name, contents) in precedence order.
    public static func parse(_ sources: [(name: String, text: String)], ramMiB: Double) throws(DaemonError) -> LoadedConfig {
        var ini = IniDocument()
        for (name, text) in sources { try ini.read(text, file: name) }
        var warnings = ini.warnings
        var settings = DaemonSettings()
        for section in ini.sections {
            if section.name == "zramnbd" {
                try applyDaemonKeys(section, to: &settings, warnings: &warnings)
            } else if section.name.hasPrefix("zram") {
                if let d = try device(section, ramMiB: ramMiB, warnings: &warnings) { settings.devices.append(d) }
            } else {
                warnings.append("\(section.file):\(section.line): ignoring section [\(section.name)] (expected [zramN] or [zramnbd])")
            }
        }
        do { try settings.validate() } catch { throw error.located(in: sources.last?.name ?? "config") }
        return LoadedConfig(settings: settings, warnings: warnings, files: sources.map(\.name))
    }

    /// A device from `key=value` settings outside a file (`ctl DEVICE add ...`): the config keys,
    /// plus the command-line spellings `size` and `mem-limit` (memparse bytes), `algorithm`, `level`.
    public static func deviceSpec(name: String, settings: [(String, String)], ramMiB: Double) throws(DaemonError) -> DeviceSpec {
        var section = IniSection(name: name, file: "add \(name)", line: 0)
        var algorithm: String?
        var level: String?
        for (k, v) in settings {
            let entry = { (value: String) in IniEntry(value: value, file: "add \(name)", line: 0) }
            switch k {
            case "size": section.set("zram-size", entry("\(try ByteSize.parse(v))B"))
            case "mem-limit": section.set("zram-resident-limit", entry("\(try ByteSize.parse(v))B"))
            case "algorithm": algorithm = v
            case "level": level = v
            default: section.set(k, entry(v))
            }
        }
        if algorithm != nil || level != nil {
            let a = algorithm ?? "lz4"
            try DeviceSpec.validateAlgorithm(a)
            section.set("compression-algorithm", IniEntry(value: level.map { "\(a)(level=\($0))" } ?? a, file: "add \(name)", line: 0))
        }
        var warnings: [String] = []
        guard let spec = try device(section, ramMiB: ramMiB, warnings: &warnings) else {
            throw .invalidValue("\(name): \(warnings.last ?? "device skipped")")
        }
        if let unknown = warnings.first(where: { $0.contains("unknown key") }) { throw .invalidValue(unknown) }
        return spec
    }

    static func device(_ s: IniSection, ramMiB: Double, warnings: inout [String]) throws(DaemonError) -> DeviceSpec? {
        do { try DeviceSpec.validateName(s.name) } catch { throw .config(file: s.file, line: s.line, error.description) }
        var spec = DeviceSpec.standard(name: s.name, diskSize: 0)
        var size = SizeExpression("min(ram / 2, 4096)")
        var sizeEntry: IniEntry?
        var fraction: Double?
        var maxSizeMiB: Double?? = .none
        var hostLimitMiB: Double?
        for (key, e) in s.entries {
            func fail(_ m: String) -> DaemonError { .config(file: e.file, line: e.line, "\(key): \(m)") }
            func check<T>(_ body: () throws(DaemonError) -> T) throws(DaemonError) -> T {
                do { return try body() } catch { throw .config(file: e.file, line: e.line, "\(key): \(error)") }
            }
            let v = e.value
            switch key {
            case "zram-size":
                size = SizeExpression(v); sizeEntry = e
            case "zram-fraction":
                warnings.append("\(e.file):\(e.line): zram-fraction is deprecated, use zram-size")
                guard let f = Double(v), f >= 0 else { throw fail("expected a non-negative number, got '\(v)'") }
                fraction = f
            case "max-zram-size":
                warnings.append("\(e.file):\(e.line): max-zram-size is deprecated, use zram-size")
                if v == "none" { maxSizeMiB = .some(nil) } else {
                    guard let m = Double(v), m >= 0 else { throw fail("expected MiB or 'none', got '\(v)'") }
                    maxSizeMiB = .some(m)
                }
            case "host-memory-limit", "memory-limit":
                if v == "none" { hostLimitMiB = nil } else {
                    guard let m = Double(v), m >= 0 else { throw fail("expected MiB or 'none', got '\(v)'") }
                    hostLimitMiB = m
                }
            case "zram-resident-limit":
                spec.memLimit = try check { () throws(DaemonError) in try sizeValue(v, ramMiB: ramMiB) }
            case "compression-algorithm":
                let list = try check { () throws(DaemonError) in try AlgorithmList.parse(v) }
                if let first = list.first {
                    if DeviceSpec.algorithms.contains(first.name) {
                        spec.algorithm = first.name
                    } else {
                        // zram-generator only warns about unknown algorithms; configs written for
                        // the kernel (lzo-rle, ...) keep working with our default.
                        warnings.append("\(e.file):\(e.line): compression algorithm '\(first.name)' is not available (\(DeviceSpec.algorithms.joined(separator: ", "))); using \(spec.algorithm)")
                    }
                    for (k, pv) in first.params {
                        if k == "level", DeviceSpec.algorithms.contains(first.name) {
                            guard let l = Int32(pv) else { throw fail("level must be an integer, got '\(pv)'") }
                            spec.level = l
                        } else if k != "level" {
                            warnings.append("\(e.file):\(e.line): algorithm parameter '\(k)' is not supported, ignored")
                        }
                    }
                }
                spec.recompression = list.dropFirst().map(\.text)
                if !spec.recompression.isEmpty {
                    warnings.append("\(e.file):\(e.line): recompression not supported yet; ignoring '\(spec.recompression.joined(separator: " "))'")
                }
            case "swap-priority":
                guard let p = Int(v), (-1...32767).contains(p) else { throw fail("expected -1...32767, got '\(v)'") }
                spec.swapPriority = p
            case "fs-type": spec.fsType = v.isEmpty ? nil : v
            case "mount-point": spec.mountPoint = v.isEmpty ? nil : v
            case "options": spec.options = v
            case "writeback-device", "backing-dev":
                spec.writebackDevice = v.isEmpty || v == "none" ? nil : v
                if let w = spec.writebackDevice, !w.hasPrefix("/") { throw fail("expected an absolute path, got '\(v)'") }
            case "writeback-limit":
                guard let pages = UInt64(v) else { throw fail("expected a number of 4 KiB pages, got '\(v)'") }
                spec.writebackLimit = pages
            case "writeback-limit-enable":
                spec.writebackLimitEnable = try check { () throws(DaemonError) in try parseBool(v) }
            case "writeback-batch-size":
                guard let n = UInt32(v), n > 0 else { throw fail("expected a number above 0, got '\(v)'") }
                spec.writebackBatchSize = n
            case "compressed-writeback":
                spec.compressedWriteback = try check { () throws(DaemonError) in try parseBool(v) }
            case "writeback-packing":
                spec.writebackPacking = try check { () throws(DaemonError) in try parseBool(v) }
            case "writeback-idle-after":
                spec.writebackPolicy.idleAfter = try check { () throws(DaemonError) in try parseDuration(v) }
            case "writeback-on-pressure":
                spec.writebackPolicy.onPressure = try check { () throws(DaemonError) in try parseBool(v) }
            case "writeback-daily-limit":
                spec.writebackPolicy.dailyLimitPages = try check { () throws(DaemonError) in try ByteSize.parse(v) } / 4096
            case "socket": spec.socket = optionalPath(v)
            case "listen":
                spec.listen = optionalPath(v)
                if let l = spec.listen { _ = try check { () throws(DaemonError) in try HostPort.parse(l) } }
            case "stats-dir": spec.statsDir = optionalPath(v)
            case "chain-size":
                guard let n = Int(v) else { throw fail("expected \(DeviceSpec.chainSizes), got '\(v)'") }
                try check { () throws(DaemonError) in try DeviceSpec.validateChainSize(n) }
                spec.chainSize = n
            case "read-only":
                spec.readOnly = try check { () throws(DaemonError) in try parseBool(v) }
            case "tls-identities":
                spec.tlsIdentities = try check { () throws(DaemonError) in try parseIdentities(v) }
            default:
                warnings.append("\(e.file):\(e.line): unknown key '\(key)' in [\(s.name)], ignored")
            }
        }
        if let limit = hostLimitMiB, ramMiB > limit {
            warnings.append("\(s.file):\(s.line): [\(s.name)] skipped: host-memory-limit \(Int(limit)) MiB < RAM \(Int(ramMiB)) MiB")
            return nil
        }
        if fraction != nil || maxSizeMiB != nil {
            var mib = (fraction ?? 0.5) * ramMiB
            if let m = maxSizeMiB ?? 4096 { mib = min(mib, m) }
            let key = fraction != nil ? "zram-fraction" : "max-zram-size"
            let e = s.entries.first { $0.0 == key }?.1
            do { spec.diskSize = try SizeExpression.bytes(mib: mib.rounded(.down), text: "\(mib) MiB") } catch {
                throw .config(file: e?.file ?? s.file, line: e?.line ?? s.line, "\(key): \(error)")
            }
        } else {
            let e = sizeEntry
            do { spec.diskSize = try sizeValue(size.text, ramMiB: ramMiB) } catch {
                throw .config(file: e?.file ?? s.file, line: e?.line ?? s.line, "zram-size: \(error)")
            }
        }
        if spec.diskSize == 0 {
            warnings.append("\(s.file):\(s.line): [\(s.name)] skipped: zram-size is 0")
            return nil
        }
        if let level = spec.level {
            do { try DeviceSpec.validateLevel(level, for: spec.algorithm) } catch {
                throw .config(file: s.file, line: s.line, "compression-algorithm: \(error)")
            }
        }
        return spec
    }

    static func applyDaemonKeys(_ s: IniSection, to settings: inout DaemonSettings, warnings: inout [String]) throws(DaemonError) {
        for (key, e) in s.entries {
            func fail(_ m: String) -> DaemonError { .config(file: e.file, line: e.line, "\(key): \(m)") }
            let v = e.value
            switch key {
            case "control-socket": settings.controlSocket = optionalPath(v)
            case "stats-interval":
                do { settings.statsInterval = try DaemonSettings.parseStatsInterval(v) } catch { throw fail(error.description) }
            case "prometheus-file": settings.prometheusFile = optionalPath(v)
            case "metrics-listen":
                settings.metricsListen = optionalPath(v)
                if let m = settings.metricsListen {
                    do { _ = try HostPort.parse(m) } catch { throw fail(error.description) }
                }
            case "lock-memory":
                do { settings.lockMemory = try parseBool(v) } catch { throw fail(error.description) }
            case "auto-compact":
                do { settings.autoCompact = try parseBool(v) } catch { throw fail(error.description) }
            case "busy-poll-us":
                guard let n = Int(v), DaemonSettings.busyPollRange.contains(n) else {
                    throw fail("expected microseconds 0...10000, got '\(v)'")
                }
                settings.busyPollMicroseconds = n
            case "handshake-limit":
                guard let d = Double(v), DaemonSettings.handshakeLimitRange.contains(d) else {
                    throw fail("expected seconds 0...3600 (0 = none), got '\(v)'")
                }
                settings.handshakeLimitSeconds = d
            case "tls":
                guard let m = TLSMode(rawValue: v) else { throw fail("expected off, on or require, got '\(v)'") }
                settings.tls.mode = m
            case "tls-certificates": settings.tls.certificates = optionalPath(v)
            case "tls-psk": settings.tls.psk = optionalPath(v)
            case "tls-verify-peer":
                do { settings.tls.verifyPeer = try parseBool(v) } catch { throw fail(error.description) }
            case "payload-budget":
                do { settings.payloadBudgetBytes = try ByteSize.parse(v) } catch { throw fail(error.description) }
                guard settings.payloadBudgetBytes <= DaemonSettings.payloadBudgetMax else { throw fail("at most 1T, got '\(v)'") }
            default:
                warnings.append("\(e.file):\(e.line): unknown key '\(key)' in [zramnbd], ignored")
            }
        }
    }

    /// A size setting: "2G"-style with a unit suffix (memparse), else a zram-generator
    /// expression in MiB of `ram`.
    /// Either way at most ByteSize.maximum; a memparse-looking value ("-1G", "10E") that is no
    /// expression either gets memparse's message.
    static func sizeValue(_ text: String, ramMiB: Double) throws(DaemonError) -> UInt64 {
        guard ByteSize.hasUnitSuffix(text) else { return try SizeExpression(text).bytes(ramMiB: ramMiB) }
        let memparse: DaemonError
        do { return try ByteSize.parse(text) } catch { memparse = error }
        do { return try SizeExpression(text).bytes(ramMiB: ramMiB) } catch {
            throw ByteSize.looksLikeMemparse(text) ? memparse : error
        }
    }

    /// "alice bob" or "alice,bob": the TLS identities an export is limited to.
    static func parseIdentities(_ v: String) throws(DaemonError) -> [String] {
        let names = v.split(whereSeparator: { $0 == "," || $0 == " " }).map(String.init)
        guard !names.isEmpty else { throw .invalidValue("expected one or more names, got '\(v)'") }
        return names
    }

    static func optionalPath(_ v: String) -> String? { v.isEmpty || v == "none" ? nil : v }

    /// Seconds, or a number with s, m, h or d ("90", "30m", "1h"); 1 s to 10 years, or "none".
    static func parseDuration(_ v: String) throws(DaemonError) -> UInt32? {
        if v == "none" || v.isEmpty { return nil }
        let units: [Character: UInt64] = ["s": 1, "m": 60, "h": 3600, "d": 86400]
        var digits = Substring(v)
        var unit: UInt64 = 1
        if let last = v.last, let u = units[last] { unit = u; digits = digits.dropLast() }
        guard let n = UInt64(digits), n > 0, n <= 315_360_000 / unit else {
            throw .invalidValue("expected a duration like 90, 30m, 1h or 1d (at most 10 years), got '\(v)'")
        }
        return UInt32(n * unit)
    }

    static func parseBool(_ v: String) throws(DaemonError) -> Bool {
        switch v.lowercased() {
        case "1", "yes", "true", "on": return true
        case "0", "no", "false", "off": return false
        default: throw .invalidValue("expected yes or no, got '\(v)'")
        }
    }
}

/// zram-generator's compression-algorithm value: `lz4`, `zstd(level=3)`, `lzo-rle zstd(level=3) (type=idle)`.
struct AlgorithmList {
    struct Entry: Equatable {
        var name: String
        var params: [(String, String)]
        var text: String
        static func == (a: Entry, b: Entry) -> Bool {
            a.name == b.name && a.text == b.text && a.params.elementsEqual(b.params, by: { $0 == $1 })
        }
    }

    static func parse(_ value: String) throws(DaemonError) -> [Entry] {
        // By scalars: a blank followed by a combining mark is one Character, and would not
        // separate entries when the printed list (joined by blanks) is read again.
        let u = value.unicodeScalars
        func text(_ s: Substring.UnicodeScalarView) -> String { String(Substring(s)) }
        var entries: [Entry] = []
        var i = u.startIndex
        while i < u.endIndex {
            while i < u.endIndex, u[i] == " " || u[i] == "\t" { i = u.index(after: i) }
            if i == u.endIndex { break }
            let start = i
            while i < u.endIndex, u[i] != "(", u[i] != " ", u[i] != "\t" { i = u.index(after: i) }
            let name = text(u[start..<i])
            var params: [(String, String)] = []
            if i < u.endIndex, u[i] == "(" {
                guard let close = u[i...].firstIndex(of: ")") else {
                    throw .invalidValue("missing ')' in '\(value)'")
                }
                let inner = u[u.index(after: i)..<close]
                for p in inner.split(whereSeparator: { $0 == "," || $0 == " " || $0 == "\t" }) {
                    let kv = p.split(separator: "=", maxSplits: 1)
                    guard kv.count == 2, !kv[0].isEmpty else {
                        throw .invalidValue("expected key=value in '\(text(inner))', got '\(text(p))'")
                    }
                    params.append((text(kv[0]), text(kv[1])))
                }
                i = u.index(after: close)
            }
            let entryText = text(u[start..<i])
            // A parameter group without a name applies to recompression as a whole.
            entries.append(Entry(name: name, params: params, text: entryText))
        }
        if let first = entries.first, first.name.isEmpty {
            throw .invalidValue("the first entry must name an algorithm, got '\(first.text)'")
        }
        return entries
    }
}

/// An INI entry and where it came from.
struct IniEntry {
    var value: String
    var file: String
    var line: Int
}

struct IniSection {
    var name: String
    var file: String
    var line: Int
    /// Keys in first-seen order; a later assignment replaces the value and location.
    var entries: [(String, IniEntry)] = []

    mutating func set(_ key: String, _ entry: IniEntry) {
        if let i = entries.firstIndex(where: { $0.0 == key }) { entries[i].1 = entry } else { entries.append((key, entry)) }
    }
}

/// systemd-style INI: `[section]`, `key = value`, `#`/`;` comments. Sections with the same name
/// in several files merge; sections keep their first-seen order.
struct IniDocument {
    var sections: [IniSection] = []
    var warnings: [String] = []

    /// Reads one file. A section twice in the same file is an error (`file:line` of the second);
    /// across files, sections merge (drop-ins override the main file key by key).
    mutating func read(_ text: String, file: String) throws(DaemonError) {
        var current: Int?
        var lineNumber = 0
        var seenHere: [String: Int] = [:]
        for raw in text.split(separator: "\n", omittingEmptySubsequences: false) {
            lineNumber += 1
            let line = String(raw).trimmed()
            if line.isEmpty || line.hasPrefix("#") || line.hasPrefix(";") { continue }
            if line.hasPrefix("[") {
                guard line.hasSuffix("]"), line.count > 2 else {
                    warnings.append("\(file):\(lineNumber): malformed section header '\(line)', ignored")
                    current = nil
                    continue
                }
                let name = String(line.dropFirst().dropLast()).trimmed()
                if let first = seenHere[name] {
                    throw .config(file: file, line: lineNumber, "section [\(name)] appears twice in this file (first at line \(first))")
                }
                seenHere[name] = lineNumber
                if let i = sections.firstIndex(where: { $0.name == name }) {
                    current = i
                } else {
                    sections.append(IniSection(name: name, file: file, line: lineNumber))
                    current = sections.count - 1
                }
                continue
            }
            guard let eq = line.firstIndex(of: "=") else {
                warnings.append("\(file):\(lineNumber): expected 'key = value', got '\(line)', ignored")
                continue
            }
            let key = String(line[..<eq]).trimmed()
            var value = String(line[line.index(after: eq)...]).trimmed()
            if value.count >= 2, value.hasPrefix("\""), value.hasSuffix("\"") { value = String(value.dropFirst().dropLast()) }
            guard let c = current else {
                warnings.append("\(file):\(lineNumber): '\(key)' is outside of any section, ignored")
                continue
            }
            sections[c].set(key, IniEntry(value: value, file: file, line: lineNumber))
        }
    }
}

extension DaemonError {
    /// The same error, as a configuration error in `file` when it has no location yet.
    func located(in file: String) -> DaemonError {
        if case .invalidValue(let m) = self { return .config(file: file, line: 0, m) }
        return self
    }
}
