// Small file and system helpers on Glibc (no Foundation in the daemon).
#if canImport(Glibc)
import Glibc
#endif
import Posix

enum FileSystem {
    static func exists(_ path: String) -> Bool { access(path, F_OK) == 0 }

    static func isDirectory(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
    }

    /// Entry names of `dir` (without "." and ".."); empty when it does not exist.
    static func listDirectory(_ dir: String) -> [String] {
        guard let d = opendir(dir) else { return [] }
        defer { closedir(d) }
        var names: [String] = []
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { raw in
                String(cString: raw.baseAddress!.assumingMemoryBound(to: CChar.self))
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    static func readText(_ path: String) throws(DaemonError) -> String {
        String(decoding: try readBytes(path), as: UTF8.self)
    }

    static func readBytes(_ path: String) throws(DaemonError) -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .errno("open \(path)") }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw .errno("read \(path)")
            }
            if n == 0 { break }
            bytes += chunk[0..<n]
        }
        return bytes
    }

    /// Replaces `path` with `text` so that readers see the old or the new contents, never a mix:
    /// write a temporary file in the same directory, then rename it over `path`.
    static func writeAtomically(_ path: String, _ text: String, mode: mode_t = 0o644) throws(DaemonError) {
        // Hidden and in the same directory: rename(2) is atomic only within one file system,
        // and pollers globbing the directory should not pick the temporary file up.
        let slash = path.lastIndex(of: "/")
        let tmp = (slash.map { String(path[...$0]) + "." + String(path[path.index(after: $0)...]) } ?? ("." + path))
            + ".tmp"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode)
        guard fd >= 0 else { throw .errno("open \(tmp)") }
        let ok = IO.writeFully(fd, Array(text.utf8))
        let saved = errno
        close(fd)
        guard ok else { unlink(tmp); throw .system("write \(tmp)", errno: saved) }
        guard rename(tmp, path) == 0 else {
            let e = errno
            unlink(tmp)
            throw .system("rename \(tmp)", errno: e)
        }
    }

    /// mkdir -p with `mode` for the directories it creates.
    static func makeDirectories(_ path: String, mode: mode_t = 0o755) throws(DaemonError) {
        if isDirectory(path) { return }
        var prefix = path.hasPrefix("/") ? "" : "."
        for part in path.split(separator: "/") {
            prefix += "/" + part
            if mkdir(prefix, mode) != 0, errno != EEXIST { throw .errno("mkdir \(prefix)") }
        }
        guard isDirectory(path) else { throw .system("mkdir \(path)", errno: ENOTDIR) }
    }

    /// Removes `dir` and the regular files directly inside it (a stats directory).
    static func removeFlatDirectory(_ dir: String) {
        for name in listDirectory(dir) { unlink(dir + "/" + name) }
        rmdir(dir)
    }

    /// Writes the whole string to `fd`, retrying short writes; false on error.
    @discardableResult
    static func writeAll(_ fd: Int32, _ text: String) -> Bool {
        IO.writeFully(fd, Array(text.utf8))
    }
}

public enum SystemInfo {
    /// MemTotal from /proc/meminfo in MiB (zram-generator's `ram`).
    public static func memTotalMiB() -> Double {
        guard let text = try? FileSystem.readText("/proc/meminfo") else { return 0 }
        for line in text.split(separator: "\n") where line.hasPrefix("MemTotal:") {
            let fields = line.split(separator: " ")
            if fields.count >= 2, let kb = Double(fields[1]) { return kb / 1024 }
        }
        return 0
    }

    /// Monotonic seconds.
    static func now() -> Double { Double(Clock.monotonicNanoseconds()) / 1e9 }
}
