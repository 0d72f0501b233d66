import Posix

/// Every counter of one device at one moment, in zram's units (bytes for *_size/mem_*, pages for
/// the page counts). The `*Text` properties print the kernel's sysfs files byte for byte.
/// `ZramStats.fields` describes each field once for every output (sysfs files, stat.json,
/// `status`, Prometheus): adding a counter is a property here plus its row there.
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
    // bd_stat, in 4 KiB pages (zram's FOUR_K units)
    public var bdCount: UInt64 = 0
    public var bdReads: UInt64 = 0
    public var bdWrites: UInt64 = 0
    // zramnbd's own (no sysfs file): writeback runs, by `ctl writeback` or a policy
    public var writebackRuns: UInt64 = 0
    public var writebackBytesFreed: UInt64 = 0
    // zramnbd's own: recompress runs and what they did
    public var recompressRuns: UInt64 = 0
    public var recompressedPages: UInt64 = 0
    public var recompressBytesSaved: UInt64 = 0

    public init() {}

    /// Pages holding data (orig_data_size / 4096).
    public var pagesStored: UInt64 { origDataSize / UInt64(pageSize) }

    /// `/sys/block/zramN/mm_stat`.
    public var mmStatText: String { printfColumns(values(in: .mmStat)) }

    /// `/sys/block/zramN/io_stat`: failed_reads failed_writes, a literal 0 (invalid_io is gone), notify_free.
    public var ioStatText: String {
        rightAligned(failedReads, width: 8) + " " + rightAligned(failedWrites, width: 8) + " 0 " + rightAligned(notifyFree, width: 8) + "\n"
    }

    /// `/sys/block/zramN/debug_stat` in its 6.15+ form (writestall removed, printed as 0).
    public var debugStatText: String { "version: 1\n0 " + rightAligned(missFree, width: 8) + "\n" }

    /// `/sys/block/zramN/bd_stat`.
    public var bdStatText: String { printfColumns(values(in: .bdStat)) }

    /// The values of the fields shown in `file`, in the table's (the file's) order.
    public func values(in file: ZramStatField.File) -> [UInt64] {
        Self.fields.filter { $0.file == file }.map { self[keyPath: $0.keyPath] }
    }

    /// The counters by sysfs name, in mm_stat/io_stat/debug_stat/bd_stat order (every field but
    /// disksize, which reports the device's size): what stat.json and `status` list.
    public var counters: [(name: String, value: UInt64)] {
        Self.counterFields.map { ($0.name, self[keyPath: $0.keyPath]) }
    }

    public static let counterFields = fields.filter { $0.file != .disksize }

    /// The one table of counters: sysfs name, field, file, Prometheus kind, name and help.
    /// Order matters: it is mm_stat's and bd_stat's column order, and the order of stat.json,
    /// `status` records and the Prometheus file.
    public static let fields: [ZramStatField] = [
        ZramStatField("disksize", \.diskSize, .disksize, .gauge, prometheus: "zramnbd_disksize_bytes",
                      help: "Capacity of the device in uncompressed bytes (disksize)."),
        ZramStatField("orig_data_size", \.origDataSize, .mmStat, .gauge, prometheus: "zramnbd_orig_data_bytes",
                      help: "Uncompressed size of the data stored (DATA, mm_stat orig_data_size)."),
        ZramStatField("compr_data_size", \.comprDataSize, .mmStat, .gauge, prometheus: "zramnbd_compr_data_bytes",
                      help: "Compressed size of the data stored (COMPR, mm_stat compr_data_size)."),
        ZramStatField("mem_used_total", \.memUsedTotal, .mmStat, .gauge, prometheus: "zramnbd_mem_used_total_bytes",
                      help: "Memory used by the allocator, fragmentation included (TOTAL, mm_stat mem_used_total)."),
        ZramStatField("mem_limit", \.memLimit, .mmStat, .gauge, prometheus: "zramnbd_mem_limit_bytes",
                      help: "Limit on mem_used_total, 0 for none (mem_limit)."),
        ZramStatField("mem_used_max", \.memUsedMax, .mmStat, .gauge, prometheus: "zramnbd_mem_used_max_bytes",
                      help: "Peak of mem_used_total since start or the last mem-used-max-reset."),
        ZramStatField("same_pages", \.samePages, .mmStat, .gauge, prometheus: "zramnbd_same_pages",
                      help: "Pages filled with one repeated word, stored without memory (mm_stat same_pages)."),
        ZramStatField("pages_compacted", \.pagesCompacted, .mmStat, .counter, prometheus: "zramnbd_pages_compacted_total",
                      help: "Pages freed by compaction (mm_stat pages_compacted)."),
        ZramStatField("huge_pages", \.hugePages, .mmStat, .gauge, prometheus: "zramnbd_huge_pages",
                      help: "Pages stored uncompressed because they did not compress (mm_stat huge_pages)."),
        ZramStatField("huge_pages_since", \.hugePagesSince, .mmStat, .counter, prometheus: "zramnbd_huge_pages_since_total",
                      help: "Incompressible pages stored since the device was set up (mm_stat huge_pages_since)."),
        ZramStatField("failed_reads", \.failedReads, .ioStat, .counter, prometheus: "zramnbd_failed_reads_total",
                      help: "Read requests that failed (io_stat failed_reads)."),
        ZramStatField("failed_writes", \.failedWrites, .ioStat, .counter, prometheus: "zramnbd_failed_writes_total",
                      help: "Write requests that failed, e.g. at mem_limit (io_stat failed_writes)."),
        ZramStatField("notify_free", \.notifyFree, .ioStat, .counter, prometheus: "zramnbd_notify_free_total",
                      help: "Pages freed by discard or write-zeroes (io_stat notify_free)."),
        ZramStatField("miss_free", \.missFree, .debugStat, .counter, prometheus: nil,
                      help: "Frees that found the slot busy (debug_stat miss_free; always 0 here)."),
        ZramStatField("bd_count", \.bdCount, .bdStat, .gauge, prometheus: "zramnbd_backing_pages",
                      help: "Pages on the backing device (bd_stat bd_count)."),
        ZramStatField("bd_reads", \.bdReads, .bdStat, .counter, prometheus: "zramnbd_backing_reads_total",
                      help: "Pages read from the backing device (bd_stat bd_reads)."),
        ZramStatField("bd_writes", \.bdWrites, .bdStat, .counter, prometheus: "zramnbd_backing_writes_total",
                      help: "Pages written to the backing device (bd_stat bd_writes)."),
        ZramStatField("writeback_runs", \.writebackRuns, .zramnbd, .counter, prometheus: "zramnbd_writeback_runs_total",
                      help: "Writeback runs, by ctl writeback or a writeback policy (zramnbd's own)."),
        ZramStatField("writeback_bytes_freed", \.writebackBytesFreed, .zramnbd, .counter, prometheus: "zramnbd_writeback_freed_bytes_total",
                      help: "Pool memory writeback runs gave back (zramnbd's own)."),
        ZramStatField("recompress_runs", \.recompressRuns, .zramnbd, .counter, prometheus: "zramnbd_recompress_runs_total",
                      help: "Recompress runs, by ctl recompress or a recompression policy (zramnbd's own)."),
        ZramStatField("recompressed_pages", \.recompressedPages, .zramnbd, .counter, prometheus: "zramnbd_recompressed_pages_total",
                      help: "Pages recompress stored again, smaller, with a secondary algorithm (zramnbd's own)."),
        ZramStatField("recompress_bytes_saved", \.recompressBytesSaved, .zramnbd, .counter, prometheus: "zramnbd_recompress_saved_bytes_total",
                      help: "compr_data_size recompress runs gave back (zramnbd's own)."),
    ]
}

