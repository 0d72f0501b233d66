import Testing
import TestSupport
@testable import ZramDaemon

@Suite("Sizes and size expressions")
struct SizeTests {
    @Test("memparse accepts K/M/G/T suffixes, hex and the iB/B spellings")
    func memparse() throws {
        #expect(try ByteSize.parse("4096") == 4096)
        #expect(try ByteSize.parse("4G") == 4 << 30)
        #expect(try ByteSize.parse("512m") == 512 << 20)
        #expect(try ByteSize.parse("1K") == 1024)
        #expect(try ByteSize.parse("2T") == 2 << 40)
        #expect(try ByteSize.parse("0x1000") == 4096)
        #expect(try ByteSize.parse("4GiB") == 4 << 30)
        #expect(try ByteSize.parse("4GB") == 4 << 30)
        #expect(try ByteSize.parse(" 64M\n") == 64 << 20)
    }

    @Test("bad sizes are one clear message", arguments: ["4X", "", "G", "-1", "1.5G", "99999999999E"])
    func badSizes(_ text: String) {
        #expect(throws: DaemonError.self) { try ByteSize.parse(text) }
        do { _ = try ByteSize.parse(text) } catch {
            #expect(error.description.hasPrefix("invalid size '\(text)'"))
            #expect(!error.description.contains("\n"))
        }
    }

    @Test("human sizes read like zramctl's")
    func human() {
        #expect(ByteSize.human(0) == "0B")
        #expect(ByteSize.human(74) == "74B")
        #expect(ByteSize.human(1023) == "1023B")
        #expect(ByteSize.human(4096) == "4K")
        #expect(ByteSize.human(1536) == "1.5K")
        #expect(ByteSize.human(4 << 30) == "4G")
        #expect(ByteSize.human(4_080_218_931) == "3.8G")
        #expect(ByteSize.human(223_629_312) == "213.3M")
        #expect(ByteSize.human((1 << 20) - 1) == "1024K")
    }

    @Test("zram-generator expressions in MiB of ram")
    func expressions() throws {
        func mib(_ e: String, ram: Double) throws -> Double { try SizeExpression(e).evaluate(["ram": ram]) }
        #expect(try mib("min(ram / 2, 4096)", ram: 24105) == 4096)
        #expect(try mib("min(ram / 2, 4096)", ram: 2000) == 1000)
        #expect(try mib("min(min(ram, 4096) + max(ram - 4096, 0) / 2, 32 * 1024)", ram: 12288) == 8192)
        #expect(try mib("ram * 0.25", ram: 8000) == 2000)
        #expect(try mib("(1 + 2) * 3", ram: 0) == 9)
        #expect(try mib("2 ^ 10", ram: 0) == 1024)
        #expect(try mib("-3 + 5", ram: 0) == 2)
        #expect(try mib("10 % 4", ram: 0) == 2)
        #expect(try mib("max(1, 7, 3)", ram: 0) == 7)
        #expect(try mib("floor(ram / 3)", ram: 100) == 33)
        #expect(try SizeExpression("min(ram / 2, 4096)").bytes(ramMiB: 1000) == 500 * 1_048_576)
    }

    @Test("bad expressions name the problem", arguments: [
        ("ram /", "unexpected end"), ("foo", "unknown name 'foo'"), ("min(1", "missing ')'"),
        ("1 / 0", "not a finite number"), ("ram ram", "unexpected 'ram'"), ("sqrt(4)", "unknown function 'sqrt'"),
    ])
    func badExpressions(_ text: String, _ problem: String) {
        guard let error = expressionError(text) else { return }
        #expect(error.description.contains(problem), "\(error)")
    }
}

