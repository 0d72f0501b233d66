import CNBD
import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif
@testable import ZramDaemon

// Issue 13: sizes are bounded where they are parsed (16 TiB, ByteSize.maximum), config mistakes
// that used to pass silently are one-line errors, and nothing from input stops the daemon.

@Suite("Size limits and config mistakes")
struct LimitTests {
    @Test("sizes up to 16T parse; larger ones are 'too large (at most 16T)'", arguments: [
        "7E", "10E", "8E", "9E", "64P", "100P", "16385G", "17592186044417", "0x100000000001",
    ])
    func tooLarge(_ text: String) {
        do {
            _ = try ByteSize.parse(text)
            Issue.record("accepted \(text)")
        } catch {
            #expect(error.description == "invalid size '\(text)': too large (at most 16T)")
        }
    }

    @Test("the maximum itself is accepted")
    func maximum() throws {
        #expect(ByteSize.maximum == 1 << 44)
        #expect(try ByteSize.parse("16T") == 1 << 44)
        #expect(try ByteSize.parse("16384G") == 1 << 44)
    }

    @Test("negative sizes say so", arguments: ["-1G", "-1", " -0x10", "-5E"])
    func negative(_ text: String) {
        do {
            _ = try ByteSize.parse(text)
            Issue.record("accepted \(text)")
        } catch {
            #expect(error.description == "invalid size '\(text)': must not be negative")
        }
    }

    @Test("config sizes: memparse and expressions are bounded, negatives and non-numbers refused", arguments: [
        // zram-generator's keys are fasteval expressions in MiB: E is no suffix there, T is 10^12.
        ("[zram0]\nzram-size = 10E\n", "b.conf:2: zram-size: invalid expression '10E': bad number '10E'"),
        ("[zram0]\nzram-size = 17T\n", "b.conf:2: zram-size: invalid size '17T': too large (at most 16T); the value is in MiB, and k, M, G, T are powers of 1000 as in zram-generator"),
        ("[zram0]\nzram-size = 64\nzram-resident-limit = 10T\n", "b.conf:3: zram-resident-limit: invalid size '10T': too large (at most 16T)"),
        ("[zram0]\nzram-resident-limit = 8G\n", "b.conf:2: zram-resident-limit: invalid size '8G': too large (at most 16T)"),
        ("[zram0]\nzram-size = ram * 1e12\n", "b.conf:2: zram-size: invalid size 'ram * 1e12': too large (at most 16T)"),
        ("[zram0]\nzram-size = -1\n", "b.conf:2: zram-size: invalid size '-1': must not be negative"),
        ("[zram0]\nzram-size = -1G\n", "b.conf:2: zram-size: invalid size '-1G': must not be negative"),
        ("[zram0]\nzram-size = ram - 2 * ram\n", "b.conf:2: zram-size: invalid size 'ram - 2 * ram': must not be negative"),
        ("[zram0]\nzram-size = 1.5G\n", "b.conf:2: zram-size: invalid size '1.5G': too large (at most 16T)"),
        ("[zram0]\nzram-fraction = 1e30\nmax-zram-size = none\n", "b.conf:2: zram-fraction: invalid size '"),
        ("[zram0]\nzram-fraction = inf\nmax-zram-size = none\n", "b.conf:2: zram-fraction: invalid size 'inf MiB': too large (at most 16T)"),
        ("[zram0]\nmax-zram-size = 18446744073709551615\nzram-fraction = 1e30\n", "b.conf:3: zram-fraction: invalid size '"),
        ("[zram0]\nmax-zram-size = 1e30\n", "b.conf:2: max-zram-size: expected whole MiB or 'none', got '1e30'"),
    ])
    func configSizes(_ text: String, _ message: String) {
        do {
            let c = try ConfigFile.parse([("b.conf", text)], ramMiB: 1000)
            Issue.record("accepted: \(text) → \(c.settings.devices.map(\.diskSize))")
        } catch {
            #expect(error.description.hasPrefix(message), "\(error)")
            #expect(!error.description.contains("\n"))
            #expect(error.exitStatus == 2)
        }
    }

