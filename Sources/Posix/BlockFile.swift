// A file or block device read and written in whole 4 KiB blocks at block numbers: the backing
// store zram writes idle pages to. Opened once, at setup, so writeback under memory pressure
// needs no path lookup and no allocation.

#if canImport(Glibc)
import Glibc
#endif

public final class BlockFile: @unchecked Sendable {   // @unchecked: immutable after init; pread/pwrite are thread-safe
    public let path: String
    public let fd: Int32
    /// Whole 4 KiB blocks it holds.
    public let blockCount: Int
    public let isBlockDevice: Bool
    /// O_DIRECT is in effect: I/O bypasses the page cache, so buffers must be 4 KiB aligned.
    public let isDirect: Bool
    /// The file did not exist: it was created here, and `close(removing: true)` deletes it.
    public let wasCreated: Bool
    private var isClosed = false

    /// O_DIRECT, which Glibc's Swift module leaves out (it needs _GNU_SOURCE).
    #if arch(arm64)
    static let oDirect: Int32 = 0o200000
    #else
    static let oDirect: Int32 = 0o40000
    #endif

    private init(path: String, fd: Int32, blockCount: Int, isBlockDevice: Bool, isDirect: Bool, wasCreated: Bool) {
        self.path = path
        self.fd = fd
        self.blockCount = blockCount
        self.isBlockDevice = isBlockDevice
        self.isDirect = isDirect
        self.wasCreated = wasCreated
    }

    /// Opens `path` for block I/O: a block device (exclusively, as zram does), an existing regular
    /// file (locked against a second user), or, if nothing is there, a new sparse file of
    /// `createBytes`. Errors name what is wrong: missing directory, in use, read-only, too small,
    /// not a file or device.
    public static func open(_ path: String, createBytes: Int) throws(PosixError) -> BlockFile {
        var st = stat()
        var created = false
        var fd: Int32
        if stat(path, &st) != 0 {
            guard errno == ENOENT else { throw .lastError("\(path)") }
            fd = Glibc.open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
            guard fd >= 0 else {
                if errno == ENOENT { throw .message("\(path): its directory does not exist") }
                throw .lastError("create \(path)")
            }
            created = true
            guard ftruncate(fd, off_t(createBytes)) == 0 else {
                let e = PosixError.lastError("size \(path) to \(createBytes) bytes")
                Glibc.close(fd)
                unlink(path)
                throw e
            }
        } else {
            let kind = st.st_mode & S_IFMT
            guard kind == S_IFBLK || kind == S_IFREG else { throw .message("\(path) is not a regular file or a block device") }
            // O_EXCL on a block device: refused while it is mounted or held by anyone else.
            fd = Glibc.open(path, O_RDWR | O_CLOEXEC | (kind == S_IFBLK ? O_EXCL : 0))
            guard fd >= 0 else {
                switch errno {
                case EROFS, EACCES, EPERM: throw .message("\(path) is read-only or not writable (\(String(cString: strerror(errno))))")
                case EBUSY: throw .message("\(path) is in use (mounted, or held by another device)")
                default: throw .lastError("open \(path)")
                }
            }
        }
        let isBlockDevice = st.st_mode & S_IFMT == S_IFBLK && !created
        // Another backing user of the same file (another device, another zramnbd) holds the lock.
        if !isBlockDevice && flock(fd, LOCK_EX | LOCK_NB) != 0 {
            Glibc.close(fd)
            throw .message("\(path) is in use as another device's backing file")
        }
        let bytes = lseek(fd, 0, SEEK_END)
        let blocks = bytes < 0 ? 0 : Int(bytes) / pageSize
        guard blocks > 0 else {
            Glibc.close(fd)
            if created { unlink(path) }
            throw .message("\(path) is too small: \(max(0, Int(bytes))) bytes, less than one 4 KiB block")
        }
        let direct = enableDirectIO(fd)
        return BlockFile(path: path, fd: fd, blockCount: blocks, isBlockDevice: isBlockDevice, isDirect: direct, wasCreated: created)
    }

