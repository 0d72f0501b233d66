import Glibc
import Synchronization
import Testing
@testable import ZramDevice

/// Runs `body(thread)` on `count` OS threads (not the cooperative pool, which has one thread per
/// core) and returns when all are done.
func onThreads(_ count: Int, _ body: @escaping @Sendable (Int) -> Void) {
    final class Job { let body: () -> Void; init(_ b: @escaping () -> Void) { body = b } }
    var threads: [pthread_t] = []
    for t in 0..<count {
        let job = Unmanaged.passRetained(Job { body(t) }).toOpaque()
        var thread = pthread_t()
        let rc = pthread_create(&thread, nil, { arg in
            let job = Unmanaged<Job>.fromOpaque(arg!).takeRetainedValue()
            job.body()
            return nil
        }, job)
        precondition(rc == 0, "pthread_create failed")
        threads.append(thread)
    }
    for t in threads { pthread_join(t, nil) }
}

/// Test-side locks over page ranges, so that each operation on the shadowed region and its shadow
/// update happen as one step; always taken in ascending page order.
private final class PageLocks: @unchecked Sendable {
    let locks: UnsafeMutablePointer<pthread_mutex_t>
    let count: Int
    init(_ count: Int) {
        self.count = count
        locks = .allocate(capacity: count)
        for i in 0..<count { pthread_mutex_init(locks + i, nil) }
    }
    deinit { locks.deallocate() }
    func with<R>(_ pages: ClosedRange<Int>, _ body: () throws -> R) rethrows -> R {
        for p in pages { pthread_mutex_lock(locks + p) }
        defer { for p in pages.reversed() { pthread_mutex_unlock(locks + p) } }
        return try body()
    }
}

private struct XorShift {
    var x: UInt64
    mutating func next() -> UInt64 { x ^= x << 13; x ^= x >> 7; x ^= x << 17; return x }
    mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }
}

extension Buffer: @unchecked Sendable {}

@Suite("ZramDevice concurrency")
struct ConcurrencyTests {
    static let shadowPages = 384          // exact shadow copy
    static let racePages = 32             // unsynchronised hot spot
    static let pages = shadowPages + racePages

