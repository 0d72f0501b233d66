import CNBD
import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif
import Posix
@testable import ZramDaemon

/// A `zramnbd serve` child on temp sockets, started from the built binary and known to be ready
/// once it sent READY=1 on our NOTIFY_SOCKET.
final class RunningDaemon {
    let dir: TempDir
    let process: Subprocess
    var socket: String { dir.file("zram0.sock") }
    var control: String { dir.file("control.sock") }
    var stats: String { dir.file("stats") }
    var uri: String { "nbd+unix:///zram0?socket=\(socket)" }

    let notify: NotifyListener

    /// `wrapper`: a command that runs the daemon (prlimit ...).
    /// `deviceFlags: false`: the device comes from `extra` (a --config), not from flags.
    init(_ dir: TempDir, size: String = "64M", extra: [String] = [], lockMemory: Bool = false,
         environment: [String: String] = [:], wrapper: [String] = [], deviceFlags: Bool = true) throws {
        self.dir = dir
        notify = try NotifyListener(path: dir.file("notify.sock"))
        let device = deviceFlags ? ["--device", "zram0", "--size", size, "--socket", dir.file("zram0.sock"), "--stats-dir", dir.file("stats")] : []
        var args = wrapper + [zramnbdBinary, "serve"] + device + ["--control-socket", dir.file("control.sock"),
                    "--stats-interval", "0.2", "--prometheus-file", dir.file("zramnbd.prom")] + extra
        if !lockMemory { args.append("--no-mlock") }
        process = try Subprocess(args, outputPrefix: dir.file("daemon"),
                                 environment: environment.merging(["NOTIFY_SOCKET": notify.path]) { a, _ in a })
        guard let ready = notify.receive(until: "READY=1", timeout: 30_000) else {
            process.stop()
            throw DaemonError.device("daemon not ready: \(process.stderr)")
        }
        #expect(ready.contains("STATUS=zram0 "))
    }

    func zramnbd(_ args: [String], tag: String = "cli") throws -> CommandResult {
        try Subprocess.run([zramnbdBinary] + args, outputPrefix: dir.file(tag))
    }

    func ctl(_ args: [String], device: String = "zram0") throws -> CommandResult {
        try zramnbd(["ctl", "--control-socket", control, device] + args, tag: "ctl")
    }

    func statusJSON() throws -> String {
        let r = try zramnbd(["status", "--json", "--control-socket", control], tag: "status")
        #expect(r.succeeded, "\(r.stderr)")
        return r.stdout
    }

    /// mm_stat from the stats directory as 9 numbers.
    func mmStat() -> [UInt64] {
        (dir.read("stats/mm_stat") ?? "").split(separator: " ").compactMap { UInt64($0.trimmingNewline) }
    }

    func stop() -> Termination { process.stop(grace: .seconds(10)) }
}

/// Receives sd_notify datagrams, like systemd does for Type=notify.
final class NotifyListener {
    let path: String
    let fd: Int32

    init(path: String) throws {
        self.path = path
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var addr = try Sockets.unixAddress(path)
        let ok = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard ok == 0 else { throw DaemonError.errno("bind \(path)") }
    }

    deinit { close(fd) }

    /// Datagrams until one contains `marker`; nil after `timeout` ms.
    func receive(until marker: String, timeout: Int32) -> String? {
        messages(until: marker, timeout: timeout).last.flatMap { $0.contains(marker) ? $0 : nil }
    }

    /// Every datagram received until one contains `marker` (the last), or until `timeout` ms
    /// pass with none.
    func messages(until marker: String, timeout: Int32) -> [String] {
        var out: [String] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        while Sockets.waitReadable(fd, timeout: timeout) {
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            guard n > 0 else { break }
            out.append(String(decoding: buf[0..<n], as: UTF8.self))
            if out[out.count - 1].contains(marker) { break }
        }
        return out
    }
}

/// 16 MiB of known pages: zero pages, same-filled pages, text, and random (incompressible) pages,
/// with the counts zram must report for them.
struct Corpus {
    static let pages = 4096
    var bytes: [UInt8]
    var samePages = 0
    var randomPages = 0

