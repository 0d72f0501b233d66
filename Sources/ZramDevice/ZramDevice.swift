// Vocabulary of this module (zram's words, drivers/block/zram/zram_drv.c):
// - device: one zram block device, a ZramDevice; its capacity is `pageCount` 4 KiB pages.
// - slot: the table entry of one page (SlotTable, zram's `table[index]`): a handle-or-fill word
//   and a flags word. "Slot" means only this here; ZsPool has handle entries and class positions.
// - slot flags: the flags word (SlotFlags): object size in the low bits, then lock, same,
//   written-back, huge, idle, incompressible and the compressor priority.
// - same-filled page: a page of one repeated 8-byte word, kept in the slot without a pool object.
// - huge page: a page that did not compress below huge_class_size, stored raw in a 4096-byte object.
// - counters: the device's statistics (ZramCounters, one relaxed atomic per ZramCounter), shown
//   as a ZramStats and its sysfs texts.
// - stream: one compressor with its buffers (CompressionStreams), held to (de)compress a page.
// - backing device: the file or block device pages are written back to (Backing, zram's
//   backing_dev); a block is one 4 KiB unit of it. Writeback moves a slot's page there.
// - access time: a slot's last read or write (zram's ac_time), CLOCK_BOOTTIME seconds.
// - run: one writeback (or idle marking) pass; runs are serialized by `runLock`.
import Codec
import Glibc
import Posix
import ZsPool

/// What one page holds, as NBD's BLOCK_STATUS wants to know it.
public enum PageState: Sendable, Equatable {
    /// Never written, or freed by discard/write-zeroes: reads as zeros, holds no memory (HOLE|ZERO).
    case unallocated
    /// A same-filled page of zero bytes (ZERO).
    case zero
    /// Anything else (0).
    case data
}

/// A consistency census of the slot table (see `census()`).
public struct SlotCensus: Sendable, Equatable {
    public var storedPages = 0
    public var samePages = 0
    public var hugePages = 0
    /// Slots whose page is on the backing device.
    public var writtenBackPages = 0
    /// Backing blocks in use: what bd_count should be (more than one page a block when packed).
    public var backingBlocks = 0
    /// Sum of stored object sizes in the pool: what compr_data_size should be.
    public var comprBytes = 0
}

/// Where a request's pages live: the pool, the compression streams and the backing device.
/// Replaced as a whole by reset, algorithm and backing-device changes, which hold the quiesce
/// lock exclusively; I/O holds it shared and uses one Storage for a whole request.
final class Storage: Sendable {
    let pool: ZsPool
    let streams: CompressionStreams
    let backing: Backing?
    /// zram's recompression algorithms by priority (1...3; index 0, the primary, is `streams`).
    let recompressors: [CompressionStreams?]
    init(pool: ZsPool, streams: CompressionStreams, backing: Backing?,
         recompressors: [CompressionStreams?] = [CompressionStreams?](repeating: nil, count: ZramDevice.maxPriorities)) {
        self.pool = pool
        self.streams = streams
        self.backing = backing
        self.recompressors = recompressors
    }

    /// The same storage with some parts replaced.
    func with(pool: ZsPool? = nil, streams: CompressionStreams? = nil, backing: Backing?? = .none,
              recompressors: [CompressionStreams?]? = nil) -> Storage {
        Storage(pool: pool ?? self.pool, streams: streams ?? self.streams, backing: backing ?? self.backing,
                recompressors: recompressors ?? self.recompressors)
    }

    /// The streams of the compressor that produced a slot of `priority` (0 = the primary); an
    /// I/O error if it is gone (cannot happen: a priority in use cannot be changed).
    @inline(__always)
    func streams(priority: Int) throws(ZramError) -> CompressionStreams {
        if priority == 0 { return streams }
        guard priority < recompressors.count, let r = recompressors[priority] else { throw .ioError }
        return r
    }
}

/// What a page write installs in its slot.
enum PageContents: Sendable {
    case same(UInt64)
    case object(ZsHandle, size: Int, huge: Bool)
}

/// zram's page store (drivers/block/zram/zram_drv.c for 4 KiB pages) over a zsmalloc pool.
///
/// Byte-range I/O of any alignment, safe from many threads: different pages proceed in parallel,
/// one page is never torn, and a sub-page write holds its slot across the read-modify-write.
///
/// Lock order: quiesce (shared for I/O) -> slot lock -> compression stream -> pool internals.
/// A full-page write compresses under a stream *without* a slot lock and releases the stream
/// before locking the slot, so no path takes a slot while holding a stream.
///
/// Differences from the kernel: `reset()` keeps the device usable (disk size, algorithm, level
/// and mem_limit stay; all data and counters go, the pool is recreated). The algorithm can be
/// changed whenever no page is stored (the kernel: only before disksize).
public final class ZramDevice: @unchecked Sendable {
    public let name: String
    /// Capacity in bytes, a multiple of 4096.
    public let diskSize: Int
    public let chainSize: Int
    public let pageCount: Int
    /// Where the pool's pages and the slot table live.
    public let backing: PageBacking
    /// Bytes of the slot table's mapping (16 per page; only touched parts are resident).
    public var slotTableBytes: Int { slots.byteCount }

