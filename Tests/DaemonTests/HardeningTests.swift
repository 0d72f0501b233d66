// Issue 13: what a user or a peer can do to the daemon's files and sockets. Each test fails on
// the code before its fix.
import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif
import Posix
@testable import ZramDaemon

/// Polls `condition` every 10 ms until it holds or `seconds` pass; whether it held.
func waitUntil(_ seconds: Double, _ condition: () throws -> Bool) rethrows -> Bool {
    let deadline = SystemInfo.now() + seconds
    while true {
        if try condition() { return true }
        if SystemInfo.now() >= deadline { return false }
        var ts = timespec(tv_sec: 0, tv_nsec: 10_000_000)
        nanosleep(&ts, nil)
    }
}

/// The arguments RunningDaemon starts `zramnbd serve` with, in `dir`.
func serveArguments(_ dir: TempDir, prometheusFile: String? = nil, extra: [String] = []) -> [String] {
    [zramnbdBinary, "serve", "--device", "zram0", "--size", "64M", "--socket", dir.file("zram0.sock"),
     "--stats-dir", dir.file("stats"), "--control-socket", dir.file("control.sock"),
     "--stats-interval", "0.2", "--prometheus-file", prometheusFile ?? dir.file("zramnbd.prom"), "--no-mlock"] + extra
}

/// Runs a `zramnbd serve` that is expected to fail at startup; a daemon that starts anyway is
/// stopped and reported.
func failedStart(_ args: [String], _ dir: TempDir, tag: String = "second") throws -> (termination: Termination, stderr: String) {
    let p = try Subprocess(args, outputPrefix: dir.file(tag))
    guard let t = p.wait(timeout: .seconds(30)) else {
        p.stop()
        Issue.record("the daemon started: \(args)")
        return (.exited(0), p.stderr)
    }
    return (t, p.stderr)
}

/// Makes a symbolic link at `path`; the daemon may hold the name for a moment (its own
/// temporary file), so an EEXIST is retried.
func plantLink(to target: String, at path: String) -> Bool {
    waitUntil(5) { symlink(target, path) == 0 || errno != EEXIST } && FileSystem.identity(path) != nil
}

@Suite("Issue 13: stats directory and published files")
struct StatsFileHardeningTests {
    @Test("stop removes only the files the daemon wrote: a planted file survives, a directory it did not create stays")
    func plantedFileSurvivesStop() throws {
        let dir = TempDir()
        defer { dir.remove() }
        let d = try RunningDaemon(dir)
        #expect(dir.read("stats/mm_stat") != nil)
        dir.write("stats/planted", "mine\n")
        #expect(d.stop() == .exited(0))
        #expect(dir.read("stats/planted") == "mine\n")
        #expect(Set(FileSystem.listDirectory(d.stats)) == ["planted"])   // ours are gone, the directory stays

        // A directory that was there before the daemon is left in place, empty.
        let other = TempDir()
        defer { other.remove() }
        #expect(mkdir(other.file("stats"), 0o755) == 0)
        let e = try RunningDaemon(other)
        #expect(other.read("stats/disksize") == "67108864\n")
        #expect(e.stop() == .exited(0))
        #expect(FileSystem.isDirectory(other.file("stats")) && FileSystem.listDirectory(other.file("stats")).isEmpty)
    }

    /// zramnbd.service runs with UMask=0077: the stats stay readable like sysfs, the control
    /// and NBD sockets stay root's.
    @Test("under umask 077 the stats directory is 0755 and its files 0644; the sockets stay 0600")
    func statsReadableUnderPrivateUmask() throws {
        let dir = TempDir()
        defer { dir.remove() }
        let d = try RunningDaemon(dir, extra: ["--stats-dir", dir.file("run/deep/stats")],
                                  wrapper: ["/bin/sh", "-c", "umask 077; exec \"$@\"", "sh"])
        func mode(_ path: String) -> mode_t {
            var st = stat()
            return lstat(path, &st) == 0 ? st.st_mode & 0o777 : 0
        }
        #expect(waitUntil(10) { dir.read("run/deep/stats/mm_stat") != nil && dir.read("zramnbd.prom") != nil })
        #expect(mode(dir.file("run")) == 0o755 && mode(dir.file("run/deep/stats")) == 0o755)
        #expect(mode(dir.file("run/deep/stats/mm_stat")) == 0o644 && mode(dir.file("run/deep/stats/io_stat")) == 0o644)
        #expect(mode(dir.file("zramnbd.prom")) == 0o644)
        #expect(mode(d.control) == 0o600 && mode(d.socket) == 0o600)
        #expect(d.stop() == .exited(0))
    }

