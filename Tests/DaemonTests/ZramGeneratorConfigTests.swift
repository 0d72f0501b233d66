// zram-generator's own test cases (its tests/NN-* fixtures and src/config.rs unit tests), told
// again as zramnbd configurations: each expects the devices zram-generator makes of the same
// files. Sizes are worked out by hand from config.rs: ram = MemTotal kB / 1024 truncated (the
// fixtures' 801322 kB is 782 MiB, 8013220 kB is 7825 MiB), bytes = trunc(MiB × 1048576).
import Testing
#if canImport(Glibc)
import Glibc
#endif
import TestSupport
@testable import ZramDaemon

/// A zram-generator root in a temp directory: files under usr/lib, etc, run ..., proc/cmdline.
private func root(_ files: [String: String]) -> TempDir {
    let dir = TempDir("zramnbd-zg")
    for (name, text) in files { dir.write(name, text) }
    return dir
}

private let mainUsr = "usr/lib/systemd/zram-generator.conf"
private let mainEtc = "etc/systemd/zram-generator.conf"
private let dropUsr = "usr/lib/systemd/zram-generator.conf.d/"
private let dropEtc = "etc/systemd/zram-generator.conf.d/"

private func load(_ dir: TempDir, ram: Double, cmdline: String? = nil, shell: Shell = .system) throws -> LoadedConfig {
    try ZramGeneratorConfig.load(root: dir.path, ramMiB: ram, cmdline: cmdline, shell: shell)
}

private func parse(_ text: String, ram: Double, kernel: Bool? = nil, shell: Shell = .system) throws(DaemonError) -> LoadedConfig {
    try ConfigFile.parse([("z.conf", text)], ramMiB: ram, kernel: kernel, shell: shell)
}

private func refused(_ text: String, ram: Double = 1000, _ message: String, sourceLocation: SourceLocation = #_sourceLocation) {
    do {
        let c = try parse(text, ram: ram)
        Issue.record("accepted: \(c.settings.devices.map { "\($0.name) \($0.diskSize)" })", sourceLocation: sourceLocation)
    } catch {
        #expect(error.description == message, sourceLocation: sourceLocation)
        #expect(error.exitStatus == 2, sourceLocation: sourceLocation)
    }
}

private func symlink(_ target: String, _ path: String) {
    #expect(Glibc.symlink(target, path) == 0, "symlink \(path)")
}

@Suite("zram-generator's test cases")
struct ZramGeneratorCaseTests {
    @Test("01 basic: an empty [zram0] is swap of min(ram / 2, 4096) MiB")
    func basic() throws {
        let dir = root([mainUsr: "[zram0]\n"])
        let c = try load(dir, ram: 782)
        #expect(c.files == [dir.file(mainUsr)])
        let d = try #require(c.settings.devices.first)
        #expect(c.settings.devices.count == 1)
        #expect(d.name == "zram0" && d.effectiveFsType == "swap" && d.mountPoint == nil)
        #expect(d.diskSize == 391 << 20 && d.memLimit == 0)
        #expect(d.options == "discard" && d.swapPriority == 100)
    }

    @Test("02 zstd: set! variables (one program fails, still used), resident limit, host limit")
    func zstd() throws {
        let c = try parse("""
            set!top = echo 3
            set!bottom = echo 4
            set!ratio = ! echo top / bottom

            [zram0]
            compression-algorithm = zstd
            host-memory-limit = 2050
            zram-resident-limit = 9999
            zram-size = ram * ratio
            """, ram: 782)
        let d = try #require(c.settings.devices.first)
        #expect(d.algorithm == "zstd" && d.level == nil)
        #expect(d.diskSize == 782 * 1024 * 1024 * 3 / 4)
        #expect(d.memLimit == 9999 << 20)
        #expect(c.warnings.contains("z.conf:3: set!ratio: ! echo top / bottom exited 1"))
    }

    @Test("03 too much memory: host-memory-limit below MemTotal drops the device")
    func tooMuchMemory() throws {
        let c = try parse("[zram0]\nhost-memory-limit=7824\n", ram: 7825)
        #expect(c.settings.devices.isEmpty)
        // Not below: kept (zram-generator compares whole MiB).
        #expect(try parse("[zram0]\nhost-memory-limit=7825\n", ram: 7825.9).settings.devices.count == 1)
    }