    let slots: SlotTable
    let quiesce = ReadWriteLock()
    /// Guarded by `quiesce`: read under shared, replaced under exclusive.
    var storage: Storage
    /// Serializes runs (writeback, idle marking) and backing-device changes; taken before `quiesce`.
    let runLock = ConditionLock()
    /// writeback_limit, writeback_limit_enable, writeback_batch_size, compressed_writeback.
    let writebackSettings = WritebackSettings()
    /// For tests that reach into the pool (e.g. to corrupt an object).
    var storageForTesting: Storage { quiesce.shared { storage } }

    /// The state header's memfd, made by the first `exportState()` (under the exclusive quiesce lock).
    @exclusivity(unchecked) var stateHeader: SharedMemory?
    /// Exports so far (carried over by attach): the header's generation.
    @exclusivity(unchecked) var generation: UInt64 = 0
    /// Set by `init(recovering:)`: what the crash cost.
    public internal(set) var recovery: RecoveryReport?
    /// Updated where the event happens; see ZramCounter for the list.
    let counters = ZramCounters()
    /// Seconds for access times (CLOCK_BOOTTIME, as zram's); tests substitute their own.
    let clock: @Sendable () -> UInt32

    public convenience init(_ config: ZramConfig) throws(ZramError) {
        try self.init(config, clock: { Clock.bootSeconds() })
    }

    init(_ config: ZramConfig, clock: @escaping @Sendable () -> UInt32) throws(ZramError) {
        self.clock = clock
        guard ZramConfig.chainSizes.contains(config.chainSize) else {
            throw .invalidArgument("chain size \(config.chainSize) is not in \(ZramConfig.chainSizes)")
        }
        guard config.diskSize >= 0, config.diskSize <= ZramConfig.maxDiskSize else {
            throw .invalidArgument("disk size \(config.diskSize) is outside 0...\(ZramConfig.maxDiskSize) (16 TiB)")
        }
        try Self.checkMemLimit(config.memLimit)
        name = config.name
        chainSize = config.chainSize
        pageCount = (config.diskSize + pageSize - 1) >> pageShift
        diskSize = pageCount << pageShift
        backing = config.backing
        slots = try SlotTable(count: pageCount, backing: config.backing, name: config.name)
        storage = Storage(pool: try Self.makePool(config.name, config.chainSize, pageCount, config.backing),
                          streams: try CompressionStreams(algorithm: config.algorithm, parameters: config.parameters), backing: nil)
        counters.store(.memLimitPages, Self.pagesRoundedUp(config.memLimit))
    }

    /// Worst case fragmentation: one object per zspage chain. The pool only reserves address
    /// space; its page numbers are 32-bit.
    static func poolMaxPages(pageCount: Int, chainSize: Int) -> Int {
        min(pageCount * chainSize + 1024, Int(UInt32.max) - 1)
    }

    /// A successor's device: built from a predecessor's state (`exportState()`), in this process
    /// or another. Validates the header, maps the slot table, rebuilds the pool from its arena and
    /// page map, then checks every stored slot against the pool and the counters against the
    /// slots; any mismatch is `incompatibleState` (refuse loudly rather than serve wrong data).
    /// The fds are adopted: closed here on failure, with the device otherwise.
    public convenience init(attaching fds: DeviceStateFDs) throws(ZramError) {
        try self.init(attaching: fds, clock: { Clock.bootSeconds() })
    }

    /// After a crash (the process was killed with I/O in flight; the fds come back from
    /// systemd's fd store): as `init(attaching:)`, but the state was never quiesced, so the
    /// counters are recounted, half-updated freelists rebuilt, objects no slot names (writes that
    /// were never installed) freed, and slots locked at the crash checked one by one
    /// (`recoverSlots`). What cannot be explained by one interrupted request refuses the device.
    public convenience init(recovering fds: DeviceStateFDs) throws(ZramError) {
        try self.init(attaching: fds, clock: { Clock.bootSeconds() }, recovering: true)
    }

