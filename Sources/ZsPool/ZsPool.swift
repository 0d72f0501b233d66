#if canImport(Glibc)
import Glibc
#endif
import Posix
import Synchronization

// Vocabulary of this module (zsmalloc's words, mm/zsmalloc.c):
// - pool: a ZsPool, the allocator of one zram device; its page provider hands out 4 KiB pages.
// - size class: a SizeClass, serving objects of one size (32...4096 B; neighbours that would use
//   the same zspage shape are merged into one, as the kernel does).
// - class position: a size class's index in the pool's table of distinct classes (not its
//   nominal index 0...254, which `ZsClassInfo.index` reports).
// - zspage: 1...chainSize pages of one class, read as one range and cut into objects; known by
//   its id within the class and described by a zspage descriptor.
// - object: one allocation inside a zspage; the non-huge ones start with an 8-byte header.
// - handle: the stable name of an object that zs_malloc returns (ZsHandle; its bits are in
//   ZsHandleCoding): class position and handle entry.
// - handle entry: a class's table entry for one handle, holding the object's location while the
//   handle lives, or the link to the next free entry.
// - location: zspage id and object index (ObjectLocation); compaction changes it, never the handle.
// - fullness group: zspages of a class by their in-use ratio (empty, 10%...99% in tenths, full);
//   allocation takes the fullest, compaction moves objects from the emptiest.

/// A userspace port of the kernel's zsmalloc (mm/zsmalloc.c, Linux 6.12-6.18).
///
/// Objects of 1...4096 bytes are packed into size classes (32...4096 B, step 16); each class owns
/// zspages of 1...chainSize pages, keeps them in fullness groups and allocates from the fullest one.
/// Compaction moves objects from the emptiest zspages into the fullest and frees the emptied ones.
///
/// Thread safety: every operation takes only the lock of the object's class (lock order: class lock,
/// then the page provider's lock). Compaction holds one class at a time and yields between zspages.
public final class ZsPool: @unchecked Sendable {
    public let name: String
    public let geometry: ZsGeometry
    public var chainSize: Int { geometry.chainSize }
    /// zs_huge_class_size(): zram stores a page raw when its compressed length reaches this.
    public var hugeClassSize: Int { geometry.hugeClassSize }

    let provider: PageProvider
    private let classes: [SizeClass]
    private let compactionInProgress = Atomic<Bool>(false)
    private let pagesCompactedTotal = Atomic<Int>(0)

    /// - Parameters:
    ///   - maxPages: hard cap on pages the pool may hold (address space is reserved for it, nothing
    ///     more); malloc fails once it is reached.
    ///   - reservePages: freed pages kept resident for reuse before being returned to the OS.
    /// - Throws: when `maxPages` is not in 1..<UInt32.max or the address space cannot be reserved.
    /// - Throws: also for a chain size outside `ZsGeometry.chainSizes`, or when the classes'
    ///   tables cannot be allocated.
    ///   - backing: where the pages live; `.memfd` lets a successor process inherit them.
    public init(name: String, chainSize: Int = 8, maxPages: Int, reservePages: Int = 256,
                backing: PageBacking = .defaultBacking) throws(PosixError) {
        guard ZsGeometry.chainSizes.contains(chainSize) else {
            throw .message("zspool: chain size \(chainSize) is not in \(ZsGeometry.chainSizes)")
        }
        guard reservePages >= 0 else { throw .message("zspool: reservePages \(reservePages) is negative") }
        self.name = name
        geometry = ZsGeometry(chainSize: chainSize)
        provider = try PageProvider(maxPages: maxPages, reservePages: reservePages, backing: backing, name: name)
        var built: [SizeClass] = []
        for (position, info) in geometry.classes.enumerated() {
            guard let c = SizeClass(info: info, position: position, provider: provider) else {
                throw .message("zspool: out of memory for the size classes' tables")
            }
            built.append(c)
        }
        classes = built
    }