    @Test("04 drop-ins: by file name across directories, /etc replacing /usr/lib, main file first")
    func dropIns() throws {
        let dir = root([
            mainUsr: "[zram0]\n",
            dropUsr + "01-drop1.conf": "[zram0]\nhost-memory-limit=1234\n",
            dropUsr + "02-drop2.conf": "[zram0]\nhost-memory-limit=1235\n",
            dropUsr + "03-drop3.conf": "[zram0]\nhost-memory-limit=1236\n\n[zram1]\nzram-size=ram*0.7\n",
            dropEtc + "03-drop3.conf": "",
            dropEtc + "04-drop4.conf": "[zram2]\nzram-size=ram*0.8\nswap-priority=200\noptions=\n",
            // A drop-in named like the main file is just another drop-in.
            dropEtc + "zram-generator.conf": "# empty on purpose\n",
        ])
        let c = try load(dir, ram: 782)
        #expect(c.files == [dir.file(mainUsr), dir.file(dropUsr + "01-drop1.conf"), dir.file(dropUsr + "02-drop2.conf"),
                            dir.file(dropEtc + "03-drop3.conf"), dir.file(dropEtc + "04-drop4.conf"),
                            dir.file(dropEtc + "zram-generator.conf")])
        #expect(c.settings.devices.map(\.name) == ["zram0", "zram2"])
        let z0 = c.settings.devices[0], z2 = c.settings.devices[1]
        #expect(z0.diskSize == 782 * 1024 * 1024 / 2 && z0.options == "discard" && z0.memLimit == 0)
        #expect(z2.diskSize == 782 * 1024 * 1024 * 8 / 10 && z2.options == "" && z2.swapPriority == 200)
        #expect(z0.effectiveFsType == "swap" && z2.effectiveFsType == "swap")
    }

    @Test("05 kernel disabled: systemd.zram=0 means no devices")
    func kernelDisabled() throws {
        let dir = root([mainUsr: "[zram0]\n"])
        let c = try load(dir, ram: 7825, cmdline: "asfdasdf=foobar bar=foood systemd.zram=0\n")
        #expect(c.settings.devices.isEmpty)
    }

    @Test("06 kernel enabled: bare systemd.zram makes zram0 with the defaults, no file needed")
    func kernelEnabled() throws {
        let dir = root([:])
        let c = try load(dir, ram: 7825, cmdline: "\n\nsystemd.zram\n\n")
        let d = try #require(c.settings.devices.first)
        #expect(c.settings.devices.count == 1)
        #expect(d.name == "zram0" && d.effectiveFsType == "swap" && d.options == "discard")
        #expect(d.diskSize == UInt64(3912.5 * 1_048_576))
    }

    @Test("07 mount points: ext4 file systems, paths normalised as Rust's Path compares them")
    func mountPoints() throws {
        let c = try parse("""
            [zram11]
            mount-point = /var/compressed
            fs-type = ext4

            [zram12]
            mount-point = /var/folded
            fs-type = ext4
            options = discard,casefold

            [zram13]
            mount-point = /foo//bar/baz/
            fs-type = ext4

            [zram14]
            mount-point = /.żupan-ci3pły
            fs-type = ext4

            [zram15]
            mount-point = ///
            fs-type = ext4
            """, ram: 782)
        #expect(c.settings.devices.map(\.name) == ["zram11", "zram12", "zram13", "zram14", "zram15"])
        #expect(c.settings.devices.map { $0.mountPoint ?? "-" } == ["/var/compressed", "/var/folded", "/foo/bar/baz", "/.żupan-ci3pły", "/"])
        #expect(c.settings.devices.allSatisfy { $0.effectiveFsType == "ext4" && $0.diskSize == 391 << 20 })
        #expect(c.settings.devices.map(\.options) == ["discard", "discard,casefold", "discard", "discard", "discard"])
    }

    @Test("08 plain device: fs-type without mount-point is a file system, not swap")
    func plainDevice() throws {
        let d = try #require(try parse("[zram11]\nfs-type = ext2\n", ram: 782).settings.devices.first)
        #expect(d.mountPoint == nil && d.effectiveFsType == "ext2" && d.options == "discard")
    }

    @Test("09 zram-size: an expression; algorithm parameters and global recompression parameters")
    func zramSize() throws {
        let c = try parse("""
            [zram0]
            compression-algorithm = zstd(dictionary=/etc/gaming,level=9) (recompargs)
            host-memory-limit = 2050
            zram-size = min(0.75 * ram, 6000)
            """, ram: 782)
        let d = try #require(c.settings.devices.first)
        #expect(d.diskSize == UInt64(586.5 * 1_048_576))
        #expect(d.algorithm == "zstd" && d.level == 9 && d.recompressionAlgorithms.isEmpty && d.postProcessing.recompressArguments == "recompargs")
        #expect(c.warnings.contains("z.conf:2: algorithm parameter 'dictionary' is not supported, ignored"))
    }

    @Test("10 the example file: set! from a program, a resident limit from it, a mounted second device")
    func example() throws {
        // zram-generator's test puts a fake xenstore-read on PATH; here the shell is stubbed.
        let programs = LockedList()
        let shell = Shell { program in
            programs.append(program)
            return (0, Array("8 * 1024\n".utf8))
        }
        let c = try parse("""
            # set!VAR = program runs the program and binds VAR to its output.
            set!maxhotplug = xenstore-read /local/domain/$(xenstore-read domid)/memory/hotplug-max

            [zram0]
            host-memory-limit = 9048
            zram-size = min(ram / 10, 2048)
            zram-resident-limit = maxhotplug * 3/4
            compression-algorithm = lzo-rle zstd(level=3) (type=idle)
            options =
            writeback-device = /dev/zvol/tarta-zoot/swap-writeback

            [zram1]
            zram-size = ram / 10
            fs-type = ext2
            mount-point = /run/compressed-mount-point
            """, ram: 782, shell: shell)
        #expect(programs.items == ["xenstore-read /local/domain/$(xenstore-read domid)/memory/hotplug-max"])
        #expect(c.settings.devices.map(\.name) == ["zram0", "zram1"])
        let z0 = c.settings.devices[0], z1 = c.settings.devices[1]
        #expect(z0.effectiveFsType == "swap" && z0.options == "")
        #expect(z0.diskSize == 782 * 1024 * 1024 / 10)
        #expect(z0.memLimit == 8 * 1024 * 1024 * 1024 * 3 / 4)
        #expect(z0.writebackDevice == "/dev/zvol/tarta-zoot/swap-writeback")
        #expect(z0.algorithm == "lzo-rle" && z0.recompressionAlgorithms == [.init(name: "zstd", level: 3)] && z0.postProcessing.recompressArguments == "type=idle")
        #expect(z1.effectiveFsType == "ext2" && z1.mountPoint == "/run/compressed-mount-point" && z1.options == "discard")
        #expect(z1.diskSize == 782 * 1024 * 1024 / 10 && z1.memLimit == 0)
    }

    @Test("11 obsolete keys: zram-fraction, max-zram-size, memory-limit; a repeated section merges")
    func obsolete() throws {
        let c = try parse("""
            [zram0]
            zram-fraction = 0.10
            max-zram-size = 2048
            memory-limit = 100000

            [zram1]
            host-memory-limit = 2
            [zram1]
            zram-fraction = 0.10
            max-zram-size = none
            memory-limit = none

            [zram2]
            zram-fraction = 0.10
            max-zram-size = 2048
            memory-limit = 1
            """, ram: 782)
        #expect(c.settings.devices.map(\.name) == ["zram0", "zram1"])
        // floor(0.1 × 782) = 78 MiB, below both limits.
        #expect(c.settings.devices.allSatisfy { $0.diskSize == 78 << 20 && $0.options == "discard" && $0.effectiveFsType == "swap" })
        // Without max-zram-size, zram-generator's code sets no cap (its manual says 4096).
        #expect(try parse("[zram0]\nzram-fraction = 1\n", ram: 10000).settings.devices[0].diskSize == 10000 << 20)
    }
}

