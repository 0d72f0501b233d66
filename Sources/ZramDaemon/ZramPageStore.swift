// A ZramDevice as the daemon's PageStore (its NBD side is in ZramDeviceFactory.swift).
import Codec
import NBD
import Posix
import ZramDevice

final class ZramPageStore: PageStore, @unchecked Sendable {  // @unchecked: ZramDevice is thread-safe
    let device: ZramDevice
    let size: UInt64
    /// zram's max_comp_streams: one stream per online CPU.
    let streams = Threads.onlineCPUs
    /// What NBD clients asked of the device, on every socket that exports it.
    let io = ExportStatistics()

    init(_ spec: DeviceSpec) throws(DaemonError) {
        // DeviceSpec.validate bounds both; the conversions are checked anyway, never trapping.
        guard let diskSize = Int(exactly: spec.diskSize), let memLimit = Int(exactly: spec.memLimit) else {
            throw .invalidValue("\(spec.name): disk size \(spec.diskSize) or mem_limit \(spec.memLimit) is too large")
        }
        do {
            let primary = try Self.parameters(spec.primary)
            var config = ZramConfig(name: spec.name, diskSize: diskSize, algorithm: primary.algorithm,
                                    level: spec.level, chainSize: spec.chainSize, memLimit: memLimit)
            config.windowBits = primary.parameters.windowBits
            config.dictionary = primary.parameters.dictionary
            config.compactFrames = primary.parameters.compactFrames
            device = try ZramDevice(config)
        } catch let e as ZramError {
            throw .device("\(spec.name): \(ZramPageStore.describe(e))")
        } catch {
            throw .device("\(spec.name): \(error)")
        }
        size = UInt64(device.diskSize)
        do throws(ZramError) {
            try device.setCompressedWriteback(spec.compressedWriteback)
            try device.setWritebackPacking(spec.writebackPacking)
            try device.setWritebackBatchSize(spec.writebackBatchSize)
            device.setWritebackLimit(spec.writebackLimit)
            device.setWritebackLimitEnabled(spec.writebackLimitEnable)
            if let path = spec.writebackDevice { try device.setBackingDevice(path) }
            if spec.postProcessing.recompresses {
                do { _ = try RecompressRequest.parse(spec.postProcessing.recompressArguments) } catch {
                    throw ZramError.invalidArgument("recompress-arguments '\(spec.postProcessing.recompressArguments)': \(Self.describe(error))")
                }
            }
            for (i, a) in spec.recompressionAlgorithms.enumerated() {
                let p = try Self.parameters(a)
                try device.setRecompressionAlgorithm(p.algorithm, parameters: p.parameters, priority: i + 1)
            }
        } catch {
            throw .device("\(spec.name): \(ZramPageStore.describe(error))")
        }
    }

    /// A predecessor's device (an upgrade), from its state memfds: the data, counters,
    /// algorithms and backing device come from the state; the spec's writeback settings are
    /// applied again.
    /// `recovering`: the state a crash left (ZramDevice(recovering:)), not a quiesced hand-over.
    init(attaching fds: DeviceStateFDs, spec: DeviceSpec, recovering: Bool = false) throws(DaemonError) {
        do {
            device = recovering ? try ZramDevice(recovering: fds) : try ZramDevice(attaching: fds)
            try device.setCompressedWriteback(spec.compressedWriteback)
            try device.setWritebackPacking(spec.writebackPacking)
            try device.setWritebackBatchSize(spec.writebackBatchSize)
            device.setWritebackLimit(spec.writebackLimit)
            device.setWritebackLimitEnabled(spec.writebackLimitEnable)
        } catch {
            let m = ZramPageStore.describe(error)
            throw .device(m.hasPrefix(spec.name + ": ") ? m : "\(spec.name): \(m)")   // the state's messages name the device
        }
        guard device.name == spec.name else { throw .device("\(spec.name): the state is device \(device.name)'s") }
        size = UInt64(device.diskSize)
    }

    /// A configured algorithm and its parameters, its dictionary file read now (once).
    static func parameters(_ c: DeviceSpec.AlgorithmChoice) throws(ZramError) -> (algorithm: CompressionAlgorithm, parameters: AlgorithmParameters) {
        guard let a = CompressionAlgorithm(rawValue: c.name) else { throw .invalidArgument("unknown algorithm \(c.name)") }
        var p = AlgorithmParameters(level: c.level, windowBits: c.windowBits, compactFrames: c.compactFrames)
        if let path = c.dictionary {
            do { p.dictionary = try CompressionDictionary.load(path: path) } catch { throw .invalidArgument("dict: \(error)") }
        }
        return (a, p)
    }

