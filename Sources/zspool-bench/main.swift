// zspool-bench: throughput of the zsmalloc port, and the page-source choice behind it.
// Run through scripts/bench.sh (release build). Prints one line per measurement.
// Arguments (optional, for short runs such as under callgrind): objects (default 400000),
// churn rounds (default 100), page-source pages (default 65536), pool backing (memfd or anonymous,
// default the pool's default).
#if canImport(Glibc)
import Glibc
#endif
import Posix
import ZsPool

func now() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

struct Rng {
    var s: UInt64
    mutating func next() -> UInt64 {
        s &+= 0x9E37_79B9_7F4A_7C15
        var z = s
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

func rssMiB() -> Double {
    let fd = open("/proc/self/statm", O_RDONLY)
    defer { close(fd) }
    var buf = [UInt8](repeating: 0, count: 128)
    let n = read(fd, &buf, 127)
    let f = String(decoding: buf[0..<max(n, 0)], as: UTF8.self).split(separator: " ")
    return Double(Int(f[1]) ?? 0) * 4096 / 1048576
}

func report(_ what: String, _ ops: Int, _ seconds: Double, _ extra: String = "") {
    let rate = Double(ops) / seconds
    print("\(what): \(ops) ops in \(Int(seconds * 1000)) ms = \(Int(rate)) ops/s, \(Int(seconds / Double(ops) * 1e9)) ns/op \(extra)")
}

func argument(_ i: Int, default value: Int) -> Int {
    CommandLine.arguments.count > i ? Int(CommandLine.arguments[i]) ?? value : value
}
let objects = argument(1, default: 400_000)
let churnRounds = argument(2, default: 100)
let pages = argument(3, default: 65_536)
let backing = CommandLine.arguments.count > 4 ? PageBacking(rawValue: CommandLine.arguments[4]) ?? .defaultBacking : .defaultBacking
print("pool backing: \(backing.rawValue)")
let pool = try ZsPool(name: "bench", maxPages: 1 << 20, backing: backing)
var rng = Rng(s: 1)
let sizes = (0..<objects).map { _ in 200 + Int(rng.next() % 3300) }   // typical lz4 page outputs
let src = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 64)
for i in 0..<512 { src.storeBytes(of: rng.next(), toByteOffset: i * 8, as: UInt64.self) }
var handles = [ZsHandle](repeating: 0, count: objects)

var t = now()
for i in 0..<objects { let h = pool.malloc(sizes[i])!; pool.write(h, from: src, count: sizes[i]); handles[i] = h }
report("malloc+write (1 thread)", objects, now() - t, "pool \(pool.totalPages * 4 / 1024) MiB, RSS \(Int(rssMiB())) MiB")
t = now()
for i in 0..<objects { pool.read(handles[i], into: src, count: sizes[i]) }
report("read (1 thread)", objects, now() - t)
t = now()
for i in stride(from: 0, to: objects, by: 2) { pool.free(handles[i]) }
report("free half (1 thread)", objects / 2, now() - t)
t = now()
let freed = pool.compact()
print("compact: freed \(freed) pages (\(freed * 4 / 1024) MiB) in \(Int((now() - t) * 1000)) ms, pool now \(pool.totalPages * 4 / 1024) MiB, RSS \(Int(rssMiB())) MiB")
t = now()
for i in stride(from: 1, to: objects, by: 2) { pool.read(handles[i], into: src, count: sizes[i]) }
report("read after compaction", objects / 2, now() - t)
for i in stride(from: 1, to: objects, by: 2) { pool.free(handles[i]) }

// Two threads, each its own objects (the NBD workers' pattern).
final class Ctx: @unchecked Sendable { let pool: ZsPool; let id: Int; let rounds: Int; var ops = 0
    init(_ p: ZsPool, _ i: Int, rounds: Int) { pool = p; id = i; self.rounds = rounds } }
func worker(_ raw: UnsafeMutableRawPointer?) -> UnsafeMutableRawPointer? {
    let ctx = Unmanaged<Ctx>.fromOpaque(raw!).takeUnretainedValue()
    var r = Rng(s: UInt64(ctx.id + 7))
    let buf = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 64)
    var hs = [ZsHandle](repeating: 0, count: 4096)
    for round in 0..<ctx.rounds {
        for k in 0..<4096 {
            let n = 200 + Int(r.next() % 3300)
            if round > 0 { ctx.pool.free(hs[k]) }
            hs[k] = ctx.pool.malloc(n)!
            ctx.pool.write(hs[k], from: buf, count: n)
            ctx.ops += 1
        }
    }
    for h in hs { ctx.pool.free(h) }
    return nil
}
for threads in [1, 2] {
    let ctxs = (0..<threads).map { Ctx(pool, $0, rounds: churnRounds) }
    var tids: [pthread_t] = []
    t = now()
    for c in ctxs {
        var tid = pthread_t()
        pthread_create(&tid, nil, worker, Unmanaged.passUnretained(c).toOpaque())
        tids.append(tid)
    }
    for tid in tids { pthread_join(tid, nil) }
    report("free+malloc+write churn, \(threads) thread(s)", ctxs.reduce(0) { $0 + $1.ops }, now() - t)
}

