// The pthread locks. Each is a class holding its pthread object in heap memory, so it never moves.
// Hot paths hold them, so the small methods are inlinable into the caller's module.

#if canImport(Glibc)
import Glibc
#endif

/// A pthread mutex with one condition variable (Synchronization.Mutex has no condition, and the
/// NBD reader must sleep until a worker hands a request slot back). The condition waits on
/// CLOCK_MONOTONIC.
public final class ConditionLock: @unchecked Sendable {  // @unchecked: it is the synchronisation
    @usableFromInline let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    @usableFromInline let cond = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)

    public init() {
        pthread_mutex_init(mutex, nil)
        var attr = pthread_condattr_t()
        pthread_condattr_init(&attr)
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC)
        pthread_cond_init(cond, &attr)
        pthread_condattr_destroy(&attr)
    }

    deinit {
        pthread_cond_destroy(cond)
        pthread_mutex_destroy(mutex)
        cond.deallocate()
        mutex.deallocate()
    }

    @inlinable @inline(__always) public func lock() { pthread_mutex_lock(mutex) }
    @inlinable @inline(__always) public func unlock() { pthread_mutex_unlock(mutex) }
    /// Caller holds the lock.
    @inlinable @inline(__always) public func wait() { pthread_cond_wait(cond, mutex) }
    @inlinable @inline(__always) public func signal() { pthread_cond_signal(cond) }
    @inlinable @inline(__always) public func broadcast() { pthread_cond_broadcast(cond) }

    /// Caller holds the lock. Returns false if `deadline` (CLOCK_MONOTONIC) passed.
    public func wait(until deadline: timespec) -> Bool {
        var d = deadline
        return pthread_cond_timedwait(cond, mutex, &d) != ETIMEDOUT
    }

    @inlinable @inline(__always)
    public func withLock<R, E: Error>(_ body: () throws(E) -> R) throws(E) -> R {
        lock()
        defer { unlock() }
        return try body()
    }
}

/// A plain pthread mutex of the adaptive kind: it spins briefly before sleeping, for locks held
/// for a memcpy at most (zsmalloc's class locks). Explicit lock/unlock, so a hot path can hold it
/// across a loop and drop it where the kernel drops its spinlock (compaction).
public final class AdaptiveLock: @unchecked Sendable {
    @usableFromInline let mutex: UnsafeMutablePointer<pthread_mutex_t>

    public init() {
        mutex = .allocate(capacity: 1)
        var attr = pthread_mutexattr_t()
        pthread_mutexattr_init(&attr)
        pthread_mutexattr_settype(&attr, Int32(PTHREAD_MUTEX_ADAPTIVE_NP))
        pthread_mutex_init(mutex, &attr)
        pthread_mutexattr_destroy(&attr)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    @inlinable @inline(__always) public func lock() { pthread_mutex_lock(mutex) }
    @inlinable @inline(__always) public func unlock() { pthread_mutex_unlock(mutex) }
    @inlinable @inline(__always) public func withLock<T>(_ body: () throws -> T) rethrows -> T {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }
}

/// A writer-preferring pthread rwlock: readers share it, one writer excludes everyone, and a
/// waiting writer stops new readers, so a busy stream of readers cannot starve it. (ZramDevice:
/// readers are I/O requests, the writer is a control that swaps the pool or streams.)
public final class ReadWriteLock: @unchecked Sendable {
    @usableFromInline let rwlock: UnsafeMutablePointer<pthread_rwlock_t>

    public init() {
        rwlock = .allocate(capacity: 1)
        var attr = pthread_rwlockattr_t()
        pthread_rwlockattr_init(&attr)
        pthread_rwlockattr_setkind_np(&attr, Int32(PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP))
        pthread_rwlock_init(rwlock, &attr)
        pthread_rwlockattr_destroy(&attr)
    }

    deinit {
        pthread_rwlock_destroy(rwlock)
        rwlock.deallocate()
    }

    @inlinable @inline(__always)
    public func shared<R, E: Error>(_ body: () throws(E) -> R) throws(E) -> R {
        pthread_rwlock_rdlock(rwlock)
        defer { pthread_rwlock_unlock(rwlock) }
        return try body()
    }

    @inlinable
    public func exclusive<R, E: Error>(_ body: () throws(E) -> R) throws(E) -> R {
        pthread_rwlock_wrlock(rwlock)
        defer { pthread_rwlock_unlock(rwlock) }
        return try body()
    }

    /// Explicit exclusive locking, for a hold that outlives one call (a device frozen for a
    /// hand-over until the process execs, or until `unlock` after a failed one).
    public func lockExclusive() { pthread_rwlock_wrlock(rwlock) }
    public func unlock() { pthread_rwlock_unlock(rwlock) }
}
