// codec-bench: the lzo-rle and lzo ports (Codec) against liblzo2's lzo1x_1, page by page, in MB/s.
// Usage: codec-bench [--rounds N] FILE...  (each FILE a corpus, read as 4 KiB pages; see
// scripts/bench/README.md). A measurement, not a test: run it on a quiet machine, release build.
#if canImport(Glibc)
import Glibc
#endif
import CLZO
import Codec

func now() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

/// The whole file in page-aligned memory, cut to whole pages.
func load(_ path: String) -> (UnsafeMutableRawPointer, Int)? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var st = stat()
    guard fstat(fd, &st) == 0 else { return nil }
    let pages = Int(st.st_size) / 4096
    let mem = UnsafeMutableRawPointer.allocate(byteCount: max(pages, 1) * 4096, alignment: 4096)
    var done = 0
    while done < pages * 4096 {
        let n = pread(fd, mem + done, pages * 4096 - done, off_t(done))
        guard n > 0 else { break }
        done += n
    }
    return (mem, done / 4096)
}

/// A page compressor/decompressor pair under test.
struct Codec {
    var name: String
    var compress: (UnsafeRawPointer, UnsafeMutableRawPointer) -> Int
    var decompress: (UnsafeRawPointer, Int, UnsafeMutableRawPointer) -> Bool
}

func stream(_ a: CompressionAlgorithm) -> Codec? {
    guard let s = try? a.makeStream() else { return nil }
    return Codec(name: "port " + a.rawValue,
                 compress: { s.compress(page: $0, into: $1, capacity: 8192) ?? 0 },
                 decompress: { s.decompress($0, count: $1, intoPage: $2) })
}

func liblzo2() -> Codec {
    _ = clzo_init()
    let work = UnsafeMutableRawPointer.allocate(byteCount: Int(clzo1x_1_mem_compress()), alignment: 64)
    return Codec(name: "liblzo2 lzo1x_1",
                 compress: { src, dst in
                     var n: lzo_uint = 0
                     _ = lzo1x_1_compress(src.assumingMemoryBound(to: UInt8.self), 4096,
                                          dst.assumingMemoryBound(to: UInt8.self), &n, work)
                     return Int(n)
                 },
                 decompress: { src, count, dst in
                     var n: lzo_uint = 4096
                     return lzo1x_decompress_safe(src.assumingMemoryBound(to: UInt8.self), lzo_uint(count),
                                                  dst.assumingMemoryBound(to: UInt8.self), &n, nil) == LZO_E_OK && n == 4096
                 })
}

func fixed2(_ x: Double) -> String {
    let c = Int((x * 100).rounded())
    return "\(c / 100)." + (c % 100 < 10 ? "0" : "") + "\(c % 100)"
}

var args = Array(CommandLine.arguments.dropFirst())
var rounds = 5
if args.first == "--rounds", args.count > 1 { rounds = Int(args[1]) ?? 5; args.removeFirst(2) }
let codecs = [stream(.lzoRle), stream(.lzo), liblzo2()].compactMap { $0 }
let out = UnsafeMutableRawPointer.allocate(byteCount: 8192, alignment: 64)
let page = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
for path in args {
    guard let (data, pages) = load(path), pages > 0 else { print("\(path): cannot read"); continue }
    // Every page's compressed form, for the decompression pass.
    let store = UnsafeMutableRawPointer.allocate(byteCount: pages * 8192, alignment: 64)
    var lengths = [Int](repeating: 0, count: pages)
    let mb = Double(pages * 4096 * rounds) / 1e6
    print("\(path): \(pages) pages, \(rounds) rounds")
    for c in codecs {
        var total = 0
        for i in 0..<pages { lengths[i] = c.compress(data + i * 4096, store + i * 8192); total += lengths[i] }
        var t0 = now()
        for _ in 0..<rounds { for i in 0..<pages { _ = c.compress(data + i * 4096, out) } }
        let ct = now() - t0
        var ok = true
        t0 = now()
        for _ in 0..<rounds { for i in 0..<pages where !c.decompress(store + i * 8192, lengths[i], page) { ok = false } }
        let dt = now() - t0
        let ratio = Double(pages * 4096) / Double(total)
        let pad = String(repeating: " ", count: max(0, 16 - c.name.count))
        print("  \(c.name)\(pad) compress \(Int(mb / ct)) MB/s  decompress \(Int(mb / dt)) MB/s  ratio \(fixed2(ratio))  \(ok ? "" : "DECODE FAILED")")
    }
    store.deallocate()
    data.deallocate()
}