/// Collects values from a @Sendable closure.
final class LockedList: @unchecked Sendable {   // @unchecked: guarded by `lock`
    private let lock = NSLockish()
    private var list: [String] = []
    func append(_ s: String) { lock.with { list.append(s) } }
    var items: [String] { lock.with { list } }
}

@Suite("zram-generator's config.rs unit tests")
struct ZramGeneratorUnitTests {
    func size(_ expr: String?, ram: Double, vars: [String: Double] = [:]) throws -> UInt64 {
        let text = expr.map { "[zram0]\nzram-size = \($0)\n" } ?? "[zram0]\n"
        let sets = vars.map { "set!\($0.key) = echo \($0.value)\n" }.joined()
        return try #require(try parse(sets + text, ram: ram).settings.devices.first).diskSize
    }

    @Test("expressions in MiB of ram, with set! variables and SI suffixes")
    func expressions() throws {
        #expect(try size("0.5 * ram", ram: 100) == 50 << 20)
        #expect(try size("0.5 * ram * two", ram: 100, vars: ["two": 2]) == 100 << 20)
        #expect(try size("500", ram: 5000) == 500 << 20)
        #expect(try size("500k", ram: 5000) == 500 * 1000 * 1024 * 1024)
        #expect(try size(nil, ram: 100) == 50 << 20)
        #expect(try size(nil, ram: 10000) == 4096 << 20)
        #expect(try size("min(ram / 2, 4096)", ram: 100) == 50 << 20)
        #expect(try size("min(ram / 2, 4096)", ram: 10000) == 4096 << 20)
        #expect(try size("min(0.5 * ram, 4000)", ram: 3000) == 1500 << 20)
    }

