// Publishing snapshots: a sysfs-like directory per device and a Prometheus text file.
import ZramDevice

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

/// The node_exporter textfile-collector format: `# HELP`, `# TYPE`, then one sample per device,
/// for every field of ZramStats.fields that has a Prometheus name, then the device info.
public enum PrometheusText {
    /// The whole file for these devices (empty devices list: only the HELP/TYPE lines).
    public static func render(_ snapshots: [DeviceSnapshot]) -> String {
        var out = ""
        for field in ZramStats.fields {
            guard let name = field.prometheusName else { continue }
            out += "# HELP \(name) \(field.help)\n# TYPE \(name) \(field.kind.rawValue)\n"
            for s in snapshots { out += "\(name){device=\(label(s.name))} \(s.stats[keyPath: field.keyPath])\n" }
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