    @Test("a second daemon on the same stats directory fails clearly and leaves the first one's files alone")
    func secondDaemonRefused() throws {
        let dir = TempDir()
        defer { dir.remove() }
        let d = try RunningDaemon(dir)
        let before = Set(FileSystem.listDirectory(d.stats))
        let second = try failedStart(serveArguments(dir), dir)
        #expect(second.termination == .exited(1))
        #expect(second.stderr.contains("stats directory \(d.stats) is in use by another zramnbd (pid \(d.process.pid))"), "\(second.stderr)")
        // Everything of the first daemon is still there and it still answers.
        #expect(Set(FileSystem.listDirectory(d.stats)) == before)
        #expect(dir.read("stats/disksize") == "67108864\n")
        #expect(dir.read("zramnbd.prom")?.contains("zramnbd_device_info{device=\"zram0\"") == true)
        #expect(try d.statusJSON().contains("\"name\":\"zram0\""))
        #expect(d.stop() == .exited(0))
        #expect(!FileSystem.exists(d.stats) && !FileSystem.exists(dir.file("zramnbd.prom")))
    }

    @Test("a stats directory that is a symbolic link is refused, and nothing is written or removed through it")
    func symlinkedStatsDirRefused() throws {
        let dir = TempDir()
        defer { dir.remove() }
        dir.write("real/keep", "keep\n")
        #expect(symlink(dir.file("real"), dir.file("stats")) == 0)
        let r = try failedStart(serveArguments(dir), dir, tag: "daemon")
        #expect(r.termination == .exited(1))
        #expect(r.stderr.contains("\(dir.file("stats")) is a symbolic link: refusing to follow it"), "\(r.stderr)")
        #expect(FileSystem.listDirectory(dir.file("real")) == ["keep"] && dir.read("real/keep") == "keep\n")
    }

    @Test("a link planted at a temporary file name is replaced, never written through (stats and Prometheus files)")
    func plantedTempLinkNotFollowed() throws {
        let dir = TempDir()
        defer { dir.remove() }
        let d = try RunningDaemon(dir)
        dir.write("victim", "precious\n")
        dir.write("victim2", "precious too\n")
        #expect(plantLink(to: dir.file("victim"), at: dir.file("stats/.mm_stat.tmp")))
        #expect(plantLink(to: dir.file("victim2"), at: dir.file(".zramnbd.prom.tmp")))
        let client = try NBDClient(socket: d.socket)
        #expect(client.write([UInt8](repeating: 0x42, count: 1 << 20), at: 0) == 0)
        client.close()
        // The next refreshes rewrite mm_stat and the Prometheus file.
        #expect(waitUntil(10) { d.mmStat().first == 1 << 20 })
        #expect(waitUntil(10) { dir.read("zramnbd.prom")?.contains("zramnbd_orig_data_bytes{device=\"zram0\"} 1048576\n") == true })
        #expect(dir.read("victim") == "precious\n")
        #expect(dir.read("victim2") == "precious too\n")
        var st = stat()
        #expect(lstat(dir.file("stats/mm_stat"), &st) == 0 && st.st_mode & S_IFMT == S_IFREG)
        #expect(lstat(dir.file("zramnbd.prom"), &st) == 0 && st.st_mode & S_IFMT == S_IFREG)
        #expect(d.stop() == .exited(0))
        #expect(dir.read("victim") == "precious\n" && dir.read("victim2") == "precious too\n")
    }

