// The one file that wires ZramDevice (the page store) to the NBD server: one NBD export per
// device, named after it, and page-store errors as the errno a block device returns.
import NBD
import Posix
import ZramDevice
#if canImport(Glibc)
import Glibc
#endif

extension ZramPageStore: BlockBackend {
    // zram keeps no volatile cache (flush/FUA cost nothing), zeroing frees or stores same-filled
    // pages (always cheaper than writing data), and every connection shares one store (multi-conn).
    var capabilities: BackendCapabilities { [.flush, .fua, .trim, .zero, .fastZero, .cache, .multiConn, .extents] }

    /// A page-store error as the host errno a block device would fail the request with; the
    /// NBD module's errno map turns that into what the client sees.
    static func nbdError(_ e: ZramError) -> NBDError {
        let hostErrno: Int32
        switch e {
        case .noSpace: hostErrno = ENOSPC
        case .ioError: hostErrno = EIO
        case .outOfMemory: hostErrno = ENOMEM
        case .noBackingDevice: hostErrno = ENODEV
        case .outOfRange, .notInitialized, .busy, .invalidArgument, .incompatibleState: hostErrno = EINVAL
        }
        return .request(NBDErrno.fromHost(hostErrno), message: describe(e))
    }

    func read(into buffer: UnsafeMutableRawPointer, offset: UInt64, length: Int) throws(NBDError) {
        do { try device.read(into: buffer, offset: Int(offset), length: length) } catch { throw Self.nbdError(error) }
    }

    func read(into buffer: UnsafeMutableRawPointer, offset: UInt64, length: Int,
              reportingZeroes zero: (_ start: Int, _ length: Int) -> Void) throws(NBDError) {
        do { try device.read(into: buffer, offset: Int(offset), length: length, reportingZeroes: zero) } catch {
            throw Self.nbdError(error)
        }
    }

    func write(from buffer: UnsafeRawPointer, offset: UInt64, length: Int, fua: Bool) throws(NBDError) {
        do { try device.write(from: buffer, offset: Int(offset), length: length) } catch { throw Self.nbdError(error) }
    }

    func trim(offset: UInt64, length: UInt64) throws(NBDError) {
        do { try device.discard(offset: Int(offset), length: Int(length)) } catch { throw Self.nbdError(error) }
    }

    func zero(offset: UInt64, length: UInt64, mayTrim: Bool, fast: Bool) throws(NBDError) {
        do { try device.writeZeroes(offset: Int(offset), length: Int(length), mayTrim: mayTrim) } catch {
            throw Self.nbdError(error)
        }
    }

    func flush() throws(NBDError) {
        do { try device.flush() } catch { throw Self.nbdError(error) }
    }

    func cache(offset: UInt64, length: UInt64) throws(NBDError) {}

    func blockStatus(offset: UInt64, length: UInt64,
                     _ body: (_ length: UInt64, _ flags: ExtentFlags) -> Bool) throws(NBDError) {
        do {
            try device.pageStates(offset: Int(offset), length: Int(length)) { n, state in
                switch state {
                case .unallocated: return body(UInt64(n), [.hole, .zero])
                case .zero: return body(UInt64(n), .zero)
                case .data: return body(UInt64(n), .data)
                }
            }
        } catch {
            throw Self.nbdError(error)
        }
    }
}

/// A running NBDServer: one device's, or every device's (stdio, unclaimed activated sockets).
final class NBDExport: ExportHandle {
    let server: NBDServer
    init(server: NBDServer) { self.server = server }
    var activeConnections: Int { server.connectionCount }
    func stop() { server.stop() }
}

public final class ZramDeviceFactory: DeviceFactory {
    let log: Log
    /// Sockets systemd passed us (socket activation) with their unix paths: a device whose
    /// `socket` matches serves on it; the rest serve every device.
    private var activated: [(fd: Int32, path: String?)]

    /// Listening sockets a predecessor handed over, by device: its export serves on them
    /// instead of opening its endpoints (which the sockets already are).
    private var inherited: [String: [SuspendedListener]] = [:]

    /// The listening sockets of device `name` come from a predecessor (an upgrade).
    func inherit(_ name: String, _ listeners: [SuspendedListener]) { inherited[name] = listeners }

    let busyPoll: Duration
    let handshakeLimit: Duration
    /// One budget for the connections of every device.
    let payloadBudget: PayloadBudget
    let tls: TLSSettings
    /// Loaded from `tls` once (TLSSettings.loadServer); shared by every connection.
    let tlsServer: (any TLSServer)?

    public init(log: Log, busyPoll: Duration = .zero, handshakeLimit: Duration = .seconds(10),
                payloadBudget: Int = 256 << 20, tls: TLSSettings = TLSSettings(), tlsServer: (any TLSServer)? = nil) {
        self.log = log
        self.tls = tls
        self.tlsServer = tlsServer
        self.busyPoll = busyPoll
        self.handshakeLimit = handshakeLimit
        self.payloadBudget = PayloadBudget(bytes: payloadBudget)
        var sockets: [(fd: Int32, path: String?)] = []
        var stored: [(fd: Int32, name: String)] = []
        for d in Endpoint.systemdDescriptors() {
            // Sockets come from socket units; anything else from our own fd store (FDStore.swift).
            if (try? Sockets.domain(of: d.fd)) != nil { sockets.append((d.fd, Sockets.unixPath(of: d.fd))) } else { stored.append(d) }
        }
        activated = sockets
        fromStore = stored
    }

