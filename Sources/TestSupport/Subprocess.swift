// Subprocess: start external tools (and our own daemon) from tests.
//
// Why not Foundation.Process: Swift Testing runs tests on threads that block almost every signal and
// a child inherits that mask, so a child started naively never sees SIGTERM and a test that stops it
// hangs for good (shared/docs/swift.md §5). Here every child is started with posix_spawn, an empty
// signal mask and default dispositions; stdout/stderr go to files so nothing can block on a full pipe.

#if canImport(Glibc)
import Glibc
#endif

/// How a child process ended.
/// Makes a child spawned with `attr` start with an empty signal mask and default dispositions.
/// Swift Testing's threads block most signals and a child inherits the mask, so a daemon spawned
/// from a test would otherwise never see SIGTERM (shared/docs/swift.md §5).
public func resetSignals(in attr: inout posix_spawnattr_t) {
    var empty = sigset_t()
    sigemptyset(&empty)
    var all = sigset_t()
    sigfillset(&all)
    posix_spawnattr_setsigmask(&attr, &empty)
    posix_spawnattr_setsigdefault(&attr, &all)
    posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
}

public enum Termination: Equatable, Sendable, CustomStringConvertible {
    case exited(Int32)
    case signaled(Int32)

    public var description: String {
        switch self {
        case .exited(let code): return "exit \(code)"
        case .signaled(let sig): return "signal \(sig)"
        }
    }
}

public enum SubprocessError: Error, CustomStringConvertible {
    case spawnFailed(command: String, errno: Int32)
    case timedOut(command: String, stderr: String)

    public var description: String {
        switch self {
        case .spawnFailed(let cmd, let e): return "cannot start \(cmd): \(String(cString: strerror(e)))"
        case .timedOut(let cmd, let err): return "\(cmd) did not finish in time; stderr: \(err)"
        }
    }
}

/// A running (or finished) child process whose stdout and stderr are captured to files.
public final class Subprocess: @unchecked Sendable {  // @unchecked: `status` is guarded by `lock`
    public let pid: pid_t
    public let argv: [String]
    public let stdoutPath: String
    public let stderrPath: String
    private let lock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private var status: Termination?

    /// Starts `argv` (looked up in PATH). Output goes to `<outputPrefix>.stdout` / `.stderr`;
    /// stdin is `stdinPath` or /dev/null. `environment` entries override the inherited environment.
    public init(_ argv: [String], outputPrefix: String, environment: [String: String] = [:],
                stdinPath: String? = nil) throws {
        precondition(!argv.isEmpty)
        self.argv = argv
        stdoutPath = outputPrefix + ".stdout"
        stderrPath = outputPrefix + ".stderr"
        pthread_mutex_init(lock, nil)

        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        resetSignals(in: &attr)

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, stdinPath ?? "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, stdoutPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_addopen(&actions, 2, stderrPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)

        var env: [String: String] = [:]
        var p = environ
        while let entry = p.pointee {
            let s = String(cString: entry)
            if let eq = s.firstIndex(of: "=") { env[String(s[..<eq])] = String(s[s.index(after: eq)...]) }
            p += 1
        }
        for (k, v) in environment { env[k] = v }
        let cEnv: [UnsafeMutablePointer<CChar>?] = env.map { strdup("\($0.key)=\($0.value)") } + [nil]
        let cArgs: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) } + [nil]
        defer {
            for c in cEnv { free(c) }
            for c in cArgs { free(c) }
        }
        var child: pid_t = 0
        let rc = cArgs.withUnsafeBufferPointer { a in
            cEnv.withUnsafeBufferPointer { e in
                posix_spawnp(&child, argv[0], &actions, &attr, a.baseAddress!, e.baseAddress!)
            }
        }
        guard rc == 0 else { throw SubprocessError.spawnFailed(command: argv[0], errno: rc) }
        pid = child
    }

    deinit {
        if reap(block: false) == nil {
            kill(pid, SIGKILL)
            _ = reap(block: true)
        }
        pthread_mutex_destroy(lock)
        lock.deallocate()
    }

    /// Non-nil once the child has ended (reaps it if needed).
    public var termination: Termination? { reap(block: false) }

    /// Waits until the child ends or `timeout` passes; nil on timeout.
    @discardableResult
    public func wait(timeout: Duration) -> Termination? {
        // No pidfd in Glibc's Swift overlay, so poll waitpid with a short, growing pause.
        let deadline = ContinuousClock.now + timeout
        var pause: Int = 1_000_000  // ns
        while true {
            if let t = reap(block: false) { return t }
            if ContinuousClock.now >= deadline { return nil }
            var ts = timespec(tv_sec: 0, tv_nsec: pause)
            nanosleep(&ts, nil)
            pause = min(pause * 2, 20_000_000)
        }
    }

    /// SIGTERM, then SIGKILL if the child has not ended after `grace`. Returns how it ended.
    @discardableResult
    public func stop(grace: Duration = .seconds(3)) -> Termination {
        if let t = reap(block: false) { return t }
        kill(pid, SIGTERM)
        if let t = wait(timeout: grace) { return t }
        kill(pid, SIGKILL)
        return reap(block: true)!
    }

    /// Sends a signal to the child (if it still runs).
    public func signal(_ sig: Int32) {
        if reap(block: false) == nil { kill(pid, sig) }
    }

    public var stdout: String { Subprocess.readFile(stdoutPath) }
    public var stderr: String { Subprocess.readFile(stderrPath) }

    private func reap(block: Bool) -> Termination? {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        if let s = status { return s }
        var st: Int32 = 0
        var r: pid_t
        repeat { r = waitpid(pid, &st, block ? 0 : WNOHANG) } while r == -1 && errno == EINTR
        guard r == pid else { return nil }
        // WIFEXITED / WEXITSTATUS are macros that Swift does not import.
        let t: Termination = (st & 0x7f) == 0 ? .exited((st >> 8) & 0xff) : .signaled(st & 0x7f)
        status = t
        return t
    }

    /// Whole contents of a file as UTF-8 text ("" if it cannot be read).
    public static func readFile(_ path: String) -> String {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return "" }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            bytes += chunk[0..<n]
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// The result of running a command to completion.
public struct CommandResult: Sendable {
    public let termination: Termination
    public let stdout: String
    public let stderr: String
    public var succeeded: Bool { termination == .exited(0) }
}

extension Subprocess {
    /// Runs `argv` to completion; kills it and throws `.timedOut` after `timeout`.
    public static func run(_ argv: [String], outputPrefix: String, environment: [String: String] = [:],
                           stdinPath: String? = nil, timeout: Duration = .seconds(60)) throws -> CommandResult {
        let p = try Subprocess(argv, outputPrefix: outputPrefix, environment: environment, stdinPath: stdinPath)
        guard let t = p.wait(timeout: timeout) else {
            p.stop(grace: .seconds(1))
            throw SubprocessError.timedOut(command: argv.joined(separator: " "), stderr: p.stderr)
        }
        return CommandResult(termination: t, stdout: p.stdout, stderr: p.stderr)
    }

    /// Full path of `tool` in PATH (or /usr/sbin, /sbin), nil if not installed.
    public static func which(_ tool: String) -> String? {
        let path = getenv("PATH").map { String(cString: $0) } ?? "/usr/bin:/bin"
        let dirs = path.split(separator: ":").map(String.init) + ["/usr/sbin", "/sbin"]
        for dir in dirs {
            let candidate = "\(dir)/\(tool)"
            if access(candidate, X_OK) == 0 { return candidate }
        }
        return nil
    }
}
