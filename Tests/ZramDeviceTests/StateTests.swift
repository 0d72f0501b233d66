import Codec
import Glibc
import Posix
import Testing
import TestSupport
@testable import ZramDevice

/// Issue 15, phase 1: a device's state lives in memfds, and a second device attached to them
/// (fds passed explicitly, as the hand-over will pass them to a new process) serves the same data.
@Suite("ZramDevice state hand-over") struct StateTests {
    /// Writes a mix the pool stores in every way: compressible text, incompressible (huge) pages,
    /// same-filled and zero pages, sub-page writes; then discards and compacts, so locations move.
    func populatedDevice(_ size: Int = 16 << 20) throws -> (ZramDevice, Buffer) {
        let dev = try ZramDevice(ZramConfig(name: "state", diskSize: size, algorithm: .lz4))
        let page = Buffer(4096)
        let pages = size / 4096
        for i in 0..<pages {
            switch i % 6 {
            case 0, 1: page.fillText(seed: i)
            case 2: page.randomize(seed: UInt64(i))
            case 3: memset(page.base, Int32(i & 0xff), 4096)
            case 4: page.randomize(seed: UInt64(i)); memset(page.base + 512 + i % 2000, 0, 200 + i % 1300)
            default: continue        // never written
            }
            try dev.write(page, at: i * 4096)
        }
        let small = Buffer(700)
        small.randomize(seed: 99)
        for i in stride(from: 7, to: pages, by: 29) { try dev.write(small, at: i * 4096 + 1000) }
        for i in stride(from: 1, to: pages, by: 5) { try dev.discard(offset: i * 4096, length: 4096) }
        try dev.compact()
        let shadow = Buffer(size)
        try dev.read(shadow, at: 0)
        return (dev, shadow)
    }

    /// The acceptance test: every page reads back from the successor, and mm_stat, io_stat,
    /// bd_stat, pages_compacted and mem_used_max carry over unchanged.
    @Test func attachedDeviceReadsBackEveryPage() throws {
        let (dev, shadow) = try populatedDevice()
        #expect(dev.backing == .memfd)
        let before = dev.stats()
        let fds = try dev.exportState()
        let successor = try ZramDevice(attaching: fds)
        #expect(successor.diskSize == dev.diskSize)
        #expect(successor.name == dev.name)
        let got = Buffer(dev.diskSize)
        try successor.read(got, at: 0)
        for i in 0..<(dev.diskSize / 4096) {
            #expect(got.equals(shadow, i * 4096..<(i + 1) * 4096, otherOffset: i * 4096), "page \(i) differs")
        }
        let after = successor.stats()
        #expect(after.mmStatText == before.mmStatText)
        #expect(after.ioStatText == before.ioStatText)
        #expect(after.bdStatText == before.bdStatText)
        #expect(successor.census() == dev.census())
        // The successor serves new I/O: overwrite, free, compact, read back.
        let page = Buffer(4096)
        for i in stride(from: 0, to: 1024, by: 3) {
            page.randomize(seed: UInt64(50_000 + i))
            try successor.write(page, at: i * 4096)
            memcpy(shadow.base + i * 4096, page.base, 4096)
        }
        try successor.discard(offset: 2000 * 4096, length: 100 * 4096)
        memset(shadow.base + 2000 * 4096, 0, 100 * 4096)
        try successor.compact()
        try successor.read(got, at: 0)
        #expect(memcmp(got.base, shadow.base, dev.diskSize) == 0)
        // And a second hand-over, from the successor, still carries everything.
        let third = try ZramDevice(attaching: try successor.exportState())
        try third.read(got, at: 0)
        #expect(memcmp(got.base, shadow.base, dev.diskSize) == 0)
        #expect(third.stats().mmStatText == successor.stats().mmStatText)
    }

    /// Recompressed pages record their priority: the successor has the same secondary
    /// algorithms at the same priorities, reads them back, and keeps the busy rule.
    @Test func recompressionAlgorithmsCarryOver() throws {
        let (dev, shadow) = try populatedDevice()
        try dev.setRecompressionAlgorithm(.zstd, level: 5, priority: 1)
        try dev.setRecompressionAlgorithm(.deflate, priority: 3)
        try dev.markIdle(olderThan: nil)
        let report = try dev.recompress(try RecompressRequest.parse("type=idle"))
        #expect(report.recompressed > 0)
        let successor = try ZramDevice(attaching: try dev.exportState())
        #expect(successor.recompAlgorithmText == dev.recompAlgorithmText)
        #expect(successor.recompressionAlgorithms.map { "\($0.priority) \($0.algorithm) \($0.level)" } == ["1 zstd 5", "3 deflate 6"])
        let got = Buffer(dev.diskSize)
        try successor.read(got, at: 0)
        #expect(memcmp(got.base, shadow.base, dev.diskSize) == 0)
        #expect(successor.stats().mmStatText == dev.stats().mmStatText)
        #expect(throws: ZramError.busy) { try successor.setRecompressionAlgorithm(.lz4, priority: 1) }
    }

