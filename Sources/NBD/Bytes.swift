// Big-endian field access. The hot path stores into raw memory; negotiation (rare, small) builds
// byte arrays, which is simpler to test.

extension UnsafeMutableRawPointer {
    @inline(__always) func storeBE(_ v: UInt16, at offset: Int) {
        storeBytes(of: v.bigEndian, toByteOffset: offset, as: UInt16.self)
    }
    @inline(__always) func storeBE(_ v: UInt32, at offset: Int) {
        storeBytes(of: v.bigEndian, toByteOffset: offset, as: UInt32.self)
    }
    @inline(__always) func storeBE(_ v: UInt64, at offset: Int) {
        storeBytes(of: v.bigEndian, toByteOffset: offset, as: UInt64.self)
    }
}

extension UnsafeRawPointer {
    @inline(__always) func loadBE(_: UInt16.Type, at offset: Int) -> UInt16 {
        UInt16(bigEndian: loadUnaligned(fromByteOffset: offset, as: UInt16.self))
    }
    @inline(__always) func loadBE(_: UInt32.Type, at offset: Int) -> UInt32 {
        UInt32(bigEndian: loadUnaligned(fromByteOffset: offset, as: UInt32.self))
    }
    @inline(__always) func loadBE(_: UInt64.Type, at offset: Int) -> UInt64 {
        UInt64(bigEndian: loadUnaligned(fromByteOffset: offset, as: UInt64.self))
    }
}

/// Appends big-endian fields to a byte array.
struct ByteWriter {
    var bytes: [UInt8] = []

    mutating func u16(_ v: UInt16) { withUnsafeBytes(of: v.bigEndian) { bytes += $0 } }
    mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.bigEndian) { bytes += $0 } }
    mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.bigEndian) { bytes += $0 } }
    mutating func raw<C: Collection>(_ b: C) where C.Element == UInt8 { bytes += b }
    mutating func zeros(_ n: Int) { bytes += repeatElement(0, count: n) }
}

/// Reads big-endian fields from a byte slice; every read is bounds checked and returns nil past
/// the end, so malformed client data can never read out of bounds.
struct ByteReader {
    private let bytes: ArraySlice<UInt8>
    private(set) var position: Int

    init(_ bytes: ArraySlice<UInt8>) {
        self.bytes = bytes
        position = bytes.startIndex
    }

    var remaining: Int { bytes.endIndex - position }

    mutating func u16() -> UInt16? { integer(UInt16.self) }
    mutating func u32() -> UInt32? { integer(UInt32.self) }
    mutating func u64() -> UInt64? { integer(UInt64.self) }

    mutating func bytes(_ n: Int) -> ArraySlice<UInt8>? {
        guard n >= 0, n <= remaining else { return nil }
        defer { position += n }
        return bytes[position..<(position + n)]
    }

    private mutating func integer<T: FixedWidthInteger>(_: T.Type) -> T? {
        guard let b = bytes(MemoryLayout<T>.size) else { return nil }
        return b.reduce(T(0)) { $0 << 8 | T($1) }
    }
}