@Suite("Configuration files")
struct ConfigTests {
    @Test("zram-generator keys, ours, and defaults")
    func fullExample() throws {
        let text = """
            # comment
            [zramnbd]
            control-socket = /tmp/x/control.sock
            stats-interval = 0.5
            prometheus-file = /tmp/x/zram.prom
            busy-poll-us = 0

            [zram0]
            zram-size = min(ram / 2, 4096)
            compression-algorithm = zstd(level=5)
            zram-resident-limit = 512
            swap-priority = 50
            options = discard,pages

            [zram1]
            zram-size = 2048
            mount-point = /var/tmp
            socket = /tmp/x/one.sock
            stats-dir = none
            chain-size = 16
            listen = 127.0.0.1:10809
            """
        let c = try ConfigFile.parse([("main.conf", text)], ramMiB: 16000)
        #expect(c.warnings.isEmpty, "\(c.warnings)")
        let s = c.settings
        #expect(s.controlSocket == "/tmp/x/control.sock")
        #expect(s.statsInterval == 0.5)
        #expect(s.prometheusFile == "/tmp/x/zram.prom")
        #expect(s.busyPollMicroseconds == 0)
        #expect(s.devices.map(\.name) == ["zram0", "zram1"])
        let z0 = s.devices[0], z1 = s.devices[1]
        #expect(z0.diskSize == 4096 << 20)
        #expect(z0.algorithm == "zstd" && z0.level == 5)
        #expect(z0.memLimit == 512 << 20)
        #expect(z0.swapPriority == 50 && z0.options == "discard,pages")
        #expect(z0.socket == "/run/zramnbd/zram0.sock" && z0.statsDir == "/run/zramnbd/zram0")
        #expect(z0.effectiveFsType == "swap")
        #expect(z1.diskSize == 2 << 30)
        #expect(z1.effectiveFsType == "ext2" && z1.mountPoint == "/var/tmp")
        #expect(z1.socket == "/tmp/x/one.sock" && z1.statsDir == nil)
        #expect(z1.chainSize == 16 && z1.listen == "127.0.0.1:10809")
    }

