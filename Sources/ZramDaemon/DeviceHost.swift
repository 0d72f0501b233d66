// The devices the daemon runs: page stores, their NBD exports and their stats directories.
// DeviceHost is driven from the daemon's one control thread; the stores are thread-safe and the
// NBD server threads use them directly.

/// What the daemon needs from a page store (zram's control attributes and counters).
public protocol PageStore: AnyObject, Sendable {
    /// Counters and sysfs texts now; `classes` also renders the (costlier) classes table.
    func snapshot(classes: Bool) -> DeviceSnapshot
    /// zs_compact; returns the pages freed.
    func compact() throws(DaemonError) -> UInt64
    /// Frees every page and clears the counters; the device keeps its size and algorithm.
    func reset() throws(DaemonError)
    func setMemLimit(_ bytes: UInt64) throws(DaemonError)
    /// mem_used_max := current usage (zram's `echo 0 > mem_used_max`).
    func resetMemUsedMax() throws(DaemonError)
    /// Pages compaction would free now (zsmalloc's shrinker count).
    var compactablePages: Int { get }
    /// The device is going away: close what it holds outside memory (a backing file it created
    /// is removed).
    func shutdown()
    /// Writes zram attribute `name` (sysfs name) with `value`, as `echo value > name` would;
    /// returns lines to show (a writeback's report, block_state's table).
    func writeAttribute(_ name: String, _ value: String) throws(DaemonError) -> [String]
}

extension PageStore {
    public func shutdown() {}

    public func writeAttribute(_ name: String, _ value: String) throws(DaemonError) -> [String] {
        throw .device("\(name) is not supported by this store")
    }
}

/// A running NBD export of one store (its listening sockets and their connections).
public protocol ExportHandle: AnyObject {
    /// Client connections open right now.
    var activeConnections: Int { get }
    /// Stops listening, finishes in-flight requests, closes connections, removes the socket file.
    func stop()
}

/// Creates stores and exports. The production factory wires ZramDevice to the NBD server;
/// tests substitute an in-memory one.
public protocol DeviceFactory: AnyObject {
    func makeStore(_ spec: DeviceSpec) throws(DaemonError) -> any PageStore
    func export(_ store: any PageStore, spec: DeviceSpec) throws(DaemonError) -> any ExportHandle
    /// Exports every device on sockets systemd passed that no device claimed (nil: none).
    func exportUnclaimed(_ devices: [(DeviceSpec, any PageStore)]) throws(DaemonError) -> (any ExportHandle)?
}

extension DeviceFactory {
    public func exportUnclaimed(_ devices: [(DeviceSpec, any PageStore)]) throws(DaemonError) -> (any ExportHandle)? { nil }
}

/// One running device.
final class HostedDevice {
    let spec: DeviceSpec
    let store: any PageStore
    var export: (any ExportHandle)?
    var stats: StatsDirectory?
    /// The kernel NBD device the setup tools attached (for MOUNTPOINT).
    var nbdDevice: String?

    init(spec: DeviceSpec, store: any PageStore) {
        self.spec = spec
        self.store = store
    }
}

public final class DeviceHost {
    let factory: any DeviceFactory
    private(set) var devices: [HostedDevice] = []
    /// Serves every device on activated sockets no device claimed (socket activation).
    private var sharedExport: (any ExportHandle)?
    var prometheusFile: String?
    /// Runs the devices' writeback policies; nil = none (tests).
    var postProcessor: PostProcessor?
    /// Keeps each device's state in systemd's fd store, for a restart after a crash; nil = none.
    var fdStore: FDStore?
    /// A captive daemon's private directory (serve --run): `ctl add` puts a device's default
    /// socket there and gives it no default stats directory, as for the devices it started with.
    var privateDirectory: String?
    /// The open Prometheus file (its directory checked once), after the first publication.
    private var prometheus: PublishedFile?
    var log: Log

    public init(factory: any DeviceFactory, prometheusFile: String? = nil, log: Log = Log()) {
        self.factory = factory
        self.prometheusFile = prometheusFile
        self.log = log
    }

    public var deviceNames: [String] { devices.map(\.spec.name) }

    /// Activated sockets no device claimed serve every device (not handed over at an upgrade).
    var hasSharedExport: Bool { sharedExport != nil }