    init(attaching fds: DeviceStateFDs, clock: @escaping @Sendable () -> UInt32, recovering: Bool = false) throws(ZramError) {
        var owned = fds          // fds not yet adopted by a mapping, closed if we throw
        defer { owned.closeAll() }
        var h = try DeviceStateHeader.validate(fd: fds.header)
        // The header's high water is as old as the header: the page map says how far the pool grew.
        if recovering { h.poolHighWater = try Self.pageMapExtent(fds.pageMap, maxPages: h.poolMaxPages) }
        self.clock = clock
        name = h.name
        chainSize = h.chainSize
        pageCount = h.pageCount
        diskSize = h.diskSize
        backing = .memfd
        owned.slots = -1
        slots = try SlotTable(adopting: fds.slots, count: h.pageCount, name: h.name)
        owned.arena = -1; owned.pageMap = -1
        let pool: ZsPool
        do {
            pool = try ZsPool(adoptingArena: fds.arena, pageMap: fds.pageMap, name: h.name, chainSize: h.chainSize,
                              maxPages: h.poolMaxPages, highWater: h.poolHighWater, pagesCompacted: h.pagesCompacted,
                              recovering: recovering)
        } catch {
            throw .incompatibleState("pool: \(error)")
        }
        var recompressors = [CompressionStreams?](repeating: nil, count: Self.maxPriorities)
        for r in h.recompressors {
            recompressors[r.priority] = try Self.inheritedStreams(h, priority: r.priority, r.algorithm, r.level, fds.dictionaries)
        }
        storage = Storage(pool: pool, streams: try Self.inheritedStreams(h, priority: 0, h.algorithm, h.level, fds.dictionaries),
                          backing: nil, recompressors: recompressors)
        for (i, c) in DeviceStateHeader.counterOrder.enumerated() { counters.store(c, h.counters[i]) }
        generation = h.generation
        if let hb = h.backing {
            owned.backing = -1
            try attachBacking(hb, fd: fds.backing)
        }
        do { if recovering { try recoverSlots() } else { try verifyAttached() } } catch {
            // Refused: the file stays for the predecessor (or the previous binary), whoever made it.
            storage.backing?.file.close(removing: false)
            throw error
        }
        // The header fd is only read; the exporter keeps its own.
    }

    /// A priority's compressor as the state describes it: algorithm, level and the other
    /// parameters, its dictionary read from its memfd (not adopted; the caller closes it) and
    /// checked against the header's length and checksum.
    private static func inheritedStreams(_ h: DeviceStateHeader, priority: Int, _ algorithm: CompressionAlgorithm, _ level: Int32,
                                         _ dictionaryFDs: [Int32]) throws(ZramError) -> CompressionStreams {
        let stored = priority < h.parameters.count ? h.parameters[priority] : DeviceStateHeader.StoredParameters()
        var p = AlgorithmParameters(level: level, windowBits: stored.windowBits, compactFrames: stored.compactFrames)
        let what = priority == 0 ? "\(algorithm.rawValue)" : "\(algorithm.rawValue) at priority \(priority)"
        if let record = stored.dictionary {
            let fd = priority < dictionaryFDs.count ? dictionaryFDs[priority] : -1
            guard fd >= 0 else { throw .incompatibleState("\(h.name): \(what) compressed with a dictionary, and it was not handed over") }
            guard let bytes = SharedMemory.contents(of: fd, limit: CompressionDictionary.maxBytes), bytes.count == record.byteCount,
                  bytes.withUnsafeBytes({ DeviceStateHeader.checksum($0) }) == record.checksum else {
                throw .incompatibleState("\(h.name): \(what)'s handed-over dictionary is not the one its pages were compressed with")
            }
            do { p.dictionary = try CompressionDictionary(contents: bytes, path: record.path) } catch {
                throw .incompatibleState("\(h.name): \(what)'s dictionary: \(error)")
            }
        }
        do { return try CompressionStreams(algorithm: algorithm, parameters: p) } catch .invalidArgument(let m) {
            throw .incompatibleState("\(h.name): \(what) with the state's parameters: \(m)")
        }
    }

    /// The backing device of an inherited state, from its handed-over descriptor (adopted:
    /// closed here on failure); its bitmap is empty until the slots are checked.
    private func attachBacking(_ hb: DeviceStateHeader.BackingFile, fd: Int32) throws(ZramError) {
        guard fd >= 0 else {
            throw .incompatibleState("\(name): the state has a backing device (\(hb.path)), but its file was not handed over")
        }
        let file: BlockFile
        do { file = try BlockFile.adopt(fd: fd, path: hb.path, wasCreated: hb.wasCreated) } catch {
            close(fd)
            throw .incompatibleState("\(name): backing device \(error)")
        }
        guard file.blockCount == hb.blockCount else {
            file.close(removing: false)
            throw .incompatibleState("\(name): the backing device \(hb.path) has \(file.blockCount) blocks, the state \(hb.blockCount)")
        }
        do { storage = storage.with(backing: .some(try Backing(file: file, pageCount: pageCount, counters: counters))) } catch {
            file.close(removing: false)
            throw error
        }
    }

    static func makePool(_ name: String, _ chainSize: Int, _ pageCount: Int, _ backing: PageBacking) throws(ZramError) -> ZsPool {
        do {
            return try ZsPool(name: name, chainSize: chainSize, maxPages: poolMaxPages(pageCount: pageCount, chainSize: chainSize),
                              backing: backing)
        } catch {
            throw .outOfMemory("cannot reserve the pool: \(error)")
        }
    }