    @Test("a deeply nested expression is an error, not a stack overflow")
    func deepExpression() throws {
        // fasteval's limits: 32 levels, 4096 bytes.
        for text in [String(repeating: "(", count: 1000) + "1", String(repeating: "-", count: 1000) + "1",
                     String(repeating: "min(", count: 1000) + "1", String(repeating: "(", count: 100_000) + "1",
                     String(repeating: "2^", count: 100_000) + "1"] {
            do {
                _ = try SizeExpression(text).evaluate(["ram": 1000])
                Issue.record("evaluated")
            } catch {
                #expect(error.description.contains("nested more than 32 levels deep") || error.description.contains("longer than 4096 bytes"))
            }
        }
        #expect(try SizeExpression(String(repeating: "(", count: 30) + "1" + String(repeating: ")", count: 30)).evaluate([:]) == 1)
    }

    // zram-generator (rust-ini) reads a repeated section as more settings for the same device.
    @Test("a section twice in one file merges, as across files")
    func duplicateSection() throws {
        let twice = try ConfigFile.parse([("d.conf", "[zram0]\nzram-size = 64\n[zram1]\nzram-size = 32\n\n[zram0]\nswap-priority = 5\n")], ramMiB: 1000)
        #expect(twice.settings.devices.map(\.name) == ["zram0", "zram1"])
        #expect(twice.settings.devices[0].swapPriority == 5 && twice.settings.devices[0].diskSize == 64 << 20)
        let daemon = try ConfigFile.parse([("d.conf", "[zramnbd]\nstats-interval = 2\n[zramnbd]\nauto-compact = no\n")], ramMiB: 1000)
        #expect(daemon.settings.statsInterval == 2 && !daemon.settings.autoCompact)
        let merged = try ConfigFile.parse([("a.conf", "[zram0]\nzram-size = 64\n"), ("a.conf.d/b.conf", "[zram0]\nswap-priority = 5\n")], ramMiB: 1000)
        #expect(merged.settings.devices.count == 1 && merged.settings.devices[0].swapPriority == 5)
    }

    @Test("two devices with one stats directory (or one inside the other) is an error", arguments: [
        ("/tmp/s", "/tmp/s"), ("/tmp/s", "/tmp//s/"), ("/tmp/s", "/tmp/./s"), ("/tmp/s", "/tmp/s/inner"), ("/tmp/s/inner", "/tmp/s"),
    ])
    func sharedStatsDir(_ first: String, _ second: String) {
        do {
            _ = try ConfigFile.parse([("e.conf", "[zram0]\nstats-dir = \(first)\n[zram1]\nstats-dir = \(second)\n")], ramMiB: 1000)
            Issue.record("accepted")
        } catch {
            #expect(error.description == "e.conf: zram1: stats directory \(second) collides with zram0's \(first)")
            #expect(error.exitStatus == 2)
        }
    }

