import Testing
#if canImport(Glibc)
import Glibc
#endif
import NBD
import TestSupport
import ZramDevice
@testable import ZramDaemon

/// `zramnbd ctl upgrade` (issue 15): the daemon execs a binary with every device, socket and
/// connection; clients see no error; a refused or failed upgrade leaves the old process serving.
@Suite struct UpgradeTests {
    static let packageRoot = RealClientTests.packageRoot

    /// A copy of the daemon's binary, as a package upgrade would install it.
    func copyOfBinary(_ dir: TempDir) throws -> String {
        let copy = dir.file("zramnbd-new")
        let r = try runProcess(["/bin/cp", zramnbdBinary, copy], in: dir, tag: "cp")
        #expect(r.status == 0, "\(r.stderr)")
        return copy
    }

    func upgrade(_ daemon: RunningDaemon, _ extra: [String] = []) throws -> CommandResult {
        try daemon.zramnbd(["ctl", "--control-socket", daemon.control, "upgrade"] + extra, tag: "upgrade")
    }

    /// The issue's libnbd test: a writer and a reader on open connections with a shadow copy,
    /// two upgrades while they run, a third with I/O quiet: the same connections go on, the
    /// counters carry over unchanged and the whole device's sha256 is right. Same pid throughout,
    /// and systemd hears RELOADING=1 then READY=1 with MAINPID.
    // The limits are generous: in the full suite these share two CPUs with four qemu guests
    // (TCG), and took minutes for seconds of work.
    @Test(.timeLimit(.minutes(30)))
    func libnbdConnectionsGoOnAcrossUpgrades() throws {
        let dir = TempDir()
        defer { dir.remove() }
        let daemon = try RunningDaemon(dir, size: "128M")
        let binary = try copyOfBinary(dir)
        let io = try Subprocess(["/usr/bin/python3", Self.packageRoot + "/Tests/conformance/upgrade_under_io.py",
                                 "--uri", daemon.uri, "--zramnbd", zramnbdBinary, "--control", daemon.control,
                                 "--binary", binary, "--upgrades", "2", "--mib", "32"], outputPrefix: dir.file("io"))
        // Read the notify socket as systemd does, all along: it queues only a few datagrams.
        var notes: [String] = []
        let deadline = ContinuousClock.now + .seconds(800)
        while io.termination == nil, ContinuousClock.now < deadline {
            if let n = daemon.notify.receive(until: "=", timeout: 50) { notes.append(n) }
        }
        while let n = daemon.notify.receive(until: "=", timeout: 200) { notes.append(n) }
        let finished = io.wait(timeout: .seconds(1))
        print(io.stdout.split(separator: "\n").filter { $0.contains("upgrade") || $0.hasPrefix("FAIL") }.joined(separator: "\n"))
        #expect(finished == .exited(0), "\(io.stdout)\n\(io.stderr.suffix(2000))\ndaemon: \(daemon.process.stderr.suffix(3000))")
        // Three upgrades, three reload cycles of one process: RELOADING=1 (with the time), then
        // READY=1 naming the same pid.
        var reloads = 0
        for (i, n) in notes.enumerated() where n.contains("RELOADING=1") {
            #expect(n.contains("MONOTONIC_USEC="))
            let ready = notes[(i + 1)...].first { $0.contains("READY=1") }
            #expect(ready?.contains("MAINPID=\(daemon.process.pid)") == true, "\(ready ?? "no READY=1")")
            reloads += 1
        }
        #expect(reloads == 3, "\(daemon.process.stderr.suffix(3000))")
        #expect(daemon.process.termination == nil, "the pid is the same process")
        #expect(daemon.process.stderr.contains("upgraded from zramnbd"))
        #expect(daemon.stop() == .exited(0))
    }

