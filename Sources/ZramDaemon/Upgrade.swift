// Upgrade and restart under live I/O (issue 15): `zramnbd ctl upgrade [--binary PATH]`, and
// `systemctl reload zramnbd` (ExecReload sends it). The daemon
//   1. asks the new binary (`BINARY handover-check`) whether it reads this hand-over and state
//      format; if not, refuses, and nothing has stopped;
//   2. stops reading requests: every NBD connection answers what it has read and parks
//      (NBDServer.suspend), connections still negotiating are closed (their clients retry);
//   3. freezes each device and writes its state header (ZramDevice.exportState);
//   4. writes the hand-over manifest (HandoverManifest.swift) into a memfd, clears close-on-exec
//      on every descriptor it names, tells systemd RELOADING=1, and execs the binary in place:
//      same pid, same argv;
//   5. the new process attaches every device from its memfds (ZramDevice(attaching:), which
//      refuses a state it cannot trust), serves on the same listening sockets, resumes every
//      connection where it stopped, answers the ctl connection and tells systemd READY=1.
// Any failure before the exec resumes the old process as it was. A successor that cannot attach
// execs the previous binary (kept open as a descriptor) with the same manifest, which takes the
// devices back and reports the failure to ctl: nothing is lost on a failed upgrade.
#if canImport(Glibc)
import Glibc
#endif
import NBD
import Posix
import ZramDevice

enum Upgrade {
    /// The manifest's descriptor, in the successor's environment.
    static let manifestVariable = "ZRAMNBD_HANDOVER"
    /// Set when a successor gave up and execs the previous binary: why.
    static let failureVariable = "ZRAMNBD_HANDOVER_FAILED"
    /// Tests: the next successor refuses the state as if it could not attach it.
    static let refuseVariable = "ZRAMNBD_TEST_REFUSE_TAKEOVER"
    /// What `zramnbd handover-check` prints: the formats this binary reads.
    static var formats: String { "zramnbd-handover \(HandoverManifest.version) state \(DeviceStateHeader.layoutVersion)" }
    /// How long connections get to answer what they have read and park.
    static let drainLimit: Duration = .seconds(10)

    /// The binary to exec: `requested`, or the one this process runs. After a package upgrade
    /// replaced that file, /proc/self/exe names the old inode "PATH (deleted)": PATH is the new one.
    static func target(_ requested: String?) throws(DaemonError) -> String {
        var path: String
        if let requested {
            path = requested
        } else {
            var buf = [CChar](repeating: 0, count: 4096)
            let n = readlink("/proc/self/exe", &buf, buf.count - 1)
            guard n > 0 else { throw .errno("readlink /proc/self/exe") }
            path = String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
            if path.hasSuffix(" (deleted)") { path.removeLast(" (deleted)".count) }
        }
        guard path.hasPrefix("/") else { throw .invalidValue("upgrade: --binary needs an absolute path, got '\(path)'") }
        var st = stat()
        guard stat(path, &st) == 0 else { throw .errno("upgrade: \(path)") }
        guard st.st_mode & S_IFMT == S_IFREG, access(path, X_OK) == 0 else {
            throw .device("upgrade: \(path) is not an executable file")
        }
        return path
    }

    /// Runs `binary handover-check` (10 s at most) and refuses a binary that does not read
    /// this daemon's formats, before anything stops.
    static func preflight(_ binary: String) throws(DaemonError) {
        let pipe: (read: Int32, write: Int32)
        do { pipe = try IO.makePipe() } catch { throw DaemonError(error) }
        defer { close(pipe.read) }
        let pid: pid_t
        do { pid = try ShellCommand.spawn([binary, "handover-check"], stdout: pipe.write) } catch {
            close(pipe.write)
            throw error
        }
        close(pipe.write)
        let answer = readAll(pipe.read, limit: 4096, until: SystemInfo.now() + 10)
        if answer == nil { kill(pid, SIGKILL) }
        let status = ShellCommand.wait(pid)
        let text = String(decoding: answer ?? [], as: UTF8.self).trimmed()
        guard answer != nil, status == 0 else {
            throw .device("upgrade: \(binary) handover-check \(answer == nil ? "did not answer within 10 s" : "exited with status \(status.map(String.init) ?? "?")")\(text.isEmpty ? "" : ": " + text): not a zramnbd that can take over")
        }
        guard text == formats else {
            throw .device("upgrade: \(binary) reads '\(text)'; this daemon hands over '\(formats)': refusing, nothing stopped")
        }
    }

