// NBD wire constants (fixed newstyle protocol, all big-endian on the wire).
// Source: NetworkBlockDevice/nbd doc/proto.md; summary in shared/docs/nbd.md §1.1.

/// Magic numbers and fixed sizes of the protocol.
public enum Wire {
    public static let nbdMagic: UInt64 = 0x4e42_444d_4147_4943        // "NBDMAGIC"
    public static let optionMagic: UInt64 = 0x4948_4156_454f_5054     // "IHAVEOPT"
    public static let optionReplyMagic: UInt64 = 0x0003_e889_0455_65a9
    public static let requestMagic: UInt32 = 0x2560_9513
    public static let simpleReplyMagic: UInt32 = 0x6744_6698
    public static let structuredReplyMagic: UInt32 = 0x668e_33ef

    public static let helloSize = 18
    public static let clientFlagsSize = 4
    public static let optionHeaderSize = 16
    public static let optionReplyHeaderSize = 20
    public static let requestSize = 28
    public static let simpleReplySize = 16
    public static let chunkHeaderSize = 20
    /// EXPORT_NAME's reply pads with this many zeros unless both sides agreed on NO_ZEROES.
    public static let exportNameZeroPad = 124
    /// Longest string (export name, description, message) the spec allows.
    public static let maxStringLength = 4096
}

/// Handshake flags the server sends in its hello, and the client flags it answers with.
public struct HandshakeFlags: OptionSet, Sendable {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    public static let fixedNewstyle = HandshakeFlags(rawValue: 1 << 0)
    public static let noZeroes = HandshakeFlags(rawValue: 1 << 1)
}

/// NBD_OPT_* codes.
public enum OptionCode: UInt32, Sendable, CaseIterable {
    case exportName = 1
    case abort = 2
    case list = 3
    case peekExport = 4
    case startTLS = 5
    case info = 6
    case go = 7
    case structuredReply = 8
    case listMetaContext = 9
    case setMetaContext = 10
    case extendedHeaders = 11

    /// The spec's name, for log lines.
    public static func name(_ code: UInt32) -> String {
        switch OptionCode(rawValue: code) {
        case .exportName: return "NBD_OPT_EXPORT_NAME"
        case .abort: return "NBD_OPT_ABORT"
        case .list: return "NBD_OPT_LIST"
        case .peekExport: return "NBD_OPT_PEEK_EXPORT"
        case .startTLS: return "NBD_OPT_STARTTLS"
        case .info: return "NBD_OPT_INFO"
        case .go: return "NBD_OPT_GO"
        case .structuredReply: return "NBD_OPT_STRUCTURED_REPLY"
        case .listMetaContext: return "NBD_OPT_LIST_META_CONTEXT"
        case .setMetaContext: return "NBD_OPT_SET_META_CONTEXT"
        case .extendedHeaders: return "NBD_OPT_EXTENDED_HEADERS"
        case nil: return "option \(code)"
        }
    }
}

/// NBD_REP_* option reply types; errors have bit 31 set.
public enum OptionReplyType: UInt32, Sendable, CaseIterable {
    case ack = 1
    case server = 2
    case info = 3
    case metaContext = 4
    case errUnsupported = 0x8000_0001
    case errPolicy = 0x8000_0002
    case errInvalid = 0x8000_0003
    case errPlatform = 0x8000_0004
    case errTLSRequired = 0x8000_0005
    case errUnknown = 0x8000_0006
    case errShutdown = 0x8000_0007
    case errBlockSizeRequired = 0x8000_0008
    case errTooBig = 0x8000_0009
    case errExtendedHeaderRequired = 0x8000_000a

    public var isError: Bool { rawValue & 0x8000_0000 != 0 }

    public var name: String {
        switch self {
        case .ack: return "NBD_REP_ACK"
        case .server: return "NBD_REP_SERVER"
        case .info: return "NBD_REP_INFO"
        case .metaContext: return "NBD_REP_META_CONTEXT"
        case .errUnsupported: return "NBD_REP_ERR_UNSUP"
        case .errPolicy: return "NBD_REP_ERR_POLICY"
        case .errInvalid: return "NBD_REP_ERR_INVALID"
        case .errPlatform: return "NBD_REP_ERR_PLATFORM"
        case .errTLSRequired: return "NBD_REP_ERR_TLS_REQD"
        case .errUnknown: return "NBD_REP_ERR_UNKNOWN"
        case .errShutdown: return "NBD_REP_ERR_SHUTDOWN"
        case .errBlockSizeRequired: return "NBD_REP_ERR_BLOCK_SIZE_REQD"
        case .errTooBig: return "NBD_REP_ERR_TOO_BIG"
        case .errExtendedHeaderRequired: return "NBD_REP_ERR_EXT_HEADER_REQD"
        }
    }
}

