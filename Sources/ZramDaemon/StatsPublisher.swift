// Publishing snapshots: a sysfs-like directory per device and a Prometheus text file.

/// Keeps one device's stats directory (laid out like /sys/block/zramN/) up to date. Every file is
/// replaced atomically; files whose text did not change are left alone, so their mtime says when
/// the value last changed and an idle device costs no writes.
final class StatsDirectory {
    let path: String
    private var written: [String: String] = [:]

    init(path: String) throws(DaemonError) {
        self.path = path
        try FileSystem.makeDirectories(path)
    }

    /// Writes the files that changed (all of them when `force`).
    func publish(_ s: DeviceSnapshot, extra: [(String, JSONValue)], force: Bool) throws(DaemonError) {
        var files = s.sysfsFiles
        files.append(("stat.json", s.json(extra: extra)))
        for (name, text) in files where force || written[name] != text {
            try FileSystem.writeAtomically(path + "/" + name, text)
            written[name] = text
        }
    }

    /// Deletes the directory and the files in it (device removed, daemon stopped).
    func remove() { FileSystem.removeFlatDirectory(path) }
}

/// The node_exporter textfile-collector format: `# HELP`, `# TYPE`, then one sample per device.
public enum PrometheusText {
    struct Metric: Sendable {
        var name: String
        var type: String
        var help: String
        var value: @Sendable (DeviceSnapshot) -> UInt64
    }

    static let metrics: [Metric] = [
        Metric(name: "zramnbd_disksize_bytes", type: "gauge",
               help: "Capacity of the device in uncompressed bytes (disksize).") { $0.diskSize },
        Metric(name: "zramnbd_orig_data_bytes", type: "gauge",
               help: "Uncompressed size of the data stored (DATA, mm_stat orig_data_size).") { $0.origDataSize },
        Metric(name: "zramnbd_compr_data_bytes", type: "gauge",
               help: "Compressed size of the data stored (COMPR, mm_stat compr_data_size).") { $0.comprDataSize },
        Metric(name: "zramnbd_mem_used_total_bytes", type: "gauge",
               help: "Memory used by the allocator, fragmentation included (TOTAL, mm_stat mem_used_total).") { $0.memUsedTotal },
        Metric(name: "zramnbd_mem_limit_bytes", type: "gauge",
               help: "Limit on mem_used_total, 0 for none (mem_limit).") { $0.memLimit },
        Metric(name: "zramnbd_mem_used_max_bytes", type: "gauge",
               help: "Peak of mem_used_total since start or the last mem-used-max-reset.") { $0.memUsedMax },
        Metric(name: "zramnbd_same_pages", type: "gauge",
               help: "Pages filled with one repeated word, stored without memory (mm_stat same_pages).") { $0.samePages },
        Metric(name: "zramnbd_pages_compacted_total", type: "counter",
               help: "Pages freed by compaction (mm_stat pages_compacted).") { $0.pagesCompacted },
        Metric(name: "zramnbd_huge_pages", type: "gauge",
               help: "Pages stored uncompressed because they did not compress (mm_stat huge_pages).") { $0.hugePages },
        Metric(name: "zramnbd_huge_pages_since_total", type: "counter",
               help: "Incompressible pages stored since the device was set up (mm_stat huge_pages_since).") { $0.hugePagesSince },
        Metric(name: "zramnbd_failed_reads_total", type: "counter",
               help: "Read requests that failed (io_stat failed_reads).") { $0.failedReads },
        Metric(name: "zramnbd_failed_writes_total", type: "counter",
               help: "Write requests that failed, e.g. at mem_limit (io_stat failed_writes).") { $0.failedWrites },
        Metric(name: "zramnbd_notify_free_total", type: "counter",
               help: "Pages freed by discard or write-zeroes (io_stat notify_free).") { $0.notifyFree },
    ]

    /// The whole file for these devices (empty devices list: only the HELP/TYPE lines).
    public static func render(_ snapshots: [DeviceSnapshot]) -> String {
        var out = ""
        for m in metrics {
            out += "# HELP \(m.name) \(m.help)\n# TYPE \(m.name) \(m.type)\n"
            for s in snapshots { out += "\(m.name){device=\(label(s.name))} \(m.value(s))\n" }
        }
        out += "# HELP zramnbd_device_info Device configuration; the value is always 1.\n# TYPE zramnbd_device_info gauge\n"
        for s in snapshots {
            out += "zramnbd_device_info{device=\(label(s.name)),algorithm=\(label(s.algorithm)),level=\"\(s.level)\"} 1\n"
        }
        return out
    }

    static func label(_ v: String) -> String {
        var out = "\""
        for c in v {
            switch c {
            case "\\": out += "\\\\"
            case "\"": out += "\\\""
            case "\n": out += "\\n"
            default: out.append(c)
            }
        }
        return out + "\""
    }
}