// Page sources: the arena (mmap + MADV_DONTNEED) against one posix_memalign per page.
t = now()
let arena = try VirtualMemory.reserve(byteCount: pages * 4096)
VirtualMemory.disableHugePages(arena, byteCount: pages * 4096)
for i in 0..<pages { (arena + i * 4096).storeBytes(of: UInt64(i), as: UInt64.self) }
let arenaTouch = now() - t
let rssArena = rssMiB()
t = now()
for i in 0..<pages { _ = madvise(arena + i * 4096, 4096, MADV_DONTNEED) }
let arenaFree = now() - t
print("page source arena: touch \(Int(arenaTouch / Double(pages) * 1e9)) ns/page, release \(Int(arenaFree / Double(pages) * 1e9)) ns/page (one madvise each), RSS \(Int(rssArena)) -> \(Int(rssMiB())) MiB")
VirtualMemory.unmap(arena, byteCount: pages * 4096)
// The same for a memfd (the inheritable arena): shmem faults, then holes punched one page at a time.
do {
    let m = try SharedMemory(name: "bench.source", byteCount: pages * 4096)
    m.disableHugePages()
    t = now()
    for i in 0..<pages { (m.base + i * 4096).storeBytes(of: UInt64(i), as: UInt64.self) }
    let touch = now() - t
    let held = m.allocatedBytes
    t = now()
    for i in 0..<pages { m.release(offset: i * 4096, byteCount: 4096) }
    let release = now() - t
    print("page source memfd: touch \(Int(touch / Double(pages) * 1e9)) ns/page, release \(Int(release / Double(pages) * 1e9)) ns/page (one punched hole each), memfd \(held >> 20) -> \(m.allocatedBytes >> 20) MiB")
    // Faulted in by MADV_POPULATE_WRITE in batches of 64 pages, as the pool does.
    t = now()
    var i = 0
    while i < pages { _ = m.populate(offset: i * 4096, byteCount: min(64, pages - i) * 4096); i += 64 }
    for i in 0..<pages { (m.base + i * 4096).storeBytes(of: UInt64(i), as: UInt64.self) }
    print("page source memfd: populate(64)+touch \(Int((now() - t) / Double(pages) * 1e9)) ns/page")
}
do {
    let a = try VirtualMemory.reserve(byteCount: pages * 4096)
    VirtualMemory.disableHugePages(a, byteCount: pages * 4096)
    t = now()
    var i = 0
    while i < pages { _ = VirtualMemory.populate(a + i * 4096, byteCount: min(64, pages - i) * 4096); i += 64 }
    for i in 0..<pages { (a + i * 4096).storeBytes(of: UInt64(i), as: UInt64.self) }
    print("page source arena: populate(64)+touch \(Int((now() - t) / Double(pages) * 1e9)) ns/page")
    VirtualMemory.unmap(a, byteCount: pages * 4096)
}
var ptrs: [UnsafeMutableRawPointer?] = Array(repeating: nil, count: pages)
let rss0 = rssMiB()
t = now()
for i in 0..<pages { var p: UnsafeMutableRawPointer? = nil; _ = posix_memalign(&p, 4096, 4096); p!.storeBytes(of: UInt64(i), as: UInt64.self); ptrs[i] = p }
let pmTouch = now() - t
let rssPM = rssMiB()
t = now()
for p in ptrs { Glibc.free(p) }
print("page source posix_memalign: alloc+touch \(Int(pmTouch / Double(pages) * 1e9)) ns/page, free \(Int((now() - t) / Double(pages) * 1e9)) ns/page, RSS +\(Int(rssPM - rss0)) MiB for \(pages * 4 / 1024) MiB of pages")
