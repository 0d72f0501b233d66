// The NBD server: listens, accepts, runs one thread per connection, stops gracefully.
//
// The module's words: a *backend* (BlockBackend) is what an *export* serves; a *connection* is one
// client from hello to close; *negotiation* is the handshake (Negotiation, a state machine); a
// *request* is a 28-byte header plus payload, validated into a *command* (RequestRules); the
// *handler* serves a command against the backend and encodes its *reply* (RequestHandler,
// ReplyBuffer); the *engine* is a connection's data path after the handshake (ConnectionEngine).
// A WRITE from the socket: ConnectionEngine.serve() reads a batch into its input buffer →
// RequestHeader.parse → RequestRules.validate → RequestHandler.handle → BlockBackend.write; the
// reply goes out with the batch's one writev in ConnectionEngine.send().

#if canImport(Glibc)
import Glibc
#endif
import Posix

/// How many connections one listening socket serves at once. Every socket has its own slots, so
/// a flood on the TCP port cannot lock the kernel client out of its unix socket; and only a few
/// of a socket's slots may be held by connections still negotiating, so a flood of idle
/// connections cannot take the slots of clients that negotiate.
public struct ConnectionLimits: Sendable, Equatable {
    /// Connections open on the socket, negotiating or in transmission; more are closed right
    /// after accept.
    public var open: Int
    /// How many of them may still be negotiating: a new connection beyond this closes the
    /// socket's oldest negotiating one. Real clients negotiate in milliseconds, so to keep one
    /// from finishing, a flood must open this many connections during its handshake.
    public var negotiating: Int

    public init(open: Int = 256, negotiating: Int = 32) {
        self.open = max(1, open)
        self.negotiating = max(1, min(negotiating, open))
    }
}

public final class NBDServer: @unchecked Sendable {  // @unchecked: mutable state is guarded by `registry`
    public struct Configuration: Sendable {
        public var catalog: ExportCatalog
        /// Replies one connection batches before it sends them (and reads no further until then).
        public var maxInFlight: Int = 64
        /// Slots of each unix listening socket (the kernel client's; 0600, so only its owner
        /// connects) and of each TCP one. A stdio connection takes no slot.
        public var unixConnections = ConnectionLimits()
        public var tcpConnections = ConnectionLimits()
        public var limits = NegotiationLimits()
        /// How long a client may take from accept to entering transmission (every option and
        /// reply included) before it is closed: idle or stalled handshakes cannot hold a
        /// listener's slots. Real clients (the kernel's nbd-client, libnbd, qemu) need milliseconds.
        /// Zero: no limit (for bridges that connect long before their client speaks, such as a
        /// qemu chardev socket feeding a guest's nbd-client). qemu-nbd's --handshake-limit alike.
        public var handshakeLimit: Duration = .seconds(10)
        /// How long stop() waits for clients before cutting them off.
        public var stopGrace: Duration = .seconds(5)
        /// How long a connection that is streaming requests keeps polling its socket after the
        /// last one before it sleeps in read() (zero: never polls). Saves the wake-up of the
        /// next request (~30-50 µs across CPUs on a VM) at the price of CPU spent polling, given
        /// back with sched_yield to anything else runnable. Only after a short wait: a
        /// connection that was idle for over a millisecond sleeps at once.
        public var busyPoll: Duration = .zero
        /// Memory all connections may hold in buffers over 256 KiB (big READ replies, WRITE
        /// payloads over the input buffer): a connection that finds it spent waits, it stops
        /// reading. Share one budget between servers to bound them together (the daemon does).
        public var payloadBudget = PayloadBudget(bytes: 256 << 20)
        /// What clients of unix sockets (and stdio) and of TCP sockets are asked for; anything
        /// but .off needs `tlsServer`.
        public var unixTLS = TLSMode.off
        public var tcpTLS = TLSMode.off
        public var tlsServer: (any TLSServer)?
        public var logger: NBDLogger = .disabled

        public init(catalog: ExportCatalog) {
            self.catalog = catalog
        }
    }

