import Codec
import Glibc
import Synchronization
import Testing
import TestSupport
@testable import ZramDevice

/// A clock the test moves by hand, for access times and `idle SECONDS`.
final class TestClock: Sendable {
    let seconds = Atomic<UInt32>(1000)
    func advance(_ s: UInt32) { seconds.add(s, ordering: .relaxed) }
    var now: UInt32 { seconds.load(ordering: .relaxed) }
}

func makeDevice(_ size: Int, clock: TestClock, algorithm: CompressionAlgorithm = .lz4) throws -> ZramDevice {
    try ZramDevice(ZramConfig(name: "wb", diskSize: size, algorithm: algorithm), clock: { clock.now })
}

/// 64 pages: 0-31 text, 32-39 random (huge), 40-47 same-filled, 48-63 text.
func writebackCorpus() -> Buffer {
    let b = Buffer(64 * 4096)
    b.fillText(seed: 11, range: 0..<32 * 4096)
    b.randomize(seed: 5, range: 32 * 4096..<40 * 4096)
    memset(b.base + 40 * 4096, 0x33, 8 * 4096)
    b.fillText(seed: 12, range: 48 * 4096..<64 * 4096)
    return b
}

extension ZramDevice {
    func writeback(_ text: String) throws -> WritebackReport {
        try writeback(WritebackRequest.parse(text, pageCount: pageCount))
    }
    /// block_state's flags column by page.
    func stateFlags() -> [Int: String] {
        var out: [Int: String] = [:]
        for line in blockState().split(separator: "\n") {
            let f = line.split(separator: " ")
            out[Int(f[0])!] = String(f[2])
        }
        return out
    }
}

@Suite("idle marking and writeback")
struct WritebackTests {
    @Test("idle all marks stored pages but never same-filled ones; a read or write clears the mark")
    func idleAll() throws {
        let clock = TestClock()
        let dev = try makeDevice(1 << 20, clock: clock)
        try dev.write(writebackCorpus(), at: 0)
        try dev.markIdle(olderThan: nil)
        let flags = dev.stateFlags()
        #expect(flags.count == 64)
        #expect(flags[0] == "...i..")
        #expect(flags[32] == "..hi..")
        #expect(flags[40] == "s.....")
        let page = Buffer(4096)
        try dev.read(page, at: 3 * 4096)
        try dev.write(page, at: 5 * 4096)
        let after = dev.stateFlags()
        #expect(after[3] == "......" && after[5] == "......" && after[4] == "...i..")
        // block_state's line format: %12zd %12u.%06d flags.
        let line = dev.blockState(3..<4)
        #expect(line == "           3         1000.000000 ......\n")
    }

    @Test("idle SECONDS marks pages older than the age and clears younger ones (the kernel's cutoff arithmetic)")
    func idleByAge() throws {
        let clock = TestClock()
        let dev = try makeDevice(1 << 20, clock: clock)
        let data = writebackCorpus()
        try dev.write(data, at: 0, 0..<(8 * 4096))           // pages 0-7 at t=1000
        clock.advance(100)
        try dev.write(data, at: 8 * 4096, 0..<(8 * 4096))    // pages 8-15 at t=1100
        clock.advance(50)                                    // now 1150
        try dev.markIdle(olderThan: 100)                     // cutoff 1050: only 0-7
        var f = dev.stateFlags()
        #expect((0..<8).allSatisfy { f[$0] == "...i.." })
        #expect((8..<16).allSatisfy { f[$0] == "......" })
        try dev.markIdle(olderThan: 0)                       // cutoff 1150 > 1100: all
        f = dev.stateFlags()
        #expect((0..<16).allSatisfy { f[$0] == "...i.." })
        try dev.markIdle(olderThan: 500)                     // cutoff 650: none, and marks are cleared
        f = dev.stateFlags()
        #expect((0..<16).allSatisfy { f[$0] == "......" })
        try dev.markIdle(olderThan: 1150)                    // cutoff exactly 0: the kernel's "all"
        #expect(dev.stateFlags()[9] == "...i..")
        try dev.markIdle(olderThan: 4000)                    // a negative cutoff: none
        #expect(dev.stateFlags()[9] == "......")
    }

