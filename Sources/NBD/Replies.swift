// Reply encoders: they write headers into raw memory and return the byte count; payload data is
// sent from where it already is (no copy). Layouts: shared/docs/nbd.md §1.1 and §1.7.

/// Simple replies: the only kind the kernel client understands.
public enum SimpleReply {
    public static let size = Wire.simpleReplySize

    @inline(__always)
    public static func encode(into p: UnsafeMutableRawPointer, error: NBDErrno?, cookie: UInt64) -> Int {
        p.storeBE(Wire.simpleReplyMagic, at: 0)
        p.storeBE(error?.rawValue ?? 0, at: 4)
        p.storeBytes(of: cookie, toByteOffset: 8, as: UInt64.self)
        return size
    }
}

/// Structured reply chunks.
public enum StructuredReply {
    public static let offsetDataHeaderSize = Wire.chunkHeaderSize + 8
    public static let offsetHoleSize = Wire.chunkHeaderSize + 12
    public static let blockStatusHeaderSize = Wire.chunkHeaderSize + 4
    /// Error texts are cut to this many bytes (the spec asks for ≤256 where possible).
    public static let maxMessageLength = 256
    public static let maxErrorSize = Wire.chunkHeaderSize + 6 + maxMessageLength

    @inline(__always)
    public static func chunkHeader(into p: UnsafeMutableRawPointer, flags: UInt16, type: ChunkType,
                                   cookie: UInt64, length: UInt32) -> Int {
        p.storeBE(Wire.structuredReplyMagic, at: 0)
        p.storeBE(flags, at: 4)
        p.storeBE(type.rawValue, at: 6)
        p.storeBytes(of: cookie, toByteOffset: 8, as: UInt64.self)
        p.storeBE(length, at: 16)
        return Wire.chunkHeaderSize
    }

    /// OFFSET_DATA header; `dataLength` bytes of data follow it.
    @inline(__always)
    public static func offsetData(into p: UnsafeMutableRawPointer, done: Bool, cookie: UInt64,
                                  offset: UInt64, dataLength: Int) -> Int {
        _ = chunkHeader(into: p, flags: done ? ChunkFlags.done : 0, type: .offsetData, cookie: cookie,
                        length: UInt32(8 + dataLength))
        p.storeBE(offset, at: 20)
        return offsetDataHeaderSize
    }

    /// OFFSET_HOLE: `length` bytes at `offset` read as zeros.
    @inline(__always)
    public static func offsetHole(into p: UnsafeMutableRawPointer, done: Bool, cookie: UInt64,
                                  offset: UInt64, length: UInt32) -> Int {
        _ = chunkHeader(into: p, flags: done ? ChunkFlags.done : 0, type: .offsetHole, cookie: cookie, length: 12)
        p.storeBE(offset, at: 20)
        p.storeBE(length, at: 28)
        return offsetHoleSize
    }

    /// BLOCK_STATUS header; `count` descriptors (u32 length, u32 flags) follow it.
    @inline(__always)
    public static func blockStatus(into p: UnsafeMutableRawPointer, cookie: UInt64, contextID: UInt32,
                                   count: Int) -> Int {
        _ = chunkHeader(into: p, flags: ChunkFlags.done, type: .blockStatus, cookie: cookie,
                        length: UInt32(4 + 8 * count))
        p.storeBE(contextID, at: 20)
        return blockStatusHeaderSize
    }

    /// A final ERROR chunk with a message (cut to `maxMessageLength` bytes on a character boundary).
    /// `p` must have room for `maxErrorSize` bytes.
    public static func error(into p: UnsafeMutableRawPointer, cookie: UInt64, error: NBDErrno,
                             message: String) -> Int {
        var length = 0
        var text = message
        text.withUTF8 { utf8 in
            length = min(utf8.count, maxMessageLength)
            // Never cut a multi-byte character: back up over continuation bytes (10xxxxxx).
            while length > 0 && length < utf8.count && utf8[length] & 0xC0 == 0x80 { length -= 1 }
            if length > 0 { (p + Wire.chunkHeaderSize + 6).copyMemory(from: utf8.baseAddress!, byteCount: length) }
        }
        _ = chunkHeader(into: p, flags: ChunkFlags.done, type: .error, cookie: cookie, length: UInt32(6 + length))
        p.storeBE(error.rawValue, at: 20)
        p.storeBE(UInt16(length), at: 24)
        return Wire.chunkHeaderSize + 6 + length
    }
}
