import CZlib
import Posix

/// deflate as zram's backend_deflate.c runs it: zlib's windowBits as `deflate.winbits` gives
/// them (default -11: raw deflate, no zlib header, a 2 KiB window) and the kernel zlib's
/// MAX_MEM_LEVEL 8, through zlib so sizes follow the kernel's (libdeflate has no window size to
/// set). One z_stream pair per stream, reset per page: no allocation.
final class DeflateStream: CompressionStream {
    /// The kernel's MAX_MEM_LEVEL (include/linux/zconf.h), not userspace zlib's 9.
    static let memLevel: Int32 = 8

    let level: Int32
    var algorithm: CompressionAlgorithm { .deflate }
    private let deflater: UnsafeMutablePointer<z_stream>
    private let inflater: UnsafeMutablePointer<z_stream>

    let windowBits: Int32

    init(level: Int32, windowBits: Int32 = CompressionAlgorithm.defaultWindowBits) throws(CodecError) {
        deflater = .allocate(capacity: 1)
        inflater = .allocate(capacity: 1)
        deflater.initialize(to: z_stream())
        inflater.initialize(to: z_stream())
        self.level = level
        self.windowBits = windowBits
        guard czlib_deflate_init2(deflater, level, windowBits, Self.memLevel) == Z_OK else {
            deflater.deallocate()
            inflater.deallocate()
            throw .contextAllocationFailed(.deflate)
        }
        guard czlib_inflate_init2(inflater, windowBits) == Z_OK else {
            deflateEnd(deflater)
            deflater.deallocate()
            inflater.deallocate()
            throw .contextAllocationFailed(.deflate)
        }
    }

    deinit {
        deflateEnd(deflater)
        inflateEnd(inflater)
        deflater.deallocate()
        inflater.deallocate()
    }

    func compress(page source: UnsafeRawPointer, into destination: UnsafeMutableRawPointer,
                  capacity: Int) -> Int? {
        guard deflateReset(deflater) == Z_OK else { return nil }
        deflater.pointee.next_in = UnsafeMutablePointer(mutating: source.assumingMemoryBound(to: UInt8.self))
        deflater.pointee.avail_in = UInt32(pageSize)
        deflater.pointee.next_out = destination.assumingMemoryBound(to: UInt8.self)
        deflater.pointee.avail_out = UInt32(clamping: capacity)
        guard deflate(deflater, Z_FINISH) == Z_STREAM_END else { return nil }
        return Int(deflater.pointee.total_out)
    }

    func decompress(_ source: UnsafeRawPointer, count: Int,
                    intoPage destination: UnsafeMutableRawPointer) -> Bool {
        guard count > 0, count <= Int(UInt32.max), inflateReset(inflater) == Z_OK else { return false }
        inflater.pointee.next_in = UnsafeMutablePointer(mutating: source.assumingMemoryBound(to: UInt8.self))
        inflater.pointee.avail_in = UInt32(count)
        inflater.pointee.next_out = destination.assumingMemoryBound(to: UInt8.self)
        inflater.pointee.avail_out = UInt32(pageSize)
        // Z_FINISH, unlike the kernel's Z_SYNC_FLUSH, decodes the same and keeps no window copy.
        return inflate(inflater, Z_FINISH) == Z_STREAM_END && inflater.pointee.total_out == UInt(pageSize)
    }
}