    @Test("writeback type=idle moves every idle page to the backing file: data intact, memory freed, bd_stat exact")
    func writebackIdle() throws {
        let dir = TempDir()
        let clock = TestClock()
        let dev = try makeDevice(1 << 20, clock: clock)
        try dev.setBackingDevice(dir.file("wb"))
        #expect(dev.backingDevicePath == dir.file("wb"))
        let data = writebackCorpus()
        try dev.write(data, at: 0)
        let before = dev.stats()
        try dev.markIdle(olderThan: nil)
        let r = try dev.writeback("type=idle")
        #expect(r.stop == nil)
        #expect(r.picked == 56 && r.written == 56 && r.failed == 0)
        let s = dev.stats()
        #expect(s.origDataSize == before.origDataSize)
        #expect(s.comprDataSize == 0)
        #expect(s.hugePages == 0 && s.samePages == 8)
        #expect(s.memUsedTotal < before.memUsedTotal)
        #expect(s.bdStatText == "      56        0       56\n")
        #expect(dev.census().writtenBackPages == 56)
        let back = Buffer(64 * 4096, fill: 0xee)
        try dev.read(back, at: 0)
        #expect(back.equals(data, 0..<data.count))
        #expect(dev.stats().bdReads == 56)
        let flags = dev.stateFlags()
        #expect(flags[0] == ".w....")      // written back, then read: no longer idle
        #expect(flags[40] == "s.....")
        // A second run finds nothing: written-back pages are never picked again.
        try dev.markIdle(olderThan: nil)
        #expect(try dev.writeback("idle").picked == 0)
    }

    @Test("overwrite, discard, write-zeroes and reset free backing blocks, and freed blocks are reused")
    func blocksAreFreed() throws {
        let dir = TempDir()
        let dev = try makeDevice(1 << 20, clock: TestClock())
        try dev.setBackingDevice(dir.file("wb"))
        let data = writebackCorpus()
        try dev.write(data, at: 0)
        _ = try dev.writeback("page_indexes=0-15")
        #expect(dev.stats().bdCount == 16)
        try dev.write(data, at: 0, (20 * 4096)..<(21 * 4096))        // overwrite page 0
        try dev.discard(offset: 4096, length: 4096)                   // page 1
        try dev.writeZeroes(offset: 2 * 4096, length: 4096)           // page 2
        try dev.writeZeroes(offset: 3 * 4096, length: 4096, mayTrim: false)
        #expect(dev.stats().bdCount == 12)
        let page = Buffer(4096, fill: 0xee)
        try dev.read(page, at: 0)
        #expect(page.equals(data, 0..<4096, otherOffset: 20 * 4096))
        try dev.read(page, at: 4096)
        #expect(page.isZero(0..<4096))
        // 4 blocks are free again: a 20-page run on a 1 MiB (256-block) file reuses them.
        _ = try dev.writeback("page_indexes=16-31")
        #expect(dev.stats().bdCount == 28)
        try dev.reset()
        #expect(dev.stats().bdCount == 0 && dev.census().writtenBackPages == 0)
        try dev.write(data, at: 0)
        #expect(try dev.writeback("page_indexes=0-63").written == 56)
    }

    @Test("writeback selects as the kernel does: types, page ranges, largest objects first")
    func selection() throws {
        let dir = TempDir()
        let dev = try makeDevice(1 << 20, clock: TestClock())
        try dev.setBackingDevice(dir.file("wb"))
        try dev.write(writebackCorpus(), at: 0)
        #expect(try dev.writeback("huge").written == 8)
        #expect((32..<40).allSatisfy { dev.stateFlags()[$0] == ".w...." })
        #expect(try dev.writeback("type=incompressible").picked == 0)   // recompression sets it; none here
        #expect(try dev.writeback("type=idle").picked == 0)             // nothing marked
        #expect(try dev.writeback("page_index=3 page_index=5 page_indexes=40-47").written == 2)
        #expect(dev.stats().bdCount == 10)
        // page_index then type: the range so far is scanned again with the type.
        try dev.markIdle(olderThan: nil)
        #expect(try dev.writeback("page_index=9 type=idle").written == 1)
        // type first: the whole device, and what follows is not read (the kernel stops there).
        #expect(try dev.writeback("type=idle page_index=0").written == 45)
    }