    public let configuration: Configuration
    /// Becomes readable (EOF) when stop() begins; negotiating connections poll it.
    let stopSignalFD: Int32
    private var stopSignalWriteFD: Int32

    private let registry = ConditionLock()
    private var connections: [ObjectIdentifier: Connection] = [:]
    private var listeners: [ListeningSocket] = []
    /// The slots of each listening socket, indexed like `listeners`.
    private var slots: [Slots] = []

    private struct Slots {
        let limits: ConnectionLimits
        var open = 0
        /// Connections still negotiating, oldest first.
        var negotiating: [Connection] = []
    }
    private var acceptorRunning = false
    /// A hand-over is under way (suspend): nothing is accepted and no handshake may end.
    private var suspended = false
    /// A successor in this process owns the sockets (relinquish): the acceptor never closes them.
    private var relinquished = false
    private var stopping = false
    private var stopped = false

    public init(_ configuration: Configuration) throws(NBDError) {
        guard configuration.tlsServer != nil || (configuration.unixTLS == .off && configuration.tcpTLS == .off) else {
            throw .invalidConfiguration("TLS is \(configuration.unixTLS == .off ? configuration.tcpTLS : configuration.unixTLS) but no TLS credentials are configured")
        }
        self.configuration = configuration
        let fds: (read: Int32, write: Int32)
        do { fds = try IO.makePipe() } catch { throw NBDError(error) }
        stopSignalFD = fds.read
        stopSignalWriteFD = fds.write
        // A client that vanishes must cost an EPIPE, not the process.
        signal(SIGPIPE, SIG_IGN)
    }

    deinit {
        close(stopSignalFD)
        if stopSignalWriteFD >= 0 { close(stopSignalWriteFD) }
    }

    /// Number of connections being served right now.
    public var connectionCount: Int { registry.withLock { connections.count } }

    /// Opens every endpoint and starts accepting on them. Call once.
    @discardableResult
    public func listen(on endpoints: [Endpoint]) throws(NBDError) -> [ListeningSocket] {
        var opened: [ListeningSocket] = []
        do throws(NBDError) {
            for e in endpoints { opened.append(try ListeningSocket.open(e)) }
            try registry.withLock { () throws(NBDError) in
                guard !stopping, !acceptorRunning else {
                    throw NBDError.invalidConfiguration("server is already listening or stopped")
                }
                listeners = opened
                slots = opened.map { Slots(limits: $0.isTCP ? configuration.tcpConnections : configuration.unixConnections) }
                acceptorRunning = true
            }
            do { try Threads.spawn(name: "nbd-accept") { [self] in acceptLoop() } } catch { throw NBDError(error) }
        } catch {
            for l in opened { l.closeAndUnlink() }
            registry.withLock {
                listeners = []
                slots = []
                acceptorRunning = false
            }
            throw error
        }
        for l in opened { configuration.logger.info("listening on \(l)") }
        return opened
    }

    /// Serves one already connected client on this thread (stdio mode: input 0, output 1) and
    /// returns when it is done. `closeWhenDone` closes the descriptors afterwards.
    public func serve(input: Int32, output: Int32, closeWhenDone: Bool = false) {
        let c = Connection(server: self, inFD: input, outFD: output, ownsFDs: closeWhenDone, listener: nil,
                           tls: configuration.unixTLS, label: input == output ? "fd \(input)" : "fds \(input)/\(output)")
        guard case .admitted = admit(c) else { return }
        c.run()
        unregister(c)
    }

