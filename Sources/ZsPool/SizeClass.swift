#if canImport(Glibc)
import Glibc
#endif
import Posix

// One size class: its zspages, fullness lists, handle slots and statistics, all guarded by `lock`
// (the kernel's class->lock). Every method named `locked...` or documented "lock held" expects it held.
//
// Layout (mm/zsmalloc.c): a zspage is `pagesPerZspage` 4 KiB pages, not contiguous, read as one range;
// object k sits at offset k*size and may straddle two pages. An allocated non-huge object's first
// 8 bytes hold (handle << 1 | 1); a free object's hold (next free index << 1). The huge class keeps
// the handle beside the zspage, and its object is the whole page.

let noZspage = UInt32.max
let endOfFreelist = UInt64(UInt32.max)

final class SizeClass: @unchecked Sendable {
    let info: ZsClassInfo
    let slot: Int                 // position in the pool's class table; the handle's high bits
    let size: Int
    let pagesPerZspage: Int
    let objsPerZspage: Int
    let isHuge: Bool
    let lock = AdaptiveLock()
    private let provider: PageProvider

    // zspage descriptors, struct-of-arrays, indexed by zspage id. Every mutable property below is
    // touched only under `lock`, so the dynamic exclusivity checks (15% of a malloc) are skipped.
    @exclusivity(unchecked) private var pages: RawVector<UInt32>        // [id * pagesPerZspage + k] -> provider page
    @exclusivity(unchecked) private var freeObj: RawVector<UInt32>      // head of the object freelist
    @exclusivity(unchecked) private var inuse: RawVector<UInt32>
    @exclusivity(unchecked) private var fullness: RawVector<UInt8>
    @exclusivity(unchecked) private var prev: RawVector<UInt32>         // fullness-list links; `next` also links free ids
    @exclusivity(unchecked) private var next: RawVector<UInt32>
    @exclusivity(unchecked) private var hugeHandle: RawVector<UInt64>   // huge zspages keep their handle outside the object
    @exclusivity(unchecked) private var zspageIdsUsed = 0
    @exclusivity(unchecked) private var freeZspageId = noZspage

    // handle slots: local handle -> location (zspage id << 32 | object index), or a free-slot link
    @exclusivity(unchecked) private var handles: RawVector<UInt64>
    @exclusivity(unchecked) private var handleSlotsUsed = 0
    @exclusivity(unchecked) private var freeHandle = UInt64.max

    // fullness lists and statistics (class_stat_*)
    @exclusivity(unchecked) private var listHead = [UInt32](repeating: noZspage, count: zsFullnessGroups)
    @exclusivity(unchecked) private(set) var zspagesInGroup = [Int](repeating: 0, count: zsFullnessGroups)
    @exclusivity(unchecked) private(set) var objsAllocated = 0
    @exclusivity(unchecked) private(set) var objsInuse = 0

    init(info: ZsClassInfo, slot: Int, provider: PageProvider) {
        self.info = info
        self.slot = slot
        size = info.size
        pagesPerZspage = info.pagesPerZspage
        objsPerZspage = info.objsPerZspage
        isHuge = info.isHuge
        self.provider = provider
        pages = RawVector(capacity: 16 * info.pagesPerZspage, fill: 0)
        freeObj = RawVector(capacity: 16, fill: 0)
        inuse = RawVector(capacity: 16, fill: 0)
        fullness = RawVector(capacity: 16, fill: 0)
        prev = RawVector(capacity: 16, fill: noZspage)
        next = RawVector(capacity: 16, fill: noZspage)
        hugeHandle = RawVector(capacity: info.isHuge ? 16 : 1, fill: 0)
        handles = RawVector(capacity: 64, fill: 0)
    }

    deinit {
        // The pool is going away and unmaps its whole arena at once: returning each zspage's pages
        // one madvise at a time would make tearing down a full device take seconds.
        pages.release(); freeObj.release(); inuse.release(); fullness.release()
        prev.release(); next.release(); hugeHandle.release(); handles.release()
    }

    // MARK: handles

    @inline(__always) func handle(forLocal local: UInt64) -> ZsHandle {
        (UInt64(slot) << 40) | (local + 1)
    }

    @inline(__always) static func local(of handle: ZsHandle) -> Int {
        Int((handle & ((1 << 40) - 1)) - 1)
    }

    @inline(__always) static func location(zspage: UInt32, object: Int) -> UInt64 {
        UInt64(zspage) << 32 | UInt64(object)
    }