    static func describe(_ e: ZramError) -> String {
        switch e {
        case .outOfRange: return "range outside the device"
        case .noSpace: return "out of memory: mem_limit reached or the pool is full"
        case .ioError: return "a page failed to compress or decompress"
        case .notInitialized: return "device not initialised"
        case .busy: return "device busy"
        case .noBackingDevice: return "no backing device (set one with backing-dev PATH)"
        case .invalidArgument(let m), .outOfMemory(let m), .incompatibleState(let m): return m
        }
    }

    func snapshot(classes: Bool) -> DeviceSnapshot {
        var s = DeviceSnapshot(name: device.name)
        s.stats = device.stats()
        s.algorithm = device.algorithm.rawValue
        s.level = device.level
        s.streams = streams
        s.compAlgorithmText = device.compAlgorithmText
        if classes { s.classesText = device.classesText }
        s.recompAlgorithmText = device.recompAlgorithmText
        s.backingDev = device.backingDevicePath
        s.writebackLimit = device.writebackLimit
        s.writebackLimitEnable = device.writebackLimitEnabled
        s.writebackBatchSize = device.writebackBatchSize
        s.compressedWriteback = device.compressedWriteback
        s.writebackPacking = device.writebackPacking
        s.io = io.read()
        return s
    }

    func shutdown() { device.closeBackingDevice() }

    func compact() throws(DaemonError) -> UInt64 {
        do { return UInt64(try device.compact()) } catch { throw .device("\(device.name): \(ZramPageStore.describe(error))") }
    }

    func reset() throws(DaemonError) {
        do { try device.reset() } catch { throw .device("\(device.name): \(ZramPageStore.describe(error))") }
    }

    func setMemLimit(_ bytes: UInt64) throws(DaemonError) {
        guard let limit = Int(exactly: bytes), bytes <= ByteSize.maximum else {
            throw .invalidValue("invalid mem_limit \(bytes): too large (at most \(ByteSize.human(ByteSize.maximum)))")
        }
        do { try device.setMemLimit(limit) } catch { throw .device("\(device.name): \(ZramPageStore.describe(error))") }
    }

    func resetMemUsedMax() throws(DaemonError) { device.resetMemUsedMax() }

    var compactablePages: Int { device.compactablePages }
}

// MARK: zram's post-processing attributes (idle, writeback and its settings, backing_dev)

