// zram's recompression (CONFIG_ZRAM_MULTI_COMP): up to three secondary compressors by priority
// (recomp_algorithm), and `recompress`, which stores selected pages again with them when that
// moves the object into a smaller size class. zram_drv.c's recomp_algorithm_store,
// recompress_store, scan_slots_for_recompress and recompress_slot.
import Codec
import Glibc
import Posix
import ZsPool

/// What one `recompress` write asks for (zram's recompress_store arguments).
public struct RecompressRequest: Sendable, Equatable {
    /// `type=`: only idle pages, only huge ones, or both; [] = every page.
    public var mode: WritebackMode = []
    /// `max_pages=`: pages to try at most (nil = all).
    public var maxPages: UInt64?
    /// `threshold=`: leave objects below this many bytes alone, and accept a result only below it (0 = none).
    public var threshold = 0
    /// `algo=`: only the secondary compressor of that name.
    public var algorithm: String?
    /// `priority=`: only that priority (0 means 1, as in the kernel).
    public var priority: Int?

    public init() {}

    /// Parses what one would echo into /sys/block/zramN/recompress. Beyond the kernel, which
    /// ignores them, an unknown key is an error here.
    public static func parse(_ text: String) throws(ZramError) -> RecompressRequest {
        var r = RecompressRequest()
        for word in text.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" }) {
            let parts = word.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let key = String(parts[0]), value = parts.count > 1 ? String(parts[1]) : ""
            guard !value.isEmpty else { throw .invalidArgument("'\(key)' needs a value (type=, max_pages=, threshold=, algo=, priority=)") }
            switch key {
            case "type":
                switch value {
                case "idle": r.mode = .idle
                case "huge": r.mode = .huge
                case "huge_idle": r.mode = [.idle, .huge]
                default: throw .invalidArgument("unknown type '\(value)' (idle, huge, huge_idle)")
                }
            case "max_pages":
                guard let n = UInt64(value) else { throw .invalidArgument("max_pages=\(value) is not a number of pages") }
                r.maxPages = n
            case "threshold":
                guard let n = UInt32(value) else { throw .invalidArgument("threshold=\(value) is not a number of bytes") }
                r.threshold = Int(n)
            case "algo":
                r.algorithm = value
            case "priority":
                guard let n = UInt32(value) else { throw .invalidArgument("priority=\(value) is not a number") }
                r.priority = Int(n)
            default:
                throw .invalidArgument("unknown key '\(key)' (type, max_pages, threshold, algo, priority)")
            }
        }
        return r
    }
}

/// What a recompress run did.
public struct RecompressReport: Sendable, Equatable {
    /// Slots the scan picked.
    public var picked = 0
    /// Slots a secondary compressor was run on (what max_pages counts).
    public var tried = 0
    /// Slots stored again, smaller.
    public var recompressed = 0
    /// Slots every secondary compressor failed to shrink: flagged incompressible.
    public var incompressible = 0
    /// compr_data_size given back: old object sizes minus new.
    public var bytesSaved = 0
    public var seconds = 0.0
}

extension ZramDevice {
    /// Priorities: 0 the primary, 1...3 recompression (zram's ZRAM_MAX_COMPS).
    public static let maxPriorities = 4

    /// zram's recomp_algorithm: sets the secondary compressor of `priority` (1...3). Refused
    /// with `busy` while pages recompressed at that priority are stored, since they could no
    /// longer be read (the kernel refuses any change once the device is initialised).
    public func setRecompressionAlgorithm(_ algorithm: CompressionAlgorithm, level: Int32? = nil, priority: Int) throws(ZramError) {
        try setRecompressionAlgorithm(algorithm, parameters: AlgorithmParameters(level: level), priority: priority)
    }

    /// recomp_algorithm with algorithm_params: the dictionary is one of the parameters, so the
    /// same `busy` rule means a page recompressed with a dictionary is only ever read with it.
    public func setRecompressionAlgorithm(_ algorithm: CompressionAlgorithm, parameters: AlgorithmParameters,
                                          priority: Int) throws(ZramError) {
        guard (1..<Self.maxPriorities).contains(priority) else {
            throw .invalidArgument("priority \(priority) is outside 1...\(Self.maxPriorities - 1)")
        }
        let streams = try CompressionStreams(algorithm: algorithm, parameters: parameters)
        try runLock.withLock { () throws(ZramError) in
            try quiesce.exclusive { () throws(ZramError) in
                if storage.recompressors[priority] != nil && slotsUse(priority: priority) { throw .busy }
                var r = storage.recompressors
                r[priority] = streams
                storage = storage.with(recompressors: r)
            }
        }
    }

    /// Some stored slot was recompressed at `priority` (quiesce held; exclusively for an answer
    /// that cannot change before the caller acts on it).
    private func slotsUse(priority: Int) -> Bool {
        var found = false
        slots.forEachPossiblyUsedRange(in: 0..<pageCount) { r in     // holes hold nothing
            guard !found else { return }
            for index in r {
                let f = slots.peekFlags(index)
                if f.isAllocated && f.priority == priority { found = true; return }
            }
        }
        return found
    }