    @Test("what zram-generator refuses, and what it takes but a 16 TiB device cannot hold")
    func refusals() {
        // zram-generator: Undefined("array"); NaN is "zram-size=NaN < 0".
        refused("[zram0]\nzram-size = array(1,2)\n", ram: 100, "z.conf:2: zram-size: invalid expression 'array(1,2)': unknown function 'array'")
        refused("[zram0]\nzram-size = (ram-100)/0\n", ram: 100, "z.conf:2: zram-size: invalid size '(ram-100)/0': not a number")
        // zram-generator makes 32e9 MiB and +inf (u64::MAX bytes) of these; the daemon's limit is 16T.
        refused("[zram0]\nzram-size = 32G\n", ram: 5000,
                "z.conf:2: zram-size: invalid size '32G': too large (at most 16T); the value is in MiB, and k, M, G, T are powers of 1000 as in zram-generator")
        refused("[zram0]\nzram-size = (ram-99)/0\n", ram: 100, "z.conf:2: zram-size: invalid size '(ram-99)/0': too large (at most 16T)")
    }

    @Test("systemd.zram: the last word wins; bare is true")
    func kernelOption() {
        #expect(KernelCommandLine.zramOption("systemd.zram=1 systemd.zram=0 systemd.zram=on systemd.zram=off systemd.zram\n") == true)
        #expect(KernelCommandLine.zramOption("systemd.zram=1\nsystemd.zram=0\n") == false)
        #expect(KernelCommandLine.zramOption("quiet systemd.zram=maybe") == nil)
        #expect(KernelCommandLine.zramOption("systemd.zramx=1 ro") == nil)
        #expect(KernelCommandLine.zramOption("systemd.zram=yes systemd.zram=bogus") == true)
        #expect(KernelCommandLine.zramOption(nil) == nil)
    }

    @Test("mount points: absolute and without '..'; '.', repeated and trailing slashes dropped")
    func verifyMountPoint() throws {
        for bad in ["foo/bar", "/foo/../bar", "/foo/..", ""] {
            #expect(throws: DaemonError.self) { try ConfigFile.verifyPath("test", bad) }
        }
        for (path, normal) in [("/foobar", "/foobar"), ("/", "/"), ("//", "/"), ("///", "/"), ("/foo/./bar/", "/foo/bar")] {
            #expect(try ConfigFile.verifyPath("test", path) == normal)
        }
    }

    @Test("MemTotal in whole MiB")
    func memTotal() {
        let dir = TempDir()
        dir.write("meminfo", "MemTotal:        8013220 kB\nMemFree:          721288 kB\n")
        #expect(SystemInfo.memTotalMiB(path: dir.file("meminfo")) == 7825)
        dir.write("other", "MemTotala:        8013220 kB\naMemTotal:        8013220 kB\n")
        #expect(SystemInfo.memTotalMiB(path: dir.file("other")) == 0)
    }
}