    private func allocHandleSlot() -> UInt64 {
        if freeHandle != UInt64.max {
            let local = freeHandle
            freeHandle = handles[Int(local)]
            return local
        }
        handles.reserve(handleSlotsUsed + 1, fill: 0)
        defer { handleSlotsUsed += 1 }
        return UInt64(handleSlotsUsed)
    }

    private func freeHandleSlot(_ local: Int) {
        handles[local] = freeHandle
        freeHandle = UInt64(local)
    }

    // MARK: object addressing

    /// Address of byte `offset` of zspage `id` (the zspage is read as one virtual range).
    @inline(__always) private func address(zspage id: UInt32, offset: Int) -> UnsafeMutableRawPointer {
        let page = pages[Int(id) &* pagesPerZspage &+ (offset >> 12)]
        return provider.address(of: page) + (offset & (zsPageSize - 1))
    }

    @inline(__always) private func header(zspage id: UInt32, object k: Int) -> UnsafeMutableRawPointer {
        address(zspage: id, offset: k &* size)   // headers never straddle: offsets are 16-aligned
    }

    /// Copies `count` bytes at `offset` of a zspage to or from `buffer`, splitting at a page boundary.
    @inline(__always)
    private func copy(zspage id: UInt32, offset: Int, count: Int, buffer: UnsafeMutableRawPointer, toZspage: Bool) {
        let inPage = offset & (zsPageSize - 1)
        let first = min(count, zsPageSize - inPage)
        let p = address(zspage: id, offset: offset)
        if toZspage { p.copyMemory(from: buffer, byteCount: first) } else { buffer.copyMemory(from: p, byteCount: first) }
        if first < count {
            let q = address(zspage: id, offset: offset + first)
            if toZspage { q.copyMemory(from: buffer + first, byteCount: count - first) }
            else { (buffer + first).copyMemory(from: q, byteCount: count - first) }
        }
    }

    // MARK: fullness (get_fullness_group / insert_zspage / remove_zspage / fix_fullness_group)

    @inline(__always) private func fullnessGroup(inuse n: Int) -> Int {
        if n == 0 { return zsInuseRatio0 }
        if n == objsPerZspage { return zsInuseRatio100 }
        return (100 * n / objsPerZspage) / 10 + 1
    }

    private func insert(_ id: UInt32, group: Int) {
        let i = Int(id)
        fullness[i] = UInt8(group)
        prev[i] = noZspage
        next[i] = listHead[group]
        if listHead[group] != noZspage { prev[Int(listHead[group])] = id }
        listHead[group] = id
        zspagesInGroup[group] += 1
    }

    private func remove(_ id: UInt32) {
        let i = Int(id)
        let group = Int(fullness[i])
        if prev[i] != noZspage { next[Int(prev[i])] = next[i] } else { listHead[group] = next[i] }
        if next[i] != noZspage { prev[Int(next[i])] = prev[i] }
        zspagesInGroup[group] -= 1
    }

    /// Refiles a zspage after its in-use count changed; returns its new group.
    @discardableResult
    private func fixFullness(_ id: UInt32) -> Int {
        let newGroup = fullnessGroup(inuse: Int(inuse[Int(id)]))
        if newGroup != Int(fullness[Int(id)]) {
            remove(id)
            insert(id, group: newGroup)
        }
        return newGroup
    }

    // MARK: zspage lifetime

    private func allocZspage() -> UInt32? {
        let id: UInt32
        if freeZspageId != noZspage {
            id = freeZspageId
            freeZspageId = next[Int(id)]
        } else {
            let n = zspageIdsUsed + 1
            pages.reserve(n * pagesPerZspage, fill: 0)
            freeObj.reserve(n, fill: 0); inuse.reserve(n, fill: 0); fullness.reserve(n, fill: 0)
            prev.reserve(n, fill: noZspage); next.reserve(n, fill: noZspage)
            if isHuge { hugeHandle.reserve(n, fill: 0) }
            id = UInt32(zspageIdsUsed)
            zspageIdsUsed = n
        }
        guard provider.allocate(pagesPerZspage, into: pages.base + Int(id) * pagesPerZspage) else {
            next[Int(id)] = freeZspageId
            freeZspageId = id
            return nil
        }
        // init_zspage: chain every object to the next one in address order.
        freeObj[Int(id)] = 0
        inuse[Int(id)] = 0
        if isHuge {
            hugeHandle[Int(id)] = 0
        } else {
            for k in 0..<objsPerZspage {
                let link = k + 1 < objsPerZspage ? UInt64(k + 1) << 1 : endOfFreelist << 1
                header(zspage: id, object: k).storeBytes(of: link, as: UInt64.self)
            }
        }
        return id
    }

