import Posix

/// lzo and lzo-rle as zram runs them (backend_lzo.c, backend_lzorle.c): the kernel's LZO1X-1
/// compressor (LZO1X.swift) with its work memory allocated once, and lzo1x_decompress_safe.
/// Neither takes a level.
final class LZOStream: CompressionStream {
    let algorithm: CompressionAlgorithm
    var level: Int32 { 0 }
    private let dict: UnsafeMutablePointer<UInt16>
    /// The compressor's output when the caller's buffer is smaller than LZO's worst case
    /// (literal runs are copied 16 bytes at a time, past their end).
    private let spill: UnsafeMutablePointer<UInt8>
    private let spillCapacity = LZO1X.bound(pageSize)

    init(rle: Bool) {
        algorithm = rle ? .lzoRle : .lzo
        dict = .allocate(capacity: LZO1X.dictSize)
        dict.initialize(repeating: 0, count: LZO1X.dictSize)
        spill = .allocate(capacity: LZO1X.bound(pageSize))
    }

    deinit {
        dict.deallocate()
        spill.deallocate()
    }

    func compress(page source: UnsafeRawPointer, into destination: UnsafeMutableRawPointer,
                  capacity: Int) -> Int? {
        let src = source.assumingMemoryBound(to: UInt8.self)
        let rle = algorithm == .lzoRle
        if capacity >= spillCapacity {
            return LZO1X.compress(src, count: pageSize, into: destination.assumingMemoryBound(to: UInt8.self),
                                  dict: dict, rle: rle)
        }
        let n = LZO1X.compress(src, count: pageSize, into: spill, dict: dict, rle: rle)
        guard n <= capacity else { return nil }
        destination.copyMemory(from: spill, byteCount: n)
        return n
    }

    func decompress(_ source: UnsafeRawPointer, count: Int,
                    intoPage destination: UnsafeMutableRawPointer) -> Bool {
        LZO1X.decompress(source.assumingMemoryBound(to: UInt8.self), count: count,
                         into: destination.assumingMemoryBound(to: UInt8.self), capacity: pageSize) == pageSize
    }
}