    /// Stops accepting, answers ERR_SHUTDOWN to further options, finishes the requests in flight
    /// and closes every connection; after `configuration.stopGrace` the rest are cut off.
    /// Returns when all connections are gone.
    public func stop() {
        registry.lock()
        if stopping {
            while !stopped { registry.wait() }
            registry.unlock()
            return
        }
        stopping = true
        close(stopSignalWriteFD)  // wakes the acceptor and negotiating connections
        stopSignalWriteFD = -1
        let current = Array(connections.values)
        registry.unlock()
        configuration.logger.info("stopping: \(current.count) connection(s) open")
        for c in current { c.requestStop() }

        registry.lock()
        let deadline = Clock.deadline(after: configuration.stopGrace.seconds)
        while !connections.isEmpty || acceptorRunning {
            if !registry.wait(until: deadline) { break }
        }
        let late = Array(connections.values)
        registry.unlock()
        for c in late {
            configuration.logger.info("\(c.label): grace period over, cutting the connection")
            c.forceClose()
        }
        registry.lock()
        while !connections.isEmpty || acceptorRunning { registry.wait() }
        registry.unlock()

        registry.lock()
        stopped = true
        registry.broadcast()
        registry.unlock()
        configuration.logger.info("stopped")
    }

    // MARK: - Accepting

    /// What the acceptor has to say about one listening socket: refusals, cuts and failed
    /// accepts are counted and logged once a second at most, never once per connection.
    private struct Report {
        var refused = 0
        var refusedLimit = 0
        var cut = 0
        var cutLimit = 0
        var failed = 0
        var failure = ""
        /// When the last line was logged (monotonic nanoseconds).
        var last = Int.min / 2

        var isEmpty: Bool { refused == 0 && cut == 0 && failed == 0 }

        /// When the counted events are due to be logged; nil if there are none.
        var due: Int? { isEmpty ? nil : last + NBDServer.reportInterval }

        mutating func line(for socket: ListeningSocket) -> String {
            var parts: [String] = []
            func connections(_ n: Int) -> String { n == 1 ? "1 connection" : "\(n) connections" }
            if refused > 0 {
                parts.append("refused \(connections(refused)) on \(socket) in the last second: limit \(refusedLimit) reached")
            }
            if cut > 0 {
                parts.append("closed \(connections(cut)) on \(socket) in the last second that were still negotiating: limit \(cutLimit) negotiating reached")
            }
            if failed > 0 {
                parts.append("accept on \(socket) failed \(failed == 1 ? "once" : "\(failed) times") in the last second: \(failure)")
            }
            refused = 0
            cut = 0
            failed = 0
            return parts.joined(separator: "; ")
        }
    }

    static let reportInterval = 1_000_000_000
    /// How long accepting pauses when the process runs out of descriptors or memory: the
    /// connection stays in the backlog, so accepting again at once would only spin.
    static let resourcePause = 100_000_000

    private func acceptLoop() {
        let sockets = registry.withLock { listeners }
        // The stop signal first: while accepting pauses, only it is watched.
        var fds = [pollfd(fd: stopSignalFD, events: Int16(POLLIN), revents: 0)]
        fds += sockets.map { pollfd(fd: $0.fd, events: Int16(POLLIN), revents: 0) }
        var reports = [Report](repeating: Report(), count: sockets.count)
        var pausedUntil = Int.min
        func report(_ i: Int, now: Int) {
            guard let due = reports[i].due, now >= due else { return }
            reports[i].last = now
            configuration.logger.error(reports[i].line(for: sockets[i]))
        }
        outer: while true {
            var now = Clock.monotonicNanoseconds()
            let paused = now < pausedUntil
            var wake = paused ? pausedUntil : Int.max
            for r in reports { if let due = r.due { wake = min(wake, due) } }
            let timeout: Int32 = wake == .max ? -1 : Int32(clamping: (max(0, wake - now) + 999_999) / 1_000_000)
            for i in fds.indices { fds[i].revents = 0 }
            let r = poll(&fds, nfds_t(paused ? 1 : fds.count), timeout)
            if r < 0 {
                if errno == EINTR { continue }
                configuration.logger.error("poll on listening sockets failed: \(String(cString: strerror(errno)))")
                break
            }
            if fds[0].revents != 0 { break }
            // During a hand-over new clients wait in the backlog, for us or for the successor.
            let goOn = registry.withLock { () -> Bool in
                while (suspended && !stopping) || relinquished { registry.wait() }
                return !stopping
            }
            guard goOn else { break }
            for i in 0..<sockets.count where fds[i + 1].revents != 0 {
                guard let fd = Sockets.accept(sockets[i].fd) else {
                    if errno == EINTR || errno == EAGAIN || errno == ECONNABORTED { continue }
                    if errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM {
                        reports[i].failed += 1
                        reports[i].failure = String(cString: strerror(errno))
                        pausedUntil = Clock.monotonicNanoseconds() + NBDServer.resourcePause
                        continue
                    }
                    configuration.logger.error("accept on \(sockets[i]) failed: \(String(cString: strerror(errno)))")
                    break outer
                }
                switch startConnection(fd: fd, via: sockets[i], index: i) {
                case .admitted(cut: .none), .stopping:
                    break
                case .admitted(cut: .some(_)):
                    reports[i].cut += 1
                    reports[i].cutLimit = sockets[i].isTCP ? configuration.tcpConnections.negotiating
                        : configuration.unixConnections.negotiating
                case .refused(let limit):
                    reports[i].refused += 1
                    reports[i].refusedLimit = limit
                }
            }
            now = Clock.monotonicNanoseconds()
            for i in reports.indices { report(i, now: now) }
        }
        for i in reports.indices where !reports[i].isEmpty {
            configuration.logger.error(reports[i].line(for: sockets[i]))
        }
        for l in sockets { l.closeAndUnlink() }
        registry.withLock {
            listeners = []
            acceptorRunning = false
            registry.broadcast()
        }
    }

