// libFuzzer entry for the daemon's configuration parsers: memparse sizes (ByteSize), zram-generator
// size expressions, the INI configuration file with its device and [zramnbd] keys, `ctl add`'s
// KEY=VALUE settings, HOST:PORT, compression-algorithm lists and zramctl's size printer. Built by
// scripts/fuzz.sh --long with the ZramDaemon files that parse input into one module, so it sees
// internal API. Checked: nothing traps, every size that parses is within the stated limit (16 TiB,
// ByteSize.maximum), and what a printer prints parses back to the same value. A violation traps.

private let ramChoices: [Double] = [0, 1, 512, 7_900, 65_536, 1_073_741_824]

private func be64(_ bytes: ArraySlice<UInt8>) -> UInt64 {
    bytes.prefix(8).reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
}

/// memparse, with the default and a fuzzed maximum, and the printers it should read back.
private func fuzzByteSize(_ input: ArraySlice<UInt8>) {
    let s = text(input)
    if let v = try? ByteSize.parse(s) {
        check(v <= ByteSize.maximum, "size above ByteSize.maximum")
        check((try? ByteSize.parse("\(v)")) == v && (try? ByteSize.parse("\(v)B")) == v
                     && (try? ByteSize.parse("0x" + String(v, radix: 16))) == v, "decimal/hex form does not round-trip")
        checkHuman(v)
    }
    // A small maximum, as a caller passing its own bound.
    let m = UInt64(input.first ?? 0) << (input.last.map { UInt64($0 % 64) } ?? 0)
    if let v = try? ByteSize.parse(s, maximum: m) { check(v <= m, "size above the caller's maximum") }
    _ = ByteSize.looksLikeMemparse(s)
    checkHuman(be64(input))
}

/// zramctl's form: whole units parse back to within the one rounded decimal it keeps.
private func checkHuman(_ v: UInt64) {
    let h = ByteSize.human(v)
    guard !h.contains("."), let back = try? ByteSize.parse(h, maximum: .max) else {
        check(h.contains(".") || v > ByteSize.maximum << 16, "human() printed '\(h)', which does not parse")
        return
    }
    let unit: UInt64 = v < 1024 ? 1 : 1 << UInt64((63 - v.leadingZeroBitCount) / 10 * 10)
    let diff = back > v ? back - v : v - back
    check(diff <= unit / 19 + 1, "human(\(v)) = '\(h)' reads back as \(back)")
}

/// zram-generator expressions in MiB of `ram`, and the size settings that take either form.
private func fuzzExpression(_ input: ArraySlice<UInt8>) {
    guard let mode = input.first else { return }
    let ram = ramChoices[Int(mode) % ramChoices.count]
    let s = text(input.dropFirst())
    if let v = try? SizeExpression(s).evaluate(["ram": ram]) { check(v.isFinite) }
    if let b = try? SizeExpression(s).bytes(ramMiB: ram) { check(b <= ByteSize.maximum, "expression above the maximum") }
}

private let echoShell = Shell { program in (0, Array(program.utf8)) }

/// Whole configurations: the input split into up to three files at NUL bytes.
private func fuzzConfigFile(_ input: ArraySlice<UInt8>) {
    guard let mode = input.first else { return }
    let ram = ramChoices[Int(mode) % ramChoices.count]
    let files = input.dropFirst().split(separator: 0, maxSplits: 2, omittingEmptySubsequences: false)
    let sources = files.enumerated().map { (name: "/etc/zramnbd.conf.d/\($0.offset).conf", text: text($0.element)) }
    // Never the real shell: a `set!` program's "output" is its own text, read as an expression.
    guard let loaded = try? ConfigFile.parse(sources, ramMiB: ram, shell: echoShell) else { return }
    checkSettings(loaded.settings)
}

private func checkSettings(_ settings: DaemonSettings) {
    // parse() ends with validate(); what it returns must pass it again.
    do { try settings.validate() } catch { fail("parsed settings fail validate(): \(error)") }
    for d in settings.devices { checkDevice(d) }
    check(settings.payloadBudgetBytes <= DaemonSettings.payloadBudgetMax)
}

private func checkDevice(_ d: DeviceSpec) {
    check(d.diskSize > 0 && d.diskSize <= ByteSize.maximum, "disk size \(d.diskSize) outside 1...maximum")
    check(d.memLimit <= ByteSize.maximum, "mem_limit \(d.memLimit) above the maximum")
    check(DeviceSpec.chainSizes.contains(d.chainSize))
    check(DeviceSpec.algorithms.contains(d.algorithm))
    if let l = d.listen { check((try? HostPort.parse(l)) != nil) }
}

/// `ctl DEVICE add KEY=VALUE...`: the words as the wire request carries them.
private func fuzzAdd(_ input: ArraySlice<UInt8>) {
    guard let mode = input.first else { return }
    let ram = ramChoices[Int(mode) % ramChoices.count]
    let words = text(input.dropFirst()).unicodeScalars.split(separator: " ").map { String(Substring($0)) }
    guard let pairs = try? ControlAction.keyValues(words) else { return }
    let name = ["zram1", "a", "zram-x.y_2"][Int(mode / 8) % 3]
    guard let spec = try? ConfigFile.deviceSpec(name: name, settings: pairs, ramMiB: ram) else { return }
    check(spec.name == name)
    checkDevice(spec)
    // The size given as bytes is the disk size, exactly.
    if let size = pairs.last(where: { $0.0 == "size" }), !pairs.contains(where: { ["zram-fraction", "max-zram-size"].contains($0.0) }),
       let v = try? ByteSize.parse(size.1) {
        check(spec.diskSize == v, "size=\(size.1) gave disk size \(spec.diskSize)")
    }
    // The request as ctl sends it reads back as the same request.
    let request = ControlRequest.add(name, pairs)
    guard let back = try? ControlRequest.parse(request.line), case .add(let n, let kv) = back else {
        fail("add request '\(request.line)' does not parse back")
    }
    check(n == name && kv.elementsEqual(pairs, by: { $0 == $1 }), "add request does not round-trip")
}

/// HOST:PORT and its printed form; algorithm lists re-joined from their entries' text;
/// booleans and stats intervals.
private func fuzzSmall(_ input: ArraySlice<UInt8>) {
    let s = text(input)
    if let hp = try? HostPort.parse(s) {
        check(hp.port > 0)
        if !hp.host.contains("]") && !hp.host.hasPrefix("[") {
            let printed = hp.host.contains(":") ? "[\(hp.host)]:\(hp.port)" : "\(hp.host):\(hp.port)"
            check((try? HostPort.parse(printed)) == hp, "'\(printed)' does not round-trip")
        }
    }
    if let list = try? AlgorithmList.parse(s) {
        let again = list.map(\.text).joined(separator: " ")
        guard let back = try? AlgorithmList.parse(again) else { fail("'\(again)' does not parse back") }
        check(back == list, "algorithm list '\(s)' does not round-trip")
    }
    if let d = try? DaemonSettings.parseStatsInterval(s) { check(DaemonSettings.statsIntervalRange.contains(d)) }
    _ = try? ConfigFile.parseBool(s)
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    dispatch(data, size, [fuzzByteSize, fuzzExpression, fuzzConfigFile, fuzzAdd, fuzzSmall])
}
