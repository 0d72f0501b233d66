// `/bin/sh -c PROGRAM` as the daemon's children start: zram-generator's `set!` programs and
// `serve --run`'s command.
#if canImport(Glibc)
import Glibc
#endif

enum ShellCommand {
    /// Starts `/bin/sh -c -- program` with an empty signal mask and default dispositions (not
    /// the daemon's blocked signals and ignored SIGPIPE). `stdout`: a descriptor to become its
    /// stdout, with stdin from /dev/null; nil keeps the daemon's. `environment`: nil = the
    /// daemon's.
    static func spawn(_ program: String, stdout: Int32? = nil,
                      environment: [String]? = nil) throws(DaemonError) -> pid_t {
        try spawn(["/bin/sh", "-c", "--", program], stdout: stdout, environment: environment)
    }

    /// Starts `argv` (argv[0] looked up in $PATH), as `spawn(_:)` starts the shell.
    static func spawn(_ argv: [String], stdout: Int32? = nil, environment: [String]? = nil) throws(DaemonError) -> pid_t {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        if let stdout {
            posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
            posix_spawn_file_actions_adddup2(&actions, stdout, 1)
        }
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        var empty = sigset_t(), all = sigset_t()
        sigemptyset(&empty)
        sigfillset(&all)
        posix_spawnattr_setsigmask(&attr, &empty)
        posix_spawnattr_setsigdefault(&attr, &all)
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        var args: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) }
        args.append(nil)
        var env: [UnsafeMutablePointer<CChar>?] = (environment ?? []).map { strdup($0) }
        env.append(nil)
        defer {
            for a in args { free(a) }
            for e in env { free(e) }
        }
        var pid: pid_t = 0
        let rc = environment == nil ? posix_spawnp(&pid, argv.first ?? "", &actions, &attr, args, environ)
            : posix_spawnp(&pid, argv.first ?? "", &actions, &attr, args, env)
        guard rc == 0 else { throw .system("cannot run \(argv.first ?? "nothing")", errno: rc) }
        return pid
    }

    /// Waits for `pid` (EINTR retried); its exit status as `exitStatus` gives it, nil if waitpid fails.
    static func wait(_ pid: pid_t) -> Int32? {
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 {
            guard errno == EINTR else { return nil }
        }
        return exitStatus(status)
    }

    /// A wait status as a shell reports it: the exit code, or 128 + N after signal N.
    static func exitStatus(_ status: Int32) -> Int32 {
        let signal = status & 0x7f
        return signal == 0 ? (status >> 8) & 0xff : 128 + signal
    }

    /// The daemon's environment as NAME=VALUE strings.
    static func currentEnvironment() -> [String] {
        var out: [String] = []
        var p = environ
        while let entry = p.pointee {
            out.append(String(cString: entry))
            p += 1
        }
        return out
    }
}
