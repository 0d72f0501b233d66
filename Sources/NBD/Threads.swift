import Posix

/// Posix.Threads with NBD's error type (NBD's callers throw NBDError). Inside NBD this name
/// shadows Posix.Threads.
enum Threads {
    static func spawn(name: String, _ body: @escaping @Sendable () -> Void) throws(NBDError) {
        do { try Posix.Threads.spawn(name: name, body) } catch { throw NBDError(error) }
    }

    /// Number of online CPUs (at least 1).
    static var onlineCPUs: Int { Posix.Threads.onlineCPUs }
}