    /// `bytes` rounded up to pages; callers checked it with `checkMemLimit` (so it cannot overflow).
    private static func pagesRoundedUp(_ bytes: Int) -> Int { (bytes + pageSize - 1) >> pageShift }

    private static func checkMemLimit(_ bytes: Int) throws(ZramError) {
        guard bytes >= 0, bytes <= ZramConfig.maxMemLimit else {
            throw .invalidArgument("mem_limit \(bytes) is outside 0...\(ZramConfig.maxMemLimit) (16 TiB)")
        }
    }

    // MARK: Block I/O

    /// Reads `length` bytes at `offset` into `destination`. On error the request counts once in
    /// failed_reads (as a failed bio) and the bytes of the failing page are zeroed, never garbage.
    public func read(into destination: UnsafeMutableRawPointer, offset: Int, length: Int) throws(ZramError) {
        try readPages(into: destination, offset: offset, length: length, reportZeroes: false) { _, _ in }
    }

    /// `read`, except that pages reading as zeros (never written, freed, or same-filled with 0)
    /// are left unfilled and reported as `zero(start, length)`, `start` relative to `destination`.
    /// NBD's structured READ sends them as holes, without a second pass over the slots.
    public func read(into destination: UnsafeMutableRawPointer, offset: Int, length: Int,
                     reportingZeroes zero: (_ start: Int, _ length: Int) -> Void) throws(ZramError) {
        try readPages(into: destination, offset: offset, length: length, reportZeroes: true, zero)
    }

    @inline(__always)
    private func readPages(into destination: UnsafeMutableRawPointer, offset: Int, length: Int, reportZeroes: Bool,
                           _ zero: (_ start: Int, _ length: Int) -> Void) throws(ZramError) {
        try request(offset, length, failing: .failedReads) { (b, now) throws(ZramError) in
            try forEachPageSpan(offset, length) { (index, inPage, n, done) throws(ZramError) in
                let out = destination + done
                let filled = n == pageSize ? try readPage(index, into: out, b, now, skipZero: reportZeroes)
                    : try readPartial(index, inPage, n, into: out, b, now, skipZero: reportZeroes)
                if !filled { zero(done, n) }
            }
        }
    }

    /// One request: the range checked, then `body` under the shared quiesce lock with the current
    /// pool and streams. A failure counts once in `failing` (as the kernel counts a failed bio).
    @inline(__always)
    private func request(_ offset: Int, _ length: Int, failing: ZramCounter,
                         _ body: (Storage, _ now: UInt32) throws(ZramError) -> Void) throws(ZramError) {
        try checkRange(offset, length)
        let now = clock()
        try quiesce.shared { () throws(ZramError) in
            do throws(ZramError) {
                try body(storage, now)
            } catch {
                counters.add(failing)
                throw error
            }
        }
    }

    /// Writes `length` bytes from `source` at `offset`. Pages before a failing page are written;
    /// the failing page keeps its old contents; the request counts once in failed_writes.
    public func write(from source: UnsafeRawPointer, offset: Int, length: Int) throws(ZramError) {
        try request(offset, length, failing: .failedWrites) { (b, now) throws(ZramError) in
            try forEachPageSpan(offset, length) { (index, inPage, n, done) throws(ZramError) in
                let src = source + done
                if n == pageSize {
                    try storePage(index, from: src, b, now)
                } else {
                    try storePartial(index, inPage, n, from: src, b, now)
                }
            }
        }
    }

    /// zram's discard: frees every whole page in the range (notify_free counts each, even empty
    /// ones); partial head and tail pages are left alone.
    public func discard(offset: Int, length: Int) throws(ZramError) {
        try checkRange(offset, length)
        quiesce.shared {
            let b = storage
            let first = (offset + pageSize - 1) >> pageShift
            let end = (offset + length) >> pageShift
            guard first < end else { return }
            slots.forEachPossiblyUsedRange(in: first..<end) { r in for index in r { freeSlot(index, b) } }
            counters.add(.notifyFree, end - first)
        }
    }

    /// Makes the range read as zeros. Whole pages are freed as by discard (`mayTrim`) or, for NBD's
    /// NO_HOLE, stored as zero same-filled pages; partial head/tail pages get real zeros by
    /// read-modify-write (unlike zram, which ignores them, because NBD requires zeros).
    public func writeZeroes(offset: Int, length: Int, mayTrim: Bool = true) throws(ZramError) {
        var freed = 0
        defer { if freed > 0 { counters.add(.notifyFree, freed) } }
        try request(offset, length, failing: .failedWrites) { (b, now) throws(ZramError) in
            // Whole pages to free: walk only the slot table's data extents (see SlotTable).
            let firstWhole = (offset + pageSize - 1) >> pageShift, endWhole = (offset + length) >> pageShift
            if mayTrim && firstWhole < endWhole {
                for (lo, hi) in [(offset, firstWhole << pageShift), (endWhole << pageShift, offset + length)] where lo < hi {
                    try forEachPageSpan(lo, hi - lo) { (index, inPage, n, _) throws(ZramError) in
                        try zeroPartial(index, inPage, n, b, now)
                    }
                }
                slots.forEachPossiblyUsedRange(in: firstWhole..<endWhole) { r in for index in r { freeSlot(index, b) } }
                freed += endWhole - firstWhole
                return
            }
            try forEachPageSpan(offset, length) { (index, inPage, n, _) throws(ZramError) in
                if n < pageSize {
                    try zeroPartial(index, inPage, n, b, now)
                } else if mayTrim {
                    freeSlot(index, b)
                    freed += 1
                } else {
                    let old = slots.lock(index)
                    slots.unlock(index, flags: install(index, .same(0), replacing: old, b, now))
                }
            }
        }
    }