    /// A device with pages on its backing file: the file goes with the state as an fd, the
    /// successor rebuilds the bitmap from the written-back slots, reads every page (from RAM
    /// and from the file), keeps bd_stat, and writes back on into free blocks only. A crash
    /// recovery rebuilds it the same way.
    @Test func backingDeviceCarriesOver() throws {
        let dir = TempDir()
        defer { dir.remove() }
        let (dev, shadow) = try populatedDevice(4 << 20)
        try dev.setBackingDevice(dir.file("wb"))
        try dev.markIdle(olderThan: nil)
        let first = try dev.writeback(WritebackRequest.parse("type=idle", pageCount: 1024))
        #expect(first.written > 100)
        let before = dev.stats()
        let successor = try ZramDevice(attaching: try dev.exportState())
        #expect(successor.stats().bdStatText == before.bdStatText)
        #expect(successor.stats().mmStatText == before.mmStatText)
        #expect(successor.backingDevicePath == dir.file("wb"))
        let got = Buffer(dev.diskSize)
        try successor.read(got, at: 0)
        #expect(memcmp(got.base, shadow.base, dev.diskSize) == 0)
        // New writebacks take free blocks: nothing written back before is overwritten.
        let page = Buffer(4096)
        for i in stride(from: 2, to: 1024, by: 7) {
            page.fillText(seed: 70_000 + i)
            try successor.write(page, at: i * 4096)
            memcpy(shadow.base + i * 4096, page.base, 4096)
        }
        try successor.markIdle(olderThan: nil)
        _ = try successor.writeback(WritebackRequest.parse("type=idle", pageCount: 1024))
        try successor.read(got, at: 0)
        #expect(memcmp(got.base, shadow.base, dev.diskSize) == 0)
        #expect(successor.census().backingBlocks == Int(successor.stats().bdStatText.split(separator: " ").compactMap { Int($0.filter(\.isNumber)) }.first ?? -1))
        // After a crash the same: the bitmap and bd_count are rebuilt from the slots.
        let recovered = try ZramDevice(recovering: try successor.exportState())
        try recovered.read(got, at: 0)
        #expect(memcmp(got.base, shadow.base, dev.diskSize) == 0)
        #expect(recovered.stats().bdStatText.split(separator: " ").first == successor.stats().bdStatText.split(separator: " ").first)
        // A state whose backing file was not handed over is refused, with the reason.
        var missing = try successor.exportState()
        close(missing.backing)
        missing.backing = -1
        #expect {
            _ = try ZramDevice(attaching: missing)
        } throws: { e in
            guard case ZramError.incompatibleState(let m) = e else { return false }
            return m.contains("its file was not handed over")
        }
    }

    /// algorithm_params beyond the level go with the state: a primary lz4 with a dictionary, a
    /// secondary zstd with another dictionary and zstd.compact, a deflate secondary with
    /// deflate.winbits. The successor gets the dictionaries' bytes (not their paths: one was
    /// never saved), reads every page, and compresses on with them; a dictionary that was not
    /// handed over, or other bytes, refuse the state.
    @Test func parametersAndDictionariesCarryOver() throws {
        let dir = TempDir()
        defer { dir.remove() }
        let text = Buffer(32 << 10)
        text.fillText(seed: 5)
        let zstdDictionary = try CompressionDictionary(contents: Array(UnsafeRawBufferPointer(start: text.base, count: 32 << 10)),
                                                       path: dir.file("zstd.dict"))
        let lz4Dictionary = try CompressionDictionary(contents: Array(UnsafeRawBufferPointer(start: text.base + 100, count: 16 << 10)), path: nil)
        var config = ZramConfig(name: "params", diskSize: 4 << 20, algorithm: .lz4)
        config.dictionary = lz4Dictionary
        let dev = try ZramDevice(config)
        try dev.setRecompressionAlgorithm(.zstd, parameters: AlgorithmParameters(dictionary: zstdDictionary, compactFrames: true), priority: 1)
        try dev.setRecompressionAlgorithm(.deflate, parameters: AlgorithmParameters(windowBits: -12), priority: 2)
        let page = Buffer(4096)
        let shadow = Buffer(dev.diskSize)
        for i in 0..<(dev.diskSize / 4096) {
            if i % 3 == 0 { page.randomize(seed: UInt64(i)) } else { page.fillText(seed: 1000 + i) }
            try dev.write(page, at: i * 4096)
            memcpy(shadow.base + i * 4096, page.base, 4096)
        }
        try dev.markIdle(olderThan: nil)
        #expect(try dev.recompress(try RecompressRequest.parse("type=idle")).recompressed > 0)
        // The last page goes in after the recompression: it stays with the primary's dictionary.
        page.fillText(seed: 77)
        try dev.write(page, at: dev.diskSize - 4096)
        memcpy(shadow.base + dev.diskSize - 4096, page.base, 4096)
        let before = dev.stats()
        let fds = try dev.exportState()
        defer { fds.closeAll() }
        #expect(fds.dictionaries.map { $0 >= 0 } == [true, true, false, false])
        let successor = try ZramDevice(attaching: try #require(fds.duplicates()))
        for priority in 0..<3 {
            let (a, b) = (successor.parameters(priority: priority), dev.parameters(priority: priority))
            #expect(a?.dictionary == b?.dictionary && a?.windowBits == b?.windowBits && a?.compactFrames == b?.compactFrames, "priority \(priority)")
        }
        #expect(successor.parameters(priority: 1)?.dictionary?.path == dir.file("zstd.dict"))
        #expect(successor.parameters(priority: 0)?.dictionary?.path == nil)
        #expect(successor.stats().mmStatText == before.mmStatText)
        let got = Buffer(dev.diskSize)
        try successor.read(got, at: 0)
        #expect(memcmp(got.base, shadow.base, dev.diskSize) == 0)
        // The same page written again compresses to the same size with the inherited dictionary.
        try successor.write(page, at: dev.diskSize - 4096)
        #expect(successor.stats().mmStatText == before.mmStatText)
        // The busy rule holds on the successor too: recompressed pages use zstd's dictionary.
        #expect(throws: ZramError.busy) { try successor.setRecompressionAlgorithm(.zstd, priority: 1) }
        // After a crash, the same.
        let recovered = try ZramDevice(recovering: try #require(fds.duplicates()))
        try recovered.read(got, at: 0)
        #expect(memcmp(got.base, shadow.base, dev.diskSize) == 0)
        // A dictionary missing or with other bytes refuses the state.
        var missing = try #require(fds.duplicates())
        close(missing.dictionaries[1])
        missing.dictionaries[1] = -1
        #expect {
            _ = try ZramDevice(attaching: missing)
        } throws: { e in
            guard case ZramError.incompatibleState(let m) = e else { return false }
            return m.contains("zstd at priority 1 compressed with a dictionary, and it was not handed over")
        }
        var other = try #require(fds.duplicates())
        close(other.dictionaries[0])
        other.dictionaries[0] = try SharedMemory.file(name: "other", holding: Array(repeating: 7, count: 16 << 10))
        #expect {
            _ = try ZramDevice(attaching: other)
        } throws: { e in
            guard case ZramError.incompatibleState(let m) = e else { return false }
            return m.contains("lz4's handed-over dictionary is not the one its pages were compressed with")
        }
    }

    /// After a crash (ZramDevice(recovering:)): what a SIGKILL can leave half-done is repaired,
    /// and what it cannot explain is refused. The slot table is edited through its memfd the
    /// way a killed request would have left it.
    @Test func recoveryRepairsWhatACrashLeavesAndRefusesTheRest() throws {
        let (dev, shadow) = try populatedDevice(4 << 20)
        let fds = try dev.exportState()
        tamper(fds.header, at: 128, 0)     // the header's counters are stale after a crash
        func word(_ i: Int, _ k: Int) -> UInt64 {
            var w: UInt64 = 0
            #expect(pread(fds.slots, &w, 8, off_t(i * 16 + k * 8)) == 8)
            return w
        }
        func set(_ i: Int, _ k: Int, _ v: UInt64) {
            var w = v
            #expect(pwrite(fds.slots, &w, 8, off_t(i * 16 + k * 8)) == 8)
        }
        let pages = dev.diskSize / 4096
        let objects = (0..<pages).filter { SlotFlags(rawValue: word($0, 1)).objectSize > 0 && !SlotFlags(rawValue: word($0, 1)).isSame }
        let same = (0..<pages).filter { SlotFlags(rawValue: word($0, 1)).isSame && word($0, 0) != 0 }
        try #require(objects.count > 4 && !same.isEmpty)
        let (kept, cut, leaked, sameCut) = (objects[0], objects[1], objects[2], same[0])
        set(kept, 1, word(kept, 1) | SlotFlags.lockBit)          // a read (or a finished write) in flight: whole
        set(cut, 0, 0x7777_0000_0000_0001)                        // a write between freeing and installing
        set(cut, 1, word(cut, 1) | SlotFlags.lockBit)
        set(leaked, 0, 0); set(leaked, 1, 0)                      // as if its object was never installed
        set(sameCut, 0, word(objects[3], 0))                      // a write that stored a handle over the fill word
        set(sameCut, 1, word(sameCut, 1) | SlotFlags.lockBit)
        let r = try ZramDevice(recovering: fds)
        #expect(r.recovery?.droppedPages == [cut, sameCut].sorted())
        #expect(r.recovery?.freedObjects == 2)   // the leaked one, and the object `cut` no longer names
        let got = Buffer(dev.diskSize)
        try r.read(got, at: 0)
        for i in 0..<pages {
            let zero = [cut, sameCut, leaked].contains(i)
            let ok: Bool
            if zero {
                ok = (0..<4096).allSatisfy { got.base.load(fromByteOffset: i * 4096 + $0, as: UInt8.self) == 0 }
            } else {
                ok = got.equals(shadow, i * 4096..<(i + 1) * 4096, otherOffset: i * 4096)
            }
            #expect(ok, "page \(i)")
        }
        // The counters are recounted from the slots, and the pool holds only what they name.
        let c = r.census()
        let mm = r.stats().mmStatText.split(separator: " ").compactMap { Int($0.filter(\.isNumber)) }
        #expect(mm.prefix(2) == [c.storedPages * 4096, c.comprBytes])
        #expect(r.storage.pool.liveHandles().count == c.storedPages - c.samePages)
        // It serves on: a write over the dropped page, a compaction, a clean hand-over.
        let page = Buffer(4096)
        page.fillText(seed: 5)
        try r.write(page, at: cut * 4096)
        try r.compact()
        _ = try ZramDevice(attaching: try r.exportState())

        // An unlocked slot naming no object is no crash's doing: refused, loudly.
        let (other, _) = try populatedDevice(1 << 20)
        let bad = try other.exportState()
        func flags(_ i: Int) -> SlotFlags {
            var w: UInt64 = 0
            _ = pread(bad.slots, &w, 8, off_t(i * 16 + 8))
            return SlotFlags(rawValue: w)
        }
        let victim = (0..<256).first { flags($0).objectSize > 0 && !flags($0).isSame }
        var garbage: UInt64 = 0x7777_0000_0000_0001
        #expect(pwrite(bad.slots, &garbage, 8, off_t((victim ?? 0) * 16)) == 8)
        do {
            _ = try ZramDevice(recovering: bad)
            Issue.record("recovered a torn state")
        } catch {
            guard case .incompatibleState(let m) = error else { Issue.record("\(error)"); return }
            #expect(m.contains("names no live") && m.contains("refusing to serve wrong data"), "\(m)")
        }
    }

    /// Rewrites one word of an exported header, keeping the checksum right unless told not to.
    func tamper(_ fd: Int32, at offset: Int, _ value: UInt64, fixChecksum: Bool = true) {
        let p = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 8)
        defer { p.deallocate() }
        #expect(pread(fd, p, 4096, 0) == 4096)
        p.storeBytes(of: value.littleEndian, toByteOffset: offset, as: UInt64.self)
        if fixChecksum { p.storeBytes(of: DeviceStateHeader.checksum(p).littleEndian, toByteOffset: 104, as: UInt64.self) }
        #expect(pwrite(fd, p, 4096, 0) == 4096)
    }

    func refusal(_ dev: ZramDevice, at offset: Int, _ value: UInt64, fixChecksum: Bool = true,
                 headerValid: Bool = false) throws -> String {
        let fds = try dev.exportState()
        tamper(fds.header, at: offset, value, fixChecksum: fixChecksum)
        if !headerValid { #expect(throws: ZramError.self) { try DeviceStateHeader.validate(fd: fds.header) } }
        do {
            _ = try ZramDevice(attaching: fds)
            Issue.record("attached to a tampered state")
            return ""
        } catch {
            guard case .incompatibleState(let message) = error else { Issue.record("\(error)"); return "" }
            return message
        }
    }

    @Test func validateRefusesWrongMagicVersionGeometryWithAClearMessage() throws {
        let (dev, shadow) = try populatedDevice(1 << 20)
        #expect(try refusal(dev, at: 0, 0x1234).contains("not a zramnbd device state"))
        #expect(try refusal(dev, at: 8, 2).contains("layout version 2; this zramnbd reads version 1 only"))
        #expect(try refusal(dev, at: 24, 16384).contains("16384-byte pages"))
        #expect(try refusal(dev, at: 32, 3).contains("chain size 3"))
        #expect(try refusal(dev, at: 48, 1000).contains("do not make"))
        #expect(try refusal(dev, at: 56, 77).contains("pool of 77 pages"))
        #expect(try refusal(dev, at: 96, 30).contains("newer version"))
        #expect(try refusal(dev, at: 40, 4096, fixChecksum: false).contains("checksum mismatch"))
        // Stale counters (as if a write happened after the export) fail the slot census.
        #expect(try refusal(dev, at: 128, 1, headerValid: true).contains("slots and counters disagree"))
        // The refused successors changed nothing: the device still serves the same data.
        let got = Buffer(1 << 20)
        try dev.read(got, at: 0)
        #expect(memcmp(got.base, shadow.base, 1 << 20) == 0)
        let ok = try ZramDevice(attaching: try dev.exportState())
        try ok.read(got, at: 0)
        #expect(memcmp(got.base, shadow.base, 1 << 20) == 0)
    }

    @Test func attachRefusesASlotNamingNoObject() throws {
        let (dev, _) = try populatedDevice(1 << 20)
        let fds = try dev.exportState()
        // Slot 0 holds a text page (a pool object): point its handle elsewhere.
        var bogus: UInt64 = 0x7777
        #expect(pwrite(fds.slots, &bogus, 8, 0) == 8)
        #expect {
            _ = try ZramDevice(attaching: fds)
        } throws: { error in
            guard case ZramError.incompatibleState(let m) = error else { return false }
            return m.contains("slot 0 names no live")
        }
    }

    @Test func exportRefusesAnonymousMemory() throws {
        var config = ZramConfig(name: "anon", diskSize: 1 << 20)
        config.backing = .anonymous
        let dev = try ZramDevice(config)
        #expect(dev.storageForTesting.pool.arenaFD == nil)
        #expect { _ = try dev.exportState() } throws: { error in
            guard case ZramError.incompatibleState(let m) = error else { return false }
            return m.contains("anonymous")
        }
    }

    /// A read fault on a shmem hole allocates a page: walks over a sparse device (discard,
    /// write-zeroes, block status, census, idle marking, block_state) must skip the slot table's
    /// holes, or a 4 GiB device would commit its whole 16 MiB table.
    @Test func walksOverASparseDeviceLeaveTheSlotTableSparse() throws {
        let size = 4 << 30
        let dev = try makeDevice(size)
        let table = try #require(dev.slots.shared)
        let text = Buffer(4096); text.fillText(seed: 3)
        try dev.write(text, at: 0)
        try dev.write(text, at: size - 4096)
        _ = try dev.runs(0, size)
        _ = dev.census()
        try dev.markIdle(olderThan: nil)
        #expect(dev.blockState().split(separator: "\n").count == 2)
        try dev.discard(offset: 4096, length: size - 8192)
        try dev.writeZeroes(offset: 4096, length: size - 8192)
        #expect(table.allocatedBytes <= 2 * 4096, "slot table memfd holds \(table.allocatedBytes) B")
        try dev.discard(offset: 0, length: size)
        #expect(try dev.runs(0, size).map(\.1) == [.unallocated])
    }

    /// reset() on a memfd device punches the slot table and the freed pool pages out of their
    /// files: the memory really goes back.
    @Test func resetEmptiesTheMemfds() throws {
        let (dev, _) = try populatedDevice(4 << 20)
        let slotsFD = try #require(dev.slots.shared)
        #expect(slotsFD.allocatedBytes > 0)
        try dev.reset()
        #expect(slotsFD.allocatedBytes == 0)
    }
}
