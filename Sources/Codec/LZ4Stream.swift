import CLZ4
import Posix

/// An lz4 dictionary loaded once (backend_lz4.c's lz4_setup_params): the LZ4_stream_t that
/// LZ4_loadDict fills, copied into a stream's own state before each page as the kernel does, and
/// the bytes it points into, which live as long as this.
final class LZ4Dictionary: @unchecked Sendable {   // read-only after init
    let dictionary: CompressionDictionary
    let loaded: UnsafeMutablePointer<LZ4_stream_t>

    init(_ d: CompressionDictionary) throws(CodecError) {
        dictionary = d
        loaded = .allocate(capacity: 1)
        guard LZ4_initStream(loaded, MemoryLayout<LZ4_stream_t>.size) != nil,
              LZ4_loadDict(loaded, d.bytes.baseAddress?.assumingMemoryBound(to: CChar.self), Int32(d.count)) == Int32(d.count) else {
            loaded.deallocate()
            throw .dictionary("\(d.path ?? "the dictionary") cannot be loaded as an lz4 dictionary")
        }
    }

    deinit { loaded.deallocate() }

    /// LZ4_decompress_safe_usingDict of one page (the kernel's LZ4_setStreamDecode + _continue).
    func decompressPage(_ source: UnsafeRawPointer, count: Int, into destination: UnsafeMutableRawPointer) -> Bool {
        guard count > 0, count <= Int(Int32.max) else { return false }
        let n = LZ4_decompress_safe_usingDict(source.assumingMemoryBound(to: CChar.self),
                                              destination.assumingMemoryBound(to: CChar.self),
                                              Int32(count), Int32(pageSize),
                                              dictionary.bytes.baseAddress?.assumingMemoryBound(to: CChar.self),
                                              Int32(dictionary.count))
        return n == Int32(pageSize)
    }
}

/// lz4 as zram uses it: LZ4_compress_fast with level as acceleration, LZ4_decompress_safe into
/// one page; with a dictionary, LZ4_compress_fast_continue from a copy of the loaded stream.
/// Without one liblz4 keeps its hash table on the stack: no state here.
final class LZ4Stream: CompressionStream {
    let level: Int32
    var algorithm: CompressionAlgorithm { .lz4 }
    private let dictionary: LZ4Dictionary?
    /// This stream's working copy of the loaded dictionary stream (nil without a dictionary).
    private let work: UnsafeMutablePointer<LZ4_stream_t>?

    init(acceleration: Int32, dictionary: LZ4Dictionary? = nil) {
        level = acceleration
        self.dictionary = dictionary
        work = dictionary == nil ? nil : .allocate(capacity: 1)
    }

    deinit { work?.deallocate() }

    func compress(page source: UnsafeRawPointer, into destination: UnsafeMutableRawPointer,
                  capacity: Int) -> Int? {
        let n: Int32
        if let dictionary, let work {
            work.update(from: dictionary.loaded, count: 1)   // the kernel's memcpy: a reset to the dictionary
            n = LZ4_compress_fast_continue(work, source.assumingMemoryBound(to: CChar.self),
                                           destination.assumingMemoryBound(to: CChar.self),
                                           Int32(pageSize), Int32(clamping: capacity), level)
        } else {
            n = LZ4_compress_fast(source.assumingMemoryBound(to: CChar.self),
                                  destination.assumingMemoryBound(to: CChar.self),
                                  Int32(pageSize), Int32(clamping: capacity), level)
        }
        return n > 0 ? Int(n) : nil
    }

    func decompress(_ source: UnsafeRawPointer, count: Int,
                    intoPage destination: UnsafeMutableRawPointer) -> Bool {
        if let dictionary { return dictionary.decompressPage(source, count: count, into: destination) }
        return Self.decompressPage(source, count: count, into: destination)
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