    /// zram has no volatile cache: nothing to flush.
    public func flush() throws(ZramError) {
        guard pageCount > 0 else { throw .notInitialized }
    }

    /// Walks the range and calls `body(length, state)` for each run of pages in the same state
    /// (lengths in bytes, clipped to the range). `body` returns false to stop early; it runs with
    /// the device's quiesce lock held, so it must not call back into the device.
    public func pageStates(offset: Int, length: Int,
                           _ body: (_ length: Int, _ state: PageState) -> Bool) throws(ZramError) {
        try checkRange(offset, length)
        guard length > 0 else { return }
        quiesce.shared {
            var run: PageState? = nil
            var runLength = 0
            var stopped = false
            func add(_ n: Int, _ state: PageState) {
                guard !stopped else { return }
                if state == run {
                    runLength += n
                } else {
                    if let run, !body(runLength, run) { stopped = true; return }
                    run = state
                    runLength = n
                }
            }
            // Holes in the slot table are unallocated without looking (see SlotTable).
            let end = offset + length
            var pos = offset
            slots.forEachPossiblyUsedRange(in: (offset >> pageShift)..<((end - 1) >> pageShift + 1)) { r in
                guard !stopped else { return }
                let from = max(r.lowerBound << pageShift, offset), to = min(r.upperBound << pageShift, end)
                if from > pos { add(from - pos, .unallocated) }
                forEachPageSpan(from, to - from) { (index, _, n, _) in add(n, pageState(index)) }
                pos = to
            }
            if pos < end { add(end - pos, .unallocated) }
            if !stopped, let run { _ = body(runLength, run) }
        }
    }

    // MARK: Controls

    /// Frees every page and zeroes every counter; the device stays usable with the same disk size,
    /// algorithm, level and mem_limit. The pool is recreated (pages_compacted restarts at 0); if
    /// that fails (`outOfMemory`), the device is left as it was.
    public func reset() throws(ZramError) {
        let pool = try Self.makePool(name, chainSize, pageCount, backing)
        quiesce.exclusive {
            slots.clearAll()
            storage.backing?.releaseAll()
            storage = storage.with(pool: pool)
            counters.reset()
        }
    }

    /// Runs the pool's compaction; returns the pages it freed (they accumulate in pages_compacted).
    @discardableResult
    public func compact() throws(ZramError) -> Int {
        guard pageCount > 0 else { throw .notInitialized }
        return quiesce.shared { storage.pool.compact() }
    }

    /// Pages `compact()` could free now (the kernel shrinker's count), for automatic compaction.
    public var compactablePages: Int { quiesce.shared { storage.pool.freeablePages } }

    /// Sets mem_limit at runtime (bytes, rounded up to pages; 0 = none). Stores already over
    /// the limit stay; later writes fail.
    public func setMemLimit(_ bytes: Int) throws(ZramError) {
        try Self.checkMemLimit(bytes)
        counters.store(.memLimitPages, Self.pagesRoundedUp(bytes))
    }

    /// zram's `echo 0 > mem_used_max`: the peak restarts at the current pool size, not at 0.
    public func resetMemUsedMax() {
        quiesce.shared { counters.store(.maxUsedPages, storage.pool.totalPages) }
    }

    public var algorithm: CompressionAlgorithm { quiesce.shared { storage.streams.algorithm } }
    public var level: Int32 { quiesce.shared { storage.streams.level } }

    /// The primary algorithm's parameters as set (level nil = default), dictionary included.
    public var parameters: AlgorithmParameters { quiesce.shared { storage.streams.parameters } }

    /// Changes the compressor. Refused with `busy` while any page is stored, because stored
    /// objects could no longer be read (zram: -EBUSY once initialised).
    public func setAlgorithm(_ algorithm: CompressionAlgorithm, level: Int32? = nil) throws(ZramError) {
        try setAlgorithm(algorithm, parameters: AlgorithmParameters(level: level))
    }

