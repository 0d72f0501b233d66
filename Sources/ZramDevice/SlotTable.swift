import Glibc
import Posix
import Synchronization
import ZsPool

/// A slot's flags word, laid out as zram's: the low 13 bits hold the object size (0...4096), the
/// flags sit above it, and the high 32 bits hold the access time (zram's `ac_time`, a separate
/// u32 in the kernel's table entry; here it fits the word, so a slot stays 16 bytes).
/// A value type over the raw word: every accessor is a mask or a shift.
struct SlotFlags: RawRepresentable, Equatable, Sendable {
    var rawValue: UInt64

    @inline(__always) init(rawValue: UInt64) { self.rawValue = rawValue }

    // The bit layout (zram's enum zram_pageflags over ZRAM_FLAG_SHIFT = 13).
    private static let sizeMask: UInt64 = (1 << 13) - 1
    /// Per-slot lock bit (zram 6.15+'s ZRAM_ENTRY_LOCK); only SlotTable sets and clears it.
    static let lockBit: UInt64 = 1 << 13
    private static let sameBit: UInt64 = 1 << 14
    private static let writtenBackBit: UInt64 = 1 << 15
    private static let hugeBit: UInt64 = 1 << 16
    private static let idleBit: UInt64 = 1 << 17
    private static let incompressibleBit: UInt64 = 1 << 18
    private static let priorityShift: UInt64 = 19
    private static let priorityMask: UInt64 = 3 << 19
    /// ZRAM_PP_SLOT: picked by a writeback run; any access or free clears it, which tells the run
    /// that the copy it took is stale.
    private static let postProcessingBit: UInt64 = 1 << 21
    private static let accessTimeShift: UInt64 = 32
    /// Everything an access clears (zram's mark_slot_accessed): idle, picked, and the old time.
    private static let accessClears: UInt64 = idleBit | postProcessingBit | ~0 << accessTimeShift

    /// No bit at all: an untouched or freed slot, unlocked.
    static let empty = SlotFlags(rawValue: 0)

    /// A same-filled page (the handle word holds the fill word).
    @inline(__always) static func sameFilled() -> SlotFlags { SlotFlags(rawValue: sameBit) }

    /// A pool object of `size` bytes (0...4096), stored raw if `huge`.
    @inline(__always) static func object(size: Int, huge: Bool) -> SlotFlags {
        SlotFlags(rawValue: UInt64(size) | (huge ? hugeBit : 0))
    }

    /// Nothing set, not even the lock bit (what a lock-free peek at an untouched slot sees).
    @inline(__always) var isUntouched: Bool { rawValue == 0 }

    /// zram's "allocated": holds data of any kind (an object, a fill word, or a written-back page).
    @inline(__always) var isAllocated: Bool { rawValue & (Self.sizeMask | Self.sameBit | Self.writtenBackBit) != 0 }

    /// Bytes of the pool object (zram_get_obj_size); 0 for same-filled and empty slots.
    @inline(__always) var objectSize: Int {
        get { Int(truncatingIfNeeded: rawValue & Self.sizeMask) }
        set { rawValue = rawValue & ~Self.sizeMask | UInt64(newValue) & Self.sizeMask }
    }

    /// ZRAM_SAME: a same-filled page; the handle word holds the fill word.
    @inline(__always) var isSame: Bool {
        get { rawValue & Self.sameBit != 0 }
        set { setBit(Self.sameBit, newValue) }
    }

    /// ZRAM_WB: written back to the backing device; the handle word holds the block number.
    @inline(__always) var isWrittenBack: Bool {
        get { rawValue & Self.writtenBackBit != 0 }
        set { setBit(Self.writtenBackBit, newValue) }
    }

    /// ZRAM_HUGE: stored raw in a 4096-byte object.
    @inline(__always) var isHuge: Bool {
        get { rawValue & Self.hugeBit != 0 }
        set { setBit(Self.hugeBit, newValue) }
    }

    /// ZRAM_IDLE: marked idle by `idle`; writeback type=idle picks these.
    @inline(__always) var isIdle: Bool {
        get { rawValue & Self.idleBit != 0 }
        set { setBit(Self.idleBit, newValue) }
    }

