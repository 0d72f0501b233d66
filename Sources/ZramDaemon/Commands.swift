// The command line: `zramnbd serve | status | ctl`.
import ArgumentParser
import NBD
#if canImport(Glibc)
import Glibc
#endif

public struct Zramnbd: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "zramnbd",
        abstract: "Linux zram as a userspace daemon: compressed RAM block devices served over NBD.",
        discussion: """
            Pages written to a device are compressed (lz4 or zstd) and kept in a zsmalloc-style pool; \
            the daemon reports zram's counters in sysfs-like stats directories. Attach a device with \
            nbd-client (or any NBD client) and use it for swap or a file system.

            Start the daemon with `zramnbd serve`, look at it with `zramnbd status`, control it with \
            `zramnbd ctl`.
            """,
        version: "0.1.0",
        subcommands: [Serve.self, Status.self, Ctl.self, Generate.self])

    public init() {}

    /// The name systemd runs the generator by (a symbolic link to zramnbd).
    public static let generatorName = "zramnbd-generator"

    /// `zramnbd ARGS`, or `generate ARGS` when invoked as zramnbd-generator (argv[0]).
    public static func main(argv: [String]) -> Never {
        let invokedAs = argv.first.map { $0.split(separator: "/").last.map(String.init) ?? $0 } ?? ""
        let arguments = Array(argv.dropFirst())
        main(arguments: invokedAs == generatorName ? ["generate"] + arguments : arguments)
    }

    /// Parses `arguments`, runs the command and exits: 0 on success, 2 for bad input (one line
    /// on stderr), 1 when something fails at run time.
    public static func main(arguments: [String]) -> Never {
        do {
            var command = try parseAsRoot(arguments)
            try command.run()
            Glibc.exit(0)
        } catch let e as DaemonError {
            fail(e.description, status: e.exitStatus)
        } catch let e as ExitStatus {
            Glibc.exit(e.code)
        } catch {
            if exitCode(for: error) == .success { exit(withError: error) }   // --help, --version
            let message = self.message(for: error).split(separator: "\n").first.map(String.init) ?? "invalid arguments"
            fail(message + " (see --help)", status: 2)
        }
    }

    static func fail(_ message: String, status: Int32) -> Never {
        FileSystem.writeAll(2, "zramnbd: error: " + message + "\n")
        Glibc.exit(status)
    }
}

/// A command's own exit status when it has nothing more to say.
struct ExitStatus: Error { var code: Int32 }

// MARK: serve

struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the daemon: create the devices and serve them over NBD.",
        discussion: """
            Devices come from the configuration file (\(DaemonSettings.defaultConfigFile) plus \
            \(DaemonSettings.defaultConfigFile).d/*.conf, or --config), or from the device options \
            below for a single device (the file is then ignored). With neither, one device is started: \
            zram0, lz4, min(RAM/2, 4 GiB), socket \(DaemonSettings.runDir)/zram0.sock, stats in \
            \(DaemonSettings.runDir)/zram0/.

            Sizes take K, M, G, T suffixes (powers of 1024), at most 16T. Paths accept 'none' to turn a socket or \
            file off. SIGTERM or SIGINT stop the daemon gracefully.
            """)

    @Option(help: ArgumentHelp("Configuration file; its PATH.d/*.conf drop-ins are read too.", valueName: "path"))
    var config: String?
    @Flag(help: ArgumentHelp("Read zram-generator's configuration instead: {/usr/lib,/usr/local/lib,/etc,/run}/systemd/zram-generator.conf "
                             + "and .conf.d/*.conf, with systemd.zram from the kernel command line ($ZRAM_GENERATOR_ROOT prefixes them all)."))
    var zramGeneratorConfig = false

    @Option(help: ArgumentHelp("Device name, also its NBD export name (default zram0).", valueName: "name"))
    var device: String?
    @Option(parsing: .unconditional, help: ArgumentHelp("Capacity in uncompressed bytes (default min(RAM/2, 4G)).", valueName: "size"))
    var size: String?
    @Option(help: ArgumentHelp("Compression algorithm: lz4 or zstd (default lz4).", valueName: "name"))
    var algorithm: String?
    @Option(parsing: .unconditional, help: ArgumentHelp("Compression level (zstd: level; lz4: acceleration).", valueName: "n"))
    var level: String?
    @Option(help: ArgumentHelp("zsmalloc pages per zspage, \(DeviceSpec.chainSizes) (default 8, like the kernel).", valueName: "n"))
    var chainSize: String?
    @Option(parsing: .unconditional, help: ArgumentHelp("Limit on the memory the pool may use (zram's mem_limit; default none).", valueName: "size"))
    var memLimit: String?
    @Option(help: ArgumentHelp("File or block device idle pages are written back to (zram's backing_dev); a missing file is created sparse and removed on exit.", valueName: "path"))
    var backingDev: String?
    @Flag(help: "Write pages back compressed, as they are stored (zram 7.0's compressed_writeback).")
    var compressedWriteback = false
    @Flag(help: "With --compressed-writeback, pack several compressed pages into each backing block (beyond the kernel).")
    var writebackPacking = false
    @Option(help: ArgumentHelp("Write back pages not read or written for this long (seconds, or 30m, 1h, 1d).", valueName: "duration"))
    var writebackIdleAfter: String?
    @Flag(help: "Write back idle pages when the kernel reports memory pressure (PSI).")
    var writebackOnPressure = false
    @Option(help: ArgumentHelp("Write back at most this much a day (zram's writeback_limit, refilled daily).", valueName: "size"))
    var writebackDailyLimit: String?
    @Option(help: ArgumentHelp("Unix socket of the NBD export (default \(DaemonSettings.runDir)/NAME.sock).", valueName: "path"))
    var socket: String?
    @Option(help: ArgumentHelp("Also serve NBD over TCP on this address.", valueName: "host:port"))
    var listen: String?
    @Option(help: ArgumentHelp("Directory of sysfs-like stats files (default \(DaemonSettings.runDir)/NAME).", valueName: "dir"))
    var statsDir: String?
    @Flag(help: "Export the device read-only.")
    var readOnly = false
    @Option(help: ArgumentHelp("Only these TLS identities (PSK users, certificate CNs) may use the export.", valueName: "name,..."))
    var tlsIdentities: String?

    @Option(help: ArgumentHelp("NBD over TLS: off, on (clients choose) or require (default on with credentials, else off; "
                               + "TCP beyond loopback is always require unless off).", valueName: "mode"))
    var tls: String?
    @Option(help: ArgumentHelp("TLS certificates directory: ca-cert.pem, server-cert.pem, server-key.pem, ca-crl.pem.", valueName: "dir"))
    var tlsCertificates: String?
    @Flag(help: "Clients must present a certificate signed by the CA in --tls-certificates.")
    var tlsVerifyPeer = false
    @Option(help: ArgumentHelp("TLS pre-shared keys: psktool's USER:HEXKEY lines.", valueName: "file"))
    var tlsPsk: String?

    @Option(parsing: .unconditional,
            help: ArgumentHelp("Seconds between stats refreshes, \(DaemonSettings.statsIntervalRangeText) (default 1).", valueName: "seconds"))
    var statsInterval: String?
    @Option(help: ArgumentHelp("Control socket for status and ctl (default \(DaemonSettings.defaultControlSocket)).", valueName: "path"))
    var controlSocket: String?
    @Option(help: ArgumentHelp("Write Prometheus metrics to this file (node_exporter textfile collector).", valueName: "path"))
    var prometheusFile: String?
    @Option(help: ArgumentHelp("Serve Prometheus metrics over HTTP at /metrics on this address.", valueName: "host:port"))
    var metricsListen: String?
    @Flag(help: "Do not lock memory, set PR_SET_IO_FLUSHER or oom_score_adj (unsafe for swap).")
    var noMlock = false
    @Flag(help: "Do not compact the pools automatically under memory pressure.")
    var noAutoCompact = false
    @Option(help: ArgumentHelp("Microseconds a busy connection polls for its next request before sleeping (default 50, 0 = off).", valueName: "us"))
    var busyPollUs: Int?
    @Option(help: ArgumentHelp("Seconds an NBD client may take to negotiate before it is closed (default 10, 0 = no limit).", valueName: "seconds"))
    var handshakeLimit: String?
    @Option(help: ArgumentHelp("Memory all NBD connections may hold in requests over 256 KiB; past it they wait (default 256M).", valueName: "size"))
    var payloadBudget: String?
    @Flag(help: "Serve one NBD connection, then exit: on a socket-activation socket (nbdinfo/nbdcopy '[ CMD ]') or stdin/stdout.")
    var stdio = false
    @Flag(help: "Check the configuration, print the devices and exit.")
    var check = false
    @Flag(name: .shortAndLong, help: "Log more (repeat for debug).")
    var verbose: Int

    var deviceFlagsGiven: Bool {
        device != nil || size != nil || algorithm != nil || level != nil || chainSize != nil || memLimit != nil
            || socket != nil || listen != nil || statsDir != nil || readOnly || tlsIdentities != nil
    }

    /// The settings these options ask for. `ramMiB` is MemTotal (for default sizes and expressions).
    /// `root` is zram-generator's root ($ZRAM_GENERATOR_ROOT or /), for its files and /proc/cmdline.
    func settings(ramMiB: Double, root: String = ZramGeneratorConfig.root()) throws(DaemonError) -> LoadedConfig {
        var loaded: LoadedConfig
        if deviceFlagsGiven {
            if config != nil { throw .invalidValue("--config cannot be combined with device options (--device, --size, ...)") }
            if zramGeneratorConfig { throw .invalidValue("--zram-generator-config cannot be combined with device options (--device, --size, ...)") }
            loaded = LoadedConfig(settings: DaemonSettings(), warnings: [], files: [])
            loaded.settings.devices = [try deviceFromFlags(ramMiB: ramMiB)]
        } else if zramGeneratorConfig {
            if config != nil { throw .invalidValue("--zram-generator-config and --config cannot be combined") }
            loaded = try ZramGeneratorConfig.load(root: root, ramMiB: ramMiB, cmdline: KernelCommandLine.read(root: root))
        } else if let path = config {
            guard FileSystem.exists(path) else { throw .invalidValue("configuration file \(path) does not exist") }
            guard let l = try ConfigFile.load(path: path, ramMiB: ramMiB, root: root, cmdline: KernelCommandLine.read(root: root)) else {
                throw .invalidValue("configuration file \(path) does not exist")
            }
            loaded = l
        } else if let l = try ConfigFile.load(path: DaemonSettings.defaultConfigFile, ramMiB: ramMiB, root: root,
                                              cmdline: KernelCommandLine.read(root: root)) {
            loaded = l
        } else {
            loaded = LoadedConfig(settings: DaemonSettings(), warnings: [], files: [])
            loaded.settings.devices = [try deviceFromFlags(ramMiB: ramMiB)]
        }
        var s = loaded.settings
        if stdio {
            // A one-shot child of an NBD tool: no system-wide sockets, files or memory locking
            // unless asked for explicitly.
            s.controlSocket = nil
            s.lockMemory = false
            for i in s.devices.indices {
                s.devices[i].socket = nil
                s.devices[i].listen = nil
                if statsDir == nil { s.devices[i].statsDir = nil }
            }
        }
        if let v = statsInterval {
            do { s.statsInterval = try DaemonSettings.parseStatsInterval(v) } catch {
                throw .invalidValue("invalid stats interval: \(error)")
            }
        }
        if let v = controlSocket { s.controlSocket = ConfigFile.optionalPath(v) }
        if let v = prometheusFile { s.prometheusFile = ConfigFile.optionalPath(v) }
        if let v = metricsListen { s.metricsListen = ConfigFile.optionalPath(v) }
        if noMlock { s.lockMemory = false }
        if noAutoCompact { s.autoCompact = false }
        if let us = busyPollUs { s.busyPollMicroseconds = us }
        if let v = handshakeLimit {
            guard let d = Double(v), DaemonSettings.handshakeLimitRange.contains(d) else {
                throw .invalidValue("invalid handshake limit '\(v)' (seconds, 0...3600, 0 = none)")
            }
            s.handshakeLimitSeconds = d
        }
        if let v = payloadBudget { s.payloadBudgetBytes = try ByteSize.parse(v) }
        if let v = tls {
            guard let m = TLSMode(rawValue: v) else { throw .invalidValue("invalid --tls '\(v)': expected off, on or require") }
            s.tls.mode = m
        }
        if let v = tlsCertificates { s.tls.certificates = ConfigFile.optionalPath(v) }
        if let v = tlsPsk { s.tls.psk = ConfigFile.optionalPath(v) }
        if tlsVerifyPeer { s.tls.verifyPeer = true }
        try s.validate()
        loaded.settings = s
        return loaded
    }

    func deviceFromFlags(ramMiB: Double) throws(DaemonError) -> DeviceSpec {
        let name = device ?? "zram0"
        try DeviceSpec.validateName(name)
        let bytes: UInt64
        if let size { bytes = try ByteSize.parse(size) } else {
            bytes = try SizeExpression("min(ram / 2, 4096)").bytes(ramMiB: ramMiB)
        }
        guard bytes > 0 else { throw .invalidValue("invalid size '\(size ?? "0")': must be more than 0") }
        var spec = DeviceSpec.standard(name: name, diskSize: bytes)
        if let a = algorithm {
            try DeviceSpec.validateAlgorithm(a)
            spec.algorithm = a
        }
        if let l = level {
            guard let v = Int32(l) else { throw .invalidValue("invalid level '\(l)': expected an integer") }
            try DeviceSpec.validateLevel(v, for: spec.algorithm)
            spec.level = v
        }
        if let c = chainSize {
            guard let v = Int(c) else { throw .invalidValue("invalid chain size '\(c)': expected \(DeviceSpec.chainSizes)") }
            try DeviceSpec.validateChainSize(v)
            spec.chainSize = v
        }
        if let m = memLimit { spec.memLimit = try ByteSize.parse(m) }
        if let b = backingDev { spec.writebackDevice = ConfigFile.optionalPath(b) }
        if let a = writebackIdleAfter {
            do { spec.writebackPolicy.idleAfter = try ConfigFile.parseDuration(a) } catch {
                throw .invalidValue("invalid --writeback-idle-after: \(error)")
            }
        }
        spec.writebackPolicy.onPressure = writebackOnPressure
        spec.compressedWriteback = compressedWriteback
        spec.writebackPacking = writebackPacking
        if let l = writebackDailyLimit { spec.writebackPolicy.dailyLimitPages = try ByteSize.parse(l) / 4096 }
        if let s = socket { spec.socket = ConfigFile.optionalPath(s) }
        if let l = listen {
            spec.listen = ConfigFile.optionalPath(l)
            if let v = spec.listen { _ = try HostPort.parse(v) }
        }
        if let d = statsDir { spec.statsDir = ConfigFile.optionalPath(d) }
        spec.readOnly = readOnly
        if let t = tlsIdentities { spec.tlsIdentities = try ConfigFile.parseIdentities(t) }
        return spec
    }

    func run() throws {
        let log = Log(level: verbose >= 2 ? .debug : verbose == 1 ? .info : (stdio ? .warning : .info))
        let root = ZramGeneratorConfig.root()
        let loaded = try settings(ramMiB: SystemInfo.memTotalMiB(path: ZramGeneratorConfig.join(root, "proc/meminfo")), root: root)
        for w in loaded.warnings { log.warning(w) }
        let tlsServer = try loaded.settings.tls.loadServer()
        if check {
            var out = loaded.files.isEmpty ? "configuration: command line\n" : "configuration: \(loaded.files.joined(separator: ", "))\n"
            for d in loaded.settings.devices { out += Serve.describe(d) + "\n" }
            out += loaded.settings.tls.describe(loaded.settings.devices) + "\n"
            FileSystem.writeAll(1, out)
            return
        }
        let tls = loaded.settings.tls, devices = loaded.settings.devices
        if tlsServer != nil || devices.contains(where: { $0.listen != nil }) { log.info("nbd: " + tls.describe(devices)) }
        for d in devices {
            guard let l = d.listen, tls.inTheClearBeyondLoopback(l) else { continue }
            log.warning("\(d.name): \(l) is not loopback and --tls=off serves it in the clear: whoever reaches it can read and overwrite the device")
        }
        let factory = ZramDeviceFactory(log: log, busyPoll: .microseconds(loaded.settings.busyPollMicroseconds),
                                        handshakeLimit: .milliseconds(Int(loaded.settings.handshakeLimitSeconds * 1000)),
                                        payloadBudget: Int(loaded.settings.payloadBudgetBytes),
                                        tls: loaded.settings.tls, tlsServer: tlsServer)
        if stdio {
            try factory.serveStdio(loaded.settings.devices)
            return
        }
        let status = try Daemon(settings: loaded.settings, factory: factory, log: log).run()
        if status != 0 { throw ExitStatus(code: status) }
    }

    static func describe(_ d: DeviceSpec) -> String {
        var parts = ["\(d.name):", "disksize=\(d.diskSize)", "algorithm=\(d.algorithm)"]
        if let l = d.level { parts.append("level=\(l)") }
        parts.append("chain-size=\(d.chainSize)")
        if d.memLimit > 0 { parts.append("mem-limit=\(d.memLimit)") }
        if let w = d.writebackDevice { parts.append("backing-dev=\(w)") }
        if let a = d.writebackPolicy.idleAfter { parts.append("writeback-idle-after=\(a)s") }
        if d.writebackPolicy.onPressure { parts.append("writeback-on-pressure") }
        if let l = d.writebackPolicy.dailyLimitPages { parts.append("writeback-daily-limit=\(l * 4096)") }
        parts.append("socket=\(d.socket ?? "none")")
        if let l = d.listen { parts.append("listen=\(l)") }
        parts.append("stats-dir=\(d.statsDir ?? "none")")
        if d.readOnly { parts.append("read-only") }
        if let ids = d.tlsIdentities { parts.append("tls-identities=\(ids.joined(separator: ","))") }
        parts.append(d.mountPoint.map { "fs=\(d.effectiveFsType) mount-point=\($0)" } ?? "swap-priority=\(d.swapPriority)")
        parts.append("options=\(d.options)")
        return parts.joined(separator: " ")
    }
}