    /// A successor's pool: maps the inherited arena and page map (the fds are adopted: closed
    /// with the pool, or at once if this throws) and rebuilds every size class from them and the object headers (see
    /// STATE.md). `chainSize`, `maxPages` and `highWater` are the predecessor's; throws, with
    /// what is wrong, when the pages do not form a consistent pool.
    /// `recovering`: after a crash (SIGKILL mid-malloc or mid-free) freelists are rebuilt
    /// rather than checked; see SizeClass.finishAdoption.
    public init(adoptingArena arenaFD: Int32, pageMap mapFD: Int32, name: String, chainSize: Int, maxPages: Int,
                highWater: Int, pagesCompacted: Int, reservePages: Int = 256, recovering: Bool = false) throws(PosixError) {
        guard ZsGeometry.chainSizes.contains(chainSize) else {
            close(arenaFD); close(mapFD)       // adopted even when refused
            throw .message("zspool: chain size \(chainSize) is not in \(ZsGeometry.chainSizes)")
        }
        self.name = name
        geometry = ZsGeometry(chainSize: chainSize)
        provider = try PageProvider(adoptingArena: arenaFD, pageMap: mapFD, maxPages: maxPages,
                                    reservePages: reservePages, highWater: highWater, name: name)
        var built: [SizeClass] = []
        for (position, info) in geometry.classes.enumerated() {
            guard let c = SizeClass(info: info, position: position, provider: provider) else {
                throw .message("zspool: out of memory for the size classes' tables")
            }
            built.append(c)
        }
        classes = built
        try provider.adopt { (page, word) throws(PosixError) in
            let position = PageOwner.classPosition(word)
            guard PageOwner.isWellFormed(word), position < built.count else {
                throw .message("zspool: page \(page) has a page map word \(word) naming no size class")
            }
            try built[position].adoptPage(page, index: PageOwner.index(word), id: PageOwner.id(word))
        }
        for c in built { try c.finishAdoption(relink: recovering) }
        pagesCompactedTotal.store(pagesCompacted, ordering: .relaxed)
    }

    /// zs_malloc(): room for `size` payload bytes (1...4096); nil when the page cap is reached,
    /// memory for the class's tables runs out, or `size` is outside 1...4096.
    @inline(__always)
    public func malloc(_ size: Int) -> ZsHandle? {
        guard size > 0 && size <= pageSize else { return nil }
        return classes[geometry.classPosition(forAllocation: size)].malloc()
    }

    /// Writes `count` payload bytes (at most the size given to malloc).
    @inline(__always)
    public func write(_ handle: ZsHandle, from src: UnsafeRawPointer, count: Int) {
        owner(of: handle).write(handle, from: src, count: count)
    }

    /// Copies `count` payload bytes out of the object.
    @inline(__always)
    public func read(_ handle: ZsHandle, into dst: UnsafeMutableRawPointer, count: Int) {
        owner(of: handle).read(handle, into: dst, count: count)
    }

    /// zs_free().
    @inline(__always)
    public func free(_ handle: ZsHandle) {
        owner(of: handle).free(handle)
    }

    @inline(__always) private func owner(of handle: ZsHandle) -> SizeClass {
        classes[ZsHandleCoding.classPosition(of: handle)]
    }

    /// zs_compact(): compacts every class from the largest down; returns the pages freed by this run.
    /// A call made while another compaction runs returns 0 at once, as in the kernel.
    @discardableResult
    public func compact() -> Int {
        guard compactionInProgress.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged
        else { return 0 }
        defer { compactionInProgress.store(false, ordering: .releasing) }
        var freed = 0
        for cls in classes.reversed() { freed += cls.compact() }
        pagesCompactedTotal.add(freed, ordering: .relaxed)
        return freed
    }

    /// zs_get_total_pages(): pages in all live zspages.
    public var totalPages: Int { provider.pagesInUse.load(ordering: .relaxed) }
    /// Cumulative pages freed by compaction (zs_pool_stats.pages_compacted).
    public var pagesCompacted: Int { pagesCompactedTotal.load(ordering: .relaxed) }
    /// Pages freed and kept resident for reuse (not counted in totalPages).
    public var reservePages: Int { provider.reservePages }
    /// Returns the resident reserve to the OS.
    public func trimReserve() { provider.trimReserve() }
    /// Where the pages live.
    public var backing: PageBacking { provider.backing }
    /// The arena's memfd (nil for anonymous memory): what a successor inherits.
    public var arenaFD: Int32? { provider.shared?.fd }
    /// Bytes of the memfd arena backed by memory (st_blocks); nil for anonymous memory.
    public var arenaAllocatedBytes: Int? { provider.arenaAllocatedBytes }
    /// The page map's memfd (nil for anonymous memory): a successor needs it with the arena.
    public var pageMapFD: Int32? { provider.pageMap?.fd }
    /// Pages ever handed out: the part of the arena and page map a successor reads.
    public var highWater: Int { provider.highWater }
    /// Whether `handle` is a live object that could hold `count` bytes, in the class malloc picks
    /// for `count` (a successor checks every slot against its rebuilt pool).
    public func isLiveObject(_ handle: ZsHandle, count: Int) -> Bool {
        guard count > 0 && count <= pageSize else { return false }
        let position = ZsHandleCoding.classPosition(of: handle)
        guard position < classes.count, position == geometry.classPosition(forAllocation: count) else { return false }
        return classes[position].isLiveObject(handle, count: count)
    }
    /// Upper bound on pages set at creation.
    public var maxPages: Int { provider.maxPages }