    @Test("a device whose stats-dir is another's default directory is refused too")
    func statsDirAgainstDefault() {
        #expect(throws: DaemonError.self) {
            try ConfigFile.parse([("e.conf", "[zram0]\n[zram1]\nstats-dir = /run/zramnbd/zram0\n")], ramMiB: 1000)
        }
        #expect((try? ConfigFile.parse([("e.conf", "[zram0]\n[zram1]\n[zram10]\n")], ramMiB: 1000)) != nil)
    }

    @Test("stats-interval is 0.01...86400 seconds", arguments: [
        ("1e-9", "'1e-9' is outside 0.01...86400 seconds"), ("0.001", "'0.001' is outside 0.01...86400 seconds"),
        ("100000", "'100000' is outside 0.01...86400 seconds"), ("inf", "'inf' is outside 0.01...86400 seconds"),
        ("nan", "expected seconds > 0, got 'nan'"), ("-1", "expected seconds > 0, got '-1'"),
    ])
    func statsInterval(_ value: String, _ problem: String) throws {
        do {
            _ = try ConfigFile.parse([("f.conf", "[zramnbd]\nstats-interval = \(value)\n")], ramMiB: 1000)
            Issue.record("accepted in a config")
        } catch {
            #expect(error.description == "f.conf:2: stats-interval: \(problem)")
        }
        do {
            _ = try Serve.parse(["--size", "1M", "--stats-interval", value]).settings(ramMiB: 1000)
            Issue.record("accepted as a flag")
        } catch {
            #expect("\(error)" == "--stats-interval: \(problem)")
        }
        var s = DaemonSettings()
        s.statsInterval = Double(value) ?? -1
        #expect(throws: DaemonError.self) { try s.validate() }
        #expect(try Serve.parse(["--size", "1M", "--stats-interval", "0.01"]).settings(ramMiB: 1000).settings.statsInterval == 0.01)
    }

    @Test("serve flags: a negative value reaches the size parser; huge sizes are refused", arguments: [
        (["--size", "-1G"], "--size: invalid size '-1G': must not be negative"),
        (["--size", "7E"], "--size: invalid size '7E': too large (at most 16T)"),
        (["--size", "10E"], "--size: invalid size '10E': too large (at most 16T)"),
        (["--size", "1G", "--mem-limit", "8E"], "--mem-limit: invalid size '8E': too large (at most 16T)"),
        (["--size", "1G", "--mem-limit", "-1"], "--mem-limit: invalid size '-1': must not be negative"),
        (["--size", "1G", "--level", "-5", "--algorithm", "lz4"], "--level: invalid level -5 for lz4"),
    ])
    func serveFlags(_ args: [String], _ message: String) {
        do {
            _ = try Serve.parse(args).settings(ramMiB: 1000)
            Issue.record("accepted \(args)")
        } catch {
            #expect("\(error)".hasPrefix(message), "\(error)")
        }
    }

    @Test("zstd's negative levels work as a flag now")
    func negativeLevel() throws {
        let d = try Serve.parse(["--size", "1M", "--algorithm", "zstd", "--level", "-5"]).settings(ramMiB: 1000).settings.devices[0]
        #expect(d.level == -5)
    }

    @Test("DeviceSpec.validate is the last guard for specs built in code")
    func specBounds() throws {
        var s = DeviceSpec(name: "zram0", diskSize: UInt64.max)
        #expect(throws: DaemonError.self) { try s.validate() }
        s.diskSize = (1 << 44) + 1
        #expect(throws: DaemonError.self) { try s.validate() }
        s.diskSize = 1 << 44
        #expect((try? s.validate()) != nil)
        s.memLimit = 9 << 60
        #expect(throws: DaemonError.self) { try s.validate() }
    }

    @Test("control requests with huge sizes are refused where they are parsed", arguments: [
        "mem-limit zram0 8E", "mem-limit zram0 9223372036854775808", "mem-limit zram0 18446744073709551615", "mem-limit zram0 -1",
    ])
    func controlSizes(_ line: String) {
        #expect(throws: DaemonError.self) { try ControlRequest.parse(line) }
    }

    @Test("ctl add: huge sizes, limits and a stats-dir in use are refused by the host; the first device stays")
    func hostAdd() throws {
        let dir = TempDir()
        defer { dir.remove() }
        let (host, _) = try makeHost(dir)
        for settings in [[("size", "64P")], [("size", "100P")], [("size", "1M"), ("mem-limit", "9E")],
                         [("zram-size", "17T")], [("size", "1M"), ("zram-resident-limit", "10T")],
                         [("size", "1M"), ("stats-dir", dir.file("zram0"))], [("size", "1M"), ("stats-dir", dir.file("zram0") + "/")]] {
            let reply = host.handle(.add("zram9", settings))
            guard case .error(let m) = reply else { Issue.record("accepted \(settings)"); continue }
            #expect(m.contains("too large (at most 16T)") || m.contains("collides with zram0's"), "\(m)")
        }
        #expect(host.deviceNames == ["zram0"])
        #expect(FileSystem.exists(dir.file("zram0/mm_stat")))
    }
}

/// The built binary: bad sizes and config mistakes are exit 2 and one line, at `serve` and at
/// `serve --check` alike.
@Suite("zramnbd command line: limits")
struct CLILimitTests {
    @Test("huge, negative and too-frequent values: exit 2 and one clear line, with or without --check", arguments: [
        (["serve", "--size", "7E"], "--size: invalid size '7E': too large (at most 16T)"),
        (["serve", "--size", "10E"], "--size: invalid size '10E': too large (at most 16T)"),
        (["serve", "--size", "1G", "--mem-limit", "8E"], "--mem-limit: invalid size '8E': too large (at most 16T)"),
        (["serve", "--size", "-1G"], "--size: invalid size '-1G': must not be negative"),
        (["serve", "--size", "64M", "--stats-interval", "1e-9"], "--stats-interval: '1e-9' is outside 0.01...86400 seconds"),
        (["serve", "--size", "64M", "--busy-poll-us", "-1"], "--busy-poll-us: expected microseconds 0...10000, got '-1'"),
    ])
    func badFlags(_ args: [String], _ message: String) throws {
        let dir = TempDir()
        defer { dir.remove() }
        // Temp paths and no control socket: nothing system-wide is touched even if it started.
        let paths = ["--socket", dir.file("z.sock"), "--stats-dir", dir.file("stats"), "--control-socket", "none", "--no-mlock"]
        for check in [["--check"], []] {
            let r = try runProcess([zramnbdBinary] + args + paths + check, in: dir)
            #expect(r.status == 2, "\(check): \(r.stderr)")
            #expect(r.stderr == "zramnbd: error: " + message + "\n")
            #expect(r.stdout == "")
        }
    }