    @Test("bad writeback requests are refused with the reason, and change nothing")
    func badRequests() throws {
        let dev = try makeDevice(1 << 20, clock: TestClock())
        try dev.write(writebackCorpus(), at: 0)
        #expect(throws: ZramError.noBackingDevice) { try dev.writeback("type=idle") }
        for bad in ["", "type=cold", "bogus", "page_index=256", "page_index=-1", "page_indexes=5-4",
                    "page_indexes=3", "page_indexes=0-256", "colour=blue"] {
            #expect(throws: ZramError.self, "\(bad)") { try WritebackRequest.parse(bad, pageCount: 256) }
        }
        #expect(try WritebackRequest.parse("page_indexes=2-4", pageCount: 256).scans == [.init(mode: [], pages: 2..<5)])
        #expect(dev.stats().bdCount == 0)
    }

    @Test("writeback_limit: taken per page written, the run stops at 0 with the kernel's EIO")
    func limit() throws {
        let dir = TempDir()
        let dev = try makeDevice(1 << 20, clock: TestClock())
        try dev.setBackingDevice(dir.file("wb"))
        try dev.write(writebackCorpus(), at: 0)
        dev.setWritebackLimit(5)
        #expect(try dev.writeback("page_indexes=0-31").written == 32)   // limit off: no budget used
        #expect(dev.writebackLimit == 5)
        dev.setWritebackLimitEnabled(true)
        let r = try dev.writeback("page_indexes=48-63")
        #expect(r.written == 5 && r.stop == .limitReached && r.stop?.errno == EIO)
        #expect(dev.writebackLimit == 0)
        #expect(dev.stats().bdCount == 37)
        // Pages the run did not reach lost their pick: a later run takes them.
        dev.setWritebackLimit(100)
        #expect(try dev.writeback("page_indexes=48-63").written == 11)
        #expect(dev.writebackLimit == 89)
        #expect(throws: ZramError.self) { try dev.setWritebackBatchSize(0) }
        try dev.setWritebackBatchSize(3)
        #expect(dev.writebackBatchSize == 3)
    }

    @Test("zram's order: the largest objects first, and within a size bucket the last page scanned first")
    func order() throws {
        let dir = TempDir()
        let dev = try makeDevice(1 << 20, clock: TestClock())
        try dev.setBackingDevice(dir.file("wb"))
        let page = Buffer(4096)
        page.fillText(seed: 3)
        for p in 0..<8 { try dev.write(page, at: p * 4096) }      // eight equal objects, one bucket
        page.randomize(seed: 9)
        try dev.write(page, at: 9 * 4096)                         // one huge page, the largest bucket
        dev.setWritebackLimitEnabled(true)
        dev.setWritebackLimit(4)
        #expect(try dev.writeback("page_indexes=0-9").written == 4)
        let flags = dev.stateFlags()
        #expect([9, 7, 6, 5].allSatisfy { flags[$0]?.contains("w") == true })
        #expect((0..<5).allSatisfy { flags[$0]?.contains("w") == false })
    }

    @Test("a full backing file stops the run with ENOSPC; the pages it could not take stay in RAM, intact")
    func backingFull() throws {
        let dir = TempDir()
        let path = dir.file("small")
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        #expect(ftruncate(fd, 10 * 4096) == 0)
        close(fd)
        let dev = try makeDevice(1 << 20, clock: TestClock())
        try dev.setBackingDevice(path)
        let data = writebackCorpus()
        try dev.write(data, at: 0)
        dev.setWritebackLimitEnabled(true)
        dev.setWritebackLimit(100)
        let r = try dev.writeback("page_indexes=0-63")
        #expect(r.written == 10 && r.stop == .backingFull && r.stop?.errno == ENOSPC)
        #expect(dev.writebackLimit == 90)
        let back = Buffer(64 * 4096)
        try dev.read(back, at: 0)
        #expect(back.equals(data, 0..<data.count))
        #expect(dev.stats().bdCount == 10)
    }

