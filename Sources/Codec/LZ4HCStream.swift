import CLZ4
import Posix

/// An lz4hc dictionary: backend_lz4hc.c resets its stream to the level and loads the dictionary
/// before every page (LZ4_resetStreamHC + LZ4_loadDictHC); the state that leaves is the same
/// each time, so it is made once here and each page starts from a copy of it (256 KiB copied
/// instead of 256 KiB cleared and up to 64 KiB hashed).
final class LZ4HCDictionary: @unchecked Sendable {   // read-only after init
    let lz4: LZ4Dictionary
    let loaded: UnsafeMutablePointer<LZ4_streamHC_t>

    init(_ d: CompressionDictionary, level: Int32) throws(CodecError) {
        lz4 = try LZ4Dictionary(d)
        loaded = .allocate(capacity: 1)
        guard LZ4_initStreamHC(loaded, MemoryLayout<LZ4_streamHC_t>.size) != nil else {
            loaded.deallocate()
            throw .contextAllocationFailed(.lz4hc)
        }
        LZ4_resetStreamHC_fast(loaded, level)
        guard LZ4_loadDictHC(loaded, d.bytes.baseAddress?.assumingMemoryBound(to: CChar.self), Int32(d.count)) == Int32(d.count) else {
            loaded.deallocate()
            throw .dictionary("\(d.path ?? "the dictionary") cannot be loaded as an lz4hc dictionary")
        }
    }

    deinit { loaded.deallocate() }
}

/// lz4hc as zram uses it (backend_lz4hc.c): LZ4_compress_HC at a level, LZ4_decompress_safe;
/// with a dictionary, LZ4_compress_HC_continue from the loaded state. The HC state (about
/// 256 KiB) is allocated once per stream: plain LZ4_compress_HC would allocate it on every page.
final class LZ4HCStream: CompressionStream {
    let level: Int32
    var algorithm: CompressionAlgorithm { .lz4hc }
    private let state: UnsafeMutableRawPointer
    private let dictionary: LZ4HCDictionary?

    init(level: Int32, dictionary: LZ4HCDictionary? = nil) {
        self.level = level
        self.dictionary = dictionary
        state = .allocate(byteCount: max(Int(LZ4_sizeofStateHC()), MemoryLayout<LZ4_streamHC_t>.size), alignment: 16)
    }

    deinit { state.deallocate() }

    func compress(page source: UnsafeRawPointer, into destination: UnsafeMutableRawPointer,
                  capacity: Int) -> Int? {
        let n: Int32
        if let dictionary {
            let work = state.bindMemory(to: LZ4_streamHC_t.self, capacity: 1)
            work.update(from: dictionary.loaded, count: 1)
            n = LZ4_compress_HC_continue(work, source.assumingMemoryBound(to: CChar.self),
                                         destination.assumingMemoryBound(to: CChar.self),
                                         Int32(pageSize), Int32(clamping: capacity))
        } else {
            n = LZ4_compress_HC_extStateHC(state, source.assumingMemoryBound(to: CChar.self),
                                           destination.assumingMemoryBound(to: CChar.self),
                                           Int32(pageSize), Int32(clamping: capacity), level)
        }
        return n > 0 ? Int(n) : nil
    }

    func decompress(_ source: UnsafeRawPointer, count: Int,
                    intoPage destination: UnsafeMutableRawPointer) -> Bool {
        if let dictionary { return dictionary.lz4.decompressPage(source, count: count, into: destination) }
        return LZ4Stream.decompressPage(source, count: count, into: destination)   // one LZ4 format for both
    }
}
