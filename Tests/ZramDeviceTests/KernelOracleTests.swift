import Codec
import Glibc
import Testing
import TestSupport
@testable import ZramDevice

/// The oracle: kernel zram and ZramDevice fed the same bytes must report the same mm_stat
/// (within the documented liblz4-vs-kernel-lz4 drift; lzo and lzo-rle are ports of the kernel's
/// compressor, so their sizes match exactly).
@Suite("ZramDevice vs kernel zram", .serialized)
struct KernelOracleTests {
    @Test("corpus written, half discarded, a quarter zeroed, compacted: mm_stat agrees with the kernel",
          arguments: [CompressionAlgorithm.lz4, .lzo, .lzoRle])
    func oracle(algorithm: CompressionAlgorithm) throws {
        if let why = KernelZram.unavailableReason {
            print("SKIP kernel oracle: \(why)")
            return
        }
        let corpus = try Corpus.prepare()
        let size = corpus.byteCount
        let kernel = try KernelZram(algorithm: algorithm.rawValue, diskSize: size)
        defer { kernel.remove() }
        let dev = try ZramDevice(ZramConfig(name: "oracle", diskSize: size, algorithm: algorithm, chainSize: 8))
        print("oracle \(algorithm.rawValue)")

        try corpus.forEachChunk { (data, offset, count) throws in
            try kernel.write(data, count: count, offset: offset)
            try dev.write(from: data, offset: offset, length: count)
        }
        try compare(kernel, dev, "written")

        // Discard the second half; overwrite every other page of the first half with zeros.
        try kernel.discard(offset: size / 2, length: size / 2)
        try dev.discard(offset: size / 2, length: size / 2)
        let zero = Buffer(4096)
        for offset in stride(from: 0, to: size / 2, by: 8192) {
            try kernel.write(zero.base, count: 4096, offset: offset)
            try dev.write(from: zero.base, offset: offset, length: 4096)
        }
        try compare(kernel, dev, "discarded+zeroed")
        #expect(try kernel.ioStatText() == dev.stats().ioStatText)

        try kernel.compact()
        try dev.compact()
        try compare(kernel, dev, "compacted")
        let k = try kernel.mmStat(), o = dev.stats()
        #expect(within(k[6], o.pagesCompacted, 0.02), "pages_compacted")
    }

    @Test("idle all marks pages and changes no counter, as in the kernel; reads and writes after it count as before")
    func idleMarking() throws {
        if let why = KernelZram.unavailableReason {
            print("SKIP kernel oracle: \(why)")
            return
        }
        let size = 16 << 20
        let kernel = try KernelZram(algorithm: "lz4", diskSize: size)
        defer { kernel.remove() }
        let dev = try ZramDevice(ZramConfig(name: "oracle", diskSize: size, algorithm: .lz4, chainSize: 8))
        let data = writebackCorpus()
        for offset in stride(from: 0, to: size, by: data.count) {
            try kernel.write(data.base, count: data.count, offset: offset)
            try dev.write(from: data.base, offset: offset, length: data.count)
        }
        try compare(kernel, dev, "written")
        let (kernelBefore, ours) = (try kernel.mmStatText(), dev.stats().mmStatText)
        try kernel.idle("all")
        try dev.markIdle(olderThan: nil)
        #expect(try kernel.mmStatText() == kernelBefore && dev.stats().mmStatText == ours)
        // This kernel lacks CONFIG_ZRAM_TRACK_ENTRY_ACTIME: an age is refused there, taken here.
        #expect(throws: KernelZram.Failure.self) { try kernel.idle("60") }
        try dev.markIdle(olderThan: 60)
        let page = Buffer(4096)
        for offset in stride(from: 0, to: size - 4096, by: 3 * 4096) {
            try kernel.read(into: page.base, count: 4096, offset: offset)
            try dev.read(page, at: offset)
            try kernel.write(page.base, count: 4096, offset: offset + 4096)
            try dev.write(page, at: offset + 4096)
        }
        try compare(kernel, dev, "read and rewritten after idle")
    }

    private func compare(_ kernel: KernelZram, _ dev: ZramDevice, _ step: String) throws {
        let k = try kernel.mmStat()
        let s = dev.stats()
        print("mm_stat \(step)\n  kernel   \(try kernel.mmStatText())  zramnbd  \(s.mmStatText)", terminator: "")
        try #require(k.count == 9)
        #expect(k[0] == s.origDataSize, "orig_data_size \(step)")
        #expect(k[5] == s.samePages, "same_pages \(step)")
        #expect(within(k[1], s.comprDataSize, 0.0005), "compr_data_size \(step)")
        #expect(within(k[7], s.hugePages, 0.005), "huge_pages \(step)")
        #expect(within(k[8], s.hugePagesSince, 0.005), "huge_pages_since \(step)")
        #expect(within(k[2], s.memUsedTotal, 0.005), "mem_used_total \(step)")
        #expect(within(k[4], s.memUsedMax, 0.005), "mem_used_max \(step)")
    }
}

/// |a - b| <= fraction of the larger (equal when both are 0).
func within(_ a: UInt64, _ b: UInt64, _ fraction: Double) -> Bool {
    let hi = Double(max(a, b)), lo = Double(min(a, b))
    return hi - lo <= fraction * hi
}
