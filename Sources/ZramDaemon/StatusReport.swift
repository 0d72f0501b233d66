// `zramnbd status`: zramctl's table (its columns, -o/--output-all, -n, --raw, -b) plus ours, or
// JSON, from the daemon's status records.
import ZramDevice

/// One column of the status table.
public struct StatusColumn: Sendable {
    public let name: String
    let help: String
    /// zramctl right-aligns numbers (SCOLS_FL_RIGHT).
    let right: Bool
    /// Needs two frames (`--watch`): a rate per second.
    let rate: Bool
    /// zramctl's absolute width hint (whint >= 1; its relative ones do not act on its output).
    let hint: Int
    let cell: @Sendable (StatusRow) -> String

    init(_ name: String, right: Bool = true, rate: Bool = false, hint: Int = 0, _ help: String,
         cell: @escaping @Sendable (StatusRow) -> String) {
        self.name = name
        self.help = help
        self.right = right
        self.rate = rate
        self.hint = hint
        self.cell = cell
    }

    /// libsmartcols' width (util-linux 2.38–2.41, count_column_width): the widest cell, at least
    /// the header (counted even with -n); a column whose cells are as wide as its header grows
    /// to its hint. So DATA is 5 wide for "2.2M" but 4 for "0B", as zramctl prints it.
    func width(cells: Int) -> Int {
        if cells < name.count { return name.count }
        return hint > cells && name.count < hint ? hint : cells
    }
}

/// What a cell is made from: the record, how sizes print, and the previous frame's record of
/// the same device with the seconds between them (for rates).
struct StatusRow {
    var record: ControlRecord
    var bytes: Bool
    var previous: ControlRecord?
    var seconds: Double = 0

    func size(_ key: String) -> String { size(record.uint(key)) }
    func size(_ v: UInt64) -> String { bytes ? String(v) : ByteSize.human(v) }
    func text(_ key: String) -> String { record[key] ?? "" }

    /// (now - before) / seconds of a record number; nil on the first frame, or when a counter
    /// went backwards (`counter`: a reset, not a rate).
    func rate(_ key: String, counter: Bool, scale: Double = 1) -> Double? {
        guard let p = previous, seconds > 0, let now = record[key].flatMap({ UInt64($0) }),
              let before = p[key].flatMap({ UInt64($0) }) else { return nil }
        if counter, now < before { return nil }
        let delta = now >= before ? Double(now - before) : -Double(before - now)
        return delta * scale / seconds
    }

    /// A size per second: human ("1.5M", "-4K") or bytes; "-" when unknown.
    func sizeRate(_ key: String, counter: Bool, scale: Double = 1) -> String {
        guard let r = rate(key, counter: counter, scale: scale) else { return "-" }
        let magnitude = StatusReport.clampedUInt(abs(r).rounded())
        return (r < 0 && magnitude > 0 ? "-" : "") + size(magnitude)
    }

    /// The mean service time of the requests between two frames, in microseconds ("-" without any).
    func meanLatency(_ command: String, _ requests: String) -> String {
        guard let n = rate(requests, counter: true), n > 0, let ns = rate("nbd_\(command)_latency_ns", counter: true) else { return "-" }
        let us = ns / n / 1000
        return us < 10 ? StatusReport.fixed2(us) : String(StatusReport.clampedUInt(us.rounded()))
    }

    func countRate(_ key: String) -> String {
        guard let r = rate(key, counter: true) else { return "-" }
        return String(StatusReport.clampedUInt(r.rounded()))
    }
}

