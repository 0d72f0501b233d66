import Testing
import TestSupport
@testable import ZramDaemon

/// The built binary: exit statuses and messages a user sees.
@Suite("zramnbd command line")
struct CLITests {
    @Test("ctl --help lists every action in two columns within 80 columns")
    func ctlHelpFits() {
        let lines = ControlAction.helpText.split(separator: "\n")
        #expect(lines.allSatisfy { $0.count <= 80 }, "\(lines.filter { $0.count > 80 })")
        for a in ControlAction.all { #expect(lines.contains { $0.hasPrefix("  " + a.head + " ") }, "\(a.name)") }
    }

    @Test("bad values: exit 2 and one clear line", arguments: [
        (["serve", "--size", "4X"], "zramnbd: error: --size: invalid size '4X': unknown suffix 'X' (use K, M, G or T; KiB = 1024, KB = 1000)"),
        (["serve", "--algorithm", "842"], "zramnbd: error: unknown compression algorithm '842' (supported: lzo-rle, lzo, lz4, lz4hc, zstd, deflate)"),
        (["serve", "--chain-size", "3"], "zramnbd: error: --chain-size: invalid chain size 3 (4...16)"),
        (["serve", "--level", "x"], "zramnbd: error: --level: invalid level 'x': expected an integer"),
        (["serve", "--listen", "localhost"], "zramnbd: error: invalid address 'localhost': expected HOST:PORT"),
        (["serve", "--frobnicate"], "zramnbd: error: Unknown option '--frobnicate' (see --help)"),
        (["ctl", "zram0", "mem-limit"], "zramnbd: error: usage: zramnbd ctl DEVICE mem-limit SIZE"),
        (["ctl", "zram0", "explode"], "zramnbd: error: unknown action 'explode' (compact, reset, mem-limit, mem-used-max-reset, add, remove, show, get, attach, detach, idle, writeback, writeback-limit, writeback-limit-enable, writeback-batch-size, compressed-writeback, writeback-packing, backing-dev, recomp-algorithm, algorithm-params, recompress, train-dict, block-state)"),
        (["ctl"], "zramnbd: error: Missing expected argument '<device>' (see --help)"),
    ])
    func badValues(_ args: [String], _ message: String) throws {
        let dir = TempDir()
        defer { dir.remove() }
        let r = try runProcess([zramnbdBinary] + args, in: dir)
        #expect(r.status == 2)
        #expect(r.stderr == message + "\n")
        #expect(r.stdout == "")
    }

    @Test("a bad configuration file: exit 2 naming file and line; warnings name them too")
    func badConfig() throws {
        let dir = TempDir()
        defer { dir.remove() }
        dir.write("bad.conf", "[zram0]\nzram-size = ram * \n")
        let r = try runProcess([zramnbdBinary, "serve", "--config", dir.file("bad.conf")], in: dir)
        #expect(r.status == 2)
        #expect(r.stderr == "zramnbd: error: \(dir.file("bad.conf")):2: zram-size: invalid expression 'ram *': unexpected end\n")

        dir.write("good.conf", "[zram0]\nzram-size = 64\ncolour = blue\n")
        dir.write("good.conf.d/10-more.conf", "[zram1]\nzram-size = 2048\ncompression-algorithm = zstd(level=1)\n")
        let ok = try runProcess([zramnbdBinary, "serve", "--check", "--config", dir.file("good.conf")], in: dir, tag: "ok")
        #expect(ok.status == 0)
        #expect(ok.stderr == "zramnbd: warning: \(dir.file("good.conf")):3: unknown key 'colour' in [zram0], ignored\n")
        #expect(ok.stdout.contains("zram0: disksize=67108864 algorithm=lzo-rle "))
        #expect(ok.stdout.contains("zram1: disksize=2147483648 algorithm=zstd level=1 "))
    }

    @Test("--help works for every command")
    func help() throws {
        let dir = TempDir()
        defer { dir.remove() }
        for cmd in [[], ["serve"], ["status"], ["ctl"]] {
            let r = try runProcess([zramnbdBinary] + cmd + ["--help"], in: dir)
            #expect(r.status == 0)
            #expect(r.stdout.contains("USAGE: zramnbd"))
        }
    }

    @Test("status without a daemon says so (exit 1)")
    func noDaemon() throws {
        let dir = TempDir()
        defer { dir.remove() }
        let r = try runProcess([zramnbdBinary, "status", "--control-socket", dir.file("none.sock")], in: dir)
        #expect(r.status == 1)
        #expect(r.stderr == "zramnbd: error: cannot connect to \(dir.file("none.sock")): is the daemon running? (zramnbd serve)\n")
    }
}