    @Test("drop-ins override the main file in file-name order")
    func dropInOrder() throws {
        let dir = TempDir()
        defer { dir.remove() }
        dir.write("zramnbd.conf", "[zram0]\nzram-size = 100\ncompression-algorithm = zstd\n")
        dir.write("zramnbd.conf.d/20-late.conf", "[zram0]\nzram-size = 300\n")
        dir.write("zramnbd.conf.d/10-early.conf", "[zram0]\nzram-size = 200\nswap-priority = 7\n[zram1]\nzram-size = 1\n")
        dir.write("zramnbd.conf.d/30-ignored.txt", "[zram0]\nzram-size = 999\n")
        let c = try #require(try ConfigFile.load(path: dir.file("zramnbd.conf"), ramMiB: 1000))
        #expect(c.files == [dir.file("zramnbd.conf"), dir.file("zramnbd.conf.d/10-early.conf"),
                            dir.file("zramnbd.conf.d/20-late.conf")])
        let z0 = c.settings.devices[0]
        #expect(z0.diskSize == 300 << 20)           // 20-late wins
        #expect(z0.swapPriority == 7)               // only 10-early sets it
        #expect(z0.algorithm == "zstd")             // only the main file sets it
        #expect(c.settings.devices.map(\.name) == ["zram0", "zram1"])
    }

    @Test("no file at all means no configuration")
    func missing() throws {
        let dir = TempDir()
        defer { dir.remove() }
        #expect(try ConfigFile.load(path: dir.file("nothing.conf"), ramMiB: 1000) == nil)
    }

    @Test("unknown keys and sections are warnings naming file and line")
    func unknownKeys() throws {
        let c = try ConfigFile.parse([("a.conf", "[zram0]\nzram-size = 64\nfrobnicate = yes\n[swap]\nx = 1\n")], ramMiB: 1000)
        #expect(c.warnings.contains("a.conf:3: unknown key 'frobnicate' in [zram0], ignored"))
        #expect(c.warnings.contains { $0.hasPrefix("a.conf:4: ignoring section [swap]") })
        #expect(c.settings.devices.count == 1)
    }

    @Test("bad values are errors at file:line", arguments: [
        ("[zram0]\nzram-size = ram +\n", "b.conf:2: zram-size: invalid expression 'ram +': unexpected end"),
        ("[zram0]\n\nchain-size = 20\n", "b.conf:3: chain-size: invalid chain size 20 (4...16)"),
        ("[zram0]\nswap-priority = high\n", "b.conf:2: swap-priority: expected -1...32767, got 'high'"),
        ("[zram0]\nlisten = nowhere\n", "b.conf:2: listen: invalid address 'nowhere': expected HOST:PORT"),
        ("[zram0]\ncompression-algorithm = zstd(level\n", "b.conf:2: compression-algorithm: missing ')' in 'zstd(level'"),
        ("[zram0]\ncompression-algorithm = zstd(level=99)\n", "b.conf:1: compression-algorithm: invalid level 99 for zstd (-131072...22)"),
        ("[zram/0]\n", "b.conf:1: invalid device name 'zram/0'"),
        ("[zramnbd]\nstats-interval = 0\n", "b.conf:2: stats-interval: expected seconds > 0, got '0'"),
        ("[zramnbd]\nbusy-poll-us = 20000\n", "b.conf:2: busy-poll-us: expected microseconds 0...10000, got '20000'"),
    ])
    func badValues(_ text: String, _ message: String) {
        expectConfigRefused(text, message)
    }

    @Test("compression-algorithm: first entry is used, lzo-rle when unset, recompression and unknown algorithms warn")
    func algorithms() throws {
        let c = try ConfigFile.parse([("c.conf", """
            [zram0]
            compression-algorithm = zstd(level=3) lz4 (type=idle)
            [zram1]
            compression-algorithm = lzo-rle
            [zram2]
            compression-algorithm = lz4(level=4, dict=/x)
            [zram3]
            compression-algorithm = 842
            [zram4]
            zram-size = 100
            [zram5]
            compression-algorithm = lz4hc(level=12)
            """)], ramMiB: 1000)
        let d = c.settings.devices
        #expect(d[0].algorithm == "zstd" && d[0].level == 3 && d[0].recompressionAlgorithms == [.init(name: "lz4")] && d[0].postProcessing.recompressArguments == "type=idle")
        #expect(!c.warnings.contains { $0.hasPrefix("c.conf:2:") })   // recompression is in
        #expect(d[1].algorithm == "lzo-rle" && !c.warnings.contains { $0.hasPrefix("c.conf:4:") })
        #expect(d[2].level == 4 && d[2].dictionary == "/x", "zram 6.12's dict, read when the device is made")
        #expect(!c.warnings.contains { $0.hasPrefix("c.conf:6:") })
        #expect(d[3].algorithm == "lzo-rle")
        #expect(c.warnings.contains { $0.hasPrefix("c.conf:8: compression algorithm '842' is not available") && $0.hasSuffix("using lzo-rle") })
        #expect(d[4].algorithm == "lzo-rle" && d[4].level == nil, "unset: the kernel's default, as zram-generator leaves it")
        #expect(d[5].algorithm == "lz4hc" && d[5].level == 12)
        for (text, message) in [("lzo(level=3)", "invalid level 3: lzo takes no level"),
                                ("deflate(level=10)", "invalid level 10 for deflate (-1...9)")] {
            #expect {
                _ = try ConfigFile.parse([("b.conf", "[zram0]\nzram-size = 100\ncompression-algorithm = \(text)\n")], ramMiB: 1000)
            } throws: { "\($0)".contains(message) }
        }
    }

    // Found by scripts/fuzz.sh --long (config target): entries were split on Characters, and a
    // tab followed by a combining mark is one Character, so it separated nothing; the list
    // printed from the entries (joined by blanks) then read differently.
    @Test("algorithm lists split on blank scalars")
    func algorithmListScalars() throws {
        let list = try AlgorithmList.parse("lz4\t\u{301}zstd(level=\u{301}1)")
        #expect(list.map(\.name) == ["lz4", "\u{301}zstd"])
        #expect(list[1].params.elementsEqual([("level", "\u{301}1")], by: { $0 == $1 }))
        #expect(try AlgorithmList.parse(list.map(\.text).joined(separator: " ")) == list)
    }

    @Test("size 0 and host-memory-limit drop a device, like zram-generator")
    func droppedDevices() throws {
        let c = try ConfigFile.parse([("d.conf", """
            [zram0]
            zram-size = 0
            [zram1]
            host-memory-limit = 2048
            [zram2]
            zram-fraction = 0.25
            max-zram-size = 100
            [zram3]
            writeback-device = /dev/sdb
            """)], ramMiB: 4000)
        #expect(c.settings.devices.map(\.name) == ["zram2", "zram3"])
        #expect(c.settings.devices[0].diskSize == 100 << 20)
        #expect(c.settings.devices[1].writebackDevice == "/dev/sdb")
        #expect(c.warnings.contains("d.conf:1: [zram0] skipped: zram-size is 0"))
        #expect(c.warnings.contains { $0.hasPrefix("d.conf:3: [zram1] skipped: host-memory-limit") })
        #expect(!c.warnings.contains { $0.contains("writeback") })   // zram-generator's key is served now
    }

    @Test("two devices on one socket is an error")
    func sharedSocket() {
        #expect(throws: DaemonError.self) {
            try ConfigFile.parse([("e.conf", "[zram0]\nsocket=/tmp/s\n[zram1]\nsocket=/tmp/s\n")], ramMiB: 1000)
        }
    }

    @Test("runtime add takes config keys and the command-line spellings")
    func addSettings() throws {
        let s = try ConfigFile.deviceSpec(name: "zram7", settings: [("size", "1G"), ("algorithm", "zstd"), ("level", "2"),
                                                                   ("mem-limit", "64M"), ("stats-dir", "none")], ramMiB: 1000)
        #expect(s.diskSize == 1 << 30 && s.algorithm == "zstd" && s.level == 2 && s.memLimit == 64 << 20 && s.statsDir == nil)
        #expect(throws: DaemonError.self) { try ConfigFile.deviceSpec(name: "zram7", settings: [("colour", "red")], ramMiB: 1000) }
    }
}

