// What the daemon is asked to run: devices and daemon-wide settings, before anything exists.
import Codec
import NBD
import ZramDevice

/// One device as configured: the zram attributes, how it is exported, where stats go, and how the
/// setup tools (swap/fs units, scripts/zramnbd-swap) use it.
public struct DeviceSpec: Sendable, Equatable {
    /// Export name, stats directory name and the name in every report ("zram0").
    public var name: String
    /// Capacity in uncompressed bytes (zram's disksize); rounded up to 4096 by the device.
    public var diskSize: UInt64
    /// A zram comp_algorithm name: lzo-rle, lzo, lz4, lz4hc, zstd or deflate.
    public var algorithm: String = DeviceSpec.defaultAlgorithm
    /// The CLI's default (serve, ctl add): lz4, the fastest; config files get the kernel's lzo-rle.
    public static let defaultAlgorithm = CompressionAlgorithm.lz4.rawValue
    /// Compression level (lz4: acceleration); nil = the algorithm's default.
    public var level: Int32?
    /// algorithm_params' `dict=` (an absolute path, read when the device is made) and
    /// `deflate.winbits=` for the primary algorithm; nil = none, the kernel's default.
    public var dictionary: String?
    public var windowBits: Int32?
    /// zstd.compact (beyond the kernel): zstd frames without magic, dictionary ID, content size.
    public var compactFrames: Bool?
    /// zsmalloc pages per zspage, in `chainSizes` (4...16).
    public var chainSize: Int = 8
    /// Pool limit in bytes (zram's mem_limit); 0 = none.
    public var memLimit: UInt64 = 0
    /// Unix socket of the NBD export; nil = none.
    public var socket: String?
    /// TCP "HOST:PORT" of the NBD export; nil = none.
    public var listen: String?
    /// Directory of sysfs-like stats files; nil = none.
    public var statsDir: String?
    public var readOnly = false
    /// The TLS identities (PSK usernames, client certificate CNs or DNs) that may use the export;
    /// nil = every client the socket admits.
    public var tlsIdentities: [String]?
    // Used by the swap/fs setup tools, reported by `ctl DEVICE show`.
    public var swapPriority: Int = 100
    /// "swap" or a mkfs type; nil = swap, or ext2 with a mount point (zram-generator's rule).
    public var fsType: String?
    public var mountPoint: String?
    /// swapon or mount options.
    public var options: String = "discard"
    /// zram's backing_dev (zram-generator's writeback-device): a block device, or a regular file
    /// (created sparse at the disk size if missing, and removed with the device); nil = none.
    public var writebackDevice: String?
    /// zram's writeback_limit (4 KiB pages) and writeback_limit_enable.
    public var writebackLimit: UInt64 = 0
    public var writebackLimitEnable = false
    /// zram's writeback_batch_size (above 0).
    public var writebackBatchSize: UInt32 = 32
    /// zram's compressed_writeback (7.0): pages go to the backing device compressed.
    public var compressedWriteback = false
    /// Beyond the kernel: with compressed writeback, several objects share a backing block.
    public var writebackPacking = false
    /// When the daemon writes back and recompresses on its own (PostProcessor.swift).
    public var postProcessing = PostProcessingPolicy()
    /// recomp-algorithm: zram's secondary algorithms, priority 1, 2, 3 in order, each with an
    /// optional level (`zstd lz4hc(level=9)`).
    public var recompressionAlgorithms: [AlgorithmChoice] = []

    /// An algorithm by name with its algorithm_params (nil = the algorithm's default).
    public struct AlgorithmChoice: Sendable, Equatable {
        public var name: String
        public var level: Int32?
        /// `dict=`: an absolute path, read when the device is made.
        public var dictionary: String?
        /// `deflate.winbits=`.
        public var windowBits: Int32?
        /// `zstd.compact=0|1`.
        public var compactFrames: Bool?
        public init(name: String, level: Int32? = nil, dictionary: String? = nil, windowBits: Int32? = nil,
                    compactFrames: Bool? = nil) {
            self.name = name
            self.level = level
            self.dictionary = dictionary
            self.windowBits = windowBits
            self.compactFrames = compactFrames
        }

        /// "zstd(level=3,dict=/etc/z.dict)": the config file's form.
        public var text: String {
            var p: [String] = []
            if let level { p.append("level=\(level)") }
            if let dictionary { p.append("dict=\(dictionary)") }
            if let windowBits { p.append("deflate.winbits=\(windowBits)") }
            if let compactFrames { p.append("zstd.compact=\(compactFrames ? 1 : 0)") }
            return p.isEmpty ? name : "\(name)(\(p.joined(separator: ",")))"
        }
    }

