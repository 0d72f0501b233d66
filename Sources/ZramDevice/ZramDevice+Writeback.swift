// zram's post-processing of stored pages: idle marking, writeback to the backing device, and
// reads of written-back pages (drivers/block/zram/zram_drv.c of Linux 6.16-7.0: mark_idle,
// writeback_store, zram_writeback_slots, read_from_bdev, read_block_state).
import Glibc
import Posix
import Synchronization

/// The writeback attributes a user sets at any time (zram's writeback_limit, _limit_enable,
/// _batch_size) and the one set before pages are written back (compressed_writeback).
final class WritebackSettings: Sendable {
    /// Budget in 4 KiB units: taken at submit, given back when a write fails.
    let limit = Atomic<UInt64>(0)
    let limitEnabled = Atomic<Bool>(false)
    /// Bios in flight per run in zram (default 32); here, pages gathered per batch of writes.
    let batchSize = Atomic<UInt32>(32)
    /// Write the compressed object as it is and decompress on read (zram 7.0).
    let compressed = Atomic<Bool>(false)
    /// Beyond the kernel: with compressed writeback, several objects share a block.
    let packing = Atomic<Bool>(false)

    /// Takes one page of budget if the limit is on; false when it is on and spent (zram: -EIO).
    func take() -> Bool {
        guard limitEnabled.load(ordering: .relaxed) else { return true }
        var seen = limit.load(ordering: .relaxed)
        while true {
            guard seen > 0 else { return false }
            let r = limit.compareExchange(expected: seen, desired: seen - 1, ordering: .relaxed)
            if r.exchanged { return true }
            seen = r.original
        }
    }

    /// Gives back what `take` took for a write that failed (zram_account_writeback_rollback).
    func refund() {
        if limitEnabled.load(ordering: .relaxed) { limit.add(1, ordering: .relaxed) }
    }
}

/// Which slots a writeback picks (zram's IDLE/HUGE/INCOMPRESSIBLE_WRITEBACK; none = any).
public struct WritebackMode: OptionSet, Sendable, Equatable {
    public let rawValue: Int
    public init(rawValue: Int) { self.rawValue = rawValue }
    public static let idle = WritebackMode(rawValue: 1)
    public static let huge = WritebackMode(rawValue: 2)
    public static let incompressible = WritebackMode(rawValue: 4)

    /// zram's parse_mode: `idle`, `huge`, `huge_idle`, `incompressible`.
    public init?(name: String) {
        switch name {
        case "idle": self = .idle
        case "huge": self = .huge
        case "huge_idle": self = [.idle, .huge]
        case "incompressible": self = .incompressible
        default: return nil
        }
    }
}

/// What one `writeback` write asks for: page ranges scanned with a mode, in order (zram scans as
/// it parses, so `page_index=5 type=idle` scans page 5 with no mode, then with idle).
public struct WritebackRequest: Sendable, Equatable {
    public struct Scan: Sendable, Equatable {
        public var mode: WritebackMode
        public var pages: Range<Int>
    }
    public var scans: [Scan] = []

    /// Parses what one would echo into /sys/block/zramN/writeback. The kernel's rules: a bare word
    /// is the legacy mode and `type=` a mode, each scanning the range set so far (the whole device
    /// at first) and ending the arguments; `page_index=N` and `page_indexes=LO-HI` (inclusive)
    /// scan that range with no mode and repeat. Beyond the kernel, which ignores them, an
    /// unknown key and an empty request are errors here.
    public static func parse(_ text: String, pageCount: Int) throws(ZramError) -> WritebackRequest {
        var r = WritebackRequest()
        var range = 0..<pageCount
        for word in text.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" }) {
            let parts = word.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let key = String(parts[0]), value = parts.count > 1 ? String(parts[1]) : ""
            if value.isEmpty || key == "type" {
                let name = value.isEmpty ? key : value
                guard let mode = WritebackMode(name: name) else {
                    throw .invalidArgument("unknown type '\(name)' (idle, huge, huge_idle, incompressible)")
                }
                r.scans.append(Scan(mode: mode, pages: range))
                return r
            }
            switch key {
            case "page_index":
                guard let lo = Int(value), lo >= 0 else { throw .invalidArgument("page_index=\(value) is not a page number") }
                guard lo < pageCount else { throw .invalidArgument("page_index=\(lo) is past the last page (\(pageCount - 1))") }
                range = lo..<(lo + 1)
            case "page_indexes":
                let ends = value.split(separator: "-", maxSplits: 1, omittingEmptySubsequences: false)
                guard ends.count == 2, let lo = Int(ends[0]), let hi = Int(ends[1]), lo >= 0, hi >= 0 else {
                    throw .invalidArgument("page_indexes=\(value) is not LO-HI")
                }
                guard lo < pageCount, hi < pageCount, lo <= hi else {
                    throw .invalidArgument("page_indexes=\(value) is outside 0-\(pageCount - 1) or reversed")
                }
                range = lo..<(hi + 1)
            default:
                throw .invalidArgument("unknown key '\(key)' (type, page_index, page_indexes)")
            }
            r.scans.append(Scan(mode: [], pages: range))
        }
        guard !r.scans.isEmpty else {
            throw .invalidArgument("say what to write back: type=idle|huge|huge_idle|incompressible, page_index=N or page_indexes=LO-HI")
        }
        return r
    }
}

