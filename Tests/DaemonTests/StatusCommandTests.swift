import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif
@testable import ZramDaemon

@Suite("sizes as zramctl reads them (util-linux strtosize)")
struct StrtosizeTests {
    @Test("suffixes: K = KiB = 1024, KB = 1000, fractions, plain bytes, base 0")
    func accepted() throws {
        #expect(try ByteSize.strtosize("4096") == 4096)
        #expect(try ByteSize.strtosize("512M") == 512 << 20)
        #expect(try ByteSize.strtosize("1K") == 1024)
        #expect(try ByteSize.strtosize("1KiB") == 1024)
        #expect(try ByteSize.strtosize("1KB") == 1000)
        #expect(try ByteSize.strtosize("1kb") == 1000)
        #expect(try ByteSize.strtosize("1.5G") == 3 << 29)
        #expect(try ByteSize.strtosize("0.5MB") == 500_000)
        #expect(try ByteSize.strtosize("0.5MiB") == 524_288)
        #expect(try ByteSize.strtosize("1.05G") == 1_073_741_824 + 53_687_091)   // digit by digit: 1G/(100/5)
        #expect(try ByteSize.strtosize("0.1K") == 102)
        #expect(try ByteSize.strtosize("2T") == 2 << 40)
        #expect(try ByteSize.strtosize("0x1000") == 4096)
        #expect(try ByteSize.strtosize("010") == 8)       // strtoumax base 0: octal
        #expect(try ByteSize.strtosize(" 64M") == 64 << 20)
    }

    @Test("refused as util-linux refuses them, one line naming the value",
          arguments: ["512B", "1.5", "1KIB", "4X", "", "-1G", "64M ", "G", ".5G", "08", "1.5.5G", "99999999999999999999", "10E", "1Z"])
    func refused(_ text: String) {
        #expect(throws: DaemonError.self) { try ByteSize.strtosize(text) }
        do { _ = try ByteSize.strtosize(text) } catch {
            #expect(error.description.hasPrefix("invalid size '\(text)'"))
            #expect(!error.description.contains("\n"))
        }
    }

    @Test("serve --size/--mem-limit and ctl add size=/mem-limit= take them; ctl mem-limit stays memparse")
    func callers() throws {
        let spec = try Serve.parse(["--size", "1.5G", "--mem-limit", "1KB"]).settings(ramMiB: 8000).settings.devices[0]
        #expect(spec.diskSize == 3 << 29)
        #expect(spec.memLimit == 1000)
        let added = try ConfigFile.deviceSpec(name: "zram5", settings: [("size", "0.5GiB"), ("mem-limit", "1MB")], ramMiB: 8000)
        #expect(added.diskSize == 1 << 29)
        #expect(added.memLimit == 1_000_000)
        // The sysfs file mem_limit is memparse: 1024-based whatever follows the letter.
        #expect(try ControlAction.request(["mem-limit", "zram0", "1KB"], from: .ctl) == .memLimit("zram0", 1024))
        #expect(throws: DaemonError.self) { try ControlAction.request(["mem-limit", "zram0", "1.5G"], from: .ctl) }
    }

    @Test("memparse reads a leading 0 as octal, as the kernel's simple_strtoull(base 0) does")
    func memparseOctal() throws {
        #expect(try ByteSize.parse("010") == 8)
        #expect(try ByteSize.parse("0") == 0)
        #expect(try ByteSize.parse("010K") == 8 << 10)
        #expect(try ByteSize.parse("0x10") == 16)
        #expect(throws: DaemonError.self) { try ByteSize.parse("08") }
    }
}

@Suite("zramnbd status: columns, formats, watch and classes")
struct StatusCommandTests {
    let zram0 = ControlRecord([
        ("name", "zram0"), ("disksize", "4294967296"), ("algorithm", "lz4"), ("streams", "2"),
        ("orig_data_size", "536870912"), ("compr_data_size", "217882026"), ("mem_used_total", "223629312"),
        ("mem_limit", "0"), ("mem_used_max", "230000000"), ("same_pages", "39382"), ("pages_compacted", "5"),
        ("bd_count", "3"), ("connections", "4"), ("backing_dev", "none"),
        ("nbd_device", "/dev/nbd0"), ("mountpoint", "/mnt/my disk\\x"),
    ])
    let empty = ControlRecord([("name", "zram1"), ("disksize", "0"), ("algorithm", "zstd"), ("streams", "2"),
                               ("orig_data_size", "0"), ("mem_used_total", "0"), ("mountpoint", "")])

