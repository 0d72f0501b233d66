// The two words the pool packs: a handle (what zs_malloc returns) and an object's location (what a
// handle entry holds). Each is built and taken apart only here.

/// A stable reference to an object in the pool; compaction moves objects but never changes handles.
/// Never 0. See `ZsHandleCoding` for its bits: a handle finds its class without a lookup.
public typealias ZsHandle = UInt64

/// A handle's bits: the class position (the class's index in the pool's table) in bits 40 and up,
/// and below them the index of the class's handle entry plus one (so no handle is 0).
enum ZsHandleCoding {
    static let entryBits: UInt64 = 40
    static let entryMask: UInt64 = (1 << entryBits) - 1

    @inline(__always) static func encode(classPosition: Int, entry: UInt64) -> ZsHandle {
        (UInt64(classPosition) << entryBits) | (entry + 1)
    }

    /// The position of the handle's class in the pool's class table.
    @inline(__always) static func classPosition(of handle: ZsHandle) -> Int {
        Int(truncatingIfNeeded: handle >> entryBits)
    }

    /// The index of the handle's entry in its class's handle table.
    @inline(__always) static func entry(of handle: ZsHandle) -> Int {
        Int((handle & entryMask) - 1)
    }
}

/// Where an object lives inside its class: zspage id in the high 32 bits, object index in the low
/// 32 (the object's offset in the zspage is index * class size). What a live handle entry holds.
struct ObjectLocation: RawRepresentable, Equatable {
    var rawValue: UInt64

    @inline(__always) init(rawValue: UInt64) { self.rawValue = rawValue }

    @inline(__always) init(zspage: UInt32, object: Int) {
        rawValue = UInt64(zspage) << 32 | UInt64(object)
    }

    @inline(__always) var zspage: UInt32 { UInt32(truncatingIfNeeded: rawValue >> 32) }
    @inline(__always) var object: Int { Int(rawValue & 0xffff_ffff) }
}

/// The word the page map holds for an owned pool page (0 for a free one): what a successor needs
/// to regroup pages into zspages. Bit 63 set; the class position in bits 48...55, the page's
/// index in its zspage in bits 40...47, and below them the zspage id, or for the huge class (one
/// page, one object, no object header) the object's handle entry.
enum PageOwner {
    static let owned: UInt64 = 1 << 63
    static let idMask: UInt64 = (1 << 40) - 1

    @inline(__always) static func encode(classPosition: Int, index: Int, id: UInt64) -> UInt64 {
        owned | UInt64(truncatingIfNeeded: classPosition & 0xff) << 48 | UInt64(truncatingIfNeeded: index & 0xff) << 40 | id & idMask
    }

    @inline(__always) static func classPosition(_ word: UInt64) -> Int { Int(truncatingIfNeeded: (word >> 48) & 0xff) }
    @inline(__always) static func index(_ word: UInt64) -> Int { Int(truncatingIfNeeded: (word >> 40) & 0xff) }
    @inline(__always) static func id(_ word: UInt64) -> UInt64 { word & idMask }
    /// Bits no encoder sets: a word with any of them is not a page map entry.
    @inline(__always) static func isWellFormed(_ word: UInt64) -> Bool { word & (0x7f << 56) == 0 && word & owned != 0 }
}
