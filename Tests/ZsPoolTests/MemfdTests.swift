import Testing
#if canImport(Glibc)
import Glibc
#endif
@testable import ZsPool

@_silgen_name("mlock2")
func c_mlock2(_ addr: UnsafeRawPointer, _ len: Int, _ flags: UInt32) -> Int32
let mlockOnFault: UInt32 = 1

/// A memfd arena: freed pages past the reserve leave the file (st_blocks drops), which is what a
/// user sees as memory coming back. MADV_DONTNEED would only have unmapped them.
@Suite struct MemfdArenaTests {
    /// Fills `count` huge objects (one page each) and returns their handles.
    func fill(_ pool: ZsPool, _ count: Int) -> [ZsHandle] {
        let page = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 64)
        defer { page.deallocate() }
        var hs: [ZsHandle] = []
        for i in 0..<count {
            guard let h = pool.malloc(4096) else { return hs }
            fillPattern(page, count: 4096, tag: UInt64(i))
            pool.write(h, from: page, count: 4096)
            hs.append(h)
        }
        return hs
    }

    func checkRelease(_ pool: ZsPool, pages n: Int) throws {
        let hs = fill(pool, n)
        try #require(hs.count == n)
        let full = try #require(pool.arenaAllocatedBytes)
        #expect(full >= n * 4096, "memfd holds \(full) B for \(n) pages")
        let page = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 64)
        defer { page.deallocate() }
        for (i, h) in hs.enumerated() {
            pool.read(h, into: page, count: 4096)
            #expect(matchesPattern(page, count: 4096, tag: UInt64(i)))
            pool.free(h)
        }
        // Kept: the resident reserve and the batch faulted in ahead of use; the rest is gone.
        let kept = (pool.reservePages + pool.provider.prefaultedPages) * 4096
        let after = try #require(pool.arenaAllocatedBytes)
        #expect(after <= kept, "memfd still holds \(after) B after freeing, \(kept) B expected at most")
        pool.trimReserve()
        let trimmed = try #require(pool.arenaAllocatedBytes)
        #expect(trimmed <= pool.provider.prefaultedPages * 4096, "memfd holds \(trimmed) B after trimming")
        // Released pages are reusable and read back what is written.
        let again = fill(pool, n / 2)
        #expect(again.count == n / 2)
        for h in again { pool.free(h) }
    }

    @Test func freedPagesLeaveTheMemfd() throws {
        let pool = try ZsPool(name: "memfd-free", maxPages: 8192, reservePages: 16, backing: .memfd)
        #expect(pool.backing == .memfd)
        #expect(pool.arenaFD != nil)
        try checkRelease(pool, pages: 4096)
    }

    /// The daemon runs under mlockall(MCL_CURRENT|MCL_FUTURE|MCL_ONFAULT): the punched hole must
    /// free locked shmem pages too (MADV_REMOVE is refused there). mlock2(MLOCK_ONFAULT) locks the
    /// arena the same way, without locking the rest of the test process.
    @Test func freedPagesLeaveTheMemfdWhenLocked() throws {
        // RLIMIT_MEMLOCK is often 8 MiB for users: a 4 MiB arena fits.
        let pool = try ZsPool(name: "memfd-locked", maxPages: 1024, reservePages: 16, backing: .memfd)
        let bytes = pool.maxPages * 4096
        guard c_mlock2(pool.provider.base, bytes, mlockOnFault) == 0 else {
            Issue.record("mlock2 of \(bytes) B refused (errno \(errno)): raise RLIMIT_MEMLOCK")
            return
        }
        defer { munlock(pool.provider.base, bytes) }
        try checkRelease(pool, pages: 768)
    }

    @Test func anonymousHasNoMemfd() throws {
        let pool = try ZsPool(name: "anon", maxPages: 64, backing: .anonymous)
        #expect(pool.arenaFD == nil)
        #expect(pool.arenaAllocatedBytes == nil)
        let hs = fill(pool, 32)
        #expect(hs.count == 32)
        for h in hs { pool.free(h) }
    }
}

