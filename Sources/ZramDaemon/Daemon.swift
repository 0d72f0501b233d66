// `zramnbd serve`: start the devices, then one control thread polls signals, the control socket,
// the metrics socket and the stats timer. The NBD server threads run on their own.
//
// The daemon's words:
//   device          one zram device, named like the kernel's ("zram0"); its name is also its export name
//   spec            how a device is configured (DeviceSpec), from the config file, options or `ctl add`
//   settings        the specs plus the daemon-wide options (DaemonSettings)
//   page store      the compressed pages of a device (PageStore; ZramPageStore over ZramDevice)
//   export          the NBD side of a device (ExportHandle), made by the device factory (DeviceFactory)
//   host            the running devices, driven from the control thread (DeviceHost)
//   control request a line on the control socket (ControlRequest; device actions in ControlActions.swift),
//                   answered by a control reply; status and show bodies are control records
//   snapshot        one device's counters at one moment (DeviceSnapshot), rendered to its stats
//                   directory (a sysfs-like /run/zramnbd/NAME/), Prometheus text and `status`
// A WRITE from a client: NBD's ConnectionEngine → ZramPageStore.write (ZramDeviceFactory.swift,
// the one place NBD meets the device) → ZramDevice.write → ZsPool.
#if canImport(Glibc)
import Glibc
#endif

public final class Daemon {
    let settings: DaemonSettings
    let host: DeviceHost
    let log: Log
    let notifier = SystemdNotifier()

    public init(settings: DaemonSettings, factory: any DeviceFactory, log: Log) {
        self.settings = settings
        self.log = log
        host = DeviceHost(factory: factory, prometheusFile: settings.prometheusFile, log: log)
    }

    /// Runs until SIGTERM/SIGINT; returns the exit status.
    public func run() throws(DaemonError) -> Int32 {
        // Before any thread exists, so every thread inherits the blocked mask.
        let signals = try SignalEvents()
        if settings.lockMemory {
            // Before the devices: their memory is locked as it is touched (MCL_FUTURE).
            for p in SwapSafety.apply() { log.warning(p) }
        }
        var control: ControlServer?
        var metrics: MetricsServer?
        do {
            try host.preparePublishing()
            for spec in settings.devices { try host.add(spec) }
            try host.exportUnclaimedSockets()
            if let path = settings.controlSocket { control = try ControlServer(path: path) }
            if let m = settings.metricsListen { metrics = try MetricsServer(address: try HostPort.parse(m)) }
        } catch {
            control?.close()
            host.stopAll()
            throw error
        }
        defer {
            control?.close()
            metrics?.close()
        }
        var status = host.summary()
        notifier.notify("READY=1\nSTATUS=\(status)")
        log.info("ready: \(host.deviceNames.count) device(s)\(control.map { ", control socket " + $0.path } ?? "")")

        let interval = settings.statsInterval
        var nextStats = SystemInfo.now() + interval
        var nextWatchdog = notifier.watchdogInterval.map { SystemInfo.now() + $0 }
        if notifier.watchdogInterval != nil { notifier.notify("WATCHDOG=1") }

        let pressure = settings.autoCompact ? MemoryPressure() : nil
        if settings.autoCompact, pressure == nil { log.info("no PSI memory trigger: automatic compaction is off") }

        var fds = [pollfd(fd: signals.fd, events: Int16(POLLIN), revents: 0)]
        if let c = control { fds.append(pollfd(fd: c.fd, events: Int16(POLLIN), revents: 0)) }
        if let m = metrics { fds.append(pollfd(fd: m.fd, events: Int16(POLLIN), revents: 0)) }
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
                        host.refreshStats(force: true)
                        continue
                    }
                    log.info("signal \(sig): stopping")
                    notifier.notify("STOPPING=1\nSTATUS=stopping")
                    host.stopAll()
                    return 0
                }
            }
            var i = 1
            if let c = control {
                if fds[i].revents != 0 { c.serveOne { host.handle($0) } }
                i += 1
            }
            if let m = metrics {
                if fds[i].revents != 0 { m.serveOne { host.prometheusText() } }
                i += 1
            }
            if pressure != nil {
                if fds[i].revents & Int16(POLLERR | POLLNVAL) != 0 {
                    log.warning("the PSI memory trigger failed: automatic compaction is off")
                    fds[i].fd = -1   // poll ignores it from now on
                } else if fds[i].revents & Int16(POLLPRI) != 0 {
                    host.compactUnderPressure()
                }
            }

            let after = SystemInfo.now()
            if after >= nextStats {
                host.refreshStats()
                let s = host.summary()
                if s != status {
                    status = s
                    notifier.notify("STATUS=\(s)")
                }
                nextStats = after + interval
            }
            if let w = nextWatchdog, after >= w, let period = notifier.watchdogInterval {
                notifier.notify("WATCHDOG=1")
                nextWatchdog = after + period
            }
        }
    }
}