    /// Each refusal is one clear line from ctl and in the log, and the daemon serves on with its
    /// data: a missing binary, one that is not executable, one that is no zramnbd, and one that
    /// reads another state version.
    @Test func refusedUpgradesKeepServing() throws {
        let dir = TempDir()
        defer { dir.remove() }
        let daemon = try RunningDaemon(dir, size: "64M")
        let io = "import nbd, sys\nh = nbd.NBD(); h.connect_uri(sys.argv[1]); d = b'\\x42' * 4096 + bytes(range(256)) * 16\n"
            + "if sys.argv[2] == 'w': h.pwrite(d, 0)\nelse: print('same', h.pread(8192, 0) == d)\n"
        dir.write("io.py", io)
        let w = try runProcess(["/usr/bin/python3", dir.file("io.py"), daemon.uri, "w"], in: dir, tag: "write")
        #expect(w.status == 0, "\(w.stderr)")
        dir.write("plain", "not a program\n")
        dir.write("other-state.sh", "#!/bin/sh\necho 'zramnbd-handover \(HandoverManifest.version) state 99'\n")
        chmod(dir.file("other-state.sh"), 0o755)
        let cases: [(String, String)] = [
            (dir.file("missing"), "No such file"),
            (dir.file("plain"), "is not an executable file"),
            ("/bin/false", "handover-check exited with status 1"),
            (dir.file("other-state.sh"), "reads 'zramnbd-handover 1 state 99'"),
            ("relative/zramnbd", "needs an absolute path"),
        ]
        for (binary, message) in cases {
            let r = try upgrade(daemon, ["--binary", binary])
            #expect(!r.succeeded && r.stderr.contains(message), "\(binary): \(r.stderr)")
            #expect(r.stderr.split(separator: "\n").count == 1, "one line: \(r.stderr)")
        }
        #expect(daemon.process.stderr.contains("upgrade refused, serving on"))
        let rd = try runProcess(["/usr/bin/python3", dir.file("io.py"), daemon.uri, "r"], in: dir, tag: "read")
        #expect(rd.stdout.contains("same True"), "\(rd.stdout)\(rd.stderr)")
        #expect(daemon.stop() == .exited(0))
    }

    /// Written-back pages go with an upgrade: the backing file is handed over, the new process
    /// reads them from it, bd_stat carries over, and writeback goes on into free blocks. So do
    /// pages recompressed with a dictionary train-dict made (never saved to a file): the new
    /// process reads them, and the dictionary stays busy under them.
    @Test(.timeLimit(.minutes(30)))
    func writtenBackPagesGoWithTheUpgrade() throws {
        let dir = TempDir()
        defer { dir.remove() }
        let daemon = try RunningDaemon(dir, size: "64M", extra: ["--backing-dev", dir.file("wb")])
        let binary = try copyOfBinary(dir)
        let script = """
            import nbd, os, random, subprocess, sys
            h = nbd.NBD(); h.connect_uri(sys.argv[1])
            r = random.Random(3)
            pages = {i: ((b"%06d zram writeback " % i) * 150)[:3000] + r.randbytes(1096) for i in range(0, 4096, 3)}
            for i, d in pages.items(): h.pwrite(d, i * 4096)
            def ctl(*w):
                p = subprocess.run([sys.argv[2], "ctl", "--control-socket", sys.argv[3]] + list(w), capture_output=True, text=True)
                return (p.stdout + p.stderr).strip()
            ctl("zram0", "idle", "all"); print("writeback", ctl("zram0", "writeback", "type=idle"))
            for i in range(2, 4096, 3):
                pages[i] = ((b"%06d recompressed with a trained dictionary " % i) * 100)[:4096]; h.pwrite(pages[i], i * 4096)
            print("recomp", ctl("zram0", "recomp-algorithm", "algo=zstd"), ctl("zram0", "train-dict", "size=16K", "sample=1000"))
            ctl("zram0", "idle", "all"); print("recompress", ctl("zram0", "recompress", "type=idle"))
            bd = lambda: [l for l in ctl("zram0", "show").splitlines() if l.startswith("bd_")]
            before = bd(); print("upgrade", ctl("upgrade", "--binary", sys.argv[4])); print("bd same", bd() == before, before)
            print("intact", all(h.pread(4096, i * 4096) == d for i, d in pages.items()))
            print("dict busy", ctl("zram0", "train-dict", "size=16K"))
            for i in range(1, 4096, 3):
                pages[i] = r.randbytes(2048) * 2; h.pwrite(pages[i], i * 4096)
            ctl("zram0", "idle", "all"); print("writeback again", ctl("zram0", "writeback", "type=idle"))
            print("still intact", all(h.pread(4096, i * 4096) == d for i, d in pages.items()))
            """
        dir.write("wb.py", script)
        let r = try Subprocess.run(["/usr/bin/python3", dir.file("wb.py"), daemon.uri, zramnbdBinary, daemon.control, binary],
                                   outputPrefix: dir.file("wb"), timeout: .seconds(800))
        let out = r.stdout
        #expect(r.succeeded, "\(out)\n\(r.stderr)\n\(daemon.process.stderr.suffix(3000))")
        #expect(out.contains("upgrade upgraded from zramnbd"), "\(out)")
        #expect(out.contains("bd same True") && !out.contains("bd_count=0 "), "\(out)")
        #expect(out.contains("\nintact True") && out.contains("still intact True"), "\(out)")
        #expect(out.contains("recompress recompressed 1365 of 1365"), "\(out)")
        #expect(out.contains("dict busy") && out.contains("pages recompressed at priority 1 are stored"), "\(out)")
        #expect(daemon.stop() == .exited(0))
        #expect(!FileSystem.exists(dir.file("wb")), "the file the daemon made goes with the device, after the upgrade too")
    }