    private func startConnection(fd: Int32, via socket: ListeningSocket, index: Int) -> Admission {
        if socket.isTCP { IO.setNoDelay(fd) }
        let c = Connection(server: self, inFD: fd, outFD: fd, ownsFDs: true, listener: index,
                           tls: socket.isTCP ? configuration.tcpTLS : configuration.unixTLS, label: "connection \(fd) on \(socket)")
        let admission = admit(c)
        guard case .admitted(let cut) = admission else {
            close(fd)
            return admission
        }
        cut?.cutNegotiation()
        if let error = startThread(c) { configuration.logger.error("cannot start a thread for a new connection: \(error)") }
        return admission
    }

    /// Runs an admitted connection on its own thread; if none can be started it is unregistered,
    /// its socket closed, and the error returned.
    private func startThread(_ c: Connection) -> PosixError? {
        do {
            try Threads.spawn(name: "nbd-conn") { [self] in
                c.run()
                unregister(c)
            }
            return nil
        } catch {
            unregister(c)
            close(c.inFD)
            return error
        }
    }

    enum Admission {
        /// Registered; `cut` is the negotiating connection it displaces (close it).
        case admitted(cut: Connection?)
        /// The listening socket's slots are all taken.
        case refused(limit: Int)
        case stopping
    }

    /// Registers a connection in a slot of its listening socket (none for stdio).
    private func admit(_ c: Connection) -> Admission {
        registry.withLock {
            guard !stopping, !suspended else { return .stopping }
            var cut: Connection?
            if let i = c.listener {
                let limits = slots[i].limits
                guard slots[i].open < limits.open else { return .refused(limit: limits.open) }
                if slots[i].negotiating.count >= limits.negotiating {
                    let oldest = slots[i].negotiating.removeFirst()
                    oldest.phase = .cut
                    cut = oldest
                }
                slots[i].open += 1
                slots[i].negotiating.append(c)
            }
            connections[ObjectIdentifier(c)] = c
            return .admitted(cut: cut)
        }
    }

    /// The connection finished negotiating: its slot no longer counts as negotiating. False if
    /// it was cut meanwhile (then it must close).
    func enterTransmission(_ c: Connection) -> Bool {
        registry.withLock {
            guard c.phase == .negotiating, !suspended else { return false }
            c.phase = .transmitting
            if let i = c.listener, let k = slots[i].negotiating.firstIndex(where: { $0 === c }) {
                slots[i].negotiating.remove(at: k)
            }
            return true
        }
    }

    func registryPhase(of c: Connection) -> Connection.Phase { registry.withLock { c.phase } }

