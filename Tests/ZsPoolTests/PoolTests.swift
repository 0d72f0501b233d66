import Testing
#if canImport(Glibc)
import Glibc
#endif
import Synchronization
@testable import ZsPool

/// Deterministic PRNG (SplitMix64) so every randomised run can be replayed from its seed.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Fills `count` bytes with a pattern derived from `tag`, so content can be re-derived and checked.
func fillPattern(_ p: UnsafeMutableRawPointer, count: Int, tag: UInt64) {
    var rng = SplitMix64(seed: tag)
    var i = 0
    while i + 8 <= count { p.storeBytes(of: rng.next(), toByteOffset: i, as: UInt64.self); i += 8 }
    while i < count { p.storeBytes(of: UInt8(truncatingIfNeeded: rng.next()), toByteOffset: i, as: UInt8.self); i += 1 }
}

func matchesPattern(_ p: UnsafeRawPointer, count: Int, tag: UInt64) -> Bool {
    let expected = UnsafeMutableRawPointer.allocate(byteCount: max(count, 1), alignment: 16)
    defer { expected.deallocate() }
    fillPattern(expected, count: count, tag: tag)
    return memcmp(expected, p, count) == 0
}

/// Resident bytes of the pool's page arena, from mincore(2). Unlike the process RSS in statm, other
/// tests running in parallel in this process cannot move it (the daemon-level tests check statm).
func residentBytes(of pool: ZsPool) -> Int {
    let pages = pool.provider.maxPages
    let vec = UnsafeMutablePointer<UInt8>.allocate(capacity: pages)
    defer { vec.deallocate() }
    guard mincore(pool.provider.base, pages * 4096, vec) == 0 else { return -1 }
    var resident = 0
    for i in 0..<pages where vec[i] & 1 == 1 { resident += 1 }
    return resident * 4096
}

/// Runs `body(i)` on `n` real threads and waits for all of them.
func onThreads(_ n: Int, _ body: @escaping @Sendable (Int) -> Void) {
    final class Box: @unchecked Sendable { let body: @Sendable (Int) -> Void; let i: Int
        init(_ b: @escaping @Sendable (Int) -> Void, _ i: Int) { body = b; self.i = i } }
    var threads: [pthread_t] = []
    for i in 0..<n {
        var t = pthread_t()
        let ctx = Unmanaged.passRetained(Box(body, i)).toOpaque()
        let rc = pthread_create(&t, nil, { raw in
            let box = Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue()
            box.body(box.i)
            return nil
        }, ctx)
        precondition(rc == 0)
        threads.append(t)
    }
    for t in threads { pthread_join(t, nil) }
}

