import Glibc

/// A fresh directory under /tmp for one test. Removed with everything inside it (recursively,
/// without following symbolic links) by `remove()` or when the last reference goes.
public final class TempDir: Sendable {
    public let path: String

    /// mkdtemp("/tmp/TAG.XXXXXX").
    public init(_ tag: String = "zramnbd-test") {
        var template = Array("/tmp/\(tag).XXXXXX".utf8CString)
        let p = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        precondition(p != nil, "mkdtemp /tmp/\(tag).XXXXXX failed")
        path = String(cString: p!)
    }

    deinit { remove() }

    /// The path of `name` (may contain '/') inside the directory.
    public func file(_ name: String) -> String { path + "/" + name }

    /// Writes `text` to `name` atomically (a temporary file renamed over it), creating the
    /// directories on the way.
    public func write(_ name: String, _ text: String) {
        let full = file(name)
        let slash = full.lastIndex(of: "/")!
        Self.makeDirectories(String(full[..<slash]))
        let tmp = String(full[...slash]) + "." + String(full[full.index(after: slash)...]) + ".tmp"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        precondition(fd >= 0, "open \(tmp): errno \(errno)")
        var bytes = Array(text.utf8)
        var off = 0
        bytes.withUnsafeMutableBytes { buf in
            while off < buf.count {
                let n = Glibc.write(fd, buf.baseAddress! + off, buf.count - off)
                if n < 0 && errno == EINTR { continue }
                precondition(n > 0, "write \(tmp): errno \(errno)")
                off += n
            }
        }
        close(fd)
        precondition(rename(tmp, full) == 0, "rename \(tmp): errno \(errno)")
    }

    /// The text of `name`, nil when it cannot be opened.
    public func read(_ name: String) -> String? {
        let full = file(name)
        guard access(full, R_OK) == 0 else { return nil }
        return Subprocess.readFile(full)
    }

    /// Removes the directory and everything in it; again is a no-op.
    public func remove() { Self.removeTree(path) }

    private static func removeTree(_ p: String) {
        var st = stat()
        guard lstat(p, &st) == 0 else { return }
        guard (st.st_mode & S_IFMT) == S_IFDIR else {
            unlink(p)
            return
        }
        if let d = opendir(p) {
            var names: [String] = []
            while let e = readdir(d) {
                let name = withUnsafeBytes(of: e.pointee.d_name) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
                if name != "." && name != ".." { names.append(name) }
            }
            closedir(d)
            for n in names { removeTree(p + "/" + n) }
        }
        rmdir(p)
    }

    private static func makeDirectories(_ dir: String) {
        var prefix = ""
        for part in dir.split(separator: "/") {
            prefix += "/" + part
            mkdir(prefix, 0o755)
        }
    }
}