/// One row of `ZramStats.fields`: how one counter is named and published.
public struct ZramStatField: Sendable {
    /// The sysfs file that shows the field.
    public enum File: Sendable, Equatable {
        /// A file of its own (`disksize`); not one of the counters.
        case disksize
        case mmStat
        case ioStat
        case debugStat
        case bdStat
        /// In no sysfs file: zramnbd's own counters (stat.json, `status`, Prometheus).
        case zramnbd
    }

    /// Prometheus's metric type: a gauge goes up and down, a counter only grows (until reset).
    public enum Kind: String, Sendable {
        case gauge
        case counter
    }

    /// The sysfs name; also the key in stat.json and `status` records.
    public let name: String
    public let keyPath: KeyPath<ZramStats, UInt64> & Sendable
    public let file: File
    public let kind: Kind
    /// The Prometheus metric name; nil = not exported.
    public let prometheusName: String?
    /// The Prometheus `# HELP` text.
    public let help: String

    init(_ name: String, _ keyPath: KeyPath<ZramStats, UInt64> & Sendable, _ file: File, _ kind: Kind,
         prometheus: String?, help: String) {
        self.name = name
        self.keyPath = keyPath
        self.file = file
        self.kind = kind
        prometheusName = prometheus
        self.help = help
    }
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
