// Swap safety and systemd integration, without libsystemd.
#if canImport(Glibc)
import Glibc
#endif
import Posix

// prctl(2) is variadic in C, which Swift cannot call; bind the integer form directly.
@_silgen_name("prctl")
func prctl5(_ option: Int32, _ a2: UInt, _ a3: UInt, _ a4: UInt, _ a5: UInt) -> Int32

// Glibc's Swift module leaves out the _GNU_SOURCE declarations; bind the two we need.
@_silgen_name("signalfd")
private func signalfd(_ fd: Int32, _ mask: UnsafePointer<sigset_t>, _ flags: Int32) -> Int32
private let sfdCloexec: Int32 = 0o2000000    // = O_CLOEXEC
private let sfdNonblock: Int32 = 0o4000      // = O_NONBLOCK
private let signalfdInfoSize = 128           // sizeof(struct signalfd_siginfo); ssi_signo is the first u32

private let prSetIOFlusher: Int32 = 57   // <linux/prctl.h>, Linux 5.6+
private let mclOnFault: Int32 = 4        // <bits/mman-linux.h>, Linux 4.4+

/// What a daemon that the kernel swaps to must do so it never waits on its own swap device.
public enum SwapSafety {
    /// Locks present and future pages (on fault: the pool reserves huge virtual ranges that must
    /// not be populated up front), marks the process as an I/O flusher (its allocations don't
    /// recurse into block I/O reclaim) and keeps the OOM killer away. Each step is best effort;
    /// the returned lines say what failed.
    public static func apply() -> [String] {
        var problems: [String] = []
        var limit = rlimit()
        getrlimit(__rlimit_resource_t(8), &limit)   // RLIMIT_MEMLOCK (a macro Swift does not import)
        if limit.rlim_cur != rlim_t.max, !hasCapability(14) {   // RLIM_INFINITY; CAP_IPC_LOCK
            // The pools reserve address space (several times the disk size) that counts against
            // RLIMIT_MEMLOCK once MCL_FUTURE is on, so a finite limit would fail the devices
            // themselves: leave memory unlocked and say why.
            problems.append("memory not locked: RLIMIT_MEMLOCK is \(limit.rlim_cur / 1024) KiB; set LimitMEMLOCK=infinity (or run as root) so swap to this daemon is safe")
        } else if mlockall(MCL_CURRENT | MCL_FUTURE | mclOnFault) != 0 {
            let e = errno
            problems.append("mlockall failed (\(String(cString: strerror(e)))): pages of the daemon may be swapped out; raise LimitMEMLOCK or run as root")
        }
        if prctl5(prSetIOFlusher, 1, 0, 0, 0) != 0 {
            let e = errno
            problems.append("PR_SET_IO_FLUSHER refused (\(String(cString: strerror(e)))): needs CAP_SYS_RESOURCE; swapping to this daemon may deadlock under memory pressure")
        }
        if (try? FileSystem.writeExisting("/proc/self/oom_score_adj", "-1000\n")) == nil {
            problems.append("cannot set oom_score_adj to -1000 (needs CAP_SYS_RESOURCE)")
        }
        return problems
    }
}

public enum DescriptorLimit {
    /// Raises the soft RLIMIT_NOFILE to the hard one (at most 65536): every NBD connection holds
    /// a descriptor, and systemd's default soft limit of 1024 would run out before the sockets'
    /// connection limits do. The daemon polls, so descriptors above 1024 are fine. A line for
    /// the log when the limit stays low.
    public static func raise() -> String? {
        var limit = rlimit()
        let nofile = __rlimit_resource_t(7)   // RLIMIT_NOFILE (a macro Swift does not import)
        guard getrlimit(nofile, &limit) == 0 else { return nil }
        let wanted = min(limit.rlim_max, 65536)
        if limit.rlim_cur < wanted {
            limit.rlim_cur = wanted
            _ = setrlimit(nofile, &limit)
            _ = getrlimit(nofile, &limit)
        }
        return limit.rlim_cur < 4096 ? "only \(limit.rlim_cur) file descriptors (RLIMIT_NOFILE): set LimitNOFILE higher for many NBD connections" : nil
    }
}

/// Whether this process has capability `bit` (linux/capability.h numbering) in its effective set.
func hasCapability(_ bit: Int) -> Bool {
    guard let status = try? FileSystem.readText("/proc/self/status"),
          let line = status.split(separator: "\n").first(where: { $0.hasPrefix("CapEff:") }),
          let mask = UInt64(String(line.dropFirst(7)).trimmed(), radix: 16) else { return false }
    return mask & (1 << UInt64(bit)) != 0
}

