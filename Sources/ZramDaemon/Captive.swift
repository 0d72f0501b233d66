// nbdkit's conveniences for scripts: `serve --run CMD`, `--exit-with-parent`, `--pidfile`,
// `--print-uri`, as nbdkit's server/captive.c and main.c have them.
//
// The difference from nbdkit: nbdkit forks and the *parent* runs the command while the child
// serves. Here the daemon stays the parent (its signal handling, sockets and cleanup are
// already in one process) and runs the command as its child once every device serves; the
// command's end is the daemon's end, and the daemon's exit status is the command's.
#if canImport(Glibc)
import Glibc
#endif
import NBD

/// What `serve` was asked beyond serving: the command, the parent to die with, the pid file,
/// printing the URIs.
public struct CaptiveOptions: Sendable {
    /// `--run`: a /bin/sh -c program, run once every device serves.
    public var run: String?
    /// `--exit-with-parent`: the parent process when `serve` started.
    public var parent: pid_t?
    /// `--pidfile`.
    public var pidfile: String?
    /// `--print-uri`.
    public var printURI = false
    /// With `--run`: where sockets go that nothing else placed (devices added by `ctl add` too).
    public var privateDirectory: String?

    public init(run: String? = nil, parent: pid_t? = nil, pidfile: String? = nil, printURI: Bool = false,
                privateDirectory: String? = nil) {
        self.run = run
        self.parent = parent
        self.pidfile = pidfile
        self.printURI = printURI
        self.privateDirectory = privateDirectory
    }
}

/// NBD URIs for the devices and the shell variables of `--run`.
enum CaptiveURI {
    /// nbdkit's shell_quote: as-is when every character is safe, else in double quotes with
    /// `$ \` \\ "` escaped.
    static func shellQuote(_ s: String) -> String {
        let safe = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_=,:/".unicodeScalars)
        if !s.isEmpty, s.unicodeScalars.allSatisfy(safe.contains) { return s }
        var out = "\""
        for c in s.unicodeScalars {
            if c == "$" || c == "`" || c == "\\" || c == "\"" { out.unicodeScalars.append("\\") }
            out.unicodeScalars.append(c)
        }
        return out + "\""
    }

