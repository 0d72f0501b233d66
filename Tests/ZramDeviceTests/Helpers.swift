import Codec
import Glibc
@testable import ZramDevice

/// A page-aligned byte buffer owned by one test.
final class Buffer {
    let base: UnsafeMutableRawPointer
    let count: Int
    init(_ count: Int, fill: UInt8 = 0) {
        self.count = count
        base = .allocate(byteCount: max(count, 1), alignment: 4096)
        memset(base, Int32(fill), count)
    }
    deinit { base.deallocate() }
    subscript(i: Int) -> UInt8 {
        get { base.load(fromByteOffset: i, as: UInt8.self) }
        set { base.storeBytes(of: newValue, toByteOffset: i, as: UInt8.self) }
    }
    /// Deterministic pseudo-random bytes (xorshift64).
    func randomize(seed: UInt64, range: Range<Int>? = nil) {
        var x = seed | 1
        for i in range ?? 0..<count {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17
            self[i] = UInt8(truncatingIfNeeded: x >> 24)
        }
    }
    /// Text-like, compressible bytes.
    func fillText(seed: Int, range: Range<Int>? = nil) {
        let words = ["zram ", "page ", "store ", "compress ", "the ", "slot ", "handle ", "pool\n"]
        let bytes = words.map { Array($0.utf8) }
        var i = (range ?? 0..<count).lowerBound
        let end = (range ?? 0..<count).upperBound
        var k = UInt(bitPattern: seed)
        while i < end {
            for b in bytes[Int(k % UInt(bytes.count))] where i < end { self[i] = b; i += 1 }
            k = k &* 31 &+ 7
        }
    }
    func equals(_ other: Buffer, _ range: Range<Int>, otherOffset: Int = 0) -> Bool {
        memcmp(base + range.lowerBound, other.base + otherOffset, range.count) == 0
    }
    func isZero(_ range: Range<Int>) -> Bool {
        for i in range where self[i] != 0 { return false }
        return true
    }
}

func makeDevice(_ size: Int = 4 << 20, algorithm: CompressionAlgorithm = .lz4,
                memLimit: Int = 0) throws -> ZramDevice {
    try ZramDevice(ZramConfig(name: "test", diskSize: size, algorithm: algorithm, memLimit: memLimit))
}

extension ZramDevice {
    func write(_ b: Buffer, at offset: Int, _ range: Range<Int>? = nil) throws(ZramError) {
        let r = range ?? 0..<b.count
        try write(from: b.base + r.lowerBound, offset: offset, length: r.count)
    }
    func read(_ b: Buffer, at offset: Int, _ range: Range<Int>? = nil) throws(ZramError) {
        let r = range ?? 0..<b.count
        try read(into: b.base + r.lowerBound, offset: offset, length: r.count)
    }
    /// (length, state) runs of the range.
    func runs(_ offset: Int, _ length: Int) throws -> [(Int, PageState)] {
        var out: [(Int, PageState)] = []
        try pageStates(offset: offset, length: length) { out.append(($0, $1)); return true }
        return out
    }
}

/// Resident set size of this process (statm field 2).
func residentBytes() -> Int {
    let fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return 0 }
    defer { close(fd) }
    var buf = [UInt8](repeating: 0, count: 256)
    let n = buf.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
    let fields = String(decoding: buf[..<max(n, 0)], as: UTF8.self).split(separator: " ")
    return fields.count > 1 ? (Int(fields[1]) ?? 0) * 4096 : 0
}

/// Pages of [base, base + count pages) backed by private memory, not the shared zero page, from
/// /proc/self/pagemap; nil when frame numbers are hidden (not root).
func privatePages(_ base: UnsafeRawPointer, count: Int) -> Int? {
    let fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    func entries(_ addr: UnsafeRawPointer, _ n: Int) -> [UInt64] {
        var e = [UInt64](repeating: 0, count: n)
        let want = n * 8
        let got = e.withUnsafeMutableBytes { pread(fd, $0.baseAddress, want, off_t(UInt(bitPattern: addr) / 4096 * 8)) }
        return got == want ? e : []
    }
    let present: UInt64 = 1 << 63, pfnMask: UInt64 = (1 << 55) - 1
    // The zero page's frame: read a fresh anonymous page and look it up.
    guard let probe = mmap(nil, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), probe != MAP_FAILED else { return nil }
    defer { munmap(probe, 4096) }
    _ = probe.load(as: UInt8.self)
    guard let z = entries(probe, 1).first, z & present != 0, z & pfnMask != 0 else { return nil }
    let zeroFrame = z & pfnMask
    let all = entries(base, count)
    guard all.count == count else { return nil }
    return all.filter { $0 & present != 0 && $0 & pfnMask != zeroFrame }.count
}
