// zramnbd-generator against golden trees (Fixtures/generator/<case>/expected, as zram-generator's
// tests/*/run.expected), systemd-escape and systemd-analyze.
import Testing
#if canImport(Glibc)
import Glibc
#endif
import TestSupport
@testable import ZramDaemon

private let fixtures = packageRoot + "/Tests/DaemonTests/Fixtures/generator"

/// Every file's text and every link's target under `dir`, by relative path ("-> target" for links).
private func tree(_ dir: String, _ prefix: String = "") -> [String: String] {
    var out: [String: String] = [:]
    for name in FileSystem.listDirectory(dir + "/" + prefix) where name != ".empty" {
        let rel = prefix.isEmpty ? name : prefix + "/" + name
        let full = dir + "/" + rel
        var st = stat()
        guard lstat(full, &st) == 0 else { continue }
        switch st.st_mode & S_IFMT {
        case S_IFLNK: out[rel] = "-> " + (ZramGeneratorConfig.readLink(full) ?? "?")
        case S_IFDIR: out.merge(tree(dir, rel)) { a, _ in a }
        default: out[rel] = (try? FileSystem.readText(full)) ?? "?"
        }
    }
    return out
}

/// Runs the generator on a fixture (its root/ as ZRAM_GENERATOR_ROOT, so MemTotal and the
/// kernel command line are the fixture's, and no container check) into a fresh directory.
private func generate(_ name: String, in dir: TempDir, via argv0: String? = nil) throws -> (Finished, String) {
    let out = dir.file("units")
    let env = ["/usr/bin/env", "ZRAM_GENERATOR_ROOT=\(fixtures)/\(name)/root", "ZRAMNBD_CONNECTIONS=2"]
    let r = try runProcess(env + [zramnbdBinary, "generate", "--config", "\(fixtures)/\(name)/zramnbd.conf", out, out + ".early", out + ".late"],
                           in: dir, tag: name)
    return (r, out)
}

private let analyze = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"].first(where: FileSystem.exists)

