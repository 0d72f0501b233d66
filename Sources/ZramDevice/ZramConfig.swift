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
    /// zsmalloc's pages per zspage chain, 4...16 (the kernel's CONFIG_ZSMALLOC_CHAIN_SIZE, default 8).
    public var chainSize: Int
    /// The chain sizes a device accepts: zsmalloc's (ZsGeometry.chainSizes). Check before creating.
    public static let chainSizes = ZsGeometry.chainSizes
    /// Pool memory limit in bytes, rounded up to pages; 0 = none.
    public var memLimit: Int

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
