import Codec
import Glibc
import Testing
@testable import ZramDevice

@Suite("ZramDevice statistics text")
struct StatsTextTests {
    @Test("mm_stat: nine %8llu fields, single spaces, newline; wide numbers grow")
    func mmStat() {
        var s = ZramStats()
        s.origDataSize = 1; s.comprDataSize = 22; s.memUsedTotal = 333; s.memLimit = 4444
        s.memUsedMax = 55555; s.samePages = 666666; s.pagesCompacted = 7777777; s.hugePages = 88888888
        s.hugePagesSince = 999999999
        #expect(s.mmStatText == "       1       22      333     4444    55555   666666  7777777 88888888 999999999\n")
        // The kernel's lz4 line from the doc's experiment (section 4).
        var k = ZramStats()
        k.origDataSize = 536870912; k.comprDataSize = 217882026; k.memUsedTotal = 223629312
        k.memUsedMax = 223629312; k.samePages = 17029; k.hugePages = 3415; k.hugePagesSince = 3415
        #expect(k.mmStatText == "536870912 217882026 223629312        0 223629312    17029        0     3415     3415\n")
        #expect(ZramStats().mmStatText == "       0        0        0        0        0        0        0        0        0\n")
        var wide = ZramStats()
        wide.origDataSize = UInt64.max
        #expect(wide.mmStatText.hasPrefix("18446744073709551615        0 "))
    }

    @Test("io_stat, debug_stat and bd_stat match the 6.18 formats")
    func otherFiles() {
        var s = ZramStats()
        s.failedReads = 1; s.failedWrites = 23; s.notifyFree = 65536; s.missFree = 5
        #expect(s.ioStatText == "       1       23 0    65536\n")
        #expect(ZramStats().ioStatText == "       0        0 0        0\n")
        #expect(s.debugStatText == "version: 1\n0        5\n")
        #expect(s.bdStatText == "       0        0        0\n")
        #expect(rightAligned(42, width: 8) == "      42")
        #expect(rightAligned(123456789, width: 8) == "123456789")
        #expect(rightAligned(0, width: 0) == "0")
    }

    @Test("comp_algorithm lists every algorithm in the kernel's order with the selected one bracketed")
    func compAlgorithm() throws {
        // The kernel with lzo, lzo-rle and lz4 built in prints "[lzo-rle] lzo lz4 \n": ours is the
        // same list with the algorithms that kernel lacks in their backends[] places.
        #expect(try makeDevice(4096, algorithm: .lzoRle).compAlgorithmText == "[lzo-rle] lzo lz4 lz4hc zstd deflate \n")
        #expect(try makeDevice(4096).compAlgorithmText == "lzo-rle lzo [lz4] lz4hc zstd deflate \n")
        #expect(try makeDevice(4096, algorithm: .zstd).compAlgorithmText == "lzo-rle lzo lz4 lz4hc [zstd] deflate \n")
    }

    @Test("classes comes from the pool and counts this device's objects")
    func classes() throws {
        let dev = try makeDevice(1 << 20)
        let text = Buffer(8 * 4096); text.fillText(seed: 3)
        try dev.write(text, at: 0)
        let table = dev.classesText
        #expect(table.hasPrefix(" class  size "))
        let total = table.split(separator: "\n").last { $0.contains("Total") }
        // obj_used in the Total line equals the stored (non-same) pages.
        let fields = total.map { $0.split(separator: " ") } ?? []
        #expect(fields.count == 16 && fields[13] == "8")
    }
}

@Suite("ZramDevice controls")
struct ControlTests {
    @Test("reset frees everything and zeroes counters; the device stays usable")
    func reset() throws {
        let dev = try makeDevice(1 << 20, memLimit: 1 << 20)
        let text = Buffer(32 * 4096); text.fillText(seed: 6)
        try dev.write(text, at: 0)
        try dev.discard(offset: 0, length: 4096)
        #expect(dev.stats().memUsedTotal > 0)
        try dev.reset()
        var expected = ZramStats()
        expected.diskSize = 1 << 20
        expected.memLimit = 1 << 20
        #expect(dev.stats() == expected)
        #expect(dev.census() == SlotCensus())
        let back = Buffer(32 * 4096, fill: 9)
        try dev.read(back, at: 0)
        #expect(back.isZero(0..<back.count))
        try dev.write(text, at: 4096)
        try dev.read(back, at: 4096)
        #expect(back.equals(text, 0..<back.count))
    }

