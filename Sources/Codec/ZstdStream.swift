import CZstd
import Posix

enum ZSTD {
    static var minLevel: Int32 { ZSTD_minCLevel() }
    static var maxLevel: Int32 { ZSTD_maxCLevel() }
}

/// zstd as zram uses it without a dictionary: one frame per page through a CCtx/DCtx pair owned
/// by this stream. The contexts keep their workspaces between pages, so steady state allocates nothing.
final class ZstdStream: CompressionStream {
    let level: Int32
    var algorithm: CompressionAlgorithm { .zstd }
    private let cctx: OpaquePointer
    private let dctx: OpaquePointer

    init(level: Int32) throws(CodecError) {
        guard let c = ZSTD_createCCtx() else { throw .contextAllocationFailed(.zstd) }
        guard let d = ZSTD_createDCtx() else {
            ZSTD_freeCCtx(c)
            throw .contextAllocationFailed(.zstd)
        }
        self.level = level
        cctx = c
        dctx = d
        prime()
    }

    /// Runs one page through both contexts so their workspaces are allocated now, not on the data path.
    private func prime() {
        let page = UnsafeMutableRawPointer.allocate(byteCount: 3 * pageSize, alignment: 64)
        defer { page.deallocate() }
        page.initializeMemory(as: UInt8.self, repeating: 0x5a, count: pageSize)
        if let n = compress(page: page, into: page + pageSize, capacity: 2 * pageSize) {
            _ = decompress(page + pageSize, count: n, intoPage: page)
        }
    }

    deinit {
        ZSTD_freeCCtx(cctx)
        ZSTD_freeDCtx(dctx)
    }

    func compress(page source: UnsafeRawPointer, into destination: UnsafeMutableRawPointer,
                  capacity: Int) -> Int? {
        let n = ZSTD_compressCCtx(cctx, destination, capacity, source, pageSize, level)
        return ZSTD_isError(n) == 0 && n > 0 ? n : nil
    }

    func decompress(_ source: UnsafeRawPointer, count: Int,
                    intoPage destination: UnsafeMutableRawPointer) -> Bool {
        guard count > 0 else { return false }
        let n = ZSTD_decompressDCtx(dctx, destination, pageSize, source, count)
        return ZSTD_isError(n) == 0 && n == pageSize
    }
}