@Suite("serve options")
struct ServeOptionTests {
    @Test("single-device flags")
    func flags() throws {
        let cmd = try Serve.parse(["--device", "zram5", "--size", "1G", "--algorithm", "zstd", "--level", "7",
                                   "--chain-size", "4", "--mem-limit", "256M", "--socket", "/tmp/z5.sock",
                                   "--listen", ":10809", "--tls=off", "--stats-dir", "/tmp/z5", "--read-only",
                                   "--control-socket", "none", "--no-mlock", "--stats-interval", "2",
                                   "--busy-poll-us", "200"])
        let s = try cmd.settings(ramMiB: 8000).settings
        let d = try #require(s.devices.first)
        #expect(s.devices.count == 1)
        #expect(d.name == "zram5" && d.diskSize == 1 << 30 && d.algorithm == "zstd" && d.level == 7)
        #expect(d.chainSize == 4 && d.memLimit == 256 << 20 && d.socket == "/tmp/z5.sock" && d.listen == ":10809")
        #expect(d.statsDir == "/tmp/z5" && d.readOnly)
        #expect(s.controlSocket == nil && !s.lockMemory && s.statsInterval == 2 && s.busyPollMicroseconds == 200)
    }

    @Test("the default device: zram0, lz4, min(RAM/2, 4 GiB), sockets under /run/zramnbd")
    func defaults() throws {
        let d = try Serve.parse(["--algorithm", "lz4"]).settings(ramMiB: 2000).settings.devices[0]
        #expect(d.name == "zram0" && d.diskSize == 1000 << 20 && d.algorithm == "lz4")
        #expect(d.socket == "/run/zramnbd/zram0.sock" && d.statsDir == "/run/zramnbd/zram0")
        let big = try Serve.parse(["--device", "zram0"]).settings(ramMiB: 24105).settings.devices[0]
        #expect(big.diskSize == 4 << 30)
    }

    @Test("--stdio keeps to stdin/stdout unless told otherwise")
    func stdio() throws {
        let s = try Serve.parse(["--stdio", "--size", "64M"]).settings(ramMiB: 1000).settings
        #expect(s.controlSocket == nil && !s.lockMemory)
        #expect(s.devices[0].socket == nil && s.devices[0].statsDir == nil)
    }

    @Test("--run takes none of the system daemon's paths unless told to")
    func run() throws {
        func settings(_ args: [String]) throws -> DaemonSettings {
            try Serve.parse(["--run", "true"] + args).settings(ramMiB: 1000, privateDir: "/p").settings
        }
        let plain = try settings(["--size", "64M"])
        #expect(plain.controlSocket == nil && !plain.lockMemory)
        #expect(plain.devices[0].socket == "/p/zram0.sock" && plain.devices[0].statsDir == nil && plain.devices[0].listen == nil)
        #expect(try settings(["--size", "64M", "--socket", "/s.sock"]).devices[0].socket == "/s.sock")
        let tcp = try settings(["--size", "64M", "--listen", "127.0.0.1:10809"]).devices[0]
        #expect(tcp.socket == nil && tcp.listen == "127.0.0.1:10809")   // TCP alone, as nbdkit -p
        let asked = try settings(["--size", "64M", "--control-socket", "/c.sock", "--stats-dir", "/st"])
        #expect(asked.controlSocket == "/c.sock" && asked.devices[0].statsDir == "/st")
        // A config file's default paths are the system daemon's: private too; its own paths stay.
        let dir = TempDir()
        defer { dir.remove() }
        dir.write("z.conf", "[zram0]\nzram-size = 8\n[zram1]\nzram-size = 8\nsocket = /mine.sock\nstats-dir = /mine\n")
        let file = try settings(["--config", dir.file("z.conf")])
        #expect(file.devices.map(\.socket) == ["/p/zram0.sock", "/mine.sock"] && file.devices.map(\.statsDir) == [nil, "/mine"])
        #expect(file.controlSocket == nil)
    }

