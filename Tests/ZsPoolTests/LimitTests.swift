import Testing
@testable import ZsPool

/// Input the pool refuses with an error, never a trap (issue 13: the daemon must not die).
@Suite("ZsPool limits")
struct PoolLimitTests {
    @Test("zs_malloc of 0 or more than 4096 bytes is nil, not a trap")
    func mallocSizes() throws {
        let pool = try ZsPool(name: "limits", chainSize: 8, maxPages: 64)
        #expect(pool.malloc(0) == nil)
        #expect(pool.malloc(-1) == nil)
        #expect(pool.malloc(4097) == nil)
        #expect(pool.malloc(Int.max) == nil)
        let h = try #require(pool.malloc(4096))
        pool.free(h)
        #expect(pool.totalPages == 0)
    }

    @Test("a chain size outside 4...16 or a bad page cap is a thrown error", arguments: [(3, 64), (17, 64), (8, 0), (8, Int(UInt32.max)), (8, Int.max)])
    func badParameters(_ chainSize: Int, _ maxPages: Int) {
        #expect(throws: (any Error).self) { try ZsPool(name: "limits", chainSize: chainSize, maxPages: maxPages) }
    }

    @Test("a pool at its page cap refuses allocations and recovers after frees")
    func capReached() throws {
        let pool = try ZsPool(name: "cap", chainSize: 4, maxPages: 8)
        var handles: [ZsHandle] = []
        while let h = pool.malloc(4096) { handles.append(h) }
        #expect(handles.count == 8)
        for h in handles { pool.free(h) }
        #expect(pool.malloc(4096) != nil)
    }
}
