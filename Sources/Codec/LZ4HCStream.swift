import CLZ4
import Posix

/// lz4hc as zram uses it without a dictionary (backend_lz4hc.c): LZ4_compress_HC at a level,
/// LZ4_decompress_safe. The HC state (about 256 KiB) is allocated once per stream: plain
/// LZ4_compress_HC would allocate it on every page.
final class LZ4HCStream: CompressionStream {
    let level: Int32
    var algorithm: CompressionAlgorithm { .lz4hc }
    private let state: UnsafeMutableRawPointer

    init(level: Int32) {
        self.level = level
        state = .allocate(byteCount: Int(LZ4_sizeofStateHC()), alignment: 16)
    }

    deinit { state.deallocate() }

    func compress(page source: UnsafeRawPointer, into destination: UnsafeMutableRawPointer,
                  capacity: Int) -> Int? {
        let n = LZ4_compress_HC_extStateHC(state, source.assumingMemoryBound(to: CChar.self),
                                           destination.assumingMemoryBound(to: CChar.self),
                                           Int32(pageSize), Int32(clamping: capacity), level)
        return n > 0 ? Int(n) : nil
    }

    func decompress(_ source: UnsafeRawPointer, count: Int,
                    intoPage destination: UnsafeMutableRawPointer) -> Bool {
        LZ4Stream.decompressPage(source, count: count, into: destination)   // one LZ4 format for both
    }
}
