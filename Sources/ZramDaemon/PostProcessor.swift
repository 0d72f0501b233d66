// What the kernel leaves to userspace: when to write back and recompress. Per device, from its spec:
//   writeback-idle-after = DURATION   every minute (or DURATION, if shorter) mark the pages not
//                                     read or written for DURATION idle, and write them back
//   writeback-on-pressure = yes       when PSI reports a memory stall, do the same at once (the
//                                     age is writeback-idle-after, or 5 minutes), at most every 10 s
//   writeback-daily-limit = SIZE      a budget that wears the SSD less: zram's writeback_limit,
//                                     enabled and refilled to SIZE every 24 hours
//   recompress-idle-after = DURATION  as writeback-idle-after, with `recompress ARGS` (recompress-
//   recompress-on-pressure = yes      arguments, default type=idle) instead of writeback
// One thread runs them, on the stores directly (they are thread-safe), so the control loop, its
// watchdog ping and the stats never wait for a disk or a slow compressor.
#if canImport(Glibc)
import Glibc
#endif
import Posix

final class PostProcessor: @unchecked Sendable {   // @unchecked: the state is guarded by `lock`
    /// One device's policy and when its parts are due (monotonic seconds).
    private struct Entry {
        let name: String
        let store: any PageStore
        let policy: DeviceSpec.PostProcessingPolicy
        var writeback: IdleSchedule
        var recompress: IdleSchedule
        var nextRefill: Double
    }

    /// When an idle-driven job (writeback, recompression) is next due: every `period(age)`, and
    /// on memory pressure at most every `pressureInterval`.
    private struct IdleSchedule {
        let age: UInt32?
        let onPressure: Bool
        var next: Double
        var lastPressure = -Double.infinity

        init(age: UInt32?, onPressure: Bool, now: Double) {
            self.age = age
            self.onPressure = onPressure
            next = age == nil ? .infinity : now + PostProcessor.period(age)
        }

        /// The age to mark idle and why, if the job is due now (and when it is due next).
        mutating func due(now: Double, pressure: Bool) -> (age: UInt32, reason: String)? {
            if pressure, onPressure, now - lastPressure >= PostProcessor.pressureInterval {
                lastPressure = now
                return (age ?? PostProcessor.pressureAge, "memory pressure")
            }
            guard let age, now >= next else { return nil }
            next = now + PostProcessor.period(age)
            return (age, "idle for \(age) s")
        }
    }

    static let pressureAge: UInt32 = 300
    static let pressureInterval = 10.0
    static let day = 86_400.0

    private let lock = ConditionLock()
    private var entries: [Entry] = []
    private var pressured = false
    private var stopped = false
    private let log: Log
    /// Runs after each policy run, to publish the device's stats (takes the host lock).
    private let published: @Sendable (String) -> Void

    init(log: Log, published: @escaping @Sendable (String) -> Void) {
        self.log = log
        self.published = published
    }

    /// The period of a device's idle check: a minute, or the age itself if shorter.
    static func period(_ age: UInt32?) -> Double { min(60, Double(max(1, age ?? 60))) }

    /// Starts (or replaces) the policy of device `name`; a policy with nothing in it removes it.
    /// A daily budget is filled at once, so the device starts with it.
    func register(_ name: String, store: any PageStore, policy: DeviceSpec.PostProcessingPolicy) {
        if let pages = policy.dailyLimitPages { run(name, store, .refill(pages), publish: false) }
        lock.withLock {
            entries.removeAll { $0.name == name }
            guard policy.isActive else { return }
            let now = SystemInfo.now()
            entries.append(Entry(name: name, store: store, policy: policy,
                                 writeback: IdleSchedule(age: policy.idleAfter, onPressure: policy.onPressure, now: now),
                                 recompress: IdleSchedule(age: policy.recompressIdleAfter, onPressure: policy.recompressOnPressure, now: now),
                                 nextRefill: now + Self.day))
            lock.signal()
        }
    }

    func unregister(_ name: String) {
        lock.withLock { entries.removeAll { $0.name == name } }
    }

    /// PSI reported a memory stall.
    func pressure() {
        lock.withLock {
            pressured = true
            lock.signal()
        }
    }

    var needsPressureEvents: Bool { lock.withLock { entries.contains { $0.writeback.onPressure || $0.recompress.onPressure } } }