    @Test("config mistakes: --check refuses what serve refuses, naming file and line", arguments: [
        ("[zram0]\nzram-size = 17T\n", ":2: zram-size: invalid size '17T': too large (at most 16T); the value is in MiB, and k, M, G, T are powers of 1000 as in zram-generator"),
        ("[zram0]\nzram-size = 64\nzram-resident-limit = 10T\n", ":3: zram-resident-limit: invalid size '10T': too large (at most 16T); the value is in MiB, and k, M, G, T are powers of 1000 as in zram-generator"),
        ("[zram0]\nzram-size = -1\n", ":2: zram-size: invalid size '-1': must not be negative (-1.0 MiB)"),
        ("[zram0\nzram-size = 64\n", ":1: section header '[zram0' has no closing ']'"),
        ("[zramnbd]\nstats-interval = 1e-9\n", ":2: stats-interval: '1e-9' is outside 0.01...86400 seconds"),
    ])
    func badConfig(_ text: String, _ message: String) throws {
        let dir = TempDir()
        defer { dir.remove() }
        dir.write("z.conf", text)
        let r = try runProcess([zramnbdBinary, "serve", "--check", "--config", dir.file("z.conf")], in: dir)
        #expect(r.status == 2)
        #expect(r.stderr == "zramnbd: error: " + dir.file("z.conf") + message + "\n")
        #expect(r.stdout == "")
    }

    @Test("two devices with one stats-dir: --check refuses it")
    func sharedStatsDir() throws {
        let dir = TempDir()
        defer { dir.remove() }
        dir.write("z.conf", "[zram0]\nzram-size = 64\nstats-dir = \(dir.file("s"))\n[zram1]\nzram-size = 64\nstats-dir = \(dir.file("s"))\n")
        let r = try runProcess([zramnbdBinary, "serve", "--check", "--config", dir.file("z.conf")], in: dir)
        #expect(r.status == 2)
        #expect(r.stderr == "zramnbd: error: \(dir.file("z.conf")): zram1: stats directory \(dir.file("s")) collides with zram0's \(dir.file("s"))\n")
    }

    @Test("ctl takes an argument starting with '-' and refuses it as a size, before connecting", arguments: [
        (["zram0", "mem-limit", "-1G"], "invalid size '-1G': must not be negative"),
        (["zram0", "mem-limit", "8E"], "invalid size '8E': too large (at most 16T)"),
        (["zram0", "mem-limit", "--frob"], "invalid size '--frob': expected a number"),
    ])
    func ctlSizes(_ args: [String], _ message: String) throws {
        let dir = TempDir()
        defer { dir.remove() }
        let r = try runProcess([zramnbdBinary, "ctl", "--control-socket", dir.file("none.sock")] + args, in: dir)
        #expect(r.status == 2)
        #expect(r.stderr.hasPrefix("zramnbd: error: " + message) && r.stderr.filter { $0 == "\n" }.count == 1, "\(r.stderr)")
    }

    @Test("--help states the bounds")
    func help() throws {
        let dir = TempDir()
        defer { dir.remove() }
        let r = try runProcess([zramnbdBinary, "serve", "--help"], in: dir)
        #expect(r.stdout.contains("0.01...86400") && r.stdout.contains("16T"), "\(r.stdout)")
    }
}

