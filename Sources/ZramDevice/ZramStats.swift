/// Every counter of one device at one moment, in zram's units (bytes for *_size/mem_*, pages for
/// the page counts). The `*Text` properties print the kernel's sysfs files byte for byte.
public struct ZramStats: Sendable, Equatable {
    public var diskSize: UInt64 = 0
    // mm_stat
    public var origDataSize: UInt64 = 0
    public var comprDataSize: UInt64 = 0
    public var memUsedTotal: UInt64 = 0
    public var memLimit: UInt64 = 0
    public var memUsedMax: UInt64 = 0
    public var samePages: UInt64 = 0
    public var pagesCompacted: UInt64 = 0
    public var hugePages: UInt64 = 0
    public var hugePagesSince: UInt64 = 0
    // io_stat (failed_* count requests, as the kernel counts bios)
    public var failedReads: UInt64 = 0
    public var failedWrites: UInt64 = 0
    public var notifyFree: UInt64 = 0
    // debug_stat
    public var missFree: UInt64 = 0
    // bd_stat: always zero, there is no writeback device
    public var bdCount: UInt64 = 0
    public var bdReads: UInt64 = 0
    public var bdWrites: UInt64 = 0

    public init() {}

    /// Pages holding data (orig_data_size / 4096).
    public var pagesStored: UInt64 { origDataSize / 4096 }

    /// `/sys/block/zramN/mm_stat`.
    public var mmStatText: String {
        printfColumns([origDataSize, comprDataSize, memUsedTotal, memLimit, memUsedMax,
                       samePages, pagesCompacted, hugePages, hugePagesSince])
    }

    /// `/sys/block/zramN/io_stat`: failed_reads failed_writes, a literal 0 (invalid_io is gone), notify_free.
    public var ioStatText: String {
        rightAligned(failedReads, width: 8) + " " + rightAligned(failedWrites, width: 8) + " 0 " + rightAligned(notifyFree, width: 8) + "\n"
    }

    /// `/sys/block/zramN/debug_stat` in its 6.15+ form (writestall removed, printed as 0).
    public var debugStatText: String { "version: 1\n0 " + rightAligned(missFree, width: 8) + "\n" }

    /// `/sys/block/zramN/bd_stat`.
    public var bdStatText: String { printfColumns([bdCount, bdReads, bdWrites]) }
}

/// C printf's `%<width>llu`: right-aligned in `width` columns; wider numbers just grow.
public func rightAligned(_ v: UInt64, width: Int) -> String {
    let digits = String(v)
    let pad = width - digits.utf8.count
    return pad > 0 ? String(repeating: " ", count: pad) + digits : digits
}

/// Fields as `%8llu` separated by single spaces, then a newline.
func printfColumns(_ values: [UInt64]) -> String {
    var s = ""
    for (i, v) in values.enumerated() {
        if i > 0 { s += " " }
        s += rightAligned(v, width: 8)
    }
    return s + "\n"
}