@Suite("zram-generator configuration: the gaps")
struct ZramGeneratorGapTests {
    @Test("set!: a real shell; later set!s see earlier ones and ram; a later file's value applies everywhere")
    func setDirectives() throws {
        let c = try ConfigFile.parse([
            ("a.conf", "set!half = echo ram / 2\nset!quarter = echo half / 2\n[zram0]\nzram-size = quarter\n"),
            ("b.conf", "set!half = printf '%s' 100\n[zram1]\nzram-size = half\n"),
        ], ramMiB: 1000)
        // zram-generator evaluates sizes after reading every file; quarter was 250 when it ran.
        #expect(c.settings.devices.map(\.diskSize) == [250 << 20, 100 << 20])
    }

    @Test("set! mistakes: bad output is an error naming file and line; other top-level keys warn")
    func setMistakes() throws {
        refused("set!x = echo hello world\n[zram0]\n",
                "z.conf:1: set!x: echo hello world: output 'hello world': invalid expression 'hello world': unexpected 'world'")
        refused("set!x = exit 3\n[zram0]\n", "z.conf:1: set!x: exit 3: output '': invalid expression '': unexpected end")
        refused("[zram0]\nzram-size = y\n", "z.conf:2: zram-size: invalid expression 'y': unknown name 'y'")
        let c = try parse("colour = blue\nunset!x = 1\n[zram0]\nzram-size = 1\n", ram: 1000)
        #expect(c.warnings.contains("z.conf:1: invalid outside-of-section key colour, ignoring."))
        #expect(c.warnings.contains("z.conf:2: unknown outside-of-section operation unset!, ignoring."))
        #expect(c.settings.devices.count == 1)
    }

    @Test("fasteval: builtins, precedence, SI suffixes", arguments: [
        ("log(100)", 2.0), ("log(2, 8)", 3), ("log(e(), e())", 1), ("round(0.001, 1.23456)", 1.235), ("round(2.5)", 3),
        ("sin(0) + cos(0)", 1), ("tan(0) + atan(0) + asin(0) + acos(1)", 0), ("sinh(0) + cosh(0) + tanh(0)", 1),
        ("asinh(0) + acosh(1) + atanh(0)", 0), ("int(-2.7)", -2), ("sign(-3)", -1), ("abs(-4) + floor(1.5) + ceil(1.5)", 7),
        ("max(1, -2, 3, -4)", 3), ("min(1; -2; 3; -4)", -4), ("[1 + 2] * 3", 9), ("min[4, 5]", 4),
        ("-2^2", 4), ("2^3^2", 512), ("10 / 4 % 3", 10), ("2 < 3", 1), ("2 >= 3", 0), ("1 == 1", 1), ("1 != 1", 0),
        ("!0", 1), ("0 || 7", 7), ("3 && 0", 0), ("ram()", 1000),
        ("2k", 2000), ("2K", 2000), ("1.5M", 1.5e6), ("2G", 2e9), ("1T", 1e12), ("3m", 0.003), ("5u", 5e-6), ("5µ", 5e-6),
        ("4n", 4e-9), ("4p", 4e-12), ("1e3", 1000), ("1E-3", 0.001), ("5.", 5), (".5", 0.5), ("1/0 > 1", 1), ("min(1/0, 7)", 7),
    ])
    func fasteval(_ text: String, _ value: Double) throws {
        let v = try SizeExpression(text).evaluate(["ram": 1000])
        #expect(abs(v - value) <= abs(value) * 1e-12, "\(text) = \(v)")
        #expect(abs(try SizeExpression("pi()").evaluate([:]) - Double.pi) < 1e-15)
    }

