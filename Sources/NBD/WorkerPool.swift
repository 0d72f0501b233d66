import Posix

/// Threads shared by every connection of a server that run requests handed over by the readers
/// (execution models `.workers` and `.hybrid`).
final class WorkerPool: @unchecked Sendable {  // @unchecked: all state is guarded by `lock`
    private let lock = ConditionLock()
    private var queue: [Job?]
    private var head = 0
    private var count = 0
    private var idle = 0
    private var running = 0
    private var stopping = false

    init(threads: Int) throws(NBDError) {
        queue = Array(repeating: nil, count: 256)
        for i in 0..<threads {
            lock.withLock { running += 1 }
            do {
                try Threads.spawn(name: "nbd-worker-\(i)") { [self] in work() }
            } catch {
                lock.withLock { running -= 1 }
                stop()
                throw error
            }
        }
    }

    /// Queues jobs; wakes as many idle workers as there are jobs.
    func submit(_ jobs: ArraySlice<Job>) {
        guard !jobs.isEmpty else { return }
        lock.lock()
        if count + jobs.count > queue.count { grow(to: count + jobs.count) }
        for job in jobs {
            queue[(head + count) % queue.count] = job
            count += 1
        }
        let wake = min(idle, jobs.count)
        if wake == idle { lock.broadcast() } else { for _ in 0..<wake { lock.signal() } }
        lock.unlock()
    }

    /// Lets the workers finish what is queued, then end. Returns once they all have.
    func stop() {
        lock.lock()
        stopping = true
        lock.broadcast()
        while running > 0 { lock.wait() }
        lock.unlock()
    }

    private func grow(to needed: Int) {
        var bigger = [Job?](repeating: nil, count: max(needed, 2 * queue.count))
        for i in 0..<count { bigger[i] = queue[(head + i) % queue.count] }
        queue = bigger
        head = 0
    }

    private func work() {
        lock.lock()
        while true {
            while count == 0 && !stopping {
                idle += 1
                lock.wait()
                idle -= 1
            }
            if count == 0 { break }
            let job = queue[head]!
            queue[head] = nil
            head = (head + 1) % queue.count
            count -= 1
            lock.unlock()
            // A strong reference: the connection may only go away after this job is answered.
            let transmission = job.transmission
            transmission.execute(job)
            transmission.complete(job)
            lock.lock()
        }
        running -= 1
        lock.broadcast()
        lock.unlock()
    }
}