    /// The primary algorithm as a choice (its name and algorithm_params).
    public var primary: AlgorithmChoice {
        AlgorithmChoice(name: algorithm, level: level, dictionary: dictionary, windowBits: windowBits, compactFrames: compactFrames)
    }

    public struct PostProcessingPolicy: Sendable, Equatable {
        /// writeback-idle-after: write back pages not accessed for this many seconds.
        public var idleAfter: UInt32?
        /// writeback-on-pressure: write back idle pages when PSI reports a memory stall.
        public var onPressure = false
        /// writeback-daily-limit, in 4 KiB pages: writeback_limit refilled to it every 24 hours.
        public var dailyLimitPages: UInt64?
        /// recompress-idle-after: recompress pages not accessed for this many seconds.
        public var recompressIdleAfter: UInt32?
        /// recompress-on-pressure: recompress idle pages when PSI reports a memory stall.
        public var recompressOnPressure = false
        /// recompress-arguments: what the policy's runs echo into `recompress` (default type=idle).
        public var recompressArguments = "type=idle"
        public init() {}
        var writes: Bool { idleAfter != nil || onPressure || dailyLimitPages != nil }
        var recompresses: Bool { recompressIdleAfter != nil || recompressOnPressure }
        var isActive: Bool { writes || recompresses }
    }

    public init(name: String, diskSize: UInt64) {
        self.name = name
        self.diskSize = diskSize
    }

    /// Defaults under /run/zramnbd: the socket `NAME.sock` and the stats directory `NAME/`.
    public static func standard(name: String, diskSize: UInt64, runDir: String = DaemonSettings.runDir) -> DeviceSpec {
        var s = DeviceSpec(name: name, diskSize: diskSize)
        s.socket = runDir + "/" + name + ".sock"
        s.statsDir = runDir + "/" + name
        return s
    }

    /// What the setup tools format the device as.
    public var effectiveFsType: String { fsType ?? (mountPoint == nil ? "swap" : "ext2") }

    public static let algorithms = CompressionAlgorithm.allCases.map(\.rawValue)
    /// zsmalloc's chain sizes, as the device checks them.
    static let chainSizes = ZramConfig.chainSizes

    /// Device names end up in paths and export names: letters, digits, '.', '_', '-', not
    /// starting with '.', at most 64 bytes.
    static func validateName(_ name: String) throws(DaemonError) {
        guard !name.isEmpty, name.utf8.count <= 64, !name.hasPrefix("."),
              name.utf8.allSatisfy({ c in
                  (c >= 0x30 && c <= 0x39) || ((c | 0x20) >= 0x61 && (c | 0x20) <= 0x7a)
                      || c == UInt8(ascii: ".") || c == UInt8(ascii: "_") || c == UInt8(ascii: "-")
              }) else {
            throw .invalidValue("invalid device name '\(name)': use letters, digits, '.', '_' and '-' (at most 64)")
        }
    }

    static func validateAlgorithm(_ name: String) throws(DaemonError) {
        guard algorithms.contains(name) else {
            throw .invalidValue("unknown compression algorithm '\(name)' (supported: \(algorithms.joined(separator: ", ")))")
        }
    }

    static func validateLevel(_ level: Int32, for algorithm: String) throws(DaemonError) {
        let a = CompressionAlgorithm(rawValue: algorithm)
        let range = a?.levelRange ?? 1...1
        if let a, !a.takesLevel, level != a.defaultLevel {
            throw .invalidValue("invalid level \(level): \(algorithm) takes no level")
        }
        guard range.contains(level) else {
            throw .invalidValue("invalid level \(level) for \(algorithm) (\(range.lowerBound)...\(range.upperBound))")
        }
    }

    /// algorithm_params beyond the level: a dictionary for zstd, lz4 and lz4hc only, given as an
    /// absolute path (the daemon's working directory is not the writer's); deflate.winbits for
    /// deflate only, in zlib's range.
    static func validateParameters(_ c: AlgorithmChoice) throws(DaemonError) {
        if let l = c.level { try validateLevel(l, for: c.name) }
        guard let a = CompressionAlgorithm(rawValue: c.name) else { return }
        if let d = c.dictionary {
            guard a.takesDictionary else { throw .invalidValue("dict: \(CodecError.unsupportedParameter(a, "dict"))") }
            guard d.hasPrefix("/") else { throw .invalidValue("dict: '\(d)' is not an absolute path") }
        }
        if let w = c.windowBits {
            guard a == .deflate else { throw .invalidValue("deflate.winbits: \(CodecError.unsupportedParameter(a, "deflate.winbits"))") }
            guard CompressionAlgorithm.validWindowBits(w) else { throw .invalidValue("\(CodecError.invalidWindowBits(w))") }
        }
        if c.compactFrames != nil, a != .zstd {
            throw .invalidValue("zstd.compact: \(CodecError.unsupportedParameter(a, "zstd.compact"))")
        }
    }

