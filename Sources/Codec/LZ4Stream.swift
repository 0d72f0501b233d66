import CLZ4
import Posix

/// lz4 as zram uses it without a dictionary: LZ4_compress_fast with level as acceleration,
/// LZ4_decompress_safe into one page. liblz4 keeps its hash table on the stack: no state here.
final class LZ4Stream: CompressionStream {
    let level: Int32
    var algorithm: CompressionAlgorithm { .lz4 }

    init(acceleration: Int32) { level = acceleration }

    func compress(page source: UnsafeRawPointer, into destination: UnsafeMutableRawPointer,
                  capacity: Int) -> Int? {
        let n = LZ4_compress_fast(source.assumingMemoryBound(to: CChar.self),
                                  destination.assumingMemoryBound(to: CChar.self),
                                  Int32(pageSize), Int32(clamping: capacity), level)
        return n > 0 ? Int(n) : nil
    }

    func decompress(_ source: UnsafeRawPointer, count: Int,
                    intoPage destination: UnsafeMutableRawPointer) -> Bool {
        Self.decompressPage(source, count: count, into: destination)
    }

    /// LZ4_decompress_safe of one page: false unless exactly a page comes out.
    static func decompressPage(_ source: UnsafeRawPointer, count: Int, into destination: UnsafeMutableRawPointer) -> Bool {
        guard count > 0, count <= Int(Int32.max) else { return false }
        let n = LZ4_decompress_safe(source.assumingMemoryBound(to: CChar.self),
                                    destination.assumingMemoryBound(to: CChar.self),
                                    Int32(count), Int32(pageSize))
        return n == Int32(pageSize)
    }
}