    func device(_ name: String) throws(DaemonError) -> HostedDevice {
        guard let d = devices.first(where: { $0.spec.name == name }) else {
            throw .device("no device '\(name)' (have: \(deviceNames.isEmpty ? "none" : deviceNames.joined(separator: ", ")))")
        }
        return d
    }

    /// Opens the Prometheus file's directory now, so a missing or unsafe one stops the start
    /// with a clear message instead of an error at every refresh.
    public func preparePublishing() throws(DaemonError) {
        if let path = prometheusFile, prometheus == nil { prometheus = try PublishedFile(path: path) }
    }

    /// Creates the store, its stats directory and its export (zram's hot_add + disksize).
    public func add(_ spec: DeviceSpec) throws(DaemonError) {
        try spec.validate()
        guard !devices.contains(where: { $0.spec.name == spec.name }) else { throw .device("device '\(spec.name)' exists already") }
        if let s = spec.socket, devices.contains(where: { $0.spec.socket == s }) {
            throw .device("socket \(s) is used by another device")
        }
        try spec.checkStatsDir(against: devices.map(\.spec))
        try adopt(spec, store: try factory.makeStore(spec))
    }

    /// Adds a device around an existing store: stats directory, export, first publication.
    func adopt(_ spec: DeviceSpec, store: any PageStore) throws(DaemonError) {
        let d = HostedDevice(spec: spec, store: store)
        if let dir = spec.statsDir { d.stats = try StatsDirectory(path: dir) }
        do {
            d.export = try factory.export(d.store, spec: spec)
        } catch {
            d.stats?.remove()
            throw error
        }
        devices.append(d)
        postProcessor?.register(spec.name, store: store, policy: spec.postProcessing)
        publish(d, force: true)
        fdStore?.store(store, spec: spec)
        log.info("\(spec.name): \(ByteSize.human(spec.diskSize)) \(spec.algorithm), exported on \(endpoints(spec))")
    }

    /// Stops the export and drops the device (zram's hot_remove); refused while clients are connected.
    public func remove(_ name: String, force: Bool = false) throws(DaemonError) {
        let d = try device(name)
        if !force, let n = d.export?.activeConnections, n > 0 {
            throw .device("\(name) is in use by \(n) NBD connection(s); disconnect it first")
        }
        postProcessor?.unregister(name)
        fdStore?.remove(name)
        d.export?.stop()
        d.export = nil
        d.stats?.remove()
        d.store.shutdown()
        devices.removeAll { $0 === d }
        publishPrometheus()
        log.info("\(name): removed")
    }

    /// Starts the export of activated sockets no device claimed; call once every configured
    /// device is added.
    public func exportUnclaimedSockets() throws(DaemonError) {
        sharedExport = try factory.exportUnclaimed(devices.map { ($0.spec, $0.store) })
    }

    /// Stops every export (graceful shutdown) and removes the stats directories.
    public func stopAll() {
        sharedExport?.stop()
        sharedExport = nil
        postProcessor?.stop()
        for d in devices {
            fdStore?.remove(d.spec.name)   // a clean stop: the next start is a fresh one
            d.export?.stop()
            d.export = nil
            d.stats?.remove()
            d.store.shutdown()
        }
        devices.removeAll()
        prometheus?.remove()   // only if it is still the file we wrote
        prometheus = nil
    }

    // MARK: control

    public func handle(_ request: ControlRequest) -> ControlReply {
        do {
            return .ok(try perform(request))
        } catch {
            return .error(error.description)
        }
    }