    /// What a pipe delivers until its writers close it (at most `limit` bytes), or nil at
    /// `deadline` (monotonic seconds) or on an error.
    static func readAll(_ fd: Int32, limit: Int, until deadline: Double) -> [UInt8]? {
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while out.count < limit {
            let ms = Int32(max(0, min(60_000, ((deadline - SystemInfo.now()) * 1000).rounded(.up))))
            guard ms > 0 else { return nil }
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let r = poll(&p, 1, ms)
            if r < 0 && errno == EINTR { continue }
            guard r > 0 else { return nil }
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, min($0.count, limit - out.count)) }
            if n < 0 && errno == EINTR { continue }
            if n < 0 { return nil }
            if n == 0 { break }
            out += chunk[0..<n]
        }
        return out
    }

    /// Clears (or sets again) close-on-exec.
    static func setCloseOnExec(_ fds: [Int32], _ on: Bool) {
        for fd in fds { _ = fcntl(fd, F_SETFD, on ? FD_CLOEXEC : 0) }
    }

    /// Execs `argv` with the environment of this process: `path`, or the file open at `fd`.
    /// Returns only if the exec failed (errno set).
    static func exec(path: String?, fd: Int32?, _ argv: [String]) {
        var args: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) }
        args.append(nil)
        defer { for a in args { free(a) } }
        if let path {
            execv(path, args)
        } else if let fd {
            fexecve(fd, args, environ)
        }
    }

    /// Answers the ctl connection that asked for the upgrade, and closes it.
    static func answer(_ fd: Int32?, _ reply: ControlReply) {
        guard let fd else { return }
        PeerConnection(fd: fd, stop: -1).write(reply.text, until: SystemInfo.now() + PeerLimits.reply)
        close(fd)
    }

    /// The manifest a predecessor left, if this process is a successor: read, and its
    /// environment variable cleared so no child inherits it. Nil when not handed over.
    static func incoming() throws(DaemonError) -> (manifest: HandoverManifest, fd: Int32)? {
        guard let raw = getenv(manifestVariable).map({ String(cString: $0) }) else { return nil }
        unsetenv(manifestVariable)
        guard let fd = Int32(raw), fd >= 0, let bytes = SharedMemory.contents(of: fd) else {
            throw .device("$\(manifestVariable)=\(raw) names no readable hand-over manifest")
        }
        return (try HandoverManifest.parse(String(decoding: bytes, as: UTF8.self)), fd)
    }
}

extension Daemon {
    /// `ctl upgrade`, on a control worker: execs `requested` (or our own binary) with every
    /// device, socket and connection. Returns only when the upgrade was refused or failed, with
    /// the error for ctl; the old process then serves on as before.
    func upgrade(_ requested: String?, reply: Int32, shared: SharedHost, control: (fd: Int32, path: String)?) -> ControlReply {
        let target: String
        do throws(DaemonError) {
            guard captive.run == nil else { throw .device("upgrade: a daemon running a --run command is not upgraded in place") }
            target = try Upgrade.target(requested)
            try Upgrade.preflight(target)
        } catch {
            log.error("upgrade refused, serving on: \(error)")
            return .error(error.description)
        }
        return shared.with { host in
            do throws(DaemonError) {
                try handOver(host, to: target, reply: reply, control: control)
            } catch {
                log.error("upgrade to \(target) failed, serving on: \(error)")
                return .error("upgrade to \(target) failed, the daemon serves on: \(error)")
            }
        }
    }

    /// Steps 2-4 with the host locked (no control request runs meanwhile). Never returns on
    /// success; on failure everything is resumed before it throws.
    private func handOver(_ host: DeviceHost, to target: String, reply: Int32, control: (fd: Int32, path: String)?) throws(DaemonError) -> Never {
        guard !host.hasSharedExport else {
            throw .device("sockets shared by every device (socket activation without a matching device socket) are not handed over")
        }
        // Before I/O stops: a manager slow to read its notify socket must not lengthen the pause.
        notifier.notify("RELOADING=1\nMONOTONIC_USEC=\(Clock.monotonicNanoseconds() / 1000)\nSTATUS=upgrading to \(target)")
        let stopped = Clock.monotonicNanoseconds()
        var suspended: [NBDServer] = []
        var frozen: [ZramPageStore] = []
        var manifest = HandoverManifest(stopped: stopped, previousVersion: BuildInfo.version, replyFD: reply,
                                        controlFD: control?.fd, controlPath: control?.path)
        var extra: [Int32] = []   // the fallback and manifest fds, ours to close on failure
        func undo() {
            for d in manifest.devices { d.state.closeAll() }
            for s in frozen { s.device.thaw() }
            for s in suspended { s.resume() }
            for fd in extra { close(fd) }
        }
        do throws(DaemonError) {
            for d in host.devices {
                guard let store = d.store as? ZramPageStore, let export = d.export as? NBDExport else {
                    throw .device("\(d.spec.name): not a zram device with an NBD export")
                }
                let handed: SuspendedServer
                do { handed = try export.server.suspend(within: Upgrade.drainLimit) } catch { throw .device("\(d.spec.name): \(error)") }
                suspended.append(export.server)
                let state: DeviceStateFDs
                do { state = try store.device.exportState(freeze: true) } catch { throw .device("\(d.spec.name): \(ZramPageStore.describe(error))") }
                frozen.append(store)
                manifest.devices.append(.init(spec: d.spec, nbdDevice: d.nbdDevice, state: state,
                                              listeners: handed.listeners, connections: handed.connections))
            }
            let exe = open("/proc/self/exe", 0o10_000_000 | O_CLOEXEC)   // O_PATH: enough to exec
            if exe >= 0 {
                extra.append(exe)
                manifest.fallbackFD = exe
            }
            let memfd: Int32
            do { memfd = try SharedMemory.file(name: "zramnbd-handover", holding: Array(manifest.text.utf8)) } catch { throw DaemonError(error) }
            extra.append(memfd)
            let fds = manifest.descriptors + [memfd]
            let connections = manifest.devices.reduce(0) { $0 + $1.connections.count }
            log.info("upgrade: handing \(manifest.devices.count) device(s) and \(connections) connection(s) to \(target)")
            Upgrade.setCloseOnExec(fds, false)
            setenv(Upgrade.manifestVariable, String(memfd), 1)
            unsetenv(Upgrade.failureVariable)
            Upgrade.exec(path: target, fd: nil, CommandLine.arguments)
            let e = errno
            unsetenv(Upgrade.manifestVariable)
            Upgrade.setCloseOnExec(fds, true)
            throw .system("exec \(target)", errno: e)
        } catch {
            undo()
            notifier.notify("READY=1\nSTATUS=upgrade failed, serving on")
            throw error
        }
    }