    /// Changes the compressor and all its parameters (zram's comp_algorithm plus algorithm_params
    /// priority=0). A dictionary is part of them, so the `busy` rule also keeps every stored page
    /// with the dictionary it was compressed with.
    public func setAlgorithm(_ algorithm: CompressionAlgorithm, parameters: AlgorithmParameters) throws(ZramError) {
        let streams = try CompressionStreams(algorithm: algorithm, parameters: parameters)
        try quiesce.exclusive { () throws(ZramError) in
            guard counters.load(.pagesStored) == 0 else { throw .busy }
            storage = storage.with(streams: streams)
        }
    }

    // MARK: Statistics

    public func stats() -> ZramStats {
        quiesce.shared {
            let pool = storage.pool
            var s = ZramStats()
            s.diskSize = UInt64(diskSize)
            counters.read(into: &s)
            s.memUsedTotal = UInt64(pool.totalPages) << UInt64(pageShift)
            s.pagesCompacted = UInt64(pool.pagesCompacted)
            return s
        }
    }

    /// `/sys/block/zramN/comp_algorithm`: every algorithm, the selected one in brackets, each
    /// followed by a space, then a newline.
    public var compAlgorithmText: String { Self.algorithmList(selected: algorithm) }

    /// Every algorithm, `selected` in brackets, each followed by a space, then a newline (the
    /// kernel's zcomp_available_show).
    static func algorithmList(selected: CompressionAlgorithm) -> String {
        var s = ""
        for a in CompressionAlgorithm.allCases {
            s += a == selected ? "[\(a.rawValue)] " : "\(a.rawValue) "
        }
        return s + "\n"
    }

    /// zsmalloc's debugfs `classes` table for this device's pool.
    public var classesText: String { quiesce.shared { storage.pool.classesText() } }

    /// Recounts the slot table (blocks I/O while it runs): for checks and debugging.
    public func census() -> SlotCensus {
        quiesce.exclusive {
            var c = SlotCensus()
            slots.forEachPossiblyUsedRange(in: 0..<pageCount) { r in
                for index in r {
                    let peek = slots.peekFlags(index)
                    guard !peek.isUntouched else { continue }
                    let f = slots.lock(index)
                    slots.unlock(index, flags: f)
                    guard f.isAllocated else { continue }
                    c.storedPages += 1
                    if f.isWrittenBack { c.writtenBackPages += 1; continue }
                    if f.isSame { c.samePages += 1; continue }
                    if f.isHuge { c.hugePages += 1 }
                    c.comprBytes += f.objectSize
                }
            }
            c.backingBlocks = storage.backing?.blocksInUse() ?? 0
            return c
        }
    }

    // MARK: Page operations

    private func checkRange(_ offset: Int, _ length: Int) throws(ZramError) {
        guard pageCount > 0 else { throw .notInitialized }
        guard offset >= 0, length >= 0, offset <= diskSize, length <= diskSize - offset else {
            throw .outOfRange
        }
    }

    /// Splits the range into per-page spans: (page index, offset in page, bytes, bytes before this span).
    @inline(__always)
    private func forEachPageSpan<E: Error>(_ offset: Int, _ length: Int,
                                           _ body: (Int, Int, Int, Int) throws(E) -> Void) throws(E) {
        var pos = offset
        let end = offset + length
        while pos < end {
            let inPage = pos & (pageSize - 1)
            let n = min(pageSize - inPage, end - pos)
            try body(pos >> pageShift, inPage, n, pos - offset)
            pos += n
        }
    }

    /// Fills `out` with page `index`; with `skipZero`, a page that reads as zeros is left alone
    /// and false returned.
    private func readPage(_ index: Int, into out: UnsafeMutableRawPointer, _ b: Storage, _ now: UInt32,
                          skipZero: Bool) throws(ZramError) -> Bool {
        try readSlot(index, zeroing: out, pageSize, now, skipZero: skipZero) { (flags) throws(ZramError) in
            try load(index, flags, into: out, b, stream: nil)
        }
    }

    /// `n` bytes from `inPage` on: the page is loaded into the stream's bounce page first.
    private func readPartial(_ index: Int, _ inPage: Int, _ n: Int, into out: UnsafeMutableRawPointer,
                             _ b: Storage, _ now: UInt32, skipZero: Bool) throws(ZramError) -> Bool {
        try readSlot(index, zeroing: out, n, now, skipZero: skipZero) { (flags) throws(ZramError) in
            try b.streams.withStream { (s) throws(ZramError) in
                do throws(ZramError) {
                    try load(index, flags, into: s.bounce, b, stream: s)
                } catch {
                    memset(out, 0, n)
                    throw error
                }
                out.copyMemory(from: s.bounce + inPage, byteCount: n)
            }
        }
    }