    @Test("--config and device flags don't mix")
    func configAndFlags() throws {
        #expect(throws: DaemonError.self) { try Serve.parse(["--config", "/x", "--size", "1G"]).settings(ramMiB: 1000) }
    }
}

@Suite("Flags taking numbers")
struct NumericFlagTests {
    /// Every serve option that takes a number, size or duration, with a negative value: parsed
    /// as its value (not "Missing value"), then refused naming the flag.
    @Test("a value starting with '-' is the option's value, refused in one line naming the flag", arguments: [
        ("--size", "-1", "--size: invalid size '-1': must not be negative"),
        ("--level", "-5", "--level: invalid level -5 for lz4 (1...65537)"),
        ("--chain-size", "-1", "--chain-size: invalid chain size -1 (4...16)"),
        ("--mem-limit", "-1M", "--mem-limit: invalid size '-1M': must not be negative"),
        ("--writeback-idle-after", "-1", "--writeback-idle-after: expected a duration like 90, 30m, 1h or 1d (at most 10 years), got '-1'"),
        ("--writeback-daily-limit", "-1G", "--writeback-daily-limit: invalid size '-1G': must not be negative"),
        ("--stats-interval", "-1", "--stats-interval: expected seconds > 0, got '-1'"),
        ("--busy-poll-us", "-1", "--busy-poll-us: expected microseconds 0...10000, got '-1'"),
        ("--handshake-limit", "-1", "--handshake-limit: expected seconds 0...3600 (0 = none), got '-1'"),
        ("--payload-budget", "-1", "--payload-budget: invalid size '-1': must not be negative"),
    ])
    func negative(_ flag: String, _ value: String, _ message: String) throws {
        let args = (flag == "--size" ? [] : ["--size", "1M"]) + [flag, value]
        let command: Serve
        do { command = try Serve.parse(args) } catch {
            Issue.record("\(args) did not parse: \(Serve.message(for: error))")
            return
        }
        do {
            _ = try command.settings(ramMiB: 1000)
            Issue.record("accepted \(args)")
        } catch {
            #expect(error.description == message)
            #expect(error.exitStatus == 2)
        }
    }

    @Test("where negative is valid it is accepted: zstd --level -5, --busy-poll-us 0")
    func valid() throws {
        let s = try Serve.parse(["--size", "1M", "--algorithm", "zstd", "--level", "-5", "--busy-poll-us", "0"]).settings(ramMiB: 1000).settings
        #expect(s.devices[0].level == -5 && s.busyPollMicroseconds == 0)
    }
}

@Suite("ctl add: errors as sentences")
struct CtlAddMessageTests {
    @Test("every key deviceKeys lists is one a [zramN] section knows (ctl add refuses the others)")
    func keyListIsTrue() {
        for key in ConfigFile.deviceKeys {
            // A bad value is an error; an unknown key would be a warning instead.
            let warnings = (try? ConfigFile.parse([("k.conf", "[zram0]\nzram-size = 64\n\(key) = \n")], ramMiB: 1000))?.warnings ?? []
            #expect(!warnings.contains { $0.contains("unknown key") }, "\(key): \(warnings)")
        }
    }

    @Test("unknown keys, bad values and skipped devices: the device named, no file, line or 'ignored'", arguments: [
        ([("bogus", "1")], "zram4: unknown key 'bogus' (keys: size, mem-limit, algorithm, level, dict, deflate.winbits, zstd.compact, zram-size, "),
        ([("size", "1M"), ("chain-size", "99")], "zram4: chain-size: invalid chain size 99 (4...16)"),
        ([("zram-size", "0")], "zram4: not added: zram-size is 0"),
        ([("size", "1M"), ("swap-priority", "-7")], "zram4: swap-priority: expected -1...32767, got '-7'"),
    ])
    func messages(_ settings: [(String, String)], _ message: String) {
        do {
            _ = try ConfigFile.deviceSpec(name: "zram4", settings: settings, ramMiB: 1000)
            Issue.record("accepted \(settings)")
        } catch {
            #expect(error.description.hasPrefix(message), "\(error)")
            #expect(!error.description.contains("ignored") && !error.description.contains(":0"), "\(error)")
        }
    }
}
