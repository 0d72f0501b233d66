// Detached pthreads, the CPU count, and the monotonic clock.

#if canImport(Glibc)
import Glibc
#endif

/// Detached POSIX threads: the data path runs on plain threads, not on Swift concurrency's pool.
public enum Threads {
    private final class Start {
        let name: String
        let body: @Sendable () -> Void
        init(name: String, body: @escaping @Sendable () -> Void) {
            self.name = name
            self.body = body
        }
    }

    /// Starts `body` on a new detached thread named `name` (the kernel keeps 15 bytes of it).
    public static func spawn(name: String, _ body: @escaping @Sendable () -> Void) throws(PosixError) {
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
    public static var onlineCPUs: Int { max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))) }

    /// The CPU the calling thread runs on (sched_getcpu), or -1 if unknown.
    @inlinable @inline(__always)
    public static func currentCPU() -> Int { Int(c_sched_getcpu()) }
}

/// CLOCK_MONOTONIC.
public enum Clock {
    /// CLOCK_MONOTONIC now plus `seconds`.
    public static func deadline(after seconds: Double) -> timespec {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        // Clamped to 0...1e9 s (NaN = 0), so no value of `seconds` makes the conversions trap.
        let wait = seconds.isNaN ? 0 : min(max(0, seconds), 1e9)
        let total = Double(now.tv_sec) + Double(now.tv_nsec) / 1e9 + wait
        let whole = total.rounded(.down)
        return timespec(tv_sec: Int(whole), tv_nsec: Int((total - whole) * 1e9))
    }

    /// CLOCK_MONOTONIC in nanoseconds (vDSO: no system call).
    @inlinable @inline(__always)
    public static func monotonicNanoseconds() -> Int {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return now.tv_sec &* 1_000_000_000 &+ now.tv_nsec
    }

    /// CLOCK_BOOTTIME in whole seconds, truncated to 32 bits as zram's slot access times are
    /// (ktime_get_boottime_seconds); it counts suspended time, as the kernel's does.
    @inlinable @inline(__always)
    public static func bootSeconds() -> UInt32 {
        var now = timespec()
        clock_gettime(CLOCK_BOOTTIME, &now)
        return UInt32(truncatingIfNeeded: now.tv_sec)
    }

    /// The earlier of two deadlines, where nil is none.
    public static func earliest(_ a: timespec?, _ b: timespec?) -> timespec? {
        guard let a else { return b }
        guard let b else { return a }
        return (a.tv_sec, a.tv_nsec) <= (b.tv_sec, b.tv_nsec) ? a : b
    }

    /// Milliseconds until `deadline` (0 if it passed), for poll().
    public static func millisecondsUntil(_ deadline: timespec) -> Int32 {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        let ms = (deadline.tv_sec - now.tv_sec) * 1000 + (deadline.tv_nsec - now.tv_nsec) / 1_000_000
        return Int32(clamping: max(0, ms))
    }
}

extension Duration {
    /// The duration in seconds.
    public var seconds: Double {
        let c = components
        return Double(c.seconds) + Double(c.attoseconds) / 1e18
    }
}