    @Test("a backing file whose writes fail (a full tmpfs): pages stay in RAM, budget refunded, failures counted")
    func writeErrors() throws {
        let dir = TempDir()
        let mnt = dir.file("mnt")
        mkdir(mnt, 0o700)
        guard mount("tmpfs", mnt, "tmpfs", 0, "size=32k") == 0 else {
            Issue.record("mount tmpfs on \(mnt): errno \(errno) (the tests run as root)")
            return
        }
        defer { umount2(mnt, Int32(MNT_DETACH)) }
        let dev = try makeDevice(1 << 20, clock: TestClock())
        try dev.setBackingDevice(mnt + "/wb")          // sparse 1 MiB on a 32 KiB tmpfs
        let data = writebackCorpus()
        try dev.write(data, at: 0)
        dev.setWritebackLimitEnabled(true)
        dev.setWritebackLimit(64)
        let r = try dev.writeback("page_indexes=0-31")
        #expect(r.failed > 0 && r.written + r.failed == 32)
        #expect(r.stop == .writeError(ENOSPC))
        #expect(dev.writebackLimit == UInt64(64 - r.written))
        #expect(dev.stats().bdCount == UInt64(r.written))
        let back = Buffer(64 * 4096)
        try dev.read(back, at: 0)
        #expect(back.equals(data, 0..<data.count))
        dev.closeBackingDevice()
        #expect(access(mnt + "/wb", F_OK) != 0)        // created here, so removed again
    }

    @Test("compressed writeback stores the compressed object and reads decompress it", arguments: [CompressionAlgorithm.lz4, .zstd])
    func compressed(algorithm: CompressionAlgorithm) throws {
        let dir = TempDir()
        let dev = try makeDevice(1 << 20, clock: TestClock(), algorithm: algorithm)
        try dev.setCompressedWriteback(true)
        try dev.setBackingDevice(dir.file("wb"))
        let data = writebackCorpus()
        try dev.write(data, at: 0)
        #expect(try dev.writeback("page_indexes=0-63").written == 56)
        #expect(dev.stateFlags()[32] == ".wh...")    // the huge bit stays, for the raw read
        let back = Buffer(64 * 4096)
        try dev.read(back, at: 0)
        #expect(back.equals(data, 0..<data.count))
        #expect(throws: ZramError.busy) { try dev.setCompressedWriteback(false) }
        // A sub-page read of a written-back page, at an unaligned buffer.
        let part = Buffer(8192)
        try dev.read(into: part.base + 1, offset: 5 * 4096 + 100, length: 1000)
        #expect(memcmp(part.base + 1, data.base + 5 * 4096 + 100, 1000) == 0)
    }

    @Test("packed compressed writeback: objects share blocks, each block goes when its last page does")
    func packing() throws {
        let dir = TempDir()
        let dev = try makeDevice(1 << 20, clock: TestClock())
        try dev.setCompressedWriteback(true)
        try dev.setWritebackPacking(true)
        try dev.setBackingDevice(dir.file("wb"))
        let data = writebackCorpus()
        try dev.write(data, at: 0)
        let r = try dev.writeback("page_indexes=0-63")
        #expect(r.written == 56)
        let blocks = dev.census().backingBlocks
        // The 8 huge pages take a block each; the 48 text pages (small objects) share a few.
        print("packed: 56 pages in \(blocks) blocks")
        #expect(blocks > 8 && blocks <= 8 + 12, "\(blocks) blocks")
        #expect(dev.stats().bdCount == UInt64(blocks) && dev.stats().bdWrites == UInt64(blocks))
        let back = Buffer(64 * 4096)
        try dev.read(back, at: 0)
        #expect(back.equals(data, 0..<data.count))
        // Free the text pages one by one: blocks go only when all of their pages are gone.
        try dev.discard(offset: 0, length: 4096)
        #expect(dev.census().backingBlocks == blocks)
        try dev.discard(offset: 0, length: 32 * 4096)
        try dev.discard(offset: 48 * 4096, length: 16 * 4096)
        #expect(dev.census().backingBlocks == 8 && dev.stats().bdCount == 8)
        try dev.read(back, at: 32 * 4096, 0..<(8 * 4096))
        #expect(back.equals(data, 0..<(8 * 4096), otherOffset: 32 * 4096))
        #expect(throws: ZramError.busy) { try dev.setWritebackPacking(false) }
    }

    @Test("backing devices: missing directory, read-only, too small and in use are refused with the reason")
    func badBackingDevices() throws {
        let dir = TempDir()
        let dev = try makeDevice(1 << 20, clock: TestClock())
        let other = try makeDevice(1 << 20, clock: TestClock())
        func message(_ path: String, _ d: ZramDevice) -> String {
            do { try d.setBackingDevice(path); return "" } catch { return "\(error)" }
        }
        #expect(message(dir.file("no/such/dir/wb"), dev).contains("directory does not exist"))
        let empty = dir.file("empty")
        close(open(empty, O_RDWR | O_CREAT | O_CLOEXEC, 0o600))
        #expect(message(empty, dev).contains("too small"))
        #expect(message(dir.path, dev).contains("not a regular file or a block device"))
        try dev.setBackingDevice(dir.file("wb"))
        #expect(message(dir.file("wb"), other).contains("in use"))
        try dev.write(writebackCorpus(), at: 0)
        _ = try dev.writeback("page_index=0")
        #expect(throws: ZramError.busy) { try dev.setBackingDevice(dir.file("wb2")) }
        #expect(dev.backingDevicePath == dir.file("wb"))
    }

