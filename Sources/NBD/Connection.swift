// One client from hello to close, on its own thread: drives the Negotiation on the socket (the
// machine decides, this file does the I/O and the logging), then hands the socket to a
// ConnectionEngine.

#if canImport(Glibc)
import Glibc
#endif
import Posix

final class Connection: @unchecked Sendable {  // @unchecked: mutable fields are guarded by `lock`
    let server: NBDServer
    let inFD: Int32
    let outFD: Int32
    let ownsFDs: Bool
    let label: String
    /// Index of the listening socket whose slot this connection holds (nil: stdio).
    let listener: Int?
    /// What the listening socket asks of the client.
    let tlsMode: TLSMode
    /// Set at STARTTLS: from then on every byte goes through it. Used by the connection's thread only.
    private var tls: (any TLSChannel)?
    /// Where the connection is, for its listener's slots; guarded by the server's registry lock.
    var phase = Phase.negotiating

    enum Phase {
        case negotiating, transmitting
        /// A newer connection needed its negotiating slot: it ends without serving.
        case cut
    }
    private let log: NBDLogger

    /// Where a hand-over parks the engine (NBDServer.suspend).
    let gate = PauseGate()
    /// A predecessor's connection, resumed in transmission without a handshake.
    private let resumed: (session: Session, unread: [UInt8])?
    /// What the client negotiated, once in transmission; guarded by `lock`.
    private var session: Session?

    private let lock = ConditionLock()
    private var transmitting = false
    private var stopRequested = false
    private var closed = false

    init(server: NBDServer, inFD: Int32, outFD: Int32, ownsFDs: Bool, listener: Int?, tls: TLSMode, label: String) {
        self.server = server
        self.inFD = inFD
        self.outFD = outFD
        self.ownsFDs = ownsFDs
        self.listener = listener
        tlsMode = tls
        self.label = label
        log = server.configuration.logger
        resumed = nil
    }

    /// A connection a predecessor process handed over, in transmission already.
    init(server: NBDServer, resuming handed: SuspendedConnection, session: Session, label: String) {
        self.server = server
        inFD = handed.fd
        outFD = handed.fd
        ownsFDs = true
        listener = handed.listener
        tlsMode = .off
        self.label = label
        log = server.configuration.logger
        resumed = (session, handed.unread)
    }

    /// The connection as a successor resumes it, if it is in transmission without TLS (a TLS
    /// session's keys cannot leave this process); `unread` comes from the parked engine.
    func suspended(unread: [UInt8]) -> SuspendedConnection? {
        lock.withLock {
            guard let session, tls == nil, !closed else { return nil }
            return SuspendedConnection(fd: inFD, exportName: session.export.name, structuredReplies: session.structuredReplies,
                                       metaContextID: session.metaContextID, unread: unread, listener: listener)
        }
    }

    /// In transmission through TLS (known once the session began).
    var usesTLS: Bool { lock.withLock { session != nil && tls != nil } }

    func run() {
        if resumed == nil { log.info("\(label): new connection") }
        let reason: String
        if let session = resumed?.session ?? negotiate() {
            log.info("\(label): serving export '\(session.export.name)' (size \(session.size), flags 0x\(String(session.flags.rawValue, radix: 16)), \(session.structuredReplies ? "structured" : "simple") replies\(tls == nil ? "" : ", TLS"))")
            lock.withLock {
                self.session = session
                transmitting = true
                // stop() came while we negotiated: end after this GO like any other connection.
                if stopRequested { _ = shutdown(inFD, Int32(SHUT_RD)) }
            }
            IO.enlargeUnixSendBuffer(outFD)
            let engine = ConnectionEngine(inFD: inFD, outFD: outFD, session: session,
                                          maxInFlight: server.configuration.maxInFlight,
                                          busyPoll: server.configuration.busyPoll,
                                          payloadBudget: server.configuration.payloadBudget, tls: tls,
                                          gate: tls == nil ? gate : nil, unread: resumed?.unread ?? [], log: log)
            gate.engineStarted()
            reason = engine.run()
            gate.finished()
        } else {
            reason = server.registryPhase(of: self) == .cut ? "cut while negotiating: newer connections needed the slot"
                : "negotiation ended"
        }
        log.info("\(label): closing: \(reason)")
        tls?.close()
        tls = nil
        lock.withLock {
            closed = true
            if ownsFDs {
                close(inFD)
                if outFD != inFD { close(outFD) }
            }
        }
    }

    /// Graceful stop: negotiating clients get ERR_SHUTDOWN to their next option; transmitting ones
    /// stop being read, have their in-flight requests answered, and are closed.
    func requestStop() {
        lock.withLock {
            stopRequested = true
            if transmitting && !closed { _ = shutdown(inFD, Int32(SHUT_RD)) }
        }
    }

    /// A newer connection takes this one's negotiating slot: fail its reads and writes (the
    /// server has marked it cut, so it cannot enter transmission any more).
    func cutNegotiation() { forceClose() }

    /// The grace period is over: fail every pending read and write.
    func forceClose() {
        lock.withLock {
            guard !closed else { return }
            _ = shutdown(inFD, Int32(SHUT_RDWR))
            if outFD != inFD { _ = shutdown(outFD, Int32(SHUT_RDWR)) }
        }
    }

    // MARK: - Negotiation I/O