    static func validateChainSize(_ n: Int) throws(DaemonError) {
        guard chainSizes.contains(n) else { throw .invalidValue("invalid chain size \(n) (\(chainSizes))") }
    }

    /// Refuses a stats directory another device writes too: the two would overwrite each other's
    /// files, and removing one would delete the other's directory. Nested directories count too
    /// (removing the outer one would take the inner one's entry).
    public func checkStatsDir(against others: [DeviceSpec]) throws(DaemonError) {
        guard let mine = statsDir.map(Self.normalizedPath) else { return }
        for o in others where o.name != name {
            guard let theirs = o.statsDir.map(Self.normalizedPath) else { continue }
            if mine == theirs || mine.hasPrefix(theirs + "/") || theirs.hasPrefix(mine + "/") {
                throw .invalidValue("\(name): stats directory \(statsDir ?? "") collides with \(o.name)'s \(o.statsDir ?? "")")
            }
        }
    }

    /// `path` without repeated or trailing slashes and "." components, for comparing paths.
    static func normalizedPath(_ path: String) -> String {
        let parts = path.split(separator: "/").filter { $0 != "." }
        return (path.hasPrefix("/") ? "/" : "") + parts.joined(separator: "/")
    }

    /// Checks everything a device needs before it is created.
    public func validate() throws(DaemonError) {
        try Self.validateName(name)
        guard diskSize > 0 else { throw .invalidValue("\(name): disk size is 0") }
        guard diskSize <= ByteSize.maximum else {
            throw .invalidValue("\(name): disk size \(diskSize) is too large (at most \(ByteSize.human(ByteSize.maximum)))")
        }
        guard memLimit <= ByteSize.maximum else {
            throw .invalidValue("\(name): mem_limit \(memLimit) is too large (at most \(ByteSize.human(ByteSize.maximum)))")
        }
        try Self.validateAlgorithm(algorithm)
        try Self.validateParameters(primary)
        try Self.validateChainSize(chainSize)
        if let listen { _ = try HostPort.parse(listen) }
        if let ids = tlsIdentities, ids.isEmpty || ids.contains(where: \.isEmpty) {
            throw .invalidValue("\(name): tls-identities needs at least one name")
        }
        if let w = writebackDevice, !w.hasPrefix("/") {
            throw .invalidValue("\(name): writeback-device '\(w)' is not an absolute path")
        }
        guard writebackBatchSize > 0 else { throw .invalidValue("\(name): writeback-batch-size must be above 0") }
        if postProcessing.writes && writebackDevice == nil {
            throw .invalidValue("\(name): writeback-idle-after, writeback-on-pressure and writeback-daily-limit need a writeback-device")
        }
        guard recompressionAlgorithms.count <= 3 else {
            throw .invalidValue("\(name): at most 3 recompression algorithms (priorities 1...3), got \(recompressionAlgorithms.count)")
        }
        for a in recompressionAlgorithms {
            try Self.validateAlgorithm(a.name)
            try Self.validateParameters(a)
        }
        if postProcessing.recompresses && recompressionAlgorithms.isEmpty {
            throw .invalidValue("\(name): recompress-idle-after and recompress-on-pressure need a recomp-algorithm")
        }
        guard (-1...32767).contains(swapPriority) else {
            throw .invalidValue("\(name): swap priority \(swapPriority) is outside -1...32767")
        }
    }
}

/// Daemon-wide settings and the devices to serve.
public struct DaemonSettings: Sendable, Equatable {
    public static let runDir = "/run/zramnbd"
    public static let defaultConfigFile = "/etc/zramnbd.conf"
    public static let defaultControlSocket = runDir + "/control.sock"