    /// ZRAM_INCOMPRESSIBLE: no recompression algorithm could shrink it; recompress skips it.
    @inline(__always) var isIncompressible: Bool {
        get { rawValue & Self.incompressibleBit != 0 }
        set { setBit(Self.incompressibleBit, newValue) }
    }

    /// ZRAM_COMP_PRIORITY (two bits): which compressor produced the object (0 = the primary).
    @inline(__always) var priority: Int {
        get { Int(truncatingIfNeeded: (rawValue & Self.priorityMask) >> Self.priorityShift) }
        set { rawValue = rawValue & ~Self.priorityMask | (UInt64(newValue) << Self.priorityShift) & Self.priorityMask }
    }

    /// ZRAM_PP_SLOT: a writeback run picked the slot and has not finished with it.
    @inline(__always) var isPicked: Bool {
        get { rawValue & Self.postProcessingBit != 0 }
        set { setBit(Self.postProcessingBit, newValue) }
    }

    /// zram's `ac_time`: CLOCK_BOOTTIME seconds (as u32) of the last read or write; 0 = never.
    @inline(__always) var accessTime: UInt32 { UInt32(truncatingIfNeeded: rawValue >> Self.accessTimeShift) }

    /// zram's mark_slot_accessed: these flags after a read or write at `now`, with the idle and
    /// picked marks cleared.
    @inline(__always) func accessed(at now: UInt32) -> SlotFlags {
        SlotFlags(rawValue: rawValue & ~Self.accessClears | UInt64(now) << Self.accessTimeShift)
    }

    @inline(__always) private mutating func setBit(_ bit: UInt64, _ on: Bool) {
        rawValue = on ? rawValue | bit : rawValue & ~bit
    }
}

/// zram's table: 16 bytes per 4 KiB page (handle-or-fill-word, flags), in one anonymous mapping
/// or one memfd (which a successor process can inherit). Untouched parts cost no memory, so a huge
/// disk is cheap until written.
///
/// The handle word is read and written only under the slot's lock; the flags word is atomic so
/// lock-free peeks (is this slot empty?) are safe.
final class SlotTable: @unchecked Sendable {
    let count: Int
    let byteCount: Int
    private let words: UnsafeMutablePointer<Atomic<UInt64>>
    /// The table's memfd, when shared.
    let shared: SharedMemory?

    init(count: Int, backing: PageBacking = .defaultBacking, name: String = "zram") throws(ZramError) {
        // 16 bytes a slot; the device bounds `count` (ZramConfig.maxDiskSize), this is the last guard.
        guard count >= 0, count <= Int.max / 16 else { throw .invalidArgument("slot table of \(count) pages") }
        self.count = count
        byteCount = max(count * 16, 1)
        let p: UnsafeMutableRawPointer
        do throws(PosixError) {
            switch backing {
            case .anonymous:
                p = try VirtualMemory.reserve(byteCount: byteCount)
                shared = nil
            case .memfd:
                let m = try SharedMemory(name: "\(name).slots", byteCount: byteCount)
                p = m.base
                shared = m
            }
        } catch {
            throw .outOfMemory("cannot map a slot table of \(byteCount) bytes: \(error)")
        }
        // A new mapping (anonymous or a fresh sparse memfd) is zero: every slot starts unallocated
        // and unlocked.
        words = p.bindMemory(to: Atomic<UInt64>.self, capacity: 2 * max(count, 1))
    }

    /// Maps an inherited slot table (a successor's side; `fd` adopted, closed with the table).
    init(adopting fd: Int32, count: Int, name: String) throws(ZramError) {
        guard count >= 0, count <= Int.max / 16 else { throw .invalidArgument("slot table of \(count) pages") }
        self.count = count
        byteCount = max(count * 16, 1)
        do {
            let m = try SharedMemory(adopting: fd, byteCount: byteCount, name: "\(name).slots")
            shared = m
            words = m.base.bindMemory(to: Atomic<UInt64>.self, capacity: 2 * max(count, 1))
        } catch {
            throw .incompatibleState("slot table: \(error)")
        }
    }