    /// zs_lookup_class_index().
    public func lookupClassIndex(_ size: Int) -> Int { geometry.lookupClassIndex(size) }

    /// Pages compaction could free now (the shrinker's count).
    public var freeablePages: Int { classes.reduce(0) { $0 + $1.stats().freeable } }

    // MARK: statistics

    public struct ClassStats: Sendable, Equatable {
        public let index: Int
        public let size: Int
        /// zspages per fullness group 1...11 (the 10%...99% and 100% columns).
        public let zspagesByFullness: [Int]
        public let objAllocated: Int
        public let objUsed: Int
        public let pagesUsed: Int
        public let pagesPerZspage: Int
        public let freeable: Int
    }

    public func classStats() -> [ClassStats] {
        classes.map { cls in
            let s = cls.stats()
            return ClassStats(index: cls.info.index, size: cls.size,
                              zspagesByFullness: Array(s.zspagesInGroup[1...]),
                              objAllocated: s.objsAllocated, objUsed: s.objsInuse,
                              pagesUsed: s.objsAllocated / cls.objsPerZspage * cls.pagesPerZspage,
                              pagesPerZspage: cls.pagesPerZspage, freeable: s.freeable)
        }
    }

    /// The debugfs `classes` table (zs_stats_size_show), byte for byte.
    public func classesText() -> String {
        var out = " " + pad("class", 5) + " " + pad("size", 5)
        for h in ["10%", "20%", "30%", "40%", "50%", "60%", "70%", "80%", "90%", "99%", "100%"] { out += " " + pad(h, 9) }
        out += " " + pad("obj_allocated", 13) + " " + pad("obj_used", 10) + " " + pad("pages_used", 10)
        out += " " + pad("pages_per_zspage", 16) + " " + pad("freeable", 8) + "\n"
        var totals = [Int](repeating: 0, count: 11)
        var tObjs = 0, tUsed = 0, tPages = 0, tFreeable = 0
        for s in classStats() {
            out += " " + pad(String(s.index), 5) + " " + pad(String(s.size), 5) + " "
            for (g, n) in s.zspagesByFullness.enumerated() { totals[g] += n; out += pad(String(n), 9) + " " }
            out += pad(String(s.objAllocated), 13) + " " + pad(String(s.objUsed), 10) + " "
            out += pad(String(s.pagesUsed), 10) + " " + pad(String(s.pagesPerZspage), 16) + " "
            out += pad(String(s.freeable), 8) + "\n"
            tObjs += s.objAllocated; tUsed += s.objUsed; tPages += s.pagesUsed; tFreeable += s.freeable
        }
        out += "\n " + pad("Total", 5) + " " + pad("", 5) + " "
        for n in totals { out += pad(String(n), 9) + " " }
        out += pad(String(tObjs), 13) + " " + pad(String(tUsed), 10) + " " + pad(String(tPages), 10) + " "
        out += pad("", 16) + " " + pad(String(tFreeable), 8) + "\n"
        return out
    }

    /// Every live handle, for consistency checks.
    public func liveHandles() -> [ZsHandle] {
        var all: [ZsHandle] = []
        for cls in classes { cls.forEachLiveObject { all.append($0) } }
        return all
    }
}

/// printf("%Ns"): right-aligned in `width`, longer strings kept whole.
@inline(__always) func pad(_ s: String, _ width: Int) -> String {
    s.count >= width ? s : String(repeating: " ", count: width - s.count) + s
}