/// What a writeback run did.
public struct WritebackReport: Sendable, Equatable {
    /// Slots the scan picked.
    public var picked = 0
    /// Pages now on the backing device.
    public var written = 0
    /// Picked pages read or rewritten meanwhile: they stay in RAM (their block is freed).
    public var skipped = 0
    /// Writes the backing device failed; those pages stay in RAM, their budget given back.
    public var failed = 0
    /// Pool memory given back (mem_used_total before minus after; other I/O may move it too).
    public var bytesFreed = 0
    /// Why the run stopped before the last pick, if it did (zram's return value).
    public var stop: WritebackStop?
    public var seconds = 0.0
}

public enum WritebackStop: Sendable, Equatable, CustomStringConvertible {
    /// writeback_limit_enable is on and writeback_limit reached 0 (zram: -EIO).
    case limitReached
    /// No free block on the backing device (zram: -ENOSPC).
    case backingFull
    /// The backing device failed a write with this errno (zram returns the last one).
    case writeError(Int32)

    public var errno: Int32 {
        switch self {
        case .limitReached: return EIO
        case .backingFull: return ENOSPC
        case .writeError(let e): return e
        }
    }

    public var description: String {
        switch self {
        case .limitReached: return "writeback_limit reached"
        case .backingFull: return "the backing device is full"
        case .writeError(let e): return "the backing device failed a write: \(String(cString: strerror(e)))"
        }
    }
}

extension ZramDevice {
    // MARK: backing device

    /// zram's backing_dev: a block device, or (beyond the kernel) a regular file, created sparse
    /// at the disk size if missing and removed again when the device goes. nil detaches it.
    /// Refused with `busy` while pages are on the old one (the kernel refuses after disksize).
    public func setBackingDevice(_ path: String?) throws(ZramError) {
        var new: Backing?
        if let path {
            let file: BlockFile
            do { file = try BlockFile.open(path, createBytes: diskSize) } catch {
                throw .invalidArgument("backing device \(error)")
            }
            do { new = try Backing(file: file, pageCount: pageCount, counters: counters) } catch {
                file.close(removing: true)
                throw error
            }
        }
        try runLock.withLock { () throws(ZramError) in
            try quiesce.exclusive { () throws(ZramError) in
                guard counters.load(.bdCount) == 0 else {
                    new?.file.close(removing: true)
                    throw .busy
                }
                storage.backing?.file.close(removing: true)
                storage = storage.with(backing: .some(new))
            }
        }
    }

    /// The backing device's path, or nil (zram's `none`).
    public var backingDevicePath: String? { quiesce.shared { storage.backing?.file.path } }

    /// Closes the backing device (and removes a file created for it): the device is going away.
    /// `removingFile: false` keeps a file the device created (another process takes it over).
    public func closeBackingDevice(removingFile: Bool = true) {
        runLock.withLock {
            quiesce.exclusive {
                storage.backing?.file.close(removing: removingFile)
                storage = storage.with(backing: .some(nil))
            }
        }
    }

    public var writebackLimit: UInt64 { writebackSettings.limit.load(ordering: .relaxed) }
    public var writebackLimitEnabled: Bool { writebackSettings.limitEnabled.load(ordering: .relaxed) }
    public var writebackBatchSize: Int { Int(writebackSettings.batchSize.load(ordering: .relaxed)) }
    public var compressedWriteback: Bool { writebackSettings.compressed.load(ordering: .relaxed) }

