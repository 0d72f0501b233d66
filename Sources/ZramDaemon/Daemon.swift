// `zramnbd serve`: start the devices, then the control loop polls signals, memory pressure and
// the stats and watchdog timers. The control socket and the metrics endpoint are served on their
// own worker threads (Control.swift) with deadlines, so no client can hold the loop: the stats
// files, the watchdog ping and SIGTERM never wait for a peer. The NBD server threads run on their
// own. DeviceHost is not thread-safe: the loop and the workers reach it only through SharedHost,
// one lock held for a host call and never while waiting on a peer.
//
// The daemon's words:
//   device          one zram device, named like the kernel's ("zram0"); its name is also its export name
//   spec            how a device is configured (DeviceSpec), from the config file, options or `ctl add`
//   settings        the specs plus the daemon-wide options (DaemonSettings)
//   page store      the compressed pages of a device (PageStore; ZramPageStore over ZramDevice)
//   export          the NBD side of a device (ExportHandle), made by the device factory (DeviceFactory)
//   host            the running devices (DeviceHost), reached through one lock (SharedHost)
//   control request a line on the control socket (ControlRequest; device actions in ControlActions.swift),
//                   answered by a control reply; status and show bodies are control records
//   snapshot        one device's counters at one moment (DeviceSnapshot), rendered to its stats
//                   directory (a sysfs-like /run/zramnbd/NAME/), Prometheus text and `status`
// A WRITE from a client: NBD's ConnectionEngine → ZramPageStore.write (ZramDeviceFactory.swift,
// the one place NBD meets the device) → ZramDevice.write → ZsPool.
#if canImport(Glibc)
import Glibc
#endif
import Posix

public final class Daemon: @unchecked Sendable {   // @unchecked: immutable; `host` is reached through SharedHost once shared
    let settings: DaemonSettings
    let host: DeviceHost
    let log: Log
    let notifier = SystemdNotifier()

    let captive: CaptiveOptions

    public init(settings: DaemonSettings, factory: any DeviceFactory, log: Log, captive: CaptiveOptions = CaptiveOptions()) {
        self.settings = settings
        self.log = log
        self.captive = captive
        host = DeviceHost(factory: factory, prometheusFile: settings.prometheusFile, log: log)
        host.privateDirectory = captive.privateDirectory
    }