    /// nbdkit's uri_quote: RFC 3986 unreserved characters and `/` as-is, every other byte %XX.
    static func uriQuote(_ s: String) -> String {
        let safe = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_~/".utf8)
        let hex = Array("0123456789ABCDEF".utf8)
        var out: [UInt8] = []
        for b in s.utf8 {
            if safe.contains(b) { out.append(b) } else { out += [UInt8(ascii: "%"), hex[Int(b >> 4)], hex[Int(b & 15)]] }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// The endpoint a client should use for `d`: its unix socket, else its TCP address. nil
    /// when it has neither (a socket-activated export).
    static func endpoint(_ d: DeviceSpec, tls: TLSSettings) -> (uri: String, mode: TLSMode, port: String?)? {
        if let path = d.socket {
            let mode = tls.effectiveMode
            return ((mode == .require ? "nbds+unix" : "nbd+unix") + ":///" + uriQuote(d.name) + "?socket=" + uriQuote(path), mode, nil)
        }
        guard let l = d.listen, let a = try? HostPort.parse(l), let mode = try? tls.tcpMode(l) else { return nil }
        // A wildcard address is reached on this host as localhost (nbdkit's $uri always says localhost).
        var host = a.host == "0.0.0.0" || a.host == "::" ? "localhost" : a.host
        if host.contains(":") { host = "[" + host + "]" }
        return ((mode == .require ? "nbds" : "nbd") + "://" + host + ":\(a.port)/" + uriQuote(d.name), mode, "\(a.port)")
    }

    /// The program `/bin/sh -c` runs: nbdkit's variable assignments, then the command as given.
    /// `first` is the device the variables describe.
    static func script(_ command: String, first: DeviceSpec?, tls: TLSSettings) -> String {
        let e = first.flatMap { endpoint($0, tls: tls) }
        var lines = ["uri=" + shellQuote(e?.uri ?? "")]
        lines.append("nbd=\"$uri\"")   // nbdkit ≥ 1.24: a synonym
        lines.append("exportname=" + shellQuote(first?.name ?? ""))
        // nbdkit sets $tls only when TLS is on: 1 (on) or 2 (require).
        if let m = e?.mode, m != .off { lines.append("tls=\(m == .require ? 2 : 1)") }
        lines.append("port=" + (e?.port.map(shellQuote) ?? ""))
        lines.append("unixsocket=" + (first?.socket.map(shellQuote) ?? ""))
        return lines.joined(separator: "\n") + "\n" + command
    }
}

/// The `--run` command: `/bin/sh -c` in the daemon's stdin, stdout and stderr.
final class CaptiveCommand {
    let pid: pid_t
    private var status: Int32?

    /// Variables a service manager gave the daemon: meant for it, not for its child.
    static let daemonOnlyEnvironment = ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"]

    init(_ program: String) throws(DaemonError) {
        let environment = ShellCommand.currentEnvironment().filter { entry in
            let name = entry.split(separator: "=", maxSplits: 1).first.map(String.init) ?? entry
            return !Self.daemonOnlyEnvironment.contains(name)
        }
        pid = try ShellCommand.spawn(program, environment: environment)
    }

    /// The exit status once the command ended (128 + N after signal N, as nbdkit); nil while it runs.
    func reap(block: Bool = false) -> Int32? {
        if let s = status { return s }
        var st: Int32 = 0
        var r: pid_t
        repeat { r = waitpid(pid, &st, block ? 0 : WNOHANG) } while r < 0 && errno == EINTR
        guard r == pid else { return nil }
        let signal = st & 0x7f
        status = ShellCommand.exitStatus(st)
        if signal != 0 { FileSystem.writeAll(2, "zramnbd: the --run command was killed by signal \(signal)\n") }
        return status
    }

    /// SIGTERM, then SIGKILL if it still runs after `grace` seconds; its exit status.
    func terminate(grace: Double) -> Int32 {
        if let s = reap() { return s }
        kill(pid, SIGTERM)
        let deadline = SystemInfo.now() + grace
        while SystemInfo.now() < deadline {
            if let s = reap() { return s }
            var ts = timespec(tv_sec: 0, tv_nsec: 10_000_000)
            nanosleep(&ts, nil)
        }
        kill(pid, SIGKILL)
        return reap(block: true) ?? 128 + SIGKILL
    }
}

/// `--exit-with-parent`: the kernel sends SIGTERM when the parent dies, which stops the daemon
/// as any SIGTERM does.
enum ParentDeath {
    private static let prSetPdeathsig: Int32 = 1   // <linux/prctl.h>

    /// Arms the signal; false if the parent `parent` is already gone (it died before the
    /// signal was armed, so none will come) .
    static func arm(parent: pid_t) throws(DaemonError) -> Bool {
        guard prctl5(prSetPdeathsig, UInt(SIGTERM), 0, 0, 0) == 0 else { throw .errno("prctl(PR_SET_PDEATHSIG)") }
        return getppid() == parent
    }
}

/// `--pidfile`: the daemon's pid and a newline, replaced atomically (a reader never sees an
/// empty file) once every device serves; removed at exit if it is still ours.
final class PidFile {
    private let directory: DirectoryHandle
    private let name: String
    private let identity: FileIdentity

    init(path: String) throws(DaemonError) {
        let slash = path.lastIndex(of: "/")
        let dir = slash.map { path[..<$0].isEmpty ? "/" : String(path[..<$0]) } ?? "."
        name = slash.map { String(path[path.index(after: $0)...]) } ?? path
        guard !name.isEmpty, name != ".", name != ".." else { throw .invalidValue("--pidfile \(path): expected a file name") }
        do {
            directory = try DirectoryHandle(path: dir, followLink: true)
            identity = try directory.writeAtomically(name, "\(getpid())\n")
        } catch {
            throw .device("cannot write --pidfile \(path): \(error)")
        }
    }

    func remove() {
        if directory.identity(of: name) == identity { directory.remove(name) }
    }
}
