// `zramnbd status`: zramctl's table (plus RATIO) or JSON, from the daemon's status records.
import ZramDevice

public enum StatusReport {
    public static let columns = ["NAME", "ALGORITHM", "DISKSIZE", "DATA", "COMPR", "TOTAL", "STREAMS", "RATIO", "MOUNTPOINT"]

    /// The table as zramctl prints it: left-aligned text columns, right-aligned numbers, sizes
    /// human-readable unless `bytes`. RATIO is DATA / TOTAL (what the RAM really holds).
    public static func table(_ records: [ControlRecord], bytes: Bool = false) -> String {
        func size(_ v: UInt64) -> String { bytes ? String(v) : ByteSize.human(v) }
        var rows = [columns]
        for r in records {
            let data = r.uint("orig_data_size")
            let total = r.uint("mem_used_total")
            rows.append([
                r["name"] ?? "?", r["algorithm"] ?? "?", size(r.uint("disksize")), size(data),
                size(r.uint("compr_data_size")), size(total), r["streams"] ?? "?",
                total == 0 ? "-" : fixed2(Double(data) / Double(total)), r["mountpoint"] ?? "",
            ])
        }
        let rightAligned: Set<Int> = [2, 3, 4, 5, 6, 7]
        var widths = [Int](repeating: 0, count: columns.count)
        for row in rows { for (i, c) in row.enumerated() { widths[i] = max(widths[i], c.count) } }
        var out = ""
        for row in rows {
            var line = ""
            for (i, c) in row.enumerated() {
                let pad = String(repeating: " ", count: widths[i] - c.count)
                if i > 0 { line += " " }
                line += rightAligned.contains(i) ? pad + c : (i == row.count - 1 ? c : c + pad)
            }
            while line.hasSuffix(" ") { line.removeLast() }
            out += line + "\n"
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

    static func fixed2(_ d: Double) -> String {
        // Records come from the daemon's reply: any number must print, never trap.
        guard let c = Int(exactly: (d * 100).rounded()) else { return d.isNaN ? "-" : "\(d)" }
        let frac = c % 100
        return "\(c / 100).\(frac < 10 ? "0" : "")\(frac)"
    }
}