    func names(_ list: String?, all: Bool = false, watch: Bool = false) throws -> [String] {
        try StatusReport.select(list, all: all, watch: watch).map(\.name)
    }

    @Test("-o replaces the defaults, +LIST appends, names are case-insensitive, --output-all has every column")
    func selection() throws {
        #expect(try names(nil) == ["NAME", "ALGORITHM", "DISKSIZE", "DATA", "COMPR", "TOTAL", "STREAMS", "RATIO", "MOUNTPOINT"])
        #expect(try names("name,zero-pages,Comp-Ratio") == ["NAME", "ZERO-PAGES", "COMP-RATIO"])
        #expect(try names("+MIGRATED,nbd") == StatusReport.defaultColumnNames + ["MIGRATED", "NBD"])
        let all = try names(nil, all: true)
        for zramctl in ["NAME", "DISKSIZE", "DATA", "COMPR", "ALGORITHM", "STREAMS", "ZERO-PAGES", "TOTAL",
                        "MEM-LIMIT", "MEM-USED", "MIGRATED", "COMP-RATIO", "MOUNTPOINT"] {
            #expect(all.contains(zramctl))
        }
        #expect(all.last == "MOUNTPOINT" && !all.contains("DATA/s"))
        #expect(try names("+wb", all: true) == all + ["WB"])
        #expect(try names("NAME,DATA/s", watch: true) == ["NAME", "DATA/s"])
    }

    @Test("bad column lists are one line naming the problem", arguments: [
        ("FOO", "unknown column: FOO (see --help for the columns)"),
        ("NAME,,DATA", "empty column name in 'NAME,,DATA'"),
        ("+", "empty column list '+' (see --help for the columns)"),
        ("NAME,DATA/s", "column DATA/s is a rate: it needs --watch"),
    ])
    func badColumns(_ list: String, _ message: String) {
        #expect(throws: DaemonError.invalidValue(message)) { try StatusReport.select(list) }
    }