// MARK: generate

struct Generate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write systemd units for the configured devices (what zramnbd-generator does at boot).",
        discussion: """
            Reads the configuration `zramnbd serve` reads and writes into DIR, per device: a swap unit \
            dev-nbdK.swap or a mount unit for its mount-point, the enablement symlink, and a drop-in \
            binding zramnbd-setup@NAME.service to /dev/nbdK (K: the device's position in the \
            configuration). Installed as \(Zramnbd.generatorName) in systemd's generator directory, \
            systemd runs it with its three output directories and it uses the first.
            """)

    @Option(help: ArgumentHelp("Configuration file (default \(DaemonSettings.defaultConfigFile)).", valueName: "path"))
    var config: String?
    @Argument(help: ArgumentHelp("Output directory, then systemd's early and late directories (unused).", valueName: "dir"))
    var directories: [String]

    func validate() throws {
        guard (1...3).contains(directories.count) else {
            throw ValidationError("expected 1 to 3 directories (normal [early late]), got \(directories.count)")
        }
    }

    func run() throws {
        for m in try Generator.run(dir: directories[0], config: config) {
            FileSystem.writeAll(2, Zramnbd.generatorName + ": " + m + "\n")
        }
    }
}

// MARK: status

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show the devices of the running daemon, like zramctl.",
        discussion: """
            DISKSIZE is the capacity (uncompressed). DATA is the uncompressed size of what is stored, \
            COMPR its compressed size, TOTAL the memory the pool really uses (COMPR plus allocator \
            overhead and fragmentation). RATIO is DATA/TOTAL. MOUNTPOINT shows [SWAP] or the mount \
            point once the setup tools attached an NBD device.
            """)

    @Flag(help: "Print JSON with every counter.")
    var json = false
    @Flag(name: .shortAndLong, help: "Print sizes in bytes.")
    var bytes = false
    @Option(help: ArgumentHelp("Control socket of the daemon.", valueName: "path"))
    var controlSocket: String = DaemonSettings.defaultControlSocket
    @Argument(help: "Devices to show (default: all).")
    var devices: [String] = []

    func run() throws {
        for d in devices { try DeviceSpec.validateName(d) }
        let lines = try ControlClient.send(.status(devices), socket: controlSocket)
        let records = lines.map(ControlRecord.parse)
        FileSystem.writeAll(1, json ? StatusReport.json(records) : StatusReport.table(records, bytes: bytes))
    }
}

