import Codec
import Glibc
import Testing
@testable import ZramDevice

@Suite("ZramDevice I/O")
struct DeviceIOTests {
    @Test("pages read back as written; untouched pages read as zeros", arguments: CompressionAlgorithm.allCases)
    func roundTrip(algorithm: CompressionAlgorithm) throws {
        let dev = try makeDevice(1 << 20, algorithm: algorithm)
        let data = Buffer(16 * 4096)
        data.fillText(seed: 1, range: 0..<8 * 4096)
        data.randomize(seed: 7, range: 8 * 4096..<12 * 4096)       // huge pages
        memset(data.base + 12 * 4096, 0x5a, 4096)                  // same-filled byte
        // 13..15 zero
        try dev.write(data, at: 64 * 4096)
        let back = Buffer(16 * 4096, fill: 0xee)
        try dev.read(back, at: 64 * 4096)
        #expect(back.equals(data, 0..<data.count))
        let untouched = Buffer(4096, fill: 0xee)
        try dev.read(untouched, at: 0)
        #expect(untouched.isZero(0..<4096))

        let s = dev.stats()
        #expect(s.origDataSize == 16 * 4096)
        #expect(s.samePages == 4)
        #expect(s.hugePages == 4 && s.hugePagesSince == 4)
        #expect(s.comprDataSize > 4 * 4096 && s.comprDataSize < 10 * 4096)
        #expect(s.memUsedTotal > 0 && s.memUsedMax >= s.memUsedTotal)
        let c = dev.census()
        #expect(c == SlotCensus(storedPages: 16, samePages: 4, hugePages: 4, comprBytes: Int(s.comprDataSize)))
    }

