// sd_notify(3): which messages may be dropped when the manager's queue is full, and which wait.
import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif
import Posix
@testable import ZramDaemon

@_silgen_name("gettid")
private func c_gettid() -> Int32

/// sendmsg(2)'s system call number, as /proc/PID/task/TID/syscall shows it.
#if arch(x86_64)
private let sendmsgNumber = 46
#elseif arch(arm64)
private let sendmsgNumber = 211
#endif

/// One value handed between threads.
private final class Handoff<T: Sendable>: @unchecked Sendable {   // @unchecked: guarded by `lock`
    private var lock = pthread_mutex_t()
    private var value: T?
    init() { pthread_mutex_init(&lock, nil) }
    deinit { pthread_mutex_destroy(&lock) }
    func put(_ v: T) { pthread_mutex_lock(&lock); value = v; pthread_mutex_unlock(&lock) }
    func get() -> T? { pthread_mutex_lock(&lock); defer { pthread_mutex_unlock(&lock) }; return value }
}

@Suite("sd_notify under a full queue")
struct NotifyTests {
    /// The number of the system call thread `tid` of this process is blocked in, if any.
    private static func blockedSyscall(_ tid: Int32) -> Int? {
        guard let text = try? FileSystem.readText("/proc/self/task/\(tid)/syscall"),
              let first = text.split(separator: " ").first else { return nil }
        return Int(first)
    }

    @Test("READY=1 waits for room in a queue the fd-store messages filled; a STATUS= is dropped instead")
    func readyWaitsForRoom() throws {
        let dir = try TempDir()
        let listener = try NotifyListener(path: dir.path + "/notify.sock")
        let notifier = SystemdNotifier(socketPath: listener.path, stateChangeWait: 60)
        let queueLength = Int((try? FileSystem.readText("/proc/sys/net/unix/max_dgram_qlen")).flatMap { Int($0.filter(\.isNumber)) } ?? 10)
        // The fd-store messages a start sends, one per state part, fill the queue (the kernel
        // takes one more than max_dgram_qlen)...
        let memfd = try SharedMemory.file(name: "notify-test", holding: [1, 2, 3])
        defer { close(memfd) }
        var stored = 0
        while stored < queueLength + 1, notifier.notify("FDSTORE=1\nFDNAME=part\(stored)", descriptors: [memfd]) { stored += 1 }
        try #require(stored == queueLength + 1)
        // ...a periodic message is dropped at once rather than freezing the control loop...
        notifier.notifyUnlessFull("STATUS=dropped")
        // ...and READY=1 waits until the manager reads.
        let tid = Handoff<Int32>(), sent = Handoff<Bool>()
        nonisolated(unsafe) let sender = notifier   // used by that thread alone until it is done
        try Threads.spawn(name: "notify-ready") {
            tid.put(c_gettid())
            sent.put(sender.notify("READY=1"))
        }
        let blocked = waitUntil(30) {
            guard let t = tid.get() else { return false }
            return Self.blockedSyscall(t) == sendmsgNumber || sent.get() != nil
        }
        #expect(blocked && sent.get() == nil, "READY=1 is waiting in sendmsg for room, not dropped")
        let received = listener.messages(until: "READY=1", timeout: 10_000)
        #expect(received.last == "READY=1", "READY=1 arrives after the fd-store messages: \(received)")
        #expect(!received.contains("STATUS=dropped"))
        #expect(waitUntil(30) { sent.get() != nil } && sent.get() == true)
    }
}