    /// Runs until SIGTERM/SIGINT (or the end of the --run command, or of the parent with
    /// --exit-with-parent); returns the exit status (the command's with --run).
    public func run() throws(DaemonError) -> Int32 {
        // Before any thread exists, so every thread inherits the blocked mask.
        let signals = try SignalEvents(children: captive.run != nil)
        // Before the devices, as nbdkit does: a parent that dies while they start still stops us.
        if let parent = captive.parent, try !ParentDeath.arm(parent: parent) {
            log.info("the parent process is gone: not starting")
            return 0
        }
        if let low = DescriptorLimit.raise() { log.warning(low) }
        if settings.lockMemory {
            // Before the devices: their memory is locked as it is touched (MCL_FUTURE).
            for p in SwapSafety.apply() { log.warning(p) }
        }
        // The fd store only where systemd has one for us: it says so in $FDSTORE (systemd 254+;
        // the unit sets it for older ones).
        if let n = getenv("FDSTORE").flatMap({ Int(String(cString: $0)) }), n > 0, notifier.enabled {
            host.fdStore = FDStore(notifier: notifier, log: log)
        }
        let shared = SharedHost(host)
        let policy = PostProcessor(log: log) { name in shared.with { $0.publish(named: name) } }
        host.postProcessor = policy
        var control: ControlServer?
        var metrics: MetricsServer?
        var status = ""
        // A predecessor's devices and connections when this process is the binary it exec'd
        // at an upgrade (Upgrade.swift), and the answer for its ctl connection.
        var upgraded: (reply: ControlReply, fd: Int32?)?
        do throws(DaemonError) {
            let incoming = try Upgrade.incoming()
            try host.preparePublishing()
            let stored = (host.factory as? ZramDeviceFactory)?.takeStoredDescriptors() ?? []
            if let incoming {
                upgraded = (try takeOver(incoming), incoming.manifest.replyFD)
            } else {
                // After a crash, systemd hands back what the fd store kept: those devices come
                // back with their data (or stay down, loudly), never empty.
                let recovered = recoverAfterCrash(stored)
                for spec in settings.devices where !recovered.contains(spec.name) { try host.add(spec) }
            }
            try policy.start()
            try host.exportUnclaimedSockets()
            if let path = settings.controlSocket {
                if let fd = incoming?.manifest.controlFD, incoming?.manifest.controlPath == path {
                    control = ControlServer(adopting: fd, path: path)
                } else {
                    if let fd = incoming?.manifest.controlFD { close(fd) }
                    control = try ControlServer(path: path)
                }
            }
            if let m = settings.metricsListen {
                do throws(DaemonError) { metrics = try MetricsServer(address: try HostPort.parse(m)) } catch {
                    // Once a predecessor's devices are here, only they matter: never exit over metrics.
                    guard upgraded != nil else { throw error }
                    log.error("metrics: \(error); serving without them")
                }
            }
            status = host.summary()
            log.info("ready: \(host.deviceNames.count) device(s)\(control.map { ", control socket " + $0.path } ?? "")")
            // From here on the host is shared with the workers.
            let socket = control.map { (fd: $0.fd, path: $0.path) }
            try control?.start({ request in shared.handle(request) },
                               upgrade: { [self] binary, fd in upgrade(binary, reply: fd, shared: shared, control: socket) })
            try metrics?.start { shared.with { $0.prometheusText() } }
        } catch {
            control?.close()
            metrics?.close()
            shared.with { $0.stopAll() }
            throw error
        }
        defer {
            control?.close()
            metrics?.close()
        }
        notifier.notify("READY=1\n\(upgraded == nil ? "" : "MAINPID=\(getpid())\n")STATUS=\(status)")
        if let u = upgraded { Upgrade.answer(u.fd, u.reply) }

        // Serving: now the pid file, the URIs and the command, in that order (the command may
        // read both).
        var pidFile: PidFile?
        var command: CaptiveCommand?
        defer {
            // Whatever ends the daemon (a failing poll included) never leaves the command orphaned.
            if let c = command, c.reap() == nil { _ = c.terminate(grace: 5) }
            pidFile?.remove()
        }
        do {
            if let p = captive.pidfile { pidFile = try PidFile(path: p) }
            if captive.printURI {
                let uris = settings.devices.compactMap { CaptiveURI.endpoint($0, tls: settings.tls)?.uri }
                FileSystem.writeAll(1, uris.map { $0 + "\n" }.joined())
            }
            if let program = captive.run {
                command = try CaptiveCommand(CaptiveURI.script(program, first: settings.devices.first, tls: settings.tls))
            }
        } catch {
            control?.close()
            metrics?.close()
            shared.with { $0.stopAll() }
            throw error
        }
        func stop() {
            notifier.notifyUnlessFull("STOPPING=1\nSTATUS=stopping")
            // No new control request once the devices start to go.
            control?.close()
            metrics?.close()
            shared.with { $0.stopAll() }
        }

        let interval = settings.statsInterval
        var nextStats = SystemInfo.now() + interval
        var nextWatchdog = notifier.watchdogInterval.map { SystemInfo.now() + $0 }
        if notifier.watchdogInterval != nil { notifier.notifyUnlessFull("WATCHDOG=1") }

        let wantsPressure = settings.autoCompact || policy.needsPressureEvents
        let pressure = wantsPressure ? MemoryPressure() : nil
        if wantsPressure, pressure == nil { log.info("no PSI memory trigger: automatic compaction and writeback on pressure are off") }

        var fds = [pollfd(fd: signals.fd, events: Int16(POLLIN), revents: 0)]
        if let p = pressure { fds.append(pollfd(fd: p.fd, events: Int16(POLLPRI), revents: 0)) }

        while true {
            let now = SystemInfo.now()
            let deadline = min(nextStats, nextWatchdog ?? .infinity)
            let timeout = Int32(max(0, min(60_000, ((deadline - now) * 1000).rounded(.up))))
            for i in fds.indices { fds[i].revents = 0 }
            let n = poll(&fds, nfds_t(fds.count), timeout)
            if n < 0, errno != EINTR { throw .errno("poll") }

            if fds[0].revents != 0 {
                for sig in signals.drain() {
                    if sig == SIGHUP {
                        log.info("SIGHUP: configuration changes need a restart (or ctl add/remove); refreshing stats")
                        shared.with { $0.refreshStats(force: true) }
                        continue
                    }
                    if sig == SIGCHLD {
                        guard let code = command?.reap() else { continue }
                        log.info("the --run command exited with status \(code): stopping")
                        stop()
                        return code
                    }
                    log.info("signal \(sig): stopping")
                    guard let c = command else {
                        stop()
                        return 0
                    }
                    // The command first, so it ends before its device vanishes under it.
                    kill(c.pid, SIGTERM)
                    stop()
                    return c.terminate(grace: 5)
                }
            }
            if pressure != nil {
                if fds[1].revents & Int16(POLLERR | POLLNVAL) != 0 {
                    log.warning("the PSI memory trigger failed: automatic compaction is off")
                    fds[1].fd = -1   // poll ignores it from now on
                } else if fds[1].revents & Int16(POLLPRI) != 0 {
                    policy.pressure()
                    if settings.autoCompact { shared.with { $0.compactUnderPressure() } }
                }
            }

            let after = SystemInfo.now()
            // The ping first: it needs nothing from the host.
            if let w = nextWatchdog, after >= w, let period = notifier.watchdogInterval {
                notifier.notifyUnlessFull("WATCHDOG=1")
                nextWatchdog = after + period
            }
            if after >= nextStats {
                let s = shared.with { h in
                    h.refreshStats()
                    return h.summary()
                }
                if s != status {
                    status = s
                    notifier.notifyUnlessFull("STATUS=\(s)")
                }
                nextStats = after + interval
            }
        }
    }
}