@Suite struct PoolTests {
    @Test func writeReadFreeAcrossEverySize() throws {
        let pool = try ZsPool(name: "t", maxPages: 1 << 16)
        let buf = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 16)
        defer { buf.deallocate() }
        var live: [(ZsHandle, Int)] = []
        for size in stride(from: 1, through: 4096, by: 7) + [4096] {
            for copy in 0..<3 {
                let h = pool.malloc(size)!
                fillPattern(buf, count: size, tag: UInt64(size * 3 + copy))
                pool.write(h, from: buf, count: size)
                live.append((h, size * 3 + copy))
            }
        }
        for (h, tag) in live {
            let size = tag / 3
            pool.read(h, into: buf, count: size)
            #expect(matchesPattern(buf, count: size, tag: UInt64(tag)), "object of \(size) bytes corrupted")
        }
        #expect(pool.classStats().reduce(0) { $0 + $1.pagesUsed } == pool.totalPages)
        for (h, _) in live { pool.free(h) }
        #expect(pool.totalPages == 0)
        #expect(pool.classStats().allSatisfy { $0.objAllocated == 0 && $0.objUsed == 0 })
    }

    @Test func objectsFillTheFullestZspageFirst() throws {
        // Class 96 at chain 8: 5 pages, 13 objects of 1568 B (payload 1560).
        let pool = try ZsPool(name: "t", maxPages: 1024)
        var hs = (0..<26).map { _ in pool.malloc(1560)! }
        #expect(pool.totalPages == 10)
        // Free 6 from the first zspage, 1 from the second: new objects go to the fuller (second) one.
        for h in hs[0..<6] { pool.free(h) }
        pool.free(hs[13])
        let s = pool.classStats().first { $0.index == 96 }!
        #expect(s.objAllocated == 26 && s.objUsed == 19)
        let h = pool.malloc(1560)!
        let s2 = pool.classStats().first { $0.index == 96 }!
        #expect(s2.zspagesByFullness[10] == 1, "the 12/13 zspage became full: \(s2.zspagesByFullness)")
        hs.append(h)
        #expect(pool.totalPages == 10)
    }

    @Test func mallocFailsAtThePageCapAndLeavesThePoolUsable() throws {
        let pool = try ZsPool(name: "t", maxPages: 8)
        var hs: [ZsHandle] = []
        while let h = pool.malloc(4096) { hs.append(h) }
        #expect(hs.count == 8)
        #expect(pool.totalPages == 8)
        pool.free(hs.removeLast())
        #expect(pool.malloc(4096) != nil)
    }

    @Test func classesTableHasTheKernelLayout() throws {
        let pool = try ZsPool(name: "t", maxPages: 1024)
        _ = pool.malloc(100)
        let lines = pool.classesText().split(separator: "\n", omittingEmptySubsequences: false)
        #expect(lines[0] == " class  size       10%       20%       30%       40%       50%       60%       70%       80%       90%       99%      100% obj_allocated   obj_used pages_used pages_per_zspage freeable")
        // Class 6 (128 B: 100 + 8 header -> index 5 (112)? no: 108 -> ceil(76/16) = 5 -> 112 B, 7 pages, 256 objs).
        let row = lines.first { $0.hasPrefix("     5   112 ") }!
        #expect(row == "     5   112         1         0         0         0         0         0         0         0         0         0         0           256          1          7                7        0")
        #expect(lines.count == 119 + 4)   // header, 119 classes, blank, Total, trailing ""
        #expect(lines[lines.count - 2].hasPrefix(" Total       "))
    }

    /// Fragment, then compact: pages drop to what the kernel's algorithm leaves (ceil(used/objs)
    /// zspages per class), pages_compacted counts the difference, and the RSS follows.
    @Test func fragmentThenCompactFreesPagesAndMemory() throws {
        let pool = try ZsPool(name: "t", maxPages: 1 << 18, reservePages: 0)
        var rng = SplitMix64(seed: 42)
        let buf = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 16)
        defer { buf.deallocate() }
        var live: [(ZsHandle, Int, UInt64)] = []
        for i in 0..<60_000 {
            let size = Int.random(in: 40...3600, using: &rng)
            let h = pool.malloc(size)!
            fillPattern(buf, count: size, tag: UInt64(i))
            pool.write(h, from: buf, count: size)
            live.append((h, size, UInt64(i)))
        }
        // Free three quarters at random.
        live.shuffle(using: &rng)
        for (h, _, _) in live[15_000...] { pool.free(h) }
        live.removeSubrange(15_000...)
        let before = pool.totalPages
        let arenaBefore = residentBytes(of: pool) - pool.provider.prefaultedPages * 4096
        #expect(arenaBefore == before * 4096, "pool arena resident \(arenaBefore) B for \(before) pages")
        let predicted = pool.classStats().reduce(0) { acc, s in
            let cls = pool.geometry.classes.first { $0.index == s.index }!
            return acc + (s.objUsed + cls.objsPerZspage - 1) / cls.objsPerZspage * cls.pagesPerZspage
        }
        let freed = pool.compact()
        #expect(pool.totalPages == predicted)
        #expect(freed == before - predicted)
        #expect(pool.pagesCompacted == freed)
        #expect(pool.freeablePages == 0)
        // With no reserve, every freed page goes back to the OS at once.
        let arenaAfter = residentBytes(of: pool) - pool.provider.prefaultedPages * 4096
        #expect(arenaAfter == pool.totalPages * 4096, "pool arena resident \(arenaAfter) B for \(pool.totalPages) pages")
        for (h, size, tag) in live {
            pool.read(h, into: buf, count: size)
            #expect(matchesPattern(buf, count: size, tag: tag))
        }
        #expect(pool.compact() == 0)
    }

    /// Several threads allocate, write, read back and free while another compacts; after every
    /// compaction every object's content is verified.
    @Test(arguments: [UInt64(1), 2])
    func randomisedConcurrentOperationsWithCompaction(seed: UInt64) throws {
        let pool = try ZsPool(name: "t", chainSize: seed == 1 ? 8 : 16, maxPages: 1 << 18)
        let threads = 4, rounds = 3, opsPerThreadPerRound = 20_000
        final class Objects: @unchecked Sendable { var live: [[(ZsHandle, Int, UInt64)]] = [] }
        let objects = Objects()
        objects.live = Array(repeating: [], count: threads)
        let failures = Counter(0)
        for round in 0..<rounds {
            let active = Counter(threads)
            onThreads(threads + 1) { t in
                if t == threads {
                    // Compactor: runs while the workers do.
                    while active.value.load(ordering: .acquiring) > 0 { _ = pool.compact() }
                    return
                }
                defer { active.value.subtract(1, ordering: .releasing) }
                var rng = SplitMix64(seed: seed &* 1_000_003 &+ UInt64(round * 31 + t))
                let buf = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 16)
                defer { buf.deallocate() }
                var mine = objects.live[t]
                for op in 0..<opsPerThreadPerRound {
                    let r = Int.random(in: 0..<10, using: &rng)
                    if r < 5 || mine.isEmpty {
                        let size = rng.next() % 8 == 0 ? 4096 : Int.random(in: 1...3700, using: &rng)
                        guard let h = pool.malloc(size) else { failures.value.add(1, ordering: .relaxed); continue }
                        let tag = UInt64(t) << 48 | UInt64(round) << 32 | UInt64(op)
                        fillPattern(buf, count: size, tag: tag)
                        pool.write(h, from: buf, count: size)
                        mine.append((h, size, tag))
                    } else if r < 8 {
                        let (h, size, tag) = mine[Int.random(in: 0..<mine.count, using: &rng)]
                        pool.read(h, into: buf, count: size)
                        if !matchesPattern(buf, count: size, tag: tag) { failures.value.add(1, ordering: .relaxed) }
                    } else {
                        let i = Int.random(in: 0..<mine.count, using: &rng)
                        pool.free(mine[i].0)
                        mine.swapAt(i, mine.count - 1)
                        mine.removeLast()
                    }
                }
                objects.live[t] = mine
            }
            _ = pool.compact()
            // Verify everything after the compaction, and the pool's own bookkeeping.
            let buf = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 16)
            defer { buf.deallocate() }
            var liveCount = 0
            for list in objects.live {
                for (h, size, tag) in list {
                    pool.read(h, into: buf, count: size)
                    #expect(matchesPattern(buf, count: size, tag: tag), "round \(round): object lost its content")
                    liveCount += 1
                }
            }
            let stats = pool.classStats()
            #expect(stats.reduce(0) { $0 + $1.objUsed } == liveCount)
            #expect(stats.reduce(0) { $0 + $1.pagesUsed } == pool.totalPages)
            #expect(pool.liveHandles().count == liveCount)
            #expect(pool.freeablePages == 0)
        }
        #expect(failures.value.load(ordering: .relaxed) == 0, "content mismatches or failed allocations during the run")
        for list in objects.live { for (h, _, _) in list { pool.free(h) } }
        #expect(pool.totalPages == 0)
    }
}

final class Counter: Sendable {
    let value: Atomic<Int>
    init(_ v: Int) { value = Atomic(v) }
}
