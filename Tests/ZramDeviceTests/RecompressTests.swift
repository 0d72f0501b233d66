import Codec
import Glibc
import Testing
import TestSupport
@testable import ZramDevice

extension ZramDevice {
    func recompress(_ text: String) throws -> RecompressReport { try recompress(RecompressRequest.parse(text)) }
}

@Suite("recompression: secondary algorithms by priority, zram's selection rules")
struct RecompressTests {
    /// lz4 primary with zstd at priority 1, holding the writeback corpus (text, random, same-filled).
    static func device(_ clock: TestClock = TestClock()) throws -> (ZramDevice, Buffer) {
        let dev = try makeDevice(1 << 20, clock: clock)
        try dev.setRecompressionAlgorithm(.zstd, priority: 1)
        let data = writebackCorpus()
        try dev.write(data, at: 0)
        return (dev, data)
    }

    static func readsBack(_ dev: ZramDevice, _ data: Buffer) throws -> Bool {
        let back = Buffer(data.count)
        try dev.read(back, at: 0)
        return back.equals(data, 0..<data.count)
    }

    @Test("text pages shrink into smaller classes with zstd; random ones become incompressible; every page reads back")
    func shrinksAndReadsBack() throws {
        let (dev, data) = try Self.device()
        let before = dev.stats()
        let r = try dev.recompress("")
        // 48 text pages and 8 random (huge) ones are candidates; same-filled pages are not.
        #expect(r.picked == 56 && r.tried == 56)
        #expect(r.recompressed == 48 && r.incompressible == 8)
        let after = dev.stats()
        #expect(Int(before.comprDataSize - after.comprDataSize) == r.bytesSaved && r.bytesSaved > 0)
        #expect(after.origDataSize == before.origDataSize && after.hugePages == 8 && after.samePages == 8)
        #expect(after.recompressRuns == 1 && after.recompressedPages == 48 && Int(after.recompressBytesSaved) == r.bytesSaved)
        let census = dev.census()
        #expect(census.comprBytes == Int(after.comprDataSize) && census.storedPages == 64)
        let flags = dev.stateFlags()
        #expect(flags[0] == "....r." && flags[32] == "..h..n" && flags[40] == "s.....")
        #expect(try Self.readsBack(dev, data))
        // Nothing is left to try: recompressed pages are at the last priority, the rest incompressible.
        let again = try dev.recompress("")
        #expect(again.picked == 0 && again.recompressed == 0)
        // Compaction moves recompressed objects like any other.
        _ = try dev.compact()
        #expect(try Self.readsBack(dev, data))
        #expect(dev.recompAlgorithmText == "#1: lzo-rle lzo lz4 lz4hc [zstd] deflate \n")
    }

    @Test("type=idle takes only idle pages and clears their mark; type=huge only huge ones")
    func types() throws {
        let clock = TestClock()
        let (dev, data) = try Self.device(clock)
        try dev.markIdle(olderThan: nil)
        let page = Buffer(4096)
        try dev.read(page, at: 0)                 // page 0 is no longer idle
        let idle = try dev.recompress("type=idle")
        #expect(idle.picked == 55)
        #expect(dev.stateFlags()[0] == "......" && dev.stateFlags()[1] == "....r.")
        let huge = try dev.recompress("type=huge")
        #expect(huge.picked == 0)                 // the random pages went incompressible in the idle run
        #expect(try Self.readsBack(dev, data))
    }

    @Test("threshold leaves small objects alone and demands results below it; max_pages counts attempts")
    func thresholdAndMaxPages() throws {
        let (dev, data) = try Self.device()
        let limited = try dev.recompress("max_pages=5")
        // Largest first: the five attempts went to huge (random) pages, which stay incompressible.
        #expect(limited.tried == 5 && limited.picked == 56 && limited.incompressible == 5)
        // Objects of 3000 bytes and more are only the huge ones: the three left cannot get under 3000.
        let big = try dev.recompress("threshold=3000")
        #expect(big.recompressed == 0 && big.tried == 3)
        #expect(try Self.readsBack(dev, data))
        #expect(throws: ZramError.self) { _ = try dev.recompress("threshold=\(dev.storageForTesting.pool.hugeClassSize)") }
    }

