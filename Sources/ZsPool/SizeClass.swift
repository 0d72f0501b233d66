#if canImport(Glibc)
import Glibc
#endif
import Posix

// One size class: its zspages, fullness lists, handle entries and statistics, all guarded by `lock`
// (the kernel's class->lock). `malloc`, `free`, `write`, `read`, `compact`, `stats` and
// `forEachLiveObject` take it themselves; every other method expects it held.
//
// Layout (mm/zsmalloc.c): a zspage is `pagesPerZspage` 4 KiB pages, not contiguous, read as one range;
// object k sits at offset k*size and may straddle two pages. An allocated non-huge object's first
// 8 bytes hold (handle << 1 | 1); a free object's hold (next free index << 1). The huge class keeps
// the handle in the zspage's descriptor, and its object is the whole page.

let noZspage = UInt32.max
let endOfFreelist = UInt64(UInt32.max)

/// What a class knows of one of its zspages (zsmalloc's struct zspage, less its lock; the pages
/// are in the class's `pages`, `pagesPerZspage` of them per zspage id). 32 bytes, in place in
/// one RawVector: a malloc or free touches one descriptor, not five arrays.
struct ZspageDescriptor: BitwiseCopyable {
    /// Huge zspages keep their one object's handle here, outside the object.
    var hugeHandle: UInt64 = 0
    /// Head of the object freelist (an object index; endOfFreelist's low 32 bits when none).
    var freeObject: UInt32 = 0
    /// Objects allocated.
    var inuse: UInt32 = 0
    /// Fullness-list links; `next` also links the class's free zspage ids.
    var prev: UInt32 = noZspage
    var next: UInt32 = noZspage
    /// The fullness group whose list holds the zspage.
    var fullness: UInt8 = 0
}

final class SizeClass: @unchecked Sendable {
    let info: ZsClassInfo
    let position: Int             // the class position: index in the pool's class table, a handle's high bits
    let size: Int
    let pagesPerZspage: Int
    let objsPerZspage: Int
    let isHuge: Bool
    let lock = AdaptiveLock()
    private let provider: PageProvider

    // zspages, indexed by zspage id: their descriptors, and their pages. Every mutable property below
    // is touched only under `lock`, so the dynamic exclusivity checks (15% of a malloc) are skipped.
    @exclusivity(unchecked) private var zspages: RawVector<ZspageDescriptor>
    @exclusivity(unchecked) private var pages: RawVector<UInt32>        // [id * pagesPerZspage + k] -> provider page
    @exclusivity(unchecked) private var zspageIdsUsed = 0
    @exclusivity(unchecked) private var freeZspageId = noZspage

    // handle entries: entry index (a handle's low bits) -> ObjectLocation's raw value while the
    // handle lives, or the index of the next free entry
    @exclusivity(unchecked) private var handleEntries: RawVector<UInt64>
    @exclusivity(unchecked) private var handleEntriesUsed = 0
    @exclusivity(unchecked) private var freeHandleEntry = UInt64.max

    // fullness lists and statistics (class_stat_*)
    @exclusivity(unchecked) private var listHead = [UInt32](repeating: noZspage, count: zsFullnessGroups)
    @exclusivity(unchecked) private(set) var zspagesInGroup = [Int](repeating: 0, count: zsFullnessGroups)
    @exclusivity(unchecked) private(set) var objsAllocated = 0
    @exclusivity(unchecked) private(set) var objsInuse = 0

    /// nil when its first tables cannot be allocated.
    init?(info: ZsClassInfo, position: Int, provider: PageProvider) {
        guard let zspages = RawVector(capacity: 16, fill: ZspageDescriptor()) else { return nil }
        guard let pages = RawVector<UInt32>(capacity: 16 * info.pagesPerZspage, fill: 0) else {
            zspages.release()
            return nil
        }
        guard let handleEntries = RawVector<UInt64>(capacity: 64, fill: 0) else {
            zspages.release(); pages.release()
            return nil
        }
        self.info = info
        self.position = position
        size = info.size
        pagesPerZspage = info.pagesPerZspage
        objsPerZspage = info.objsPerZspage
        isHuge = info.isHuge
        self.provider = provider
        self.zspages = zspages
        self.pages = pages
        self.handleEntries = handleEntries
    }