public enum StatusReport {
    /// Every column, zramctl's first in zramctl's order (util-linux 2.41's list: COMP-RATIO is
    /// newer than Debian 12's 2.38), then ours; MOUNTPOINT last as in zramctl, since it is the
    /// one that is often empty or long. Rate columns exist only with --watch.
    public static let allColumns: [StatusColumn] = [
        StatusColumn("NAME", right: false, "zram device name") { $0.text("name") },
        StatusColumn("DISKSIZE", hint: 5, "limit on the uncompressed amount of data") { $0.size("disksize") },
        StatusColumn("DATA", hint: 5, "uncompressed size of stored data") { $0.size("orig_data_size") },
        StatusColumn("COMPR", hint: 5, "compressed size of stored data") { $0.size("compr_data_size") },
        StatusColumn("ALGORITHM", right: false, hint: 3, "the selected compression algorithm") { $0.text("algorithm") },
        StatusColumn("STREAMS", hint: 3, "number of concurrent compress operations") { $0.text("streams") },
        // zramctl prints the page count as it is, -b or not.
        StatusColumn("ZERO-PAGES", hint: 3, "empty pages with no allocated memory") { $0.text("same_pages").isEmpty ? "0" : $0.text("same_pages") },
        StatusColumn("TOTAL", hint: 5, "all memory including allocator fragmentation and metadata overhead") { $0.size("mem_used_total") },
        StatusColumn("MEM-LIMIT", hint: 5, "memory limit used to store compressed data") { $0.size("mem_limit") },
        StatusColumn("MEM-USED", hint: 5, "peak memory usage to store compressed data") { $0.size("mem_used_max") },
        // mm_stat's pages_compacted; zramctl formats it as a size ("0B", "5B" for 5), and so do we.
        StatusColumn("MIGRATED", hint: 5, "number of objects migrated by compaction") { $0.size("pages_compacted") },
        // util-linux: "%.4f" of DATA / TOTAL, so "inf" for a device of zero pages only and
        // "-nan" for an empty one (x86's 0/0).
        StatusColumn("COMP-RATIO", hint: 5, "compression ratio: DATA/TOTAL") {
            let data = $0.record.uint("orig_data_size"), total = $0.record.uint("mem_used_total")
            if total == 0 { return data == 0 ? "-nan" : "inf" }
            return fixed(Double(data) / Double(total), digits: 4)
        },
        StatusColumn("RATIO", "DATA/TOTAL with two decimals, - when nothing is stored (zramnbd)") {
            let data = $0.record.uint("orig_data_size"), total = $0.record.uint("mem_used_total")
            return total == 0 ? "-" : fixed(Double(data) / Double(total), digits: 2)
        },
        StatusColumn("NBD", right: false, "the kernel NBD device that serves it (zramnbd)") { $0.text("nbd_device") },
        StatusColumn("CONNECTIONS", "NBD client connections open now (zramnbd)") { $0.text("connections") },
        StatusColumn("WB", hint: 5, "written back to the backing device: bd_count pages (zramnbd)") {
            $0.size(clampedUInt(Double($0.record.uint("bd_count")) * 4096))
        },
        StatusColumn("MOUNTPOINT", right: false, "where the device is mounted") { $0.text("mountpoint") },
    ] + rateColumns

    /// With --watch: rates between two frames, per second.
    static let rateColumns: [StatusColumn] = [
        StatusColumn("DATA/s", rate: true, hint: 5, "change of DATA per second (--watch)") { $0.sizeRate("orig_data_size", counter: false) },
        StatusColumn("TOTAL/s", rate: true, hint: 5, "change of TOTAL per second (--watch)") { $0.sizeRate("mem_used_total", counter: false) },
        StatusColumn("READ/s", rate: true, hint: 5, "bytes NBD clients read per second (--watch)") { $0.sizeRate("nbd_read_bytes", counter: true) },
        StatusColumn("WRITE/s", rate: true, hint: 5, "bytes NBD clients wrote per second (--watch)") { $0.sizeRate("nbd_write_bytes", counter: true) },
        StatusColumn("R-IOPS", rate: true, "NBD reads per second (--watch)") { $0.countRate("nbd_reads") },
        StatusColumn("W-IOPS", rate: true, "NBD writes per second (--watch)") { $0.countRate("nbd_writes") },
        StatusColumn("R-LAT", rate: true, "mean service time of NBD reads in µs (--watch)") { $0.meanLatency("read", "nbd_reads") },
        StatusColumn("W-LAT", rate: true, "mean service time of NBD writes in µs (--watch)") { $0.meanLatency("write", "nbd_writes") },
        StatusColumn("BD-READ/s", rate: true, hint: 5, "bytes read from the backing device per second (--watch)") {
            $0.sizeRate("bd_reads", counter: true, scale: 4096)
        },
        StatusColumn("BD-WRITE/s", rate: true, hint: 5, "bytes written to the backing device per second (--watch)") {
            $0.sizeRate("bd_writes", counter: true, scale: 4096)
        },
    ]

