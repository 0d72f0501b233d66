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
    /// The page map's memfd (with `.memfd`): for each arena page, the owner word its size class
    /// sets (`PageOwner`), 0 while the page is free. The one piece of zsmalloc's metadata that a
    /// successor cannot rebuild from the pages themselves (which pages form which zspage, in what
    /// order), like the kernel's struct page fields zsmalloc uses. 8 bytes per pool page.
    let pageMap: SharedMemory?
    private let owners: UnsafeMutablePointer<UInt64>?
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
    convenience init(maxPages: Int, reservePages: Int, backing: PageBacking = .anonymous, name: String = "zspool") throws(PosixError) {
        try Self.checkSize(maxPages, reservePages)
        switch backing {
        case .anonymous:
            let p = try VirtualMemory.reserve(byteCount: maxPages * pageSize)
            try self.init(maxPages: maxPages, reservePages: reservePages, base: p, arena: nil, pageMap: nil)
        case .memfd:
            let arena = try SharedMemory(name: "\(name).arena", byteCount: maxPages * pageSize)
            let map = try SharedMemory(name: "\(name).pagemap", byteCount: maxPages * 8)
            try self.init(maxPages: maxPages, reservePages: reservePages, base: arena.base, arena: arena, pageMap: map)
        }
    }

    /// Maps an inherited arena and page map (fds adopted); the pages' owners are read back by
    /// `adopt`. `highWater` is the predecessor's count of pages ever handed out.
    convenience init(adoptingArena arenaFD: Int32, pageMap mapFD: Int32, maxPages: Int, reservePages: Int,
                     highWater: Int, name: String) throws(PosixError) {
        // Both fds are adopted: closed with the provider, or here if this throws.
        do throws(PosixError) {
            try Self.checkSize(maxPages, reservePages)
            guard highWater >= 0 && highWater <= maxPages else {
                throw .message("zspool: \(highWater) pages used of a \(maxPages)-page arena")
            }
        } catch { close(arenaFD); close(mapFD); throw error }
        let arena: SharedMemory
        do { arena = try SharedMemory(adopting: arenaFD, byteCount: maxPages * pageSize, name: "\(name).arena") } catch {
            close(mapFD); throw error
        }
        let map = try SharedMemory(adopting: mapFD, byteCount: maxPages * 8, name: "\(name).pagemap")
        try self.init(maxPages: maxPages, reservePages: reservePages, base: arena.base, arena: arena, pageMap: map)
        bump = highWater
        populatedEnd = highWater
    }

    private static func checkSize(_ maxPages: Int, _ reservePages: Int) throws(PosixError) {
        guard maxPages > 0 && maxPages < Int(UInt32.max) else {
            throw .message("zspool: maxPages \(maxPages) is not in 1..<\(UInt32.max)")
        }
        guard reservePages >= 0, reservePages < Int(UInt32.max) else {
            throw .message("zspool: reservePages \(reservePages) is not in 0..<\(UInt32.max)")
        }
    }

    /// Takes over `base` (unmapped here on failure when anonymous; the memfds close themselves).
    private init(maxPages: Int, reservePages: Int, base p: UnsafeMutableRawPointer,
                 arena: SharedMemory?, pageMap: SharedMemory?) throws(PosixError) {
        let bytes = maxPages * pageSize
        self.maxPages = maxPages
        backing = arena == nil ? .anonymous : .memfd
        reserveLimit = reservePages
        VirtualMemory.disableHugePages(p, byteCount: bytes)    // 4 KiB granularity, or a release could not free
        // The cold stack can hold every page; map it lazily too.
        let free = maxPages * MemoryLayout<UInt32>.stride
        let c: UnsafeMutableRawPointer
        do { c = try VirtualMemory.reserve(byteCount: free) } catch {
            if arena == nil { VirtualMemory.unmap(p, byteCount: bytes) }
            throw error
        }
        guard let w = malloc(max(reservePages, 1) * MemoryLayout<UInt32>.stride) else {
            if arena == nil { VirtualMemory.unmap(p, byteCount: bytes) }
            VirtualMemory.unmap(c, byteCount: free)
            throw .message("zspool: cannot allocate a reserve of \(reservePages) pages")
        }
        base = p
        shared = arena
        self.pageMap = pageMap
        owners = pageMap?.base.bindMemory(to: UInt64.self, capacity: maxPages)
        coldBytes = free
        cold = c.assumingMemoryBound(to: UInt32.self)
        warm = w.bindMemory(to: UInt32.self, capacity: max(reservePages, 1))
    }

    deinit {
        if shared == nil { VirtualMemory.unmap(base, byteCount: maxPages * pageSize) }   // a memfd unmaps itself
        VirtualMemory.unmap(UnsafeMutableRawPointer(cold), byteCount: coldBytes)
        Glibc.free(warm)
    }

    /// Records who owns a page just allocated (the owning class's lock held; nobody else touches
    /// the page's word). A no-op for anonymous memory, which no successor can inherit.
    @inline(__always) func setOwner(_ page: UInt32, _ word: UInt64) {
        owners?[Int(page)] = word
    }

    /// Pages ever handed out (the bump pointer): the part of the page map a successor reads.
    var highWater: Int { lock.withLock { bump } }

    /// A successor's rebuild: calls `body` with each owned page below the high water mark and its
    /// owner word, then files every other page there as free (released: a predecessor's reserve
    /// may still hold stale bytes). Before any allocation.
    func adopt(_ body: (UInt32, UInt64) throws(PosixError) -> Void) throws(PosixError) {
        guard let owners else { return }
        var used = 0
        var runStart = 0, runLength = 0
        for page in 0..<bump {
            let word = owners[page]
            if word != 0 {
                try body(UInt32(page), word)
                used += 1
                continue
            }
            cold[coldCount] = UInt32(page); coldCount += 1
            if runLength > 0 && runStart + runLength == page { runLength += 1 } else {
                if runLength > 0 { release(UInt32(runStart), runLength) }
                runStart = page; runLength = 1
            }
        }
        if runLength > 0 { release(UInt32(runStart), runLength) }
        // Reuse low pages first: the cold stack pops from its top.
        var i = 0, j = coldCount - 1
        while i < j { let t = cold[i]; cold[i] = cold[j]; cold[j] = t; i += 1; j -= 1 }
        pagesInUse.store(used, ordering: .relaxed)
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
        // Pages past the reserve are released in runs of consecutive page numbers, one call each:
        // a zspage's pages were usually bump-allocated together, and a punched hole costs about
        // a microsecond more than a madvise, most of it per call, not per page.
        var runStart: UInt32 = 0, runLength = 0
        for k in 0..<count {
            let page = pages[k]
            setOwner(page, 0)
            if warmCount < reserveLimit {
                warm[warmCount] = page; warmCount += 1
            } else {
                if runLength > 0 && page == runStart &+ UInt32(runLength) {
                    runLength += 1
                } else {
                    if runLength > 0 { release(runStart, runLength) }
                    runStart = page; runLength = 1
                }
                cold[coldCount] = page; coldCount += 1
            }
        }
        if runLength > 0 { release(runStart, runLength) }
        pagesInUse.subtract(count, ordering: .relaxed)
    }

    /// Returns every reserve page to the OS (after a reset, or when asked to shrink).
    func trimReserve() {
        lock.lock()
        defer { lock.unlock() }
        while warmCount > 0 {
            warmCount -= 1
            release(warm[warmCount], 1)
            cold[coldCount] = warm[warmCount]; coldCount += 1
        }
    }

    var reservePages: Int { lock.withLock { warmCount } }

    /// Returns `count` consecutive pages from `page` on to the OS.
    private func release(_ page: UInt32, _ count: Int) {
        if let shared {
            shared.release(offset: Int(page) &* pageSize, byteCount: count &* pageSize)
        } else {
            releaseToOS(address(of: page), byteCount: count &* pageSize)
        }
    }

    /// Bytes of the arena backed by memory: the memfd's allocated blocks; nil for anonymous memory
    /// (its pages show only in the process RSS).
    var arenaAllocatedBytes: Int? { shared?.allocatedBytes }
}