    /// Step 5, in the successor: every device attached and serving, its connections resumed;
    /// returns the answer for the ctl connection (`manifest.replyFD`). A device that cannot be attached makes the successor exec
    /// the previous binary with the same manifest (unless it is that fallback already).
    func takeOver(_ incoming: (manifest: HandoverManifest, fd: Int32)) throws(DaemonError) -> ControlReply {
        let m = incoming.manifest
        let failure = getenv(Upgrade.failureVariable).map { String(cString: $0) }
        unsetenv(Upgrade.failureVariable)
        // Tests make one successor refuse, to see the previous binary take over again; read
        // once, so that binary (exec'd with this environment) does not refuse too.
        let refuse = getenv(Upgrade.refuseVariable) != nil
        unsetenv(Upgrade.refuseVariable)
        // Attaching only reads the state: until every device is attached, the previous binary
        // can still take it all back.
        var stores: [ZramPageStore] = []
        do throws(DaemonError) {
            for d in m.devices {
                guard let copy = d.state.duplicates() else { throw .errno("dup \(d.spec.name)'s state fds") }
                stores.append(try ZramPageStore(attaching: copy, spec: d.spec))
            }
            if refuse { throw DaemonError.device("\(Upgrade.refuseVariable) is set") }
        } catch {
            guard failure == nil, let previous = m.fallbackFD else {
                let why = failure.map { "the upgrade failed (\($0)), and the previous binary cannot attach either: \(error)" } ?? "\(error)"
                Upgrade.answer(m.replyFD, .error("upgrade: \(why)"))
                throw .device("cannot take over the devices: \(why)")
            }
            log.error("upgrade: cannot take over (\(error)); going back to the previous binary")
            for s in stores { s.device.closeBackingDevice(removingFile: false) }   // the previous binary keeps using it
            stores.removeAll()
            setenv(Upgrade.manifestVariable, String(incoming.fd), 1)
            setenv(Upgrade.failureVariable, error.description, 1)
            Upgrade.exec(path: nil, fd: previous, CommandLine.arguments)
            throw .device("cannot take over the devices (\(error)), and cannot exec the previous binary: \(String(cString: strerror(errno)))")
        }
        // Committed: the devices serve from here on.
        close(incoming.fd)
        if let f = m.fallbackFD { close(f) }
        for d in m.devices { d.state.closeAll() }
        var problems: [String] = []
        var resumed = 0
        let factory = host.factory as? ZramDeviceFactory
        for (d, store) in zip(m.devices, stores) {
            factory?.inherit(d.spec.name, d.listeners)
            do throws(DaemonError) {
                try host.adopt(d.spec, store: store)
                let hosted = try host.device(d.spec.name)
                hosted.nbdDevice = d.nbdDevice
                guard let export = hosted.export as? NBDExport else { throw .device("\(d.spec.name): no NBD export") }
                let lost = export.server.adopt(d.connections)
                resumed += d.connections.count - lost.count
                problems += lost.map { "\(d.spec.name): \($0)" }
            } catch {
                problems.append("\(d.spec.name): \(error)")
                for c in d.connections { close(c.fd) }
            }
        }
        let pause = Double(Clock.monotonicNanoseconds() - m.stopped) / 1e6
        let summary = failure.map { "upgrade failed, the previous binary (zramnbd \(BuildInfo.version)) took the devices back: \($0)" }
            ?? "upgraded from zramnbd \(m.previousVersion) to \(BuildInfo.version): \(m.devices.count) device(s), \(resumed) connection(s) resumed, I/O paused \(Double(Int((pause * 10).rounded())) / 10) ms"
        for p in problems { log.error("upgrade: \(p)") }
        log.info(summary)
        return failure == nil && problems.isEmpty ? .ok([summary]) : .error(([summary] + problems).joined(separator: "; "))
    }
}