/// NBD_INFO_* items of NBD_REP_INFO.
public enum InfoType: UInt16, Sendable, CustomStringConvertible {
    case export = 0
    case name = 1
    case description = 2
    case blockSize = 3

    public var description: String {
        switch self {
        case .export: return "NBD_INFO_EXPORT"
        case .name: return "NBD_INFO_NAME"
        case .description: return "NBD_INFO_DESCRIPTION"
        case .blockSize: return "NBD_INFO_BLOCK_SIZE"
        }
    }
}

/// Transmission flags (u16) sent with the export size.
public struct TransmissionFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    public static let hasFlags = TransmissionFlags(rawValue: 1 << 0)
    public static let readOnly = TransmissionFlags(rawValue: 1 << 1)
    public static let sendFlush = TransmissionFlags(rawValue: 1 << 2)
    public static let sendFUA = TransmissionFlags(rawValue: 1 << 3)
    public static let rotational = TransmissionFlags(rawValue: 1 << 4)
    public static let sendTrim = TransmissionFlags(rawValue: 1 << 5)
    public static let sendWriteZeroes = TransmissionFlags(rawValue: 1 << 6)
    public static let sendDF = TransmissionFlags(rawValue: 1 << 7)
    public static let canMultiConn = TransmissionFlags(rawValue: 1 << 8)
    public static let sendResize = TransmissionFlags(rawValue: 1 << 9)
    public static let sendCache = TransmissionFlags(rawValue: 1 << 10)
    public static let sendFastZero = TransmissionFlags(rawValue: 1 << 11)
    public static let blockStatusPayload = TransmissionFlags(rawValue: 1 << 12)
}

/// NBD_CMD_* request types.
public enum CommandType: UInt16, Sendable {
    case read = 0
    case write = 1
    case disconnect = 2
    case flush = 3
    case trim = 4
    case cache = 5
    case writeZeroes = 6
    case blockStatus = 7

    public static func name(_ type: UInt16) -> String {
        switch CommandType(rawValue: type) {
        case .read: return "NBD_CMD_READ"
        case .write: return "NBD_CMD_WRITE"
        case .disconnect: return "NBD_CMD_DISC"
        case .flush: return "NBD_CMD_FLUSH"
        case .trim: return "NBD_CMD_TRIM"
        case .cache: return "NBD_CMD_CACHE"
        case .writeZeroes: return "NBD_CMD_WRITE_ZEROES"
        case .blockStatus: return "NBD_CMD_BLOCK_STATUS"
        case nil: return "command \(type)"
        }
    }
}

/// NBD_CMD_FLAG_* request flags.
public struct CommandFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    public static let fua = CommandFlags(rawValue: 1 << 0)
    public static let noHole = CommandFlags(rawValue: 1 << 1)
    public static let dontFragment = CommandFlags(rawValue: 1 << 2)
    public static let reqOne = CommandFlags(rawValue: 1 << 3)
    public static let fastZero = CommandFlags(rawValue: 1 << 4)
    public static let payloadLength = CommandFlags(rawValue: 1 << 5)
}

/// NBD_REPLY_TYPE_* structured reply chunk types.
public enum ChunkType: UInt16, Sendable {
    case none = 0
    case offsetData = 1
    case offsetHole = 2
    case blockStatus = 5
    case error = 0x8001
    case errorOffset = 0x8002
}

/// Structured reply chunk flags.
public enum ChunkFlags {
    public static let done: UInt16 = 1 << 0
}

/// Allocation states of the base:allocation meta context.
public struct ExtentFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    /// Not allocated (never written or trimmed).
    public static let hole = ExtentFlags(rawValue: 1 << 0)
    /// Reads as zeros.
    public static let zero = ExtentFlags(rawValue: 1 << 1)
    /// Plain data.
    public static let data: ExtentFlags = []
    /// Never written or trimmed: HOLE|ZERO.
    public static let unallocated = ExtentFlags(rawValue: 3)
}

/// The only meta context we serve.
public enum MetaContext {
    public static let baseAllocation = "base:allocation"
    /// Context id handed out by SET_META_CONTEXT (any nonzero value works; nbdkit uses 1 too).
    public static let baseAllocationID: UInt32 = 1
}

/// Block size constraints we advertise (min 1 so that 512-byte I/O through nbdfuse+loop works;
/// max 32 MiB like qemu-nbd and the kernel's largest request).
public enum BlockSize {
    public static let minimum: UInt32 = 1
    public static let preferred: UInt32 = 4096
    public static let maximumPayload: UInt32 = 32 << 20
}