extension ZramPageStore {
    func writeAttribute(_ name: String, _ value: String) throws(DaemonError) -> [String] {
        let fail = { [device] (m: String) in DaemonError.invalidValue("\(device.name): \(name): \(m)") }
        /// The device's answer, its error in the daemon's words (`busy` as `busyMessage` says it).
        func apply<T>(busyMessage: String? = nil, _ body: () throws(ZramError) -> T) throws(DaemonError) -> T {
            do { return try body() } catch {
                if error == .busy, let busyMessage { throw fail(busyMessage) }
                throw .device("\(device.name): \(name): \(ZramPageStore.describe(error))")
            }
        }
        switch name {
        case "idle":
            if value == "all" { try apply { () throws(ZramError) in try device.markIdle(olderThan: nil) }; return [] }
            guard let age = KernelNumber.parse(value, base: 0), let seconds = UInt32(exactly: age) else {
                throw fail("expected 'all' or an age in seconds, got '\(value)'")
            }
            try apply { () throws(ZramError) in try device.markIdle(olderThan: seconds) }
            return []
        case "writeback":
            let report = try apply { () throws(ZramError) in
                try device.writeback(try WritebackRequest.parse(value, pageCount: device.pageCount))
            }
            let line = Self.describe(report)
            if let stop = report.stop { throw .device("\(device.name): \(line), then stopped: \(stop) (errno \(stop.errno))") }
            return [line]
        case "recomp_algorithm":
            var algorithm: String?, priority = 1
            for word in value.split(separator: " ") {
                let kv = word.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                switch (kv[0], kv.count > 1 ? String(kv[1]) : "") {
                case ("algo", let v) where !v.isEmpty: algorithm = v
                case ("priority", let v):
                    guard let p = Int(v) else { throw fail("priority=\(v) is not a number") }
                    priority = p
                default: throw fail("expected algo=NAME [priority=1..3], got '\(word)'")
                }
            }
            guard let algorithm else { throw fail("expected algo=NAME [priority=1..3]") }
            let codec: CompressionAlgorithm
            do { codec = try CompressionAlgorithm(name: algorithm) } catch {
                throw fail("\(error) (\(CompressionAlgorithm.allCases.map(\.rawValue).joined(separator: ", ")))")
            }
            try apply(busyMessage: "pages recompressed with priority \(priority)'s algorithm are stored; it changes only while none are") {
                () throws(ZramError) in try device.setRecompressionAlgorithm(codec, priority: priority)
            }
            return []
        case "algorithm_params":
            // zram 6.12's algorithm_params: which algorithm (priority=N or algo=NAME), then all of
            // its parameters: what is not given goes back to the default, as in the kernel.
            var priority: Int?, name: String?, level: Int32?, windowBits: Int32?, dictPath: String?, compact: Bool?
            for word in value.split(separator: " ") {
                let kv = word.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                let v = kv.count > 1 ? String(kv[1]) : ""
                switch kv[0] {
                case "priority":
                    guard let p = Int(v), (0...3).contains(p) else { throw fail("priority=\(v) is not 0...3") }
                    priority = p
                case "algo" where !v.isEmpty: name = v
                case "level":
                    guard let l = Int32(v) else { throw fail("level=\(v) is not a number") }
                    level = l
                case "deflate.winbits":
                    guard let w = Int32(v) else { throw fail("deflate.winbits=\(v) is not a number") }
                    windowBits = w
                case "dict":
                    guard v.hasPrefix("/") else { throw fail("dict=\(v) is not an absolute path") }
                    dictPath = v
                case "zstd.compact":   // beyond the kernel
                    guard let on = ConfigFile.compactFlag(v) else { throw fail("zstd.compact=\(v) is not 0 or 1") }
                    compact = on
                default: throw fail("expected priority=N or algo=NAME, then level=N, dict=PATH, deflate.winbits=N, zstd.compact=0|1; got '\(word)'")
                }
            }
            let secondaries = device.recompressionAlgorithms
            if priority == nil, let name {
                if device.algorithm.rawValue == name { priority = 0 }
                else { priority = secondaries.first { $0.algorithm.rawValue == name }?.priority }
                guard priority != nil else { throw fail("algo=\(name) is neither comp_algorithm nor a recomp_algorithm") }
            }
            guard let priority else { throw fail("say which algorithm: priority=N or algo=NAME") }
            let algorithm: CompressionAlgorithm
            if priority == 0 {
                algorithm = device.algorithm
            } else {
                guard let current = secondaries.first(where: { $0.priority == priority }) else {
                    throw fail("no recomp_algorithm at priority \(priority)")
                }
                algorithm = current.algorithm
            }
            var parameters = AlgorithmParameters(level: level, windowBits: windowBits, compactFrames: compact)
            // Read once, now: every stream of the priority shares what was read.
            if let dictPath {
                do { parameters.dictionary = try CompressionDictionary.load(path: dictPath) } catch { throw fail("dict: \(error)") }
            }
            try setParameters(parameters, of: algorithm, priority: priority, fail: fail, apply: apply)
            return []
        case "train_dict":
            return try trainDictionary(value, fail: fail, apply: apply)
        case "recompress":
            let report = try apply { () throws(ZramError) in try device.recompress(try RecompressRequest.parse(value)) }
            return [Self.describe(report)]
        case "writeback_limit":
            guard let pages = KernelNumber.parse(value, base: 10) else { throw fail("expected a number of 4 KiB pages, got '\(value)'") }
            device.setWritebackLimit(pages)
            return []
        case "writeback_limit_enable":
            guard let v = KernelNumber.parse(value, base: 10) else { throw fail("expected 0 or 1, got '\(value)'") }
            device.setWritebackLimitEnabled(v != 0)
            return []
        case "writeback_batch_size":
            guard let v = KernelNumber.parse(value, base: 10), let n = UInt32(exactly: v), n > 0 else {
                throw fail("expected a number above 0, got '\(value)'")
            }
            try apply { () throws(ZramError) in try device.setWritebackBatchSize(n) }
            return []
        case "compressed_writeback":
            guard let on = KernelNumber.parseBool(value) else { throw fail("expected 0 or 1, got '\(value)'") }
            try apply(busyMessage: "pages are written back \(on ? "uncompressed" : "compressed"); it changes only while nothing is written back") {
                () throws(ZramError) in try device.setCompressedWriteback(on)
            }
            return []
        case "writeback_packing":
            guard let on = KernelNumber.parseBool(value) else { throw fail("expected 0 or 1, got '\(value)'") }
            try apply(busyMessage: "pages are written back \(on ? "unpacked" : "packed"); it changes only while nothing is written back") {
                () throws(ZramError) in try device.setWritebackPacking(on)
            }
            return []
        case "backing_dev":
            guard value == "none" || value.hasPrefix("/") else { throw fail("'\(value)' is not an absolute path") }
            try apply(busyMessage: "pages are on the current backing device; it changes only while nothing is written back") {
                () throws(ZramError) in try device.setBackingDevice(value == "none" ? nil : value)
            }
            return []
        case "block_state":
            var range: Range<Int>? = nil
            if !value.isEmpty {
                let ends = value.split(separator: "-", maxSplits: 1, omittingEmptySubsequences: false)
                guard ends.count == 2, let lo = Int(ends[0]), let hi = Int(ends[1]), lo >= 0, lo <= hi, hi < Int.max else {
                    throw fail("expected LO-HI page numbers, got '\(value)'")
                }
                range = lo..<(hi + 1)
            }
            return device.blockState(range).split(separator: "\n").map(String.init)
        default:
            throw fail("unknown attribute")
        }
    }

