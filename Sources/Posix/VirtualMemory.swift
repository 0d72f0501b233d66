// Anonymous memory mappings: reserve address space, give pages back, unmap.

#if canImport(Glibc)
import Glibc
#endif

public enum VirtualMemory {
    /// Reserves `byteCount` bytes of private anonymous memory (read/write, MAP_NORESERVE): nothing
    /// is committed until a page is touched, and untouched pages read as zero.
    public static func reserve(byteCount: Int) throws(PosixError) -> UnsafeMutableRawPointer {
        guard let p = mmap(nil, byteCount, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0),
              p != MAP_FAILED else {
            throw .lastError("mmap \(byteCount) bytes")
        }
        return p
    }

    /// Drops a mapping made by `reserve`.
    public static func unmap(_ start: UnsafeMutableRawPointer, byteCount: Int) {
        munmap(start, byteCount)
    }

    /// Asks for 4 KiB pages only (no transparent huge pages), so `releaseToOS` can free single pages.
    public static func disableHugePages(_ start: UnsafeMutableRawPointer, byteCount: Int) {
        _ = madvise(start, byteCount, MADV_NOHUGEPAGE)
    }

    /// Faults in a range with one call (MADV_POPULATE_WRITE, Linux 5.14+) instead of a page fault
    /// per page; false if the kernel refused (the pages then fault in one by one on first use).
    public static func populate(_ start: UnsafeMutableRawPointer, byteCount: Int) -> Bool {
        let madvPopulateWrite: Int32 = 23
        return madvise(start, byteCount, madvPopulateWrite) == 0
    }
}

/// Gives the pages of a page-aligned range back to the OS; they read back as zeros afterwards.
/// MADV_DONTNEED_LOCKED (Linux 5.18+) works under mlockall, where plain MADV_DONTNEED is refused;
/// if the kernel refuses both, the range is zero-filled so callers relying on zeros stay correct.
public func releaseToOS(_ start: UnsafeMutableRawPointer, byteCount: Int) {
    let madvDontneedLocked: Int32 = 24
    if madvise(start, byteCount, madvDontneedLocked) == 0 { return }
    if madvise(start, byteCount, MADV_DONTNEED) == 0 { return }
    memset(start, 0, byteCount)
}
