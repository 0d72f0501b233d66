#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// Request data buffers of 4 KiB...256 KiB (powers of two), shared by every connection. Reply
/// buffers live as long as their connection, and clients such as nbdcopy open four fresh
/// connections per run: without sharing, every request of a short-lived connection would fault in
/// new pages (and free them with munmap and TLB shootdowns) — a third of a read-back's time.
enum DataBuffers {
    static let smallest = 4096
    static let largest = ReplyBuffer.retainedDataCapacity
    /// Idle buffers kept for reuse, in bytes; beyond it they go back to malloc.
    static let cacheLimit = 32 << 20

    private struct Cache: ~Copyable {
        var free: [[UInt]]   // addresses: plain values cross the lock without Sendable questions
        var bytes = 0
    }

    private static let classes = (largest / smallest).trailingZeroBitCount + 1
    private static let cache = Mutex(Cache(free: Array(repeating: [], count: classes)))

    /// The capacity a request of `count` bytes gets: a power of two up to `largest`, else exact.
    static func capacity(for count: Int) -> Int {
        let n = max(count, smallest)
        guard n <= largest else { return n }
        return 1 << (Int.bitWidth - (n - 1).leadingZeroBitCount)
    }

    private static func sizeClass(_ capacity: Int) -> Int? {
        guard capacity >= smallest, capacity <= largest, capacity & (capacity - 1) == 0 else { return nil }
        return (capacity / smallest).trailingZeroBitCount
    }

    /// A buffer of at least `count` bytes and its capacity (contents undefined).
    static func take(_ count: Int) -> (UnsafeMutableRawPointer, Int) {
        let capacity = capacity(for: count)
        if let c = sizeClass(capacity) {
            let reused: UInt? = cache.withLock { cache in
                guard let address = cache.free[c].popLast() else { return nil }
                cache.bytes -= capacity
                return address
            }
            if let reused, let p = UnsafeMutableRawPointer(bitPattern: reused) { return (p, capacity) }
        }
        return (.allocate(byteCount: capacity, alignment: 4096), capacity)
    }

    /// Returns a buffer obtained from `take` (or any 4096-aligned allocation of `capacity`).
    static func give(_ p: UnsafeMutableRawPointer, _ capacity: Int) {
        if let c = sizeClass(capacity) {
            let address = UInt(bitPattern: p)
            let kept = cache.withLock { cache in
                guard cache.bytes + capacity <= cacheLimit else { return false }
                cache.free[c].append(address)
                cache.bytes += capacity
                return true
            }
            if kept { return }
        }
        p.deallocate()
    }
}