    /// A backing file a predecessor process opened with `open` (an upgrade or a restart after a
    /// crash hands its descriptor over): adopted as it is, its lock and O_DIRECT included.
    public static func adopt(fd: Int32, path: String, wasCreated: Bool) throws(PosixError) -> BlockFile {
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw .lastError("fstat \(path)") }
        let kind = st.st_mode & S_IFMT
        guard kind == S_IFBLK || kind == S_IFREG else { throw .message("\(path): the handed-over descriptor is not a file or block device") }
        let bytes = lseek(fd, 0, SEEK_END)
        let blocks = bytes < 0 ? 0 : Int(bytes) / pageSize
        let flags = fcntl(fd, F_GETFL)
        return BlockFile(path: path, fd: fd, blockCount: blocks, isBlockDevice: kind == S_IFBLK && !wasCreated,
                         isDirect: flags >= 0 && flags & oDirect != 0, wasCreated: wasCreated)
    }

    /// Turns on O_DIRECT if the file system takes it (tmpfs and some others refuse); probes one
    /// aligned read, because some accept the flag and fail the I/O.
    private static func enableDirectIO(_ fd: Int32) -> Bool {
        let flags = fcntl(fd, F_GETFL)
        guard flags >= 0, fcntl(fd, F_SETFL, flags | oDirect) == 0 else { return false }
        var raw: UnsafeMutableRawPointer?
        guard posix_memalign(&raw, pageSize, pageSize) == 0, let probe = raw else { return false }
        defer { free(probe) }
        if pread(fd, probe, pageSize, 0) >= 0 { return true }
        _ = fcntl(fd, F_SETFL, flags)
        return false
    }

    /// Reads block `block` into `buffer` (4 KiB, aligned if `isDirect`). Returns 0 or an errno;
    /// a block past the end of the file reads as an I/O error, never as short data.
    public func read(block: Int, into buffer: UnsafeMutableRawPointer) -> Int32 {
        var done = 0
        while done < pageSize {
            let n = pread(fd, buffer + done, pageSize - done, off_t(block * pageSize + done))
            if n < 0 {
                if errno == EINTR { continue }
                return errno
            }
            if n == 0 { return EIO }
            done += n
        }
        return 0
    }

    /// Writes `count` consecutive blocks from `firstBlock` on, block i from `buffers[i]`
    /// (aligned if `isDirect`), in as few system calls as the kernel allows. Returns 0 or an errno.
    public func write(firstBlock: Int, _ buffers: UnsafeMutablePointer<iovec>, count: Int) -> Int32 {
        var offset = off_t(firstBlock * pageSize)
        var iov = buffers
        var left = count
        while left > 0 {
            let chunk = min(left, 1024)   // IOV_MAX on Linux
            let n = pwritev(fd, iov, Int32(chunk), offset)
            if n < 0 {
                if errno == EINTR { continue }
                return errno
            }
            if n == 0 { return EIO }
            // Short writes end on block boundaries in practice; a torn block is rewritten whole.
            let whole = n / pageSize
            guard whole > 0 else { continue }
            iov += whole
            left -= whole
            offset += off_t(whole * pageSize)
        }
        return 0
    }

    /// Drops cached pages of the written range (buffered I/O only), so written-back pages leave RAM.
    public func dropCache(firstBlock: Int, count: Int) {
        guard !isDirect else { return }
        _ = posix_fadvise(fd, off_t(firstBlock * pageSize), off_t(count * pageSize), POSIX_FADV_DONTNEED)
    }

    /// Closes the file (once; later calls do nothing); with `removing`, deletes it again if it
    /// was created here.
    public func close(removing: Bool) {
        guard !isClosed else { return }
        isClosed = true
        Glibc.close(fd)
        if removing && wasCreated { unlink(path) }
    }
}