    private func negotiate() -> Session? {
        // The whole handshake, reads and writes, must end by this deadline: a client that
        // connects and says nothing (or never reads our replies) holds a thread and a slot of
        // its listener only this long. No deadline when the limit is zero.
        let limit = server.configuration.handshakeLimit
        let deadline = limit > .zero ? Clock.deadline(after: limit.seconds) : nil
        guard send(Negotiation.hello, before: deadline) else { return nil }
        var negotiation = Negotiation(catalog: server.configuration.catalog, limits: server.configuration.limits, tls: tlsMode)
        var stopping = false
        var graceDeadline: timespec?
        var next = Negotiation.Next.readClientFlags
        while true {
            let step: Negotiation.Step
            switch next {
            case .transmission(let session):
                return session
            case .close(let reason):
                log.info("\(label): closing during negotiation: \(reason)")
                return nil
            case .startTLS:
                guard let channel = startTLS(until: deadline) else { return nil }
                step = negotiation.tlsEstablished(peerNames: channel.peerNames)
            case .readClientFlags, .readOptionHeader, .readOptionPayload:
                guard let count = next.byteCount,
                      let bytes = receive(count, deadline, &negotiation, &stopping, &graceDeadline) else { return nil }
                step = negotiation.receive(bytes[...])
            }
            for line in step.log { log.debug(line) }
            // In transmission before the client hears so: a hand-over (NBDServer.suspend) that
            // finds this connection negotiating may close it, since its client has no GO reply yet.
            if case .transmission = step.next, !server.enterTransmission(self) { return nil }
            if !step.reply.isEmpty && !send(step.reply, before: deadline) {
                log.info("\(label): client went away during negotiation")
                return nil
            }
            next = step.next
        }
    }

    /// The server side of the TLS handshake; the channel, or nil (logged) if it failed.
    private func startTLS(until deadline: timespec?) -> (any TLSChannel)? {
        // NBDServer.init refuses a TLS mode without a TLSServer.
        guard let tlsServer = server.configuration.tlsServer else { return nil }
        switch tlsServer.handshake(inFD: inFD, outFD: outFD, until: deadline) {
        case .failure(let why):
            log.info("\(label): TLS handshake failed: \(why)")
            return nil
        case .success(let channel):
            let who = channel.peerNames.first.map { " as '\($0)'" } ?? ""
            log.info("\(label): TLS\(who): \(channel.summary)")
            tls = channel
            return channel
        }
    }

    /// Reads exactly `count` bytes while watching for a server stop; nil on EOF, error, or when
    /// the handshake deadline or the grace period after a stop runs out.
    private func receive(_ count: Int, _ deadline: timespec?, _ negotiation: inout Negotiation,
                         _ stopping: inout Bool, _ graceDeadline: inout timespec?) -> [UInt8]? {
        var bytes = [UInt8](repeating: 0, count: count)
        var got = 0
        while got < count {
            var fds = [pollfd(fd: inFD, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: server.stopSignalFD, events: Int16(POLLIN), revents: 0)]
            let watched: nfds_t = stopping ? 1 : 2
            let timeout = Clock.earliest(deadline, graceDeadline).map(Clock.millisecondsUntil) ?? -1
            // Bytes TLS has decrypted already are not in the socket for poll to see.
            let r = tls?.hasBufferedInput == true ? 1 : poll(&fds, watched, timeout)
            if r < 0 {
                if errno == EINTR { continue }
                return nil
            }
            if r == 0 {
                if let deadline, Clock.millisecondsUntil(deadline) == 0 {
                    log.info("\(label): not in transmission within the handshake limit (\(server.configuration.handshakeLimit))")
                } else {
                    log.info("\(label): negotiation still open after the stop grace period")
                }
                return nil
            }
            if watched == 2 && fds[1].revents != 0 {
                stopping = true
                for line in negotiation.beginShutdown().log { log.debug(line) }
                graceDeadline = Clock.deadline(after: server.configuration.stopGrace.seconds)
                continue
            }
            let n = bytes.withUnsafeMutableBytes { raw in
                guard let tls else { return read(inFD, raw.baseAddress! + got, count - got) }
                return tls.read(into: raw.baseAddress! + got, count: count - got, until: Clock.earliest(deadline, graceDeadline))
            }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return nil }
            got += n
        }
        return bytes
    }

    /// Writes all of `bytes` unless the client stops reading until `deadline` passes; false then
    /// or on error. Sockets are written without blocking; anything else (stdio) blocks.
    private func send(_ bytes: [UInt8], before deadline: timespec?) -> Bool {
        bytes.withUnsafeBytes { raw in
            if let tls {
                var iov = iovec(iov_base: UnsafeMutableRawPointer(mutating: raw.baseAddress), iov_len: raw.count)
                return tls.write(&iov, count: 1, until: deadline)
            }
            var done = 0
            while done < raw.count {
                let n = Glibc.send(outFD, raw.baseAddress! + done, raw.count - done, Int32(MSG_DONTWAIT | MSG_NOSIGNAL))
                if n > 0 {
                    done += n
                    continue
                }
                if n < 0 && errno == ENOTSOCK {
                    return IO.writeFully(outFD, raw.baseAddress! + done, raw.count - done)
                }
                if n < 0 && errno == EINTR { continue }
                guard n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) else { return false }
                var p = pollfd(fd: outFD, events: Int16(POLLOUT), revents: 0)
                let r = poll(&p, 1, deadline.map(Clock.millisecondsUntil) ?? -1)
                if r < 0 && errno == EINTR { continue }
                if r == 0 {
                    log.info("\(label): the client read no replies within the handshake limit (\(server.configuration.handshakeLimit))")
                    return false
                }
                if r < 0 { return false }
            }
            return true
        }
    }
}
