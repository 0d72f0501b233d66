import Testing
import TestSupport
@testable import ZramDaemon

@Suite("install.sh and the systemd units")
struct InstallTests {
    @Test("install.sh installs binary, setup script, generator link, units and docs (no old swap/fs units); systemd-analyze accepts the units")
    func installAndVerify() throws {
        let dir = TempDir()
        defer { dir.remove() }
        let prefix = dir.file("usr")
        let units = dir.file("units")
        // Units an earlier install left behind are removed.
        dir.write("units/zramnbd-swap@.service", "[Unit]\n")
        let r = try runProcess([packageRoot + "/scripts/install.sh", "--binary", zramnbdBinary, "--prefix", prefix,
                                "--unit-dir", units, "--generator-dir", dir.file("gen")], in: dir, tag: "install")
        #expect(r.status == 0, "\(r.stderr)")
        for f in ["usr/bin/zramnbd", "usr/sbin/zramnbd-swap", "usr/share/doc/zramnbd/daemon.md",
                  "usr/share/doc/zramnbd/zramnbd.conf.example", "units/zramnbd.service", "units/zramnbd.socket",
                  "units/zramnbd-setup@.service"] {
            #expect(FileSystem.exists(dir.file(f)), "\(f)")
        }
        #expect(!FileSystem.exists(dir.file("units/zramnbd-swap@.service")) && !FileSystem.exists(dir.file("units/zramnbd-fs@.service")))
        #expect(ZramGeneratorConfig.readLink(dir.file("gen/zramnbd-generator")) == prefix + "/bin/zramnbd")
        let service = try #require(dir.read("units/zramnbd.service"))
        #expect(service.contains("ExecStart=\(prefix)/bin/zramnbd serve\n"))
        #expect(service.contains("ExecReload=\(prefix)/bin/zramnbd ctl upgrade\n"))
        #expect(service.contains("Type=notify\n") && service.contains("LimitMEMLOCK=infinity\n")
                && service.contains("OOMScoreAdjust=-1000\n"))
        let setup = try #require(dir.read("units/zramnbd-setup@.service"))
        #expect(setup.contains("ExecStart=-\(prefix)/bin/zramnbd ctl %i attach ${ZRAMNBD_NBD}\n"))
        #expect(!setup.contains("@BINDIR@") && !setup.contains("@SBINDIR@") && !setup.contains("@SYSTEMD_UTIL_DIR@"))
        #expect(!service.contains("@BINDIR@"))

        guard let analyze = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"].first(where: FileSystem.exists) else {
            print("skipping systemd-analyze verify: systemd-analyze is not installed")
            return
        }
        // Template units are verified through an instance; cd so the instances resolve next to them.
        let v = try runProcess(["/bin/sh", "-c", "cd \(units) && \(analyze) verify --man=no zramnbd.service zramnbd.socket zramnbd-setup@zram0.service"],
                               in: dir, tag: "verify")
        #expect(v.status == 0, "\(v.stderr)")
        #expect(v.stderr == "", "\(v.stderr)")
    }

    @Test("the setup script explains itself")
    func setupScriptUsage() throws {
        let dir = TempDir()
        defer { dir.remove() }
        let help = try runProcess([packageRoot + "/scripts/zramnbd-swap", "--help"], in: dir, tag: "help")
        #expect(help.status == 0 && help.stdout.contains("zramnbd-swap [--swap|--fs] start DEVICE..."))
        let bad = try runProcess([packageRoot + "/scripts/zramnbd-swap", "frob"], in: dir, tag: "bad")
        #expect(bad.status == 1 && bad.stderr.hasPrefix("zramnbd-swap: error: usage:"))
    }
}
