// The page compressors zram can use, with the kernel's default levels.
//
// Words: an *algorithm* (CompressionAlgorithm) is a name zram knows ("lz4", "zstd") with its
// *level*; a *stream* (CompressionStream) is one algorithm's working state, owned by one thread
// at a time, that compresses one page into a buffer or decompresses one object back into a page.

import Posix

/// A compression algorithm for 4 KiB pages. Names match zram's `comp_algorithm` names, and the
/// cases are in the kernel's order (zcomp.c's backends[]), which `comp_algorithm` lists.
public enum CompressionAlgorithm: String, CaseIterable, Sendable {
    case lzoRle = "lzo-rle"
    case lzo
    case lz4
    case lz4hc
    case zstd
    case deflate

    /// zram's default level: lz4's acceleration 1 (LZ4_compress_default), lz4hc's
    /// LZ4HC_DEFAULT_CLEVEL 9, zstd's level 3, deflate's Z_DEFAULT_COMPRESSION (zlib's 6).
    /// lzo and lzo-rle have no level: 0 stands for "none".
    public var defaultLevel: Int32 {
        switch self {
        case .lzoRle, .lzo: 0
        case .lz4: 1
        case .lz4hc: 9
        case .zstd: 3
        case .deflate: 6
        }
    }

    /// Levels the algorithm accepts. For lz4 the level is the acceleration (higher = faster, weaker);
    /// for zstd it is the compression level (negative = fast modes); lz4hc takes 1...12 as
    /// backend_lz4hc.c does; deflate zlib's -1...9 (-1 = 6).
    public var levelRange: ClosedRange<Int32> {
        switch self {
        case .lzoRle, .lzo: 0...0
        case .lz4: 1...65537
        case .lz4hc: 1...12
        case .zstd: ZSTD.minLevel...ZSTD.maxLevel
        case .deflate: -1...9
        }
    }

    /// Whether a level can be chosen at all (lzo and lzo-rle have none).
    public var takesLevel: Bool { levelRange.count > 1 }

    /// Parses a name as written to zram's `comp_algorithm` (a trailing newline or spaces are ignored).
    public init(name: String) throws(CodecError) {
        var s = Substring(name)
        while let c = s.last, c == "\n" || c == " " || c == "\t" { s.removeLast() }
        while let c = s.first, c == " " || c == "\t" { s.removeFirst() }
        guard let a = CompressionAlgorithm(rawValue: String(s)) else {
            throw .unknownAlgorithm(String(s))
        }
        self = a
    }

    /// Creates one compression stream (one per CPU in the device) at `level`
    /// (nil = the default level). This is the only place that knows each algorithm's stream type,
    /// so an algorithm joins by adding a case here and a `CompressionStream` conformer.
    public func makeStream(level: Int32? = nil) throws(CodecError) -> any CompressionStream {
        let level = level ?? defaultLevel
        guard levelRange.contains(level) else { throw .invalidLevel(self, level) }
        switch self {
        case .lzoRle: return LZOStream(rle: true)
        case .lzo: return LZOStream(rle: false)
        case .lz4: return LZ4Stream(acceleration: level)
        case .lz4hc: return LZ4HCStream(level: level)
        case .zstd: return try ZstdStream(level: level)
        case .deflate: return try DeflateStream(level: level)
        }
    }
}

/// Errors of the Codec module.
public enum CodecError: Error, Equatable, Sendable, CustomStringConvertible {
    case unknownAlgorithm(String)
    case invalidLevel(CompressionAlgorithm, Int32)
    /// The C library could not allocate a context.
    case contextAllocationFailed(CompressionAlgorithm)

    public var description: String {
        switch self {
        case .unknownAlgorithm(let name): "unknown compression algorithm \"\(name)\""
        case .invalidLevel(let a, let level) where !a.takesLevel:
            "\(a.rawValue) takes no level (got \(level))"
        case .invalidLevel(let a, let level):
            "level \(level) is outside \(a.rawValue)'s range \(a.levelRange.lowerBound)...\(a.levelRange.upperBound)"
        case .contextAllocationFailed(let a): "cannot allocate a \(a.rawValue) context"
        }
    }
}

/// One compression stream: codec contexts for one CPU. Not thread-safe; the owner serialises use.
///
/// Page-sized by contract: `compress` reads exactly `pageSize` bytes; `decompress` must produce
/// exactly `pageSize` bytes or fail. Neither allocates.
public protocol CompressionStream: AnyObject {
    var algorithm: CompressionAlgorithm { get }
    var level: Int32 { get }
    /// Compresses one page at `source` into `destination` (capacity bytes; zram gives 2 pages,
    /// so even incompressible pages fit). Returns the compressed length, or nil on failure.
    func compress(page source: UnsafeRawPointer, into destination: UnsafeMutableRawPointer,
                  capacity: Int) -> Int?
    /// Decompresses `count` bytes at `source` into one page at `destination`. Returns false when the
    /// input is corrupt or does not decode to exactly one page; `destination` is then undefined.
    func decompress(_ source: UnsafeRawPointer, count: Int,
                    intoPage destination: UnsafeMutableRawPointer) -> Bool
}
