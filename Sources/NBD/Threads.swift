#if canImport(Glibc)
import Glibc
#endif

/// A pthread mutex with one condition variable (Synchronization.Mutex has no condition, and the
/// reader must sleep until a worker hands a request slot back). Heap-allocated so the pthread
/// objects never move.
final class ConditionLock: @unchecked Sendable {  // @unchecked: it is the synchronisation
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let cond = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)

    init() {
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

    @inline(__always) func lock() { pthread_mutex_lock(mutex) }
    @inline(__always) func unlock() { pthread_mutex_unlock(mutex) }
    /// Caller holds the lock.
    @inline(__always) func wait() { pthread_cond_wait(cond, mutex) }
    @inline(__always) func signal() { pthread_cond_signal(cond) }
    @inline(__always) func broadcast() { pthread_cond_broadcast(cond) }

    /// Caller holds the lock. Returns false if `deadline` (CLOCK_MONOTONIC) passed.
    func wait(until deadline: timespec) -> Bool {
        var d = deadline
        return pthread_cond_timedwait(cond, mutex, &d) != ETIMEDOUT
    }

    @inline(__always) func withLock<R, E: Error>(_ body: () throws(E) -> R) throws(E) -> R {
        lock()
        defer { unlock() }
        return try body()
    }
}

enum Clock {
    /// CLOCK_MONOTONIC now plus `seconds`.
    static func deadline(after seconds: Double) -> timespec {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        let total = Double(now.tv_sec) + Double(now.tv_nsec) / 1e9 + max(0, seconds)
        let whole = total.rounded(.down)
        return timespec(tv_sec: Int(whole), tv_nsec: Int((total - whole) * 1e9))
    }

    /// CLOCK_MONOTONIC in nanoseconds (vDSO: no system call).
    @inline(__always)
    static func monotonicNanoseconds() -> Int {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return now.tv_sec &* 1_000_000_000 &+ now.tv_nsec
    }

    /// Milliseconds until `deadline` (0 if it passed), for poll().
    static func millisecondsUntil(_ deadline: timespec) -> Int32 {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        let ms = (deadline.tv_sec - now.tv_sec) * 1000 + (deadline.tv_nsec - now.tv_nsec) / 1_000_000
        return Int32(clamping: max(0, ms))
    }
}

extension Duration {
    var seconds: Double {
        let c = components
        return Double(c.seconds) + Double(c.attoseconds) / 1e18
    }
}

/// Detached POSIX threads: the data path runs on plain threads, not on Swift concurrency's pool.
enum Threads {
    private final class Start {
        let name: String
        let body: @Sendable () -> Void
        init(name: String, body: @escaping @Sendable () -> Void) {
            self.name = name
            self.body = body
        }
    }

    static func spawn(name: String, _ body: @escaping @Sendable () -> Void) throws(NBDError) {
        let context = Unmanaged.passRetained(Start(name: name, body: body)).toOpaque()
        var attr = pthread_attr_t()
        pthread_attr_init(&attr)
        defer { pthread_attr_destroy(&attr) }
        pthread_attr_setdetachstate(&attr, Int32(PTHREAD_CREATE_DETACHED))
        var tid = pthread_t()
        let rc = pthread_create(&tid, &attr, { raw in
            let start = Unmanaged<Start>.fromOpaque(raw!).takeRetainedValue()
            _ = c_pthread_setname_np(pthread_self(), String(start.name.prefix(15)))
            start.body()
            return nil
        }, context)
        if rc != 0 {
            Unmanaged<Start>.fromOpaque(context).release()
            throw .system("pthread_create", errno: rc)
        }
    }

    /// Number of online CPUs (at least 1).
    static var onlineCPUs: Int { max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))) }
}

// GNU extensions that Glibc's Swift module leaves out (they need _GNU_SOURCE). Plain C ABI.
@_silgen_name("pthread_setname_np")
func c_pthread_setname_np(_ thread: pthread_t, _ name: UnsafePointer<CChar>) -> Int32
@_silgen_name("accept4")
func c_accept4(_ fd: Int32, _ addr: UnsafeMutablePointer<sockaddr>?, _ len: UnsafeMutablePointer<socklen_t>?,
               _ flags: Int32) -> Int32
@_silgen_name("pipe2")
func c_pipe2(_ fds: UnsafeMutablePointer<Int32>, _ flags: Int32) -> Int32
