// What a connection settles during negotiation: the caps that bound it, and the session it
// enters transmission with.

/// Caps that keep an unauthenticated client from costing us anything.
public struct NegotiationLimits: Sendable {
    /// Options per connection before we hang up (nbdkit: 32); a LIST adds this many per export
    /// so that a client can still INFO every export it was shown.
    public var maxOptions: Int = 32
    /// Longest option payload we read; longer ones close the connection without reading.
    public var maxOptionLength: Int = 16 << 10

    public init(maxOptions: Int = 32, maxOptionLength: Int = 16 << 10) {
        self.maxOptions = maxOptions
        self.maxOptionLength = maxOptionLength
    }
}

/// What a client agreed on when it entered transmission.
public struct Session: Sendable {
    public let export: Export
    public let size: UInt64
    public let flags: TransmissionFlags
    public let structuredReplies: Bool
    /// Id of base:allocation if the client selected it for this export, else nil.
    public let metaContextID: UInt32?
    public let capabilities: BackendCapabilities

    public init(export: Export, structuredReplies: Bool, metaContextID: UInt32?) {
        self.export = export
        size = export.backend.size
        capabilities = export.backend.capabilities
        flags = Session.transmissionFlags(capabilities: capabilities, readOnly: export.readOnly,
                                          structuredReplies: structuredReplies)
        self.structuredReplies = structuredReplies
        self.metaContextID = metaContextID
    }

    /// Export flags, derived once from what the backend can do (0xded with structured replies,
    /// 0xd6d without, for a backend that can do everything).
    public static func transmissionFlags(capabilities c: BackendCapabilities, readOnly: Bool,
                                         structuredReplies: Bool) -> TransmissionFlags {
        var f: TransmissionFlags = [.hasFlags]
        if readOnly { f.insert(.readOnly) }
        if c.contains(.flush) { f.insert(.sendFlush) }
        if !readOnly {
            if c.contains(.fua) { f.insert(.sendFUA) }
            if c.contains(.trim) { f.insert(.sendTrim) }
            if c.contains(.zero) {
                f.insert(.sendWriteZeroes)
                if c.contains(.fastZero) { f.insert(.sendFastZero) }
            }
        }
        if structuredReplies { f.insert(.sendDF) }
        if c.contains(.multiConn) { f.insert(.canMultiConn) }
        if c.contains(.cache) { f.insert(.sendCache) }
        return f
    }
}
