/// What a backend can do; the server turns this into transmission flags once per connection.
public struct BackendCapabilities: OptionSet, Sendable, Hashable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let flush = BackendCapabilities(rawValue: 1 << 0)
    public static let fua = BackendCapabilities(rawValue: 1 << 1)
    public static let trim = BackendCapabilities(rawValue: 1 << 2)
    public static let zero = BackendCapabilities(rawValue: 1 << 3)
    /// `zero(..., fast: true)` is cheaper than writing zeros.
    public static let fastZero = BackendCapabilities(rawValue: 1 << 4)
    public static let cache = BackendCapabilities(rawValue: 1 << 5)
    /// One store shared by all connections, no per-connection cache: FLUSH/FUA on one connection
    /// make writes from every connection durable.
    public static let multiConn = BackendCapabilities(rawValue: 1 << 6)
    /// `blockStatus` reports real holes and zero ranges (else every range is data). With it the
    /// server answers reads of zero ranges with OFFSET_HOLE chunks instead of data.
    public static let extents = BackendCapabilities(rawValue: 1 << 7)

    public static let all: BackendCapabilities = [.flush, .fua, .trim, .zero, .fastZero, .cache,
                                                  .multiConn, .extents]
}

/// A block device the server exports. Implementations must be thread-safe: the server calls
/// them concurrently from several threads (each connection runs on its own thread, and many
/// connections share a backend). Offsets and lengths are validated against `size` before
/// any call. Errors are `NBDError.request(errno, message:)`; the message reaches clients that
/// negotiated structured replies.
public protocol BlockBackend: AnyObject, Sendable {
    /// Size in bytes; asked once when a client selects the export. Keep it a multiple of 4096.
    var size: UInt64 { get }
    var capabilities: BackendCapabilities { get }

    /// Fills `length` bytes at `buffer` with the contents at `offset`.
    func read(into buffer: UnsafeMutableRawPointer, offset: UInt64, length: Int) throws(NBDError)
    /// `read`, except that ranges the backend knows read as zeros may be left unfilled and
    /// reported instead: `zero(start, length)`, `start` relative to `buffer`, in ascending order,
    /// not overlapping. Structured READs send those ranges as OFFSET_HOLE chunks, so a backend
    /// with `.extents` answers them in the same pass that reads the data.
    func read(into buffer: UnsafeMutableRawPointer, offset: UInt64, length: Int,
              reportingZeroes zero: (_ start: Int, _ length: Int) -> Void) throws(NBDError)
    /// Stores `length` bytes from `buffer` at `offset`; with `fua` it is durable before returning.
    func write(from buffer: UnsafeRawPointer, offset: UInt64, length: Int, fua: Bool) throws(NBDError)
    /// The range is no longer needed; it may read back as anything until rewritten (we free it).
    func trim(offset: UInt64, length: UInt64) throws(NBDError)
    /// Makes the range read as zeros. `mayTrim`: it may be deallocated (no NO_HOLE flag).
    /// `fast`: the client asked for FAST_ZERO; throw `.request(.enotsup)` unless zeroing is
    /// cheaper than writing, and leave the data untouched in that case.
    func zero(offset: UInt64, length: UInt64, mayTrim: Bool, fast: Bool) throws(NBDError)
    /// Every completed write is durable when this returns.
    func flush() throws(NBDError)
    /// Hint that the range will be read soon; must not change contents.
    func cache(offset: UInt64, length: UInt64) throws(NBDError)
    /// Reports the allocation of [offset, offset+length) as consecutive runs from `offset` on:
    /// `body(length, flags)` per run (merge equal neighbours; no allocation needed). Stop when
    /// `body` returns false or the range is covered. The last run may extend past the range.
    func blockStatus(offset: UInt64, length: UInt64,
                     _ body: (_ length: UInt64, _ flags: ExtentFlags) -> Bool) throws(NBDError)
}

extension BlockBackend {
    public var capabilities: BackendCapabilities { .all }
    public func read(into buffer: UnsafeMutableRawPointer, offset: UInt64, length: Int,
                     reportingZeroes zero: (_ start: Int, _ length: Int) -> Void) throws(NBDError) {
        try read(into: buffer, offset: offset, length: length)
    }
    public func flush() throws(NBDError) {}
    public func cache(offset: UInt64, length: UInt64) throws(NBDError) {}
    public func blockStatus(offset: UInt64, length: UInt64,
                            _ body: (_ length: UInt64, _ flags: ExtentFlags) -> Bool) throws(NBDError) {
        _ = body(length, .data)
    }
}

/// One named export: a backend plus how it is presented.
public struct Export: Sendable {
    public var name: String
    public var description: String
    public var backend: any BlockBackend
    public var readOnly: Bool
    /// Who may use it beyond the listener's TLS mode (an extension of nbdkit's rules): nil lets
    /// in anyone the listener does; a list only TLS peers authenticated under one of the names
    /// (PSK username, certificate DN or CN). Everyone else is refused it and LIST hides it.
    public var allowedPeers: [String]?
    /// What its connections served (counted by the connections, read by anyone).
    public let statistics: ExportStatistics

    public init(name: String, description: String = "", backend: any BlockBackend, readOnly: Bool = false,
                allowedPeers: [String]? = nil, statistics: ExportStatistics = ExportStatistics()) {
        self.statistics = statistics
        self.name = name
        self.description = description
        self.backend = backend
        self.readOnly = readOnly
        self.allowedPeers = allowedPeers
    }
}

/// The exports a server offers. The empty name "" selects `defaultExport`.
public struct ExportCatalog: Sendable {
    public private(set) var exports: [Export]
    /// Name of the export that "" maps to; nil if "" is not served (unless an export is named "").
    public let defaultExport: String?

    public init(_ exports: [Export], defaultExport: String? = nil) throws(NBDError) {
        var seen = Set<String>()
        for e in exports {
            guard seen.insert(e.name).inserted else {
                throw .invalidConfiguration("export '\(e.name)' is configured twice")
            }
            guard e.name.utf8.count <= Wire.maxStringLength, e.description.utf8.count <= Wire.maxStringLength,
                  !e.name.utf8.contains(0) else {
                throw .invalidConfiguration("export name or description of '\(e.name)' is not a valid NBD string")
            }
        }
        if let d = defaultExport, !seen.contains(d) {
            throw .invalidConfiguration("default export '\(d)' is not configured")
        }
        self.exports = exports
        self.defaultExport = defaultExport
    }

    /// The export a client asking for `name` gets.
    public func lookup(_ name: String) -> Export? {
        if let e = exports.first(where: { $0.name == name }) { return e }
        if name.isEmpty, let d = defaultExport { return exports.first { $0.name == d } }
        return nil
    }
}