    /// Runs `fill` with slot `index` locked, unless the slot reads as zeros: then the `n` bytes at
    /// `out` are zeroed, or with `skipZero` left alone and false returned. An untouched slot is
    /// empty and unlocked: zeros, without dirtying the slot table (its access time is never shown).
    /// A successful read is an access: the slot gets time `now` and loses its idle mark.
    @inline(__always)
    private func readSlot(_ index: Int, zeroing out: UnsafeMutableRawPointer, _ n: Int, _ now: UInt32, skipZero: Bool,
                          _ fill: (SlotFlags) throws(ZramError) -> Void) throws(ZramError) -> Bool {
        if slots.peekFlags(index).isUntouched {
            if skipZero { return false }
            memset(out, 0, n)
            return true
        }
        let flags = slots.lock(index)
        var after = flags
        defer { slots.unlock(index, flags: after) }
        if skipZero && readsAsZero(index, flags) {
            after = flags.accessed(at: now)
            return false
        }
        try fill(flags)
        after = flags.accessed(at: now)
        return true
    }

    /// Empty, or same-filled with the zero word (slot lock held).
    @inline(__always)
    private func readsAsZero(_ index: Int, _ flags: SlotFlags) -> Bool {
        !flags.isAllocated || (flags.isSame && slots.handle(index) == 0)
    }

    /// Fills `out` with the page in slot `index` (slot lock held). Uses `stream` if given,
    /// otherwise takes one only if the page must be decompressed.
    func load(_ index: Int, _ flags: SlotFlags, into out: UnsafeMutableRawPointer, _ b: Storage,
              stream: StreamBuffers?) throws(ZramError) {
        if flags.isWrittenBack {
            try readBack(index, flags, into: out, b, stream: stream)
            return
        }
        if flags.isSame {
            fillPage(out, with: slots.handle(index))
            return
        }
        let size = flags.objectSize
        if size == 0 {
            memset(out, 0, pageSize)
            return
        }
        let handle = slots.handle(index)
        if flags.isHuge {
            b.pool.read(handle, into: out, count: pageSize)
            return
        }
        // A held stream is the primary's: a recompressed object takes its own compressor's
        // (primary before secondary is the one order streams are taken in).
        if let stream, flags.priority == 0 {
            try decompress(handle, size, into: out, b.pool, stream)
        } else {
            try b.streams(priority: flags.priority).withStream { (s) throws(ZramError) in
                try decompress(handle, size, into: out, b.pool, s)
            }
        }
    }

    private func decompress(_ handle: ZsHandle, _ size: Int, into out: UnsafeMutableRawPointer,
                            _ pool: ZsPool, _ s: StreamBuffers) throws(ZramError) {
        pool.read(handle, into: s.scratch, count: size)
        guard s.codec.decompress(s.scratch, count: size, intoPage: out) else {
            memset(out, 0, pageSize)
            throw .ioError
        }
    }

    private func storePage(_ index: Int, from src: UnsafeRawPointer, _ b: Storage, _ now: UInt32) throws(ZramError) {
        let contents: PageContents
        if let word = sameFilledWord(src) {
            contents = .same(word)
        } else {
            contents = try b.streams.withStream { (s) throws(ZramError) in try encode(src, s, b.pool) }
        }
        let old = slots.lock(index)
        slots.unlock(index, flags: install(index, contents, replacing: old, b, now))
    }

    /// Sub-page write: the slot stays locked from reading the old page to installing the new one,
    /// so concurrent sub-page writes into one page all survive.
    private func storePartial(_ index: Int, _ inPage: Int, _ n: Int, from src: UnsafeRawPointer,
                              _ b: Storage, _ now: UInt32) throws(ZramError) {
        var flags = slots.lock(index)
        defer { slots.unlock(index, flags: flags) }
        try b.streams.withStream { (s) throws(ZramError) in
            try load(index, flags, into: s.bounce, b, stream: s)
            (s.bounce + inPage).copyMemory(from: src, byteCount: n)
            flags = install(index, try contents(of: s.bounce, s, b.pool), replacing: flags, b, now)
        }
    }

    private func zeroPartial(_ index: Int, _ inPage: Int, _ n: Int, _ b: Storage, _ now: UInt32) throws(ZramError) {
        if slots.peekFlags(index).isUntouched { return }
        var flags = slots.lock(index)
        defer { slots.unlock(index, flags: flags) }
        guard flags.isAllocated else { return }
        if flags.isSame && slots.handle(index) == 0 { return }
        try b.streams.withStream { (s) throws(ZramError) in
            try load(index, flags, into: s.bounce, b, stream: s)
            memset(s.bounce + inPage, 0, n)
            flags = install(index, try contents(of: s.bounce, s, b.pool), replacing: flags, b, now)
        }
    }

    private func contents(of page: UnsafeRawPointer, _ s: StreamBuffers, _ pool: ZsPool) throws(ZramError) -> PageContents {
        if let word = sameFilledWord(page) { return .same(word) }
        return try encode(page, s, pool)
    }