    /// A successor that cannot attach the state execs the previous binary, which takes the
    /// devices back and tells ctl why: the data and the connection survive, and the next upgrade works.
    @Test(.timeLimit(.minutes(30)))
    func aSuccessorThatCannotAttachHandsBack() throws {
        let dir = TempDir()
        defer { dir.remove() }
        let daemon = try RunningDaemon(dir, size: "64M", environment: [Upgrade.refuseVariable: "1"])
        let binary = try copyOfBinary(dir)
        let script = """
            import nbd, subprocess, sys
            h = nbd.NBD(); h.connect_uri(sys.argv[1])
            h.pwrite(b"\\x17" * 8192 + bytes(range(256)) * 16, 0)
            def up():
                r = subprocess.run([sys.argv[2], "ctl", "--control-socket", sys.argv[3], "upgrade", "--binary", sys.argv[4]],
                                   capture_output=True, text=True)
                return r.returncode, (r.stdout + r.stderr).strip()
            print("first", *up())
            print("intact", h.pread(12288, 0) == b"\\x17" * 8192 + bytes(range(256)) * 16)
            print("second", *up())
            h.pwrite(b"\\x33" * 4096, 4096)
            print("after", h.pread(8192, 0) == b"\\x17" * 4096 + b"\\x33" * 4096)
            """
        dir.write("fallback.py", script)
        let r = try Subprocess.run(["/usr/bin/python3", dir.file("fallback.py"), daemon.uri, zramnbdBinary, daemon.control, binary],
                                   outputPrefix: dir.file("fallback"), timeout: .seconds(800))
        let out = r.stdout
        #expect(r.succeeded, "\(out)\n\(r.stderr)\n\(daemon.process.stderr.suffix(3000))")
        #expect(out.contains("first 1 ") && out.contains("the previous binary (zramnbd \(BuildInfo.version)) took the devices back"), "\(out)")
        #expect(out.contains("intact True"), "\(out)")
        #expect(out.contains("second 0 upgraded from zramnbd"), "\(out)")
        #expect(out.contains("after True"), "\(out)")
        #expect(daemon.process.stderr.contains("going back to the previous binary"))
        #expect(daemon.stop() == .exited(0))
    }