    /// Whether pages recompressed at `priority` are stored, i.e. its algorithm is busy (a
    /// snapshot: a recompress run may store some right after).
    public func hasPages(priority: Int) -> Bool {
        guard (1..<Self.maxPriorities).contains(priority) else { return false }
        return quiesce.shared { slotsUse(priority: priority) }
    }

    /// The parameters `priority` was set with (0 = the primary); nil if it has no algorithm.
    public func parameters(priority: Int) -> AlgorithmParameters? {
        quiesce.shared {
            if priority == 0 { return storage.streams.parameters }
            guard (1..<Self.maxPriorities).contains(priority) else { return nil }
            return storage.recompressors[priority]?.parameters
        }
    }

    /// The secondary compressors: (priority, algorithm, level).
    public var recompressionAlgorithms: [(priority: Int, algorithm: CompressionAlgorithm, level: Int32)] {
        quiesce.shared {
            storage.recompressors.enumerated().compactMap { p, s in s.map { (p, $0.algorithm, $0.level) } }
        }
    }

    /// `/sys/block/zramN/recomp_algorithm`: per configured priority, `#N: ` and the
    /// comp_algorithm list with that algorithm in brackets.
    public var recompAlgorithmText: String {
        recompressionAlgorithms.map { "#\($0.priority): " + Self.algorithmList(selected: $0.algorithm) }.joined()
    }

    /// zram's recompress: stores the selected pages again with the secondary compressors, largest
    /// objects first, keeping a result only if it lands in a smaller size class (and under
    /// `threshold`). Other I/O goes on meanwhile; writeback and recompress runs take turns.
    public func recompress(_ request: RecompressRequest) throws(ZramError) -> RecompressReport {
        guard pageCount > 0 else { throw .notInitialized }
        let started = Clock.monotonicNanoseconds()
        var report = try runLock.withLock { () throws(ZramError) -> RecompressReport in
            try quiesce.shared { () throws(ZramError) -> RecompressReport in try recompressRun(request, storage) }
        }
        report.seconds = Double(Clock.monotonicNanoseconds() - started) / 1e9
        return report
    }

    private func recompressRun(_ request: RecompressRequest, _ b: Storage) throws(ZramError) -> RecompressReport {
        let pool = b.pool
        guard request.threshold < pool.hugeClassSize else {
            throw .invalidArgument("threshold=\(request.threshold) must be below huge_class_size (\(pool.hugeClassSize))")
        }
        // zram: num_active_comps counts the primary and every configured secondary.
        let active = 1 + b.recompressors.compactMap { $0 }.count
        guard active > 1 else { throw .invalidArgument("no recompression algorithm: set one with recomp_algorithm algo=NAME") }
        var prio = 1
        var prioMax = active
        if let p = request.priority {
            prio = max(1, p)
            prioMax = prio + 1
        }
        if let name = request.algorithm {
            guard let p = (prio..<Self.maxPriorities).first(where: { b.recompressors[$0]?.algorithm.rawValue == name }) else {
                throw .invalidArgument("algo=\(name) is not a recompression algorithm (see recomp_algorithm)")
            }
            prio = p
            prioMax = p + 1
        }
        prioMax = min(prioMax, active)
        guard prio < prioMax else { throw .invalidArgument("no recompression algorithm at priority \(prio) (see recomp_algorithm)") }

        // The candidates (4 bytes a page, committed only as far as used) and one page to
        // decompress into, for the whole run.
        let candidateBytes = max(pageCount, 1) * 4
        let candidates: UnsafeMutablePointer<UInt32>
        do {
            candidates = try VirtualMemory.reserve(byteCount: candidateBytes).bindMemory(to: UInt32.self, capacity: max(pageCount, 1))
        } catch {
            throw .outOfMemory("cannot map the recompression candidates: \(error)")
        }
        defer { VirtualMemory.unmap(UnsafeMutableRawPointer(candidates), byteCount: candidateBytes) }
        guard let page = malloc(pageSize) else { throw .outOfMemory("cannot allocate a page for recompression") }
        defer { free(page) }

        var report = RecompressReport()
        let scan = WritebackRequest.Scan(mode: request.mode, pages: 0..<pageCount)
        let count = pickSlots([scan], into: candidates) { f, mode in
            guard f.isAllocated, !f.isWrittenBack, !f.isSame, !f.isIncompressible, !f.isPicked else { return false }
            if mode.contains(.idle) && !f.isIdle { return false }
            if mode.contains(.huge) && !f.isHuge { return false }
            return f.priority + 1 < prioMax   // not already at the last priority tried, or past it
        }
        report.picked = count
        var remaining = request.maxPages ?? .max
        var i = 0
        var failure: ZramError?
        while i < count, remaining > 0, failure == nil {
            let index = Int(candidates[i])
            i += 1
            var f = slots.lock(index)
            guard f.isPicked else {
                slots.unlock(index, flags: f)
                continue
            }
            f.isPicked = false
            do {
                f = try recompressSlot(index, f, page, b, prio: prio, prioMax: prioMax, active: active,
                                       threshold: request.threshold, remaining: &remaining, &report)
            } catch {
                failure = error
            }
            slots.unlock(index, flags: f)
        }
        while i < count {   // stopped early: the rest lose their pick
            unpick(Int(candidates[i]))
            i += 1
        }
        counters.add(.recompressRuns)
        counters.add(.recompressedPages, report.recompressed)
        counters.add(.recompressBytesSaved, report.bytesSaved)
        if let failure { throw failure }
        return report
    }

