// Posix: the only module that talks to libc for locks, threads, memory mappings, sockets and
// file-descriptor I/O. Every other module (except the codecs) builds on it, so each system call
// and its quirks (EINTR, short transfers, GNU extensions missing from Glibc's Swift module) is
// handled in one place. No Foundation, no dependencies.
//
// Words:
// - lock: `ConditionLock` (mutex + one condition), `AdaptiveLock` (a mutex that spins briefly
//   before sleeping), `ReadWriteLock` (writer-preferring; `shared` for readers, `exclusive` for
//   the writer). All are classes: pthread objects must not move.
// - thread: a detached pthread started with `Threads.spawn`; the data path runs on these, not on
//   Swift concurrency's pool. `Threads.onlineCPUs` is the number of online CPUs.
// - clock: CLOCK_MONOTONIC (`Clock`); a deadline is a monotonic `timespec`.
// - reserve: map anonymous, private, not-committed address space (`VirtualMemory.reserve`);
//   memory costs nothing until touched. Release: give pages back to the OS (`releaseToOS`);
//   they read back as zeros. Unmap: drop a reservation.
// - fully: a read or write that retries EINTR and short transfers until every byte moved (`IO`).
// - listener: a listening stream socket (`Sockets.listenUnix`, `Sockets.listenTCP`). A stale
//   unix socket is a socket file nobody accepts on; it is replaced. A live one is an error.
// - page: 4096 bytes (`pageSize`, `pageShift`), the unit of zram, zsmalloc, the codecs and the
//   RAM disk (x86_64's and arm64's usual PAGE_SIZE).
// - PosixError: what failed (the call and its errno, or a sentence). Each module maps it into its
//   own error type and wording.

#if canImport(Glibc)
import Glibc
#endif

/// The page everything here is built around: zram stores, zsmalloc allocates and the codecs
/// compress one of these at a time.
public let pageSize = 4096
public let pageShift = 12

/// A failed system call or setup step.
public enum PosixError: Error, Equatable, Sendable, CustomStringConvertible {
    /// `call` (the system call and what it was for, e.g. "bind /run/x.sock") failed with `errno`.
    case system(String, errno: Int32)
    /// The unix socket path is empty or does not fit sockaddr_un (`maxBytes` is the longest).
    case socketPathTooLong(String, maxBytes: Int)
    /// A server is accepting on the unix socket at this path.
    case socketInUse(String)
    /// Something other than a socket exists at this path.
    case notASocket(String)
    /// Anything else, said in a sentence.
    case message(String)

    public var description: String {
        switch self {
        case .system(let call, let e): return "\(call): \(String(cString: strerror(e)))"
        case .socketPathTooLong(let path, let max): return "unix socket path too long (max \(max) bytes): \(path)"
        case .socketInUse(let path): return "\(path): another server is listening there"
        case .notASocket(let path): return "\(path) exists and is not a socket"
        case .message(let m): return m
        }
    }

    /// The errno of a failed call, else nil.
    public var errno: Int32? {
        if case .system(_, let e) = self { return e }
        return nil
    }

    /// `.system(call, errno: <the current errno>)`.
    static func lastError(_ call: String) -> PosixError { .system(call, errno: Glibc.errno) }
}

// GNU extensions that Glibc's Swift module leaves out (they need _GNU_SOURCE). Plain C ABI.
@_silgen_name("pthread_setname_np")
func c_pthread_setname_np(_ thread: pthread_t, _ name: UnsafePointer<CChar>) -> Int32
@_silgen_name("accept4")
func c_accept4(_ fd: Int32, _ addr: UnsafeMutablePointer<sockaddr>?, _ len: UnsafeMutablePointer<socklen_t>?,
               _ flags: Int32) -> Int32
@_silgen_name("pipe2")
func c_pipe2(_ fds: UnsafeMutablePointer<Int32>, _ flags: Int32) -> Int32
@usableFromInline @_silgen_name("sched_getcpu")
func c_sched_getcpu() -> Int32
@_silgen_name("malloc_trim")
func c_malloc_trim(_ pad: Int) -> Int32

public enum Heap {
    /// Gives freed heap memory back to the system (glibc's malloc_trim): after a one-off burst
    /// of big allocations, which glibc otherwise keeps once its mmap threshold has risen.
    public static func trim() { _ = c_malloc_trim(0) }
}
