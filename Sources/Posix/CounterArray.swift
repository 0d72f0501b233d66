import Synchronization

/// A fixed number of relaxed atomic counters (as the kernel's atomic64_t statistics): zram's
/// counters and the NBD I/O counters. One allocation, made once; inlinable, since the data path
/// counts through it from other modules.
public final class CounterArray: @unchecked Sendable {   // @unchecked: the storage is atomics only
    public let count: Int
    @usableFromInline let values: UnsafeMutablePointer<Atomic<Int>>

    public init(count: Int) {
        self.count = count
        values = .allocate(capacity: count)
        for i in 0..<count { (values + i).initialize(to: Atomic<Int>(0)) }
    }

    deinit {
        values.deinitialize(count: count)
        values.deallocate()
    }

    @inlinable @inline(__always)
    public func add(_ i: Int, _ n: Int) { values[i].add(n, ordering: .relaxed) }

    @inlinable @inline(__always)
    public func subtract(_ i: Int, _ n: Int) { values[i].subtract(n, ordering: .relaxed) }

    /// An add for counters with one writer thread: a plain load and store, no locked instruction
    /// (wrapping, as a counter may).
    @inlinable @inline(__always)
    public func addBySoleWriter(_ i: Int, _ n: Int) {
        values[i].store(values[i].load(ordering: .relaxed) &+ n, ordering: .relaxed)
    }

    @inlinable @inline(__always)
    public func load(_ i: Int) -> Int { values[i].load(ordering: .relaxed) }

    @inlinable @inline(__always)
    public func store(_ i: Int, _ v: Int) { values[i].store(v, ordering: .relaxed) }

    /// Raises counter `i` to `v` if it is lower (a peak, as mem_used_max).
    public func raise(_ i: Int, to v: Int) {
        var seen = load(i)
        while v > seen {
            let r = values[i].compareExchange(expected: seen, desired: v, ordering: .relaxed)
            if r.exchanged { break }
            seen = r.original
        }
    }
}