    deinit {
        // The pool is going away and unmaps its whole arena at once: returning each zspage's pages
        // one madvise at a time would make tearing down a full device take seconds.
        zspages.release(); pages.release(); handleEntries.release()
    }

    // MARK: handle entries

    /// Takes a free handle entry (reusing freed ones first) and returns its index; nil when the
    /// table cannot grow.
    private func allocHandleEntry() -> UInt64? {
        if freeHandleEntry != UInt64.max {
            let entry = freeHandleEntry
            freeHandleEntry = handleEntries[Int(entry)]
            return entry
        }
        guard handleEntries.reserve(handleEntriesUsed + 1, fill: 0) else { return nil }
        defer { handleEntriesUsed += 1 }
        return UInt64(handleEntriesUsed)
    }

    private func freeHandleEntry(_ entry: Int) {
        handleEntries[entry] = freeHandleEntry
        freeHandleEntry = UInt64(entry)
    }

    /// Where the object of a live handle is.
    @inline(__always) private func location(of handle: ZsHandle) -> ObjectLocation {
        ObjectLocation(rawValue: handleEntries[ZsHandleCoding.entry(of: handle)])
    }

    @inline(__always) private func setLocation(_ location: ObjectLocation, entry: Int) {
        handleEntries[entry] = location.rawValue
    }

    /// The descriptor of zspage `id`, in place.
    @inline(__always) private func zspage(_ id: UInt32) -> UnsafeMutablePointer<ZspageDescriptor> {
        zspages.base + Int(id)
    }

    // MARK: object addressing

    /// Address of byte `offset` of zspage `id` (the zspage is read as one virtual range).
    @inline(__always) private func address(zspage id: UInt32, offset: Int) -> UnsafeMutableRawPointer {
        let page = pages[Int(id) &* pagesPerZspage &+ (offset >> 12)]
        return provider.address(of: page) + (offset & (pageSize - 1))
    }

    @inline(__always) private func header(zspage id: UInt32, object k: Int) -> UnsafeMutableRawPointer {
        address(zspage: id, offset: k &* size)   // headers never straddle: offsets are 16-aligned
    }

    /// Copies `count` bytes at `offset` of a zspage to or from `buffer`, splitting at a page boundary.
    @inline(__always)
    private func copy(zspage id: UInt32, offset: Int, count: Int, buffer: UnsafeMutableRawPointer, toZspage: Bool) {
        let inPage = offset & (pageSize - 1)
        let first = min(count, pageSize - inPage)
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
        let z = zspage(id)
        z.pointee.fullness = UInt8(group)
        z.pointee.prev = noZspage
        z.pointee.next = listHead[group]
        if listHead[group] != noZspage { zspage(listHead[group]).pointee.prev = id }
        listHead[group] = id
        zspagesInGroup[group] += 1
    }

    private func remove(_ id: UInt32) {
        let z = zspage(id)
        let group = Int(z.pointee.fullness)
        let prev = z.pointee.prev, next = z.pointee.next
        if prev != noZspage { zspage(prev).pointee.next = next } else { listHead[group] = next }
        if next != noZspage { zspage(next).pointee.prev = prev }
        zspagesInGroup[group] -= 1
    }

