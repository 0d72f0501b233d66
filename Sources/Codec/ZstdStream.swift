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
///
/// `compact` (zstd.compact=1, beyond the kernel) drops what a page's frame repeats for nothing:
/// the 4-byte magic number (zstd's magicless format), the dictionary ID (up to 4 bytes) and the
/// content size (always 4096 here; 1 byte net, as a window byte takes its place).
final class ZstdStream: CompressionStream {
    let level: Int32
    var algorithm: CompressionAlgorithm { .zstd }
    private let cctx: OpaquePointer
    private let dctx: OpaquePointer
    private let dictionary: ZstdDictionary?
    private let compact: Bool

    init(level: Int32, dictionary: ZstdDictionary? = nil, compact: Bool = false) throws(CodecError) {
        guard let c = ZSTD_createCCtx() else { throw .contextAllocationFailed(.zstd) }
        guard let d = ZSTD_createDCtx() else {
            ZSTD_freeCCtx(c)
            throw .contextAllocationFailed(.zstd)
        }
        self.level = level
        self.dictionary = dictionary
        self.compact = compact
        cctx = c
        dctx = d
        if compact {
            // Sticky settings: every ZSTD_compress2/ZSTD_decompressDCtx below uses them.
            let magicless: Int32 = 1   // ZSTD_f_zstd1_magicless (zstd.h's experimental section)
            var ok = ZSTD_isError(ZSTD_CCtx_setParameter(c, ZSTD_c_compressionLevel, level)) == 0
            ok = ok && ZSTD_isError(ZSTD_CCtx_setParameter(c, ZSTD_c_contentSizeFlag, 0)) == 0
            ok = ok && ZSTD_isError(ZSTD_CCtx_setParameter(c, ZSTD_c_dictIDFlag, 0)) == 0
            ok = ok && ZSTD_isError(ZSTD_CCtx_setParameter(c, ZSTD_c_experimentalParam2, magicless)) == 0
            ok = ok && ZSTD_isError(ZSTD_DCtx_setParameter(d, ZSTD_d_experimentalParam1, magicless)) == 0
            if let dictionary {
                ok = ok && ZSTD_isError(ZSTD_CCtx_refCDict(c, dictionary.cdict)) == 0
                ok = ok && ZSTD_isError(ZSTD_DCtx_refDDict(d, dictionary.ddict)) == 0
            }
            guard ok else {
                ZSTD_freeCCtx(c)
                ZSTD_freeDCtx(d)
                throw .contextAllocationFailed(.zstd)
            }
        }
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
        let n = if compact {
            ZSTD_compress2(cctx, destination, capacity, source, pageSize)
        } else if let dictionary {
            ZSTD_compress_usingCDict(cctx, destination, capacity, source, pageSize, dictionary.cdict)
        } else {
            ZSTD_compressCCtx(cctx, destination, capacity, source, pageSize, level)
        }
        return ZSTD_isError(n) == 0 && n > 0 ? n : nil
    }

    func decompress(_ source: UnsafeRawPointer, count: Int,
                    intoPage destination: UnsafeMutableRawPointer) -> Bool {
        guard count > 0 else { return false }
        let n = if compact {
            ZSTD_decompressDCtx(dctx, destination, pageSize, source, count)
        } else if let dictionary {
            ZSTD_decompress_usingDDict(dctx, destination, pageSize, source, count, dictionary.ddict)
        } else {
            ZSTD_decompressDCtx(dctx, destination, pageSize, source, count)
        }
        return ZSTD_isError(n) == 0 && n == pageSize
    }
}
