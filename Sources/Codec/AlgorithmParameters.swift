// zram's algorithm_params (6.12+): a level, a dictionary and deflate's window bits, per
// algorithm, as zcomp_params carries them to a backend.
import CZstd
import Glibc
import Posix

/// What `algorithm_params` sets for one priority. nil fields take the algorithm's defaults.
///
/// The dictionary is part of the parameters, not of a page: every page stored at a priority
/// was compressed with that priority's parameters, and ZramDevice refuses (EBUSY) to change
/// them while pages at that priority are stored, so a page is never decompressed with any
/// dictionary but its own.
public struct AlgorithmParameters: Sendable, Equatable {
    /// `level=`; nil = the algorithm's default.
    public var level: Int32?
    /// `deflate.winbits=`: zlib's windowBits as the kernel passes it, negative for raw deflate;
    /// nil = backend_deflate.c's DEFLATE_DEF_WINBITS, -11.
    public var windowBits: Int32?
    /// `dict=`: zstd, lz4 and lz4hc only.
    public var dictionary: CompressionDictionary?
    /// `zstd.compact=1`, beyond the kernel: zstd frames without magic number, dictionary ID and
    /// content size (see ZstdStream); nil or false = the kernel's frames.
    public var compactFrames: Bool?

    public init(level: Int32? = nil, windowBits: Int32? = nil, dictionary: CompressionDictionary? = nil,
                compactFrames: Bool? = nil) {
        self.level = level
        self.windowBits = windowBits
        self.dictionary = dictionary
        self.compactFrames = compactFrames
    }
}

/// A dictionary file's bytes, read once when it is set and shared read-only by every stream
/// of its priority (the kernel's zcomp_params.dict).
public final class CompressionDictionary: @unchecked Sendable, Equatable {   // immutable after init
    /// Where it was read from or saved to (nil: trained and not saved).
    public let path: String?
    let bytes: UnsafeMutableRawBufferPointer

    /// The largest file taken: far more than a 4 KiB page can use (zstd's trainer makes 112 KiB
    /// by default), small enough that a wrong path (a log, an image) is refused, not swallowed.
    public static let maxBytes = 1 << 20
    /// lz4 and lz4hc keep only the last 64 KiB (LZ4_loadDict), and the kernel refuses a longer
    /// lz4 dictionary (EINVAL) and fails every lz4hc compression with one.
    public static let maxLZ4Bytes = 64 << 10

    public var count: Int { bytes.count }
    /// The bytes, e.g. to save a trained dictionary.
    public var contents: [UInt8] { Array(UnsafeRawBufferPointer(bytes)) }
    /// Runs `body` on the bytes in place.
    public func withBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R { try body(UnsafeRawBufferPointer(bytes)) }
    /// The ID a zstd dictionary carries in its header (0 for raw content, which has none).
    public var zstdID: UInt32 { ZSTD_getDictID_fromDict(bytes.baseAddress, bytes.count) }

    /// Copies `contents`; empty or over `maxBytes` is an error.
    public init(contents: [UInt8], path: String?) throws(CodecError) {
        guard contents.count > 0 else { throw .dictionary("\(path ?? "the dictionary") is empty") }
        guard contents.count <= Self.maxBytes else {
            throw .dictionary("\(path ?? "the dictionary") is \(contents.count) bytes; at most \(Self.maxBytes) are taken")
        }
        let b = UnsafeMutableRawBufferPointer.allocate(byteCount: contents.count, alignment: 16)
        contents.withUnsafeBytes { b.copyMemory(from: $0) }
        bytes = b
        self.path = path
    }

    /// Reads a regular file of 1...maxBytes bytes (kernel_read_file_from_path's job).
    public static func load(path: String) throws(CodecError) -> CompressionDictionary {
        var st = stat()
        guard stat(path, &st) == 0 else {
            throw .dictionary("\(path): \(String(cString: strerror(errno)))")
        }
        guard st.st_mode & S_IFMT == S_IFREG else { throw .dictionary("\(path) is not a regular file") }
        guard st.st_size > 0 else { throw .dictionary("\(path) is empty") }
        guard st.st_size <= maxBytes else {
            throw .dictionary("\(path) is \(st.st_size) bytes; at most \(maxBytes) are taken")
        }
        let data: [UInt8]
        do { data = try IO.readFile(path, limit: maxBytes) } catch { throw .dictionary("\(error)") }
        return try CompressionDictionary(contents: data, path: path)
    }

    deinit { bytes.deallocate() }

    /// Same bytes: pages compressed with one decompress with the other.
    public static func == (a: CompressionDictionary, b: CompressionDictionary) -> Bool {
        a === b || UnsafeRawBufferPointer(a.bytes).elementsEqual(UnsafeRawBufferPointer(b.bytes))
    }
}

/// zstd's dictionary trainer, for `train-dict`.
public enum DictionaryTrainer {
    /// Sizes `train` makes: zstd's smallest (ZDICT_DICTSIZE_MIN) up to what a file may hold.
    public static let sizes = 256...CompressionDictionary.maxBytes
    /// zstd's own default size (the zstd CLI's --maxdict).
    public static let defaultSize = 112_640

    /// ZDICT_trainFromBuffer over `samples`, cut into pieces of `sampleSize` bytes; the
    /// dictionary is at most `size` bytes.
    public static func train(samples: [UInt8], sampleSize: Int, size: Int) throws(CodecError) -> [UInt8] {
        guard sizes.contains(size) else {
            throw .dictionary("size=\(size) is outside \(sizes.lowerBound)...\(sizes.upperBound) bytes")
        }
        guard sampleSize > 0, samples.count >= sampleSize, let count = UInt32(exactly: samples.count / sampleSize) else {
            throw .dictionary("no pages to train from")
        }
        let lengths = [Int](repeating: sampleSize, count: Int(count))
        var dictionary = [UInt8](repeating: 0, count: size)
        let n = dictionary.withUnsafeMutableBytes { d in
            samples.withUnsafeBytes { s in
                ZDICT_trainFromBuffer(d.baseAddress, d.count, s.baseAddress, lengths, count)
            }
        }
        guard ZDICT_isError(n) == 0, n > 0 else {
            throw .dictionary("cannot train a dictionary from \(count) pages: \(String(cString: ZDICT_getErrorName(n)))")
        }
        return Array(dictionary[0..<min(n, size)])
    }
}
