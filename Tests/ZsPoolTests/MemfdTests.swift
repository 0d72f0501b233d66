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