    init() {
        bytes = [UInt8](repeating: 0, count: Corpus.pages * 4096)
        let text = Array("""
            zramnbd stores each 4 KiB page compressed in a zsmalloc pool; same-filled pages cost nothing \
            and incompressible pages are stored raw. The quick brown fox jumps over the lazy dog 0123456789.
            """.utf8)
        // Text repeated past one page plus one period, so any page can start at any phase.
        let tiled = (0..<(8192 / text.count + 2)).flatMap { _ in text }
        var rng: UInt64 = 0x2545F4914F6CDD1D
        var same = 0, random = 0
        bytes.withUnsafeMutableBytes { raw in
            let out = raw.baseAddress!
            for p in 0..<Corpus.pages {
                let page = out + p * 4096
                switch p % 8 {
                case 0: same += 1                                          // zeros
                case 1: memset(page, Int32(p & 0xff | 1), 4096); same += 1  // one repeated byte
                case 2:                                                    // random: incompressible
                    for i in 0..<512 {
                        rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17
                        page.storeBytes(of: rng, toByteOffset: i * 8, as: UInt64.self)
                    }
                    random += 1
                default:                                                   // text, shifted per page
                    tiled.withUnsafeBytes { _ = memcpy(page, $0.baseAddress! + (p * 7) % text.count, 4096) }
                }
            }
        }
        samePages = same
        randomPages = random
    }

    func write(to path: String) {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        bytes.withUnsafeBytes { _ = Glibc.write(fd, $0.baseAddress, $0.count) }
        close(fd)
    }
}

/// A libnbd handle on the daemon's export.
final class NBDClient {
    let h: OpaquePointer
    init(socket: String, export: String = "zram0") throws {
        h = nbd_create()
        nbd_set_export_name(h, export)
        guard nbd_connect_unix(h, socket) == 0 else { throw DaemonError.device(String(cString: nbd_get_error())) }
    }
    func zero(_ offset: UInt64, _ length: UInt64) -> Bool { nbd_zero(h, length, offset, 0) == 0 }
    func write(_ bytes: [UInt8], at offset: UInt64) -> Int32 {
        let rc = bytes.withUnsafeBytes { nbd_pwrite(h, $0.baseAddress, $0.count, offset, 0) }
        return rc == 0 ? 0 : nbd_get_errno()
    }
    func read(_ length: Int, at offset: UInt64) -> Int32 {
        var buf = [UInt8](repeating: 0, count: length)
        let rc = buf.withUnsafeMutableBytes { nbd_pread(h, $0.baseAddress, $0.count, offset, 0) }
        return rc == 0 ? 0 : nbd_get_errno()
    }
    func trim(_ offset: UInt64, _ length: UInt64) -> Bool { nbd_trim(h, length, offset, 0) == 0 }
    func flush() -> Bool { nbd_flush(h, 0) == 0 }
    func close() { nbd_close(h) }
}