    /// zramctl's default columns plus RATIO, the real saving (zramctl's own COMP-RATIO is the
    /// same number, but not shown by default).
    public static let defaultColumnNames = ["NAME", "ALGORITHM", "DISKSIZE", "DATA", "COMPR", "TOTAL", "STREAMS", "RATIO", "MOUNTPOINT"]

    static func column(_ name: String) -> StatusColumn? {
        allColumns.first { $0.name.lowercased() == name.lowercased() }
    }

    /// The default set under --watch, for these records: DATA/s and TOTAL/s, the NBD I/O rates
    /// when the daemon reports I/O counters, the backing device's when one is set.
    static func watchDefaults(_ records: [ControlRecord]) -> [String] {
        var names = defaultColumnNames.filter { $0 != "MOUNTPOINT" } + ["DATA/s", "TOTAL/s"]
        if records.contains(where: { $0["nbd_read_bytes"] != nil }) { names += ["READ/s", "WRITE/s", "R-IOPS", "W-IOPS", "R-LAT", "W-LAT"] }
        if records.contains(where: { ($0["backing_dev"] ?? "none") != "none" }) { names += ["BD-READ/s", "BD-WRITE/s"] }
        return names + ["MOUNTPOINT"]   // last, as in zramctl: often empty, sometimes long
    }

    /// The columns util-linux's way: --output-all or the defaults, then `-o LIST` replaces
    /// them, or appends to them when it starts with '+'. Names are case-insensitive; an unknown
    /// or empty one is an error naming it.
    public static func select(_ list: String?, all: Bool = false, watch: Bool = false,
                              defaults: [String] = defaultColumnNames) throws(DaemonError) -> [StatusColumn] {
        let available = allColumns.filter { watch || !$0.rate }
        var selected = all ? available : try defaults.map { n throws(DaemonError) in try named(n, watch: watch) }
        guard let list else { return selected }
        var body = Substring(list)
        if body.first == "+" { body = body.dropFirst() } else { selected = [] }
        guard !body.isEmpty else { throw .invalidValue("empty column list '\(list)' (see --help for the columns)") }
        for item in body.split(separator: ",", omittingEmptySubsequences: false) {
            guard !item.isEmpty else { throw .invalidValue("empty column name in '\(list)'") }
            selected.append(try named(String(item), watch: watch))
        }
        return selected
    }

    static func named(_ name: String, watch: Bool) throws(DaemonError) -> StatusColumn {
        guard let c = column(name) else { throw .invalidValue("unknown column: \(name) (see --help for the columns)") }
        if c.rate, !watch { throw .invalidValue("column \(c.name) is a rate: it needs --watch") }
        return c
    }

    /// `status --help`'s list, as zramctl's "Available output columns".
    static var columnHelp: String {
        allColumns.map { c in String(repeating: " ", count: max(0, 11 - c.name.count)) + c.name + "  " + c.help }.joined(separator: "\n")
    }

    public struct Format: Sendable {
        public var bytes = false
        public var raw = false
        public var noHeadings = false
        public init(bytes: Bool = false, raw: Bool = false, noHeadings: Bool = false) {
            self.bytes = bytes
            self.raw = raw
            self.noHeadings = noHeadings
        }
    }

    /// The default table (as `ctl add` prints the new device).
    public static func table(_ records: [ControlRecord], bytes: Bool = false) -> String {
        table(records, columns: defaultColumnNames.compactMap(column), format: Format(bytes: bytes))
    }