    /// Compresses the page and stores it in a new pool object (stream held, slot untouched):
    /// zram's write path steps 2-7 up to, not including, replacing the slot's contents.
    private func encode(_ src: UnsafeRawPointer, _ s: StreamBuffers, _ pool: ZsPool) throws(ZramError) -> PageContents {
        guard let compressed = s.codec.compress(page: src, into: s.buffer, capacity: 2 * pageSize) else {
            throw .ioError
        }
        // Only huge_class_size decides: at or above it the page is stored raw.
        let huge = compressed >= pool.hugeClassSize
        let size = huge ? pageSize : compressed
        guard let handle = pool.malloc(size) else { throw .noSpace }
        // As the kernel: record the peak before the limit check, so mem_used_max can exceed the
        // limit by the allocation that was refused.
        let total = pool.totalPages
        counters.raise(.maxUsedPages, to: total)
        let limit = counters.load(.memLimitPages)
        if limit != 0 && total > limit {
            pool.free(handle)
            throw .noSpace
        }
        pool.write(handle, from: huge ? src : UnsafeRawPointer(s.buffer), count: size)
        return .object(handle, size: size, huge: huge)
    }

    /// Installs `new` and frees the slot's old contents (slot lock held); returns the new flags,
    /// accessed at `now` (a write is an access).
    private func install(_ index: Int, _ new: PageContents, replacing old: SlotFlags, _ b: Storage, _ now: UInt32) -> SlotFlags {
        switch new {
        case .same(let word):
            replaceHandle(index, old, with: word, b)
            counters.add(.pagesStored)
            counters.add(.samePages)
            return SlotFlags.sameFilled().accessed(at: now)
        case .object(let handle, let size, let huge):
            replaceHandle(index, old, with: handle, b)
            counters.add(.pagesStored)
            counters.add(.comprDataSize, size)
            if huge {
                counters.add(.hugePages)
                counters.add(.hugePagesSince)
            }
            return SlotFlags.object(size: size, huge: huge).accessed(at: now)
        }
    }

    /// zram's slot_free: releases whatever the slot holds (a pool object or a backing block) and
    /// fixes the counters (slot lock held). The caller stores the new flags on unlock, which
    /// also clears the idle, picked and priority bits and the access time.
    func freeContents(_ index: Int, _ flags: SlotFlags, _ b: Storage) {
        freeContents(flags, handle: slots.handle(index), b)
        slots.setHandle(index, 0)
    }

    /// Puts `handle` into slot `index`, then frees what the slot held under `old` (slot lock
    /// held; the caller stores the new flags on unlock). In this order the slot names live
    /// contents at every moment: a crash in between leaves the old or the new whole (see
    /// ZramDevice(recovering:)).
    func replaceHandle(_ index: Int, _ old: SlotFlags, with handle: UInt64, _ b: Storage) {
        let previous = slots.handle(index)
        slots.setHandle(index, handle)
        freeContents(old, handle: previous, b)
    }

    private func freeContents(_ flags: SlotFlags, handle: UInt64, _ b: Storage) {
        guard flags.isAllocated else { return }
        if flags.isWrittenBack {
            // A compressed writeback keeps the object's size and huge bit for the read; neither
            // counts in compr_data_size or huge_pages any more.
            b.backing?.release(Backing.location(handle).block)
        } else if flags.isSame {
            counters.subtract(.samePages)
        } else {
            if flags.isHuge { counters.subtract(.hugePages) }
            b.pool.free(handle)
            counters.subtract(.comprDataSize, flags.objectSize)
        }
        counters.subtract(.pagesStored)
    }

    private func freeSlot(_ index: Int, _ b: Storage) {
        if slots.peekFlags(index).isUntouched { return }
        let flags = slots.lock(index)
        freeContents(index, flags, b)
        slots.unlock(index, flags: .empty)
    }

    private func pageState(_ index: Int) -> PageState {
        if slots.peekFlags(index).isUntouched { return .unallocated }
        let flags = slots.lock(index)
        let word = slots.handle(index)
        slots.unlock(index, flags: flags)
        if !flags.isAllocated { return .unallocated }
        return flags.isSame && word == 0 ? .zero : .data
    }
}

/// zram's same-filled test: the last word first as a quick reject, then every word against word 0.
/// Any repeated 8-byte pattern qualifies. Works on unaligned buffers.
@inline(__always)
func sameFilledWord(_ page: UnsafeRawPointer) -> UInt64? {
    let first = page.loadUnaligned(as: UInt64.self)
    guard page.loadUnaligned(fromByteOffset: pageSize - 8, as: UInt64.self) == first else { return nil }
    var offset = 8
    while offset < pageSize - 8 {
        if page.loadUnaligned(fromByteOffset: offset, as: UInt64.self) != first { return nil }
        offset += 8
    }
    return first
}

@inline(__always)
func fillPage(_ out: UnsafeMutableRawPointer, with word: UInt64) {
    if word == 0 {
        memset(out, 0, pageSize)
        return
    }
    var offset = 0
    while offset < pageSize {
        out.storeBytes(of: word, toByteOffset: offset, as: UInt64.self)
        offset += 8
    }
}
