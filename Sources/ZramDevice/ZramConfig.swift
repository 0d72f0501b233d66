import Codec
import ZsPool

/// How a device is created. Mirrors the zram attributes written before `disksize`.
public struct ZramConfig: Sendable, Equatable {
    /// Device name, used in logs and stats file names (e.g. "zram0").
    public var name: String
    /// Capacity in uncompressed bytes; rounded up to a 4096 multiple. 0 = not initialised.
    public var diskSize: Int
    public var algorithm: CompressionAlgorithm
    /// Compression level (lz4: acceleration); nil = the algorithm's default.
    public var level: Int32?
    /// deflate.winbits (nil = the kernel's -11) and the dictionary (zstd, lz4, lz4hc): the rest
    /// of zram's algorithm_params for the primary algorithm.
    public var windowBits: Int32?
    public var dictionary: CompressionDictionary?
    /// zstd.compact (beyond the kernel); nil = off.
    public var compactFrames: Bool?
    /// level, windowBits, dictionary and compactFrames together.
    public var parameters: AlgorithmParameters {
        AlgorithmParameters(level: level, windowBits: windowBits, dictionary: dictionary, compactFrames: compactFrames)
    }
    /// zsmalloc's pages per zspage chain, 4...16 (the kernel's CONFIG_ZSMALLOC_CHAIN_SIZE, default 8).
    public var chainSize: Int
    /// The chain sizes a device accepts: zsmalloc's (ZsGeometry.chainSizes). Check before creating.
    public static let chainSizes = ZsGeometry.chainSizes
    /// Pool memory limit in bytes, rounded up to pages; 0 = none.
    public var memLimit: Int
    /// Where the pool's pages and the slot table live: `.memfd` (shared, inheritable by a
    /// successor process) or `.anonymous` (private, gone with the process).
    public var backing: PageBacking = .defaultBacking

    /// The largest disk size a device takes: 16 TiB, 2^32 pages of 4 KiB, the most 32-bit page
    /// numbers address (the pool's are 32-bit). Its slot table is 64 GiB of address space (16 B
    /// per page) and its pool reservation is capped below 16 TiB: both reserved, not committed.
    public static let maxDiskSize = 1 << 44
    /// The largest mem_limit: what the pool can hold at most (its page numbers are 32-bit), 16 TiB.
    public static let maxMemLimit = 1 << 44

    public init(name: String, diskSize: Int, algorithm: CompressionAlgorithm = .lz4,
                level: Int32? = nil, chainSize: Int = 8, memLimit: Int = 0) {
        self.name = name
        self.diskSize = diskSize
        self.algorithm = algorithm
        self.level = level
        self.chainSize = chainSize
        self.memLimit = memLimit
    }
}