    @Test("zramctl's cells: ZERO-PAGES a count, MIGRATED as zramctl prints it, COMP-RATIO %.4f of DATA/TOTAL, ours")
    func cells() throws {
        let cols = try StatusReport.select("NAME,ZERO-PAGES,MIGRATED,MEM-USED,COMP-RATIO,RATIO,NBD,CONNECTIONS,WB")
        #expect(StatusReport.table([zram0, empty], columns: cols, format: .init()) == """
            NAME  ZERO-PAGES MIGRATED MEM-USED COMP-RATIO RATIO NBD       CONNECTIONS    WB
            zram0      39382       5B   219.3M     2.4007  2.40 /dev/nbd0           4   12K
            zram1          0       0B       0B       -nan     -                          0B

            """)
        let bytes = StatusReport.table([zram0], columns: cols, format: .init(bytes: true, raw: true, noHeadings: true))
        #expect(bytes == "zram0 39382 5 230000000 2.4007 2.40 /dev/nbd0 4 12288\n")
        #expect(StatusReport.table([], columns: cols, format: .init()) == "")   // no device: nothing, as zramctl
        let zeroPagesOnly = ControlRecord([("orig_data_size", "4096"), ("mem_used_total", "0")])
        #expect(StatusReport.table([zeroPagesOnly], columns: try StatusReport.select("COMP-RATIO"), format: .init(raw: true, noHeadings: true)) == "inf\n")
    }

    @Test("--raw: one blank between cells, blanks and backslashes as \\xHH, empty cells keep their place")
    func raw() throws {
        let cols = try StatusReport.select("NAME,DATA,MOUNTPOINT")
        #expect(StatusReport.table([zram0, empty], columns: cols, format: .init(raw: true)) == """
            NAME DATA MOUNTPOINT
            zram0 512M /mnt/my\\x20disk\\x5cx
            zram1 0B \n
            """)
        #expect(StatusReport.rawEscape("a\tb\u{7f}é") == "a\\x09b\\x7f\\xc3\\xa9")
    }

    @Test("the default table stays zramctl's plus RATIO")
    func defaultTable() {
        // DATA is 5 wide for "512M": zramctl's width hint (see StatusColumn.width).
        #expect(StatusReport.table([zram0]) == "NAME  ALGORITHM DISKSIZE  DATA  COMPR  TOTAL STREAMS RATIO MOUNTPOINT\n"
                                                + "zram0 lz4             4G  512M 207.8M 213.3M       2  2.40 /mnt/my disk\\x\n")
    }

    @Test("rates are the change between two frames per second; counters that went back show -")
    func rates() throws {
        let before = ControlRecord([("name", "zram0"), ("orig_data_size", "1048576"), ("mem_used_total", "2097152"),
                                    ("nbd_read_bytes", "0"), ("nbd_reads", "0"), ("nbd_writes", "100"), ("bd_reads", "10")])
        let after = ControlRecord([("name", "zram0"), ("orig_data_size", "4194304"), ("mem_used_total", "1048576"),
                                   ("nbd_read_bytes", "4194304"), ("nbd_reads", "1000"), ("nbd_writes", "50"), ("bd_reads", "12")])
        let cols = try StatusReport.select("DATA/s,TOTAL/s,READ/s,R-IOPS,W-IOPS,BD-READ/s,WRITE/s", watch: true)
        let second = StatusReport.table([after], columns: cols, format: .init(raw: true, noHeadings: true),
                                        previous: ["zram0": before], seconds: 2)
        #expect(second == "1.5M -512K 2M 500 - 4K -\n")
        let first = StatusReport.table([after], columns: cols, format: .init(raw: true, noHeadings: true))
        #expect(first == "- - - - - - -\n")
        // The watch defaults add I/O columns only when the daemon reports I/O counters.
        #expect(StatusReport.watchDefaults([zram0]) == StatusReport.defaultColumnNames.dropLast() + ["DATA/s", "TOTAL/s", "MOUNTPOINT"])
        #expect(StatusReport.watchDefaults([after]).contains("W-IOPS"))

        // Mean service time over the interval: the latency sums' change over the requests'.
        let slowBefore = ControlRecord([("name", "zram0"), ("nbd_reads", "10"), ("nbd_read_latency_ns", "50000"),
                                        ("nbd_writes", "7"), ("nbd_write_latency_ns", "1000")])
        let slowAfter = ControlRecord([("name", "zram0"), ("nbd_reads", "110"), ("nbd_read_latency_ns", "2550000"),
                                       ("nbd_writes", "7"), ("nbd_write_latency_ns", "1000")])
        let latency = StatusReport.table([slowAfter], columns: try StatusReport.select("R-LAT,W-LAT", watch: true),
                                         format: .init(raw: true, noHeadings: true), previous: ["zram0": slowBefore], seconds: 1)
        #expect(latency == "25 -\n")   // 2.5 ms over 100 reads; no writes in between
    }

    @Test("--help lists every column with zramctl's help texts, and says why RATIO is a default")
    func help() {
        let text = Status.helpMessage(columns: 200)
        #expect(text.contains(" ZERO-PAGES  empty pages with no allocated memory\n"))
        #expect(text.contains("      TOTAL  all memory including allocator fragmentation and metadata overhead\n"))
        #expect(text.contains("BD-WRITE/s"))
        #expect(text.contains("The default columns are zramctl's plus RATIO"))
    }

    @Test("--watch without SECONDS gets 1; --watch and --count are checked")
    func watchArguments() throws {
        #expect(Status.insertingWatchDefault(["status", "--watch"]) == ["status", "--watch", "1"])
        #expect(Status.insertingWatchDefault(["status", "--watch", "zram0"]) == ["status", "--watch", "1", "zram0"])
        #expect(Status.insertingWatchDefault(["status", "--watch", "0.5", "--count", "2"]) == ["status", "--watch", "0.5", "--count", "2"])
        #expect(Status.insertingWatchDefault(["ctl", "zram0", "--watch"]) == ["ctl", "zram0", "--watch"])
        #expect(try Status.parse(["--watch", "0.2", "--count", "3"]).watchPlan()! == (0.2, 3))
        #expect(try Status.parse(["--count", "2"]).watchPlan()! == (1, 2))
        #expect(throws: DaemonError.invalidValue("invalid --watch '0': seconds between frames, 0.01...86400")) {
            try Status.parse(["--watch", "0"]).check()
        }
        #expect(throws: DaemonError.invalidValue("invalid --count '0': a number of frames, at least 1")) {
            try Status.parse(["--watch", "1", "--count", "0"]).check()
        }
        // A terminal gets each frame on a cleared screen, anything else frames a blank line apart.
        var w = StatusWatch(output: nil, all: false, format: .init(), devices: [], socket: "", interval: 0.5, frames: 2, terminal: true)
        #expect(w.render("T\n", frame: 1) == "\u{1B}[H\u{1B}[2JEvery 0.5s: zramnbd status (Ctrl-C to quit)\n\nT\n")
        w.terminal = false
        #expect(w.render("T\n", frame: 0) == "T\n" && w.render("T\n", frame: 1) == "\nT\n")
        #expect(throws: DaemonError.self) { try Status.parse(["--json", "--watch", "1"]).check() }
        #expect(throws: DaemonError.self) { try Status.parse(["--classes"]).check() }
        #expect(throws: DaemonError.invalidValue("unknown column: bogus (see --help for the columns)")) {
            try Status.parse(["-o", "bogus"]).check()
        }
    }

    static let classesText = """
         class  size       10%       20%       30%       40%       50%       60%       70%       80%       90%       99%      100% obj_allocated   obj_used pages_used pages_per_zspage freeable
             0    32         0         0         0         0         0         0         0         0         0         0         1           128        128          1                1        0
             1    48         0         0         0         0         0         0         0         0         0         0         0             0          0          0                3        0
            10   192         1         0         1         0         0         0         0         0         0         0         2           256        100         12                3        6

         Total                 1         0         1         0         0         0         0         0         0         0         3           384        228         13                         6

        """

    @Test("the classes picture: one bar per class in use, fragmentation, and what compaction would free")
    func classes() {
        let rows = StatusClasses.parse(Self.classesText)
        #expect(rows.map(\.index) == [0, 1, 10])
        #expect(rows[2].objsPerZspage == 64 && rows[2].compactable && !rows[0].compactable)
        let text = StatusClasses.render(device: "zram0", rows: rows, width: 60, colour: false)
        let lines = text.split(separator: "\n").map(String.init)
        #expect(lines[0] == "zram0: 2 of 3 classes in use, 13 pages (52K)")
        #expect(lines[1] == "class  size  used/allocated  frag  pages  free  objects")
        #expect(lines[2] == "    0    32         128/128    0%      1     -  " + String(repeating: "#", count: 12))
        #expect(lines[3] == "   10   192         100/256   60%     12     6  #####.......")
        #expect(lines[2...3].allSatisfy { $0.count == 60 })
        #expect(lines.last == "compaction would free 6 pages (24K) in 1 class: 10 (192 B); zramnbd ctl zram0 compact")
        let wide = StatusClasses.render(device: "zram0", rows: rows, width: 120, colour: false)
        #expect(wide.split(separator: "\n").map(String.init)[2].count == 120)
        let coloured = StatusClasses.render(device: "zram0", rows: rows, width: 60, colour: true)
        #expect(coloured.contains("\u{1B}[32m") && !text.contains("\u{1B}"))
        // More in use than allocated (a foreign file): a full bar, not a trap.
        let odd = StatusClasses.Row(index: 3, size: 80, objAllocated: 10, objUsed: 500, pagesUsed: 1, pagesPerZspage: 1, freeable: 0)
        #expect(StatusClasses.render(device: "zram0", rows: [odd], width: 60, colour: false).contains(String(repeating: "#", count: 10)))
        // A table that is not one (a truncated or foreign file) draws nothing and never traps.
        #expect(StatusClasses.parse("class size\n 1 2 3\n 99999999999999999999 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1\n").isEmpty)
    }
}

@Suite("zramnbd status against a running daemon")
struct StatusDaemonTests {
    @Test("-o NAME,DATA,COMPR,ZERO-PAGES --raw -n -b is mm_stat's numbers; --watch 0.2 --count 2 is two frames, Ctrl-C exits 0; --classes names the classes")
    func status() throws {
        let dir = TempDir()
        defer { dir.remove() }
        let d = try RunningDaemon(dir)
        let corpus = Corpus()
        corpus.write(to: dir.file("corpus.bin"))
        let copy = try Subprocess.run(["nbdcopy", "-S", "0", "--no-extents", dir.file("corpus.bin"), d.uri], outputPrefix: dir.file("nbdcopy"))
        #expect(copy.succeeded, "\(copy.stderr)")
        // compact publishes the stats files at once; with no I/O after it, both see one state.
        #expect(try d.ctl(["compact"]).succeeded)
        let mm = d.mmStat()
        #expect(mm.count == 9 && mm[0] == UInt64(corpus.bytes.count))

        let raw = try d.zramnbd(["status", "--control-socket", d.control, "-o", "NAME,DATA,COMPR,ZERO-PAGES", "--raw", "-n", "-b"])
        #expect(raw.succeeded, "\(raw.stderr)")
        #expect(raw.stdout == "zram0 \(mm[0]) \(mm[1]) \(mm[5])\n")

        let bad = try d.zramnbd(["status", "--control-socket", d.control, "-o", "NAME,NOPE"])
        #expect(bad.termination == .exited(2))
        #expect(bad.stderr == "zramnbd: error: unknown column: NOPE (see --help for the columns)\n")

        let watch = try d.zramnbd(["status", "--control-socket", d.control, "--watch", "0.2", "--count", "2", "-o", "NAME,DATA,DATA/s"])
        #expect(watch.succeeded, "\(watch.stderr)")
        let frames = watch.stdout.split(separator: "\n\n", omittingEmptySubsequences: false)
        #expect(frames.count == 2, "\(watch.stdout)")
        #expect(frames.first?.hasPrefix("NAME  DATA DATA/s\nzram0  16M      -") == true, "\(watch.stdout)")
        #expect(frames.last?.contains("zram0  16M     0B") == true, "\(watch.stdout)")   // nothing written between

        // Ctrl-C ends a live view with status 0. The first frame is written once the handler is
        // in place, so the signal waits for it.
        let live = try Subprocess([zramnbdBinary, "status", "--control-socket", d.control, "--watch", "0.05"], outputPrefix: dir.file("live"))
        var waited = 0
        while live.stdout.isEmpty, live.termination == nil, waited < 1000 {
            var ts = timespec(tv_sec: 0, tv_nsec: 10_000_000); nanosleep(&ts, nil); waited += 1
        }
        #expect(live.stdout.hasPrefix("NAME "), "\(live.stderr)")
        live.signal(SIGINT)
        #expect(live.wait(timeout: .seconds(10)) == .exited(0))

        let classes = try d.zramnbd(["status", "--control-socket", d.control, "--classes", "zram0"])
        #expect(classes.succeeded, "\(classes.stderr)")
        let inUse = StatusClasses.parse(dir.read("stats/classes") ?? "").filter { $0.objAllocated > 0 }
        #expect(!inUse.isEmpty)
        let drawn = classes.stdout.split(separator: "\n").dropFirst(2).compactMap { $0.split(separator: " ").first.flatMap { Int($0) } }
        #expect(drawn == inUse.map(\.index))
        #expect(classes.stdout.contains("compaction would free"))
        #expect(d.stop() == .exited(0))
    }
}

@Suite("zramnbd status against zramctl")
struct ZramctlOracleTests {
    /// zramctl 2.38's columns (Debian 12), in its --output-all order.
    static let zramctlColumns = "NAME,DISKSIZE,DATA,COMPR,ALGORITHM,STREAMS,ZERO-PAGES,TOTAL,MEM-LIMIT,MEM-USED,MIGRATED,MOUNTPOINT"

    @Test("the same counters print as zramctl prints them for a kernel zram device: widths, sizes, -b, -n, --raw")
    func sameAsZramctl() throws {
        if let why = KernelZram.unavailableReason { print("SKIP zramctl oracle: \(why)"); return }
        guard access("/usr/sbin/zramctl", X_OK) == 0 || access("/sbin/zramctl", X_OK) == 0 else { print("SKIP zramctl oracle: no zramctl"); return }
        let dir = TempDir()
        defer { dir.remove() }
        let kernel = try KernelZram(algorithm: "lz4", diskSize: 64 << 20)
        defer { kernel.remove() }
        // Text, zeros and noise, so DATA, COMPR and TOTAL have fractions and ZERO-PAGES is not 0.
        let aligned = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)   // O_DIRECT
        defer { aligned.deallocate() }
        var page = [UInt8](repeating: 0, count: 4096)
        var rng: UInt64 = 0x9E37_79B9_7F4A_7C15
        for p in 0..<700 {
            for i in page.indices {
                switch p % 5 {
                case 0: page[i] = 0
                case 1:
                    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17
                    page[i] = UInt8(truncatingIfNeeded: rng)
                default: page[i] = UInt8(ascii: "a") + UInt8((i * 7 + p) % 23)
                }
            }
            page.withUnsafeBytes { aligned.copyMemory(from: $0.baseAddress!, byteCount: 4096) }
            try kernel.write(aligned, count: 4096, offset: p * 4096)
        }
        func sysfs(_ name: String) -> String { ((try? FileSystem.readText(kernel.sysfs + "/" + name)) ?? "").trimmed() }
        let mm = try kernel.mmStat()
        let algorithms = sysfs("comp_algorithm")
        let selected = algorithms.split(separator: "[").last?.split(separator: "]").first.map(String.init) ?? ""
        var fields: [(String, String)] = [("name", kernel.devicePath), ("disksize", sysfs("disksize")), ("algorithm", selected),
                                          ("streams", sysfs("max_comp_streams"))]
        let names = ["orig_data_size", "compr_data_size", "mem_used_total", "mem_limit", "mem_used_max", "same_pages", "pages_compacted"]
        for (i, n) in names.enumerated() { fields.append((n, String(mm[i]))) }
        let record = ControlRecord(fields)

        for (flags, list) in [([], nil), (["--output-all"], Self.zramctlColumns), (["--raw"], nil), (["-n", "-b"], nil),
                              (["--output-all", "--raw", "-b"], Self.zramctlColumns), (["-o", "name,ZERO-PAGES,migrated,MEM-USED,data"], "name,ZERO-PAGES,migrated,MEM-USED,data")] as [([String], String?)] {
            let zramctl = try Subprocess.run(["zramctl"] + flags + [kernel.devicePath], outputPrefix: dir.file("zramctl"))
            #expect(zramctl.succeeded, "\(zramctl.stderr)")
            let raw = flags.contains("--raw")
            // Our default set has RATIO; compare zramctl's default set.
            let columns = try StatusReport.select(list ?? "NAME,ALGORITHM,DISKSIZE,DATA,COMPR,TOTAL,STREAMS,MOUNTPOINT")
            let ours = StatusReport.table([record], columns: columns,
                                          format: .init(bytes: flags.contains("-b"), raw: raw, noHeadings: flags.contains("-n")))
            // zramctl pads an empty last cell with blanks; we drop blanks at the end of a line (not in --raw).
            let theirs = raw ? zramctl.stdout
                : zramctl.stdout.split(separator: "\n").map { var l = String($0); while l.hasSuffix(" ") { l.removeLast() }; return l + "\n" }.joined()
            #expect(ours == theirs, "zramctl \(flags)")
        }
    }

    @Test("serve --size reads what zramctl --size reads: the disk sizes zramctl sets on a kernel zram device")
    func sizesAsZramctl() throws {
        if let why = KernelZram.unavailableReason { print("SKIP zramctl sizes: \(why)"); return }
        guard access("/usr/sbin/zramctl", X_OK) == 0 || access("/sbin/zramctl", X_OK) == 0 else { print("SKIP zramctl sizes: no zramctl"); return }
        let dir = TempDir()
        defer { dir.remove() }
        // A private device, not KernelZram: that one holds the device open, and zramctl resets it.
        let added = try FileSystem.readText("/sys/class/zram-control/hot_add").trimmed()
        guard let id = Int(added), id != 0 else { Issue.record("hot_add gave \(added)"); return }
        func write(_ path: String, _ text: String) {
            let fd = open(path, O_WRONLY)
            if fd >= 0 { _ = FileSystem.writeAll(fd, text); close(fd) }
        }
        defer {
            write("/sys/block/zram\(id)/reset", "1")
            write("/sys/class/zram-control/hot_remove", "\(id)")
        }
        var tried = 0, set = 0
        for text in ["1.5G", "512M", "1KiB", "3.3MB", "3.3MiB", "3.3M", "0.05M", "7.25K", "0x100000", "010", "4096000",
                     "1.05G", "0.5MB", "2k", "512B", "1.5", "1KIB", "64M ", "-1M", "1Z", "08", ".5G", "1.5.5G", "4X", ""] {
            defer { tried += 1 }
            let r = try Subprocess.run(["zramctl", "--size", text, "/dev/zram\(id)"], outputPrefix: dir.file("zramctl"))
            let ours = try? ByteSize.strtosize(text)
            if r.succeeded {
                set += 1
                // The kernel rounds disksize up to whole pages.
                let disksize = UInt64((try? FileSystem.readText("/sys/block/zram\(id)/disksize"))?.trimmed() ?? "")
                #expect(ours.map { ($0 + 4095) / 4096 * 4096 } == disksize, "'\(text)'")
            } else {
                #expect(ours == nil, "'\(text)': zramctl refused it: \(r.stderr)")
            }
        }
        #expect(set == 14 && tried == 25)   // zramctl took the first 14 and refused the rest
    }
}