    /// Refiles a zspage after its in-use count changed; returns its new group.
    @discardableResult
    private func fixFullness(_ id: UInt32) -> Int {
        let z = zspage(id)
        let newGroup = fullnessGroup(inuse: Int(z.pointee.inuse))
        if newGroup != Int(z.pointee.fullness) {
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
            freeZspageId = zspage(id).pointee.next
        } else {
            let n = zspageIdsUsed + 1
            guard zspages.reserve(n, fill: ZspageDescriptor()), pages.reserve(n * pagesPerZspage, fill: 0) else {
                return nil
            }
            id = UInt32(zspageIdsUsed)
            zspageIdsUsed = n
        }
        let z = zspage(id)
        guard provider.allocate(pagesPerZspage, into: pages.base + Int(id) * pagesPerZspage) else {
            z.pointee.next = freeZspageId
            freeZspageId = id
            return nil
        }
        // The page map says which pages form the zspage (a huge page's owner names its handle
        // entry instead, set when its object is allocated).
        if !isHuge {
            for k in 0..<pagesPerZspage {
                provider.setOwner(pages[Int(id) &* pagesPerZspage &+ k],
                                  PageOwner.encode(classPosition: position, index: k, id: UInt64(id)))
            }
        }
        // init_zspage: chain every object to the next one in address order.
        z.pointee.freeObject = 0
        z.pointee.inuse = 0
        if isHuge {
            z.pointee.hugeHandle = 0
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
        zspage(id).pointee.next = freeZspageId
        freeZspageId = id
    }

    // MARK: objects (obj_malloc / obj_free)

    /// Pops a free object of zspage `id` for `handle`; lock held.
    private func objMalloc(_ id: UInt32, handle: ZsHandle) -> Int {
        let z = zspage(id)
        let k = Int(z.pointee.freeObject)
        if isHuge {
            z.pointee.freeObject = UInt32(truncatingIfNeeded: endOfFreelist)
            z.pointee.hugeHandle = handle
            provider.setOwner(pages[Int(id)], PageOwner.encode(classPosition: position, index: 0,
                                                               id: UInt64(ZsHandleCoding.entry(of: handle))))
        } else {
            let h = header(zspage: id, object: k)
            z.pointee.freeObject = UInt32(truncatingIfNeeded: h.load(as: UInt64.self) >> 1)
            h.storeBytes(of: handle << 1 | 1, as: UInt64.self)
        }
        z.pointee.inuse += 1
        return k
    }

    private func objFree(_ id: UInt32, object k: Int) {
        let z = zspage(id)
        if isHuge {
            z.pointee.hugeHandle = 0
        } else {
            header(zspage: id, object: k).storeBytes(of: UInt64(z.pointee.freeObject) << 1, as: UInt64.self)
        }
        z.pointee.freeObject = UInt32(k)
        z.pointee.inuse -= 1
    }

    @inline(__always) private func isAllocated(_ id: UInt32, object k: Int) -> ZsHandle? {
        if isHuge {
            let z = zspage(id)
            return z.pointee.inuse > 0 ? z.pointee.hugeHandle : nil
        }
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
        guard let entry = allocHandleEntry() else { return nil }
        let handle = ZsHandleCoding.encode(classPosition: position, entry: entry)
        if id != noZspage {
            let k = objMalloc(id, handle: handle)
            fixFullness(id)
            objsInuse += 1
            setLocation(ObjectLocation(zspage: id, object: k), entry: Int(entry))
            return handle
        }
        guard let newID = allocZspage() else {
            freeHandleEntry(Int(entry))
            return nil
        }
        let k = objMalloc(newID, handle: handle)
        insert(newID, group: fullnessGroup(inuse: Int(zspage(newID).pointee.inuse)))
        objsAllocated += objsPerZspage
        objsInuse += 1
        setLocation(ObjectLocation(zspage: newID, object: k), entry: Int(entry))
        return handle
    }

    func free(_ handle: ZsHandle) {
        lock.lock()
        defer { lock.unlock() }
        let entry = ZsHandleCoding.entry(of: handle)
        let loc = ObjectLocation(rawValue: handleEntries[entry])
        objsInuse -= 1
        objFree(loc.zspage, object: loc.object)
        if fixFullness(loc.zspage) == zsInuseRatio0 { freeZspage(loc.zspage) }
        freeHandleEntry(entry)
    }

    /// Payload offset of an object inside its zspage (after the header unless huge).
    @inline(__always) private func payloadOffset(object k: Int) -> Int {
        isHuge ? 0 : k &* size &+ zsHandleSize
    }

    func write(_ handle: ZsHandle, from src: UnsafeRawPointer, count: Int) {
        lock.lock()
        defer { lock.unlock() }
        let loc = location(of: handle)
        copy(zspage: loc.zspage, offset: payloadOffset(object: loc.object),
             count: count, buffer: UnsafeMutableRawPointer(mutating: src), toZspage: true)
    }

    func read(_ handle: ZsHandle, into dst: UnsafeMutableRawPointer, count: Int) {
        lock.lock()
        defer { lock.unlock() }
        let loc = location(of: handle)
        copy(zspage: loc.zspage, offset: payloadOffset(object: loc.object), count: count, buffer: dst, toZspage: false)
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
                insert(dst, group: fullnessGroup(inuse: Int(zspage(dst).pointee.inuse)))
                break
            }
            remove(src)
            migrate(from: src, to: dst)
            let srcGroup = fullnessGroup(inuse: Int(zspage(src).pointee.inuse))
            insert(src, group: srcGroup)
            if srcGroup == zsInuseRatio0 {
                freeZspage(src)
                freed += pagesPerZspage
            }
            insert(dst, group: fullnessGroup(inuse: Int(zspage(dst).pointee.inuse)))
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
            // zs_object_copy: the whole object; the header was already written by objMalloc.
            if isHuge {
                copyObject(from: (src, 0), to: (dst, 0), count: pageSize)
            } else {
                copyObject(from: (src, k * size + zsHandleSize), to: (dst, d * size + zsHandleSize),
                           count: size - zsHandleSize)
            }
            setLocation(ObjectLocation(zspage: dst, object: d), entry: ZsHandleCoding.entry(of: handle))
            objFree(src, object: k)
            if Int(zspage(dst).pointee.inuse) == objsPerZspage || zspage(src).pointee.inuse == 0 { break }
        }
    }

    /// Copies between two zspages, page boundary by page boundary on both sides.
    private func copyObject(from s: (UInt32, Int), to d: (UInt32, Int), count: Int) {
        var done = 0
        while done < count {
            let so = s.1 + done, dOff = d.1 + done
            let n = min(count - done, pageSize - (so & (pageSize - 1)), pageSize - (dOff & (pageSize - 1)))
            address(zspage: d.0, offset: dOff).copyMemory(from: address(zspage: s.0, offset: so), byteCount: n)
            done += n
        }
    }

    // MARK: adoption (a successor rebuilding the class from the arena and the page map)

    /// Handle entries seen during adoption, one bit each (rebuild only, then dropped).
    @exclusivity(unchecked) private var adoptedEntries: [UInt64] = []
    @exclusivity(unchecked) private var pointedTo: [Bool] = []
    @exclusivity(unchecked) private var isFree: [Bool] = []

    /// The most zspages and handle entries this class can have in a pool of `provider.maxPages`
    /// pages: inherited ids beyond them are corrupt, and must not size a table.
    private var maxZspages: Int { provider.maxPages / pagesPerZspage + 1 }
    private var maxHandleEntries: Int { maxZspages * objsPerZspage }

    /// Marks `entry` live; false if it already was (two objects claiming one handle) or cannot be.
    private func adoptEntry(_ entry: Int) -> Bool {
        guard entry >= 0 && entry < maxHandleEntries else { return false }
        let word = entry >> 6, bit = UInt64(1) << UInt64(entry & 63)
        if word >= adoptedEntries.count { adoptedEntries += [UInt64](repeating: 0, count: word + 1 - adoptedEntries.count) }
        if adoptedEntries[word] & bit != 0 { return false }
        adoptedEntries[word] |= bit
        return true
    }

    /// Takes one page of the inherited arena, as its page map word says (no lock needed: the
    /// pool is not in use yet). Non-huge: page `index` of zspage `id`; huge: the page of the
    /// object whose handle entry is `id`.
    func adoptPage(_ page: UInt32, index k: Int, id: UInt64) throws(PosixError) {
        if isHuge {
            let entry = Int(id)             // < 2^40: PageOwner's id field
            guard k == 0, adoptEntry(entry), handleEntries.reserve(entry + 1, fill: 0) else {
                throw .message("zspool: page \(page) claims huge handle entry \(entry) twice or out of memory")
            }
            let newID = UInt32(zspageIdsUsed)
            guard zspageIdsUsed < maxZspages, zspages.reserve(zspageIdsUsed + 1, fill: ZspageDescriptor()),
                  pages.reserve(zspageIdsUsed + 1, fill: 0) else {
                throw .message("zspool: out of memory rebuilding class \(size)")
            }
            zspageIdsUsed += 1
            pages[Int(newID)] = page
            let z = zspage(newID)
            z.pointee = ZspageDescriptor()
            z.pointee.hugeHandle = ZsHandleCoding.encode(classPosition: position, entry: UInt64(entry))
            z.pointee.freeObject = UInt32(truncatingIfNeeded: endOfFreelist)
            z.pointee.inuse = 1
            handleEntriesUsed = max(handleEntriesUsed, entry + 1)
            setLocation(ObjectLocation(zspage: newID, object: 0), entry: entry)
            return
        }
        guard id < UInt64(maxZspages), k < pagesPerZspage else {
            throw .message("zspool: page \(page) claims page \(k) of zspage \(id) in class \(size)")
        }
        let n = Int(id) + 1
        guard zspages.reserve(n, fill: ZspageDescriptor()), pages.reserve(n * pagesPerZspage, fill: 0) else {
            throw .message("zspool: out of memory rebuilding class \(size)")
        }
        zspageIdsUsed = max(zspageIdsUsed, n)
        // `prev` collects the indexes seen until finishAdoption (the lists are built there).
        let z = zspage(UInt32(id))
        let bit = UInt32(1) << UInt32(k)
        guard z.pointee.prev == noZspage || z.pointee.prev & bit == 0 else {
            throw .message("zspool: two pages claim page \(k) of zspage \(id) in class \(size)")
        }
        z.pointee.prev = (z.pointee.prev == noZspage ? 0 : z.pointee.prev) | bit
        pages[Int(id) * pagesPerZspage + k] = page
    }

    /// After every page is adopted: checks each zspage is whole, reads its object headers back
    /// into handle entries, finds and checks its freelist, rebuilds the fullness lists and counts,
    /// and frees what is unused. Writes nothing to the arena unless a zspage is empty.
    ///
    /// `relink` (recovering after a crash, with no predecessor left to serve from the pages):
    /// the freelist is rebuilt from the free objects instead of checked, since a crash inside
    /// malloc or free leaves it half-updated.
    func finishAdoption(relink: Bool = false) throws(PosixError) {
        let whole = UInt32((1 << pagesPerZspage) - 1)
        for i in 0..<zspageIdsUsed {
            let id = UInt32(i)
            let z = zspage(id)
            if isHuge {
                insert(id, group: fullnessGroup(inuse: 1))
                objsAllocated += 1; objsInuse += 1
                continue
            }
            let seen = z.pointee.prev
            if seen == noZspage {       // an id no page claims: free
                z.pointee = ZspageDescriptor()
                z.pointee.next = freeZspageId
                freeZspageId = id
                continue
            }
            guard seen == whole else {
                throw .message("zspool: zspage \(id) of class \(size) is missing pages (have mask \(seen))")
            }
            // Read only: the predecessor may keep serving from these pages if the successor is
            // refused later, so its freelist is found, not rebuilt. Its head is the one free
            // object no other free object links to; the walk from it must visit every free one.
            var inuse: UInt32 = 0
            var freeCount = 0
            pointedTo.removeAll(keepingCapacity: true)
            pointedTo.append(contentsOf: repeatElement(false, count: objsPerZspage))
            isFree.removeAll(keepingCapacity: true)
            isFree.append(contentsOf: repeatElement(false, count: objsPerZspage))
            for k in 0..<objsPerZspage {
                let word = header(zspage: id, object: k).load(as: UInt64.self)
                if word & 1 == 1 {
                    let handle = word >> 1
                    // A corrupt header may hold entry bits 0: check before taking 1 off them.
                    let entry = handle & ZsHandleCoding.entryMask == 0 ? -1 : ZsHandleCoding.entry(of: handle)
                    guard ZsHandleCoding.classPosition(of: handle) == position,
                          adoptEntry(entry), handleEntries.reserve(entry + 1, fill: 0) else {
                        throw .message("zspool: object \(k) of zspage \(id) in class \(size) has a bad or duplicate handle \(handle)")
                    }
                    handleEntriesUsed = max(handleEntriesUsed, entry + 1)
                    setLocation(ObjectLocation(zspage: id, object: k), entry: entry)
                    inuse += 1
                } else {
                    isFree[k] = true
                    freeCount += 1
                    let next = word >> 1
                    if !relink, next != endOfFreelist {
                        guard next < UInt64(objsPerZspage) else {
                            throw .message("zspool: free object \(k) of zspage \(id) in class \(size) links to \(next)")
                        }
                        pointedTo[Int(next)] = true
                    }
                }
            }
            var freeHead = endOfFreelist
            if relink {
                for k in stride(from: objsPerZspage - 1, through: 0, by: -1) where isFree[k] {
                    header(zspage: id, object: k).storeBytes(of: freeHead << 1, as: UInt64.self)
                    freeHead = UInt64(k)
                }
            } else {
                for k in 0..<objsPerZspage where isFree[k] && !pointedTo[k] { freeHead = UInt64(k); break }
            }
            var walked = 0
            var k = freeHead
            while k != endOfFreelist && walked <= freeCount {
                guard k < UInt64(objsPerZspage), isFree[Int(k)] else {
                    throw .message("zspool: the freelist of zspage \(id) in class \(size) reaches a used object")
                }
                walked += 1
                k = header(zspage: id, object: Int(k)).load(as: UInt64.self) >> 1
            }
            guard walked == freeCount else {
                throw .message("zspool: the freelist of zspage \(id) in class \(size) holds \(walked) of \(freeCount) free objects")
            }
            z.pointee = ZspageDescriptor()
            z.pointee.freeObject = UInt32(truncatingIfNeeded: freeHead)
            z.pointee.inuse = inuse
            objsAllocated += objsPerZspage
            objsInuse += Int(inuse)
            insert(id, group: fullnessGroup(inuse: Int(inuse)))
            if inuse == 0 { freeZspage(id) }
        }
        // Entries no object claims are free.
        var e = handleEntriesUsed - 1
        while e >= 0 {
            if adoptedEntries.count <= e >> 6 || adoptedEntries[e >> 6] & (1 << UInt64(e & 63)) == 0 { freeHandleEntry(e) }
            e -= 1
        }
        adoptedEntries = []; pointedTo = []; isFree = []
    }

    /// Whether `handle` is a live object of this class that an object of `count` bytes could be
    /// (a successor's check of each slot against the rebuilt pool).
    func isLiveObject(_ handle: ZsHandle, count: Int) -> Bool {
        lock.withLock {
            guard handle & ZsHandleCoding.entryMask != 0 else { return false }
            let entry = ZsHandleCoding.entry(of: handle)
            guard entry < handleEntriesUsed else { return false }
            let loc = location(of: handle)
            guard Int(loc.zspage) < zspageIdsUsed, loc.object < objsPerZspage else { return false }
            guard isAllocated(loc.zspage, object: loc.object) == handle else { return false }
            return isHuge ? count <= pageSize : count + zsHandleSize <= size
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
                    id = zspage(id).pointee.next
                }
            }
        }
    }
}
