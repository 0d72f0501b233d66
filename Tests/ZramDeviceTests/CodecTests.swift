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

@Suite("Codec: algorithm_params (deflate.winbits, dictionaries)")
struct AlgorithmParameterTests {
    /// A raw content dictionary of the text the test pages repeat, and one of other bytes.
    static let text = Array("The quick brown fox jumps over the lazy dog; zram stores pages compressed. ".utf8)
    static func dictionary(_ bytes: [UInt8]) throws -> CompressionDictionary { try CompressionDictionary(contents: bytes, path: nil) }

    @Test("deflate.winbits: the kernel's -15...-9 and 9...15 round-trip; others and other algorithms are refused")
    func windowBits() throws {
        let pages = variedPages(), out = Pages(3)
        for bits: Int32 in [-15, -11, -9, 9, 12, 15] {
            let s = try CompressionAlgorithm.deflate.prepare(AlgorithmParameters(windowBits: bits)).makeStream()
            for i in 0..<pages.count {
                let n = try #require(s.compress(page: pages[i], into: out[0], capacity: 8192))
                #expect(s.decompress(out[0], count: n, intoPage: out[2]) && memcmp(out[2], pages[i], 4096) == 0, "winbits \(bits) page \(i)")
            }
        }
        // A zlib header and trailer (positive bits) cost 6 bytes a page over raw deflate.
        let raw = try CompressionAlgorithm.deflate.prepare(AlgorithmParameters(windowBits: -11)).makeStream()
        let zlib = try CompressionAlgorithm.deflate.prepare(AlgorithmParameters(windowBits: 11)).makeStream()
        let a = try #require(raw.compress(page: pages[3], into: out[0], capacity: 8192))
        let b = try #require(zlib.compress(page: pages[3], into: out[1], capacity: 8192))
        #expect(b == a + 6)
        for bits: Int32 in [-16, -8, 0, 8, 16, 31, .min, .max] {
            #expect(throws: CodecError.invalidWindowBits(bits)) { try CompressionAlgorithm.deflate.prepare(AlgorithmParameters(windowBits: bits)) }
        }
        #expect(throws: CodecError.unsupportedParameter(.zstd, "deflate.winbits")) {
            try CompressionAlgorithm.zstd.prepare(AlgorithmParameters(windowBits: -11))
        }
        #expect(CodecError.invalidWindowBits(8).description == "deflate.winbits=8 is outside -15...-9 (raw deflate) and 9...15 (zlib)")
    }

    @Test("a dictionary round-trips and shrinks pages like it for zstd, lz4 and lz4hc", arguments: [CompressionAlgorithm.zstd, .lz4, .lz4hc])
    func dictionaryRoundTrip(algorithm: CompressionAlgorithm) throws {
        let pages = variedPages(), out = Pages(3)
        let plain = try algorithm.makeStream()
        let prepared = try algorithm.prepare(AlgorithmParameters(dictionary: try Self.dictionary(Array(repeating: Self.text, count: 20).flatMap { $0 })))
        let s = try prepared.makeStream(), other = try prepared.makeStream()   // two CPUs' streams share it
        for i in 0..<pages.count {
            let n = try #require(s.compress(page: pages[i], into: out[0], capacity: 8192))
            memset(out[2], 0xAA, 4096)
            #expect(other.decompress(out[0], count: n, intoPage: out[2]) && memcmp(out[2], pages[i], 4096) == 0, "page \(i)")
        }
        let with = try #require(s.compress(page: pages[3], into: out[0], capacity: 8192))
        let without = try #require(plain.compress(page: pages[3], into: out[1], capacity: 8192))
        #expect(with < without, "the text page is mostly the dictionary")
        // Another dictionary cannot read it back.
        let wrong = try algorithm.prepare(AlgorithmParameters(dictionary: try Self.dictionary(Array(repeating: 0x41, count: 4096)))).makeStream()
        let ok = wrong.decompress(out[0], count: with, intoPage: out[2])
        #expect(!ok || memcmp(out[2], pages[3], 4096) != 0)
    }

    @Test("zstd.compact: frames without magic, dictionary ID and content size round-trip and are smaller; zstd only")
    func compactFrames() throws {
        let pages = variedPages(), out = Pages(5)   // two 8 KiB outputs and a page
        let dict = try Self.dictionary(Array(repeating: Self.text, count: 20).flatMap { $0 })
        for d in [nil, dict] {
            let plain = try CompressionAlgorithm.zstd.prepare(AlgorithmParameters(dictionary: d)).makeStream()
            let compact = try CompressionAlgorithm.zstd.prepare(AlgorithmParameters(dictionary: d, compactFrames: true)).makeStream()
            for i in 0..<pages.count {
                let n = try #require(compact.compress(page: pages[i], into: out[0], capacity: 8192))
                let m = try #require(plain.compress(page: pages[i], into: out[2], capacity: 8192))
                #expect(n < m, "page \(i): \(n) vs \(m)")
                memset(out[4], 0xAA, 4096)
                #expect(compact.decompress(out[0], count: n, intoPage: out[4]) && memcmp(out[4], pages[i], 4096) == 0, "page \(i) dict \(d != nil)")
                #expect(!plain.decompress(out[0], count: n, intoPage: out[4]), "a magicless frame is not a standard one")
            }
        }
        #expect(throws: CodecError.unsupportedParameter(.lz4, "zstd.compact")) {
            try CompressionAlgorithm.lz4.prepare(AlgorithmParameters(compactFrames: true))
        }
    }

    @Test("dictionaries are refused: for lzo, lzo-rle, deflate; empty, missing, not a file, too large, corrupt")
    func dictionaryRefusals() throws {
        let d = try Self.dictionary(Self.text)
        for a in [CompressionAlgorithm.lzo, .lzoRle, .deflate] {
            #expect(throws: CodecError.unsupportedParameter(a, "dict")) { try a.prepare(AlgorithmParameters(dictionary: d)) }
        }
        #expect(CodecError.unsupportedParameter(.lzo, "dict").description == "lzo takes no dictionary (zstd, lz4 and lz4hc do)")
        #expect(throws: CodecError.dictionary("the dictionary is empty")) { try Self.dictionary([]) }
        #expect(throws: CodecError.dictionary("/nonexistent/d: No such file or directory")) { try CompressionDictionary.load(path: "/nonexistent/d") }
        #expect(throws: CodecError.dictionary("/tmp is not a regular file")) { try CompressionDictionary.load(path: "/tmp") }
        let big = try Self.dictionary(Array(repeating: 7, count: CompressionDictionary.maxLZ4Bytes + 1))
        #expect(throws: CodecError.dictionary("the dictionary is 65537 bytes; lz4 takes at most 65536")) {
            try CompressionAlgorithm.lz4.prepare(AlgorithmParameters(dictionary: big))
        }
        // zstd's dictionary magic with garbage after it.
        let corrupt = try Self.dictionary([0x37, 0xA4, 0x30, 0xEC] + Array(repeating: 0xFF, count: 200))
        #expect(throws: CodecError.dictionary("the dictionary is not a usable zstd dictionary (corrupt header or entropy tables)")) {
            try CompressionAlgorithm.zstd.prepare(AlgorithmParameters(dictionary: corrupt))
        }
        #expect(try Self.dictionary(Self.text) == d, "equal bytes, equal dictionaries")
    }

    @Test("train makes a zstd dictionary from pages that pays on pages like them")
    func training() throws {
        // 200 pages of records that differ in their numbers.
        var samples: [UInt8] = []
        var x: UInt64 = 1
        for _ in 0..<200 {
            var page: [UInt8] = []
            while page.count < 4096 {
                x = x &* 6364136223846793005 &+ 1442695040888963407
                page += Array("{\"id\": \(x >> 40), \"name\": \"user\(x >> 50)\", \"active\": true, \"score\": \(x >> 54)}, ".utf8)
            }
            samples += page[0..<4096]
        }
        let bytes = try DictionaryTrainer.train(samples: samples, sampleSize: 4096, size: 8192)
        #expect(bytes.count > 0 && bytes.count <= 8192)
        let dict = try CompressionDictionary(contents: bytes, path: nil)
        #expect(dict.zstdID != 0, "a trained dictionary has an ID")
        let with = try CompressionAlgorithm.zstd.prepare(AlgorithmParameters(dictionary: dict)).makeStream()
        let without = try CompressionAlgorithm.zstd.makeStream()
        let out = Pages(2)
        var a = 0, b = 0
        samples.withUnsafeBytes { s in
            for i in 0..<200 {
                a += with.compress(page: s.baseAddress! + i * 4096, into: out[0], capacity: 8192) ?? 0
                b += without.compress(page: s.baseAddress! + i * 4096, into: out[1], capacity: 8192) ?? 0
            }
        }
        #expect(a < b * 95 / 100, "with \(a) bytes, without \(b)")
        #expect(throws: CodecError.dictionary("no pages to train from")) { try DictionaryTrainer.train(samples: [], sampleSize: 4096, size: 8192) }
        #expect(throws: CodecError.dictionary("size=100 is outside 256...1048576 bytes")) { try DictionaryTrainer.train(samples: samples, sampleSize: 4096, size: 100) }
    }
}