    func perform(_ request: ControlRequest) throws(DaemonError) -> [String] {
        switch request {
        case .status(let names):
            let selected = try names.isEmpty ? devices : names.map { n throws(DaemonError) in try device(n) }
            return selected.map { record($0).line }
        case .show(let name):
            return record(try device(name)).fields.map { ControlRecord.escape($0.0) + "=" + ControlRecord.escape($0.1) }
        case .compact(let name):
            let d = try device(name)
            let freed = try d.store.compact()
            publish(d, force: true)
            log.info("\(name): compacted, \(freed) pages freed")
            return ["pages_compacted=\(freed)"]
        case .reset(let name):
            let d = try device(name)
            if let n = d.export?.activeConnections, n > 0 {
                throw .device("\(name) is in use by \(n) NBD connection(s); disconnect it first")
            }
            try d.store.reset()
            publish(d, force: true)
            fdStore?.store(d.store, spec: d.spec)   // a reset makes a new pool, in new memfds
            log.info("\(name): reset")
            return []
        case .memLimit(let name, let bytes):
            let d = try device(name)
            try d.store.setMemLimit(bytes)
            publish(d, force: true)
            log.info("\(name): mem_limit set to \(bytes)")
            return []
        case .memUsedMaxReset(let name):
            let d = try device(name)
            try d.store.resetMemUsedMax()
            publish(d, force: true)
            return []
        case .add(let name, let settings):
            var spec = try ConfigFile.deviceSpec(name: name, settings: settings, ramMiB: SystemInfo.memTotalMiB())
            if let dir = privateDirectory {
                let standard = DeviceSpec.standard(name: name, diskSize: 0)
                if spec.socket == standard.socket { spec.socket = dir + "/" + name + ".sock" }
                if spec.statsDir == standard.statsDir { spec.statsDir = nil }
            }
            try add(spec)
            return [record(try device(name)).line]
        case .remove(let name):
            try remove(name)
            return []
        case .attach(let name, let nbd):
            let d = try device(name)
            d.nbdDevice = nbd
            publish(d, force: true)
            return []
        case .upgrade:
            throw .device("upgrade: only a running daemon's control socket can do that")
        case .attribute(let name, let attribute, let words):
            let store = try device(name).store
            return try finishAttribute(name, attribute, words, Result { () throws(DaemonError) in
                try store.writeAttribute(attribute, words.joined(separator: " "))
            })
        }
    }

    /// Attributes whose write walks the whole slot table or writes to disk: SharedHost runs them
    /// without the host lock, so the stats, the watchdog and other requests go on meanwhile.
    static let longAttributes: Set<String> = ["idle", "writeback", "recompress", "block_state"]

    /// Attributes that change the state header or whether the state can be exported.
    static let stateAttributes: Set<String> = ["comp_algorithm", "recomp_algorithm", "algorithm_params", "train_dict", "backing_dev"]

    /// After an attribute write: publish and log what it did (a writeback that stopped early
    /// still moved pages), and return its lines or its error.
    func finishAttribute(_ name: String, _ attribute: String, _ words: [String],
                         _ result: Result<[String], DaemonError>) throws(DaemonError) -> [String] {
        guard attribute != "block_state" else { return try result.get() }
        if let d = devices.first(where: { $0.spec.name == name }) { publish(d, force: true) }
        switch result {
        case .success(let lines):
            log.info("\(name): \(attribute) \(words.joined(separator: " "))" + (lines.isEmpty ? "" : ": " + lines.joined(separator: "; ")))
            // What the state header describes (or whether the state can be kept at all) changed.
            if Self.stateAttributes.contains(attribute), let d = devices.first(where: { $0.spec.name == name }) {
                fdStore?.store(d.store, spec: d.spec)
            }
            return lines
        case .failure(let error):
            log.info(error.description)
            throw error
        }
    }

    /// Compacts every device that has something to give back; the memory-pressure reaction
    /// the kernel's zsmalloc shrinker provides. Returns the pages freed.
    @discardableResult
    public func compactUnderPressure() -> UInt64 {
        var total: UInt64 = 0
        for d in devices where d.store.compactablePages > 0 {
            guard let freed = try? d.store.compact() else { continue }
            total += freed
            if freed > 0 { publish(d, force: false) }
        }
        if total > 0 { log.info("memory pressure: compaction freed \(total) pages") }
        return total
    }

    // MARK: reports

