// Memory a successor process can inherit: a memfd (shmem file) mapped MAP_SHARED. The daemon keeps
// its pool arena and slot table here so that a restart or upgrade can hand the fds over
// (issue 15); anonymous memory dies with the process.

#if canImport(Glibc)
import Glibc
#endif

// Glibc's Swift module leaves these out (they need _GNU_SOURCE). Plain C ABI.
@_silgen_name("memfd_create")
func c_memfd_create(_ name: UnsafePointer<CChar>, _ flags: UInt32) -> Int32
@_silgen_name("fallocate")
func c_fallocate(_ fd: Int32, _ mode: Int32, _ offset: Int, _ length: Int) -> Int32

let mfdCloexec: UInt32 = 0x1
let fallocKeepSize: Int32 = 0x1
let fallocPunchHole: Int32 = 0x2

/// One memfd and its shared mapping of `byteCount` bytes. The file is sized up front but sparse:
/// like an anonymous reservation, a page costs memory only once touched, and reads as zero before.
/// Owns the mapping and the fd; both go with the object.
public final class SharedMemory: @unchecked Sendable {
    public let fd: Int32
    public let base: UnsafeMutableRawPointer
    public let byteCount: Int

    /// A new memfd named `name` (shown in /proc/PID/fd and maps), close-on-exec (the hand-over
    /// clears it for the fds it passes), sized and mapped. Throws what failed, never traps.
    public init(name: String, byteCount: Int) throws(PosixError) {
        guard byteCount > 0 else { throw .message("memfd \(name): size \(byteCount) is not positive") }
        let fd = c_memfd_create(name, mfdCloexec)
        guard fd >= 0 else { throw .lastError("memfd_create \(name)") }
        guard ftruncate(fd, off_t(byteCount)) == 0 else {
            let e = PosixError.lastError("ftruncate memfd \(name) to \(byteCount) bytes")
            close(fd)
            throw e
        }
        do { base = try Self.map(fd, byteCount, name) } catch { close(fd); throw error }
        self.fd = fd
        self.byteCount = byteCount
    }

    /// A bare memfd holding `bytes` (close-on-exec), unmapped: what a process passes to the one
    /// it execs (the hand-over manifest). The caller owns the fd.
    public static func file(name: String, holding bytes: [UInt8]) throws(PosixError) -> Int32 {
        let fd = c_memfd_create(name, mfdCloexec)
        guard fd >= 0 else { throw .lastError("memfd_create \(name)") }
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress! + done, $0.count - done, off_t(done)) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else {
                let e = PosixError.lastError("write memfd \(name)")
                close(fd)
                throw e
            }
            done += n
        }
        return fd
    }

    /// What `file(name:holding:)` holds (at most `limit` bytes); nil if it cannot be read.
    public static func contents(of fd: Int32, limit: Int = 64 << 20) -> [UInt8]? {
        var st = stat()
        guard fstat(fd, &st) == 0, st.st_size >= 0, Int(st.st_size) <= limit else { return nil }
        var out = [UInt8](repeating: 0, count: Int(st.st_size))
        var done = 0
        while done < out.count {
            let n = out.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + done, $0.count - done, off_t(done)) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { return nil }
            done += n
        }
        return out
    }

    /// Maps an inherited memfd (a successor's side). `fd` is adopted: closed with the object, or
    /// at once if this throws. Refuses a file smaller than `byteCount`: its state would not fit.
    public init(adopting fd: Int32, byteCount: Int, name: String) throws(PosixError) {
        var st = stat()
        guard fstat(fd, &st) == 0 else {
            let e = PosixError.lastError("fstat memfd \(name)")
            close(fd)
            throw e
        }
        guard byteCount > 0, Int(st.st_size) >= byteCount else {
            close(fd)
            throw .message("memfd \(name): \(st.st_size) bytes, expected at least \(byteCount)")
        }
        do { base = try Self.map(fd, byteCount, name) } catch { close(fd); throw error }
        self.fd = fd
        self.byteCount = byteCount
    }

    /// MAP_NORESERVE: the reservation is address space, not a commitment (as the anonymous one).
    private static func map(_ fd: Int32, _ byteCount: Int, _ name: String) throws(PosixError) -> UnsafeMutableRawPointer {
        guard let p = mmap(nil, byteCount, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0),
              p != MAP_FAILED else {
            throw .lastError("mmap memfd \(name) (\(byteCount) bytes)")
        }
        return p
    }

    /// A second fd for the same file (what a successor would receive), close-on-exec.
    public func duplicateFD() throws(PosixError) -> Int32 {
        let d = fcntl(fd, F_DUPFD_CLOEXEC, 0)
        guard d >= 0 else { throw .lastError("dup memfd") }
        return d
    }

    deinit {
        munmap(base, byteCount)
        close(fd)
    }

    /// Frees the file's pages in a page-aligned range (they read back as zeros). Shmem pages are
    /// the file's, not the mapping's: MADV_DONTNEED only unmaps them and MADV_REMOVE is refused
    /// on mlocked mappings (EINVAL), so the hole is punched in the file, which also frees locked
    /// pages. If even that is refused, the range is zeroed so callers relying on zeros stay correct.
    @inline(__always)
    public func release(offset: Int, byteCount: Int) {
        if c_fallocate(fd, fallocPunchHole | fallocKeepSize, offset, byteCount) == 0 { return }
        memset(base + offset, 0, byteCount)
    }

    /// Bytes of the file actually backed by memory (st_blocks * 512): what a freed page gives back.
    public var allocatedBytes: Int {
        var st = stat()
        guard fstat(fd, &st) == 0 else { return -1 }
        return Int(st.st_blocks) * 512
    }

    /// Asks for 4 KiB pages only (no shmem huge pages), so a punched page is really freed.
    public func disableHugePages() { _ = madvise(base, byteCount, MADV_NOHUGEPAGE) }

    /// Faults in a range with one call (MADV_POPULATE_WRITE); on shmem this allocates the file's
    /// pages as well as mapping them. False if the kernel refused.
    public func populate(offset: Int, byteCount: Int) -> Bool {
        VirtualMemory.populate(base + offset, byteCount: byteCount)
    }
}