    /// writeback_limit, in 4 KiB units.
    public func setWritebackLimit(_ pages: UInt64) { writebackSettings.limit.store(pages, ordering: .relaxed) }
    public func setWritebackLimitEnabled(_ on: Bool) { writebackSettings.limitEnabled.store(on, ordering: .relaxed) }

    /// writeback_batch_size: any value above 0, as the kernel takes it.
    public func setWritebackBatchSize(_ n: UInt32) throws(ZramError) {
        guard n > 0 else { throw .invalidArgument("writeback_batch_size must be above 0") }
        writebackSettings.batchSize.store(n, ordering: .relaxed)
    }

    /// compressed_writeback; refused with `busy` while pages are written back the other way
    /// (the kernel: only before disksize).
    public func setCompressedWriteback(_ on: Bool) throws(ZramError) {
        try runLock.withLock { () throws(ZramError) in
            guard counters.load(.bdCount) == 0 || compressedWriteback == on else { throw .busy }
            writebackSettings.compressed.store(on, ordering: .relaxed)
        }
    }

    public var writebackPacking: Bool { writebackSettings.packing.load(ordering: .relaxed) }

    /// Beyond the kernel: pack compressed objects into shared backing blocks (used with
    /// compressed writeback); refused with `busy` while pages are written back the other way.
    public func setWritebackPacking(_ on: Bool) throws(ZramError) {
        try runLock.withLock { () throws(ZramError) in
            guard counters.load(.bdCount) == 0 || writebackPacking == on else { throw .busy }
            writebackSettings.packing.store(on, ordering: .relaxed)
        }
    }

    // MARK: idle

    /// zram's `idle`: with nil (`all`) marks every stored slot idle; with an age in seconds, marks
    /// the slots not accessed for longer and clears the mark of the rest. Same-filled and
    /// written-back slots are never marked. The kernel's arithmetic: cutoff = now - age as a
    /// signed number, idle when cutoff is 0 or after the access time.
    public func markIdle(olderThan age: UInt32?) throws(ZramError) {
        guard pageCount > 0 else { throw .notInitialized }
        let cutoff: Int64 = age.map { Int64(clock()) - Int64($0) } ?? 0
        runLock.withLock {
            quiesce.shared {
                slots.forEachPossiblyUsedRange(in: 0..<pageCount) { r in     // holes hold nothing
                    for index in r {
                        if slots.peekFlags(index).isUntouched { continue }
                        var f = slots.lock(index)
                        if f.isAllocated && !f.isWrittenBack && !f.isSame {
                            f.isIdle = cutoff == 0 || cutoff > Int64(f.accessTime)
                        }
                        slots.unlock(index, flags: f)
                    }
                }
            }
        }
    }

    // MARK: writeback

    /// zram's writeback: picks the slots `request` selects (not same-filled, not written back),
    /// writes them to the backing device largest first, and frees their memory. Other I/O goes
    /// on meanwhile; a page read, rewritten or freed while its copy is being written keeps its
    /// new state and the copy is dropped. Throws only for a device without a backing device;
    /// a run that stops early (limit, full, write error) says so in the report.
    public func writeback(_ request: WritebackRequest) throws(ZramError) -> WritebackReport {
        guard pageCount > 0 else { throw .notInitialized }
        let started = Clock.monotonicNanoseconds()
        var report = try runLock.withLock { () throws(ZramError) -> WritebackReport in
            try quiesce.shared { () throws(ZramError) -> WritebackReport in
                guard let backing = storage.backing else { throw .noBackingDevice }
                let before = storage.pool.totalPages
                var report = WritebackReport()
                let count = pickSlots(request.scans, into: backing.candidates) { f, mode in Self.eligible(f, mode) }
                report.picked = count
                writeBack(count, backing, storage, &report)
                backing.releaseCandidates(count: count)
                // The point of writeback is RAM: the pool's reserve of freed pages goes back too.
                if report.written > 0 { storage.pool.trimReserve() }
                report.bytesFreed = max(0, before - storage.pool.totalPages) << pageShift
                counters.add(.writebackRuns)
                counters.add(.writebackBytesFreed, report.bytesFreed)
                return report
            }
        }
        report.seconds = Double(Clock.monotonicNanoseconds() - started) / 1e9
        return report
    }