    func start() throws(DaemonError) {
        do { try Threads.spawn(name: "zramnbd-wb") { [self] in loop() } } catch {
            throw .errno("start the writeback policy thread: \(error)")
        }
    }

    func stop() {
        lock.withLock {
            stopped = true
            lock.signal()
        }
    }

    private enum Job {
        case refill(UInt64)
        case writeback(UInt32, reason: String)
        case recompress(UInt32, arguments: String, reason: String)
    }

    private func loop() {
        while true {
            // Pick what is due under the lock, run it without.
            var jobs: [(String, any PageStore, Job)] = []
            lock.withLock {
                while !stopped {
                    let now = SystemInfo.now()
                    let pressure = pressured
                    pressured = false
                    for i in entries.indices {
                        let p = entries[i].policy
                        if let budget = p.dailyLimitPages, now >= entries[i].nextRefill {
                            jobs.append((entries[i].name, entries[i].store, .refill(budget)))
                            entries[i].nextRefill = now + Self.day
                        }
                        if let (age, reason) = entries[i].writeback.due(now: now, pressure: pressure) {
                            jobs.append((entries[i].name, entries[i].store, .writeback(age, reason: reason)))
                        }
                        if let (age, reason) = entries[i].recompress.due(now: now, pressure: pressure) {
                            jobs.append((entries[i].name, entries[i].store, .recompress(age, arguments: p.recompressArguments, reason: reason)))
                        }
                    }
                    if !jobs.isEmpty { return }
                    let next = entries.map { min($0.writeback.next, $0.recompress.next, $0.policy.dailyLimitPages == nil ? .infinity : $0.nextRefill) }.min() ?? .infinity
                    if next == .infinity { lock.wait() } else { _ = lock.wait(until: Clock.deadline(after: next - now)) }
                }
            }
            if jobs.isEmpty { return }   // stopped
            for (name, store, job) in jobs { run(name, store, job) }
        }
    }

    /// Runs one job; `publish` afterwards unless it runs inside a host call (registration).
    private func run(_ name: String, _ store: any PageStore, _ job: Job, publish: Bool = true) {
        switch job {
        case .refill(let pages):
            do {
                _ = try store.writeAttribute("writeback_limit", "\(pages)")
                _ = try store.writeAttribute("writeback_limit_enable", "1")
                log.info("\(name): daily writeback budget refilled to \(pages) pages (\(ByteSize.human(pages * 4096)))")
            } catch {
                log.warning("\(name): cannot refill the writeback budget: \(error)")
            }
        case .writeback(let age, let reason):
            runIdle(name, store, age, "writeback", "type=idle", quietPrefix: "wrote back 0 pages", reason: reason)
        case .recompress(let age, let arguments, let reason):
            // Recompressed objects leave holes in their old zspages: compaction gives them back
            // (measured: without it lz4 + zstd recompression keeps 12 % more than zstd alone).
            if runIdle(name, store, age, "recompress", arguments, quietPrefix: "recompressed 0 of", reason: reason) {
                do {
                    let freed = try store.compact()
                    if freed > 0 { log.info("\(name): compaction after recompression freed \(freed) pages") }
                } catch {
                    log.info("\(error)")
                }
            }
        }
        if publish { published(name) }
    }

    /// Marks pages idle for `age` seconds, then writes `attribute` (writeback or recompress),
    /// logging its sentence unless it starts with `quietPrefix` (a check runs every minute).
    /// True if it did something (its sentence was logged).
    @discardableResult
    private func runIdle(_ name: String, _ store: any PageStore, _ age: UInt32, _ attribute: String, _ arguments: String,
                         quietPrefix: String, reason: String) -> Bool {
        do {
            _ = try store.writeAttribute("idle", "\(age)")
            let lines = try store.writeAttribute(attribute, arguments)
            guard let line = lines.first, !line.hasPrefix(quietPrefix) else { return false }
            log.info("\(name): \(reason): \(line)")
            return true
        } catch {
            // The store's message starts with the device's name already.
            let text = error.description
            log.info("\(name): \(reason): " + (text.hasPrefix(name + ": ") ? String(text.dropFirst(name.count + 2)) : text))
            return false
        }
    }
}
