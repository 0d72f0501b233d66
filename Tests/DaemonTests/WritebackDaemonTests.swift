import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif
@testable import ZramDaemon
import ZramDevice

/// Resident memory of a process (VmRSS in /proc/PID/status), in bytes.
func residentBytes(of pid: pid_t) -> UInt64 {
    guard let text = try? FileSystem.readText("/proc/\(pid)/status") else { return 0 }
    for line in text.split(separator: "\n") where line.hasPrefix("VmRSS:") {
        return (UInt64(line.split(separator: " ")[1]) ?? 0) * 1024
    }
    return 0
}

extension RunningDaemon {
    /// mm_stat's nine numbers from a fresh `ctl show` (the stats files refresh on a timer).
    func showMmStat() throws -> [UInt64] {
        let fields = try ctl(["show"]).stdout.split(separator: "\n")
        let names = ["orig_data_size", "compr_data_size", "mem_used_total", "mem_limit", "mem_used_max",
                     "same_pages", "pages_compacted", "huge_pages", "huge_pages_since"]
        return names.map { n in fields.first { $0.hasPrefix(n + "=") }.flatMap { UInt64($0.dropFirst(n.count + 1)) } ?? 0 }
    }
}

@Suite("writeback through the daemon")
struct WritebackDaemonTests {
    @Test("ctl idle all + writeback type=idle: the data reads back through nbdcopy, memory falls, bd_stat counts the pages")
    func idleWriteback() throws {
        let dir = TempDir()
        defer { dir.remove() }
        let backing = dir.file("backing")
        let d = try RunningDaemon(dir, extra: ["--backing-dev", backing])
        #expect(dir.read("stats/backing_dev") == backing + "\n")
        let corpus = Corpus()
        corpus.write(to: dir.file("corpus.bin"))
        let copy = try Subprocess.run(["nbdcopy", "-S", "0", "--no-extents", dir.file("corpus.bin"), d.uri], outputPrefix: dir.file("nbdcopy"))
        #expect(copy.succeeded, "\(copy.stderr)")
        let before = try d.showMmStat()
        let rssBefore = residentBytes(of: d.process.pid)

        #expect(try d.ctl(["idle", "all"]).succeeded)
        let wb = try d.ctl(["writeback", "type=idle"])
        let stored = Corpus.pages - corpus.samePages
        #expect(wb.succeeded && wb.stdout.hasPrefix("wrote back \(stored) pages"), "\(wb.stdout) \(wb.stderr)")
        let after = d.mmStat()
        let rssAfter = residentBytes(of: d.process.pid)
        print("writeback of \(stored) pages: mem_used_total \(before[2]) -> \(after[2]) bytes, daemon RSS \(rssBefore >> 10) -> \(rssAfter >> 10) KiB")
        #expect(after[0] == before[0])                      // orig_data_size: still every page
        #expect(after[1] == 0 && after[2] < before[2] / 8)  // compr_data_size gone, the pool nearly empty
        #expect(rssAfter + (before[2] - after[2]) / 4 < rssBefore)   // measured: half of the pool comes back as RSS at once
        #expect(dir.read("stats/bd_stat") == "\(rightAligned(UInt64(stored), width: 8))        0 \(rightAligned(UInt64(stored), width: 8))\n")

        let back = try Subprocess.run(["nbdcopy", "--no-extents", d.uri, dir.file("back.bin")], outputPrefix: dir.file("back"))
        #expect(back.succeeded, "\(back.stderr)")
        let bytes = try FileSystem.readBytes(dir.file("back.bin"))
        #expect(Array(bytes[0..<corpus.bytes.count]) == corpus.bytes)
        let show = try d.ctl(["show"]).stdout
        #expect(show.contains("bd_reads=\(stored)") && show.contains("writeback_runs=1"))
        #expect((dir.read("stats/stat.json") ?? "").contains("\"writeback_runs\":1,"))
        #expect((dir.read("zramnbd.prom") ?? "").contains("zramnbd_writeback_runs_total{device=\"zram0\"} 1\n"))
        let state = try d.ctl(["block-state"]).stdout.split(separator: "\n")
        #expect(state.count == Corpus.pages)
        #expect(state.filter { $0.hasSuffix(" .w....") }.count == stored, "\(state.prefix(3))")

        #expect(d.stop() == .exited(0))
        #expect(!FileSystem.exists(backing))                // created by the daemon, so removed on exit
    }