    @Test("directories others can write to are refused with a clear message")
    func sharedDirectoriesRefused() throws {
        let dir = TempDir()
        defer { dir.remove() }
        func mkdirMode(_ name: String, _ mode: mode_t, owner: uid_t? = nil) {
            #expect(mkdir(dir.file(name), 0o700) == 0 && chmod(dir.file(name), mode) == 0)
            if let owner { #expect(chown(dir.file(name), owner, gid_t(owner)) == 0) }
        }
        mkdirMode("open", 0o777)
        #expect(throws: DaemonError.device("\(dir.file("open")) is writable by every user: refusing to write files there (chmod o-w, or choose another directory)")) {
            try StatsDirectory(path: dir.file("open"))
        }
        #expect(throws: DaemonError.self) { try PublishedFile(path: dir.file("open/zramnbd.prom")) }
        // Sticky and ours (like /tmp): fine for both.
        mkdirMode("sticky", 0o1777)
        let inSticky = try StatsDirectory(path: dir.file("sticky/zram0"))
        inSticky.remove()
        _ = try PublishedFile(path: dir.file("sticky/zramnbd.prom"))
        if geteuid() == 0 {
            mkdirMode("theirs-sticky", 0o1777, owner: 65534)
            #expect(throws: DaemonError.device("\(dir.file("theirs-sticky")) is writable by every user and owned by uid 65534: refusing to write files there")) {
                try PublishedFile(path: dir.file("theirs-sticky/zramnbd.prom"))
            }
            mkdirMode("theirs", 0o755, owner: 65534)
            #expect(throws: DaemonError.device("\(dir.file("theirs")) is owned by uid 65534, not by root or this daemon: refusing to use it")) {
                try StatsDirectory(path: dir.file("theirs"))
            }
        } else {
            print("not root: skipping the directories owned by another user")
        }
        // The daemon says so at startup.
        let r = try failedStart(serveArguments(dir, prometheusFile: dir.file("open/zramnbd.prom")), dir, tag: "daemon")
        #expect(r.termination == .exited(1))
        #expect(r.stderr.contains("\(dir.file("open")) is writable by every user"), "\(r.stderr)")
        #expect(!FileSystem.exists(dir.file("stats")))   // nothing left behind
    }

    @Test("two devices of one daemon cannot share a stats directory")
    func sharedByTwoDevices() throws {
        let dir = TempDir()
        defer { dir.remove() }
        let (host, _) = try makeHost(dir)
        defer { host.stopAll() }
        var spec = DeviceSpec(name: "zram1", diskSize: 16 << 20)
        spec.statsDir = dir.file("zram0")
        // DeviceHost.add refuses it before the directory's own lock is asked.
        #expect(throws: DaemonError.self) { try host.add(spec) }
        #expect(throws: DaemonError.invalidValue("zram1: stats directory \(dir.file("zram0")) collides with zram0's \(dir.file("zram0"))")) {
            try host.add(spec)
        }
        #expect(dir.read("zram0/disksize") == "67108864\n")
    }
}

@Suite("Issue 13: control socket")
struct ControlSocketHardeningTests {
    @Test("--control-socket and --socket at an existing regular file are refused and the file is kept")
    func regularFileRefused() throws {
        let dir = TempDir()
        defer { dir.remove() }
        dir.write("control.sock", "not a socket\n")
        let r = try failedStart(serveArguments(dir), dir, tag: "daemon")
        #expect(r.termination == .exited(1))
        #expect(r.stderr.contains("\(dir.file("control.sock")) exists and is not a socket"), "\(r.stderr)")
        #expect(dir.read("control.sock") == "not a socket\n")
        #expect(!FileSystem.exists(dir.file("stats")) && !FileSystem.exists(dir.file("zram0.sock")))

        unlink(dir.file("control.sock"))
        dir.write("zram0.sock", "not a socket either\n")
        let s = try failedStart(serveArguments(dir), dir, tag: "daemon2")
        #expect(s.termination == .exited(1))
        #expect(s.stderr.contains("\(dir.file("zram0.sock")) exists and is not a socket"), "\(s.stderr)")
        #expect(dir.read("zram0.sock") == "not a socket either\n")
    }
}

/// A free TCP port on 127.0.0.1 (bound, read back, released).
func freeTCPPort() throws -> UInt16 {
    let l = try Sockets.listenTCP(host: "127.0.0.1", port: 0)
    close(l.fd)
    return l.port ?? 0
}

