import Testing
#if canImport(Glibc)
import Glibc
#endif
import TestSupport
@testable import ZsPool

/// The live kernel is the oracle: store pages of a known compressed length in a private kernel zram
/// device and the same lengths in our pool, and compare the memory both use. The lengths sit in
/// classes where the kernel's shipped least-waste rule and the old used-percent rule disagree
/// (shared/docs/zram-zsmalloc.md §2): 339 B (8 pages x 93 objs vs 5 x 58), 544 B (7 x 51 vs 4 x 29),
/// 1403 B (8 x 23 vs 7 x 20); 148 and 2094 B agree under both rules.
@Suite(.serialized) struct KernelOracleTests {
    static let cases: [(length: Int, pages: Int, kernelPages: Int)] =
        [(148, 2000, 80), (339, 930, 80), (544, 1020, 140), (1403, 460, 160), (2094, 300, 160)]

    @Test(arguments: cases.map { $0.length })
    func memUsedMatchesKernelZram(length: Int) throws {
        if let why = KernelZram.unavailableReason {
            print("skipped: kernel zram oracle for \(length) B objects: \(why)")
            return
        }
        try compare(length: length)
    }

    private func compare(length target: Int) throws {
        let c = Self.cases.first { $0.length == target }!
        let zram = try KernelZram(algorithm: "lz4", diskSize: (c.pages + 16) * 4096)
        defer { zram.remove() }
        let page = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
        defer { page.deallocate() }
        var rng = SplitMix64(seed: UInt64(target))
        // A page of N random bytes and a zero tail compresses to about N + N/255 + 15 bytes; calibrate
        // N once on page 0 (then discard it) so every page lands on the target length.
        func fill(prefix: Int) {
            memset(page, 0, 4096)
            for k in 0..<prefix { page.storeBytes(of: UInt8(truncatingIfNeeded: rng.next()), toByteOffset: k, as: UInt8.self) }
        }
        var prefix = max(1, target - 16)
        fill(prefix: prefix)
        try zram.write(page, count: 4096, offset: 0)
        prefix += target - Int(try zram.mmStat()[1])
        try zram.discard(offset: 0, length: 4096)
        var lengths: [Int] = []
        var lastCompr = try zram.mmStat()[1]
        for i in 0..<c.pages {
            fill(prefix: prefix)
            try zram.write(page, count: 4096, offset: i * 4096)
            let compr = try zram.mmStat()[1]
            lengths.append(Int(compr - lastCompr))
            lastCompr = compr
        }
        let mm = try zram.mmStat()
        let pool = try ZsPool(name: "oracle", chainSize: 8, maxPages: 1 << 14)
        for length in lengths { _ = pool.malloc(length >= pool.hugeClassSize ? 4096 : length)! }
        let ours = pool.totalPages * 4096
        let cls = pool.geometry.classes[pool.geometry.classPosition(forAllocation: target)]
        print("oracle \(target) B x \(c.pages) (class \(cls.index), \(cls.size) B, \(cls.pagesPerZspage) pages x \(cls.objsPerZspage)): kernel mem_used_total \(mm[2]) B, zspool \(ours) B; compr_data_size \(mm[1])")
        #expect(Set(lengths).count <= 3, "compressed lengths drifted: \(Set(lengths).sorted())")
        #expect(Int(mm[2]) == ours)
        #expect(ours == c.kernelPages * 4096, "doc's live measurement: \(c.kernelPages) pages")
    }
}
