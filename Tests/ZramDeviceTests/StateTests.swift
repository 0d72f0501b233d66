import Codec
import Glibc
import Testing
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