// MARK: ctl

struct Ctl: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Control a device of the running daemon.",
        discussion: "Actions (zram's sysfs controls):\n" + ControlAction.helpText)

    @Option(help: ArgumentHelp("Control socket of the daemon.", valueName: "path"))
    var controlSocket: String = DaemonSettings.defaultControlSocket
    @Argument(help: "Device name, e.g. zram0.")
    var device: String
    @Argument(help: "Action (see below).")
    var action: String
    @Argument(parsing: .allUnrecognized, help: "Arguments of the action (may start with -, e.g. a size to refuse).")
    var arguments: [String] = []

    /// The request: the words `ACTION DEVICE ARGS...`, as the control socket would read them.
    func request() throws(DaemonError) -> ControlRequest {
        try ControlAction.request([action, device] + arguments, from: .ctl)
    }

    func run() throws {
        let req = try request()
        let lines = try ControlClient.send(req, socket: controlSocket)
        if action == "get" {
            let key = arguments[0]
            let fields = lines.map(ControlRecord.parse).flatMap(\.fields)
            guard let v = fields.first(where: { $0.0 == key })?.1 else {
                throw DaemonError.invalidValue("unknown key '\(key)' (see: zramnbd ctl \(device) show)")
            }
            FileSystem.writeAll(1, v + "\n")
            return
        }
        let text: String
        switch req {
        case .show: text = lines.map { ControlRecord.parse($0).fields.map { "\($0.0)=\($0.1)" }.joined(separator: " ") }.joined(separator: "\n")
        case .add: text = lines.isEmpty ? "" : StatusReport.table(lines.map(ControlRecord.parse)).dropLast().description
        default: text = lines.joined(separator: "\n")
        }
        if !text.isEmpty { FileSystem.writeAll(1, text + "\n") }
    }
}
