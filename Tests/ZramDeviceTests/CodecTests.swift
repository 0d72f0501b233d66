import CLZ4
import CLZO
import CZlib
import CZstd
import Codec
import Glibc
import Testing

/// Page buffers for codec tests; freed by the test.
private struct Pages: ~Copyable {
    let base: UnsafeMutableRawPointer
    let count: Int
    init(_ count: Int) {
        self.count = count
        base = .allocate(byteCount: count * 4096, alignment: 4096)
        base.initializeMemory(as: UInt8.self, repeating: 0, count: count * 4096)
    }
    subscript(i: Int) -> UnsafeMutableRawPointer { base + i * 4096 }
    deinit { base.deallocate() }
}

/// Varied pages: zeros, a repeated word, random, text, and binary taken from a system library.
private func variedPages() -> Pages {
    let pages = Pages(6)
    // 1: same-filled word
    for i in 0..<512 { pages[1].storeBytes(of: 0xdead_beef_0123_4567 as UInt64, toByteOffset: i * 8, as: UInt64.self) }
    // 2: random (xorshift, deterministic)
    var x: UInt64 = 0x9e37_79b9_7f4a_7c15
    for i in 0..<512 {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17
        pages[2].storeBytes(of: x, toByteOffset: i * 8, as: UInt64.self)
    }
    // 3: text
    let text = Array("The quick brown fox jumps over the lazy dog; zram stores pages compressed. ".utf8)
    for i in 0..<4096 { pages[3].storeBytes(of: text[i % text.count], toByteOffset: i, as: UInt8.self) }
    // 4, 5: binary from libc (ELF header page and a page of code)
    let fd = open("/usr/lib/x86_64-linux-gnu/libc.so.6", O_RDONLY | O_CLOEXEC)
    if fd >= 0 {
        _ = pread(fd, pages[4], 4096, 0)
        _ = pread(fd, pages[5], 4096, 40 * 4096)
        close(fd)
    }
    return pages
}