    /// The kernel's own NBD client swapping (memfill, 2 x guest RAM, every word verified) while
    /// the host daemon is upgraded twice mid-run: memfill's check passes and the guest kernel
    /// logs no NBD or I/O error (scripts/kernel-nbd/swap-host.sh). Skips with a reason where
    /// ../shared or qemu is absent.
    @Test(.timeLimit(.minutes(30)))
    func linuxKernelClientSwapsAcrossTwoUpgrades() throws {
        let dir = TempDir()
        defer { dir.remove() }
        let daemon = try RunningDaemon(dir, size: "1G", extra: ["-v", "--handshake-limit", "0"])
        let binary = try copyOfBinary(dir)
        let guest = try Subprocess(["/bin/bash", Self.packageRoot + "/scripts/kernel-nbd.sh", daemon.socket,
                                    Self.packageRoot + "/scripts/kernel-nbd/swap-host.sh"],
                                   outputPrefix: dir.file("guest"), environment: ["KNBD_EXPORT": "zram0", "KNBD_TIMEOUT": "800"])
        /// NBD requests served by this process (the counters are the daemon's own: an upgrade
        /// restarts them). memfill's 400 MiB go out as about 3200 writes, then come back as reads.
        func requests() -> UInt64 {
            let show = (try? daemon.ctl(["show"]).stdout) ?? ""
            func field(_ k: String) -> UInt64 {
                show.split(separator: "\n").first { $0.hasPrefix(k + "=") }.flatMap { UInt64($0.dropFirst(k.count + 1)) } ?? 0
            }
            return field("nbd_writes") + field("nbd_reads")
        }
        var upgrades: [String] = []
        let deadline = ContinuousClock.now + .seconds(840)
        while guest.termination == nil, ContinuousClock.now < deadline {
            // Once mid swap-out, once more after as many requests again (in the swap-in, usually).
            if upgrades.count < 2, requests() >= 1500 {
                let r = try upgrade(daemon, ["--binary", binary])
                upgrades.append(r.succeeded ? String(r.stdout.split(separator: "\n").first ?? "") : "FAILED: \(r.stderr)")
            }
            _ = guest.wait(timeout: .milliseconds(500))
        }
        let finished = guest.wait(timeout: .seconds(5))
        let out = guest.stdout
        print(out.split(separator: "\n").last.map(String.init) ?? "(no output)")
        print(upgrades.joined(separator: "\n"))
        #expect(finished == .exited(0), "\(out.suffix(3000))\n\(guest.stderr.suffix(2000))\n\(daemon.process.stderr.suffix(2000))")
        if out.contains("SKIP") { return }
        #expect(upgrades.count == 2 && upgrades.allSatisfy { $0.contains("1 connection(s) resumed") }, "\(upgrades)")
        #expect(out.contains("RESULT swap-host: OK"), "\(out.suffix(3000))")
        #expect(daemon.stop() == .exited(0))
    }

    /// A crash under systemd keeps the data: Tests/conformance/crash_fdstore.py plays systemd
    /// (NOTIFY_SOCKET, the fd store, a restart with LISTEN_FDS/LISTEN_FDNAMES), SIGKILLs the
    /// daemon in a libnbd write stream, and checks every acknowledged page after the restart;
    /// then a torn state (a slot naming no object) must be refused, not served.
    @Test(.timeLimit(.minutes(30)))
    func aCrashUnderSystemdKeepsTheData() throws {
        // Plain, with pages on a backing file (its descriptor in the store, its bitmap rebuilt),
        // and with pages recompressed with a trained dictionary (its bytes in the store).
        for extra in [[], ["--backing"], ["--dictionary"]] {
            let dir = TempDir()
            defer { dir.remove() }
            let r = try Subprocess.run(["/usr/bin/python3", Self.packageRoot + "/Tests/conformance/crash_fdstore.py",
                                        "--zramnbd", zramnbdBinary, "--dir", dir.path] + extra,
                                       outputPrefix: dir.file("crash"), timeout: .seconds(800))
            print(r.stdout.split(separator: "\n").filter { $0.hasPrefix("FAIL") || $0.contains("recovered") }.joined(separator: "\n"))
            #expect(r.succeeded, "\(extra): \(r.stdout)\n\(r.stderr.suffix(2000))")
        }
    }

