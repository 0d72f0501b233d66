// The configuration file: zram-generator's INI format and keys, plus the daemon's own.
//
//   /etc/zramnbd.conf, then /etc/zramnbd.conf.d/*.conf in file-name order; a later file's value
//   for a key replaces an earlier one. One [zramN] section per device, [zramnbd] for the daemon.
//   With --zram-generator-config, zram-generator's own files instead (ZramGeneratorConfig.swift).
//
// zram-generator's keys are read as zram-generator (src/config.rs) reads them: zram-size and
// zram-resident-limit are fasteval expressions in MiB (SizeExpression), `set!VAR = program` lines
// before the first section bind a program's output to VAR, and the INI syntax is rust-ini's.

import Codec
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
    /// there is no file at all (the caller then uses the default device). With
    /// `zram-generator-config = yes` in [zramnbd], zram-generator's files under `root` are read
    /// first (ZramGeneratorConfig) and `cmdline`'s systemd.zram applies.
    public static func load(path: String, ramMiB: Double, root: String = "/", cmdline: String? = nil) throws(DaemonError) -> LoadedConfig? {
        let files = fragments(of: path)
        if files.isEmpty { return nil }
        var sources: [(name: String, text: String)] = []
        for f in files {
            // A drop-in linked to /dev/null reads as empty.
            sources.append((f, try FileSystem.readText(f)))
        }
        if try wantsZramGenerator(sources) {
            return try ZramGeneratorConfig.load(root: root, ramMiB: ramMiB, cmdline: cmdline, extra: sources)
        }
        return try parse(sources, ramMiB: ramMiB)
    }

    /// zram-generator's `ram`: MemTotal in whole MiB (it truncates kB / 1024 to an integer).
    static func wholeMiB(_ ramMiB: Double) -> Double { ramMiB.isFinite && ramMiB > 0 ? ramMiB.rounded(.down) : 0 }

    /// Whether [zramnbd] says `zram-generator-config = yes` (the last file's value wins).
    static func wantsZramGenerator(_ sources: [(name: String, text: String)]) throws(DaemonError) -> Bool {
        var ini = IniDocument()
        for (name, text) in sources { try ini.read(text, file: name) }
        guard let e = ini.sections.first(where: { $0.name == "zramnbd" })?.entries.first(where: { $0.0 == "zram-generator-config" })?.1 else {
            return false
        }
        do { return try parseBool(e.value) } catch { throw .config(file: e.file, line: e.line, "zram-generator-config: \(error)") }
    }

    /// Resolves already-read files, given as (name, contents) in precedence order. `kernel` is
    /// the kernel command line's `systemd.zram` (see KernelCommandLine.zramOption): false means
    /// no devices at all, true adds zram0 with zram-generator's defaults when no file names it.
    public static func parse(_ sources: [(name: String, text: String)], ramMiB: Double,
                             kernel: Bool? = nil, shell: Shell = .system) throws(DaemonError) -> LoadedConfig {
        let ram = wholeMiB(ramMiB)
        var ini = IniDocument()
        for (name, text) in sources { try ini.read(text, file: name) }
        var warnings = ini.warnings
        var variables = try directives(ini.topLevel, ramMiB: ram, shell: shell, warnings: &warnings)
        variables["ram"] = ram
        var settings = DaemonSettings()
        var sections = ini.sections
        if kernel == true, !sections.contains(where: { $0.name == "zram0" }) {
            sections.append(IniSection(name: "zram0", file: "kernel command line (systemd.zram)", line: 0))
        }
        for section in sections {
            if section.name == "zramnbd" {
                try applyDaemonKeys(section, to: &settings, warnings: &warnings)
            } else if section.name.hasPrefix("zram") {
                if let d = try device(section, ramMiB: ram, variables: variables, warnings: &warnings) { settings.devices.append(d) }
            } else {
                warnings.append("\(section.file):\(section.line): ignoring section [\(section.name)] (expected [zramN] or [zramnbd])")
            }
        }
        if kernel == false {
            // zram-generator exits without creating anything; the daemon keeps its own settings.
            if !settings.devices.isEmpty { warnings.append("systemd.zram=0 on the kernel command line: no devices") }
            settings.devices = []
        }
        do { try settings.validate() } catch { throw error.located(in: sources.last?.name ?? "config") }
        return LoadedConfig(settings: settings, warnings: warnings, files: sources.map(\.name))
    }

    /// The lines before the first section: zram-generator's `set!VAR = program` runs `program`
    /// with /bin/sh and binds VAR to its output read as an expression (which may use `ram` and
    /// earlier variables). Returns the variables.
    static func directives(_ entries: [(String, IniEntry)], ramMiB: Double, shell: Shell,
                           warnings: inout [String]) throws(DaemonError) -> [String: Double] {
        var vars: [String: Double] = [:]
        for (key, e) in entries {
            guard let bang = key.firstIndex(of: "!") else {
                warnings.append("\(e.file):\(e.line): invalid outside-of-section key \(key), ignoring.")
                continue
            }
            let op = String(key[...bang]), name = String(key[key.index(after: bang)...])
            guard op == "set!" else {
                warnings.append("\(e.file):\(e.line): unknown outside-of-section operation \(op), ignoring.")
                continue
            }
            let where_ = "\(key): \(SizeExpression.shown(e.value))"
            let run: (status: Int32, output: [UInt8])
            do { run = try shell.run(e.value) } catch { throw .config(file: e.file, line: e.line, "\(where_): \(error)") }
            if run.status != 0 { warnings.append("\(e.file):\(e.line): \(where_) exited \(run.status)") }
            guard let text = String(validating: run.output, as: UTF8.self) else {
                throw .config(file: e.file, line: e.line, "\(where_): its output is not UTF-8")
            }
            var scope = vars
            scope["ram"] = ramMiB
            do { vars[name] = try SizeExpression(text).evaluateRaw(scope) } catch {
                throw .config(file: e.file, line: e.line, "\(where_): output '\(SizeExpression.shown(text))': \(error)")
            }
        }
        return vars
    }

    /// The keys of a [zramN] section (`device` reads them; ParsingTests checks the list).
    static let deviceKeys = [
        "zram-size", "zram-resident-limit", "compression-algorithm", "swap-priority", "fs-type", "mount-point", "options",
        "host-memory-limit", "memory-limit", "writeback-device", "backing-dev", "zram-fraction", "max-zram-size",
        "writeback-limit", "writeback-limit-enable", "writeback-batch-size", "compressed-writeback", "writeback-packing",
        "writeback-idle-after", "writeback-on-pressure", "writeback-daily-limit",
        "recomp-algorithm", "recompress-idle-after", "recompress-on-pressure", "recompress-arguments",
        "socket", "listen", "stats-dir", "chain-size", "read-only", "tls-identities",
    ]
    /// `ctl add`'s own spellings, in bytes and words as on the command line.
    static let addKeys = ["size", "mem-limit", "algorithm", "level", "dict", "deflate.winbits", "zstd.compact"]

    /// A device from `key=value` settings outside a file (`ctl DEVICE add ...`): the config keys,
    /// plus the command-line spellings `size` and `mem-limit` (bytes as `serve --size` reads them:
    /// util-linux's strtosize), `algorithm`, `level`, and algorithm_params' `dict` and
    /// `deflate.winbits` (set directly: a path may hold what the list syntax cannot).
    /// Errors are sentences about the device ("zram4: chain-size: ..."): there is no file or line.
    public static func deviceSpec(name: String, settings: [(String, String)], ramMiB: Double) throws(DaemonError) -> DeviceSpec {
        // Refused, not ignored as in a file: the device would be made without what was asked.
        if let unknown = settings.first(where: { !addKeys.contains($0.0) && !deviceKeys.contains($0.0) }) {
            throw .invalidValue("\(name): unknown key '\(unknown.0)' (keys: \((addKeys + deviceKeys).joined(separator: ", ")))")
        }
        var section = IniSection(name: name, file: name, line: 0)
        var algorithm: String?
        var level: String?
        var dictionary: String?
        var windowBits: Int32?
        var compactFrames: Bool?
        var fixed = FixedSizes()
        for (k, v) in settings {
            let entry = { (value: String) in IniEntry(value: value, file: name, line: 0) }
            switch k {
            // Bytes, not zram-size's MiB expression: set after the section is read.
            case "size": fixed.disk = try ByteSize.strtosize(v)
            case "mem-limit": fixed.mem = try ByteSize.strtosize(v)
            case "algorithm": algorithm = v
            case "level": level = v
            case "dict": dictionary = v
            case "deflate.winbits":
                guard let w = Int32(v) else { throw .invalidValue("\(name): deflate.winbits must be an integer, got '\(v)'") }
                windowBits = w
            case "zstd.compact":
                guard let on = compactFlag(v) else { throw .invalidValue("\(name): zstd.compact must be 0 or 1, got '\(v)'") }
                compactFrames = on
            default: section.set(k, entry(v))
            }
        }
        if algorithm != nil || level != nil {
            let a = algorithm ?? "lz4"
            try DeviceSpec.validateAlgorithm(a)
            section.set("compression-algorithm", IniEntry(value: level.map { "\(a)(level=\($0))" } ?? a, file: name, line: 0))
        }
        var warnings: [String] = []
        let ram = wholeMiB(ramMiB)
        guard var spec = try device(section, ramMiB: ram, variables: ["ram": ram], fixed: fixed,
                                    defaultAlgorithm: DeviceSpec.defaultAlgorithm, warnings: &warnings) else {
            // The file form's "NAME:0: [NAME] skipped: why" as "NAME: not added: why".
            let last = warnings.last ?? ""
            let why = last.firstRange(of: "skipped: ").map { String(last[$0.upperBound...]) } ?? last
            throw .invalidValue("\(name): not added: \(why)")
        }
        if dictionary != nil || windowBits != nil || compactFrames != nil {
            if let dictionary { spec.dictionary = dictionary }
            if let windowBits { spec.windowBits = windowBits }
            if let compactFrames { spec.compactFrames = compactFrames }
            do { try DeviceSpec.validateParameters(spec.primary) } catch { throw .invalidValue("\(name): \(error)") }
        }
        return spec
    }

    /// Sizes given in bytes rather than as zram-generator expressions (`ctl add size=1G`).
    struct FixedSizes {
        var disk: UInt64?
        var mem: UInt64?
    }

    /// A config file device without compression-algorithm gets the kernel's default, lzo-rle, as
    /// zram-generator leaves it (`ctl add` passes the CLI's lz4 instead).
    static let configDefaultAlgorithm = CompressionAlgorithm.lzoRle.rawValue

    static func device(_ s: IniSection, ramMiB: Double, variables: [String: Double], fixed: FixedSizes = FixedSizes(),
                       defaultAlgorithm: String = configDefaultAlgorithm,
                       warnings: inout [String]) throws(DaemonError) -> DeviceSpec? {
        do { try DeviceSpec.validateName(s.name) } catch { throw .config(file: s.file, line: s.line, error.description) }
        var spec = DeviceSpec.standard(name: s.name, diskSize: 0)
        spec.algorithm = defaultAlgorithm
        var sizeEntry: IniEntry?
        var residentEntry: IniEntry?
        var fraction: Double?
        var maxSizeMiB: UInt64?? = .none
        var hostLimitMiB: UInt64?
        for (key, e) in s.entries {
            func fail(_ m: String) -> DaemonError { .config(file: e.file, line: e.line, "\(key): \(m)") }
            func check<T>(_ body: () throws(DaemonError) -> T) throws(DaemonError) -> T {
                do { return try body() } catch { throw .config(file: e.file, line: e.line, "\(key): \(error)") }
            }
            /// The recompression algorithms (and arguments) of an algorithm list, unknown parameters warned about.
            func takeSecondaries(_ entries: ArraySlice<AlgorithmList.Entry>) throws(DaemonError) {
                for p in try check({ () throws(DaemonError) in try secondaries(entries, into: &spec) }) {
                    warnings.append("\(e.file):\(e.line): algorithm parameter '\(p)' is not supported, ignored")
                }
            }
            let v = e.value
            switch key {
            case "zram-size":
                // Syntax now, value later: zram-generator parses each line as it reads it.
                try check { () throws(DaemonError) in try SizeExpression(v).check() }
                sizeEntry = e
            case "zram-resident-limit":
                try check { () throws(DaemonError) in try SizeExpression(v).check() }
                residentEntry = e
            case "zram-fraction":
                warnings.append("\(e.file):\(e.line): zram-fraction is deprecated, use zram-size")
                guard let f = Double(v), f >= 0 else { throw fail("expected a non-negative number, got '\(v)'") }
                fraction = f
            case "max-zram-size":
                warnings.append("\(e.file):\(e.line): max-zram-size is deprecated, use zram-size")
                maxSizeMiB = .some(try check { () throws(DaemonError) in try optionalMiB(v) })
            case "host-memory-limit", "memory-limit":
                hostLimitMiB = try check { () throws(DaemonError) in try optionalMiB(v) }
            case "compression-algorithm":
                let list = try check { () throws(DaemonError) in try AlgorithmList.parse(v) }
                if let first = list.first {
                    if DeviceSpec.algorithms.contains(first.name) {
                        spec.algorithm = first.name
                    } else {
                        // zram-generator only warns about unknown algorithms (842, ...): the
                        // device keeps the default.
                        warnings.append("\(e.file):\(e.line): compression algorithm '\(first.name)' is not available (\(DeviceSpec.algorithms.joined(separator: ", "))); using \(spec.algorithm)")
                    }
                    // An algorithm we lack keeps the default's parameters: its own are not read.
                    var unknown = first.params.map(\.0).filter { $0 != "level" }
                    if DeviceSpec.algorithms.contains(first.name) {
                        let choice: DeviceSpec.AlgorithmChoice
                        (choice, unknown) = try check { () throws(DaemonError) in try algorithmChoice(first) }
                        spec.level = choice.level
                        spec.dictionary = choice.dictionary
                        spec.windowBits = choice.windowBits
                        spec.compactFrames = choice.compactFrames
                    }
                    for k in unknown {
                        warnings.append("\(e.file):\(e.line): algorithm parameter '\(k)' is not supported, ignored")
                    }
                }
                // zram-generator's later entries are the recompression algorithms, priority 1 on.
                try takeSecondaries(list.dropFirst())
            case "recomp-algorithm":
                spec.recompressionAlgorithms = []
                try takeSecondaries(try check { () throws(DaemonError) in try AlgorithmList.parse(v) }[...])
            case "recompress-idle-after":
                spec.postProcessing.recompressIdleAfter = try check { () throws(DaemonError) in try parseDuration(v) }
            case "recompress-on-pressure":
                spec.postProcessing.recompressOnPressure = try check { () throws(DaemonError) in try parseBool(v) }
            case "recompress-arguments":   // checked when the device is made (ZramPageStore)
                spec.postProcessing.recompressArguments = v
            case "swap-priority":
                guard let p = Int(v), (-1...32767).contains(p) else { throw fail("expected -1...32767, got '\(v)'") }
                spec.swapPriority = p
            case "fs-type": spec.fsType = v.isEmpty ? nil : v
            case "mount-point":
                do { spec.mountPoint = try verifyPath(key, v) } catch { throw .config(file: e.file, line: e.line, error.description) }
            case "options": spec.options = v
            case "writeback-device", "backing-dev":
                // 'none' and empty are ours (unset); anything else as zram-generator checks it.
                if v.isEmpty || v == "none" { spec.writebackDevice = nil } else {
                    do { spec.writebackDevice = try verifyPath(key, v) } catch { throw .config(file: e.file, line: e.line, error.description) }
                }
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
                spec.postProcessing.idleAfter = try check { () throws(DaemonError) in try parseDuration(v) }
            case "writeback-on-pressure":
                spec.postProcessing.onPressure = try check { () throws(DaemonError) in try parseBool(v) }
            case "writeback-daily-limit":
                spec.postProcessing.dailyLimitPages = try check { () throws(DaemonError) in try ByteSize.parse(v) } / 4096
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
        // zram-generator evaluates nothing for a device it leaves out for the host's memory.
        if let limit = hostLimitMiB, Double(limit) < ramMiB {
            warnings.append("\(s.file):\(s.line): [\(s.name)] skipped: host-memory-limit \(limit) MiB < RAM \(Int(ramMiB)) MiB")
            return nil
        }
        if let bytes = fixed.disk {
            spec.diskSize = bytes
        } else if fraction != nil || maxSizeMiB != nil {
            // zram-generator's deprecated path: floor(fraction × ram) MiB, then max-zram-size if
            // set. Unset, it is no limit in its code (its manual says 4096).
            var mib = ((fraction ?? 0.5) * ramMiB).rounded(.down)
            if let m = maxSizeMiB ?? nil { mib = min(mib, Double(m)) }
            let key = fraction != nil ? "zram-fraction" : "max-zram-size"
            let e = s.entries.first { $0.0 == key }?.1
            do { spec.diskSize = try SizeExpression.bytes(mib: mib, text: "\(mib) MiB") } catch {
                throw .config(file: e?.file ?? s.file, line: e?.line ?? s.line, "\(key): \(error)")
            }
        } else {
            let e = sizeEntry
            do { spec.diskSize = try SizeExpression(e?.value ?? "min(ram / 2, 4096)").bytes(ramMiB: ramMiB, variables: variables) } catch {
                throw .config(file: e?.file ?? s.file, line: e?.line ?? s.line, "zram-size: \(error)")
            }
            // zram-generator's warning for sizes that only make sense as a unit mistake.
            // In Double: ram × 1 MiB need not fit a UInt64. Truncated, as its integer division.
            let ratio = ramMiB >= 1 ? (Double(spec.diskSize) / (ramMiB * 1_048_576)).rounded(.down) : 0
            if ratio > 32 {
                let ratio = Int(ratio)
                warnings.append("\(e?.file ?? s.file):\(e?.line ?? s.line): \(s.name): zram-size (\(e?.value ?? "min(ram / 2, 4096)") = \(spec.diskSize)B) would require improbable compression ratio \(ratio) with available memory (\(Int(ramMiB))MB), units may be wrong")
            }
        }
        if let bytes = fixed.mem {
            spec.memLimit = bytes
        } else if let e = residentEntry {
            do { spec.memLimit = try SizeExpression(e.value).bytes(ramMiB: ramMiB, variables: variables) } catch {
                throw .config(file: e.file, line: e.line, "zram-resident-limit: \(error)")
            }
        }
        if spec.diskSize == 0 {
            warnings.append("\(s.file):\(s.line): [\(s.name)] skipped: zram-size is 0")
            return nil
        }
        do { try DeviceSpec.validateParameters(spec.primary) } catch {
            throw .config(file: s.file, line: s.line, "compression-algorithm: \(error)")
        }
        return spec
    }

    /// zram-generator's parse_optional_size: a whole number of MiB, or `none`.
    static func optionalMiB(_ v: String) throws(DaemonError) -> UInt64? {
        if v == "none" { return nil }
        guard let n = UInt64(v) else { throw .invalidValue("expected whole MiB or 'none', got '\(v)'") }
        return n
    }

    /// zram-generator's verify_mount_point (for mount-point and writeback-device): absolute,
    /// without `..`; returned without `.` components and repeated or trailing slashes.
    static func verifyPath(_ key: String, _ v: String) throws(DaemonError) -> String {
        guard v.hasPrefix("/") else { throw .invalidValue("\(key) \(v) is not absolute") }
        let parts = v.split(separator: "/", omittingEmptySubsequences: true)
        guard !parts.contains("..") else { throw .invalidValue("\(key) \"\(v)\" is not normalized") }
        return "/" + parts.filter { $0 != "." }.joined(separator: "/")
    }

    static func applyDaemonKeys(_ s: IniSection, to settings: inout DaemonSettings, warnings: inout [String]) throws(DaemonError) {
        for (key, e) in s.entries {
            func fail(_ m: String) -> DaemonError { .config(file: e.file, line: e.line, "\(key): \(m)") }
            let v = e.value
            switch key {
            case "control-socket": settings.controlSocket = optionalPath(v)
            case "zram-generator-config":   // acted on by load()
                do { _ = try parseBool(v) } catch { throw fail(error.description) }
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

extension ConfigFile {
    /// Recompression algorithms from an algorithm list: each named entry the next priority (its
    /// algorithm_params with it); a parameter group without a name, zram-generator's global
    /// recompression parameters, becomes what the recompression policy's runs pass to `recompress`.
    /// Returns the parameters it does not know ("foo of zstd"), for the caller to warn about.
    static func secondaries(_ entries: ArraySlice<AlgorithmList.Entry>, into spec: inout DeviceSpec) throws(DaemonError) -> [String] {
        var unknown: [String] = []
        for entry in entries {
            if entry.name.isEmpty {
                spec.postProcessing.recompressArguments = entry.params.map { $0.1.isEmpty ? $0.0 : "\($0.0)=\($0.1)" }.joined(separator: " ")
                continue
            }
            let (choice, u) = try algorithmChoice(entry)
            unknown += u.map { "\($0) of \(entry.name)" }
            spec.recompressionAlgorithms.append(choice)
        }
        return unknown
    }

    /// `zstd.compact`'s value: 0 or 1.
    static func compactFlag(_ v: String) -> Bool? { v == "1" ? true : v == "0" ? false : nil }

    /// An entry's algorithm_params as the kernel names them (level, dict, deflate.winbits; and
    /// zramnbd's zstd.compact), and the names of any others. Values are checked for form here; DeviceSpec.validate checks
    /// they suit the algorithm, and the dictionary is read when the device is made.
    static func algorithmChoice(_ entry: AlgorithmList.Entry) throws(DaemonError) -> (DeviceSpec.AlgorithmChoice, [String]) {
        var choice = DeviceSpec.AlgorithmChoice(name: entry.name)
        var unknown: [String] = []
        for (k, pv) in entry.params {
            switch k {
            case "level":
                guard let l = Int32(pv) else { throw .invalidValue("level of \(entry.name) must be an integer, got '\(pv)'") }
                choice.level = l
            case "dict":
                guard !pv.isEmpty else { throw .invalidValue("dict of \(entry.name) needs a path") }
                choice.dictionary = pv
            case "deflate.winbits":
                guard let w = Int32(pv) else { throw .invalidValue("deflate.winbits of \(entry.name) must be an integer, got '\(pv)'") }
                choice.windowBits = w
            case "zstd.compact":
                guard let on = compactFlag(pv) else { throw .invalidValue("zstd.compact of \(entry.name) must be 0 or 1, got '\(pv)'") }
                choice.compactFrames = on
            default:
                unknown.append(k)
            }
        }
        return (choice, unknown)
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
                    // zram-generator passes parameters through as text; a bare word is a
                    // parameter without a value (its tests use "(recompargs)").
                    let kv = p.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                    params.append((text(kv[0]), kv.count == 2 ? text(kv[1]) : ""))
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

/// rust-ini's syntax, as zram-generator reads it: `[section]`, `key = value` or `key: value`,
/// `#`/`;` comment lines, values in "double" or 'single' quotes, backslash escapes and a
/// trailing backslash continuing a value on the next line. Sections with the same name merge,
/// in one file as across files (zram-generator applies each in turn to the same device);
/// sections keep their first-seen order.
struct IniDocument {
    var sections: [IniSection] = []
    /// Entries before the first section header of each file (zram-generator's directives).
    var topLevel: [(String, IniEntry)] = []
    var warnings: [String] = []

    mutating func read(_ text: String, file: String) throws(DaemonError) {
        var current: Int?
        var lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        if let first = lines.first, first.hasPrefix("\u{FEFF}") { lines[0] = String(first.dropFirst()) }   // rust-ini skips a BOM
        var index = 0
        while index < lines.count {
            let lineNumber = index + 1
            var line = lines[index].trimmed()
            index += 1
            if line.isEmpty || line.hasPrefix("#") || line.hasPrefix(";") { continue }
            if line.hasPrefix("[") {
                // rust-ini reads a section name up to ']'; without one it fails at the end of the
                // file, where zram-generator stops with that error.
                guard let close = line.firstIndex(of: "]") else {
                    throw .config(file: file, line: lineNumber, "section header '\(line)' has no closing ']'")
                }
                let after = String(line[line.index(after: close)...]).trimmed()
                guard after.isEmpty else {
                    throw .config(file: file, line: lineNumber, "unexpected '\(after)' after section header '\(line[...close])'")
                }
                let name = String(line[line.index(after: line.startIndex)..<close]).trimmed()
                if let i = sections.firstIndex(where: { $0.name == name }) {
                    current = i
                } else {
                    sections.append(IniSection(name: name, file: file, line: lineNumber))
                    current = sections.count - 1
                }
                continue
            }
            guard let sep = line.firstIndex(where: { $0 == "=" || $0 == ":" }) else {
                warnings.append("\(file):\(lineNumber): expected 'key = value', got '\(line)', ignored")
                continue
            }
            let key = String(line[..<sep]).trimmed()
            guard !key.isEmpty else { throw .config(file: file, line: lineNumber, "missing key before '\(line[sep])'") }
            // A backslash at the very end continues the value on the next line (rust-ini).
            while Self.trailingBackslashes(line) % 2 == 1, index < lines.count {
                line = String(line.dropLast()) + lines[index]
                index += 1
            }
            let raw = String(line[line.index(after: line.firstIndex(where: { $0 == "=" || $0 == ":" }) ?? line.startIndex)...])
            let value: String
            do { value = try Self.value(raw) } catch { throw .config(file: file, line: lineNumber, "\(key): \(error)") }
            let entry = IniEntry(value: value, file: file, line: lineNumber)
            if let c = current { sections[c].set(key, entry) } else { topLevel.append((key, entry)) }
        }
    }

    static func trailingBackslashes(_ s: String) -> Int {
        var n = 0
        for c in s.reversed() { if c == "\\" { n += 1 } else { break } }
        return n
    }

    /// rust-ini's parse_val: leading blanks dropped; quoted parts kept as written (quotes
    /// removed), the rest trimmed; escapes \0 \a \b \t \r \n \xHHHH, any other \c is c.
    static func value(_ raw: String) throws(DaemonError) -> String {
        var chars = Array(raw.unicodeScalars)[...]
        while let c = chars.first, c == " " || c == "\t" { chars = chars.dropFirst() }
        var out = ""
        var first = true
        while !chars.isEmpty {
            if let q = chars.first, q == "\"" || q == "'" {
                chars = chars.dropFirst()
                guard let end = chars.firstIndex(of: q) else { throw .invalidValue("missing closing \(q) in \(raw.trimmed())") }
                out += try unescape(chars[..<end])
                chars = chars[(end + 1)...]
                first = false
                continue
            }
            var plain = try unescape(chars)
            chars = chars[chars.endIndex...]
            // rust-ini trims the whole first part, only the end of a part after a quote.
            plain = first ? plain.trimmed() : String(plain.reversed().drop(while: { $0 == " " || $0 == "\t" || $0 == "\r" }).reversed())
            out += plain
        }
        return out
    }

    static func unescape(_ s: ArraySlice<Unicode.Scalar>) throws(DaemonError) -> String {
        var out = String.UnicodeScalarView()
        var i = s.startIndex
        while i < s.endIndex {
            let c = s[i]
            i += 1
            guard c == "\\" else { out.append(c); continue }
            guard i < s.endIndex else { out.append("\\"); break }
            let e = s[i]
            i += 1
            switch e {
            case "0": out.append("\u{0}")
            case "a": out.append("\u{7}")
            case "b": out.append("\u{8}")
            case "t": out.append("\t")
            case "r": out.append("\r")
            case "n": out.append("\n")
            case "x":
                guard i + 4 <= s.endIndex, let code = UInt32(String(String.UnicodeScalarView(s[i..<(i + 4)])), radix: 16),
                      let scalar = Unicode.Scalar(code) else {
                    throw .invalidValue("unknown character in \\xHHHH form")
                }
                out.append(scalar)
                i += 4
            default: out.append(e)
            }
        }
        return String(out)
    }
}

extension DaemonError {
    /// The same error, as a configuration error in `file` when it has no location yet.
    func located(in file: String) -> DaemonError {
        if case .invalidValue(let m) = self { return .config(file: file, line: 0, m) }
        return self
    }
}