    @Test("writeback settings from the config file: the limit stops a run with EIO, and the files show it")
    func limitFromConfig() throws {
        let dir = TempDir()
        defer { dir.remove() }
        dir.write("z.conf", """
            [zram0]
            zram-size = 64
            writeback-device = \(dir.file("wb.img"))
            writeback-limit = 10
            writeback-limit-enable = yes
            writeback-batch-size = 4
            socket = \(dir.file("zram0.sock"))
            stats-dir = \(dir.file("stats"))
            """)
        let d = try RunningDaemon(dir, extra: ["--config", dir.file("z.conf")], deviceFlags: false)
        #expect(dir.read("stats/writeback_limit") == "10\n" && dir.read("stats/writeback_limit_enable") == "1\n")
        #expect(dir.read("stats/writeback_batch_size") == "4\n")
        let client = try NBDClient(socket: d.socket)
        #expect(client.write(Corpus().bytes, at: 0) == 0)
        let wb = try d.ctl(["writeback", "page_indexes=0-99"])
        #expect(wb.termination == .exited(1))
        #expect(wb.stderr.contains("wrote back 10 pages") && wb.stderr.contains("writeback_limit reached (errno 5)"), "\(wb.stderr)")
        #expect(dir.read("stats/writeback_limit") == "0\n")
        #expect(dir.read("stats/bd_stat")?.hasPrefix("      10        0       10") == true)
        #expect(try d.ctl(["writeback-limit", "0x10"]).termination == .exited(1))   // base 10, as the kernel's
        #expect(try d.ctl(["writeback-limit", "20"]).succeeded)
        #expect(try d.ctl(["writeback", "page_indexes=0-99"]).stderr.contains("wrote back 20 pages"))
        client.close()
        #expect(d.stop() == .exited(0))
    }

    @Test("bad writeback input: one clear line each, nothing changes")
    func badInput() throws {
        let dir = TempDir()
        defer { dir.remove() }
        let d = try RunningDaemon(dir)
        let cases: [([String], String)] = [
            (["writeback", "type=idle"], "no backing device (set one with backing-dev PATH)"),
            (["writeback", "page_indexes=5-4"], "page_indexes=5-4 is outside 0-16383 or reversed"),
            (["writeback", "colour=blue"], "unknown key 'colour'"),
            (["idle", "soon"], "expected 'all' or an age in seconds, got 'soon'"),
            (["writeback-batch-size", "0"], "expected a number above 0"),
            (["backing-dev", dir.file("no/such/dir/wb")], "its directory does not exist"),
            (["backing-dev", dir.path], "is not a regular file or a block device"),
            (["backing-dev", "relative.img"], "not an absolute path"),
            (["compressed-writeback", "maybe"], "expected 0 or 1"),
            (["block-state", "9-1"], "expected LO-HI page numbers"),
        ]
        for (args, message) in cases {
            let r = try d.ctl(args)
            #expect(r.termination == .exited(1), "\(args)")
            #expect(r.stderr.contains(message) && r.stderr.split(separator: "\n").count == 1, "\(args): \(r.stderr)")
        }
        #expect(dir.read("stats/backing_dev") == "none\n")
        let add = try d.ctl(["add", "backing-dev=\(dir.file("nope/x"))", "size=1M"], device: "zram1")
        #expect(add.termination == .exited(1) && add.stderr.contains("its directory does not exist"), "\(add.stderr)")
        #expect(d.stop() == .exited(0))
    }
}

/// A store that records the attribute writes a policy makes.
final class RecordingStore: PageStore, @unchecked Sendable {   // @unchecked: guarded by `lock`
    private let lock = NSLockish()
    private var writes: [String] = []
    func snapshot(classes: Bool) -> DeviceSnapshot { DeviceSnapshot(name: "rec") }
    func compact() throws(DaemonError) -> UInt64 { 0 }
    func reset() throws(DaemonError) {}
    func setMemLimit(_ bytes: UInt64) throws(DaemonError) {}
    func resetMemUsedMax() throws(DaemonError) {}
    var compactablePages: Int { 0 }
    func writeAttribute(_ name: String, _ value: String) throws(DaemonError) -> [String] {
        lock.with { writes.append("\(name) \(value)") }
        return name == "writeback" ? ["wrote back 3 pages (12K, freed 8K) in 0.00 s"] : []
    }
    var recorded: [String] { lock.with { writes } }
    /// Waits (polling, 10 s at most) until `count` writes are recorded.
    func waitFor(_ count: Int) -> [String] {
        for _ in 0..<1000 {
            let r = recorded
            if r.count >= count { return r }
            var ts = timespec(tv_sec: 0, tv_nsec: 10_000_000)
            nanosleep(&ts, nil)
        }
        return recorded
    }
}