    @Test("compact frees fragmented zspages; pages_compacted accumulates; data survives")
    func compact() throws {
        let dev = try makeDevice(8 << 20)
        let data = Buffer(8 << 20)
        for p in 0..<(data.count / 4096) {
            // Mixed sizes so many classes fill, then free 3 of every 4 pages.
            data.fillText(seed: p, range: p * 4096..<(p * 4096 + 4096))
            data.randomize(seed: UInt64(p + 1), range: p * 4096..<(p * 4096 + (p % 7) * 300))
        }
        try dev.write(data, at: 0)
        for p in 0..<(data.count / 4096) where p % 4 != 0 { try dev.discard(offset: p * 4096, length: 4096) }
        let before = dev.stats()
        let predicted = dev.compactablePages
        let freed = try dev.compact()
        #expect(predicted > 0 && freed <= predicted)
        #expect(dev.compactablePages < predicted)
        let after = dev.stats()
        #expect(freed > 0)
        #expect(after.pagesCompacted == UInt64(freed))
        #expect(after.memUsedTotal == before.memUsedTotal - UInt64(freed) * 4096)
        #expect(after.comprDataSize == before.comprDataSize)
        _ = try dev.compact()
        #expect(dev.stats().pagesCompacted >= UInt64(freed))
        let back = Buffer(4096)
        for p in stride(from: 0, to: data.count / 4096, by: 4) {
            try dev.read(back, at: p * 4096)
            #expect(back.equals(data, 0..<4096, otherOffset: p * 4096), "page \(p)")
        }
    }

    @Test("the algorithm is fixed while data is stored")
    func algorithmBusy() throws {
        let dev = try makeDevice(1 << 20)
        try dev.setAlgorithm(.zstd, level: 5)
        #expect(dev.algorithm == .zstd && dev.level == 5)
        let text = Buffer(4096); text.fillText(seed: 1)
        try dev.write(text, at: 0)
        #expect(throws: ZramError.busy) { try dev.setAlgorithm(.lz4) }
        #expect(throws: ZramError.invalidArgument(CodecError.invalidLevel(.zstd, 1000).description)) {
            try dev.setAlgorithm(.zstd, level: 1000)
        }
        #expect(dev.algorithm == .zstd)
        let back = Buffer(4096)
        try dev.read(back, at: 0)
        #expect(back.equals(text, 0..<4096))
        // Same-filled pages count as stored data too.
        try dev.write(Buffer(4096), at: 0)
        #expect(throws: ZramError.busy) { try dev.setAlgorithm(.lz4) }
        try dev.discard(offset: 0, length: 4096)
        try dev.setAlgorithm(.lz4)
        #expect(dev.compAlgorithmText == "lzo-rle lzo [lz4] lz4hc zstd deflate \n")
    }

    @Test("mem_limit: the write fails, old data stays, mem_used_max records the peak; reset of the max")
    func memLimit() throws {
        let limit = 64 * 1024
        let dev = try makeDevice(4 << 20, memLimit: limit)
        let old = Buffer(4096); old.fillText(seed: 77)
        try dev.write(old, at: 0)
        // Fill with incompressible pages (one pool page each) until the limit refuses one.
        let page = Buffer(4096)
        var written = 1
        var failure: ZramError?
        while failure == nil && written < 1024 {
            page.randomize(seed: UInt64(written))
            do { try dev.write(page, at: written * 4096); written += 1 } catch { failure = error }
        }
        #expect(failure == .noSpace)
        var s = dev.stats()
        #expect(s.failedWrites == 1)
        #expect(s.memLimit == UInt64(limit))
        #expect(s.memUsedTotal <= UInt64(limit))
        #expect(s.memUsedMax > UInt64(limit), "the refused allocation is part of the peak")
        #expect(s.origDataSize == UInt64(written) * 4096)
        // Overwriting page 0 with an incompressible page fails too and keeps the old contents.
        page.randomize(seed: 4242)
        #expect(throws: ZramError.noSpace) { try dev.write(page, at: 0) }
        let back = Buffer(4096)
        try dev.read(back, at: 0)
        #expect(back.equals(old, 0..<4096))
        #expect(dev.stats().failedWrites == 2)
        // A multi-page request fails once (one bio): pages before the failing one are stored.
        let two = Buffer(2 * 4096); two.randomize(seed: 5)
        #expect(throws: ZramError.noSpace) { try dev.write(two, at: 900 * 4096) }
        #expect(dev.stats().failedWrites == 3)
        // Same-filled pages need no pool memory and still succeed.
        try dev.write(Buffer(4096, fill: 7), at: 1000 * 4096)

        dev.resetMemUsedMax()
        s = dev.stats()
        #expect(s.memUsedMax == s.memUsedTotal)
        try dev.setMemLimit(0)
        try dev.write(page, at: 0)
        #expect(dev.stats().memUsedMax > s.memUsedMax)
    }
}
