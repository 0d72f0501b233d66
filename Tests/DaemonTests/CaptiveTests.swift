import Foundation
import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif
@testable import ZramDaemon

/// `serve --run`, `--pidfile`, `--exit-with-parent`, `--print-uri` with the clients scripts use.
/// Each daemon gets TMPDIR inside the test's directory, so its private socket directory can be
/// seen to go away, and no config file, /run path or control socket of the system's.
@Suite("zramnbd serve --run and friends")
struct CaptiveTests {
    /// `zramnbd serve ARGS` to completion, with TMPDIR in `dir`.
    func serve(_ args: [String], in dir: TempDir, tag: String = "serve", timeout: Duration = .seconds(120)) throws -> CommandResult {
        try Subprocess.run([zramnbdBinary, "serve"] + args, outputPrefix: dir.file(tag), environment: ["TMPDIR": dir.path], timeout: timeout)
    }

    /// What the daemons left in TMPDIR (their private directories).
    func leftovers(_ dir: TempDir) -> [String] { FileSystem.listDirectory(dir.path).filter { $0.hasPrefix("zramnbd-") } }

    /// Polls `condition` every 10 ms until it holds or `seconds` pass.
    func eventually(_ seconds: Double = 10, _ condition: () -> Bool) -> Bool {
        let deadline = SystemInfo.now() + seconds
        while SystemInfo.now() < deadline {
            if condition() { return true }
            var ts = timespec(tv_sec: 0, tv_nsec: 10_000_000)
            nanosleep(&ts, nil)
        }
        return condition()
    }