    @Test("fasteval's mistakes", arguments: [
        ("e", "unknown name 'e' (write e(), as in fasteval)"), ("pi * 2", "unknown name 'pi' (write pi(), as in fasteval)"),
        ("2g", "unexpected 'g'"), ("2KiB", "unexpected 'iB'"), ("2e", "bad number '2e'"), ("1.2.3", "bad number '1.2.3'"),
        ("ln(2)", "unknown function 'ln'"), ("sqrt(4)", "unknown function 'sqrt'"), ("ram(1)", "unknown function 'ram'"),
        ("log(1, 2, 3)", "expected log(x) or log(base, x)"), ("sin()", "sin() takes one argument"), ("min()", "min() needs arguments"),
        ("1 and 2", "unexpected 'and 2'"), ("inf", "unknown name 'inf'"), ("min(1 2)", "expected ',' or ';' between the arguments of min, got '2)'"),
    ])
    func fastevalMistakes(_ text: String, _ problem: String) {
        guard let error = expressionError(text) else { return }
        #expect(error.description == "invalid expression '\(text)': \(problem)")
    }

    @Test("zram-size 2k is 2000 MiB; an unlikely ratio warns as zram-generator does")
    func suffixSizes() throws {
        let c = try parse("[zram0]\nzram-size = 2k\nzram-resident-limit = 0.5k\n", ram: 50)
        #expect(c.settings.devices[0].diskSize == 2000 << 20 && c.settings.devices[0].memLimit == 500 << 20)
        #expect(c.warnings.contains("z.conf:2: zram0: zram-size (2k = \(2000 << 20)B) would require improbable compression ratio 40 with available memory (50MB), units may be wrong"))
        #expect(try parse("[zram0]\nzram-size = 2k\n", ram: 100).warnings.isEmpty)
    }

    @Test("mount-point must be absolute and normalized (zram-generator's words)")
    func mountPoint() {
        refused("[zram0]\nmount-point = var/tmp\n", "z.conf:2: mount-point var/tmp is not absolute")
        refused("[zram0]\nmount-point =\n", "z.conf:2: mount-point  is not absolute")
        refused("[zram0]\nmount-point = /a/../b\n", "z.conf:2: mount-point \"/a/../b\" is not normalized")
        refused("[zram0]\nwriteback-device = dev/sdb\n", "z.conf:2: writeback-device dev/sdb is not absolute")
    }

    @Test("a section header without ']' is an error at its line, not an empty configuration")
    func unterminatedSection() {
        refused("# typo\n[zram0\nzram-size = 64\n", "z.conf:2: section header '[zram0' has no closing ']'")
        refused("[zram0] extra\n", "z.conf:1: unexpected 'extra' after section header '[zram0]'")
    }

    @Test("rust-ini's syntax: key: value, quotes, escapes, continued lines")
    func iniSyntax() throws {
        let c = try parse("""
            [zram0]
            zram-size: 64
            options = "discard, pages" here
            fs-type = 'ext4'
            mount-point = /mnt/a\\x0062
            swap-priority = 1\\
            2
            """, ram: 1000)
        let d = try #require(c.settings.devices.first)
        #expect(d.diskSize == 64 << 20 && d.options == "discard, pages here" && d.fsType == "ext4")
        #expect(d.mountPoint == "/mnt/ab" && d.swapPriority == 12)
        refused("[zram0]\noptions = \"open\n", "z.conf:2: options: missing closing \" in \"open")
    }

    @Test("systemd.zram=0 drops every device (the file is not even read); =1 adds zram0 beside others")
    func kernelOption() throws {
        let dir = root([mainEtc: "[zram0\n", dropEtc + "1.conf": "[zram1]\n"])
        #expect(try load(dir, ram: 1000, cmdline: "systemd.zram=0").settings.devices.isEmpty)
        dir.write(mainEtc, "[zram1]\nzram-size = 10\n")
        let on = try load(dir, ram: 1000, cmdline: "ro systemd.zram=1")
        #expect(on.settings.devices.map(\.name) == ["zram1", "zram0"])
        #expect(on.settings.devices[1].diskSize == 500 << 20)
        #expect(try load(dir, ram: 1000, cmdline: "ro").settings.devices.map(\.name) == ["zram1"])
    }

