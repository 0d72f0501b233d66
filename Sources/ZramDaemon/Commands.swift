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
            Pages written to a device are compressed (lzo-rle, lzo, lz4, lz4hc, zstd or deflate) and kept in a zsmalloc-style pool; \
            the daemon reports zram's counters in sysfs-like stats directories. Attach a device with \
            nbd-client (or any NBD client) and use it for swap or a file system.

            Start the daemon with `zramnbd serve`, look at it with `zramnbd status`, control it with \
            `zramnbd ctl`.
            """,
        version: BuildInfo.version,
        subcommands: [Serve.self, Status.self, Ctl.self, Generate.self, HandoverCheck.self])

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
            var command = try parseAsRoot(Status.insertingWatchDefault(arguments))
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

            --size and --mem-limit are read as zramctl reads sizes (util-linux): 1.5G, 512M, 1K = 1KiB = 1024, \
            1KB = 1000, plain numbers are bytes. Other sizes take K, M, G, T suffixes (powers of 1024, as the \
            kernel's memparse). At most 16T. Paths accept 'none' to turn a socket or file off. SIGTERM or SIGINT \
            stop the daemon gracefully.
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
    @Option(help: ArgumentHelp("Compression algorithm: lzo-rle, lzo, lz4, lz4hc, zstd or deflate (default lz4).", valueName: "name"))
    var algorithm: String?
    @Option(parsing: .unconditional, help: ArgumentHelp("Compression level (zstd, lz4hc 1-12, deflate 0-9: level; lz4: acceleration; lzo and lzo-rle take none).", valueName: "n"))
    var level: String?
    @Option(parsing: .unconditional, help: ArgumentHelp("zsmalloc pages per zspage, \(DeviceSpec.chainSizes) (default 8, like the kernel).", valueName: "n"))
    var chainSize: String?
    @Option(parsing: .unconditional, help: ArgumentHelp("Limit on the memory the pool may use (zram's mem_limit; default none).", valueName: "size"))
    var memLimit: String?
    @Option(help: ArgumentHelp("File or block device idle pages are written back to (zram's backing_dev); a missing file is created sparse and removed on exit.", valueName: "path"))
    var backingDev: String?
    @Flag(help: "Write pages back compressed, as they are stored (zram 7.0's compressed_writeback).")
    var compressedWriteback = false
    @Flag(help: "With --compressed-writeback, pack several compressed pages into each backing block (beyond the kernel).")
    var writebackPacking = false
    @Option(parsing: .unconditional, help: ArgumentHelp("Write back pages not read or written for this long (seconds, or 30m, 1h, 1d).", valueName: "duration"))
    var writebackIdleAfter: String?
    @Flag(help: "Write back idle pages when the kernel reports memory pressure (PSI).")
    var writebackOnPressure = false
    @Option(parsing: .unconditional, help: ArgumentHelp("Write back at most this much a day (zram's writeback_limit, refilled daily).", valueName: "size"))
    var writebackDailyLimit: String?
    @Option(help: ArgumentHelp("Recompression algorithms, priority 1 first: 'zstd' or 'zstd(level=9) lz4hc' (zram's recomp_algorithm).", valueName: "list"))
    var recompAlgorithm: String?
    @Option(parsing: .unconditional, help: ArgumentHelp("Recompress pages not read or written for this long (seconds, or 30m, 1h, 1d).", valueName: "duration"))
    var recompressIdleAfter: String?
    @Flag(help: "Recompress idle pages when the kernel reports memory pressure (PSI).")
    var recompressOnPressure = false
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
    @Option(parsing: .unconditional, help: ArgumentHelp("Microseconds a busy connection polls for its next request before sleeping (default 50, 0 = off).", valueName: "us"))
    var busyPollUs: String?
    @Option(parsing: .unconditional, help: ArgumentHelp("Seconds an NBD client may take to negotiate before it is closed (default 10, 0 = no limit).", valueName: "seconds"))
    var handshakeLimit: String?
    @Option(parsing: .unconditional, help: ArgumentHelp("Memory all NBD connections may hold in requests over 256 KiB; past it they wait (default 256M).", valueName: "size"))
    var payloadBudget: String?
    @Flag(help: "Serve one NBD connection, then exit: on a socket-activation socket (nbdinfo/nbdcopy '[ CMD ]') or stdin/stdout.")
    var stdio = false
    @Option(name: .customLong("run"), help: ArgumentHelp("Once every device serves, run COMMAND with /bin/sh -c, then stop and exit with its status "
                               + "(128+N if signal N killed it), as nbdkit --run. $uri (also $nbd), $exportname, $port, "
                               + "$unixsocket and $tls are set as nbdkit sets them; with several devices, for the first. Without --socket "
                               + "or --listen the sockets go in a private temporary directory; no control socket, stats "
                               + "directory or memory locking unless asked.", valueName: "command"))
    var runCommand: String?
    @Flag(help: "Stop when the parent process exits (PR_SET_PDEATHSIG).")
    var exitWithParent = false
    @Option(help: ArgumentHelp("Once serving, write the daemon's pid to this file (atomically); removed at exit.", valueName: "path"))
    var pidfile: String?
    @Flag(help: "Once serving, print each device's NBD URI on stdout, one a line.")
    var printUri = false
    @Flag(help: "Check the configuration, print the devices and exit.")
    var check = false
    @Flag(name: .shortAndLong, help: "Log more (repeat for debug).")
    var verbose: Int

    var deviceFlagsGiven: Bool {
        device != nil || size != nil || algorithm != nil || level != nil || chainSize != nil || memLimit != nil
            || socket != nil || listen != nil || statsDir != nil || readOnly || tlsIdentities != nil
    }

    // Every option taking a number parses `.unconditional`: `--busy-poll-us -1` is a value to
    // refuse by name, not a missing one.

    /// The settings these options ask for. `ramMiB` is MemTotal (for default sizes and expressions).
    /// `root` is zram-generator's root ($ZRAM_GENERATOR_ROOT or /), for its files and /proc/cmdline.
    /// `privateDir`: with --run, where sockets go that no flag or file placed.
    func settings(ramMiB: Double, root: String = ZramGeneratorConfig.root(),
                  privateDir: String = Serve.privateDirTemplate) throws(DaemonError) -> LoadedConfig {
        if stdio {
            if runCommand != nil { throw .invalidValue("--run cannot be combined with --stdio: the command would get the NBD connection's stdin and stdout") }
            if printUri { throw .invalidValue("--print-uri cannot be combined with --stdio: stdout is the NBD connection") }
            if pidfile != nil { throw .invalidValue("--pidfile cannot be combined with --stdio") }
        }
        if let p = pidfile, p.isEmpty || p.hasSuffix("/") || p.hasSuffix("/.") || p.hasSuffix("/..") || p == "." || p == ".." {
            throw .invalidValue("--pidfile '\(p)': expected the path of a file")
        }
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
        if runCommand != nil {
            // A captive daemon lives for one command: it takes none of the system daemon's paths
            // (/run/zramnbd) and locks no memory, unless told to.
            s.controlSocket = nil
            s.lockMemory = false
            for i in s.devices.indices {
                let standard = DeviceSpec.standard(name: s.devices[i].name, diskSize: 0)
                if socket == nil, s.devices[i].socket == standard.socket {
                    // --listen alone is TCP alone, as nbdkit -p.
                    s.devices[i].socket = listen != nil ? nil : privateDir + "/" + s.devices[i].name + ".sock"
                }
                if statsDir == nil, s.devices[i].statsDir == standard.statsDir { s.devices[i].statsDir = nil }
            }
        }
        if let v = statsInterval { s.statsInterval = try Serve.flag("--stats-interval") { () throws(DaemonError) in try DaemonSettings.parseStatsInterval(v) } }
        if let v = controlSocket { s.controlSocket = ConfigFile.optionalPath(v) }
        if let v = prometheusFile { s.prometheusFile = ConfigFile.optionalPath(v) }
        if let v = metricsListen { s.metricsListen = ConfigFile.optionalPath(v) }
        if noMlock { s.lockMemory = false }
        if noAutoCompact { s.autoCompact = false }
        if let v = busyPollUs {
            guard let us = Int(v), DaemonSettings.busyPollRange.contains(us) else {
                throw .invalidValue("--busy-poll-us: expected microseconds 0...10000, got '\(v)'")
            }
            s.busyPollMicroseconds = us
        }
        if let v = handshakeLimit {
            guard let d = Double(v), DaemonSettings.handshakeLimitRange.contains(d) else {
                throw .invalidValue("--handshake-limit: expected seconds 0...3600 (0 = none), got '\(v)'")
            }
            s.handshakeLimitSeconds = d
        }
        if let v = payloadBudget {
            s.payloadBudgetBytes = try Serve.flag("--payload-budget") { () throws(DaemonError) in try ByteSize.parse(v) }
            guard s.payloadBudgetBytes <= DaemonSettings.payloadBudgetMax else { throw .invalidValue("--payload-budget: at most 1T, got '\(v)'") }
        }
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
        if let size { bytes = try Serve.flag("--size") { () throws(DaemonError) in try ByteSize.strtosize(size) } } else {
            bytes = try SizeExpression("min(ram / 2, 4096)").bytes(ramMiB: ramMiB)
        }
        guard bytes > 0 else { throw .invalidValue("--size: invalid size '\(size ?? "0")': must be more than 0") }
        var spec = DeviceSpec.standard(name: name, diskSize: bytes)
        if let a = algorithm {
            try DeviceSpec.validateAlgorithm(a)
            spec.algorithm = a
        }
        if let l = level {
            guard let v = Int32(l) else { throw .invalidValue("--level: invalid level '\(l)': expected an integer") }
            try Serve.flag("--level") { () throws(DaemonError) in try DeviceSpec.validateLevel(v, for: spec.algorithm) }
            spec.level = v
        }
        if let c = chainSize {
            guard let v = Int(c) else { throw .invalidValue("--chain-size: invalid chain size '\(c)': expected \(DeviceSpec.chainSizes)") }
            try Serve.flag("--chain-size") { () throws(DaemonError) in try DeviceSpec.validateChainSize(v) }
            spec.chainSize = v
        }
        if let m = memLimit { spec.memLimit = try Serve.flag("--mem-limit") { () throws(DaemonError) in try ByteSize.strtosize(m) } }
        if let b = backingDev { spec.writebackDevice = ConfigFile.optionalPath(b) }
        if let a = writebackIdleAfter {
            spec.postProcessing.idleAfter = try Serve.flag("--writeback-idle-after") { () throws(DaemonError) in try ConfigFile.parseDuration(a) }
        }
        spec.postProcessing.onPressure = writebackOnPressure
        spec.compressedWriteback = compressedWriteback
        spec.writebackPacking = writebackPacking
        if let l = writebackDailyLimit {
            spec.postProcessing.dailyLimitPages = try Serve.flag("--writeback-daily-limit") { () throws(DaemonError) in try ByteSize.parse(l) } / 4096
        }
        if let r = recompAlgorithm {
            let list = try Serve.flag("--recomp-algorithm") { () throws(DaemonError) in try AlgorithmList.parse(r) }
            let unknown = try Serve.flag("--recomp-algorithm") { () throws(DaemonError) in try ConfigFile.secondaries(list[...], into: &spec) }
            if let p = unknown.first { throw .invalidValue("--recomp-algorithm: parameter '\(p)' is not supported (level=, dict=, deflate.winbits=, zstd.compact=)") }
        }
        if let a = recompressIdleAfter {
            spec.postProcessing.recompressIdleAfter = try Serve.flag("--recompress-idle-after") { () throws(DaemonError) in try ConfigFile.parseDuration(a) }
        }
        spec.postProcessing.recompressOnPressure = recompressOnPressure
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

    /// `body`'s error with the flag it came from in front: "--size: invalid size '-1': ...".
    static func flag<T>(_ name: String, _ body: () throws(DaemonError) -> T) throws(DaemonError) -> T {
        do { return try body() } catch { throw .invalidValue("\(name): \(error)") }
    }

    /// What `--check` shows for the private directory of --run.
    static let privateDirTemplate = "$TMPDIR/zramnbd-XXXXXX"

    func run() throws {
        // First of all: the parent to compare with once PR_SET_PDEATHSIG is armed.
        let parent = exitWithParent ? getppid() : nil
        let quiet = stdio || runCommand != nil   // a tool's child: only what goes wrong
        let log = Log(level: verbose >= 2 ? .debug : verbose == 1 ? .info : (quiet ? .warning : .info))
        let root = ZramGeneratorConfig.root()
        let ram = SystemInfo.memTotalMiB(path: ZramGeneratorConfig.join(root, "proc/meminfo"))
        var privateDir: String?
        defer { privateDir.map(Serve.removePrivateDirectory) }
        // Even with --socket: a device `ctl add` makes later gets its socket there.
        if runCommand != nil, !check { privateDir = try Serve.makePrivateDirectory() }
        let loaded = try settings(ramMiB: ram, root: root, privateDir: privateDir ?? Serve.privateDirTemplate)
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
            if let parent, try !ParentDeath.arm(parent: parent) { return }
            try factory.serveStdio(loaded.settings.devices)
            return
        }
        let captive = CaptiveOptions(run: runCommand, parent: parent, pidfile: pidfile, printURI: printUri, privateDirectory: privateDir)
        let status = try Daemon(settings: loaded.settings, factory: factory, log: log, captive: captive).run()
        if status != 0 { throw ExitStatus(code: status) }
    }

    /// A directory only we can enter, under $TMPDIR or /tmp, as nbdkit makes for `-U -`.
    static func makePrivateDirectory() throws(DaemonError) -> String {
        let base = getenv("TMPDIR").map { String(cString: $0) }.flatMap { $0.isEmpty ? nil : $0 } ?? "/tmp"
        var template = Array((base.hasSuffix("/") ? base : base + "/").utf8CString.dropLast()) + Array("zramnbd-XXXXXX".utf8CString)
        guard mkdtemp(&template) != nil else { throw .errno("mkdtemp \(base)/zramnbd-XXXXXX") }
        return String(cString: template)
    }

    /// The private directory and the sockets the devices left in it (they remove their own on a
    /// graceful stop).
    static func removePrivateDirectory(_ path: String) {
        for name in FileSystem.listDirectory(path) where name.hasSuffix(".sock") { unlink(path + "/" + name) }
        rmdir(path)
    }

    static func describe(_ d: DeviceSpec) -> String {
        var parts = ["\(d.name):", "disksize=\(d.diskSize)", "algorithm=\(d.algorithm)"]
        if let l = d.level { parts.append("level=\(l)") }
        if let p = d.dictionary { parts.append("dict=\(p)") }
        if let w = d.windowBits { parts.append("deflate.winbits=\(w)") }
        if let c = d.compactFrames { parts.append("zstd.compact=\(c ? 1 : 0)") }
        parts.append("chain-size=\(d.chainSize)")
        if d.memLimit > 0 { parts.append("mem-limit=\(d.memLimit)") }
        if let w = d.writebackDevice { parts.append("backing-dev=\(w)") }
        if let a = d.postProcessing.idleAfter { parts.append("writeback-idle-after=\(a)s") }
        if d.postProcessing.onPressure { parts.append("writeback-on-pressure") }
        if let l = d.postProcessing.dailyLimitPages { parts.append("writeback-daily-limit=\(l * 4096)") }
        if !d.recompressionAlgorithms.isEmpty {
            parts.append("recomp-algorithm=" + d.recompressionAlgorithms.map(\.text).joined(separator: ","))
        }
        if let a = d.postProcessing.recompressIdleAfter { parts.append("recompress-idle-after=\(a)s") }
        if d.postProcessing.recompressOnPressure { parts.append("recompress-on-pressure") }
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
            overhead and fragmentation). MOUNTPOINT shows [SWAP] or the mount point once the setup \
            tools attached an NBD device.

            The default columns are zramctl's plus RATIO (DATA/TOTAL, what the RAM really saves; \
            zramctl's COMP-RATIO is the same number with four decimals, but not a default column). \
            --output +LIST adds columns to the defaults, --output LIST replaces them. With --watch the \
            defaults add DATA/s and TOTAL/s, the NBD read/write rates and IOPS when the daemon counts them, \
            and the backing device's rates when it has one; rates are the change between two frames.

            Available output columns:
            \(StatusReport.columnHelp)
            """)

    @Option(name: [.short, .long], help: ArgumentHelp("Columns to show (listed above), comma-separated; +LIST adds to the default ones.", valueName: "list"))
    var output: String?
    @Flag(help: "Show every column.")
    var outputAll = false
    @Flag(name: .shortAndLong, help: "Print sizes in bytes rather than in human-readable form.")
    var bytes = false
    @Flag(name: [.short, .customLong("noheadings")], help: "Don't print headings.")
    var noHeadings = false
    @Flag(help: "Raw output: one blank between fields, blanks and unprintable bytes as \\xHH.")
    var raw = false
    @Flag(help: "Print JSON with every counter.")
    var json = false
    @Option(help: ArgumentHelp("Redraw every SECONDS (may be left out: 1), with rates per second; Ctrl-C ends it (exit 0).", valueName: "seconds"))
    var watch: String?
    @Option(help: ArgumentHelp("With --watch: stop after N frames.", valueName: "n"))
    var count: String?
    @Flag(help: "Draw the device's zsmalloc size classes: objects used of allocated, fragmentation, what compaction would free.")
    var classes = false
    @Option(help: ArgumentHelp("Control socket of the daemon.", valueName: "path"))
    var controlSocket: String = DaemonSettings.defaultControlSocket
    @Argument(help: "Devices to show (default: all).")
    var devices: [String] = []

    /// `--watch` may come without its SECONDS, as in `watch`-like tools; ArgumentParser options
    /// always take a value, so `status ... --watch` gets the default inserted when the next word
    /// is not a number.
    static func insertingWatchDefault(_ arguments: [String]) -> [String] {
        guard arguments.first == "status" else { return arguments }
        var out: [String] = []
        var i = 0
        while i < arguments.count {
            let a = arguments[i]
            out.append(a)
            if a == "--" { out += arguments[(i + 1)...]; break }
            if a == "--watch", i + 1 >= arguments.count || Double(arguments[i + 1]) == nil { out.append("1") }
            i += 1
        }
        return out
    }

    /// The frames --watch and --count ask for: (seconds between frames, frames or nil = until Ctrl-C).
    func watchPlan() throws(DaemonError) -> (interval: Double, frames: Int?)? {
        guard watch != nil || count != nil else { return nil }
        var interval = 1.0
        if let w = watch {
            guard let v = Double(w), v.isFinite, v >= 0.01, v <= 86_400 else {
                throw .invalidValue("invalid --watch '\(w)': seconds between frames, 0.01...86400")
            }
            interval = v
        }
        var frames: Int?
        if let c = count {
            guard let n = Int(c), n >= 1 else { throw .invalidValue("invalid --count '\(c)': a number of frames, at least 1") }
            frames = n
        }
        return (interval, frames)
    }

    /// Bad input (exit 2) before the daemon is asked anything. Not ArgumentParser's validate():
    /// errors from there lose their DaemonError and its one-line message.
    func check() throws(DaemonError) {
        for d in devices { try DeviceSpec.validateName(d) }
        let plan = try watchPlan()
        if json, plan != nil || classes || output != nil || outputAll || raw || noHeadings {
            throw .invalidValue("--json cannot be combined with --watch, --classes or the table options")
        }
        if classes {
            guard devices.count == 1 else { throw .invalidValue("--classes shows one device: zramnbd status --classes DEVICE") }
            if plan != nil || output != nil || outputAll || raw || noHeadings || bytes {
                throw .invalidValue("--classes cannot be combined with --watch or the table options")
            }
        }
        _ = try StatusReport.select(output, all: outputAll, watch: plan != nil,
                                    defaults: plan != nil ? StatusReport.watchDefaults([]) : StatusReport.defaultColumnNames)
    }

    func run() throws {
        try check()
        let format = StatusReport.Format(bytes: bytes, raw: raw, noHeadings: noHeadings)
        if classes {
            let text = try StatusClasses.report(device: devices[0], socket: controlSocket,
                                                width: StatusClasses.terminalWidth(), colour: isatty(1) == 1)
            FileSystem.writeAll(1, text)
            return
        }
        if let plan = try watchPlan() {
            try StatusWatch(output: output, all: outputAll, format: format, devices: devices, socket: controlSocket,
                            interval: plan.interval, frames: plan.frames, terminal: isatty(1) == 1).run()
            return
        }
        let records = try ControlClient.send(.status(devices), socket: controlSocket).map(ControlRecord.parse)
        if json {
            FileSystem.writeAll(1, StatusReport.json(records))
            return
        }
        let columns = try StatusReport.select(output, all: outputAll)
        FileSystem.writeAll(1, StatusReport.table(records, columns: columns, format: format))
    }
}

