// zram-generator's own configuration files, read as zram-generator (src/config.rs) finds them,
// so zramnbd can stand in for it: `zramnbd serve --zram-generator-config`, or
// `zram-generator-config = yes` in [zramnbd].
//
//   main file: the last of {/usr/lib,/usr/local/lib,/etc,/run}/systemd/zram-generator.conf that
//              exists (one file, not merged);
//   drop-ins:  */systemd/zram-generator.conf.d/*.conf from those four directories, by file name;
//              a later directory's file replaces an earlier one of the same name, and a symlink
//              to /dev/null there removes it (liboverdrop's rules: dotfiles, other symlinks and
//              non-files are skipped). The main file is read first, then drop-ins in name order.
//   ZRAM_GENERATOR_ROOT: prefix for those directories, /proc/cmdline and /proc/meminfo.
//   systemd.zram on the kernel command line: false means no devices, true adds zram0.

#if canImport(Glibc)
import Glibc
#endif

public enum ZramGeneratorConfig {
    static let baseDirectories = ["usr/lib", "usr/local/lib", "etc", "run"]

    /// zram-generator's root: $ZRAM_GENERATOR_ROOT, else "/".
    public static func root() -> String {
        guard let v = getenv("ZRAM_GENERATOR_ROOT") else { return "/" }
        let s = String(cString: v)
        return s.isEmpty ? "/" : s
    }

    static func join(_ root: String, _ path: String) -> String {
        (root.hasSuffix("/") ? root : root + "/") + path
    }

    /// The files zram-generator reads under `root`, in the order it applies them.
    public static func fragments(root: String = "/") -> [String] {
        let bases = baseDirectories.map { join(root, $0) }
        var dropIns: [String: String] = [:]
        for base in bases {
            let dir = base + "/systemd/zram-generator.conf.d"
            for name in FileSystem.listDirectory(dir) where !name.hasPrefix(".") && name.hasSuffix(".conf") {
                let path = dir + "/" + name
                var st = stat()
                guard lstat(path, &st) == 0 else { continue }
                if (st.st_mode & S_IFMT) == S_IFREG {
                    dropIns[name] = path
                } else if (st.st_mode & S_IFMT) == S_IFLNK, readLink(path) == "/dev/null" {
                    dropIns[name] = nil   // masked
                }
            }
        }
        var files: [String] = []
        if let main = bases.reversed().map({ $0 + "/systemd/zram-generator.conf" }).first(where: { FileSystem.exists($0) }) {
            files.append(main)
        }
        // Byte order, as Rust's BTreeMap<OsString> sorts.
        let names = dropIns.keys.sorted { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }
        files += names.compactMap { dropIns[$0] }
        return files
    }

    static func readLink(_ path: String) -> String? {
        var buf = [CChar](repeating: 0, count: 4097)
        let n = readlink(path, &buf, 4096)
        guard n >= 0 else { return nil }
        return String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// The configuration zram-generator would use under `root`, with `extra` files (zramnbd's
    /// own, for [zramnbd] and per-device daemon keys) applied after its own. `cmdline` is the
    /// kernel command line (nil: unreadable, ignored as zram-generator does).
    public static func load(root: String = "/", ramMiB: Double, cmdline: String?,
                            extra: [(name: String, text: String)] = [], shell: Shell = .system) throws(DaemonError) -> LoadedConfig {
        let kernel = KernelCommandLine.zramOption(cmdline)
        if kernel == false, extra.isEmpty {
            // zram-generator stops before it reads any file.
            return LoadedConfig(settings: DaemonSettings(), warnings: ["disabled by systemd.zram on the kernel command line"], files: [])
        }
        let files = fragments(root: root)
        var sources: [(name: String, text: String)] = []
        for f in files { sources.append((f, try FileSystem.readText(f))) }
        var loaded = try ConfigFile.parse(sources + extra, ramMiB: ramMiB, kernel: kernel, shell: shell)
        if files.isEmpty, kernel != true { loaded.warnings.append("no zram-generator configuration found under \(root)") }
        return loaded
    }
}

/// The kernel command line's `systemd.zram[=0|1]`, as zram-generator reads it.
public enum KernelCommandLine {
    /// The last `systemd.zram` word wins: bare, =1, =yes, =true, =on are true; =0, =no, =false,
    /// =off false; other values are skipped. Nil when absent (or `text` is nil).
    public static func zramOption(_ text: String?) -> Bool? {
        guard let text else { return nil }
        let word = "systemd.zram"
        for w in text.split(whereSeparator: { $0.isWhitespace }).reversed() where w.hasPrefix(word) {
            switch w.dropFirst(word.count) {
            case "", "=1", "=yes", "=true", "=on": return true
            case "=0", "=no", "=false", "=off": return false
            default: continue
            }
        }
        return nil
    }

    /// `root`/proc/cmdline, or nil when it cannot be read.
    public static func read(root: String = "/") -> String? {
        try? FileSystem.readText(ZramGeneratorConfig.join(root, "proc/cmdline"))
    }
}

/// Runs `set!` programs. Tests may substitute their own.
public struct Shell: Sendable {
    let body: @Sendable (String) throws(DaemonError) -> (status: Int32, output: [UInt8])

    public init(_ body: @escaping @Sendable (String) throws(DaemonError) -> (status: Int32, output: [UInt8])) { self.body = body }

    func run(_ program: String) throws(DaemonError) -> (status: Int32, output: [UInt8]) { try body(program) }

    /// `/bin/sh -c -- program` with stdin from /dev/null and stderr inherited, as zram-generator
    /// runs it; the status is the exit code, or 128 + the signal.
    public static let system = Shell { program throws(DaemonError) in try spawnShell(program) }

    /// Output kept per program; more is read and dropped (an expression is at most 4096 bytes).
    static let outputLimit = 1 << 20

    static func spawnShell(_ program: String) throws(DaemonError) -> (status: Int32, output: [UInt8]) {
        var fds: [Int32] = [-1, -1]
        guard pipe(&fds) == 0 else { throw .system("pipe", errno: errno) }
        // Close-on-exec: only the dup'ed stdout reaches the program, so EOF comes when it exits.
        _ = fcntl(fds[0], F_SETFD, FD_CLOEXEC)
        _ = fcntl(fds[1], F_SETFD, FD_CLOEXEC)
        let pid: pid_t
        do { pid = try ShellCommand.spawn(program, stdout: fds[1]) } catch {
            close(fds[0])
            close(fds[1])
            throw error
        }
        close(fds[1])
        var output: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = buf.withUnsafeMutableBytes { read(fds[0], $0.baseAddress, $0.count) }
            if n < 0, errno == EINTR { continue }
            if n <= 0 { break }
            if output.count < outputLimit { output += buf[0..<min(n, outputLimit - output.count)] }
        }
        close(fds[0])
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 {
            guard errno == EINTR else { throw .system("waitpid", errno: errno) }
        }
        return (ShellCommand.exitStatus(status), output)
    }
}
