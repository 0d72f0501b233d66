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

    /// Whether `dict=` applies: zstd, and lz4/lz4hc as raw content (backend_lz4*.c); lzo, lzo-rle
    /// and deflate take none, as in the kernel.
    public var takesDictionary: Bool { self == .zstd || self == .lz4 || self == .lz4hc }

    /// `deflate.winbits` values zlib takes from the kernel: -15...-9 for raw deflate (what zram
    /// stores), 9...15 for a zlib header and trailer around each page.
    public static func validWindowBits(_ bits: Int32) -> Bool { (9...15).contains(bits.magnitude) }
    /// backend_deflate.c's DEFLATE_DEF_WINBITS: raw deflate with a 2 KiB window.
    public static let defaultWindowBits: Int32 = -11

    /// Creates one compression stream at `level` (nil = the default level).
    public func makeStream(level: Int32? = nil) throws(CodecError) -> any CompressionStream {
        try prepare(AlgorithmParameters(level: level)).makeStream()
    }

    /// Checks `parameters` the way the kernel's setup_params does and digests a dictionary once
    /// (zstd's CDict/DDict, lz4's loaded stream), for every stream of a priority to share.
    public func prepare(_ parameters: AlgorithmParameters) throws(CodecError) -> PreparedAlgorithm {
        let level = parameters.level ?? defaultLevel
        guard levelRange.contains(level) else { throw .invalidLevel(self, level) }
        if let bits = parameters.windowBits {
            guard self == .deflate else { throw .unsupportedParameter(self, "deflate.winbits") }
            guard Self.validWindowBits(bits) else { throw .invalidWindowBits(bits) }
        }
        if parameters.compactFrames != nil, self != .zstd { throw .unsupportedParameter(self, "zstd.compact") }
        var shared: PreparedAlgorithm.Shared = .none
        if let d = parameters.dictionary {
            guard takesDictionary else { throw .unsupportedParameter(self, "dict") }
            if self != .zstd && d.count > CompressionDictionary.maxLZ4Bytes {
                throw .dictionary("\(d.path ?? "the dictionary") is \(d.count) bytes; \(rawValue) takes at most \(CompressionDictionary.maxLZ4Bytes)")
            }
            switch self {
            case .lz4: shared = .lz4(try LZ4Dictionary(d))
            case .lz4hc: shared = .lz4hc(try LZ4HCDictionary(d, level: level))
            default: shared = .zstd(try ZstdDictionary(d, level: level))
            }
        }
        return PreparedAlgorithm(algorithm: self, level: level, windowBits: parameters.windowBits ?? Self.defaultWindowBits,
                                 compactFrames: parameters.compactFrames ?? false, shared: shared)
    }
}

/// An algorithm with checked parameters and its digested dictionary: makes the streams of one
/// priority (one per CPU), which share the dictionary read-only.
public struct PreparedAlgorithm: Sendable {
    enum Shared: Sendable {
        case none
        case zstd(ZstdDictionary)
        case lz4(LZ4Dictionary)
        case lz4hc(LZ4HCDictionary)
    }

    public let algorithm: CompressionAlgorithm
    public let level: Int32
    let windowBits: Int32
    let compactFrames: Bool
    let shared: Shared

    /// A new stream. This is the only place that knows each algorithm's stream type, so an
    /// algorithm joins by adding a case here and a `CompressionStream` conformer.
    public func makeStream() throws(CodecError) -> any CompressionStream {
        switch (algorithm, shared) {
        case (.lzoRle, _): return LZOStream(rle: true)
        case (.lzo, _): return LZOStream(rle: false)
        case (.lz4, .lz4(let d)): return LZ4Stream(acceleration: level, dictionary: d)
        case (.lz4, _): return LZ4Stream(acceleration: level)
        case (.lz4hc, .lz4hc(let d)): return LZ4HCStream(level: level, dictionary: d)
        case (.lz4hc, _): return LZ4HCStream(level: level)
        case (.zstd, .zstd(let d)): return try ZstdStream(level: level, dictionary: d, compact: compactFrames)
        case (.zstd, _): return try ZstdStream(level: level, compact: compactFrames)
        case (.deflate, _): return try DeflateStream(level: level, windowBits: windowBits)
        }
    }
}

/// Errors of the Codec module.
public enum CodecError: Error, Equatable, Sendable, CustomStringConvertible {
    case unknownAlgorithm(String)
    case invalidLevel(CompressionAlgorithm, Int32)
    /// The C library could not allocate a context.
    case contextAllocationFailed(CompressionAlgorithm)
    /// `deflate.winbits` outside -15...-9 and 9...15.
    case invalidWindowBits(Int32)
    /// A parameter the algorithm does not take ("dict" for lzo).
    case unsupportedParameter(CompressionAlgorithm, String)
    /// A dictionary that cannot be read or used, said in a sentence.
    case dictionary(String)

    public var description: String {
        switch self {
        case .unknownAlgorithm(let name): "unknown compression algorithm \"\(name)\""
        case .invalidLevel(let a, let level) where !a.takesLevel:
            "\(a.rawValue) takes no level (got \(level))"
        case .invalidLevel(let a, let level):
            "level \(level) is outside \(a.rawValue)'s range \(a.levelRange.lowerBound)...\(a.levelRange.upperBound)"
        case .contextAllocationFailed(let a): "cannot allocate a \(a.rawValue) context"
        case .invalidWindowBits(let b): "deflate.winbits=\(b) is outside -15...-9 (raw deflate) and 9...15 (zlib)"
        case .unsupportedParameter(let a, "dict"): "\(a.rawValue) takes no dictionary (zstd, lz4 and lz4hc do)"
        case .unsupportedParameter(let a, let p): "\(a.rawValue) takes no \(p)"
        case .dictionary(let m): m
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
