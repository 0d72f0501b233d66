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

public final class NBDServer: @unchecked Sendable {  // @unchecked: mutable state is guarded by `registry`
    public struct Configuration: Sendable {
        public var catalog: ExportCatalog
        /// Replies one connection batches before it sends them (and reads no further until then).
        public var maxInFlight: Int = 64
        /// Connections served at once; more are closed right after accept.
        public var maxConnections: Int = 256
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
    private var acceptorRunning = false
    private var stopping = false
    private var stopped = false

    public init(_ configuration: Configuration) throws(NBDError) {
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
                acceptorRunning = true
            }
            do { try Threads.spawn(name: "nbd-accept") { [self] in acceptLoop() } } catch { throw NBDError(error) }
        } catch {
            for l in opened { l.closeAndUnlink() }
            registry.withLock {
                listeners = []
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
        let c = Connection(server: self, inFD: input, outFD: output, ownsFDs: closeWhenDone,
                           label: input == output ? "fd \(input)" : "fds \(input)/\(output)")
        guard register(c) else { return }
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

    private func acceptLoop() {
        let sockets = registry.withLock { listeners }
        var fds = sockets.map { pollfd(fd: $0.fd, events: Int16(POLLIN), revents: 0) }
        fds.append(pollfd(fd: stopSignalFD, events: Int16(POLLIN), revents: 0))
        outer: while true {
            let r = poll(&fds, nfds_t(fds.count), -1)
            if r < 0 {
                if errno == EINTR { continue }
                configuration.logger.error("poll on listening sockets failed: \(String(cString: strerror(errno)))")
                break
            }
            if fds[fds.count - 1].revents != 0 { break }
            for i in 0..<sockets.count where fds[i].revents != 0 {
                guard let fd = Sockets.accept(sockets[i].fd) else {
                    if errno == EINTR || errno == EAGAIN || errno == ECONNABORTED { continue }
                    if errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM {
                        configuration.logger.error("accept: \(String(cString: strerror(errno)))")
                        continue
                    }
                    configuration.logger.error("accept on \(sockets[i]) failed: \(String(cString: strerror(errno)))")
                    break outer
                }
                if sockets[i].isTCP { IO.setNoDelay(fd) }
                startConnection(fd: fd, via: sockets[i])
            }
        }
        for l in sockets { l.closeAndUnlink() }
        registry.withLock {
            listeners = []
            acceptorRunning = false
            registry.broadcast()
        }
    }

    private func startConnection(fd: Int32, via socket: ListeningSocket) {
        let c = Connection(server: self, inFD: fd, outFD: fd, ownsFDs: true, label: "connection \(fd) on \(socket)")
        guard register(c) else {
            close(fd)
            return
        }
        do {
            try Threads.spawn(name: "nbd-conn") { [self] in
                c.run()
                unregister(c)
            }
        } catch {
            configuration.logger.error("cannot start a thread for a new connection: \(error)")
            unregister(c)
            close(fd)
        }
    }

    private func register(_ c: Connection) -> Bool {
        registry.withLock {
            guard !stopping else { return false }
            guard connections.count < configuration.maxConnections else {
                configuration.logger.error("refusing a connection: \(configuration.maxConnections) already open")
                return false
            }
            connections[ObjectIdentifier(c)] = c
            return true
        }
    }

    private func unregister(_ c: Connection) {
        registry.withLock {
            connections[ObjectIdentifier(c)] = nil
            registry.broadcast()
        }
    }
}