    /// `train_dict [size=BYTES] [sample=PAGES] [output=PATH] [priority=N]`, beyond the kernel:
    /// trains a zstd dictionary from a spread sample of the stored pages and installs it for a
    /// zstd recomp_algorithm (its other parameters kept), after which `recompress` uses it.
    private func trainDictionary(_ value: String, fail: (String) -> DaemonError,
                                 apply: (String?, () throws(ZramError) -> Void) throws(DaemonError) -> Void) throws(DaemonError) -> [String] {
        var size = DictionaryTrainer.defaultSize, sample = Self.defaultTrainingSample
        var output: String?, priority: Int?
        for word in value.split(separator: " ") {
            let kv = word.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let v = kv.count > 1 ? String(kv[1]) : ""
            switch kv[0] {
            case "size":
                let n: UInt64
                do { n = try ByteSize.parse(v) } catch { throw fail("size=\(v): \(error)") }
                guard let s = Int(exactly: n), DictionaryTrainer.sizes.contains(s) else {
                    throw fail("size=\(v) is outside \(DictionaryTrainer.sizes.lowerBound)...\(DictionaryTrainer.sizes.upperBound) bytes")
                }
                size = s
            case "sample":
                guard let n = Int(v), (1...ZramDevice.maxSamplePages).contains(n) else {
                    throw fail("sample=\(v) is not a number of pages in 1...\(ZramDevice.maxSamplePages)")
                }
                sample = n
            case "output":
                guard v.hasPrefix("/") else { throw fail("output=\(v) is not an absolute path") }
                output = v
            case "priority":
                guard let p = Int(v), (1...3).contains(p) else {
                    throw fail("priority=\(v) is not 1...3 (the primary's pages are the ones trained from: it is always busy)")
                }
                priority = p
            default: throw fail("expected size=BYTES, sample=PAGES, output=PATH, priority=1..3; got '\(word)'")
            }
        }
        let secondaries = device.recompressionAlgorithms
        guard let p = priority ?? secondaries.first(where: { $0.algorithm == .zstd })?.priority else {
            throw fail("no zstd recomp_algorithm to train for: set one (recomp-algorithm algo=zstd priority=N)")
        }
        guard let target = secondaries.first(where: { $0.priority == p }) else { throw fail("no recomp_algorithm at priority \(p)") }
        guard target.algorithm == .zstd else {
            throw fail("priority \(p)'s algorithm is \(target.algorithm.rawValue); train-dict makes zstd dictionaries")
        }
        // Before the work: the priority's dictionary cannot change under pages that use it.
        let busy = "pages recompressed at priority \(p) are stored; its dictionary changes only while none are"
        guard !device.hasPages(priority: p) else { throw fail(busy) }
        let started = Clock.monotonicNanoseconds()
        var samples: [UInt8] = []
        try apply(nil) { () throws(ZramError) in samples = try device.samplePages(sample) }
        guard !samples.isEmpty else { throw fail("no compressed pages are stored to train from") }
        let pages = samples.count / 4096
        var parameters = device.parameters(priority: p) ?? AlgorithmParameters()
        do {
            let bytes = try DictionaryTrainer.train(samples: samples, sampleSize: 4096, size: size)
            parameters.dictionary = try CompressionDictionary(contents: bytes, path: output)
        } catch {
            throw fail("\(error)")
        }
        // The sample and the trainer's scratch (tens of MiB) stay in glibc's heap once freed
        // (its mmap threshold rises after the first big free): give them back.
        samples = []
        Heap.trim()
        guard let dictionary = parameters.dictionary else { throw fail("no dictionary") }
        if let output {
            let (dir, name) = try FileSystem.splitFileName(output)
            do { try DirectoryHandle(path: dir, followLink: true).writeAtomically(name, bytes: dictionary.contents) } catch {
                throw fail("output: \(error)")
            }
        }
        try setParameters(parameters, of: .zstd, priority: p, fail: fail, apply: apply)
        let seconds = Double(Clock.monotonicNanoseconds() - started) / 1e9
        return ["trained a \(ByteSize.human(UInt64(dictionary.count))) zstd dictionary (ID \(dictionary.zstdID)) from \(pages) pages in "
                + StatusReport.fixed2(seconds) + " s; priority \(p) uses it" + (output.map { ", saved as \($0)" } ?? "")]
    }