/// A running daemon: requests that used to kill it (and every device it holds) are refused with
/// an error while zram0 keeps serving its data.
@Suite("zramnbd serve: bad control requests")
struct DaemonSurvivesTests {
    @Test("mem-limit 8E, add size=64P/100P, mem-limit=9E, a shared stats-dir, a deep expression: refused, zram0 intact")
    func survives() throws {
        let dir = TempDir()
        defer { dir.remove() }
        let d = try RunningDaemon(dir)
        var page = [UInt8](repeating: 0, count: 8192)
        for i in page.indices { page[i] = UInt8(truncatingIfNeeded: i &* 31 &+ i >> 7) }
        let client = try NBDClient(socket: d.socket)
        #expect(client.write(page, at: 1 << 20) == 0)

        func stillServing(_ what: String) throws {
            #expect(d.process.termination == nil, "the daemon died after \(what): \(d.process.stderr)")
            let status = try d.zramnbd(["status", "--bytes", "--control-socket", d.control], tag: "status")
            #expect(status.succeeded && status.stdout.contains("zram0 ") && status.stdout.contains(" 67108864 "),
                    "after \(what): \(status.stderr)")
            var back = [UInt8](repeating: 0, count: page.count)
            let rc = back.withUnsafeMutableBytes { nbd_pread(client.h, $0.baseAddress, $0.count, 1 << 20, 0) }
            #expect(rc == 0 && back == page, "data after \(what)")
        }

        // Through `zramnbd ctl`: refused by the client (exit 2) or by the daemon (exit 1).
        let ctlCases: [([String], Int32, String)] = [
            (["zram0", "mem-limit", "8E"], 2, "invalid size '8E': too large (at most 16T)"),
            (["zram9", "add", "size=64P", "socket=\(dir.file("z9.sock"))", "stats-dir=\(dir.file("z9"))"], 1,
             "invalid size '64P': too large (at most 16T)"),
            (["zram9", "add", "size=100P", "socket=\(dir.file("z9.sock"))", "stats-dir=\(dir.file("z9"))"], 1,
             "invalid size '100P': too large (at most 16T)"),
            (["zram9", "add", "size=1M", "mem-limit=9E", "socket=\(dir.file("z9.sock"))", "stats-dir=\(dir.file("z9"))"], 1,
             "invalid size '9E': too large (at most 16T)"),
            (["zram9", "add", "zram-size=17T", "socket=\(dir.file("z9.sock"))"], 1, "zram-size: invalid size '17T': too large (at most 16T)"),
            (["zram9", "add", "size=1M", "socket=\(dir.file("z9.sock"))", "stats-dir=\(d.stats)"], 1,
             "zram9: stats directory \(d.stats) collides with zram0's \(d.stats)"),
            (["zram9", "add", "zram-size=" + String(repeating: "(", count: 30_000) + "1", "socket=\(dir.file("z9.sock"))"], 1,
             "longer than 4096 bytes"),
        ]
        for (args, status, message) in ctlCases {
            let r = try d.zramnbd(["ctl", "--control-socket", d.control] + args, tag: "ctl")
            #expect(r.termination == .exited(status), "\(args.prefix(3)): \(r.stderr)")
            #expect(r.stderr.hasPrefix("zramnbd: error: ") && r.stderr.contains(message) && r.stderr.filter { $0 == "\n" }.count == 1,
                    "\(args.prefix(3)): \(r.stderr)")
            try stillServing(args.prefix(3).joined(separator: " "))
        }
        #expect(FileSystem.exists(dir.file("stats/mm_stat")))   // zram0's stats directory survived the refused add

        // Straight to the control socket, past the client's own checks.
        let raw: [ControlRequest] = [
            .memLimit("zram0", 1 << 63), .memLimit("zram0", UInt64.max), .memLimit("zram0", 7 << 60),
            .add("zram9", [("size", "64P")]), .add("zram9", [("zram-size", "17T")]),
            .add("zram9", [("size", "1M"), ("mem-limit", "9E")]),
            .add("zram9", [("size", "1M"), ("zram-resident-limit", "10T")]),
        ]
        for req in raw {
            do {
                _ = try ControlClient.send(req, socket: d.control)
                Issue.record("accepted: \(req.line)")
            } catch {
                #expect("\(error)".contains("too large (at most 16T)"), "\(req.line): \(error)")
            }
            try stillServing(req.line)
        }
        // A real limit still works afterwards.
        #expect(try d.ctl(["mem-limit", "16T"]).succeeded)
        #expect(dir.read("stats/mem_limit") == "17592186044416\n")
        client.close()
        #expect(d.stop() == .exited(0))
    }
}