    /// The table as zramctl (libsmartcols) prints it: columns one blank apart, as wide as their
    /// widest cell or header (the header counts even with -n), numbers right-aligned; blanks at
    /// the end of a line are dropped. --raw: cells one blank apart, unpadded, escaped, an empty
    /// cell still taking its place so the fields stay countable.
    /// `previous` and `seconds` feed the rate columns (the frame before, by device name).
    static func table(_ records: [ControlRecord], columns: [StatusColumn], format: Format,
                      previous: [String: ControlRecord] = [:], seconds: Double = 0) -> String {
        // libsmartcols prints no header for a table without lines: zramctl with no device is silent.
        guard !records.isEmpty else { return "" }
        var rows: [[String]] = []
        if !format.noHeadings { rows.append(columns.map(\.name)) }
        for r in records {
            let row = StatusRow(record: r, bytes: format.bytes, previous: r["name"].flatMap { previous[$0] }, seconds: seconds)
            rows.append(columns.map { $0.cell(row) })
        }
        if format.raw {
            return rows.map { $0.map(rawEscape).joined(separator: " ") + "\n" }.joined()
        }
        var cellWidths = [Int](repeating: 0, count: columns.count)
        for row in rows.dropFirst(format.noHeadings ? 0 : 1) { for (i, c) in row.enumerated() { cellWidths[i] = max(cellWidths[i], c.count) } }
        let widths = zip(columns, cellWidths).map { $0.width(cells: $1) }
        var out = ""
        for row in rows {
            var line = ""
            for (i, c) in row.enumerated() {
                let pad = String(repeating: " ", count: widths[i] - c.count)
                if i > 0 { line += " " }
                line += columns[i].right ? pad + c : c + pad
            }
            while line.hasSuffix(" ") { line.removeLast() }
            out += line + "\n"
        }
        return out
    }

    /// libsmartcols' raw cells (fputs_nonblank): blanks, backslashes and every byte that is not
    /// printable ASCII become \xHH, so a mount point with a space stays one field.
    public static func rawEscape(_ s: String) -> String {
        var out = ""
        for b in s.utf8 {
            if b == 0x20 || b == 0x09 || b == 0x5c || b < 0x20 || b >= 0x7f {
                let hex = String(b, radix: 16)
                out += "\\x" + (hex.count == 1 ? "0" : "") + hex
            } else {
                out.unicodeScalars.append(Unicode.Scalar(b))
            }
        }
        return out
    }

    /// `{"devices":[{...}]}` with every field of the records, numbers as numbers.
    public static func json(_ records: [ControlRecord]) -> String {
        let devices = records.map { r -> JSONValue in
            var fields: [(String, JSONValue)] = []
            for (k, v) in r.fields {
                if numericKeys.contains(k), let n = UInt64(v) {
                    fields.append((k, .uint(n)))
                } else if numericKeys.contains(k), let n = Int(v) {
                    fields.append((k, .int(n)))
                } else if k == "read_only" {
                    fields.append((k, .bool(v == "1")))
                } else {
                    fields.append((k, v.isEmpty && nullableKeys.contains(k) ? .null : .string(v)))
                }
            }
            let data = r.uint("orig_data_size"), compr = r.uint("compr_data_size"), total = r.uint("mem_used_total")
            fields.append(("compression_ratio", compr == 0 ? .null : .double(Double(data) / Double(compr))))
            fields.append(("memory_ratio", total == 0 ? .null : .double(Double(data) / Double(total))))
            return .object(fields)
        }
        return JSONValue.object([("devices", .array(devices))]).text + "\n"
    }

    /// The device's counters (ZramStats.fields, disksize included) and the record's other numbers.
    static let numericKeys = Set(ZramStats.fields.map(\.name))
        .union(["level", "streams", "connections", "chain_size", "swap_priority", "writeback_limit",
                "writeback_limit_enable", "writeback_batch_size", "compressed_writeback", "writeback_packing"])
        .union(IOReport.recordKeys)
    static let nullableKeys: Set<String> = ["socket", "listen", "stats_dir", "tls_identities", "mount_point", "nbd_device", "mountpoint"]

    static func fixed2(_ d: Double) -> String { fixed(d, digits: 2) }

    /// printf("%.Nf") for the ratios. Records come from the daemon's reply: any number must
    /// print, never trap.
    static func fixed(_ d: Double, digits: Int) -> String {
        var scale = 1.0
        for _ in 0..<digits { scale *= 10 }
        guard let c = Int(exactly: (d * scale).rounded()) else { return d.isNaN ? "-" : "\(d)" }
        let unit = Int(scale)
        let frac = String(abs(c % unit))
        return (c < 0 && c / unit == 0 ? "-" : "") + "\(c / unit)." + String(repeating: "0", count: digits - frac.count) + frac
    }

    /// A Double as UInt64, saturating (rates and products of record numbers).
    static func clampedUInt(_ d: Double) -> UInt64 {
        guard d.isFinite, d > 0 else { return 0 }
        return d >= 18_446_744_073_709_549_568 ? UInt64.max : UInt64(d)
    }
}
