import CLZO
import Codec
import Glibc
import Testing

/// Deterministic pages for the LZO tests: random, text, zero runs of every kind of length
/// (short, at lzo-rle's 2051-byte cap, across the whole page), and mixtures.
private func lzoPages() -> [[UInt8]] {
    var x: UInt64 = 0x2545_f491_4f6c_dd1d
    func rnd() -> UInt64 { x ^= x << 13; x ^= x >> 7; x ^= x << 17; return x }
    var pages: [[UInt8]] = []
    pages.append((0..<4096).map { _ in UInt8(truncatingIfNeeded: rnd()) })
    let words = ["zram ", "stores ", "pages ", "compressed ", "in ", "a ", "zsmalloc ", "pool, ", "lzo-rle ", "runs\n"]
    var text: [UInt8] = []
    while text.count < 4096 { text += Array(words[Int(rnd() % UInt64(words.count))].utf8) }
    pages.append(Array(text.prefix(4096)))
    for run in [4, 5, 11, 12, 255, 2051, 2052, 3000, 4095] {
        var p = (0..<4096).map { _ in UInt8(truncatingIfNeeded: rnd() | 1) }
        let start = Int(rnd() % UInt64(4096 - run + 1))
        for i in start..<(start + run) { p[i] = 0 }
        pages.append(p)
    }
    // Process-memory-like: zero-padded structures, small integers, pointers, text.
    var mixed = [UInt8](repeating: 0, count: 4096)
    for i in stride(from: 0, to: 4096, by: 64) {
        let kind = rnd() % 4
        for j in 0..<64 where kind != 0 {
            mixed[i + j] = kind == 1 ? UInt8(j % 7) : kind == 2 ? UInt8(truncatingIfNeeded: rnd()) : text[(i + j) % text.count]
        }
    }
    pages.append(mixed)
    var one = [UInt8](repeating: 0, count: 4096)
    one[4095] = 1
    pages.append(one)
    return pages
}

/// A page-sized output with a guard zone after it: a decoder that writes past the page is caught.
private final class GuardedPage {
    static let guardBytes = 4096
    let base = UnsafeMutableRawPointer.allocate(byteCount: 4096 + GuardedPage.guardBytes, alignment: 4096)
    init() { base.initializeMemory(as: UInt8.self, repeating: 0xCC, count: 4096 + Self.guardBytes) }
    deinit { base.deallocate() }
    var guardIntact: Bool { (0..<Self.guardBytes).allSatisfy { base.load(fromByteOffset: 4096 + $0, as: UInt8.self) == 0xCC } }
}