    /// zram's post-processing buckets: 64-byte size ranges, the largest visited first.
    private static let bucketBytes = 64
    private static let buckets = pageSize / bucketBytes + 1

    /// What writeback may pick: stored in the pool, not picked by another run, of the mode.
    @inline(__always)
    private static func eligible(_ f: SlotFlags, _ mode: WritebackMode) -> Bool {
        guard f.isAllocated, !f.isWrittenBack, !f.isSame, !f.isPicked else { return false }
        if mode.contains(.idle) && !f.isIdle { return false }
        if mode.contains(.huge) && !f.isHuge { return false }
        if mode.contains(.incompressible) && !f.isIncompressible { return false }
        return true
    }

    /// Marks the slots `eligible` selects picked and lists them in `candidates` in zram's order:
    /// the largest bucket first and, within a bucket, the last slot scanned first (zram prepends
    /// each pick to its bucket's list). A count per bucket, then each slot placed in its bucket's
    /// part from the end (a slot that changed bucket between the passes is left out, and a part
    /// that came out short is closed up). Returns the list's length.
    /// Writeback and recompression both pick this way (zram's place_pp_slot and select_pp_slot).
    func pickSlots(_ scans: [WritebackRequest.Scan], into candidates: UnsafeMutablePointer<UInt32>,
                   eligible: (SlotFlags, WritebackMode) -> Bool) -> Int {
        var counts = [Int](repeating: 0, count: Self.buckets)
        // Only the slot table's data extents: peeking a shmem hole would allocate it.
        for scan in scans {
            slots.forEachPossiblyUsedRange(in: scan.pages) { r in
                for index in r {
                    let f = SlotFlags(rawValue: slots.peekFlags(index).rawValue & ~SlotFlags.lockBit)
                    if !f.isUntouched && eligible(f, scan.mode) { counts[f.objectSize / Self.bucketBytes] += 1 }
                }
            }
        }
        // Bucket b's part is start[b]..<end[b], after every larger bucket's; filled from the end.
        var start = [Int](repeating: 0, count: Self.buckets)
        var end = [Int](repeating: 0, count: Self.buckets)
        var total = 0
        for b in stride(from: Self.buckets - 1, through: 0, by: -1) {
            start[b] = total
            total = min(total + counts[b], pageCount)
            end[b] = total
        }
        var next = end
        for scan in scans {
            slots.forEachPossiblyUsedRange(in: scan.pages) { r in
                for index in r where !slots.peekFlags(index).isUntouched {
                    var f = slots.lock(index)
                    let b = f.objectSize / Self.bucketBytes
                    if eligible(f, scan.mode) && next[b] > start[b] {
                        next[b] -= 1
                        candidates[next[b]] = UInt32(truncatingIfNeeded: index)
                        f.isPicked = true
                    }
                    slots.unlock(index, flags: f)
                }
            }
        }
        var out = 0
        for b in stride(from: Self.buckets - 1, through: 0, by: -1) {
            let filled = end[b] - next[b]
            if out != next[b] { memmove(candidates + out, candidates + next[b], filled * 4) }
            out += filled
        }
        return out
    }

    /// One batch of a run: pages (`backing.page(i)`) with their blocks, and the slots copied
    /// into them. Without packing every slot has a page of its own; with it (compressed writeback
    /// only) objects follow each other in a page until the next one does not fit.
    private struct Batch {
        var blocks: [Int] = []
        /// Bytes used in the last page.
        var used = 0
        var entries: [(index: Int, page: Int, offset: Int)] = []
        var lastPageIsEmpty: Bool { entries.last?.page != blocks.count - 1 }
    }