    /// Calls `body` with the ranges of slots in `range` that may hold data, in order: all of it
    /// for anonymous memory, only the memfd's data extents (SEEK_DATA/SEEK_HOLE) for a shared
    /// table. Walks over large untouched ranges (discard, block status, a successor's check)
    /// must skip holes: a read fault on a shmem hole allocates a page, where anonymous memory
    /// maps the shared zero page, so peeking every slot would commit the whole table.
    func forEachPossiblyUsedRange<E: Error>(in range: Range<Int>, _ body: (Range<Int>) throws(E) -> Void) throws(E) {
        let range = range.clamped(to: 0..<count)
        guard !range.isEmpty else { return }
        guard let shared else { return try body(range) }
        let seekData: Int32 = 3, seekHole: Int32 = 4
        var offset = range.lowerBound * 16
        let stop = range.upperBound * 16
        while offset < stop {
            let start = lseek(shared.fd, off_t(offset), seekData)
            guard start >= 0 else { return }          // ENXIO: no data past offset
            var end = lseek(shared.fd, start, seekHole)
            if end < 0 { end = off_t(byteCount) }
            let lo = max(range.lowerBound, Int(start) / 16), hi = min(range.upperBound, (Int(end) + 15) / 16)
            if lo < hi { try body(lo..<hi) }
            offset = Int(end)
        }
    }

    deinit { if shared == nil { VirtualMemory.unmap(UnsafeMutableRawPointer(words), byteCount: byteCount) } }

    /// Start of the mapping (for tests that inspect its residency).
    var baseAddress: UnsafeRawPointer { UnsafeRawPointer(words) }

    /// Empties every slot at once by dropping the mapping's pages (they read back as zero).
    /// Nobody may hold or take a slot lock meanwhile.
    func clearAll() {
        if let shared {
            shared.release(offset: 0, byteCount: byteCount)    // a punched hole: frees shmem, also locked
        } else {
            releaseToOS(UnsafeMutableRawPointer(words), byteCount: byteCount)   // works under mlockall
        }
    }

    /// The flags word without taking the lock (may show the lock bit).
    @inline(__always)
    func peekFlags(_ i: Int) -> SlotFlags { SlotFlags(rawValue: words[2 * i + 1].load(ordering: .acquiring)) }

    /// Takes slot `i`'s lock and returns its flags (without the lock bit). Spins briefly, then yields:
    /// holders only copy or (de)compress one page.
    @inline(__always)
    func lock(_ i: Int) -> SlotFlags {
        let w = words + (2 * i + 1)
        let cur = w.pointee.load(ordering: .relaxed)
        if cur & SlotFlags.lockBit == 0,
           w.pointee.compareExchange(expected: cur, desired: cur | SlotFlags.lockBit, ordering: .acquiring).exchanged {
            return SlotFlags(rawValue: cur)
        }
        return lockSlow(i)
    }

    private func lockSlow(_ i: Int) -> SlotFlags {
        let w = words + (2 * i + 1)
        var spins = 0
        while true {
            let cur = w.pointee.load(ordering: .relaxed)
            if cur & SlotFlags.lockBit == 0,
               w.pointee.compareExchange(expected: cur, desired: cur | SlotFlags.lockBit, ordering: .acquiring).exchanged {
                return SlotFlags(rawValue: cur)
            }
            spins += 1
            if spins >= 64 { sched_yield() }
        }
    }

    /// Releases slot `i`, publishing `flags` (which must not contain the lock bit).
    @inline(__always)
    func unlock(_ i: Int, flags: SlotFlags) {
        words[2 * i + 1].store(flags.rawValue, ordering: .releasing)
    }

    /// The handle or fill word. Caller holds the slot lock.
    @inline(__always)
    func handle(_ i: Int) -> UInt64 { words[2 * i].load(ordering: .relaxed) }

    @inline(__always)
    func setHandle(_ i: Int, _ h: UInt64) { words[2 * i].store(h, ordering: .relaxed) }
}
