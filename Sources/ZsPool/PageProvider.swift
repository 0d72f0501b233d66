#if canImport(Glibc)
import Glibc
#endif
import Posix
import Synchronization

/// Hands out 4 KiB pages from one virtual reservation and gives freed pages back to the OS, so the
/// process RSS follows the pool (the kernel's alloc_page/__free_page for zspages).
///
/// Freed pages first go to a small resident reserve: reuse is free there, and a swap daemon under
/// memory pressure needs pages it does not have to fault in. Past the reserve, pages are returned with
/// MADV_DONTNEED_LOCKED (works under mlockall), falling back to MADV_DONTNEED on older kernels;
/// a memfd arena punches the page out of the file instead (DONTNEED would not free shmem).
/// Where the pool's pages live.
public enum PageBacking: String, Sendable, CaseIterable {
    /// Private anonymous memory: gone with the process.
    case anonymous
    /// A memfd mapped MAP_SHARED: survives the process if its fd is handed over (issue 15).
    case memfd

    /// What a pool gets unless told otherwise (see STATE.md for the measurement behind it).
    public static let defaultBacking: PageBacking = .memfd
}

final class PageProvider: @unchecked Sendable {
    let base: UnsafeMutableRawPointer
    let backing: PageBacking
    /// The arena's memfd when `backing` is `.memfd` (its fd is what a successor inherits).
    let shared: SharedMemory?
    let maxPages: Int
    let reserveLimit: Int
    private let lock = AdaptiveLock()
    @exclusivity(unchecked) private var bump = 0                         // pages never handed out start here
    private let warm: UnsafeMutablePointer<UInt32>   // resident free pages (reserve), a stack
    @exclusivity(unchecked) private var warmCount = 0
    private let cold: UnsafeMutablePointer<UInt32>   // released free pages, a stack
    @exclusivity(unchecked) private var coldCount = 0
    @exclusivity(unchecked) private var populatedEnd = 0   // never-used pages below this are resident
    private let coldBytes: Int
    /// Pages handed out and not yet returned.
    let pagesInUse = Atomic<Int>(0)

    /// Reserves address space for `maxPages` pages (1 ..< UInt32.max) and their free list; throws
    /// if `maxPages` is out of range or the reservation fails.
    init(maxPages: Int, reservePages: Int, backing: PageBacking = .anonymous, name: String = "zspool") throws(PosixError) {
        guard maxPages > 0 && maxPages < Int(UInt32.max) else {
            throw .message("zspool: maxPages \(maxPages) is not in 1..<\(UInt32.max)")
        }
        self.maxPages = maxPages
        self.backing = backing
        reserveLimit = reservePages
        let bytes = maxPages * pageSize
        // Virtual only: nothing is committed until a page is touched (a memfd is sized sparse).
        let p: UnsafeMutableRawPointer
        let memfd: SharedMemory?
        switch backing {
        case .anonymous:
            p = try VirtualMemory.reserve(byteCount: bytes)
            memfd = nil
        case .memfd:
            let m = try SharedMemory(name: "\(name).arena", byteCount: bytes)
            p = m.base
            memfd = m
        }
        VirtualMemory.disableHugePages(p, byteCount: bytes)    // 4 KiB granularity, or a release could not free
        // The cold stack can hold every page; map it lazily too.
        let free = maxPages * MemoryLayout<UInt32>.stride
        let c: UnsafeMutableRawPointer
        do { c = try VirtualMemory.reserve(byteCount: free) } catch {
            if memfd == nil { VirtualMemory.unmap(p, byteCount: bytes) }
            throw error
        }
        guard reservePages >= 0, reservePages < Int(UInt32.max),
              let w = malloc(max(reservePages, 1) * MemoryLayout<UInt32>.stride) else {
            if memfd == nil { VirtualMemory.unmap(p, byteCount: bytes) }
            VirtualMemory.unmap(c, byteCount: free)
            throw .message("zspool: cannot allocate a reserve of \(reservePages) pages")
        }
        base = p
        shared = memfd
        coldBytes = free
        cold = c.assumingMemoryBound(to: UInt32.self)
        warm = w.bindMemory(to: UInt32.self, capacity: max(reservePages, 1))
    }

    deinit {
        if shared == nil { VirtualMemory.unmap(base, byteCount: maxPages * pageSize) }   // a memfd unmaps itself
        VirtualMemory.unmap(UnsafeMutableRawPointer(cold), byteCount: coldBytes)
        Glibc.free(warm)
    }

    @inline(__always) func address(of page: UInt32) -> UnsafeMutableRawPointer {
        base + Int(page) &* pageSize
    }

    /// Never-used pages are faulted in this many at a time, ahead of use.
    static let populateBatch = 64

    /// Takes `count` pages into `out`; false (and nothing taken) if the cap would be exceeded.
    func allocate(_ count: Int, into out: UnsafeMutablePointer<UInt32>) -> Bool {
        lock.lock()
        guard warmCount + coldCount + (maxPages - bump) >= count else {
            lock.unlock()
            return false
        }
        var populateFrom = -1
        for k in 0..<count {
            if warmCount > 0 {
                warmCount -= 1; out[k] = warm[warmCount]
            } else if coldCount > 0 {
                coldCount -= 1; out[k] = cold[coldCount]
            } else {
                if bump % Self.populateBatch == 0 && populateFrom < 0 { populateFrom = bump }
                out[k] = UInt32(bump); bump += 1
            }
        }
        pagesInUse.add(count, ordering: .relaxed)
        lock.unlock()
        if populateFrom >= 0 { populate(from: populateFrom) }
        return true
    }

    /// Faults in the batch of never-used pages starting at `first` with one madvise: a page fault
    /// per page (entry, exit, one page zeroed each) cost ~15% of the time writing incompressible
    /// data. Outside the lock: other threads may take and touch these pages meanwhile, which is
    /// harmless. Kernels before 5.14 refuse it and the pages fault in one by one as before.
    private func populate(from first: Int) {
        let count = min(Self.populateBatch, maxPages - first)
        guard VirtualMemory.populate(address(of: UInt32(first)), byteCount: count * pageSize) else { return }
        lock.withLock { populatedEnd = max(populatedEnd, first + count) }
    }

    /// Pages faulted in ahead of use and not handed out yet (resident, not in the pool's count).
    var prefaultedPages: Int { lock.withLock { max(0, populatedEnd - bump) } }

    func free(_ count: Int, from pages: UnsafePointer<UInt32>) {
        lock.lock()
        defer { lock.unlock() }
        for k in 0..<count {
            let page = pages[k]
            if warmCount < reserveLimit {
                warm[warmCount] = page; warmCount += 1
            } else {
                release(page)
                cold[coldCount] = page; coldCount += 1
            }
        }
        pagesInUse.subtract(count, ordering: .relaxed)
    }

    /// Returns every reserve page to the OS (after a reset, or when asked to shrink).
    func trimReserve() {
        lock.lock()
        defer { lock.unlock() }
        while warmCount > 0 {
            warmCount -= 1
            release(warm[warmCount])
            cold[coldCount] = warm[warmCount]; coldCount += 1
        }
    }

    var reservePages: Int { lock.withLock { warmCount } }

    private func release(_ page: UInt32) {
        if let shared {
            shared.release(offset: Int(page) &* pageSize, byteCount: pageSize)
        } else {
            releaseToOS(address(of: page), byteCount: pageSize)
        }
    }

    /// Bytes of the arena backed by memory: the memfd's allocated blocks; nil for anonymous memory
    /// (its pages show only in the process RSS).
    var arenaAllocatedBytes: Int? { shared?.allocatedBytes }
}