    /// Writes the listed slots back in batches of writeback_batch_size pages (at most
    /// Backing.maxBatch): each page or object copied out under its slot lock, the batch written
    /// with one call per run of consecutive blocks, then each slot switched to its block if
    /// nothing touched it meanwhile. The budget and the blocks are taken per 4 KiB block, as
    /// zram takes them per page.
    private func writeBack(_ count: Int, _ backing: Backing, _ b: Storage, _ report: inout WritebackReport) {
        let settings = writebackSettings
        let compressed = settings.compressed.load(ordering: .relaxed)
        let packing = compressed && settings.packing.load(ordering: .relaxed)
        let batchLimit = max(1, min(Int(settings.batchSize.load(ordering: .relaxed)), Backing.maxBatch))
        var batch = Batch()
        batch.blocks.reserveCapacity(Backing.maxBatch)
        batch.entries.reserveCapacity(Backing.maxBatch * 8)
        var i = 0
        while i < count {
            let index = Int(backing.candidates[i])
            // A page of its own (the open one if a stale pick left it empty), or room in it.
            let need = packing ? max(1, slots.peekFlags(index).objectSize) : pageSize
            let fits = !batch.blocks.isEmpty && (packing ? batch.used + need <= pageSize : batch.lastPageIsEmpty)
            if !fits {
                if batch.blocks.count == batchLimit, let e = submit(&batch, backing, b, &report) { report.stop = .writeError(e) }
                guard settings.take() else {
                    report.stop = .limitReached
                    break
                }
                guard let block = backing.reserveBlock() else {
                    settings.refund()
                    report.stop = .backingFull
                    break
                }
                batch.blocks.append(block)
                batch.used = 0
                if packing { memset(backing.page(batch.blocks.count - 1), 0, pageSize) }
            }
            i += 1
            let page = batch.blocks.count - 1
            var f = slots.lock(index)
            let size = packing ? f.objectSize : pageSize
            guard f.isPicked, batch.used + size <= pageSize,
                  copyOut(index, f, into: backing.page(page) + batch.used, compressed: compressed, zeroTail: !packing, b) else {
                f.isPicked = false
                slots.unlock(index, flags: f)
                report.skipped += 1
                continue
            }
            slots.unlock(index, flags: f)
            batch.entries.append((index, page, batch.used))
            batch.used += size
        }
        if !batch.blocks.isEmpty, let e = submit(&batch, backing, b, &report) { report.stop = .writeError(e) }
        while i < count {   // stopped early: the rest lose their pick
            unpick(Int(backing.candidates[i]))
            i += 1
        }
    }

    func unpick(_ index: Int) {
        var f = slots.lock(index)
        f.isPicked = false
        slots.unlock(index, flags: f)
    }

    /// The page (or, with compressed writeback, the stored object) into `out`; slot lock held.
    private func copyOut(_ index: Int, _ f: SlotFlags, into out: UnsafeMutableRawPointer, compressed: Bool,
                         zeroTail: Bool, _ b: Storage) -> Bool {
        if compressed {
            // zram's read_from_zspool_raw: the object as stored (the rest of the block zeroed).
            let size = f.objectSize
            b.pool.read(slots.handle(index), into: out, count: size)
            if zeroTail && size < pageSize { memset(out + size, 0, pageSize - size) }
            return true
        }
        do { try load(index, f, into: out, b, stream: nil) } catch { return false }
        return true
    }

    /// Writes the batch and completes each slot (zram_writeback_complete). Returns the last errno.
    private func submit(_ batch: inout Batch, _ backing: Backing, _ b: Storage, _ report: inout WritebackReport) -> Int32? {
        defer { batch = Batch(blocks: [], used: 0, entries: []); batch.blocks.reserveCapacity(Backing.maxBatch) }
        if batch.lastPageIsEmpty, let block = batch.blocks.popLast() {   // opened for picks that went stale
            backing.releaseBlock(block)
            writebackSettings.refund()
        }
        let blocks = batch.blocks
        var written = [Bool](repeating: true, count: blocks.count)
        var failure: Int32? = nil
        var first = 0
        while first < blocks.count {
            var end = first + 1
            while end < blocks.count && blocks[end] == blocks[end - 1] + 1 { end += 1 }
            for k in first..<end { backing.iovecs[k - first] = iovec(iov_base: backing.page(k), iov_len: pageSize) }
            let e = backing.file.write(firstBlock: blocks[first], backing.iovecs, count: end - first)
            if e == 0 {
                backing.file.dropCache(firstBlock: blocks[first], count: end - first)
                counters.add(.bdWrites, end - first)
            } else {
                failure = e
                for k in first..<end { written[k] = false }
            }
            first = end
        }
        // The run holds each block while its slots switch over, so a slot freed meanwhile
        // cannot release a block that more slots are about to point at.
        for (k, block) in blocks.enumerated() where written[k] { backing.hold(block) }
        let keepObject = writebackSettings.compressed.load(ordering: .relaxed)
        for (index, page, offset) in batch.entries {
            guard written[page] else {
                unpick(index)
                report.failed += 1
                continue
            }
            var f = slots.lock(index)
            guard f.isPicked else {
                // Read, rewritten or freed while being written: the copy is not its page any more.
                slots.unlock(index, flags: f)
                report.skipped += 1
                continue
            }
            // slot_free, then ZRAM_WB: the access time restarts at 0, as in the kernel.
            let keep = f
            backing.retain(blocks[page])
            replaceHandle(index, keep, with: Backing.handle(block: blocks[page], offset: offset), b)
            f = .empty
            f.isWrittenBack = true
            if keepObject {
                f.objectSize = keep.objectSize
                f.isHuge = keep.isHuge
                f.priority = keep.priority
            }
            counters.add(.pagesStored)
            slots.unlock(index, flags: f)
            report.written += 1
        }
        for (k, block) in blocks.enumerated() {
            if written[k] {
                backing.release(block)   // the run's hold: frees a block no slot took
            } else {
                backing.releaseBlock(block)
                writebackSettings.refund()
            }
        }
        return failure
    }

