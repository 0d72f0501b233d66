import Glibc
import Posix
import Synchronization

/// Bits of a slot's flags word, laid out as zram's: the low 13 bits hold the object size
/// (0...4096), the flags sit above it.
struct SlotFlags {
    static let sizeMask: UInt64 = (1 << 13) - 1
    /// Per-slot lock bit (zram 6.15+'s ZRAM_ENTRY_LOCK).
    static let lock: UInt64 = 1 << 13
    /// Same-filled page; the handle word holds the fill word.
    static let same: UInt64 = 1 << 14
    /// Written back to a backing device (never set: no writeback here).
    static let writtenBack: UInt64 = 1 << 15
    /// Stored raw in a 4096-byte object.
    static let huge: UInt64 = 1 << 16
    /// Marked idle (no writeback/recompression consumers here; kept for layout fidelity).
    static let idle: UInt64 = 1 << 17
    /// Recompression could not shrink it (never set: no recompression here).
    static let incompressible: UInt64 = 1 << 18
    /// Two bits: which compressor (priority 0 = primary) produced the object.
    static let priorityShift: UInt64 = 19
    static let priorityMask: UInt64 = 3 << 19

    /// zram's "allocated": holds data of any kind.
    @inline(__always)
    static func isAllocated(_ f: UInt64) -> Bool { f & (sizeMask | same | writtenBack) != 0 }
}

/// zram's table: 16 bytes per 4 KiB page (handle-or-fill-word, flags), in one anonymous mapping.
/// Untouched parts cost no memory, so a huge disk is cheap until written.
///
/// The handle word is read and written only under the slot's lock; the flags word is atomic so
/// lock-free peeks (is this slot empty?) are safe.
final class SlotTable: @unchecked Sendable {
    let count: Int
    let byteCount: Int
    private let words: UnsafeMutablePointer<Atomic<UInt64>>

    init(count: Int) throws(ZramError) {
        self.count = count
        byteCount = max(count * 16, 1)
        let p: UnsafeMutableRawPointer
        do { p = try VirtualMemory.reserve(byteCount: byteCount) } catch {
            throw .outOfMemory("cannot map a slot table of \(byteCount) bytes: \(error)")
        }
        // Anonymous memory is zero: every slot starts unallocated and unlocked.
        words = p.bindMemory(to: Atomic<UInt64>.self, capacity: 2 * max(count, 1))
    }

    deinit { VirtualMemory.unmap(UnsafeMutableRawPointer(words), byteCount: byteCount) }

    /// Start of the mapping (for tests that inspect its residency).
    var baseAddress: UnsafeRawPointer { UnsafeRawPointer(words) }

    /// Empties every slot at once by dropping the mapping's pages (they read back as zero).
    /// Nobody may hold or take a slot lock meanwhile.
    func clearAll() {
        releaseToOS(UnsafeMutableRawPointer(words), byteCount: byteCount)   // works under mlockall
    }

    /// The flags word without taking the lock (may show the lock bit).
    @inline(__always)
    func peekFlags(_ i: Int) -> UInt64 { words[2 * i + 1].load(ordering: .acquiring) }

    /// Takes slot `i`'s lock and returns its flags (without the lock bit). Spins briefly, then yields:
    /// holders only copy or (de)compress one page.
    @inline(__always)
    func lock(_ i: Int) -> UInt64 {
        let w = words + (2 * i + 1)
        let cur = w.pointee.load(ordering: .relaxed)
        if cur & SlotFlags.lock == 0,
           w.pointee.compareExchange(expected: cur, desired: cur | SlotFlags.lock, ordering: .acquiring).exchanged {
            return cur
        }
        return lockSlow(i)
    }

    private func lockSlow(_ i: Int) -> UInt64 {
        let w = words + (2 * i + 1)
        var spins = 0
        while true {
            let cur = w.pointee.load(ordering: .relaxed)
            if cur & SlotFlags.lock == 0,
               w.pointee.compareExchange(expected: cur, desired: cur | SlotFlags.lock, ordering: .acquiring).exchanged {
                return cur
            }
            spins += 1
            if spins >= 64 { sched_yield() }
        }
    }

    /// Releases slot `i`, publishing `flags` (which must not contain the lock bit).
    @inline(__always)
    func unlock(_ i: Int, flags: UInt64) {
        words[2 * i + 1].store(flags, ordering: .releasing)
    }

    /// The handle or fill word. Caller holds the slot lock.
    @inline(__always)
    func handle(_ i: Int) -> UInt64 { words[2 * i].load(ordering: .relaxed) }

    @inline(__always)
    func setHandle(_ i: Int, _ h: UInt64) { words[2 * i].store(h, ordering: .relaxed) }
}