    /// Every spec field survives the manifest, and so does every manifest field.
    @Test func manifestRoundTrip() throws {
        var spec = DeviceSpec.standard(name: "zram7", diskSize: 3 << 30)
        spec.algorithm = "zstd"; spec.level = 7; spec.chainSize = 12; spec.memLimit = 1 << 30
        spec.listen = "127.0.0.1:10809"; spec.readOnly = true; spec.tlsIdentities = ["alice", "CN=bob, O=x y"]
        spec.swapPriority = 7; spec.fsType = "ext4"; spec.mountPoint = "/var/tmp space"; spec.options = "discard,noatime"
        spec.writebackDevice = "/var/lib/zramnbd/zram7"; spec.writebackLimit = 99; spec.writebackLimitEnable = true
        spec.writebackBatchSize = 7; spec.compressedWriteback = true; spec.writebackPacking = true
        spec.postProcessing.idleAfter = 3600; spec.postProcessing.onPressure = true; spec.postProcessing.dailyLimitPages = 4096
        spec.postProcessing.recompressIdleAfter = 60; spec.postProcessing.recompressOnPressure = true
        spec.postProcessing.recompressArguments = "type=huge_idle threshold=1000"
        spec.recompressionAlgorithms = [.init(name: "zstd", level: 9, dictionary: "/etc/z.dict", compactFrames: true),
                                        .init(name: "deflate", windowBits: -12)]
        spec.dictionary = "/etc/zramnbd/lz4.dict"
        #expect(try DeviceSpec(handoverFields: spec.handoverFields) == spec)
        let plain = DeviceSpec(name: "z", diskSize: 4096)
        #expect(try DeviceSpec(handoverFields: plain.handoverFields) == plain)

        var m = HandoverManifest(stopped: 123_456_789, previousVersion: "0.1.0", fallbackFD: 9, replyFD: 10,
                                 controlFD: 11, controlPath: "/run/zramnbd/control sock")
        m.devices = [.init(spec: spec, nbdDevice: "/dev/nbd3", state: DeviceStateFDs(header: 20, slots: 21, arena: 22, pageMap: 23),
                           listeners: [SuspendedListener(fd: 30, ownedPath: "/run/zramnbd/zram7.sock"), SuspendedListener(fd: 31, ownedPath: nil)],
                           connections: [SuspendedConnection(fd: 40, exportName: "zram7", structuredReplies: true, metaContextID: 1,
                                                             unread: [0x25, 0x60, 0x95, 0, 255], listener: 1),
                                         SuspendedConnection(fd: 41, exportName: "zram7", structuredReplies: false, metaContextID: nil,
                                                             unread: [], listener: nil)])]
        let back = try HandoverManifest.parse(m.text)
        #expect(back.text == m.text)
        #expect(back.devices.first?.spec == spec)
        #expect(back.devices.first?.connections == m.devices.first?.connections)
        #expect(back.descriptors == m.descriptors)
        // A successor refuses what it cannot read, with a sentence, never a trap.
        for bad in ["", "zramnbd-handover=2\n", "zramnbd-handover=1\nkind=device name=x header=-1 slots=1 arena=2 pagemap=3\n",
                    "zramnbd-handover=1\nkind=daemon stopped=1\nkind=connection fd=3 export=x structured=1 unread=zz\n",
                    "zramnbd-handover=1\nkind=daemon stopped=1\nkind=spec name=x disk-size=4096\n",
                    "zramnbd-handover=1\nkind=daemon stopped=1\nkind=device name=x header=1 slots=1 arena=2 pagemap=3\nkind=spec name=x disk-size=4096 chain-size=99\n"] {
            #expect(throws: DaemonError.self, "\(bad)") { try HandoverManifest.parse(bad) }
        }
    }
}