    @Test("a read that reports zeros leaves empty and zero-filled pages alone and reports them once each")
    func readReportingZeroes() throws {
        let dev = try makeDevice(1 << 20)
        let data = Buffer(4 * 4096)
        data.fillText(seed: 3, range: 0..<4096)                  // page 0: data
        memset(data.base + 4096, 0, 4096)                         // page 1: same-filled zeros
        memset(data.base + 2 * 4096, 0x5a, 4096)                  // page 2: same-filled, not zero
        data.fillText(seed: 4, range: 3 * 4096..<4 * 4096)        // page 3: data, then discarded
        try dev.write(data, at: 0)
        try dev.discard(offset: 3 * 4096, length: 4096)
        // Pages 0-5 from byte 100 on: 4 and 5 were never written.
        let back = Buffer(6 * 4096 - 100, fill: 0xee)
        var zeros: [Range<Int>] = []
        try dev.read(into: back.base, offset: 100, length: back.count) { start, length in zeros.append(start..<(start + length)) }
        let page = 4096 - 100  // where page 1 starts in `back`
        #expect(zeros == [page..<(page + 4096), (page + 2 * 4096)..<(page + 3 * 4096),
                          (page + 3 * 4096)..<(page + 4 * 4096), (page + 4 * 4096)..<back.count])
        #expect(back.equals(data, 0..<page, otherOffset: 100))
        #expect(back.equals(data, (page + 4096)..<(page + 2 * 4096), otherOffset: 2 * 4096))
        #expect(!back.isZero(page..<(page + 4096)))  // reported, so left as it was
        // The plain read fills the same pages with zeros.
        let plain = Buffer(6 * 4096 - 100, fill: 0xee)
        try dev.read(into: plain.base, offset: 100, length: plain.count)
        for z in zeros { #expect(plain.isZero(z)) }
    }

    @Test("any repeated 8-byte word is a same-filled page and costs no pool memory")
    func sameFilledWords() throws {
        let dev = try makeDevice(1 << 20)
        let page = Buffer(4096)
        for k in 0..<512 { page.base.storeBytes(of: 0x0123_4567_89ab_cdef as UInt64, toByteOffset: k * 8, as: UInt64.self) }
        try dev.write(page, at: 0)
        // A page that differs only in its last byte is not same-filled.
        page[4095] = 0
        try dev.write(page, at: 4096)
        let s = dev.stats()
        #expect(s.samePages == 1)
        #expect(s.origDataSize == 2 * 4096)
        let back = Buffer(2 * 4096)
        try dev.read(back, at: 0)
        #expect(back.base.load(fromByteOffset: 4088, as: UInt64.self) == 0x0123_4567_89ab_cdef)
        #expect(back[4096 + 4095] == 0 && back[4096 + 4094] == 0x23)

        let zeroOnly = try makeDevice(1 << 20)
        try zeroOnly.write(Buffer(64 * 4096), at: 0)
        #expect(zeroOnly.stats().samePages == 64)
        #expect(zeroOnly.stats().memUsedTotal == 0)
    }

    @Test("overwrites replace old contents and counters follow (free-old semantics)")
    func overwrite() throws {
        let dev = try makeDevice(1 << 20)
        let random = Buffer(4096); random.randomize(seed: 3)
        let text = Buffer(4096); text.fillText(seed: 2)
        try dev.write(random, at: 0)
        #expect(dev.stats().hugePages == 1)
        try dev.write(text, at: 0)
        var s = dev.stats()
        #expect(s.hugePages == 0 && s.hugePagesSince == 1 && s.origDataSize == 4096)
        try dev.write(Buffer(4096), at: 0)
        s = dev.stats()
        #expect(s.comprDataSize == 0 && s.samePages == 1 && s.origDataSize == 4096)
        #expect(s.memUsedTotal == 0)
        let back = Buffer(4096, fill: 1)
        try dev.read(back, at: 0)
        #expect(back.isZero(0..<4096))
    }

    @Test("sub-page and unaligned I/O is correct at both ends of a range")
    func unaligned() throws {
        let size = 256 * 1024
        let dev = try makeDevice(size)
        let shadow = Buffer(size)
        // A base layer of whole pages, then byte-granular writes that straddle page boundaries.
        shadow.fillText(seed: 5)
        try dev.write(shadow, at: 0)
        let pieces: [(Int, Int)] = [(1, 1), (511, 1026), (4095, 2), (4096 + 512, 512), (3 * 4096 - 7, 3 * 4096 + 14),
                                    (size - 513, 513), (10 * 4096 + 100, 1), (20 * 4096, 4095)]
        for (n, (off, len)) in pieces.enumerated() {
            let src = Buffer(len)
            if n % 2 == 0 { src.randomize(seed: UInt64(n + 11)) } else { src.fillText(seed: n) }
            try dev.write(from: src.base, offset: off, length: len)
            memcpy(shadow.base + off, src.base, len)
        }
        let whole = Buffer(size)
        try dev.read(whole, at: 0)
        #expect(whole.equals(shadow, 0..<size))
        // Unaligned reads of every odd shape.
        for (off, len) in [(0, 1), (4095, 2), (1, 4096), (4097, 3 * 4096), (size - 1, 1), (12345, 54321)] {
            let part = Buffer(len, fill: 0xcc)
            try dev.read(into: part.base, offset: off, length: len)
            #expect(memcmp(part.base, shadow.base + off, len) == 0, "read \(off)+\(len)")
        }
        #expect(dev.census().storedPages == size / 4096)
    }

    @Test("two concurrent 512-byte writes into one page both survive")
    func subPageRace() async throws {
        let dev = try makeDevice(64 * 4096)
        for round in 0..<200 {
            let page = round % 64
            await withTaskGroup(of: Void.self) { group in
                for sector in 0..<8 {
                    group.addTask {
                        let b = Buffer(512, fill: UInt8(sector + 1))
                        try? dev.write(from: b.base, offset: page * 4096 + sector * 512, length: 512)
                    }
                }
            }
            let back = Buffer(4096)
            try dev.read(back, at: page * 4096)
            for sector in 0..<8 {
                #expect(back[sector * 512] == UInt8(sector + 1) && back[sector * 512 + 511] == UInt8(sector + 1))
            }
        }
    }

    @Test("discard frees whole pages only; partial head and tail are left alone")
    func discard() throws {
        let dev = try makeDevice(64 * 4096)
        let data = Buffer(16 * 4096); data.fillText(seed: 9)
        try dev.write(data, at: 0)
        // From the middle of page 1 to the middle of page 5: pages 2, 3, 4 go.
        try dev.discard(offset: 4096 + 100, length: 4 * 4096)
        let back = Buffer(16 * 4096)
        try dev.read(back, at: 0)
        #expect(back.equals(data, 0..<2 * 4096))
        #expect(back.isZero(2 * 4096..<5 * 4096))
        #expect(back.equals(data, 5 * 4096..<16 * 4096, otherOffset: 5 * 4096))
        var s = dev.stats()
        #expect(s.notifyFree == 3 && s.origDataSize == 13 * 4096)
        // Discarding empty pages still counts each one (as the kernel's notify_free).
        try dev.discard(offset: 32 * 4096, length: 8 * 4096)
        // A range inside one page frees nothing and counts nothing.
        try dev.discard(offset: 6 * 4096 + 1, length: 4000)
        s = dev.stats()
        #expect(s.notifyFree == 11 && s.origDataSize == 13 * 4096)
        #expect(try dev.runs(0, 16 * 4096).map(\.1) == [.data, .unallocated, .data])
    }

    @Test("write-zeroes: partial pages get real zeros, whole pages are freed or stored as zero pages")
    func writeZeroes() throws {
        let dev = try makeDevice(64 * 4096)
        let data = Buffer(16 * 4096); data.fillText(seed: 4)
        try dev.write(data, at: 0)
        try dev.writeZeroes(offset: 4096 + 1000, length: 3 * 4096)    // page 1 tail, 2, 3, page 4 head
        let back = Buffer(16 * 4096)
        try dev.read(back, at: 0)
        #expect(back.equals(data, 0..<4096 + 1000))
        #expect(back.isZero(4096 + 1000..<4 * 4096 + 1000))
        #expect(back.equals(data, 4 * 4096 + 1000..<16 * 4096, otherOffset: 4 * 4096 + 1000))
        #expect(dev.stats().notifyFree == 2)
        #expect(try dev.runs(0, 6 * 4096).map(\.1) == [.data, .unallocated, .data])

        // NO_HOLE: whole pages become zero same-filled pages, not holes.
        try dev.writeZeroes(offset: 8 * 4096, length: 2 * 4096, mayTrim: false)
        let s = dev.stats()
        #expect(s.notifyFree == 2 && s.samePages == 2)
        let runs = try dev.runs(7 * 4096, 4 * 4096)
        #expect(runs.map(\.1) == [.data, .zero, .data])
        #expect(runs.map(\.0) == [4096, 2 * 4096, 4096])
        try dev.read(back, at: 0)
        #expect(back.isZero(8 * 4096..<10 * 4096))
    }

    @Test("page states merge into runs clipped to the range")
    func pageStates() throws {
        let dev = try makeDevice(32 * 4096)
        let text = Buffer(2 * 4096); text.fillText(seed: 1)
        try dev.write(text, at: 4 * 4096)
        try dev.write(Buffer(4096), at: 6 * 4096)            // zero same-filled
        let runs = try dev.runs(100, 10 * 4096)
        #expect(runs.map(\.1) == [.unallocated, .data, .zero, .unallocated])
        #expect(runs.map(\.0) == [4 * 4096 - 100, 2 * 4096, 4096, 3 * 4096 + 100])
        var first: [(Int, PageState)] = []
        try dev.pageStates(offset: 0, length: 32 * 4096) { first.append(($0, $1)); return false }
        #expect(first.count == 1 && first[0].1 == .unallocated)
    }

    @Test("ranges outside the disk are refused without side effects")
    func outOfRange() throws {
        let dev = try makeDevice(10_000)                      // rounds up to 3 pages
        #expect(dev.diskSize == 3 * 4096)
        let b = Buffer(8192)
        #expect(throws: ZramError.outOfRange) { try dev.write(from: b.base, offset: 2 * 4096 + 1, length: 4096) }
        #expect(throws: ZramError.outOfRange) { try dev.read(into: b.base, offset: -1, length: 1) }
        #expect(throws: ZramError.outOfRange) { try dev.discard(offset: 0, length: 4 * 4096) }
        #expect(throws: ZramError.outOfRange) { try dev.writeZeroes(offset: Int.max, length: 1) }
        try dev.write(from: b.base, offset: 4096, length: 8192)
        #expect(dev.stats().failedWrites == 0 && dev.stats().failedReads == 0)
        let empty = try ZramDevice(ZramConfig(name: "none", diskSize: 0))
        #expect(throws: ZramError.notInitialized) { try empty.read(into: b.base, offset: 0, length: 1) }
        #expect(empty.stats().mmStatText == "       0        0        0        0        0        0        0        0        0\n")
        #expect(throws: ZramError.invalidArgument("chain size 3 is not in 4...16")) {
            try ZramDevice(ZramConfig(name: "bad", diskSize: 4096, chainSize: 3))
        }
    }

    @Test("a corrupt stored page fails the read (failed_reads) and never returns its bytes")
    func corruptPage() throws {
        let dev = try makeDevice(16 * 4096)
        let text = Buffer(2 * 4096); text.fillText(seed: 8)
        try dev.write(text, at: 0)
        // Scribble over page 1's compressed object.
        let flags = dev.slots.lock(1)
        let size = flags.objectSize
        let garbage = Buffer(size); garbage.randomize(seed: 99)
        dev.storageForTesting.pool.write(dev.slots.handle(1), from: garbage.base, count: size)
        dev.slots.unlock(1, flags: flags)

        let back = Buffer(2 * 4096, fill: 0xab)
        #expect(throws: ZramError.ioError) { try dev.read(back, at: 0) }
        #expect(back.equals(text, 0..<4096))
        #expect(back.isZero(4096..<8192))
        #expect(throws: ZramError.ioError) { try dev.read(into: back.base, offset: 4096 + 10, length: 20) }
        #expect(back.isZero(0..<20) || !back.equals(text, 4096 + 10..<4096 + 30))
        #expect(dev.stats().failedReads == 2)
        // A sub-page write into the corrupt page cannot merge with it: fails, counts, keeps the slot.
        #expect(throws: ZramError.ioError) { try dev.write(from: text.base, offset: 4096 + 8, length: 8) }
        #expect(dev.stats().failedWrites == 1)
        // A whole-page overwrite repairs it.
        try dev.write(text, at: 4096, 0..<4096)
        try dev.read(back, at: 4096, 0..<4096)
        #expect(back.equals(text, 0..<4096))
    }
}

@Suite("ZramDevice large ranges")
struct LargeRangeTests {
    @Test("a 4 GiB device: whole-range discard, write-zeroes and block status walk the table without touching it")
    func fourGiB() throws {
        let size = 4 << 30
        let dev = try makeDevice(size)
        #expect(dev.slotTableBytes == size / 4096 * 16)
        let text = Buffer(4096); text.fillText(seed: 1)
        try dev.write(text, at: size - 4096)
        try dev.write(text, at: 0)
        try dev.discard(offset: 0, length: size)
        try dev.writeZeroes(offset: 0, length: size)
        #expect(try dev.runs(0, size).map(\.1) == [.unallocated])
        // Untouched slots stay untouched: of the 16 MiB table only the two written pages' table
        // pages hold private memory (reading the rest maps the shared zero page).
        if let pages = privatePages(dev.slots.baseAddress, count: dev.slotTableBytes / 4096) {
            #expect(pages == 2)
        } else {
            print("SKIP slot-table residency check: /proc/self/pagemap shows no frame numbers (needs root)")
        }
        let s = dev.stats()
        #expect(s.notifyFree == UInt64(2 * size / 4096))
        #expect(s.origDataSize == 0 && s.memUsedTotal == 0)
        try dev.flush()
    }
}