@Suite("Codec")
struct CodecTests {
    @Test("names parse as zram writes them; unknown names and bad levels are refused")
    func names() throws {
        #expect(try CompressionAlgorithm(name: "lz4\n") == .lz4)
        #expect(try CompressionAlgorithm(name: " zstd ") == .zstd)
        #expect(try CompressionAlgorithm(name: "lzo-rle\n") == .lzoRle)
        #expect(throws: CodecError.unknownAlgorithm("842")) { try CompressionAlgorithm(name: "842") }
        #expect(CompressionAlgorithm.allCases.map(\.rawValue) == ["lzo-rle", "lzo", "lz4", "lz4hc", "zstd", "deflate"],
                "comp_algorithm's order is the kernel's")
        #expect(CompressionAlgorithm.lz4hc.defaultLevel == 9 && CompressionAlgorithm.deflate.defaultLevel == 6)
        #expect(throws: CodecError.invalidLevel(.lzo, 3)) { try CompressionAlgorithm.lzo.makeStream(level: 3) }
        #expect(CodecError.invalidLevel(.lzoRle, 3).description == "lzo-rle takes no level (got 3)")
        #expect(throws: CodecError.invalidLevel(.lz4hc, 13)) { try CompressionAlgorithm.lz4hc.makeStream(level: 13) }
        #expect(throws: CodecError.invalidLevel(.deflate, 10)) { try CompressionAlgorithm.deflate.makeStream(level: 10) }
        #expect(CompressionAlgorithm.lz4.defaultLevel == 1)
        #expect(CompressionAlgorithm.zstd.defaultLevel == 3)
        #expect(throws: CodecError.invalidLevel(.lz4, 0)) { try CompressionAlgorithm.lz4.makeStream(level: 0) }
        #expect(throws: CodecError.invalidLevel(.zstd, 99)) { try CompressionAlgorithm.zstd.makeStream(level: 99) }
        #expect(CodecError.invalidLevel(.lz4, 0).description == "level 0 is outside lz4's range 1...65537")
    }

    @Test("every page round-trips exactly", arguments: [
        (CompressionAlgorithm.lz4, Int32(1)), (.lz4, 8), (.lz4, 1000),
        (.zstd, 1), (.zstd, 3), (.zstd, 19), (.zstd, -5),
        (.lzo, 0), (.lzoRle, 0), (.lz4hc, 1), (.lz4hc, 9), (.lz4hc, 12),
        (.deflate, -1), (.deflate, 0), (.deflate, 1), (.deflate, 6), (.deflate, 9),
    ])
    func roundTrip(algorithm: CompressionAlgorithm, level: Int32) throws {
        let stream = try algorithm.makeStream(level: level)
        #expect(stream.algorithm == algorithm && stream.level == level)
        let pages = variedPages()
        let out = Pages(3)
        for i in 0..<pages.count {
            let n = try #require(stream.compress(page: pages[i], into: out[0], capacity: 8192))
            #expect(n > 0 && n <= 8192)
            memset(out[2], 0xAA, 4096)
            #expect(stream.decompress(out[0], count: n, intoPage: out[2]))
            #expect(memcmp(out[2], pages[i], 4096) == 0, "page \(i)")
            if i == 0, !(algorithm == .deflate && level == 0) { #expect(n < 100, "a zero page compresses to a few bytes") }
            if i == 2 { #expect(n > 4000, "a random page does not compress") }
        }
    }

    @Test("corrupt or truncated input fails instead of returning a page", arguments: CompressionAlgorithm.allCases)
    func corruptInput(algorithm: CompressionAlgorithm) throws {
        let stream = try algorithm.makeStream()
        let pages = variedPages()
        let out = Pages(3)
        let n = try #require(stream.compress(page: pages[3], into: out[0], capacity: 8192))
        // Truncated by one byte, by half, and to nothing.
        #expect(!stream.decompress(out[0], count: n - 1, intoPage: out[2]))
        #expect(!stream.decompress(out[0], count: n / 2, intoPage: out[2]))
        #expect(!stream.decompress(out[0], count: 0, intoPage: out[2]))
        // Garbage: random bytes are not a valid block/frame.
        #expect(!stream.decompress(pages[2], count: 3000, intoPage: out[2]))
        // A valid stream of a different page length: a 2 KiB page must not pass as 4 KiB.
        let zeros = Pages(1)
        let short = try #require(compressShort(algorithm, zeros[0], into: out[1]))
        #expect(!stream.decompress(out[1], count: short, intoPage: out[2]))
        // The stream still works after failures.
        #expect(stream.decompress(out[0], count: n, intoPage: out[2]))
        #expect(memcmp(out[2], pages[3], 4096) == 0)
    }

    @Test("large batch of binary pages round-trips with reused contexts")
    func batch() throws {
        let fd = open("/usr/lib/x86_64-linux-gnu/libc.so.6", O_RDONLY | O_CLOEXEC)
        try #require(fd >= 0)
        defer { close(fd) }
        let data = Pages(256)
        let got = pread(fd, data.base, 256 * 4096, 0)
        try #require(got > 4096)
        let out = Pages(3)
        for algorithm in CompressionAlgorithm.allCases {
            let stream = try algorithm.makeStream()
            for i in 0..<(got / 4096) {
                let n = try #require(stream.compress(page: data[i], into: out[0], capacity: 8192))
                #expect(stream.decompress(out[0], count: n, intoPage: out[2]))
                #expect(memcmp(out[2], data[i], 4096) == 0)
            }
        }
    }
}

extension CodecTests {
    @Test("the slower codecs earn their time: lz4hc and deflate store libc in fewer bytes than lz4")
    func strongerCodecsStoreLess() throws {
        let fd = open("/usr/lib/x86_64-linux-gnu/libc.so.6", O_RDONLY | O_CLOEXEC)
        try #require(fd >= 0)
        defer { close(fd) }
        let data = Pages(64)
        let got = pread(fd, data.base, 64 * 4096, 0)
        try #require(got == 64 * 4096)
        let out = Pages(2)
        var total: [CompressionAlgorithm: Int] = [:]
        for algorithm in CompressionAlgorithm.allCases {
            let stream = try algorithm.makeStream()
            for i in 0..<64 { total[algorithm, default: 0] += try #require(stream.compress(page: data[i], into: out[0], capacity: 8192)) }
        }
        let lz4 = try #require(total[.lz4]), lz4hc = try #require(total[.lz4hc]), deflate = try #require(total[.deflate])
        #expect(lz4hc < lz4 && deflate < lz4hc, "\(total)")
        // Not lzo-rle < lzo: zero runs as RLE can cost more than the matches lzo finds for them
        // (kernel zram too: the oracle corpus is 0.5 % larger under lzo-rle).
    }
}

/// Compresses 2048 bytes with the library directly: a valid stream that decodes to half a page.
private func compressShort(_ algorithm: CompressionAlgorithm, _ src: UnsafeRawPointer,
                           into dst: UnsafeMutableRawPointer) -> Int? {
    switch algorithm {
    case .lz4, .lz4hc: return lz4Short(src, dst)
    case .zstd: return zstdShort(src, dst)
    case .lzo, .lzoRle: return lzoShort(src, dst)
    case .deflate: return deflateShort(src, dst)
    }
}

private func lzoShort(_ src: UnsafeRawPointer, _ dst: UnsafeMutableRawPointer) -> Int? {
    let work = UnsafeMutableRawPointer.allocate(byteCount: Int(clzo1x_1_mem_compress()), alignment: 16)
    defer { work.deallocate() }
    var n: lzo_uint = 0
    let r = lzo1x_1_compress(src.assumingMemoryBound(to: UInt8.self), 2048,
                             dst.assumingMemoryBound(to: UInt8.self), &n, work)
    return r == LZO_E_OK ? Int(n) : nil
}

private func deflateShort(_ src: UnsafeRawPointer, _ dst: UnsafeMutableRawPointer) -> Int? {
    var z = z_stream()
    guard czlib_deflate_init2(&z, 6, -11, 8) == Z_OK else { return nil }
    defer { deflateEnd(&z) }
    z.next_in = UnsafeMutablePointer(mutating: src.assumingMemoryBound(to: UInt8.self))
    z.avail_in = 2048
    z.next_out = dst.assumingMemoryBound(to: UInt8.self)
    z.avail_out = 8192
    return deflate(&z, Z_FINISH) == Z_STREAM_END ? Int(z.total_out) : nil
}

private func lz4Short(_ src: UnsafeRawPointer, _ dst: UnsafeMutableRawPointer) -> Int? {
    let n = LZ4_compress_default(src.assumingMemoryBound(to: CChar.self),
                                 dst.assumingMemoryBound(to: CChar.self), 2048, 8192)
    return n > 0 ? Int(n) : nil
}

private func zstdShort(_ src: UnsafeRawPointer, _ dst: UnsafeMutableRawPointer) -> Int? {
    let n = ZSTD_compress(dst, 8192, src, 2048, 3)
    return ZSTD_isError(n) == 0 ? n : nil
}