    @Test("threads writing, reading, discarding overlapping ranges: no lost or torn pages, counters consistent")
    func stress() throws {
        let dev = try makeDevice(Self.pages * 4096)
        let shadow = Buffer(Self.shadowPages * 4096)
        let locks = PageLocks(Self.shadowPages)
        // Content sources copied from at random offsets: text (compressible), random (huge pages).
        let text = Buffer(64 * 1024); text.fillText(seed: 42)
        let random = Buffer(64 * 1024); random.randomize(seed: 42)
        let failures = Atomic<Int>(0)
        let opIds = Atomic<UInt64>(1)

        onThreads(4) { thread in
            var rng = XorShift(x: 0x9e37_79b9_7f4a_7c15 &* UInt64(thread + 1))
            let buf = Buffer(24 * 1024)
            let check = Buffer(24 * 1024)
            for _ in 0..<3000 {
                let op = rng.below(100)
                if op < 80 {
                    // Shadowed region: random byte ranges, any alignment.
                    let limit = Self.shadowPages * 4096
                    let aligned = rng.below(3)
                    var length = aligned == 0 ? (rng.below(5) + 1) * 4096
                               : aligned == 1 ? (rng.below(32) + 1) * 512 : rng.below(6000) + 1
                    var offset = aligned == 0 ? rng.below(Self.shadowPages) * 4096
                               : aligned == 1 ? rng.below(limit / 512) * 512 : rng.below(limit)
                    length = min(length, limit - offset)
                    if length == 0 { offset = 0; length = 1 }
                    let pages = (offset / 4096)...((offset + length - 1) / 4096)
                    locks.with(pages) {
                        switch op {
                        case 0..<35:
                            switch rng.below(4) {
                            case 0: memcpy(buf.base, random.base + rng.below(40 * 1024), length)
                            case 1: memset(buf.base, Int32(rng.below(3)), length)
                            default: memcpy(buf.base, text.base + rng.below(40 * 1024), length)
                            }
                            do {
                                try dev.write(from: buf.base, offset: offset, length: length)
                                memcpy(shadow.base + offset, buf.base, length)
                            } catch { failures.add(1, ordering: .relaxed) }
                        case 35..<45:
                            do {
                                try dev.discard(offset: offset, length: length)
                                let first = (offset + 4095) / 4096, end = (offset + length) / 4096
                                if first < end { memset(shadow.base + first * 4096, 0, (end - first) * 4096) }
                            } catch { failures.add(1, ordering: .relaxed) }
                        case 45..<52:
                            do {
                                try dev.writeZeroes(offset: offset, length: length, mayTrim: rng.below(2) == 0)
                                memset(shadow.base + offset, 0, length)
                            } catch { failures.add(1, ordering: .relaxed) }
                        default:
                            do {
                                try dev.read(into: check.base, offset: offset, length: length)
                                if memcmp(check.base, shadow.base + offset, length) != 0 { failures.add(1, ordering: .relaxed) }
                            } catch { failures.add(1, ordering: .relaxed) }
                        }
                    }
                } else {
                    // Hot spot, no test locks: whole-page writes stamped with an op id, discards and
                    // reads race; every page read must be zeros or one whole write.
                    let first = Self.shadowPages + rng.below(Self.racePages - 3)
                    let n = rng.below(4) + 1
                    switch op {
                    case 80..<90:
                        let id = opIds.add(1, ordering: .relaxed).newValue
                        for p in 0..<n { stamp(buf.base + p * 4096, id: id, page: first + p, text: text) }
                        do { try dev.write(from: buf.base, offset: first * 4096, length: n * 4096) }
                        catch { failures.add(1, ordering: .relaxed) }
                    case 90..<93:
                        do { try dev.discard(offset: first * 4096, length: n * 4096) }
                        catch { failures.add(1, ordering: .relaxed) }
                    default:
                        do {
                            try dev.read(into: check.base, offset: first * 4096, length: n * 4096)
                            for p in 0..<n where !isWhole(check.base + p * 4096, page: first + p, text: text) {
                                failures.add(1, ordering: .relaxed)
                            }
                        } catch { failures.add(1, ordering: .relaxed) }
                    }
                }
            }
        }

        #expect(failures.load(ordering: .relaxed) == 0)
        let all = Buffer(Self.pages * 4096)
        try dev.read(all, at: 0)
        #expect(all.equals(shadow, 0..<shadow.count), "shadowed region matches")
        for p in Self.shadowPages..<Self.pages {
            #expect(isWhole(all.base + p * 4096, page: p, text: text), "hot page \(p)")
        }
        let s = dev.stats()
        let c = dev.census()
        #expect(s.origDataSize == UInt64(c.storedPages) * 4096)
        #expect(s.samePages == UInt64(c.samePages))
        #expect(s.hugePages == UInt64(c.hugePages))
        #expect(s.comprDataSize == UInt64(c.comprBytes))
        #expect(s.failedReads == 0 && s.failedWrites == 0)
        // Freeing everything returns every counter and the pool to empty.
        try dev.discard(offset: 0, length: dev.diskSize)
        let e = dev.stats()
        #expect(e.origDataSize == 0 && e.comprDataSize == 0 && e.samePages == 0 && e.hugePages == 0)
        #expect(e.memUsedTotal == 0)
    }
}

/// A page made of 8 sectors, each starting with (id, page, sector) and followed by text chosen by id.
private func stamp(_ page: UnsafeMutableRawPointer, id: UInt64, page index: Int, text: Buffer) {
    for sector in 0..<8 {
        let s = page + sector * 512
        s.storeBytes(of: id, as: UInt64.self)
        s.storeBytes(of: UInt64(index), toByteOffset: 8, as: UInt64.self)
        s.storeBytes(of: UInt64(sector), toByteOffset: 16, as: UInt64.self)
        memcpy(s + 24, text.base + Int(id % 4096), 512 - 24)
    }
}

/// Zeros, or all 8 sectors from one stamped write of this page.
private func isWhole(_ page: UnsafeRawPointer, page index: Int, text: Buffer) -> Bool {
    let id = page.load(as: UInt64.self)
    if id == 0 {
        for i in 0..<512 where page.load(fromByteOffset: i * 8, as: UInt64.self) != 0 { return false }
        return true
    }
    for sector in 0..<8 {
        let s = page + sector * 512
        guard s.load(as: UInt64.self) == id, s.load(fromByteOffset: 8, as: UInt64.self) == UInt64(index),
              s.load(fromByteOffset: 16, as: UInt64.self) == UInt64(sector),
              memcmp(s + 24, text.base + Int(id % 4096), 512 - 24) == 0 else { return false }
    }
    return true
}
