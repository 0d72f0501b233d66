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
        do { return try IO.readFile(path) } catch { throw DaemonError(error) }
    }

    /// The directory part ("." when there is none) and the file name of `path`.
    static func splitFileName(_ path: String) throws(DaemonError) -> (directory: String, name: String) {
        let slash = path.lastIndex(of: "/")
        let name = slash.map { String(path[path.index(after: $0)...]) } ?? path
        guard !name.isEmpty, name != ".", name != ".." else { throw .invalidValue("'\(path)' is not a file name") }
        let dir = slash.map { $0 == path.startIndex ? "/" : String(path[..<$0]) } ?? "."
        return (dir, name)
    }

    /// Device and inode of the entry at `path` itself (a symbolic link is not followed); nil if
    /// there is none.
    static func identity(_ path: String) -> FileIdentity? {
        var st = stat()
        guard lstat(path, &st) == 0 else { return nil }
        return FileIdentity(st)
    }

    /// mkdir -p with `mode` for the directories it creates.
    static func makeDirectories(_ path: String, mode: mode_t = 0o755) throws(DaemonError) {
        if isDirectory(path) { return }
        var prefix = path.hasPrefix("/") ? "" : "."
        for part in path.split(separator: "/") {
            prefix += "/" + part
            if mkdir(prefix, mode) == 0 {
                _ = chmod(prefix, mode)   // the umask does not narrow it
            } else if errno != EEXIST {
                throw .errno("mkdir \(prefix)")
            }
        }
        guard isDirectory(path) else { throw .system("mkdir \(path)", errno: ENOTDIR) }
    }

    /// Writes the whole string to `fd`, retrying short writes; false on error.
    @discardableResult
    static func writeAll(_ fd: Int32, _ text: String) -> Bool {
        IO.writeFully(fd, Array(text.utf8))
    }
}

/// Which file an entry is (device and inode): what we created is removed only while it is still
/// the same file.
struct FileIdentity: Equatable {
    let device: UInt64
    let inode: UInt64

    init(_ st: stat) {
        device = UInt64(st.st_dev)
        inode = UInt64(st.st_ino)
    }
}

/// A directory opened once and then used only through its descriptor (openat, renameat,
/// unlinkat): a symbolic link planted at a name inside it is never followed, and a directory
/// renamed or swapped in its place afterwards changes nothing we write.
final class DirectoryHandle {
    let path: String
    let fd: Int32

    /// Opens `path` as a directory. `followLink` false refuses a symbolic link as its last
    /// component (O_NOFOLLOW); links in the components before it are followed either way.
    init(path: String, followLink: Bool) throws(DaemonError) {
        self.path = path
        let f = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC | (followLink ? 0 : O_NOFOLLOW))
        guard f >= 0 else {
            let e = errno
            var st = stat()
            // O_NOFOLLOW with O_DIRECTORY reports a link as ENOTDIR (or ELOOP): say which it is.
            let isLink = (e == ELOOP || e == ENOTDIR) && lstat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFLNK
            if isLink { throw .device("\(path) is a symbolic link: refusing to follow it (give the real directory)") }
            if e == ENOTDIR { throw .device("\(path) exists and is not a directory") }
            throw .system("open \(path)", errno: e)
        }
        fd = f
    }

    deinit { close(fd) }

    /// The directory's own status.
    func status() throws(DaemonError) -> stat {
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw .errno("stat \(path)") }
        return st
    }

    var identity: FileIdentity? { try? FileIdentity(status()) }

    /// Whether `path` still names this directory (it was not removed or replaced since we opened it).
    var isStillAtPath: Bool { identity != nil && FileSystem.identity(path) == identity }

    /// Refuses a directory where other users could plant or replace names: one writable by
    /// everyone without the sticky bit, or sticky but owned by someone other than root or us
    /// (`owned`: also refuse any owner other than root or us).
    func refuseSharedWrites(owned: Bool) throws(DaemonError) {
        let st = try status()
        let mode = UInt32(st.st_mode)
        let byUs = st.st_uid == 0 || st.st_uid == geteuid()
        if mode & 0o002 != 0 {
            guard mode & 0o1000 != 0 else {
                throw .device("\(path) is writable by every user: refusing to write files there (chmod o-w, or choose another directory)")
            }
            guard byUs else {
                throw .device("\(path) is writable by every user and owned by uid \(st.st_uid): refusing to write files there")
            }
        }
        if owned, !byUs {
            throw .device("\(path) is owned by uid \(st.st_uid), not by root or this daemon: refusing to use it")
        }
    }

    /// Replaces `name` with `text` so that readers see the old or the new contents, never a mix:
    /// a hidden temporary file in this directory (pollers globbing it skip it; rename is atomic
    /// only within one file system) is created exclusively, never through a link, then renamed
    /// over `name`. Returns the identity of the new file.
    @discardableResult
    func writeAtomically(_ name: String, _ text: String, mode: mode_t = 0o644) throws(DaemonError) -> FileIdentity {
        try writeAtomically(name, bytes: Array(text.utf8), mode: mode)
    }

    @discardableResult
    func writeAtomically(_ name: String, bytes: [UInt8], mode: mode_t = 0o644) throws(DaemonError) -> FileIdentity {
        let tmp = "." + name + ".tmp"
        let flags = O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC
        var f = openat(fd, tmp, flags, mode)
        if f < 0, errno == EEXIST {
            // Left by a crash, or planted: remove the name itself (a link is not followed), once.
            _ = unlinkat(fd, tmp, 0)
            f = openat(fd, tmp, flags, mode)
        }
        guard f >= 0 else { throw .errno("create \(path)/\(tmp)") }
        var st = stat()
        // The mode as asked, whatever the umask (zramnbd.service runs with UMask=0077): stats
        // files are read like sysfs, by anyone.
        let ok = fchmod(f, mode) == 0 && IO.writeFully(f, bytes) && fstat(f, &st) == 0
        let saved = errno
        close(f)
        guard ok else {
            _ = unlinkat(fd, tmp, 0)
            throw .system("write \(path)/\(tmp)", errno: saved)
        }
        guard renameat(fd, tmp, fd, name) == 0 else {
            let e = errno
            _ = unlinkat(fd, tmp, 0)
            throw .system("rename \(path)/\(tmp)", errno: e)
        }
        return FileIdentity(st)
    }

    /// The identity of the entry `name` (not following a link); nil if there is none.
    func identity(of name: String) -> FileIdentity? {
        var st = stat()
        guard fstatat(fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 else { return nil }
        return FileIdentity(st)
    }

    /// Removes the entry `name` (a link itself, never its target); false if that failed.
    @discardableResult
    func remove(_ name: String) -> Bool { unlinkat(fd, name, 0) == 0 }
}

public enum SystemInfo {
    /// MemTotal from /proc/meminfo in MiB (zram-generator's `ram`).
    /// Whole MiB, truncated, as zram-generator's `ram` is. `path` is /proc/meminfo by default.
    public static func memTotalMiB(path: String = "/proc/meminfo") -> Double {
        guard let text = try? FileSystem.readText(path) else { return 0 }
        for line in text.split(separator: "\n") where line.hasPrefix("MemTotal:") {
            let fields = line.split(separator: " ")
            if fields.count >= 2, let kb = UInt64(fields[1]) { return Double(kb / 1024) }
        }
        return 0
    }

    /// Monotonic seconds.
    static func now() -> Double { Double(Clock.monotonicNanoseconds()) / 1e9 }
}