    /// A compressed written-back object read into `s.scratch` + `offset`, decompressed by the
    /// compressor of its priority (a secondary's stream is taken after the primary's `s`).
    private func decompressWrittenBack(_ s: StreamBuffers, _ offset: Int, _ size: Int, _ priority: Int,
                                       _ out: UnsafeMutableRawPointer, _ b: Storage) throws(ZramError) -> Bool {
        if priority == 0 { return s.codec.decompress(s.scratch + offset, count: size, intoPage: out) }
        return try b.streams(priority: priority).withStream { r in r.codec.decompress(s.scratch + offset, count: size, intoPage: out) }
    }

    /// A written-back page (slot lock held): the block read into `out`, or with compressed
    /// writeback read and decompressed. An I/O error zeroes the page and is an I/O error.
    func readBack(_ index: Int, _ flags: SlotFlags, into out: UnsafeMutableRawPointer, _ b: Storage,
                  stream: StreamBuffers?) throws(ZramError) {
        counters.add(.bdReads)
        guard let backing = b.backing else {
            memset(out, 0, pageSize)
            throw .ioError
        }
        let (block, offset) = Backing.location(slots.handle(index))
        let size = flags.objectSize
        let compressed = size > 0 && !flags.isHuge
        let aligned = Int(bitPattern: out) & (pageSize - 1) == 0
        if !compressed && (aligned || !backing.file.isDirect) {
            guard backing.file.read(block: block, into: out) == 0 else {
                memset(out, 0, pageSize)
                throw .ioError
            }
            return
        }
        let body = { (s: StreamBuffers) throws(ZramError) -> Void in
            guard backing.file.read(block: block, into: s.scratch) == 0,
                  !compressed || (offset + size <= pageSize && (try? self.decompressWrittenBack(s, offset, size, flags.priority, out, b)) == true) else {
                memset(out, 0, pageSize)
                throw .ioError
            }
            if !compressed { out.copyMemory(from: s.scratch, byteCount: pageSize) }
        }
        if let stream { try body(stream) } else { try b.streams.withStream(body) }
    }

    // MARK: block_state

    /// zram's debugfs block_state for pages `range` (default all): one line per stored slot,
    /// `index ac_time flags` with the flags s(ame) w(ritten back) h(uge) i(dle) r(ecompressed)
    /// n(incompressible), as "%12zd %12u.%06d %c%c%c%c%c%c\n".
    public func blockState(_ range: Range<Int>? = nil) -> String {
        let pages = (range ?? 0..<pageCount).clamped(to: 0..<pageCount)
        var out = ""
        quiesce.shared {
            slots.forEachPossiblyUsedRange(in: pages) { r in
                for index in r where !slots.peekFlags(index).isUntouched {
                    let f = slots.lock(index)
                    slots.unlock(index, flags: f)
                    guard f.isAllocated else { continue }
                    out += rightAligned(UInt64(index), width: 12) + " " + rightAligned(UInt64(f.accessTime), width: 12) + ".000000 "
                    out += f.isSame ? "s" : "."
                    out += f.isWrittenBack ? "w" : "."
                    out += f.isHuge ? "h" : "."
                    out += f.isIdle ? "i" : "."
                    out += f.priority != 0 ? "r" : "."
                    out += f.isIncompressible ? "n\n" : ".\n"
                }
            }
        }
        return out
    }
}