    private func freeZspage(_ id: UInt32) {
        remove(id)
        provider.free(pagesPerZspage, from: pages.base + Int(id) * pagesPerZspage)
        objsAllocated -= objsPerZspage
        next[Int(id)] = freeZspageId
        freeZspageId = id
    }

    // MARK: objects (obj_malloc / obj_free)

    /// Pops a free object of zspage `id` for `handle`; lock held.
    private func objMalloc(_ id: UInt32, handle: ZsHandle) -> Int {
        let k = Int(freeObj[Int(id)])
        if isHuge {
            freeObj[Int(id)] = UInt32(truncatingIfNeeded: endOfFreelist)
            hugeHandle[Int(id)] = handle
        } else {
            let h = header(zspage: id, object: k)
            freeObj[Int(id)] = UInt32(truncatingIfNeeded: h.load(as: UInt64.self) >> 1)
            h.storeBytes(of: handle << 1 | 1, as: UInt64.self)
        }
        inuse[Int(id)] += 1
        return k
    }

    private func objFree(_ id: UInt32, object k: Int) {
        if isHuge {
            hugeHandle[Int(id)] = 0
        } else {
            header(zspage: id, object: k).storeBytes(of: UInt64(freeObj[Int(id)]) << 1, as: UInt64.self)
        }
        freeObj[Int(id)] = UInt32(k)
        inuse[Int(id)] -= 1
    }

    @inline(__always) private func isAllocated(_ id: UInt32, object k: Int) -> ZsHandle? {
        if isHuge { return inuse[Int(id)] > 0 ? hugeHandle[Int(id)] : nil }
        let word = header(zspage: id, object: k).load(as: UInt64.self)
        return word & 1 == 1 ? word >> 1 : nil
    }

    // MARK: public operations (each takes the lock)

    func malloc() -> ZsHandle? {
        lock.lock()
        defer { lock.unlock() }
        // find_get_zspage: the fullest zspage that still has room.
        var id = noZspage
        var g = zsInuseRatio99
        while g >= zsInuseRatio0 {
            if listHead[g] != noZspage { id = listHead[g]; break }
            g -= 1
        }
        let local = allocHandleSlot()
        let handle = self.handle(forLocal: local)
        if id != noZspage {
            let k = objMalloc(id, handle: handle)
            fixFullness(id)
            objsInuse += 1
            handles[Int(local)] = SizeClass.location(zspage: id, object: k)
            return handle
        }
        guard let newID = allocZspage() else {
            freeHandleSlot(Int(local))
            return nil
        }
        let k = objMalloc(newID, handle: handle)
        insert(newID, group: fullnessGroup(inuse: Int(inuse[Int(newID)])))
        objsAllocated += objsPerZspage
        objsInuse += 1
        handles[Int(local)] = SizeClass.location(zspage: newID, object: k)
        return handle
    }

    func free(_ handle: ZsHandle) {
        lock.lock()
        defer { lock.unlock() }
        let local = SizeClass.local(of: handle)
        let loc = handles[local]
        let id = UInt32(truncatingIfNeeded: loc >> 32)
        objsInuse -= 1
        objFree(id, object: Int(loc & 0xffff_ffff))
        if fixFullness(id) == zsInuseRatio0 { freeZspage(id) }
        freeHandleSlot(local)
    }

    /// Payload offset of an object inside its zspage (after the header unless huge).
    @inline(__always) private func payloadOffset(object k: Int) -> Int {
        isHuge ? 0 : k &* size &+ zsHandleSize
    }

    func write(_ handle: ZsHandle, from src: UnsafeRawPointer, count: Int) {
        lock.lock()
        defer { lock.unlock() }
        let loc = handles[SizeClass.local(of: handle)]
        copy(zspage: UInt32(truncatingIfNeeded: loc >> 32), offset: payloadOffset(object: Int(loc & 0xffff_ffff)),
             count: count, buffer: UnsafeMutableRawPointer(mutating: src), toZspage: true)
    }

