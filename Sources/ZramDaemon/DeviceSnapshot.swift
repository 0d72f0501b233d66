import NBD
import ZramDevice

// One device's state at one moment, in the forms the daemon publishes it.

/// Counters (zram's units: bytes for sizes, pages for page counts) and the device's own renderings
/// of its sysfs files (from `stats`, the two the counters cannot make as texts). Taken once per refresh; every output (stats files, stat.json, Prometheus,
/// `status`) is computed from the same snapshot, so they agree with each other.
@dynamicMemberLookup
public struct DeviceSnapshot: Sendable, Equatable {
    public var name: String
    public var algorithm: String = "lz4"
    public var level: Int32 = 0
    public var streams: Int = 1
    /// The device's counters; read and written through the snapshot by name (`snapshot.origDataSize`).
    public var stats = ZramStats()
    /// Byte-exact sysfs texts the device renders from more than its counters.
    public var compAlgorithmText = ""
    /// zram's recomp_algorithm: `#1: lzo [zstd] ...` per secondary algorithm, "" for none.
    public var recompAlgorithmText = ""
    public var classesText = ""
    /// zram's writeback attributes (backing_dev nil = `none`).
    public var backingDev: String?
    public var writebackLimit: UInt64 = 0
    public var writebackLimitEnable = false
    public var writebackBatchSize = 32
    public var compressedWriteback = false
    /// zramnbd's own: compressed pages share backing blocks (no sysfs file; `show` has it).
    public var writebackPacking = false
    /// What NBD clients asked of it (requests, bytes, latency, errors, connections).
    public var io = IOStatistics.zero

    /// Byte-exact sysfs texts of the counters, as ZramStats renders them.
    public var mmStatText: String { stats.mmStatText }
    public var ioStatText: String { stats.ioStatText }
    public var debugStatText: String { stats.debugStatText }
    public var bdStatText: String { stats.bdStatText }

    public init(name: String) { self.name = name }

    public subscript<T>(dynamicMember counter: WritableKeyPath<ZramStats, T>) -> T {
        get { stats[keyPath: counter] }
        set { stats[keyPath: counter] = newValue }
    }

    public var initialized: Bool { self.diskSize != 0 }

    /// DATA / COMPR: how well the codec does on the stored pages.
    public var compressionRatio: Double? { self.comprDataSize == 0 ? nil : Double(self.origDataSize) / Double(self.comprDataSize) }
    /// DATA / TOTAL: how much RAM the device really saves, allocator overhead included.
    public var memoryRatio: Double? { self.memUsedTotal == 0 ? nil : Double(self.origDataSize) / Double(self.memUsedTotal) }

    /// The files of a stats directory (laid out like /sys/block/zramN/) and their contents.
    public var sysfsFiles: [(name: String, text: String)] {
        [("mm_stat", mmStatText), ("io_stat", ioStatText), ("debug_stat", debugStatText),
         ("bd_stat", bdStatText), ("disksize", "\(self.diskSize)\n"), ("comp_algorithm", compAlgorithmText),
         ("recomp_algorithm", recompAlgorithmText),
         ("initstate", initialized ? "1\n" : "0\n"), ("mem_limit", "\(self.memLimit)\n"),
         ("mem_used_max", "\(self.memUsedMax)\n"), ("max_comp_streams", "\(streams)\n"),
         ("classes", classesText), ("backing_dev", (backingDev ?? "none") + "\n"),
         ("writeback_limit", "\(writebackLimit)\n"), ("writeback_limit_enable", writebackLimitEnable ? "1\n" : "0\n"),
         ("writeback_batch_size", "\(writebackBatchSize)\n"), ("compressed_writeback", compressedWriteback ? "1\n" : "0\n")]
    }

    /// Every counter by its sysfs name, in mm_stat/io_stat/debug_stat/bd_stat order (ZramStats.fields).
    public var counters: [(name: String, value: UInt64)] { stats.counters }

    /// stat.json: the counters plus identity and the two ratios.
    public func json(extra: [(String, JSONValue)] = []) -> String {
        var fields: [(String, JSONValue)] = [
            ("name", .string(name)), ("disksize", .uint(self.diskSize)), ("initstate", .uint(initialized ? 1 : 0)),
            ("algorithm", .string(algorithm)), ("level", .int(Int(level))), ("streams", .int(streams)),
        ]
        fields += counters.map { ($0.name, JSONValue.uint($0.value)) }
        fields.append(("compression_ratio", compressionRatio.map(JSONValue.double) ?? .null))
        fields.append(("memory_ratio", memoryRatio.map(JSONValue.double) ?? .null))
        fields += extra
        fields.append(("io", IOReport.json(io)))
        return JSONValue.object(fields).text + "\n"
    }
}

/// Just enough JSON to write reports (the daemon never parses JSON).
public enum JSONValue: Sendable, Equatable {
    case string(String)
    case int(Int)
    case uint(UInt64)
    case double(Double)
    case bool(Bool)
    case null
    case array([JSONValue])
    case object([(String, JSONValue)])

    public static func == (a: JSONValue, b: JSONValue) -> Bool { a.text == b.text }

    public var text: String {
        switch self {
        case .string(let s): return JSONValue.quote(s)
        case .int(let i): return String(i)
        case .uint(let u): return String(u)
        case .double(let d):
            guard d.isFinite else { return "null" }
            guard abs(d) < 1e15 else { return "\(d)" }   // beyond Int64 once scaled: Swift's own form
            // Three decimals are plenty for ratios and keep the output stable.
            let scaled = (d * 1000).rounded()
            let whole = Int64(scaled / 1000)
            let frac = Int64(abs(scaled.truncatingRemainder(dividingBy: 1000)))
            let sign = d < 0 && whole == 0 ? "-" : ""
            return "\(sign)\(whole).\(frac < 10 ? "00" : frac < 100 ? "0" : "")\(frac)"
        case .bool(let b): return b ? "true" : "false"
        case .null: return "null"
        case .array(let a): return "[" + a.map(\.text).joined(separator: ",") + "]"
        case .object(let o): return "{" + o.map { JSONValue.quote($0.0) + ":" + $0.1.text }.joined(separator: ",") + "}"
        }
    }

    static func quote(_ s: String) -> String {
        var out = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if u.value < 0x20 {
                    let hex = String(u.value, radix: 16)
                    out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                } else {
                    out.unicodeScalars.append(u)
                }
            }
        }
        return out + "\""
    }
}