    /// zram's recompress_slot (slot lock held): returns the slot's new flags.
    private func recompressSlot(_ index: Int, _ old: SlotFlags, _ page: UnsafeMutableRawPointer, _ b: Storage,
                                prio first: Int, prioMax: Int, active: Int, threshold: Int,
                                remaining: inout UInt64, _ report: inout RecompressReport) throws(ZramError) -> SlotFlags {
        var f = old
        let oldSize = f.objectSize
        // Already "small enough" (and a lost race with a free: nothing to do).
        guard f.isAllocated, !f.isWrittenBack, !f.isSame, oldSize >= threshold else { return f }
        try load(index, f, into: page, b, stream: nil)
        // Touched: no longer idle, so writeback type=idle does not pick it for a stale reason.
        f.isIdle = false
        var prio = max(first, f.priority + 1)
        guard prio < prioMax else { return f }
        let pool = b.pool
        let oldClass = pool.lookupClassIndex(oldSize)
        var tried = 0
        var stored: (handle: ZsHandle, size: Int)?
        while prio < prioMax {
            guard let streams = b.recompressors[prio] else {
                prio += 1
                continue
            }
            tried += 1
            stored = try streams.withStream { (s) throws(ZramError) -> (handle: ZsHandle, size: Int)? in
                guard let size = s.codec.compress(page: page, into: s.buffer, capacity: 2 * pageSize) else { throw .ioError }
                // Progress only if the object moves to a smaller class (and under the threshold).
                if pool.lookupClassIndex(size) >= oldClass || (threshold > 0 && size >= threshold) { return nil }
                // The old object stays if this fails: the run stops, nothing is lost.
                guard let handle = pool.malloc(size) else { throw .noSpace }
                pool.write(handle, from: s.buffer, count: size)
                return (handle, size)
            }
            if stored != nil { break }
            prio += 1
        }
        guard tried > 0 else { return f }
        report.tried += 1
        if remaining > 0 { remaining -= 1 }
        guard let stored else {
            // Every secondary compressor up to the last active one failed: never try again.
            if prio >= active {
                f.isIncompressible = true
                report.incompressible += 1
            }
            return f
        }
        // slot_free, then the new object at its priority (the kernel's access time restarts at 0).
        replaceHandle(index, f, with: stored.handle, b)
        counters.add(.comprDataSize, stored.size)
        counters.add(.pagesStored)
        counters.raise(.maxUsedPages, to: pool.totalPages)
        var new = SlotFlags.object(size: stored.size, huge: false)
        new.priority = prio
        report.recompressed += 1
        report.bytesSaved += oldSize - stored.size
        return new
    }
}

extension ZramDevice {
    /// 256 MiB of pages at most.
    public static let maxSamplePages = 1 << 16

    /// Up to `maxPages` (at most `maxSamplePages`) stored pages, spread evenly over those stored,
    /// decompressed one after another (what `train-dict` trains on). Same-filled and
    /// written-back pages are left out: neither is ever compressed with a dictionary.
    public func samplePages(_ maxPages: Int) throws(ZramError) -> [UInt8] {
        guard pageCount > 0 else { throw .notInitialized }
        return try quiesce.shared { () throws(ZramError) -> [UInt8] in
            let b = storage
            var candidates: [UInt32] = []
            slots.forEachPossiblyUsedRange(in: 0..<pageCount) { r in
                for index in r {
                    let f = slots.peekFlags(index)
                    if f.isAllocated && !f.isSame && !f.isWrittenBack && f.objectSize > 0 { candidates.append(UInt32(index)) }
                }
            }
            let n = min(max(maxPages, 0), candidates.count, Self.maxSamplePages)
            var out = [UInt8](repeating: 0, count: n * pageSize)
            var filled = 0
            var failure: ZramError?
            out.withUnsafeMutableBytes { raw in
                guard let base = raw.baseAddress else { return }
                for k in 0..<n where failure == nil {
                    // Evenly spread: the k-th of n over all candidates (no overflow: both fit in Int).
                    let index = Int(candidates[k * candidates.count / n])
                    let f = slots.lock(index)
                    defer { slots.unlock(index, flags: f) }
                    // Freed or written back since the scan: skipped.
                    guard f.isAllocated, !f.isSame, !f.isWrittenBack, f.objectSize > 0 else { continue }
                    do throws(ZramError) { try load(index, f, into: base + filled * pageSize, b, stream: nil) } catch { failure = error }
                    filled += 1
                }
            }
            if let failure { throw failure }
            return Array(out[0..<(filled * pageSize)])
        }
    }
}