    @Test("refused: no secondary algorithm, an unknown algo or priority, a bad key; a priority in use cannot change")
    func refusals() throws {
        let plain = try makeDevice(1 << 20, clock: TestClock())
        try plain.write(writebackCorpus(), at: 0)
        #expect(throws: ZramError.self) { _ = try plain.recompress("") }
        let (dev, data) = try Self.device()
        #expect(throws: ZramError.self) { _ = try dev.recompress("algo=lz4") }
        #expect(throws: ZramError.self) { _ = try dev.recompress("priority=2") }
        #expect(throws: ZramError.self) { _ = try dev.recompress("type=tiny") }
        #expect(throws: ZramError.self) { _ = try dev.recompress("bogus=1") }
        #expect(throws: ZramError.self) { try dev.setRecompressionAlgorithm(.zstd, priority: 4) }
        _ = try dev.recompress("algo=zstd")
        #expect(throws: ZramError.busy) { try dev.setRecompressionAlgorithm(.lz4, priority: 1) }
        try dev.setRecompressionAlgorithm(.lz4, priority: 2)   // a new priority is fine
        #expect(try Self.readsBack(dev, data))
        try dev.reset()
        try dev.setRecompressionAlgorithm(.lz4, priority: 1)   // nothing stored depends on it now
    }

    @Test("sub-page writes and reads of recompressed pages, and compressed writeback of them, use the right algorithm")
    func partialIOAndWriteback() throws {
        let dir = TempDir()
        defer { dir.remove() }
        let (dev, data) = try Self.device()
        _ = try dev.recompress("")
        let patch = Buffer(100, fill: 0x5a)
        try dev.write(patch, at: 2 * 4096 + 10)
        memset(data.base + 2 * 4096 + 10, 0x5a, 100)
        let part = Buffer(300)
        try dev.read(part, at: 3 * 4096 + 7)
        #expect(part.equals(data, 0..<300, otherOffset: 3 * 4096 + 7))
        try dev.setCompressedWriteback(true)
        try dev.setBackingDevice(dir.file("backing"))
        let wb = try dev.writeback("type=incompressible")
        #expect(wb.written == 8)                            // recompress flagged the random pages
        _ = try dev.writeback("page_indexes=0-31")
        #expect(try Self.readsBack(dev, data))
        dev.closeBackingDevice()
    }
}

@Suite("dictionaries on a device: recompression with one, trained from the device's own pages")
struct DeviceDictionaryTests {
    @Test("a trained dictionary recompresses smaller than plain zstd, reads back, and cannot change under its pages")
    func trainedDictionary() throws {
        let (plain, data) = try RecompressTests.device()
        _ = try plain.recompress("")
        let (dev, _) = try RecompressTests.device()
        let samples = try dev.samplePages(1000)
        #expect(samples.count == 56 * 4096, "the 48 text and 8 random pages; not the same-filled ones")
        let dict = try CompressionDictionary(contents: try DictionaryTrainer.train(samples: samples, sampleSize: 4096, size: 4096), path: nil)
        try dev.setRecompressionAlgorithm(.zstd, parameters: AlgorithmParameters(dictionary: dict), priority: 1)
        #expect(dev.parameters(priority: 1)?.dictionary == dict)
        let r = try dev.recompress("")
        #expect(r.recompressed == 48)
        #expect(dev.stats().comprDataSize < plain.stats().comprDataSize)
        #expect(try RecompressTests.readsBack(dev, data))
        // Another dictionary, or none, would misread the pages recompressed with this one.
        let other = try CompressionDictionary(contents: Array(repeating: 0x41, count: 4096), path: nil)
        #expect(throws: ZramError.busy) { try dev.setRecompressionAlgorithm(.zstd, parameters: AlgorithmParameters(dictionary: other), priority: 1) }
        #expect(throws: ZramError.busy) { try dev.setRecompressionAlgorithm(.zstd, priority: 1) }
        #expect(dev.parameters(priority: 1)?.dictionary == dict)
        _ = try dev.compact()
        #expect(try RecompressTests.readsBack(dev, data))
    }

    @Test("the primary with a dictionary or deflate.winbits: pages read back, also from a successor the state went to")
    func primaryParameters() throws {
        let data = writebackCorpus()
        let dict = try CompressionDictionary(contents: Array(repeating: 0x41, count: 1000), path: nil)
        for (a, p) in [(CompressionAlgorithm.zstd, AlgorithmParameters(dictionary: dict)), (.lz4, AlgorithmParameters(dictionary: dict)),
                       (.lz4hc, AlgorithmParameters(dictionary: dict)), (.deflate, AlgorithmParameters(windowBits: -15))] {
            let dev = try makeDevice(1 << 20, clock: TestClock())
            try dev.setAlgorithm(a, parameters: p)
            try dev.write(data, at: 0)
            let back = Buffer(data.count)
            try dev.read(back, at: 0)
            #expect(back.equals(data, 0..<data.count), "\(a)")
            #expect(throws: ZramError.busy) { try dev.setAlgorithm(a) }
            let successor = try ZramDevice(attaching: try dev.exportState())
            let inherited = Buffer(data.count)
            try successor.read(inherited, at: 0)
            #expect(inherited.equals(data, 0..<data.count), "\(a) after the hand-over")
            #expect(successor.parameters(priority: 0)?.dictionary == p.dictionary && successor.parameters(priority: 0)?.windowBits == p.windowBits)
        }
    }
}