    private func unregister(_ c: Connection) {
        registry.withLock {
            connections[ObjectIdentifier(c)] = nil
            if let i = c.listener, i < slots.count {
                slots[i].open -= 1
                if c.phase == .negotiating, let k = slots[i].negotiating.firstIndex(where: { $0 === c }) {
                    slots[i].negotiating.remove(at: k)
                }
            }
            registry.broadcast()
        }
    }

    // MARK: - Hand-over (Handover.swift)

    /// Stops the server between requests for a successor process: nothing more is accepted (new
    /// clients wait in the listening sockets' backlogs), connections still negotiating are
    /// closed (their clients reconnect), and every connection in transmission answers what it
    /// has read and parks. Returns what a successor needs; `resume()` undoes it. Refused, with
    /// nothing changed, while a connection uses TLS, or when a connection does not park in
    /// `limit` (then the server resumes).
    public func suspend(within limit: Duration) throws(NBDError) -> SuspendedServer {
        registry.lock()
        guard !stopping, !suspended else {
            registry.unlock()
            throw .invalidConfiguration("the server is stopping")
        }
        let live = Array(connections.values)
        if let t = live.first(where: { $0.phase == .transmitting && $0.usesTLS }) {
            registry.unlock()
            throw .invalidConfiguration("\(t.label) uses TLS, and a TLS session cannot be handed to another process")
        }
        suspended = true
        let listening = listeners
        let transmitting = live.filter { $0.phase == .transmitting }
        let negotiating = live.filter { $0.phase != .transmitting }
        registry.unlock()
        for c in negotiating { c.forceClose() }
        let deadline = Clock.deadline(after: limit.seconds)
        var parked: [SuspendedConnection] = []
        for c in transmitting {
            c.gate.request()
            switch c.gate.waitSettled(until: deadline) {
            case .parked(let unread)?:
                if let s = c.suspended(unread: unread) { parked.append(s) }
            case .ended?, .running?:
                break
            case nil:
                resume()
                throw .invalidConfiguration("\(c.label) did not stop between requests within \(limit)")
            }
        }
        // The closed handshakes leave the registry (their threads do not wait on a peer).
        registry.withLock {
            while connections.values.contains(where: { $0.phase != .transmitting }) {
                if !registry.wait(until: deadline) { break }
            }
        }
        return SuspendedServer(listeners: listening.map { SuspendedListener(fd: $0.fd, ownedPath: $0.ownedPath) },
                               connections: parked)
    }

    /// After a successful hand-over within this process (tests): the successor owns the sockets
    /// now, so this server must never touch them again. stop() returns at once; the parked
    /// connection threads stay parked.
    public func relinquish() {
        registry.withLock {
            relinquished = true
            stopping = true
            stopped = true
        }
    }

    /// After a failed hand-over: accept again and let every parked connection go on.
    public func resume() {
        let live = registry.withLock {
            suspended = false
            registry.broadcast()
            return Array(connections.values)
        }
        for c in live { c.gate.resume() }
    }

    /// A successor takes over a predecessor's parked connections (after `listen` on its
    /// listening sockets, in the same order). Each goes on in transmission on its own thread;
    /// one whose export is gone is closed. Returns a line for each connection that could not be
    /// resumed.
    public func adopt(_ handed: [SuspendedConnection]) -> [String] {
        var problems: [String] = []
        for h in handed {
            guard let export = configuration.catalog.lookup(h.exportName) else {
                close(h.fd)
                problems.append("connection \(h.fd): export '\(h.exportName)' is gone, closed")
                continue
            }
            var h = h
            if let i = h.listener, i >= registry.withLock({ slots.count }) { h.listener = nil }
            let session = Session(export: export, structuredReplies: h.structuredReplies, metaContextID: h.metaContextID)
            let c = Connection(server: self, resuming: h, session: session, label: "connection \(h.fd) (handed over)")
            guard case .admitted(let cut) = admit(c), enterTransmission(c) else {
                close(h.fd)
                problems.append("connection \(h.fd): the server is stopping, closed")
                continue
            }
            cut?.cutNegotiation()
            if let error = startThread(c) { problems.append("connection \(h.fd): cannot start its thread: \(error)") }
        }
        return problems
    }
}