/// sd_notify(3) over $NOTIFY_SOCKET, and the watchdog period from $WATCHDOG_USEC.
public final class SystemdNotifier {
    private let fd: Int32
    private var addr = sockaddr_un()
    private var addrLength = socklen_t(0)
    /// Seconds between WATCHDOG=1 pings (half of WatchdogSec), or nil.
    public let watchdogInterval: Double?
    private let stateChangeWait: Double

    /// From $NOTIFY_SOCKET and $WATCHDOG_USEC.
    public convenience init() {
        var interval: Double?
        if let w = getenv("WATCHDOG_USEC").map({ String(cString: $0) }), let usec = Double(w), usec > 0 {
            let pidOK = getenv("WATCHDOG_PID").map { String(cString: $0) == String(getpid()) } ?? true
            if pidOK { interval = usec / 2e6 }
        }
        self.init(socketPath: getenv("NOTIFY_SOCKET").map { String(cString: $0) } ?? "", watchdogInterval: interval)
    }

    /// `stateChangeWait`: how long a state change waits for room in a full queue.
    init(socketPath raw: String, watchdogInterval: Double? = nil, stateChangeWait: Double = 3) {
        self.watchdogInterval = watchdogInterval
        self.stateChangeWait = stateChangeWait
        guard !raw.isEmpty else {
            fd = -1
            return
        }
        addr.sun_family = sa_family_t(AF_UNIX)
        var bytes = Array(raw.utf8)
        if bytes[0] == UInt8(ascii: "@") { bytes[0] = 0 }   // abstract namespace
        let capacity = MemoryLayout.size(ofValue: addr.sun_path)
        guard bytes.count < capacity else { fd = -1; return }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in for (i, b) in bytes.enumerated() { raw[i] = b } }
        addrLength = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count + (bytes[0] == 0 ? 0 : 1))
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        // A blocking send to an unconnected datagram socket waits for room in the receiver's
        // queue for at most SO_SNDTIMEO (poll's POLLOUT would not: it sees no peer to wait on).
        let wait = min(max(0, stateChangeWait), 3600)
        var timeout = timeval(tv_sec: Int(wait), tv_usec: Int((wait - wait.rounded(.down)) * 1e6))
        if fd >= 0 { _ = setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size)) }
    }

    deinit { if fd >= 0 { close(fd) } }

    public var enabled: Bool { fd >= 0 }

    /// Sends `state` with descriptors attached (SCM_RIGHTS), as `FDSTORE=1` needs. Waits up to
    /// 3 seconds for room: a dropped fd-store message would lose what a restart after a crash
    /// needs. False if it could not be sent.
    @discardableResult
    public func notify(_ state: String, descriptors: [Int32]) -> Bool {
        guard fd >= 0, !descriptors.isEmpty, descriptors.count <= 253 else { return false }
        let payload = descriptors.count * 4
        let header = 16                      // struct cmsghdr: size_t len, int level, int type
        let space = (header + payload + 7) & ~7
        let control = UnsafeMutableRawPointer.allocate(byteCount: space, alignment: 8)
        defer { control.deallocate() }
        memset(control, 0, space)
        control.storeBytes(of: header + payload, as: Int.self)
        control.storeBytes(of: Int32(1), toByteOffset: 8, as: Int32.self)    // SOL_SOCKET
        control.storeBytes(of: Int32(1), toByteOffset: 12, as: Int32.self)   // SCM_RIGHTS
        for (i, d) in descriptors.enumerated() { control.storeBytes(of: d, toByteOffset: header + 4 * i, as: Int32.self) }
        return send(state, control: control, controlLength: space, waiting: true)
    }

    /// Sends a state change (`READY=1`, `RELOADING=1`, `FDSTOREREMOVE=1`), waiting up to 3
    /// seconds for room. A datagram queue holds only
    /// /proc/sys/net/unix/max_dgram_qlen (10) messages, and the fd-store messages at start fill
    /// it: a dropped READY=1 fails the start with a timeout, a dropped FDSTOREREMOVE=1 leaves a
    /// stale state in the store. False if it could not be sent.
    @discardableResult
    public func notify(_ state: String) -> Bool {
        send(state, control: nil, controlLength: 0, waiting: true)
    }

    /// Sends `STATUS=`, `WATCHDOG=1` or `STOPPING=1`. Never blocks: a manager that stops
    /// reading its notify socket must not freeze the daemon's control loop (and with it SIGTERM
    /// handling), and a dropped one is harmless (the next follows within seconds; the exit
    /// follows STOPPING=1).
    public func notifyUnlessFull(_ state: String) {
        _ = send(state, control: nil, controlLength: 0, waiting: false)
    }

    private func send(_ state: String, control: UnsafeMutableRawPointer?, controlLength: Int, waiting: Bool) -> Bool {
        guard fd >= 0 else { return false }
        var bytes = Array(state.utf8)
        return bytes.withUnsafeMutableBytes { buf in
            withUnsafeMutablePointer(to: &addr) { a in
                var iov = iovec(iov_base: buf.baseAddress, iov_len: buf.count)
                return withUnsafeMutablePointer(to: &iov) { iovp in
                    var msg = msghdr()
                    msg.msg_name = UnsafeMutableRawPointer(a)
                    msg.msg_namelen = addrLength
                    msg.msg_iov = iovp
                    msg.msg_iovlen = 1
                    msg.msg_control = control
                    msg.msg_controllen = controlLength
                    let flags = Int32(MSG_NOSIGNAL) | (waiting ? 0 : Int32(MSG_DONTWAIT))
                    while true {
                        if sendmsg(fd, &msg, flags) >= 0 { return true }
                        guard errno == EINTR else { return false }   // EAGAIN: still full after the wait
                    }
                }
            }
        }
    }
}