@Suite("zramnbd-generator")
struct GeneratorTests {
    @Test("golden trees: swap with priority and discard, swap plus ext4 at /var/tmp, zram-generator's files, systemd.zram=0, empty config",
          arguments: ["swap", "swap-and-mount", "zram-generator-config", "kernel-disabled", "empty"])
    func golden(_ name: String) throws {
        let dir = TempDir("zramnbd-gen")
        defer { dir.remove() }
        let (r, out) = try generate(name, in: dir)
        #expect(r.status == 0, "\(r.stderr)")
        let got = tree(out), want = tree("\(fixtures)/\(name)/expected")
        #expect(got.keys.sorted() == want.keys.sorted())
        for (k, v) in want { #expect(got[k] == v, "\(k)") }
        if name == "kernel-disabled" { #expect(r.stderr.contains("systemd.zram=0")) }
        if name == "empty" { #expect(r.stderr.contains("no devices configured")) }
    }

    @Test("systemd-analyze verify accepts the generated units with the installed templates")
    func verify() throws {
        guard let analyze else {
            print("skipping systemd-analyze verify: systemd-analyze is not installed")
            return
        }
        let dir = TempDir("zramnbd-gen")
        defer { dir.remove() }
        let (r, out) = try generate("swap-and-mount", in: dir)
        #expect(r.status == 0, "\(r.stderr)")
        let i = try runProcess([packageRoot + "/scripts/install.sh", "--binary", zramnbdBinary, "--prefix", dir.file("usr"),
                                "--unit-dir", out, "--generator-dir", dir.file("gen")], in: dir, tag: "install")
        #expect(i.status == 0, "\(i.stderr)")
        // Units in one directory, verified from there; /var/tmp.mount's Where must match its name.
        let v = try runProcess(["/bin/sh", "-c", "cd \(out) && SYSTEMD_UNIT_PATH=\(out): \(analyze) verify --man=no dev-nbd0.swap var-tmp.mount zramnbd-setup@zram0.service zramnbd-setup@zram1.service"],
                               in: dir, tag: "verify")
        #expect(v.status == 0, "\(v.stdout)\(v.stderr)")
        let noise = v.stderr.split(separator: "\n").filter { !$0.contains("zramnbd/daemon.md") && !$0.contains("is not executable") }
        #expect(noise.isEmpty, "\(v.stderr)")
    }

    @Test("invoked as zramnbd-generator (argv[0]) it takes systemd's three directories")
    func argv0() throws {
        let dir = TempDir("zramnbd-gen")
        defer { dir.remove() }
        #expect(symlink(zramnbdBinary, dir.file("zramnbd-generator")) == 0)
        let out = dir.file("normal")
        let r = try runProcess(["/usr/bin/env", "ZRAM_GENERATOR_ROOT=\(fixtures)/swap/root", "ZRAMNBD_CONNECTIONS=2",
                                dir.file("zramnbd-generator"), "--config", "\(fixtures)/swap/zramnbd.conf", out, dir.file("early"), dir.file("late")],
                               in: dir, tag: "gen")
        #expect(r.status == 0, "\(r.stderr)")
        #expect(tree(out) == tree("\(fixtures)/swap/expected"))
        #expect(!FileSystem.exists(dir.file("early")))
        let bad = try runProcess([dir.file("zramnbd-generator")], in: dir, tag: "bad")
        #expect(bad.status == 2 && bad.stderr.hasPrefix("zramnbd: error:"))
    }

    @Test("in a container (systemd-detect-virt says so) and without ZRAM_GENERATOR_ROOT: no units")
    func container() throws {
        let dir = TempDir("zramnbd-gen")
        defer { dir.remove() }
        dir.write("bin/systemd-detect-virt", "#!/bin/sh\nexit 0\n")
        #expect(chmod(dir.file("bin/systemd-detect-virt"), 0o755) == 0)
        let r = try runProcess(["/usr/bin/env", "PATH=\(dir.file("bin")):/usr/bin:/bin", zramnbdBinary, "generate",
                                "--config", "\(fixtures)/swap/zramnbd.conf", dir.file("units")], in: dir, tag: "gen")
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stderr.contains("running in a container, no units") || r.stderr.contains("systemd.zram=0"))
        #expect(tree(dir.file("units")).isEmpty)
    }

    @Test("a bad config is one line and exit 2; a missing --config too")
    func badConfig() throws {
        let dir = TempDir("zramnbd-gen")
        defer { dir.remove() }
        dir.write("bad.conf", "[zram0]\nswap-priority = high\n")
        let r = try runProcess(["/usr/bin/env", "ZRAM_GENERATOR_ROOT=\(fixtures)/swap/root", zramnbdBinary, "generate",
                                "--config", dir.file("bad.conf"), dir.file("units")], in: dir, tag: "bad")
        #expect(r.status == 2 && r.stderr == "zramnbd: error: \(dir.file("bad.conf")):2: swap-priority: expected -1...32767, got 'high'\n")
        let m = try runProcess([zramnbdBinary, "generate", "--config", dir.file("nope.conf"), dir.file("units")], in: dir, tag: "missing")
        #expect(m.status == 2 && m.stderr.split(separator: "\n").count == 1)
        // A mount point systemd cannot take on a unit-file line.
        var s = DaemonSettings()
        var d = DeviceSpec.standard(name: "zram0", diskSize: 1 << 20)
        d.mountPoint = "/mnt/a\u{1}b"
        s.devices = [d]
        var w: [String] = []
        #expect(throws: DaemonError.self) { try Generator.units(for: s, connections: 1, warnings: &w) }
    }

    @Test("unit names from paths equal systemd-escape --path --suffix=mount",
          arguments: ["/", "///", "/var/tmp", "/var/tmp/", "/foo//bar/./baz", "/a b/c d", "/with-dash/x--y", "/.hidden/.x",
                      "/a.b/c.d.", "/.żupan-ci3pły", "/日本語/ü", "/colon:under_score", "/back\\slash", "/per%cent", "/tab\there",
                      "/" + String(repeating: "x", count: 249), "/" + String(repeating: "x", count: 250), "/" + String(repeating: "é", count: 60)])
    func escape(_ path: String) throws {
        let ours: String?
        do { ours = try UnitName.fromPath(path, suffix: ".mount") } catch { ours = nil }
        guard FileSystem.exists("/usr/bin/systemd-escape") else {
            print("skipping the comparison with systemd-escape: not installed")
            return
        }
        let dir = TempDir("zramnbd-esc")
        defer { dir.remove() }
        let r = try runProcess(["/usr/bin/systemd-escape", "--path", "--suffix=mount", "--", path], in: dir, tag: "esc")
        let theirs = r.status == 0 ? String(r.stdout.dropLast()) : nil
        #expect(ours == theirs, "systemd-escape: \(r.stdout)\(r.stderr)")
    }
}
