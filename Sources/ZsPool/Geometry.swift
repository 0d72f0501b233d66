// Size-class geometry of mm/zsmalloc.c (Linux 6.3+ through 6.18), decided once at pool creation.
// The hot path only indexes these tables (zs_create_pool does the same).

import Posix

/// Every allocated, non-huge object starts with an 8-byte header holding its handle (ZS_HANDLE_SIZE).
public let zsHandleSize = 8
/// Smallest class size, class step, and number of nominal classes (ZS_SIZE_CLASSES).
public let zsMinAllocSize = 32
public let zsSizeClassDelta = 16
public let zsNominalClassCount = (pageSize - zsMinAllocSize + zsSizeClassDelta - 1) / zsSizeClassDelta + 1 // 255
/// Fullness groups: 0 (empty), 1...10 (by tenths of in-use ratio), 11 (full).
public let zsFullnessGroups = 12
let zsInuseRatio0 = 0
let zsInuseRatio10 = 1
let zsInuseRatio99 = 10
let zsInuseRatio100 = 11

/// One distinct size class: a run of nominal classes merged into its largest member.
public struct ZsClassInfo: Sendable, Equatable {
    /// Nominal index of the class (the largest index of its merged run, as the kernel reports it).
    public let index: Int
    public let size: Int
    public let pagesPerZspage: Int
    public let objsPerZspage: Int
    /// Lowest nominal index served by this class.
    public let firstIndex: Int
    /// A huge zspage holds one page-sized object whose handle lives outside the object.
    public var isHuge: Bool { pagesPerZspage == 1 && objsPerZspage == 1 }
}

public struct ZsGeometry: Sendable {
    public let chainSize: Int
    /// Distinct classes in ascending index order.
    public let classes: [ZsClassInfo]
    /// For each nominal index 0...254, the position of its serving class in `classes`.
    public let positionForIndex: [Int]
    /// zs_huge_class_size(): compressed lengths at or above it are stored raw by zram.
    public let hugeClassSize: Int

    /// Valid zspage chain sizes (CONFIG_ZSMALLOC_CHAIN_SIZE).
    public static let chainSizes = 4...16

    public init(chainSize: Int) {
        precondition(ZsGeometry.chainSizes.contains(chainSize), "zspage chain size must be in \(ZsGeometry.chainSizes)")
        self.chainSize = chainSize
        var built: [ZsClassInfo] = []       // descending while building
        var positionDescending = [Int](repeating: -1, count: zsNominalClassCount)
        var huge = 0
        // Walk from the largest class down: merging needs the next larger class (zs_create_pool).
        for i in stride(from: zsNominalClassCount - 1, through: 0, by: -1) {
            let size = min(zsMinAllocSize + i * zsSizeClassDelta, pageSize)
            let pages = ZsGeometry.zspageChainSize(classSize: size, chainSize: chainSize)
            let objs = pages * pageSize / size
            if pages != 1 && objs != 1 && huge == 0 {
                // The first non-huge class met from the top; zs_malloc adds the header before lookup.
                huge = size - (zsHandleSize - 1)
            }
            if let prev = built.last, prev.pagesPerZspage == pages, prev.objsPerZspage == objs {
                built[built.count - 1] = ZsClassInfo(index: prev.index, size: prev.size,
                                                     pagesPerZspage: pages, objsPerZspage: objs, firstIndex: i)
                positionDescending[i] = built.count - 1
                continue
            }
            built.append(ZsClassInfo(index: i, size: size, pagesPerZspage: pages, objsPerZspage: objs, firstIndex: i))
            positionDescending[i] = built.count - 1
        }
        let n = built.count
        classes = built.reversed()
        positionForIndex = positionDescending.map { n - 1 - $0 }
        hugeClassSize = huge
    }

    /// calculate_zspage_chain_size(): the page count (1...chain) with the least tail waste; ties go to
    /// fewer pages; powers of two use one page.
    public static func zspageChainSize(classSize size: Int, chainSize: Int) -> Int {
        if size & (size - 1) == 0 { return 1 }
        var best = 1
        var bestWaste = Int.max
        for pages in 1...chainSize {
            let waste = (pages * pageSize) % size
            if waste < bestWaste { bestWaste = waste; best = pages }
        }
        return best
    }

    /// get_size_class_index(): nominal index for an object of `size` bytes (header included).
    @inline(__always)
    public static func nominalIndex(forSize size: Int) -> Int {
        let idx = size > zsMinAllocSize ? (size - zsMinAllocSize + zsSizeClassDelta - 1) / zsSizeClassDelta : 0
        return min(zsNominalClassCount - 1, idx)
    }

    /// zs_lookup_class_index(): the index of the class that serves `size` (no header added, as in the kernel).
    public func lookupClassIndex(_ size: Int) -> Int {
        classes[positionForIndex[ZsGeometry.nominalIndex(forSize: size)]].index
    }

    /// The position in `classes` of the class an allocation of `size` payload bytes lands in
    /// (zs_malloc adds the header first).
    @inline(__always)
    public func classPosition(forAllocation size: Int) -> Int {
        positionForIndex[ZsGeometry.nominalIndex(forSize: size + zsHandleSize)]
    }
}