    @Test("/dev/null masks, later directories win, dotfiles and other symlinks are skipped")
    func masks() throws {
        let dir = root([
            mainUsr: "[zram0]\nzram-size = 1\n",
            dropUsr + "10-a.conf": "[zram1]\nzram-size = 1\n",
            dropUsr + "20-b.conf": "[zram2]\nzram-size = 1\n",
            dropUsr + ".hidden.conf": "[zram3]\nzram-size = 1\n",
            dropUsr + "30-c.txt": "[zram4]\nzram-size = 1\n",
            "elsewhere.conf": "[zram5]\nzram-size = 1\n",
            "run/systemd/zram-generator.conf.d/20-b.conf": "[zram6]\nzram-size = 1\n",
        ])
        try FileSystem.makeDirectories(dir.file(dropEtc))
        symlink("/dev/null", dir.file(dropEtc + "10-a.conf"))
        symlink(dir.file("elsewhere.conf"), dir.file(dropEtc + "40-link.conf"))   // liboverdrop skips symlinks
        let c = try load(dir, ram: 1000)
        #expect(c.files == [dir.file(mainUsr), dir.file("run/systemd/zram-generator.conf.d/20-b.conf")])
        #expect(c.settings.devices.map(\.name) == ["zram0", "zram6"])
        // The main file: only the last existing one is read; /etc's /dev/null masks /usr/lib's.
        try FileSystem.makeDirectories(dir.file("etc/systemd"))
        symlink("/dev/null", dir.file(mainEtc))
        #expect(try load(dir, ram: 1000).settings.devices.map(\.name) == ["zram6"])
        dir.write("usr/local/lib/systemd/zram-generator.conf", "[zram9]\n")
        #expect(try load(dir, ram: 1000).settings.devices.map(\.name) == ["zram6"])   // /etc still beats /usr/local
    }

    @Test("zram-generator-config = yes in [zramnbd]: zram-generator's files, then zramnbd's own on top")
    func configKey() throws {
        let dir = root([
            mainEtc: "[zram0]\nzram-size = 64\n",
            "zramnbd.conf": "[zramnbd]\nzram-generator-config = yes\nstats-interval = 2\n[zram0]\nsocket = /tmp/zg/z0.sock\n",
        ])
        let c = try #require(try ConfigFile.load(path: dir.file("zramnbd.conf"), ramMiB: 1000, root: dir.path, cmdline: nil))
        #expect(c.files == [dir.file(mainEtc), dir.file("zramnbd.conf")])
        #expect(c.settings.statsInterval == 2)
        #expect(c.settings.devices.count == 1 && c.settings.devices[0].diskSize == 64 << 20 && c.settings.devices[0].socket == "/tmp/zg/z0.sock")
        let off = try #require(try ConfigFile.load(path: dir.file("zramnbd.conf"), ramMiB: 1000, root: dir.path, cmdline: "systemd.zram=0"))
        #expect(off.settings.devices.isEmpty && off.settings.statsInterval == 2)
    }

    @Test("zramnbd serve --zram-generator-config --check under ZRAM_GENERATOR_ROOT")
    func command() throws {
        let dir = root([
            mainEtc: "[zram0]\nzram-size = ram / 4\nmount-point = /var/tmp\n",
            "proc/meminfo": "MemTotal:         801322 kB\n",
            "proc/cmdline": "ro quiet\n",
        ])
        let r = try runProcess(["/usr/bin/env", "ZRAM_GENERATOR_ROOT=" + dir.path, zramnbdBinary, "serve", "--zram-generator-config", "--check"], in: dir)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("configuration: \(dir.file(mainEtc))\n"))
        #expect(r.stdout.contains("zram0: disksize=\(UInt64(195.5 * 1_048_576)) algorithm=lzo-rle "), "\(r.stdout)")
        #expect(r.stdout.contains("fs=ext2 mount-point=/var/tmp"))
        dir.write("proc/cmdline", "systemd.zram=0\n")
        let off = try runProcess(["/usr/bin/env", "ZRAM_GENERATOR_ROOT=" + dir.path, zramnbdBinary, "serve", "--zram-generator-config", "--check"], in: dir)
        #expect(off.status == 0 && !off.stdout.contains("zram0:"), "\(off.stdout) \(off.stderr)")
        let both = try runProcess([zramnbdBinary, "serve", "--zram-generator-config", "--config", dir.file(mainEtc), "--check"], in: dir)
        #expect(both.status == 2 && both.stderr == "zramnbd: error: --zram-generator-config and --config cannot be combined\n")
    }
}
