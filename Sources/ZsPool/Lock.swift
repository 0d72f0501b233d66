#if canImport(Glibc)
import Glibc
#endif

/// A plain pthread mutex in stable memory: explicit lock/unlock, so a hot path can hold it across a
/// loop and drop it where the kernel drops its spinlock (compaction).
final class PoolLock: @unchecked Sendable {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>

    init() {
        mutex = .allocate(capacity: 1)
        var attr = pthread_mutexattr_t()
        pthread_mutexattr_init(&attr)
        // Adaptive: spin briefly before sleeping; class locks are held for a memcpy at most.
        pthread_mutexattr_settype(&attr, Int32(PTHREAD_MUTEX_ADAPTIVE_NP))
        pthread_mutex_init(mutex, &attr)
        pthread_mutexattr_destroy(&attr)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    @inline(__always) func lock() { pthread_mutex_lock(mutex) }
    @inline(__always) func unlock() { pthread_mutex_unlock(mutex) }
    @inline(__always) func withLock<T>(_ body: () throws -> T) rethrows -> T {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }
}

/// A growable array of trivial values in raw memory (zspage descriptors, handle slots). Growth copies
/// under the owner's lock; readers hold the same lock, so no reader sees a stale base.
struct RawVector<Element: BitwiseCopyable> {
    private(set) var base: UnsafeMutablePointer<Element>
    private(set) var capacity: Int

    init(capacity: Int, fill: Element) {
        self.capacity = max(capacity, 1)
        base = .allocate(capacity: self.capacity)
        base.initialize(repeating: fill, count: self.capacity)
    }

    /// Grows to at least `minimum` elements, new ones set to `fill`.
    mutating func reserve(_ minimum: Int, fill: Element) {
        guard minimum > capacity else { return }
        var newCapacity = capacity * 2
        while newCapacity < minimum { newCapacity *= 2 }
        let newBase = UnsafeMutablePointer<Element>.allocate(capacity: newCapacity)
        newBase.moveInitialize(from: base, count: capacity)
        (newBase + capacity).initialize(repeating: fill, count: newCapacity - capacity)
        base.deallocate()
        base = newBase
        capacity = newCapacity
    }

    func release() { base.deallocate() }

    @inline(__always) subscript(i: Int) -> Element {
        get { base[i] }
        nonmutating set { base[i] = newValue }
    }
}
