// Handing live connections to a successor process (issue 15): a connection in transmission is
// stopped between requests (every request read has been answered), and what a successor needs to
// go on reading from the same socket is what the client negotiated plus the bytes of a request
// that had only partly arrived. NBDServer.suspend/resume/adopt drive it (Server.swift).
//
// A connection sleeps in read(2) while its client is quiet, so the server wakes it with a
// signal (SIGUSR2, installed without SA_RESTART: the read fails with EINTR, the engine sees the
// request and parks). Nothing is added to the data path: the flag is read only when a read
// is about to start or was interrupted.

#if canImport(Glibc)
import Glibc
#endif
import Posix
import Synchronization

/// A connection in transmission, stopped between requests, as a successor resumes it.
public struct SuspendedConnection: Sendable, Equatable {
    /// The socket (both directions).
    public var fd: Int32
    public var exportName: String
    public var structuredReplies: Bool
    public var metaContextID: UInt32?
    /// Bytes read from the socket that are not a whole request yet: the successor parses them first.
    public var unread: [UInt8]
    /// Index of the listening socket whose slot it holds (nil: none).
    public var listener: Int?

    public init(fd: Int32, exportName: String, structuredReplies: Bool, metaContextID: UInt32?, unread: [UInt8], listener: Int?) {
        self.fd = fd
        self.exportName = exportName
        self.structuredReplies = structuredReplies
        self.metaContextID = metaContextID
        self.unread = unread
        self.listener = listener
    }
}

/// A listening socket as a successor takes it over.
public struct SuspendedListener: Sendable, Equatable {
    public var fd: Int32
    /// The unix socket path we created (the successor unlinks it at stop); nil for TCP and for
    /// sockets systemd owns.
    public var ownedPath: String?

    public init(fd: Int32, ownedPath: String?) {
        self.fd = fd
        self.ownedPath = ownedPath
    }
}

/// Everything of a server that a successor takes over: its listening sockets, in order (a
/// connection's `listener` indexes them), and its parked connections.
public struct SuspendedServer: Sendable {
    public var listeners: [SuspendedListener]
    public var connections: [SuspendedConnection]
}

/// Parks one connection's engine between requests for a hand-over.
final class PauseGate: @unchecked Sendable {   // @unchecked: `state` and `thread` are guarded by `lock`
    enum State {
        case running
        /// Stopped between requests, holding the bytes of the next, partial request.
        case parked([UInt8])
        /// The engine ended (the client went away) before it parked.
        case ended
    }

    private let lock = ConditionLock()
    /// Read by the engine before every blocking read: set from suspend until resume.
    private let requestedFlag = Atomic<Bool>(false)
    private var state = State.running
    private var thread: pthread_t?

    /// SIGUSR2 interrupts a connection's blocking read; installed once, before the first gate.
    private static let interruptInstalled: Bool = {
        var action = sigaction()
        action.__sigaction_handler.sa_handler = { _ in }
        sigemptyset(&action.sa_mask)
        action.sa_flags = 0   // no SA_RESTART: the read returns EINTR
        return sigaction(SIGUSR2, &action, nil) == 0
    }()

    init() { _ = PauseGate.interruptInstalled }

    var requested: Bool { requestedFlag.load(ordering: .acquiring) }

    /// The engine's thread, from now until `finished`. It may have inherited a mask that blocks
    /// the signal (threads of Swift's concurrency pool do): unblocked here.
    func engineStarted() {
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGUSR2)
        pthread_sigmask(SIG_UNBLOCK, &set, nil)
        lock.withLock { thread = pthread_self() }
    }

    func finished() {
        lock.withLock {
            thread = nil
            if case .running = state { state = .ended }
            lock.broadcast()
        }
    }

    /// The engine: nothing is in flight; wait here until resumed (a successful hand-over execs
    /// over the whole process, so it never returns then).
    func park(unread: [UInt8]) {
        lock.withLock {
            state = .parked(unread)
            lock.broadcast()
            while requestedFlag.load(ordering: .acquiring) { lock.wait() }
            state = .running
        }
    }

    /// Asks the engine to park. False if it has already ended.
    func request() {
        requestedFlag.store(true, ordering: .releasing)
    }

    /// Waits until the engine parked or ended, interrupting its read every few milliseconds (a
    /// signal sent just before it entered read() is lost). The state, or nil at the deadline.
    func waitSettled(until deadline: timespec) -> State? {
        lock.withLock {
            while true {
                switch state {
                case .parked, .ended: return state
                case .running: break
                }
                if let t = thread { pthread_kill(t, SIGUSR2) }
                let soon = Clock.deadline(after: 0.002)
                let d = Clock.earliest(soon, deadline) ?? deadline
                _ = lock.wait(until: d)
                if Clock.millisecondsUntil(deadline) == 0, case .running = state { return nil }
            }
        }
    }

    func resume() {
        lock.withLock {
            requestedFlag.store(false, ordering: .releasing)
            lock.broadcast()
        }
    }
}