/// A successor's pool rebuilt from the predecessor's arena and page map (fds passed explicitly,
/// as the hand-over will): every object reads back, the class statistics are the same, and the
/// rebuilt pool keeps working.
@Suite struct PoolAdoptionTests {
    @Test(arguments: [4, 8, 16]) func adoptedPoolReadsBackEveryObject(chainSize: Int) throws {
        let pool = try ZsPool(name: "adopt", chainSize: chainSize, maxPages: 1 << 16, reservePages: 8, backing: .memfd)
        var rng = SplitMix64(seed: UInt64(chainSize))
        let buf = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 64)
        defer { buf.deallocate() }
        var live: [(ZsHandle, Int, UInt64)] = []
        for i in 0..<6000 {
            let n = i % 7 == 0 ? 4096 : 1 + Int(rng.next() % 4000)
            let h = try #require(pool.malloc(n))
            fillPattern(buf, count: n, tag: UInt64(i))
            pool.write(h, from: buf, count: n)
            live.append((h, n, UInt64(i)))
        }
        // Holes everywhere, then compaction moves objects: handles stay, locations change.
        var kept: [(ZsHandle, Int, UInt64)] = []
        for (k, o) in live.enumerated() { if k % 3 == 0 { pool.free(o.0) } else { kept.append(o) } }
        pool.compact()
        let arenaFD = try #require(pool.arenaFD), mapFD = try #require(pool.pageMapFD)
        let a = fcntl(arenaFD, F_DUPFD_CLOEXEC, 0), m = fcntl(mapFD, F_DUPFD_CLOEXEC, 0)
        let successor = try ZsPool(adoptingArena: a, pageMap: m, name: "adopt2", chainSize: chainSize,
                                   maxPages: pool.maxPages, highWater: pool.highWater, pagesCompacted: pool.pagesCompacted)
        #expect(successor.totalPages == pool.totalPages)
        #expect(successor.pagesCompacted == pool.pagesCompacted)
        #expect(successor.classStats() == pool.classStats())
        #expect(Set(successor.liveHandles()) == Set(pool.liveHandles()))
        for (h, n, tag) in kept {
            #expect(successor.isLiveObject(h, count: n))
            memset(buf, 0, 4096)
            successor.read(h, into: buf, count: n)
            #expect(matchesPattern(buf, count: n, tag: tag), "object \(tag) of \(n) B")
        }
        // The rebuilt freelists and handle entries work: new objects, frees, compaction.
        var fresh: [(ZsHandle, Int, UInt64)] = []
        for i in 0..<3000 {
            let n = 1 + Int(rng.next() % 4096)
            let h = try #require(successor.malloc(n))
            #expect(!kept.contains { $0.0 == h }, "a live handle was handed out again")
            fillPattern(buf, count: n, tag: UInt64(100_000 + i))
            successor.write(h, from: buf, count: n)
            fresh.append((h, n, UInt64(100_000 + i)))
        }
        for (k, o) in kept.enumerated() where k % 2 == 0 { successor.free(o.0) }
        successor.compact()
        for (k, o) in kept.enumerated() where k % 2 == 1 {
            successor.read(o.0, into: buf, count: o.1)
            #expect(matchesPattern(buf, count: o.1, tag: o.2))
        }
        for o in fresh {
            successor.read(o.0, into: buf, count: o.1)
            #expect(matchesPattern(buf, count: o.1, tag: o.2))
        }
    }

    /// Inherited state is input: random words in the page map or over object headers are
    /// refused with an error (or, if they happen to form a consistent pool, accepted), never a
    /// trap or a table sized by a garbage id.
    @Test(arguments: 0..<12) func corruptStateIsRefusedNotTrapped(seed: Int) throws {
        let pool = try ZsPool(name: "corrupt", maxPages: 4096, reservePages: 4, backing: .memfd)
        var rng = SplitMix64(seed: UInt64(seed) &+ 1000)
        let buf = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 64)
        defer { buf.deallocate() }
        var handles: [(ZsHandle, Int)] = []
        for i in 0..<800 {
            let n = 1 + Int(rng.next() % 4096)
            let h = try #require(pool.malloc(n))
            fillPattern(buf, count: n, tag: UInt64(i))
            pool.write(h, from: buf, count: n)
            handles.append((h, n))
        }
        for (k, o) in handles.enumerated() where k % 4 == 0 { pool.free(o.0) }
        let arenaFD = try #require(pool.arenaFD), mapFD = try #require(pool.pageMapFD)
        let used = pool.highWater
        for _ in 0..<(1 + seed % 4) {
            var word = rng.next()
            if seed % 3 == 0 {       // a page map word: sometimes well-formed, pointing anywhere
                if rng.next() % 2 == 0 { word = word & ~(0x7f << 56) | 1 << 63 }
                #expect(pwrite(mapFD, &word, 8, off_t(Int(rng.next() % UInt64(used)) * 8)) == 8)
            } else {                 // an object header or payload word, 16-aligned
                if seed % 3 == 1 { word = word & ~0xff_ffff_0000_0000 | 1 }   // looks allocated
                #expect(pwrite(arenaFD, &word, 8, off_t(Int(rng.next() % UInt64(used * 256)) * 16)) == 8)
            }
        }
        let a = fcntl(arenaFD, F_DUPFD_CLOEXEC, 0), m = fcntl(mapFD, F_DUPFD_CLOEXEC, 0)
        do {
            let successor = try ZsPool(adoptingArena: a, pageMap: m, name: "corrupt2", chainSize: 8,
                                       maxPages: pool.maxPages, highWater: used, pagesCompacted: 0)
            for (h, n) in handles { _ = successor.isLiveObject(h, count: n) }
            _ = successor.classStats()
        } catch {
            #expect("\(error)".hasPrefix("zspool:"), "\(error)")
        }
    }

    @Test func adoptionRefusesAPageMapNamingNoClass() throws {
        let pool = try ZsPool(name: "bad", maxPages: 256, backing: .memfd)
        let h = try #require(pool.malloc(100))
        _ = h
        let mapFD = try #require(pool.pageMapFD)
        var junk: UInt64 = 1 << 63 | 0xff << 48
        #expect(pwrite(mapFD, &junk, 8, 0) == 8)
        let a = fcntl(try #require(pool.arenaFD), F_DUPFD_CLOEXEC, 0), m = fcntl(mapFD, F_DUPFD_CLOEXEC, 0)
        #expect(throws: (any Error).self) {
            try ZsPool(adoptingArena: a, pageMap: m, name: "bad2", chainSize: 8, maxPages: 256,
                       highWater: pool.highWater, pagesCompacted: 0)
        }
    }
}