    public var devices: [DeviceSpec] = []
    /// nil = no control socket.
    public var controlSocket: String? = DaemonSettings.defaultControlSocket
    /// Seconds between stats refreshes.
    public var statsInterval: Double = 1
    /// node_exporter textfile-collector file; nil = none.
    public var prometheusFile: String?
    /// "HOST:PORT" for an HTTP /metrics endpoint; nil = none.
    public var metricsListen: String?
    /// mlockall + IO_FLUSHER + oom_score_adj (swap safety).
    public var lockMemory = true
    /// Compact the pools when the system stalls on memory (PSI), like zsmalloc's shrinker.
    public var autoCompact = true
    /// Microseconds a streaming NBD connection polls for its next request before sleeping
    /// (NBDServer.Configuration.busyPoll; 0 = off). Halves QD1 latency across CPUs.
    public var busyPollMicroseconds = 50
    public static let busyPollRange = 0...10_000
    /// Seconds between stats refreshes: at least 0.01 (shorter keeps a CPU busy while idle), at
    /// most a day.
    public static let statsIntervalRange = 0.01...86_400.0

    /// A stats interval as typed (flag or config): seconds > 0 within `statsIntervalRange`.
    static func parseStatsInterval(_ text: String) throws(DaemonError) -> Double {
        guard let d = Double(text.trimmed()), d > 0 else { throw .invalidValue("expected seconds > 0, got '\(text)'") }
        guard statsIntervalRange.contains(d) else {
            throw .invalidValue("'\(text)' is outside \(statsIntervalRangeText) seconds")
        }
        return d
    }

    static let statsIntervalRangeText = "0.01...86400"

    /// Seconds an NBD client may take from connecting to entering transmission
    /// (NBDServer.Configuration.handshakeLimit): idle connections cannot hold the sockets' slots.
    /// 0 = no limit.
    public var handshakeLimitSeconds: Double = 10
    public static let handshakeLimitRange = 0.0...3600.0
    /// Bytes all NBD connections together may hold in big request buffers (over 256 KiB;
    /// NBDServer.Configuration.payloadBudget): past it they wait instead of allocating.
    public var payloadBudgetBytes: UInt64 = 256 << 20
    public var tls = TLSSettings()
    public static let payloadBudgetMax: UInt64 = 1 << 40

    public init() {}

    public func validate() throws(DaemonError) {
        var names = Set<String>()
        var sockets = Set<String>()
        for (i, d) in devices.enumerated() {
            try d.validate()
            guard names.insert(d.name).inserted else { throw .invalidValue("device '\(d.name)' is configured twice") }
            if let s = d.socket, !sockets.insert(s).inserted {
                throw .invalidValue("socket \(s) is used by two devices")
            }
            try d.checkStatsDir(against: Array(devices[..<i]))
            try tls.check(d)
        }
        try tls.validate()
        guard DaemonSettings.statsIntervalRange.contains(statsInterval) else {
            throw .invalidValue("invalid stats interval \(statsInterval) (seconds, \(DaemonSettings.statsIntervalRangeText))")
        }
        if let m = metricsListen { _ = try HostPort.parse(m) }
        guard DaemonSettings.busyPollRange.contains(busyPollMicroseconds) else {
            throw .invalidValue("invalid busy poll \(busyPollMicroseconds) µs (0...10000)")
        }
        guard DaemonSettings.handshakeLimitRange.contains(handshakeLimitSeconds) else {
            throw .invalidValue("invalid handshake limit \(handshakeLimitSeconds) s (0...3600, 0 = none)")
        }
        guard payloadBudgetBytes <= DaemonSettings.payloadBudgetMax else {
            throw .invalidValue("invalid payload budget \(payloadBudgetBytes) bytes (at most 1T)")
        }
    }
}

/// "HOST:PORT", "[v6]:PORT" or ":PORT" (all addresses).
public struct HostPort: Sendable, Equatable {
    public var host: String
    public var port: UInt16

    public static func parse(_ text: String) throws(DaemonError) -> HostPort {
        var host: Substring
        var portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { throw .invalidValue("invalid address '\(text)': missing ']'") }
            host = text[text.index(after: text.startIndex)..<close]
            let after = text[text.index(after: close)...]
            guard after.hasPrefix(":") else { throw .invalidValue("invalid address '\(text)': expected HOST:PORT") }
            portText = after.dropFirst()
        } else {
            guard let colon = text.lastIndex(of: ":") else {
                throw .invalidValue("invalid address '\(text)': expected HOST:PORT")
            }
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
        }
        guard let port = UInt16(portText), port > 0 else {
            throw .invalidValue("invalid address '\(text)': bad port '\(portText)'")
        }
        if host.isEmpty { host = "0.0.0.0" }
        return HostPort(host: String(host), port: port)
    }
}