    /// Everything `status`/`show` report about a device, from one fresh snapshot.
    func record(_ d: HostedDevice, snapshot: DeviceSnapshot? = nil) -> ControlRecord {
        let s = snapshot ?? d.store.snapshot(classes: false)
        var f: [(String, String)] = [
            ("name", s.name), ("disksize", "\(s.diskSize)"), ("algorithm", s.algorithm), ("level", "\(s.level)"),
            ("streams", "\(s.streams)"),
        ]
        f += s.counters.map { ($0.name, "\($0.value)") }
        f += [
            ("connections", "\(d.export?.activeConnections ?? 0)"),
        ]
        f += IOReport.recordFields(s.io).map { ($0.0, "\($0.1)") }
        f += [
            ("socket", d.spec.socket ?? ""), ("listen", d.spec.listen ?? ""), ("stats_dir", d.spec.statsDir ?? ""),
            ("read_only", d.spec.readOnly ? "1" : "0"), ("tls_identities", d.spec.tlsIdentities?.joined(separator: ",") ?? ""),
            ("chain_size", "\(d.spec.chainSize)"),
            ("backing_dev", s.backingDev ?? "none"), ("writeback_limit", "\(s.writebackLimit)"),
            ("writeback_limit_enable", s.writebackLimitEnable ? "1" : "0"), ("writeback_batch_size", "\(s.writebackBatchSize)"),
            ("compressed_writeback", s.compressedWriteback ? "1" : "0"), ("writeback_packing", s.writebackPacking ? "1" : "0"),
            ("swap_priority", "\(d.spec.swapPriority)"), ("fs_type", d.spec.effectiveFsType),
            ("mount_point", d.spec.mountPoint ?? ""), ("options", d.spec.options),
            ("nbd_device", d.nbdDevice ?? ""), ("mountpoint", MountTable.usage(of: d.nbdDevice)),
        ]
        return ControlRecord(f)
    }

    /// Rewrites every device's stats files (changed files only unless `force`) and the
    /// Prometheus file.
    public func refreshStats(force: Bool = false) {
        for d in devices { publishFiles(d, force: force) }
        publishPrometheus()
    }

    /// Publishes one device's files (after a policy run); nothing if it is gone.
    func publish(named name: String) {
        if let d = devices.first(where: { $0.spec.name == name }) { publish(d, force: false) }
    }

    private func publish(_ d: HostedDevice, force: Bool) {
        publishFiles(d, force: force)
        publishPrometheus()
    }

    private func publishFiles(_ d: HostedDevice, force: Bool) {
        guard let dir = d.stats else { return }
        let s = d.store.snapshot(classes: true)
        let extra: [(String, JSONValue)] = [
            ("connections", .int(d.export?.activeConnections ?? 0)),
            ("nbd_device", d.nbdDevice.map(JSONValue.string) ?? .null),
        ]
        do { try dir.publish(s, extra: extra, force: force) } catch {
            log.error("\(d.spec.name): cannot write stats: \(error)")
        }
    }

    private func publishPrometheus() {
        guard let path = prometheusFile else { return }
        do {
            try preparePublishing()
            try prometheus?.write(prometheusText())
        } catch {
            log.error("cannot write \(path): \(error)")
        }
    }

    public func prometheusText() -> String {
        PrometheusText.render(devices.map { $0.store.snapshot(classes: false) })
    }

    /// One line for systemd's STATUS= and the log.
    public func summary() -> String {
        guard !devices.isEmpty else { return "no devices" }
        return devices.map { d in
            let s = d.store.snapshot(classes: false)
            return "\(s.name) \(ByteSize.human(s.origDataSize))/\(ByteSize.human(s.diskSize)) in \(ByteSize.human(s.memUsedTotal))"
        }.joined(separator: ", ")
    }

    func endpoints(_ spec: DeviceSpec) -> String {
        let e = [spec.socket, spec.listen.map { "tcp " + $0 }].compactMap { $0 }
        return e.isEmpty ? "no socket" : e.joined(separator: " and ")
    }
}

/// Where a block device is in use, as zramctl's MOUNTPOINT shows it.
enum MountTable {
    static func usage(of device: String?) -> String {
        guard let device, !device.isEmpty else { return "" }
        if let swaps = try? FileSystem.readText("/proc/swaps"),
           swaps.split(separator: "\n").dropFirst().contains(where: { $0.split(separator: " ").first.map(String.init) == device }) {
            return "[SWAP]"
        }
        if let mounts = try? FileSystem.readText("/proc/self/mounts") {
            for line in mounts.split(separator: "\n") {
                let f = line.split(separator: " ")
                if f.count > 1, f[0] == device { return unescapeMount(String(f[1])) }
            }
        }
        return ""
    }

    /// /proc/mounts writes blanks as \040 etc.
    static func unescapeMount(_ s: String) -> String {
        guard s.contains("\\") else { return s }
        var out: [UInt8] = []
        let u = Array(s.utf8)
        var i = 0
        while i < u.count {
            if u[i] == UInt8(ascii: "\\"), i + 3 < u.count,
               let v = UInt8(String(decoding: u[(i + 1)..<(i + 4)], as: UTF8.self), radix: 8) {
                out.append(v)
                i += 4
            } else {
                out.append(u[i])
                i += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}