/// The host behind one lock: the control loop, the control workers and the metrics workers call
/// DeviceHost only through `with`, one call at a time. The lock is held for the host call alone,
/// never while a peer is read from or written to.
final class SharedHost: @unchecked Sendable {   // @unchecked: `host` is only touched under `lock`
    private let host: DeviceHost
    private let lock = ConditionLock()

    init(_ host: DeviceHost) { self.host = host }

    @discardableResult
    func with<R>(_ body: (DeviceHost) -> R) -> R {
        lock.withLock { body(host) }
    }

    /// A control request. A long attribute write (a writeback of gigabytes) runs on the store
    /// with the lock released: the store is thread-safe, and the host is needed only to find
    /// it and to publish the result.
    func handle(_ request: ControlRequest) -> ControlReply {
        guard case .attribute(let name, let attribute, let words) = request, DeviceHost.longAttributes.contains(attribute) else {
            return with { $0.handle(request) }
        }
        let found = with { h in Result { () throws(DaemonError) in try h.device(name).store } }
        let store: any PageStore
        switch found {
        case .success(let s): store = s
        case .failure(let e): return .error(e.description)
        }
        let result = Result { () throws(DaemonError) in try store.writeAttribute(attribute, words.joined(separator: " ")) }
        return with { h in
            do throws(DaemonError) { return .ok(try h.finishAttribute(name, attribute, words, result)) } catch { return .error(error.description) }
        }
    }
}