    @Test("readers, writers and discarders against a shadow copy while writeback runs again and again: nothing lost or torn",
          arguments: ["plain", "compressed", "packed"])
    func concurrentWriteback(mode: String) throws {
        let dir = TempDir()
        let pages = 512
        let dev = try makeDevice(pages * 4096, clock: TestClock())
        try dev.setCompressedWriteback(mode != "plain")
        try dev.setWritebackPacking(mode == "packed")
        try dev.setBackingDevice(dir.file("wb"))
        try dev.setWritebackBatchSize(8)
        /// Per page: its version, or -1 once discarded. Each page holds `page << 32 | version` in
        /// its first word (and a mix of words after it, so it compresses unlike its neighbours).
        final class Shadow: Sendable {
            let versions = Mutex([Int](repeating: 0, count: 512))
        }
        @Sendable func fill(_ b: Buffer, page: Int, version: Int) {
            let word = UInt64(page) << 32 | UInt64(version)
            for i in 0..<512 { b.base.storeBytes(of: i == 0 ? word : word &* UInt64(i % (3 + page % 5)), toByteOffset: i * 8, as: UInt64.self) }
        }
        let shadow = Shadow()
        let start = Buffer(4096)
        for p in 0..<pages { fill(start, page: p, version: 0); try dev.write(start, at: p * 4096) }
        let stop = Atomic<Bool>(false)
        let bad = Atomic<Int>(0)
        let written = Atomic<Int>(0)
        let workers = 3
        onThreads(workers + 1) { t in
            if t == workers {   // the writeback loop
                for _ in 0..<40 {
                    do {
                        try dev.markIdle(olderThan: nil)
                        written.add(try dev.writeback("page_indexes=0-\(pages - 1)").written, ordering: .relaxed)
                    } catch { bad.add(1, ordering: .relaxed) }
                }
                stop.store(true, ordering: .relaxed)
                return
            }
            let b = Buffer(4096)
            var x = UInt64(t + 1) &* 0x9e3779b97f4a7c15
            while !stop.load(ordering: .relaxed) {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17
                // Pages are owned by thread p % workers, so the shadow is exact.
                let p = Int(x % UInt64(pages / workers)) * workers + t
                switch x >> 60 {
                case 0...5:
                    do { try dev.read(b, at: p * 4096) } catch { bad.add(1, ordering: .relaxed); continue }
                    let v = shadow.versions.withLock { $0[p] }
                    let ok = v < 0 ? b.isZero(0..<4096) : b.base.load(as: UInt64.self) == UInt64(p) << 32 | UInt64(v)
                    if !ok { bad.add(1, ordering: .relaxed) }
                case 6...12:
                    let v = shadow.versions.withLock { $0[p] = max(0, $0[p]) + 1; return $0[p] }
                    fill(b, page: p, version: v)
                    do { try dev.write(b, at: p * 4096) } catch { bad.add(1, ordering: .relaxed) }
                default:
                    shadow.versions.withLock { $0[p] = -1 }
                    do { try dev.discard(offset: p * 4096, length: 4096) } catch { bad.add(1, ordering: .relaxed) }
                }
            }
        }
        #expect(bad.load(ordering: .relaxed) == 0)
        #expect(written.load(ordering: .relaxed) > 0)
        let c = dev.census()
        let s = dev.stats()
        #expect(UInt64(c.storedPages) == s.pagesStored)
        #expect(UInt64(c.backingBlocks) == s.bdCount)
        #expect(UInt64(c.comprBytes) == s.comprDataSize)
        let b = Buffer(4096)
        let final = shadow.versions.withLock { $0 }
        for p in 0..<(pages / workers * workers) {
            try dev.read(b, at: p * 4096)
            if final[p] < 0 { #expect(b.isZero(0..<4096)) } else {
                #expect(b.base.load(as: UInt64.self) == UInt64(p) << 32 | UInt64(final[p]))
            }
        }
    }
}