    /// Pages `train-dict` samples unless told: 32 MiB, enough that more changes the result by
    /// about a percent (measured on the bench corpora), and a bounded pause in recompression.
    static let defaultTrainingSample = 8192

    /// Gives `priority` (0 = the primary) new algorithm_params. The same ones again change
    /// nothing and succeed; others are refused with EBUSY while pages compressed with the current
    /// ones are stored, so no page is read with another dictionary than its own.
    private func setParameters(_ parameters: AlgorithmParameters, of algorithm: CompressionAlgorithm, priority: Int,
                               fail: (String) -> DaemonError,
                               apply: (String?, () throws(ZramError) -> Void) throws(DaemonError) -> Void) throws(DaemonError) {
        do { _ = try algorithm.prepare(parameters) } catch { throw fail("\(error)") }   // bad input: its own error, before busy
        if device.parameters(priority: priority) == parameters { return }
        if priority == 0 {
            try apply("pages are stored; the primary algorithm's parameters change only while none are") {
                () throws(ZramError) in try device.setAlgorithm(algorithm, parameters: parameters)
            }
        } else {
            try apply("pages recompressed at priority \(priority) are stored; its parameters change only while none are") {
                () throws(ZramError) in try device.setRecompressionAlgorithm(algorithm, parameters: parameters, priority: priority)
            }
        }
    }

    /// "recompressed 3100 of 4000 pages tried (saved 5.1 MiB), 200 incompressible, in 0.82 s".
    static func describe(_ r: RecompressReport) -> String {
        "recompressed \(r.recompressed) of \(r.tried) pages tried (saved \(ByteSize.human(UInt64(r.bytesSaved)))), "
            + "\(r.incompressible) incompressible, in " + StatusReport.fixed2(r.seconds) + " s"
    }

    /// "wrote back 12034 pages (47.0 MiB, freed 18.2 MiB) in 0.41 s".
    static func describe(_ r: WritebackReport) -> String {
        var s = "wrote back \(r.written) pages (\(ByteSize.human(UInt64(r.written) * 4096)), freed \(ByteSize.human(UInt64(r.bytesFreed)))) in "
            + StatusReport.fixed2(r.seconds) + " s"
        if r.skipped > 0 { s += ", \(r.skipped) changed meanwhile and stayed" }
        if r.failed > 0 { s += ", \(r.failed) failed to write and stayed" }
        return s
    }
}

/// Numbers as the kernel's sysfs parsers take them (kstrtoull, kstrtobool): an optional
/// trailing newline, base 10 or, with base 0, C's 0x and 0 prefixes.
enum KernelNumber {
    static func parse(_ text: String, base: Int) -> UInt64? {
        var t = Substring(text)
        if t.hasSuffix("\n") { t = t.dropLast() }
        if t.hasPrefix("+") { t = t.dropFirst() }
        guard !t.isEmpty else { return nil }
        if base == 0 {
            if t.hasPrefix("0x") || t.hasPrefix("0X") { return UInt64(t.dropFirst(2), radix: 16) }
            if t.hasPrefix("0") && t.count > 1 { return UInt64(t.dropFirst(), radix: 8) }
        }
        return UInt64(t, radix: 10)
    }

    /// kstrtobool: y/Y/t/T/1 and "on" are true, n/N/f/F/0 and "off" false (the first letters decide).
    static func parseBool(_ text: String) -> Bool? {
        let u = Array(text.utf8)
        guard let c = u.first else { return nil }
        switch c {
        case UInt8(ascii: "y"), UInt8(ascii: "Y"), UInt8(ascii: "t"), UInt8(ascii: "T"), UInt8(ascii: "1"): return true
        case UInt8(ascii: "n"), UInt8(ascii: "N"), UInt8(ascii: "f"), UInt8(ascii: "F"), UInt8(ascii: "0"): return false
        case UInt8(ascii: "o"), UInt8(ascii: "O"):
            guard u.count > 1 else { return nil }
            if u[1] | 0x20 == UInt8(ascii: "n") { return true }
            if u[1] | 0x20 == UInt8(ascii: "f") { return false }
            return nil
        default: return nil
        }
    }
}