@Suite("post-processing policies: writeback and recompression on their own")
struct PostProcessorTests {
    @Test("memory pressure writes back idle pages at once (5-minute age by default), at most every 10 s per device")
    func pressure() throws {
        let policy = PostProcessor(log: Log(level: .error)) { _ in }
        let store = RecordingStore()
        var p = DeviceSpec.PostProcessingPolicy()
        p.onPressure = true
        policy.register("zram0", store: store, policy: p)
        #expect(policy.needsPressureEvents)
        try policy.start()
        defer { policy.stop() }
        policy.pressure()
        #expect(store.waitFor(2) == ["idle 300", "writeback type=idle"])
        policy.pressure()   // within 10 s of the last: nothing
        policy.unregister("zram0")
        policy.register("zram1", store: store, policy: p)
        policy.pressure()
        #expect(store.waitFor(4) == ["idle 300", "writeback type=idle", "idle 300", "writeback type=idle"])
    }

    @Test("memory pressure recompresses idle pages with recompress-arguments, beside writeback")
    func recompressOnPressure() throws {
        let policy = PostProcessor(log: Log(level: .error)) { _ in }
        let store = RecordingStore()
        var p = DeviceSpec.PostProcessingPolicy()
        p.recompressOnPressure = true
        p.recompressArguments = "type=huge_idle max_pages=100"
        policy.register("zram0", store: store, policy: p)
        #expect(policy.needsPressureEvents)
        try policy.start()
        defer { policy.stop() }
        policy.pressure()
        #expect(store.waitFor(2) == ["idle 300", "recompress type=huge_idle max_pages=100"])
    }

    @Test("the daily limit enables zram's writeback_limit and fills it at once")
    func dailyLimit() throws {
        let policy = PostProcessor(log: Log(level: .error)) { _ in }
        let store = RecordingStore()
        var p = DeviceSpec.PostProcessingPolicy()
        p.dailyLimitPages = 256
        policy.register("zram0", store: store, policy: p)
        try policy.start()
        defer { policy.stop() }
        #expect(store.waitFor(2) == ["writeback_limit 256", "writeback_limit_enable 1"])
    }

    @Test("writeback-idle-after: the daemon writes back pages idle that long by itself, logs it, and keeps to the daily limit")
    func idleAfter() throws {
        let dir = TempDir()
        defer { dir.remove() }
        let d = try RunningDaemon(dir, extra: ["--backing-dev", dir.file("wb"), "--writeback-idle-after", "1",
                                                "--writeback-daily-limit", "40K"])
        #expect(dir.read("stats/writeback_limit_enable") == "1\n")
        let client = try NBDClient(socket: d.socket)
        #expect(client.write(Corpus().bytes, at: 0) == 0)
        // Within a few seconds the pages are idle for 1 s, and the check (every second here) writes
        // back as many as the day's budget allows: 40 KiB, 10 pages.
        var count: UInt64 = 0
        for _ in 0..<2000 where count < 10 {
            count = UInt64(dir.read("stats/bd_stat")?.split(separator: " ").first ?? "0") ?? 0
            if count < 10 { var ts = timespec(tv_sec: 0, tv_nsec: 10_000_000); nanosleep(&ts, nil) }
        }
        #expect(count == 10)
        #expect(try d.ctl(["get", "writeback_limit"]).stdout == "0\n", "\(dir.read("daemon.stderr") ?? "")")
        client.close()
        #expect(d.stop() == .exited(0))
        let log = dir.read("daemon.stderr") ?? ""
        #expect(log.contains("zram0: daily writeback budget refilled to 10 pages"), "\(log)")
        #expect(log.contains("zram0: idle for 1 s: wrote back 10 pages") && log.contains("then stopped: writeback_limit reached"), "\(log)")
    }

    @Test("policies need a backing device; durations read as zram-generator users write them")
    func badPolicies() throws {
        var spec = DeviceSpec(name: "zram0", diskSize: 1 << 20)
        spec.postProcessing.idleAfter = 3600
        #expect(throws: DaemonError.self) { try spec.validate() }
        do { try spec.validate() } catch { #expect(error.description.contains("need a writeback-device")) }
        #expect(try ConfigFile.parseDuration("90") == 90 && ConfigFile.parseDuration("30m") == 1800)
        #expect(try ConfigFile.parseDuration("1d") == 86400 && ConfigFile.parseDuration("none") == nil)
        for bad in ["soon", "0", "-5", "1w", "99999d"] {
            #expect(throws: DaemonError.self, "\(bad)") { try ConfigFile.parseDuration(bad) }
        }
    }
}
