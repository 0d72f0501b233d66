import CZstd
import Posix

enum ZSTD {
    static var minLevel: Int32 { ZSTD_minCLevel() }
    static var maxLevel: Int32 { ZSTD_maxCLevel() }
}

/// A zstd dictionary digested once for a level (backend_zstd.c's zstd_setup_params): the CDict
/// and DDict are read-only after creation, which zstd documents as safe to share between threads.
final class ZstdDictionary: @unchecked Sendable {
    let cdict: OpaquePointer
    let ddict: OpaquePointer

    init(_ d: CompressionDictionary, level: Int32) throws(CodecError) {
        // A file that starts with zstd's dictionary magic must parse as one; anything else is
        // raw content, as the kernel takes it.
        guard let c = ZSTD_createCDict(d.bytes.baseAddress, d.count, level) else {
            throw .dictionary("\(d.path ?? "the dictionary") is not a usable zstd dictionary (corrupt header or entropy tables)")
        }
        guard let dd = ZSTD_createDDict(d.bytes.baseAddress, d.count) else {
            ZSTD_freeCDict(c)
            throw .dictionary("\(d.path ?? "the dictionary") is not a usable zstd dictionary (corrupt header or entropy tables)")
        }
        cdict = c
        ddict = dd
    }

    deinit {
        ZSTD_freeCDict(cdict)
        ZSTD_freeDDict(ddict)
    }
}

/// zstd as zram uses it: one frame per page through a CCtx/DCtx pair owned by this stream,
/// with the priority's shared dictionary if it has one. The contexts keep their workspaces
/// between pages, so steady state allocates nothing.
final class ZstdStream: CompressionStream {
    let level: Int32
    var algorithm: CompressionAlgorithm { .zstd }
    private let cctx: OpaquePointer
    private let dctx: OpaquePointer
    private let dictionary: ZstdDictionary?

    init(level: Int32, dictionary: ZstdDictionary? = nil) throws(CodecError) {
        guard let c = ZSTD_createCCtx() else { throw .contextAllocationFailed(.zstd) }
        guard let d = ZSTD_createDCtx() else {
            ZSTD_freeCCtx(c)
            throw .contextAllocationFailed(.zstd)
        }
        self.level = level
        self.dictionary = dictionary
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
        let n = if let dictionary {
            ZSTD_compress_usingCDict(cctx, destination, capacity, source, pageSize, dictionary.cdict)
        } else {
            ZSTD_compressCCtx(cctx, destination, capacity, source, pageSize, level)
        }
        return ZSTD_isError(n) == 0 && n > 0 ? n : nil
    }

    func decompress(_ source: UnsafeRawPointer, count: Int,
                    intoPage destination: UnsafeMutableRawPointer) -> Bool {
        guard count > 0 else { return false }
        let n = if let dictionary {
            ZSTD_decompress_usingDDict(dctx, destination, pageSize, source, count, dictionary.ddict)
        } else {
            ZSTD_decompressDCtx(dctx, destination, pageSize, source, count)
        }
        return ZSTD_isError(n) == 0 && n == pageSize
    }
}