    func read(_ handle: ZsHandle, into dst: UnsafeMutableRawPointer, count: Int) {
        lock.lock()
        defer { lock.unlock() }
        let loc = handles[SizeClass.local(of: handle)]
        copy(zspage: UInt32(truncatingIfNeeded: loc >> 32), offset: payloadOffset(object: Int(loc & 0xffff_ffff)),
             count: count, buffer: dst, toZspage: false)
    }

    // MARK: compaction (zs_can_compact / __zs_compact / migrate_zspage)

    /// Pages compaction could free in this class; lock held.
    var freeablePages: Int {
        guard objsAllocated > objsInuse else { return 0 }
        return (objsAllocated - objsInuse) / objsPerZspage * pagesPerZspage
    }

    /// Moves objects from the emptiest zspages into the fullest until no zspage can be freed. The lock is
    /// dropped between source zspages (after both are put back), so I/O proceeds during compaction.
    func compact() -> Int {
        var freed = 0
        lock.lock()
        defer { lock.unlock() }
        while freeablePages > 0 {
            // isolate_dst_zspage: fullest of groups 99%...10%
            var dst = noZspage
            var g = zsInuseRatio99
            while g >= zsInuseRatio10 { if listHead[g] != noZspage { dst = listHead[g]; break }; g -= 1 }
            guard dst != noZspage else { break }
            remove(dst)
            // isolate_src_zspage: emptiest of groups 10%...99%
            var src = noZspage
            g = zsInuseRatio10
            while g <= zsInuseRatio99 { if listHead[g] != noZspage { src = listHead[g]; break }; g += 1 }
            guard src != noZspage else {
                insert(dst, group: fullnessGroup(inuse: Int(inuse[Int(dst)])))
                break
            }
            remove(src)
            migrate(from: src, to: dst)
            let srcGroup = fullnessGroup(inuse: Int(inuse[Int(src)]))
            insert(src, group: srcGroup)
            if srcGroup == zsInuseRatio0 {
                freeZspage(src)
                freed += pagesPerZspage
            }
            insert(dst, group: fullnessGroup(inuse: Int(inuse[Int(dst)])))
            // Let readers and writers of this class in before the next source zspage.
            lock.unlock()
            sched_yield()
            lock.lock()
        }
        return freed
    }

    private func migrate(from src: UInt32, to dst: UInt32) {
        for k in 0..<objsPerZspage {
            guard let handle = isAllocated(src, object: k) else { continue }
            let d = objMalloc(dst, handle: handle)
            // zs_object_copy: the whole slot; the header was already written by objMalloc.
            if isHuge {
                copyObject(from: (src, 0), to: (dst, 0), count: zsPageSize)
            } else {
                copyObject(from: (src, k * size + zsHandleSize), to: (dst, d * size + zsHandleSize),
                           count: size - zsHandleSize)
            }
            handles[SizeClass.local(of: handle)] = SizeClass.location(zspage: dst, object: d)
            objFree(src, object: k)
            if Int(inuse[Int(dst)]) == objsPerZspage || inuse[Int(src)] == 0 { break }
        }
    }

    /// Copies between two zspages, page boundary by page boundary on both sides.
    private func copyObject(from s: (UInt32, Int), to d: (UInt32, Int), count: Int) {
        var done = 0
        while done < count {
            let so = s.1 + done, dOff = d.1 + done
            let n = min(count - done, zsPageSize - (so & (zsPageSize - 1)), zsPageSize - (dOff & (zsPageSize - 1)))
            address(zspage: d.0, offset: dOff).copyMemory(from: address(zspage: s.0, offset: so), byteCount: n)
            done += n
        }
    }

    // MARK: statistics

    struct Stats {
        var zspagesInGroup: [Int]
        var objsAllocated: Int
        var objsInuse: Int
        var freeable: Int
    }

    func stats() -> Stats {
        lock.withLock {
            Stats(zspagesInGroup: zspagesInGroup, objsAllocated: objsAllocated, objsInuse: objsInuse,
                  freeable: freeablePages)
        }
    }

    /// Visits every live handle (for tests and consistency checks); takes the class lock itself.
    func forEachLiveObject(_ body: (ZsHandle) -> Void) {
        lock.withLock {
            for g in 0..<zsFullnessGroups {
                var id = listHead[g]
                while id != noZspage {
                    for k in 0..<objsPerZspage { if let h = isAllocated(id, object: k) { body(h) } }
                    id = next[Int(id)]
                }
            }
        }
    }
}