/// SIGTERM/SIGINT/SIGHUP delivered as readable events on a signalfd, so the control loop's poll()
/// sees them. Blocked before any thread starts; every thread inherits the mask.
final class SignalEvents {
    let fd: Int32

    static let handled = [SIGTERM, SIGINT, SIGHUP]

    /// `children`: SIGCHLD too (the --run command's end).
    init(children: Bool = false) throws(DaemonError) {
        var set = sigset_t()
        sigemptyset(&set)
        for s in SignalEvents.handled + (children ? [SIGCHLD] : []) { sigaddset(&set, s) }
        guard pthread_sigmask(SIG_BLOCK, &set, nil) == 0 else { throw .errno("pthread_sigmask") }
        fd = signalfd(-1, &set, sfdCloexec | sfdNonblock)
        guard fd >= 0 else { throw .errno("signalfd") }
        // A closed NBD or control peer must surface as EPIPE, not kill the daemon.
        signal(SIGPIPE, SIG_IGN)
    }

    /// The signals that arrived since the last call.
    func drain() -> [Int32] {
        var out: [Int32] = []
        var info = [UInt8](repeating: 0, count: signalfdInfoSize)
        while info.withUnsafeMutableBytes({ read(fd, $0.baseAddress, signalfdInfoSize) }) == signalfdInfoSize {
            out.append(Int32(bitPattern: info.withUnsafeBytes { $0.load(as: UInt32.self) }))
        }
        return out
    }

    deinit { close(fd) }
}

extension FileSystem {
    /// Writes into an existing file in place (procfs attributes cannot be replaced by rename).
    static func writeExisting(_ path: String, _ text: String) throws(DaemonError) {
        let fd = open(path, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .errno("open \(path)") }
        defer { close(fd) }
        guard writeAll(fd, text) else { throw .errno("write \(path)") }
    }
}

/// Memory pressure events from a PSI trigger (/proc/pressure/memory): POLLPRI when tasks stalled
/// on memory for `stallMicroseconds` within a `windowMicroseconds` window. This is when the
/// kernel's zram compacts on its own (zsmalloc's shrinker runs under reclaim). The window is a
/// multiple of 2 s, the only kind the kernel allows without CAP_SYS_RESOURCE.
final class MemoryPressure {
    let fd: Int32

    init?(stallMicroseconds: Int = 150_000, windowMicroseconds: Int = 2_000_000) {
        let f = open("/proc/pressure/memory", O_RDWR | O_NONBLOCK | O_CLOEXEC)
        guard f >= 0 else { return nil }
        var trigger = Array("some \(stallMicroseconds) \(windowMicroseconds)".utf8CString)
        let n = trigger.withUnsafeMutableBytes { write(f, $0.baseAddress, $0.count) }
        guard n > 0 else {
            close(f)
            return nil
        }
        fd = f
    }

    deinit { close(fd) }
}