    /// Descriptors systemd kept in the fd store for us (a crashed predecessor's device state),
    /// by name; taken once by the daemon.
    private var fromStore: [(fd: Int32, name: String)]

    func takeStoredDescriptors() -> [(fd: Int32, name: String)] {
        defer { fromStore = [] }
        return fromStore
    }

    /// `listen`: the TCP address the server will listen on, whose TLS mode may differ from the
    /// unix sockets' (TLSSettings.tcpMode).
    func configuration(_ catalog: ExportCatalog, listen: String? = nil) throws(DaemonError) -> NBDServer.Configuration {
        var c = NBDServer.Configuration(catalog: catalog)
        if let tlsServer {
            c.tlsServer = tlsServer
            c.unixTLS = tls.effectiveMode
            c.tcpTLS = try listen.map { l throws(DaemonError) in try tls.tcpMode(l) } ?? tls.effectiveMode
        }
        c.busyPoll = busyPoll
        c.handshakeLimit = handshakeLimit
        c.payloadBudget = payloadBudget
        let log = self.log
        // Errors always; per-connection chatter only with -vv.
        c.logger = NBDLogger(level: log.level >= .debug ? .debug : .error) { level, message in
            if level == .error { log.error("nbd: " + message) } else { log.debug("nbd: " + message) }
        }
        return c
    }

    static func export(_ store: ZramPageStore, _ spec: DeviceSpec) -> Export {
        Export(name: spec.name, description: "zramnbd \(spec.algorithm) \(ByteSize.human(spec.diskSize))",
               backend: store, readOnly: spec.readOnly, allowedPeers: spec.tlsIdentities, statistics: store.io)
    }

    public func makeStore(_ spec: DeviceSpec) throws(DaemonError) -> any PageStore { try ZramPageStore(spec) }

    public func export(_ store: any PageStore, spec: DeviceSpec) throws(DaemonError) -> any ExportHandle {
        guard let zram = store as? ZramPageStore else { throw .device("\(spec.name): not a zram store") }
        try tls.check(spec)  // devices added at run time (ctl add) get the start-up rules
        var endpoints: [Endpoint] = []
        let handed = inherited.removeValue(forKey: spec.name)
        if let handed {
            endpoints = handed.map { .handedOver(fd: $0.fd, ownedPath: $0.ownedPath) }
        } else if let path = spec.socket {
            if let i = activated.firstIndex(where: { $0.path == path }) {
                endpoints.append(.listeningSocket(fd: activated[i].fd))
                activated.remove(at: i)
            } else {
                if let slash = path.lastIndex(of: "/"), slash != path.startIndex {
                    try FileSystem.makeDirectories(String(path[..<slash]))
                }
                endpoints.append(.unix(path: path, mode: 0o600))
            }
        }
        if let l = spec.listen, handed == nil {   // a handed-over TCP socket is among `handed`
            let hp = try HostPort.parse(l)
            endpoints.append(.tcp(host: hp.host, port: hp.port))
        }
        do {
            let catalog = try ExportCatalog([ZramDeviceFactory.export(zram, spec)], defaultExport: spec.name)
            let server = try NBDServer(configuration(catalog, listen: spec.listen))
            if !endpoints.isEmpty { try server.listen(on: endpoints) }
            return NBDExport(server: server)
        } catch {
            throw .device("\(spec.name): \(error)")
        }
    }

    public func exportUnclaimed(_ devices: [(DeviceSpec, any PageStore)]) throws(DaemonError) -> (any ExportHandle)? {
        guard !activated.isEmpty, let first = devices.first else { return nil }
        let server = try allDevicesServer(devices, defaultName: first.0.name)
        do { try server.listen(on: activated.map { .listeningSocket(fd: $0.fd) }) } catch { throw .device("\(error)") }
        log.info("socket activation: \(activated.count) socket(s) serve every device, \(first.0.name) by default")
        activated = []
        return NBDExport(server: server)
    }

    func allDevicesServer(_ devices: [(DeviceSpec, any PageStore)], defaultName: String?) throws(DaemonError) -> NBDServer {
        do {
            let exports = devices.compactMap { d in (d.1 as? ZramPageStore).map { ZramDeviceFactory.export($0, d.0) } }
            return try NBDServer(configuration(try ExportCatalog(exports, defaultExport: defaultName)))
        } catch {
            throw .device("\(error)")
        }
    }

    /// Serves one NBD connection with every device as an export ("" = the first): the first
    /// connection on a socket passed by socket activation (what `nbdinfo -- [ CMD ]` and
    /// `nbdcopy -- [ CMD ]` do), else stdin/stdout (libnbd's connect_command).
    public func serveStdio(_ specs: [DeviceSpec]) throws(DaemonError) {
        var devices: [(DeviceSpec, any PageStore)] = []
        for s in specs { devices.append((s, try makeStore(s))) }
        let server = try allDevicesServer(devices, defaultName: specs.first?.name)
        if let listening = activated.first {
            guard let fd = Sockets.accept(listening.fd) else { throw .errno("accept") }
            server.serve(input: fd, output: fd, closeWhenDone: true)
        } else {
            server.serve(input: 0, output: 1)
        }
        server.stop()
    }
}
