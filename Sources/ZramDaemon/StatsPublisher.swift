// Publishing snapshots: a sysfs-like directory per device and a Prometheus text file.
#if canImport(Glibc)
import Glibc
#endif
import ZramDevice

/// Keeps one device's stats directory (laid out like /sys/block/zramN/) up to date. Every file is
/// replaced atomically; files whose text did not change are left alone, so their mtime says when
/// the value last changed and an idle device costs no writes.
///
/// The directory is the daemon's while it runs: it is locked (flock on the directory itself, held
/// until `remove`), so a second daemon pointed at it fails instead of sharing or deleting it. A
/// symbolic link at its path is refused; everything happens relative to its descriptor. Only the
/// files written here are removed at the end, and the directory only if this daemon created it
/// and nothing else is left in it.
final class StatsDirectory {
    let path: String
    private var dir: DirectoryHandle?
    /// Whether this daemon made the directory (then it removes it when it is empty at the end).
    private var created = false
    /// The files written so far and their current text.
    private var written: [String: String] = [:]

    init(path given: String) throws(DaemonError) {
        var path = given
        while path.count > 1, path.hasSuffix("/") { path.removeLast() }   // "dir/" would follow a link
        self.path = path
        let (parent, _) = try FileSystem.splitFileName(path)
        try FileSystem.makeDirectories(parent)
        // A daemon that stops removes its directory: if that happens between our open and our
        // lock, we hold a lock on a removed directory; start over.
        for _ in 0..<5 {
            let made = mkdir(path, 0o755) == 0
            if !made, errno != EEXIST { throw .errno("mkdir \(path)") }
            if made { _ = chmod(path, 0o755) }   // readable like sysfs, whatever the umask
            let handle: DirectoryHandle
            do {
                handle = try DirectoryHandle(path: path, followLink: false)
            } catch {
                if case .system(_, ENOENT) = error { continue }
                throw error
            }
            do {
                try handle.refuseSharedWrites(owned: true)
                try Self.lock(handle)
            } catch {
                if made { rmdir(path) }
                throw error
            }
            guard handle.isStillAtPath else { continue }
            dir = handle
            created = made
            return
        }
        throw .device("stats directory \(path) keeps being removed and re-created: is another zramnbd starting and stopping there?")
    }

    private static func lock(_ handle: DirectoryHandle) throws(DaemonError) {
        guard flock(handle.fd, LOCK_EX | LOCK_NB) != 0 else { return }
        guard errno == EWOULDBLOCK else { throw .errno("flock \(handle.path)") }
        let holder = handle.identity.flatMap(lockHolder)
        if holder == Int(getpid()) { throw .device("stats directory \(handle.path) is used by another device") }
        throw .device("stats directory \(handle.path) is in use by another zramnbd\(holder.map { " (pid \($0))" } ?? ""); give each daemon its own stats-dir")
    }

    /// The process holding a flock on this inode, from /proc/locks ("1: FLOCK ADVISORY WRITE
    /// PID MAJ:MIN:INODE 0 EOF").
    private static func lockHolder(_ id: FileIdentity) -> Int? {
        guard let text = try? FileSystem.readText("/proc/locks") else { return nil }
        for line in text.split(separator: "\n") {
            let f = line.split(separator: " ")
            guard f.count > 5, f[1] == "FLOCK", f[5].hasSuffix(":\(id.inode)") else { continue }
            return Int(f[4])
        }
        return nil
    }

    /// Writes the files that changed (all of them when `force`).
    func publish(_ s: DeviceSnapshot, extra: [(String, JSONValue)], force: Bool) throws(DaemonError) {
        guard let dir else { return }
        var files = s.sysfsFiles
        files.append(("stat.json", s.json(extra: extra)))
        for (name, text) in files where force || written[name] != text {
            try dir.writeAtomically(name, text)
            written[name] = text
        }
    }

    /// Removes the files written here, then the directory if this daemon created it and it is
    /// empty, and releases the lock (device removed, daemon stopped). Files others put there stay.
    func remove() {
        guard let d = dir else { return }
        for name in written.keys { d.remove(name) }
        written = [:]
        if created, d.isStillAtPath { rmdir(path) }   // ENOTEMPTY: someone else's files are in it
        dir = nil   // closes it: the lock goes with the descriptor
    }
}

/// A file we replace atomically in a directory that is not ours (the Prometheus textfile):
/// written relative to the directory's descriptor, and removed at the end only if it is still
/// the file we last wrote.
final class PublishedFile {
    let path: String
    private let dir: DirectoryHandle
    private let name: String
    private var ours: FileIdentity?

    /// Opens the file's directory; refuses one where other users could plant names.
    init(path: String) throws(DaemonError) {
        self.path = path
        let (d, n) = try FileSystem.splitFileName(path)
        name = n
        let handle = try DirectoryHandle(path: d, followLink: true)
        try handle.refuseSharedWrites(owned: false)
        dir = handle
    }

    func write(_ text: String) throws(DaemonError) { ours = try dir.writeAtomically(name, text) }

    func remove() {
        if let o = ours, dir.identity(of: name) == o { dir.remove(name) }
        ours = nil
    }
}

/// The node_exporter textfile-collector format: `# HELP`, `# TYPE`, then one sample per device,
/// for every field of ZramStats.fields that has a Prometheus name, then the device info.
/// What was built.
public enum BuildInfo {
    public static let version = "0.1.0"
}

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
        out += IOReport.prometheus(snapshots)
        out += "# HELP zramnbd_build_info The daemon's version; the value is always 1.\n# TYPE zramnbd_build_info gauge\n"
        out += "zramnbd_build_info{version=\(label(BuildInfo.version))} 1\n"
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