@Suite("LZO (the kernel's lzo and lzo-rle)")
struct LZOTests {
    @Test("lzo and lzo-rle round-trip random, text and zero-run pages", arguments: [CompressionAlgorithm.lzo, .lzoRle])
    func roundTrip(algorithm: CompressionAlgorithm) throws {
        let stream = try algorithm.makeStream()
        let out = UnsafeMutableRawPointer.allocate(byteCount: 8192, alignment: 16)
        defer { out.deallocate() }
        let page = GuardedPage()
        for (i, p) in lzoPages().enumerated() {
            let n = try #require(p.withUnsafeBytes { stream.compress(page: $0.baseAddress!, into: out, capacity: 8192) })
            if algorithm == .lzoRle { #expect(out.load(as: UInt8.self) == 17 && out.load(fromByteOffset: 1, as: UInt8.self) == 1) }
            #expect(stream.decompress(out, count: n, intoPage: page.base), "page \(i)")
            #expect(memcmp(page.base, p, 4096) == 0, "page \(i)")
            #expect(page.guardIntact)
        }
    }

    @Test("zero runs make lzo-rle output smaller than lzo's on a page that is mostly zeros")
    func zeroRuns() throws {
        let lzo = try CompressionAlgorithm.lzo.makeStream(), rle = try CompressionAlgorithm.lzoRle.makeStream()
        let out = UnsafeMutableRawPointer.allocate(byteCount: 8192, alignment: 16)
        defer { out.deallocate() }
        var p = [UInt8](repeating: 0, count: 4096)
        for i in stride(from: 0, to: 4096, by: 1024) { p[i] = 0x42 }
        let a = try #require(p.withUnsafeBytes { lzo.compress(page: $0.baseAddress!, into: out, capacity: 8192) })
        let b = try #require(p.withUnsafeBytes { rle.compress(page: $0.baseAddress!, into: out, capacity: 8192) })
        #expect(b < a, "lzo-rle \(b) bytes, lzo \(a)")
    }

    @Test("our lzo is LZO1X: liblzo2 decodes what it writes, and it decodes what liblzo2 writes")
    func liblzo2Interop() throws {
        try #require(clzo_init() == LZO_E_OK)
        let stream = try CompressionAlgorithm.lzo.makeStream()
        let work = UnsafeMutableRawPointer.allocate(byteCount: Int(clzo1x_1_mem_compress()), alignment: 16)
        let out = UnsafeMutableRawPointer.allocate(byteCount: 8192, alignment: 16)
        let page = GuardedPage()
        defer { work.deallocate(); out.deallocate() }
        for (i, p) in lzoPages().enumerated() {
            let n = try #require(p.withUnsafeBytes { stream.compress(page: $0.baseAddress!, into: out, capacity: 8192) })
            var len: lzo_uint = 4096
            let r = lzo1x_decompress_safe(out.assumingMemoryBound(to: UInt8.self), lzo_uint(n),
                                          page.base.assumingMemoryBound(to: UInt8.self), &len, nil)
            #expect(r == LZO_E_OK && len == 4096 && memcmp(page.base, p, 4096) == 0, "liblzo2 decodes page \(i)")
            var m: lzo_uint = 0
            let c = p.withUnsafeBytes {
                lzo1x_1_compress($0.baseAddress!.assumingMemoryBound(to: UInt8.self), 4096,
                                 out.assumingMemoryBound(to: UInt8.self), &m, work)
            }
            try #require(c == LZO_E_OK)
            #expect(stream.decompress(out, count: Int(m), intoPage: page.base) && memcmp(page.base, p, 4096) == 0,
                    "we decode liblzo2's page \(i)")
        }
    }

    @Test("corrupt lzo and lzo-rle input (every truncation, flipped bytes, random bytes) fails or decodes inside the page",
          arguments: [CompressionAlgorithm.lzo, .lzoRle])
    func corrupt(algorithm: CompressionAlgorithm) throws {
        let stream = try algorithm.makeStream()
        let out = UnsafeMutableRawPointer.allocate(byteCount: 8192, alignment: 16)
        let bad = UnsafeMutableRawPointer.allocate(byteCount: 8192, alignment: 16)
        defer { out.deallocate(); bad.deallocate() }
        let page = GuardedPage()
        var x: UInt64 = 0x9e37_79b9_7f4a_7c15
        func rnd() -> UInt64 { x ^= x << 13; x ^= x >> 7; x ^= x << 17; return x }
        for p in lzoPages() {
            let n = try #require(p.withUnsafeBytes { stream.compress(page: $0.baseAddress!, into: out, capacity: 8192) })
            for cut in 0..<n {
                #expect(!stream.decompress(out, count: cut, intoPage: page.base), "truncated to \(cut) of \(n)")
            }
            // Each byte replaced (with its complement, then a random value): no crash, no write past the page.
            for i in 0..<n {
                for v in [~out.load(fromByteOffset: i, as: UInt8.self), UInt8(truncatingIfNeeded: rnd())] {
                    bad.copyMemory(from: out, byteCount: n)
                    bad.storeBytes(of: v, toByteOffset: i, as: UInt8.self)
                    _ = stream.decompress(bad, count: n, intoPage: page.base)
                }
            }
            #expect(page.guardIntact)
        }
        for _ in 0..<2000 {
            let len = Int(rnd() % 6000)
            for i in 0..<len { bad.storeBytes(of: UInt8(truncatingIfNeeded: rnd()), toByteOffset: i, as: UInt8.self) }
            if len >= 2, rnd() & 1 == 0 { bad.storeBytes(of: 17, toByteOffset: 0, as: UInt8.self); bad.storeBytes(of: 1, toByteOffset: 1, as: UInt8.self) }
            #expect(!stream.decompress(bad, count: len, intoPage: page.base) || len > 4, "random bytes")
        }
        #expect(page.guardIntact)
    }
}