    @Test("--run: nbdkit's shell variables for a private unix socket; nbdinfo --json reads the device through $uri")
    func variablesAndNbdinfo() throws {
        let dir = TempDir()
        defer { dir.remove() }
        let r = try serve(["--size", "64M", "--run",
                           #"printf '%s\n' "$uri" "$nbd" "$exportname" "[$port]" "$unixsocket" "${tls-unset}" && nbdinfo --json "$uri" > "$TMPDIR/info.json""#],
                          in: dir)
        #expect(r.succeeded, "\(r.stderr)")
        #expect(r.stderr == "", "a captive daemon says nothing unless something goes wrong: \(r.stderr)")
        let lines = r.stdout.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        try #require(lines.count == 7, "\(r.stdout)")
        let socket = lines[4]
        #expect(socket.hasPrefix(dir.path + "/zramnbd-") && socket.hasSuffix("/zram0.sock"), "\(socket)")
        #expect(lines[0] == "nbd+unix:///zram0?socket=\(socket)")
        #expect(lines[1] == lines[0])
        #expect(lines[2] == "zram0" && lines[3] == "[]" && lines[5] == "unset")
        let json = try #require(try? Data(contentsOf: URL(fileURLWithPath: dir.file("info.json"))))
        let info = try #require(try JSONSerialization.jsonObject(with: json) as? [String: Any])
        let exports = try #require(info["exports"] as? [[String: Any]])
        #expect(exports.first?["export-name"] as? String == "zram0")
        #expect(exports.first?["export-size"] as? Int == 64 << 20)
        #expect(leftovers(dir).isEmpty, "the private directory is removed: \(leftovers(dir))")
    }

    @Test("--run qemu-img convert into $uri, then qemu-img compare and nbdcopy | cmp in the same command")
    func qemuImgConvert() throws {
        let dir = TempDir()
        defer { dir.remove() }
        var bytes = [UInt8](repeating: 0, count: 8 << 20)
        var rng: UInt64 = 0x9E3779B97F4A7C15
        for i in bytes.indices {
            rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17
            bytes[i] = UInt8(truncatingIfNeeded: rng)
        }
        let src = dir.file("src.bin")
        try Data(bytes).write(to: URL(fileURLWithPath: src))
        let r = try serve(["--size", "8M", "--run",
                           "qemu-img convert -n -f raw -O raw \(src) \"$uri\" && qemu-img compare -f raw -F raw \(src) \"$uri\" "
                           + "&& nbdcopy \"$uri\" - | cmp - \(src) && echo verified"], in: dir)
        #expect(r.succeeded, "\(r.stderr)")
        #expect(r.stdout.contains("Images are identical.") && r.stdout.hasSuffix("verified\n"), "\(r.stdout)")
    }

    @Test("--run fio --ioengine=nbd --uri=$uri: a short crc32c verify job")
    func fioVerify() throws {
        let dir = TempDir()
        defer { dir.remove() }
        let help = try Subprocess.run(["fio", "--enghelp=nbd"], outputPrefix: dir.file("enghelp"))
        guard help.succeeded, help.stdout.contains("uri") else {
            print("skipping the fio job: this fio has no nbd engine (fio --enghelp=nbd: \(help.stderr))")
            return
        }
        let r = try serve(["--size", "32M", "--run",
                           "fio --name=verify --ioengine=nbd --uri=\"$uri\" --rw=randwrite --bs=4k --size=16M --iodepth=8 "
                           + "--verify=crc32c --do_verify=1 --verify_state_save=0 --output-format=terse"], in: dir)
        #expect(r.succeeded, "\(r.stderr)")
        let fields = r.stdout.split(separator: "\n").last?.split(separator: ";", omittingEmptySubsequences: false) ?? []
        #expect(fields.count > 4 && fields[4] == "0", "fio's error field: \(r.stdout)")   // terse v3: field 5 is the error
    }

    @Test("exit status: the command's; 128+N when signal N kills it, with a line saying so")
    func exitStatus() throws {
        let dir = TempDir()
        defer { dir.remove() }
        let seven = try serve(["--size", "8M", "--run", "exit 7"], in: dir, tag: "seven")
        #expect(seven.termination == .exited(7))
        let killed = try serve(["--size", "8M", "--run", "kill -TERM $$"], in: dir, tag: "killed")
        #expect(killed.termination == .exited(128 + SIGTERM))
        #expect(killed.stderr == "zramnbd: the --run command was killed by signal \(SIGTERM)\n")
        #expect(leftovers(dir).isEmpty)
    }

    @Test("SIGTERM to a captive daemon ends the command too, and the daemon exits with its status")
    func terminated() throws {
        let dir = TempDir()
        defer { dir.remove() }
        let p = try Subprocess([zramnbdBinary, "serve", "--size", "8M", "--run", "echo started; exec sleep 60"],
                               outputPrefix: dir.file("serve"), environment: ["TMPDIR": dir.path])
        #expect(eventually { p.stdout == "started\n" || p.termination != nil }, "\(p.stderr)")
        p.signal(SIGTERM)
        #expect(p.wait(timeout: .seconds(20)) == .exited(128 + SIGTERM), "\(p.stderr)")
        #expect(leftovers(dir).isEmpty)
    }

    @Test("a daemon that cannot start runs nothing; --run with --stdio is refused in one line")
    func failsToStart() throws {
        let dir = TempDir()
        defer { dir.remove() }
        let mark = dir.file("ran")
        dir.write("taken.sock", "not a socket\n")
        let r = try serve(["--size", "8M", "--socket", dir.file("taken.sock"), "--run", "touch \(mark)"], in: dir)
        #expect(r.termination == .exited(1), "\(r.stderr)")
        #expect(r.stderr.hasPrefix("zramnbd: error: ") && r.stderr.filter { $0 == "\n" }.count == 1, "\(r.stderr)")
        #expect(!FileSystem.exists(mark))
        let pid = try serve(["--size", "8M", "--pidfile", dir.file("missing/zramnbd.pid"), "--run", "touch \(mark)"], in: dir, tag: "pid")
        #expect(pid.termination == .exited(1) && !FileSystem.exists(mark))
        #expect(pid.stderr.hasPrefix("zramnbd: error: cannot write --pidfile \(dir.file("missing/zramnbd.pid")): "), "\(pid.stderr)")
        let bad = try serve(["--size", "8X", "--run", "touch \(mark)"], in: dir, tag: "bad")
        #expect(bad.termination == .exited(2) && !FileSystem.exists(mark))
        let stdio = try serve(["--size", "8M", "--stdio", "--run", "touch \(mark)"], in: dir, tag: "stdio")
        #expect(stdio.termination == .exited(2))
        #expect(stdio.stderr == "zramnbd: error: --run cannot be combined with --stdio: the command would get the NBD connection's stdin and stdout\n")
        #expect(!FileSystem.exists(mark) && leftovers(dir).isEmpty)
    }

    @Test("--pidfile holds the daemon's pid while it serves and is gone after")
    func pidfile() throws {
        let dir = TempDir()
        defer { dir.remove() }
        let pidfile = dir.file("zramnbd.pid")
        let p = try Subprocess([zramnbdBinary, "serve", "--size", "8M", "--pidfile", pidfile, "--run", "cat \(pidfile); nbdinfo --size \"$uri\""],
                               outputPrefix: dir.file("serve"), environment: ["TMPDIR": dir.path])
        let end = p.wait(timeout: .seconds(60))
        #expect(end == .exited(0), "\(p.stderr)")
        #expect(p.stdout == "\(p.pid)\n8388608\n")
        #expect(!FileSystem.exists(pidfile))
    }

    @Test("--exit-with-parent: the daemon stops gracefully when the shell that started it exits")
    func exitWithParent() throws {
        let dir = TempDir()
        defer { dir.remove() }
        let pidfile = dir.file("zramnbd.pid"), socket = dir.file("zram0.sock")
        // The parent starts the daemon in the background, waits (with a deadline) for the pid
        // file, prints it and exits.
        let script = """
            '\(zramnbdBinary)' serve --size 8M --socket '\(socket)' --no-mlock --exit-with-parent --pidfile '\(pidfile)' &
            i=0
            while [ ! -s '\(pidfile)' ] && [ $i -lt 1000 ]; do sleep 0.01; i=$((i + 1)); done
            cat '\(pidfile)'
            """
        let parent = try Subprocess.run(["/bin/sh", "-c", script], outputPrefix: dir.file("parent"))
        #expect(parent.succeeded, "\(parent.stderr)")
        let pid = try #require(pid_t(parent.stdout.trimmingCharacters(in: .whitespacesAndNewlines)), "no pid: \(parent.stdout) \(parent.stderr)")
        // Gone, or a zombie its new parent has not reaped yet; and it cleaned up as on SIGTERM.
        let gone = eventually {
            let stat = Subprocess.readFile("/proc/\(pid)/stat")
            return stat.isEmpty || stat.contains(") Z ")
        }
        if !gone { kill(pid, SIGKILL) }
        #expect(gone, "the daemon outlived its parent")
        #expect(eventually { !FileSystem.exists(socket) && !FileSystem.exists(pidfile) }, "socket or pid file left behind")
    }

    @Test("--print-uri: one line per device, usable by nbdinfo; with --run they come before the command's output")
    func printURI() throws {
        let dir = TempDir()
        defer { dir.remove() }
        dir.write("two.conf", """
            [zramnbd]
            control-socket = none
            [zram0]
            zram-size = 8
            socket = \(dir.file("zram0.sock"))
            stats-dir = none
            [zram1]
            zram-size = 16
            socket = \(dir.file("zram1.sock"))
            stats-dir = none
            """)
        let p = try Subprocess([zramnbdBinary, "serve", "--config", dir.file("two.conf"), "--no-mlock", "--print-uri"],
                               outputPrefix: dir.file("serve"))
        #expect(eventually { p.stdout.filter { $0 == "\n" }.count == 2 || p.termination != nil }, "\(p.stderr)")
        let uris = p.stdout.split(separator: "\n").map(String.init)
        #expect(uris == ["nbd+unix:///zram0?socket=\(dir.file("zram0.sock"))", "nbd+unix:///zram1?socket=\(dir.file("zram1.sock"))"])
        for (uri, size) in zip(uris, ["8388608\n", "16777216\n"]) {
            let info = try Subprocess.run(["nbdinfo", "--size", uri], outputPrefix: dir.file("info"))
            #expect(info.stdout == size, "\(uri): \(info.stderr)")
        }
        #expect(p.stop(grace: .seconds(10)) == .exited(0))

        // Captive, with the same file: its sockets as configured; $uri is the first device's.
        let r = try serve(["--config", dir.file("two.conf"), "--print-uri", "--run", "echo \"run $uri\""], in: dir)
        #expect(r.succeeded, "\(r.stderr)")
        #expect(r.stdout == uris.map { $0 + "\n" }.joined() + "run \(uris[0])\n")
    }

    @Test("--run with --control-socket: a device ctl adds gets its socket in the private directory, not /run")
    func ctlAdd() throws {
        let dir = TempDir()
        defer { dir.remove() }
        let control = dir.file("control.sock")
        let r = try serve(["--size", "8M", "--control-socket", control, "--run",
                           "'\(zramnbdBinary)' ctl --control-socket '\(control)' zram1 add size=4M >/dev/null && "
                           + #"s="${unixsocket%/*}/zram1.sock" && echo "$s" && nbdinfo --size "nbd+unix:///zram1?socket=$s""#], in: dir)
        #expect(r.succeeded, "\(r.stderr)")
        let lines = r.stdout.split(separator: "\n").map(String.init)
        #expect(lines.count == 2 && lines[0].hasPrefix(dir.path + "/zramnbd-") && lines[1] == "4194304", "\(r.stdout)")
        #expect(leftovers(dir).isEmpty && !FileSystem.exists(control))
    }

    @Test("--run with --listen only: TCP alone, $uri nbd://HOST:PORT/EXPORT and $port set")
    func tcpOnly() throws {
        let dir = TempDir()
        defer { dir.remove() }
        let port = try freeTCPPort()
        let r = try serve(["--size", "8M", "--listen", "127.0.0.1:\(port)", "--run",
                           #"printf '%s\n' "$uri" "$port" "[$unixsocket]" && nbdinfo --size "$uri""#], in: dir)
        #expect(r.succeeded, "\(r.stderr)")
        #expect(r.stdout == "nbd://127.0.0.1:\(port)/zram0\n\(port)\n[]\n8388608\n")
        #expect(leftovers(dir).isEmpty)
    }

    @Test("nbdkit's quoting: shell_quote and uri_quote")
    func quoting() {
        #expect(CaptiveURI.shellQuote("/tmp/a-b_c.sock") == "/tmp/a-b_c.sock")
        #expect(CaptiveURI.shellQuote("") == "\"\"")
        #expect(CaptiveURI.shellQuote("a b$c\"d`e\\f") == "\"a b\\$c\\\"d\\`e\\\\f\"")
        #expect(CaptiveURI.uriQuote("/tmp/my dir/z?.sock") == "/tmp/my%20dir/z%3F.sock")
        var spec = DeviceSpec.standard(name: "zram0", diskSize: 1 << 20)
        spec.socket = "/tmp/a b/zram0.sock"
        #expect(CaptiveURI.script("true", first: spec, tls: TLSSettings()) == """
            uri="nbd+unix:///zram0?socket=/tmp/a%20b/zram0.sock"
            nbd="$uri"
            exportname=zram0
            port=
            unixsocket="/tmp/a b/zram0.sock"
            true
            """)
    }
}