// MARK: handover-check

/// What a daemon asks the binary it is about to exec at an upgrade: which hand-over and state
/// formats it reads (Upgrade.preflight). Not for people, so not in the help.
struct HandoverCheck: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "handover-check", shouldDisplay: false)

    func run() throws { FileSystem.writeAll(1, Upgrade.formats + "\n") }
}

// MARK: ctl

struct Ctl: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Control a device of the running daemon.",
        discussion: "Actions (zram's sysfs controls):\n" + ControlAction.helpText + """

            The daemon itself: `zramnbd ctl upgrade [--binary PATH]` execs PATH (default: the \
            daemon's own binary, as a package upgrade left it) in place with every device, socket \
            and NBD connection; clients see no error. It is what `systemctl reload zramnbd` runs.
            """)

    @Option(help: ArgumentHelp("Control socket of the daemon.", valueName: "path"))
    var controlSocket: String = DaemonSettings.defaultControlSocket
    @Option(help: ArgumentHelp("With `ctl upgrade`: the binary to exec (default: the daemon's own path).", valueName: "path"))
    var binary: String?
    @Argument(help: "Device name, e.g. zram0 (or `upgrade [--binary PATH]`: exec a new binary with every device and connection).")
    var device: String
    @Argument(help: "Action (see below).")
    var action: String = ""
    @Argument(parsing: .allUnrecognized, help: "Arguments of the action (may start with -, e.g. a size to refuse).")
    var arguments: [String] = []

    /// The request: the words `ACTION DEVICE ARGS...`, as the control socket would read them.
    func request() throws(DaemonError) -> ControlRequest {
        if device == "upgrade" {
            // The daemon's own action, not a device's: `ctl upgrade [--binary PATH]`.
            guard action.isEmpty, arguments.isEmpty else { throw .invalidValue("usage: zramnbd ctl upgrade [--binary PATH]") }
            return .upgrade(binary)
        }
        guard binary == nil else { throw .invalidValue("--binary goes with `ctl upgrade` only") }
        guard !action.isEmpty else { throw .invalidValue("\(device): which action? (\(ControlAction.all.map(\.name).joined(separator: ", ")))") }
        return try ControlAction.request([action, device] + arguments, from: .ctl)
    }

    func run() throws {
        let req = try request()
        let lines = try ControlClient.send(req, socket: controlSocket)
        if action == "get" {
            // `show` prints sysfs's snake_case; the kebab-case of flags and config keys is the same key.
            let key = arguments[0]
            let fields = lines.map(ControlRecord.parse).flatMap(\.fields)
            guard let v = fields.first(where: { $0.0 == key || $0.0 == ControlAction.sysfsName(action: key) })?.1 else {
                throw DaemonError.invalidValue("\(device): unknown key '\(key)' (see: zramnbd ctl \(device) show)")
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