/// A TCP connection to 127.0.0.1:`port`, or nil.
func connectTCP(_ port: UInt16) -> Int32? {
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_port = port.bigEndian
    addr.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
    let fd = socket(AF_INET, Sockets.stream, 0)
    let ok = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard ok == 0 else { close(fd); return nil }
    return fd
}

/// A peer that sends a request one byte every 0.3 s and never finishes it, connecting again
/// whenever the server drops it, until `stop`.
final class Trickler: @unchecked Sendable {   // @unchecked: the vars are guarded by `lock`
    private let lock = NSLockish()
    private var stopping = false
    private var done = false
    private var count = 0

    init(_ connect: @escaping @Sendable () -> Int32?) throws {
        try Threads.spawn(name: "trickler") { [self] in
            while !lock.with({ stopping }) {
                guard let fd = connect() else { pause(0.05); continue }
                lock.with { count += 1 }
                var byte = UInt8(ascii: "G")
                while !lock.with({ stopping }), send(fd, &byte, 1, Int32(MSG_NOSIGNAL)) == 1 { pause(0.3) }
                close(fd)
            }
            lock.with { done = true }
        }
    }

    /// Connections made so far.
    var connections: Int { lock.with { count } }

    func stop() {
        lock.with { stopping = true }
        _ = waitUntil(5) { lock.with { done } }
    }

    private func pause(_ seconds: Double) {
        var ts = timespec(tv_sec: 0, tv_nsec: Int(seconds * 1e9))
        nanosleep(&ts, nil)
    }
}

@Suite("Issue 13: control and metrics off the main loop")
struct SlowPeerTests {
    @Test("peers trickling requests hold neither the stats files, the watchdog, status, other scrapes nor SIGTERM")
    func slowPeers() throws {
        let dir = TempDir()
        defer { dir.remove() }
        let port = try freeTCPPort()
        let d = try RunningDaemon(dir, extra: ["--metrics-listen", "127.0.0.1:\(port)"], environment: ["WATCHDOG_USEC": "400000"])
        let control = d.control
        let peers = [try Trickler { connectTCP(port) }, try Trickler { connectTCP(port) },
                     try Trickler { try? Sockets.connectUnix(control) }]
        defer { for p in peers { p.stop() } }
        #expect(waitUntil(5) { peers.allSatisfy { $0.connections > 0 } })

        // The stats files follow the data on schedule (every 0.2 s here).
        let client = try NBDClient(socket: d.socket)
        #expect(client.write([UInt8](repeating: 0x42, count: 1 << 20), at: 0) == 0)
        client.close()
        #expect(waitUntil(5) { d.mmStat().first == 1 << 20 }, "mm_stat: \(d.mmStat())")
        // The watchdog keeps being pinged: drop what is queued, then a fresh ping arrives.
        _ = d.notify.receive(until: "\u{0}never", timeout: 0)
        #expect(d.notify.receive(until: "WATCHDOG=1", timeout: 2000) != nil)
        // status answers at once.
        let started = SystemInfo.now()
        let status = try Subprocess.run([zramnbdBinary, "status", "--bytes", "--control-socket", control],
                                        outputPrefix: dir.file("status"), timeout: .seconds(10))
        #expect(status.succeeded && status.stdout.contains("zram0"), "\(status.stderr)")
        #expect(SystemInfo.now() - started < 3, "status took \(SystemInfo.now() - started) s")
        // So does another scrape.
        let fd = try #require(connectTCP(port))
        defer { close(fd) }
        #expect(FileSystem.writeAll(fd, "GET /metrics HTTP/1.0\r\n\r\n"))
        let scrape = String(decoding: Sockets.readMessage(fd, limit: 1 << 20, timeout: 3000, stopAtNewline: false) ?? [], as: UTF8.self)
        #expect(scrape.hasPrefix("HTTP/1.0 200 OK\r\n") && scrape.contains("zramnbd_orig_data_bytes{device=\"zram0\"} 1048576\n"))
        // And SIGTERM ends the daemon promptly.
        d.process.signal(SIGTERM)
        #expect(d.process.wait(timeout: .seconds(4)) == .exited(0), "\(d.process.stderr)")
        #expect(!FileSystem.exists(d.stats) && !FileSystem.exists(control))
    }

