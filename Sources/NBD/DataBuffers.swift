#if canImport(Glibc)
import Glibc
#endif
import Posix
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

/// The memory of big requests, shared by every connection of the servers that share it (the
/// daemon: one for all devices). A buffer over DataBuffers' largest (a READ over 256 KiB, a
/// WRITE over the input buffer, a huge block status) is reserved here before it is taken and
/// given back once its reply is sent; when the budget is spent the connection waits, which
/// means it stops reading requests: back-pressure, never a failed request. A request bigger
/// than the whole budget still runs once nothing else holds any (alone).
///
/// Each connection may keep its last big buffer as a spare for the next big request (clients
/// that send 32 MiB requests reuse it rather than map 32 MiB each time); spares count against
/// the budget too, and a connection that needs room takes it from idle spares first.
public final class PayloadBudget: @unchecked Sendable {  // @unchecked: state is guarded by `lock`
    /// Bytes the big buffers of all connections may take together.
    public let limit: Int
    private let lock = ConditionLock()
    /// Bytes of the big buffers that exist: in use, or idle as a connection's spare.
    private var reserved = 0
    private var waiters = 0
    /// Bytes held by connections inside take() (a block status reply growing its buffer): when
    /// they are all that is reserved, one of them goes ahead, or they would wait for each other.
    private var heldByTakers = 0
    /// Spares holding a buffer no request uses, oldest first.
    private var idle: [SpareBuffer] = []

    public init(bytes: Int) {
        limit = max(0, bytes)
    }

    /// Bytes held by big buffers right now, in use or kept as spares.
    public var reservedBytes: Int { lock.withLock { reserved } }
    /// Connections waiting for room.
    public var waitingConnections: Int { lock.withLock { waiters } }

    /// A buffer of at least `count` bytes for the connection owning `spare`: the spare if it is
    /// big enough, else a new one once the budget has room. `holding`: bytes of the budget the
    /// caller holds and gives back right after (a buffer being grown).
    func take(_ count: Int, for spare: SpareBuffer, holding: Int = 0) -> (UnsafeMutableRawPointer, Int) {
        var unused: [UnsafeMutableRawPointer] = []
        lock.lock()
        if let b = spare.buffer {
            let capacity = spare.capacity
            dropIdle(spare)
            if capacity >= count {
                lock.unlock()
                return (b, capacity)
            }
            reserved -= capacity
            unused.append(b)
        }
        heldByTakers += holding
        while reserved + count > limit && reserved > heldByTakers {
            if !idle.isEmpty {
                let s = idle.removeFirst()
                reserved -= s.capacity
                unused.append(s.buffer!)
                s.buffer = nil
                s.capacity = 0
                continue
            }
            if !unused.isEmpty {  // free memory before sleeping, then look again
                lock.unlock()
                for p in unused { p.deallocate() }
                unused = []
                lock.lock()
                continue
            }
            waiters += 1
            lock.wait()
            waiters -= 1
        }
        heldByTakers -= holding
        reserved += count
        lock.unlock()
        for p in unused { p.deallocate() }
        return (.allocate(byteCount: count, alignment: 4096), count)
    }

    /// The reply that carried `p` was sent: it becomes the connection's spare (the bigger one
    /// stays, at most the maximum request size), unless a connection is waiting for room.
    func give(_ p: UnsafeMutableRawPointer, _ capacity: Int, to spare: SpareBuffer) {
        lock.lock()
        var unused: UnsafeMutableRawPointer? = p
        var unusedCapacity = capacity
        if waiters == 0 && capacity <= Int(BlockSize.maximumPayload) && capacity > spare.capacity {
            if let old = spare.buffer {
                unused = old
                unusedCapacity = spare.capacity
            } else {
                unused = nil
                idle.append(spare)
            }
            spare.buffer = p
            spare.capacity = capacity
        }
        if unused != nil {
            reserved -= unusedCapacity
            if waiters > 0 { lock.broadcast() }
        }
        lock.unlock()
        unused?.deallocate()
    }

    /// Frees a buffer from take() for good.
    func release(_ p: UnsafeMutableRawPointer, _ capacity: Int) {
        lock.withLock {
            reserved -= capacity
            if waiters > 0 { lock.broadcast() }
        }
        p.deallocate()
    }

    /// The connection is gone: so is its spare.
    func retire(_ spare: SpareBuffer) {
        let b: (UnsafeMutableRawPointer, Int)? = lock.withLock {
            guard let b = spare.buffer else { return nil }
            let capacity = spare.capacity
            dropIdle(spare)
            reserved -= capacity
            if waiters > 0 { lock.broadcast() }
            return (b, capacity)
        }
        b?.0.deallocate()
    }

    /// Takes the spare's buffer off the idle list (the caller holds the lock).
    private func dropIdle(_ spare: SpareBuffer) {
        if let i = idle.firstIndex(where: { $0 === spare }) { idle.remove(at: i) }
        spare.buffer = nil
        spare.capacity = 0
    }
}