@Suite("zramnbd serve, end to end")
struct EndToEndTests {
    @Test("write a corpus with nbdcopy; mm_stat, status --json and Prometheus agree with each other and the data")
    func corpusAndStats() throws {
        let dir = TempDir()
        defer { dir.remove() }
        let d = try RunningDaemon(dir)
        let corpus = Corpus()
        corpus.write(to: dir.file("corpus.bin"))

        let copy = try Subprocess.run(["nbdcopy", "-S", "0", "--no-extents", dir.file("corpus.bin"), d.uri],
                                      outputPrefix: dir.file("nbdcopy"))
        #expect(copy.succeeded, "\(copy.stderr)")
        // The periodic refresh (every 0.2 s here) publishes the new data without any request.
        var refreshed = false
        for _ in 0..<500 where !refreshed {
            refreshed = d.mmStat().first == UInt64(corpus.bytes.count)
            if !refreshed { var ts = timespec(tv_sec: 0, tv_nsec: 10_000_000); nanosleep(&ts, nil) }
        }
        #expect(refreshed)
        let back = try Subprocess.run(["nbdcopy", "--no-extents", d.uri, dir.file("back.bin")], outputPrefix: dir.file("nbdcopy-back"))
        #expect(back.succeeded, "\(back.stderr)")
        let backBytes = try FileSystem.readBytes(dir.file("back.bin"))
        #expect(backBytes.count == 64 << 20)
        let zeros = [UInt8](repeating: 0, count: backBytes.count - corpus.bytes.count)
        backBytes.withUnsafeBytes { back in
            corpus.bytes.withUnsafeBytes { #expect(memcmp(back.baseAddress!, $0.baseAddress!, $0.count) == 0) }
            zeros.withUnsafeBytes { #expect(memcmp(back.baseAddress! + corpus.bytes.count, $0.baseAddress!, $0.count) == 0) }
        }

        // compact publishes at once; with no I/O in between, files and status see one state.
        #expect(try d.ctl(["compact"]).succeeded)
        let mm = d.mmStat()
        #expect(mm.count == 9)
        #expect(mm[0] == UInt64(corpus.bytes.count))               // orig_data_size: every page written
        #expect(mm[5] == UInt64(corpus.samePages))                 // same_pages
        #expect(mm[7] == UInt64(corpus.randomPages))               // huge_pages: random pages don't compress
        #expect(mm[1] < mm[0] / 2 && mm[2] >= mm[1])               // compresses; total ≥ compressed
        let json = try d.statusJSON()
        let names = ["orig_data_size", "compr_data_size", "mem_used_total", "mem_limit", "mem_used_max",
                     "same_pages", "pages_compacted", "huge_pages", "huge_pages_since"]
        for (i, n) in names.enumerated() { #expect(json.contains("\"\(n)\":\(mm[i]),"), "\(n)") }
        let prom = dir.read("zramnbd.prom") ?? ""
        #expect(prom.contains("zramnbd_orig_data_bytes{device=\"zram0\"} \(mm[0])\n"))
        #expect(prom.contains("zramnbd_mem_used_total_bytes{device=\"zram0\"} \(mm[2])\n"))
        #expect(dir.read("stats/disksize") == "67108864\n")
        #expect(dir.read("stats/comp_algorithm") == "lzo-rle lzo [lz4] lz4hc zstd deflate \n")

        let info = try Subprocess.run(["nbdinfo", "--json", d.uri], outputPrefix: dir.file("nbdinfo"))
        #expect(info.succeeded && info.stdout.contains("\"export-size\": 67108864"), "\(info.stdout)")

        #expect(d.stop() == .exited(0))
        #expect(!FileSystem.exists(d.socket) && !FileSystem.exists(d.control) && !FileSystem.exists(d.stats))
    }

    @Test("compact, mem-limit, mem-used-max-reset and reset through the CLI change the files")
    func controls() throws {
        let dir = TempDir()
        defer { dir.remove() }
        let d = try RunningDaemon(dir)
        let corpus = Corpus()
        let client = try NBDClient(socket: d.socket)
        #expect(client.write(corpus.bytes, at: 0) == 0)
        // Fragment the pool: zero every other text page, then compact.
        for p in stride(from: 3, to: Corpus.pages, by: 2) where p % 8 >= 3 { #expect(client.zero(UInt64(p * 4096), 4096)) }
        #expect(try d.ctl(["mem-used-max-reset"]).succeeded)
        let before = d.mmStat()
        let compact = try d.ctl(["compact"])
        #expect(compact.succeeded && compact.stdout.hasPrefix("pages_compacted="))
        let after = d.mmStat()
        #expect(after[6] > 0 && after[6] == before[6] + (before[2] - after[2]) / 4096)   // freed = pages compacted
        #expect(after[4] == before[4])                                                    // the peak stays

        #expect(try d.ctl(["mem-limit", "1M"]).succeeded)
        #expect(dir.read("stats/mem_limit") == "1048576\n")
        #expect(d.mmStat()[3] == 1 << 20)
        // The pool is over the limit: a write of fresh data fails with ENOSPC and counts.
        var fresh = corpus.bytes[(4 * 4096)..<(5 * 4096)].map { $0 ^ 0x5a }
        fresh[0] = 1
        #expect(client.write(fresh, at: 60 << 20) == ENOSPC)
        #expect(try d.ctl(["show"]).stdout.contains("failed_writes=1"))

        let busy = try d.ctl(["reset"])
        #expect(busy.termination == .exited(1) && busy.stderr.contains("in use by 1 NBD connection"))
        client.close()
        try waitForNoConnections(d)
        #expect(try d.ctl(["reset"]).succeeded)
        #expect(d.mmStat()[0] == 0 && d.mmStat()[2] == 0)
        #expect(dir.read("stats/io_stat") == "       0        0 0        0\n")
        #expect(d.stop() == .exited(0))
    }

    @Test("swap safety: memory locked, IO_FLUSHER and oom_score_adj, or a clear warning for each")
    func swapSafety() throws {
        let dir = TempDir()
        defer { dir.remove() }
        let d = try RunningDaemon(dir, lockMemory: true)
        let status = Subprocess.readFile("/proc/\(d.process.pid)/status")
        let stderr = d.process.stderr
        let mlocked = hasCapability(14)   // CAP_IPC_LOCK
        if mlocked {
            let locked = status.split(separator: "\n").first { $0.hasPrefix("VmLck:") }.map(String.init) ?? ""
            #expect(!locked.hasSuffix(" 0 kB"), "\(locked)")
            #expect(!stderr.contains("mlockall failed"))
        }
        if hasCapability(24) {   // CAP_SYS_RESOURCE
            #expect(Subprocess.readFile("/proc/\(d.process.pid)/oom_score_adj") == "-1000\n")
            #expect(!stderr.contains("warning"), "\(stderr)")
        } else {
            print("no CAP_SYS_RESOURCE here: checking the warnings instead")
            #expect(stderr.contains("zramnbd: warning: PR_SET_IO_FLUSHER refused (Operation not permitted): needs CAP_SYS_RESOURCE"))
            #expect(stderr.contains("zramnbd: warning: cannot set oom_score_adj to -1000 (needs CAP_SYS_RESOURCE)"))
        }
        // Locked memory must still be given back: after a reset the device reads zeros.
        let page = [UInt8](repeating: 0x6b, count: 4096)
        let client = try NBDClient(socket: d.socket)
        #expect(client.write(page, at: 0) == 0)
        client.close()
        try waitForNoConnections(d)
        #expect(try d.ctl(["reset"]).succeeded)
        let r = try Subprocess.run(["nbdcopy", "--no-extents", d.uri, dir.file("after-reset.bin")], outputPrefix: dir.file("nbdcopy"))
        #expect(r.succeeded, "\(r.stderr)")
        let back = try FileSystem.readBytes(dir.file("after-reset.bin"))
        let zeros = [UInt8](repeating: 0, count: 64 << 20)
        #expect(back.count == zeros.count && memcmp(back, zeros, zeros.count) == 0, "stale data after reset (mlocked: \(mlocked))")
        #expect(d.stop() == .exited(0))
    }

    @Test("same data, same numbers: the stats files match kernel zram's mm_stat and io_stat")
    func kernelOracle() throws {
        if let why = KernelZram.unavailableReason { print("skipping the kernel zram comparison: \(why)"); return }
        let dir = TempDir()
        defer { dir.remove() }
        let d = try RunningDaemon(dir)
        let corpus = Corpus()
        let kernel = try KernelZram(algorithm: "lz4", diskSize: 64 << 20)
        defer { kernel.remove() }
        var aligned: UnsafeMutableRawPointer?
        posix_memalign(&aligned, 4096, corpus.bytes.count)
        defer { free(aligned) }
        corpus.bytes.withUnsafeBytes { _ = memcpy(aligned!, $0.baseAddress!, $0.count) }
        try kernel.write(aligned!, count: corpus.bytes.count, offset: 0)
        let client = try NBDClient(socket: d.socket)
        #expect(client.write(corpus.bytes, at: 0) == 0)
        // Discard the second half on both: notify_free counts the freed pages.
        try kernel.discard(offset: 8 << 20, length: 8 << 20)
        #expect(nbd_trim(client.h, 8 << 20, 8 << 20, 0) == 0)
        client.close()
        // Restart both peaks from the current usage; the control request also publishes our files.
        "0".withCString { z in
            let fd = open(kernel.sysfs + "/mem_used_max", O_WRONLY)
            #expect(fd >= 0 && Glibc.write(fd, z, 1) == 1)
            close(fd)
        }
        #expect(try d.ctl(["mem-used-max-reset"]).succeeded)
        let ours = d.mmStat(), theirs = try kernel.mmStat()
        print("kernel mm_stat: \(theirs)\nours:          \(ours)")
        #expect(ours[0] == theirs[0])                                  // orig_data_size
        #expect(ours[3...5] == theirs[3...5])                          // mem_limit, mem_used_max, same_pages
        #expect(ours[7] == theirs[7] && ours[8] == theirs[8])          // huge_pages, huge_pages_since
        #expect(abs(Double(ours[1]) - Double(theirs[1])) <= Double(theirs[1]) * 0.005)   // liblz4 vs kernel lz4
        #expect(abs(Double(ours[2]) - Double(theirs[2])) <= Double(theirs[2]) * 0.01)
        let io = (dir.read("stats/io_stat") ?? "").split(separator: " ", omittingEmptySubsequences: true).map { $0.trimmingNewline }
        #expect(io == (try kernel.ioStat()).map { String($0) })
        #expect(d.stop() == .exited(0))
    }

    @Test("devices from a config file; add and remove one at runtime; SIGTERM with a client attached")
    func configAndRuntimeDevices() throws {
        let dir = TempDir()
        defer { dir.remove() }
        dir.write("z.conf", """
            [zramnbd]
            control-socket = \(dir.file("control.sock"))
            [zram0]
            zram-size = 32
            socket = \(dir.file("zram0.sock"))
            stats-dir = \(dir.file("zram0"))
            [zram1]
            zram-size = 16
            compression-algorithm = zstd(level=1)
            socket = \(dir.file("zram1.sock"))
            stats-dir = \(dir.file("zram1"))
            """)
        let notify = try NotifyListener(path: dir.file("notify.sock"))
        let p = try Subprocess([zramnbdBinary, "serve", "--config", dir.file("z.conf"), "--no-mlock"],
                               outputPrefix: dir.file("daemon"), environment: ["NOTIFY_SOCKET": notify.path])
        #expect(notify.receive(until: "READY=1", timeout: 30_000) != nil, "\(p.stderr)")
        func run(_ args: [String], _ tag: String) throws -> CommandResult {
            try Subprocess.run(args, outputPrefix: dir.file(tag))
        }
        let status = try run([zramnbdBinary, "status", "--bytes", "--control-socket", dir.file("control.sock")], "status")
        #expect(status.stdout.contains("zram0 lzo-rle ") && status.stdout.contains(" 33554432 "))
        #expect(status.stdout.contains("zram1 zstd ") && status.stdout.contains(" 16777216 "))
        #expect(dir.read("zram1/comp_algorithm") == "lzo-rle lzo lz4 lz4hc [zstd] deflate \n")

        let add = try run([zramnbdBinary, "ctl", "--control-socket", dir.file("control.sock"), "zram2", "add", "size=8M",
                           "socket=\(dir.file("zram2.sock"))", "stats-dir=\(dir.file("zram2"))"], "add")
        #expect(add.succeeded, "\(add.stderr)")
        let info = try run(["nbdinfo", "--size", "nbd+unix:///zram2?socket=\(dir.file("zram2.sock"))"], "info")
        #expect(info.stdout == "8388608\n", "\(info.stderr)")
        #expect(dir.read("zram2/disksize") == "8388608\n")
        let remove = try run([zramnbdBinary, "ctl", "--control-socket", dir.file("control.sock"), "zram2", "remove"], "remove")
        #expect(remove.succeeded, "\(remove.stderr)")
        #expect(!FileSystem.exists(dir.file("zram2.sock")) && !FileSystem.exists(dir.file("zram2")))

        // A client still attached: SIGTERM closes it and the daemon exits cleanly.
        let client = try NBDClient(socket: dir.file("zram0.sock"))
        #expect(client.write([UInt8](repeating: 7, count: 4096), at: 0) == 0)
        #expect(p.stop(grace: .seconds(15)) == .exited(0))
        client.close()
        #expect(!FileSystem.exists(dir.file("zram0.sock")) && !FileSystem.exists(dir.file("control.sock")))
        #expect(!FileSystem.exists(dir.file("zram0")) && !FileSystem.exists(dir.file("zram1")))
    }

    @Test("socket activation: a passed socket serves its device")
    func socketActivation() throws {
        guard let activate = findTool("systemd-socket-activate") else {
            print("skipping socket activation: systemd-socket-activate is not installed"); return
        }
        let dir = TempDir()
        defer { dir.remove() }
        let sock = dir.file("zram0.sock")
        let p = try Subprocess([activate, "-l", sock, zramnbdBinary, "serve", "--size", "32M", "--socket", sock,
                                "--stats-dir", dir.file("stats"), "--control-socket", "none", "--no-mlock"],
                               outputPrefix: dir.file("daemon"))
        // systemd-socket-activate listens before it starts us: the first client starts the daemon.
        var info: CommandResult?
        for _ in 0..<100 where info?.succeeded != true {
            if FileSystem.exists(sock) { info = try Subprocess.run(["nbdinfo", "--size", "nbd+unix:///?socket=\(sock)"], outputPrefix: dir.file("info")) }
            if info?.succeeded != true { var ts = timespec(tv_sec: 0, tv_nsec: 20_000_000); nanosleep(&ts, nil) }
        }
        #expect(info?.stdout == "33554432\n", "\(info?.stderr ?? "") \(p.stderr)")
        #expect(p.stop(grace: .seconds(10)) == .exited(0))
    }

    @Test("systemd: WATCHDOG=1 at half of WATCHDOG_USEC, STATUS= follows the data, STOPPING=1")
    func systemdNotify() throws {
        let dir = TempDir()
        defer { dir.remove() }
        let d = try RunningDaemon(dir, environment: ["WATCHDOG_USEC": "400000"])
        #expect(d.notify.receive(until: "WATCHDOG=1", timeout: 5000) != nil)
        #expect(d.notify.receive(until: "WATCHDOG=1", timeout: 5000) != nil)   // and again
        let client = try NBDClient(socket: d.socket)
        #expect(client.write([UInt8](repeating: 1, count: 1 << 20), at: 0) == 0)
        client.close()
        #expect(d.notify.receive(until: "STATUS=zram0 1M/64M", timeout: 5000) != nil)
        d.process.signal(SIGTERM)
        #expect(d.notify.receive(until: "STOPPING=1", timeout: 5000) != nil)
        #expect(d.stop() == .exited(0))
    }

    @Test("ctl: add refuses an unknown key in a sentence; get takes kebab-case and sysfs names alike")
    func ctlSentences() throws {
        let dir = TempDir()
        defer { dir.remove() }
        let d = try RunningDaemon(dir)
        let bogus = try d.ctl(["add", "bogus=1", "socket=\(dir.file("zram4.sock"))"], device: "zram4")
        #expect(bogus.termination == .exited(1))
        #expect(bogus.stderr.hasPrefix("zramnbd: error: zram4: unknown key 'bogus' (keys: size, mem-limit, algorithm, level, "), "\(bogus.stderr)")
        #expect(!bogus.stderr.contains("ignored") && !bogus.stderr.contains(":0") && bogus.stderr.filter { $0 == "\n" }.count == 1)
        let chain = try d.ctl(["add", "size=1M", "chain-size=99", "socket=\(dir.file("zram4.sock"))"], device: "zram4")
        #expect(chain.stderr == "zramnbd: error: zram4: chain-size: invalid chain size 99 (4...16)\n")
        #expect(try d.ctl(["get", "disksize"], device: "zram4").termination == .exited(1), "zram4 must not exist")

        let client = try NBDClient(socket: d.socket)
        #expect(client.write([UInt8](repeating: 0x5c, count: 8192), at: 0) == 0)
        client.close()
        for (kebab, snake) in [("mem-used-total", "mem_used_total"), ("writeback-limit", "writeback_limit"), ("orig-data-size", "orig_data_size")] {
            let a = try d.ctl(["get", kebab]), b = try d.ctl(["get", snake])
            #expect(a.succeeded && b.succeeded && a.stdout == b.stdout && !a.stdout.isEmpty, "\(kebab): \(a.stderr) \(b.stderr)")
        }
        #expect(try d.ctl(["get", "orig-data-size"]).stdout == "8192\n")
        let unknown = try d.ctl(["get", "colour"])
        #expect(unknown.termination == .exited(2) && unknown.stderr == "zramnbd: error: zram0: unknown key 'colour' (see: zramnbd ctl zram0 show)\n")
        #expect(d.stop() == .exited(0))
    }

    @Test("--stdio serves nbdinfo one connection")
    func stdio() throws {
        let dir = TempDir()
        defer { dir.remove() }
        let r = try Subprocess.run(["nbdinfo", "--json", "--", "[", zramnbdBinary, "serve", "--stdio", "--size", "64M", "]"],
                                   outputPrefix: dir.file("nbdinfo"))
        #expect(r.succeeded, "\(r.stderr)")
        #expect(r.stdout.contains("\"export-size\": 67108864"))
    }

    @Test("zramnbd-swap sets up and tears down swap with the right commands")
    func setupScript() throws {
        let dir = TempDir()
        defer { dir.remove() }
        let d = try RunningDaemon(dir)
        // Stand-ins for the kernel tools, logging their arguments, and a fake /sys with free nbd devices.
        let log = dir.file("commands.log")
        for tool in ["nbd-client", "mkswap", "swapon", "swapoff", "modprobe", "mkfs", "mount", "umount"] {
            dir.write("bin/\(tool)", "#!/bin/sh\necho \"\(tool) $*\" >> \(log)\n")
            chmod(dir.file("bin/\(tool)"), 0o755)
        }
        dir.write("sys/block/nbd0/size", "0\n")
        dir.write("sys/block/nbd0/pid", "1\n")    // in use
        dir.write("sys/block/nbd1/size", "0\n")
        let env = ["PATH": dir.file("bin") + ":/usr/bin:/bin", "ZRAMNBD": zramnbdBinary, "ZRAMNBD_CONTROL": d.control,
                   "ZRAMNBD_SYSFS": dir.file("sys"), "ZRAMNBD_CONNECTIONS": "2"]
        let start = try Subprocess.run([packageRoot + "/scripts/zramnbd-swap", "start", "zram0"],
                                       outputPrefix: dir.file("start"), environment: env)
        #expect(start.succeeded, "\(start.stderr)")
        #expect(dir.read("commands.log") == """
            nbd-client -unix \(d.socket) /dev/nbd1 -b 4096 -C 2 -N zram0
            mkswap -L zram0 /dev/nbd1
            swapon -o discard -p 100 /dev/nbd1

            """)
        #expect(try d.ctl(["get", "nbd_device"]).stdout == "/dev/nbd1\n")
        let again = try Subprocess.run([packageRoot + "/scripts/zramnbd-swap", "start", "zram0"],
                                       outputPrefix: dir.file("again"), environment: env)
        #expect(again.termination == .exited(1) && again.stderr.contains("already attached to /dev/nbd1"))

        unlink(log)
        let stop = try Subprocess.run([packageRoot + "/scripts/zramnbd-swap", "stop", "zram0"],
                                      outputPrefix: dir.file("stop"), environment: env)
        #expect(stop.succeeded, "\(stop.stderr)")
        #expect(dir.read("commands.log") == "nbd-client -d /dev/nbd1\n")   // not in /proc/swaps: no swapoff
        #expect(try d.ctl(["get", "nbd_device"]).stdout == "\n")
        #expect(d.stop() == .exited(0))
    }
}


/// Full path of `tool` in PATH. (TestSupport's `Subprocess.which` splits PATH into characters:
/// `split` + an array literal picks the [[Character]] overload, so it never finds anything.)
func findTool(_ tool: String) -> String? {
    let path = getenv("PATH").map { String(cString: $0) } ?? "/usr/bin:/bin"
    let dirs: [String] = path.split(separator: ":").map(String.init) + ["/usr/sbin", "/sbin"]
    return dirs.map { "\($0)/\(tool)" }.first { access($0, X_OK) == 0 }
}

/// The server notices a closed connection on its own thread: poll the daemon until it is gone.
func waitForNoConnections(_ d: RunningDaemon) throws {
    for _ in 0..<500 {
        if try d.ctl(["get", "connections"]).stdout == "0\n" { return }
        var ts = timespec(tv_sec: 0, tv_nsec: 10_000_000)
        nanosleep(&ts, nil)
    }
    Issue.record("the daemon still counts a connection after the client closed")
}