    @Test("a refused peer is told 'permission denied', not 'no reply' or killed by SIGPIPE")
    func refusedPeer() throws {
        guard geteuid() == 0 else { print("skipping: running a client as another user needs root"); return }
        guard let setpriv = findTool("setpriv") else { print("skipping: setpriv is not installed"); return }
        let dir = TempDir()
        defer { dir.remove() }
        let d = try RunningDaemon(dir)
        let asNobody = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", zramnbdBinary]
        let probe = try Subprocess.run(asNobody + ["--help"], outputPrefix: dir.file("probe"))
        guard probe.succeeded else {
            print("skipping: user nobody cannot run \(zramnbdBinary): \(probe.stderr)")
            _ = d.stop()
            return
        }
        // Open the socket up, as if its directory had been made world-writable: the credential
        // check is what refuses nobody now.
        #expect(chmod(dir.path, 0o711) == 0 && chmod(d.control, 0o666) == 0)
        for args in [["status", "--control-socket", d.control], ["ctl", "--control-socket", d.control, "zram0", "compact"]] {
            let r = try Subprocess.run(asNobody + args, outputPrefix: dir.file("nobody"), timeout: .seconds(20))
            #expect(r.termination == .exited(1), "\(args): \(r.termination) \(r.stderr)")
            #expect(r.stderr.contains("permission denied") && !r.stderr.contains("no reply"), "\(args): \(r.stderr)")
        }
        #expect(try d.ctl(["show"]).succeeded)   // root still is served
        #expect(d.stop() == .exited(0))
    }
}

/// NBD connections that take every descriptor the daemon may have must not lock out the
/// operator: the control socket keeps one back (issue 13, "a slot kept for the control path").
@Suite("descriptors")
struct DescriptorTests {
    @Test("status still answers when NBD clients hold every descriptor")
    func controlSlot() throws {
        let dir = TempDir()
        // A hard limit the daemon cannot raise, well under the unix socket's 256 connections.
        let d = try RunningDaemon(dir, wrapper: ["/usr/bin/prlimit", "--nofile=64:64", "--"])
        defer { _ = d.stop() }
        #expect(d.process.stderr.contains("only 64 file descriptors"), "\(d.process.stderr)")
        dir.write("flood.py", """
            import nbd, subprocess, sys, time
            def connect(uri):
                # Out of descriptors the daemon leaves a connection in the backlog: give up
                # after 2 s instead of waiting for its greeting forever.
                h = nbd.NBD()
                h.aio_connect_uri(uri)
                deadline = time.monotonic() + 2
                while not h.aio_is_ready():
                    if h.aio_is_dead() or h.aio_is_closed() or time.monotonic() > deadline:
                        return None
                    h.poll(100)
                return h
            handles = []
            for i in range(120):
                h = connect(sys.argv[1])
                if h is None:
                    break
                handles.append(h)
            r = subprocess.run(sys.argv[2:], capture_output=True, text=True, timeout=30)
            print(len(handles), r.returncode)
            print(r.stdout + r.stderr)
            """)
        let r = try Subprocess.run(["/usr/bin/python3", dir.file("flood.py"), d.uri, zramnbdBinary, "status", "--control-socket", d.control],
                                   outputPrefix: dir.file("flood"), timeout: .seconds(60))
        let words = r.stdout.split(whereSeparator: \.isWhitespace)
        #expect(r.succeeded, "\(r.stderr)")
        #expect(words.count >= 2 && Int(words[0]).map { $0 < 64 } == true, "the flood ran out of descriptors: \(r.stdout)")
        #expect(words.count >= 2 && words[1] == "0", "status failed while the daemon was out of descriptors: \(r.stdout)")
        #expect(r.stdout.contains("zram0"), "\(r.stdout)")
        // Once the flood is gone the daemon serves NBD again.
        #expect(try runProcess(["/usr/bin/nbdinfo", "--size", d.uri], in: dir, tag: "after").status == 0)
    }
}
