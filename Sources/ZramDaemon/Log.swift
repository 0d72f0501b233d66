#if canImport(Glibc)
import Glibc
#endif

/// Plain-sentence log lines on stderr, one write(2) each so threads don't interleave. Under
/// systemd (JOURNAL_STREAM set) lines carry a `<N>` syslog priority prefix that journald strips.
public struct Log: Sendable {
    public enum Level: Int, Sendable, Comparable {
        case error = 3, warning = 4, info = 6, debug = 7
        public static func < (a: Level, b: Level) -> Bool { a.rawValue < b.rawValue }
    }

    public var level: Level
    let journal: Bool

    public init(level: Level = .info) {
        self.level = level
        journal = getenv("JOURNAL_STREAM") != nil
    }

    public static let quiet = Log(level: .error)

    public func error(_ m: @autoclosure () -> String) { emit(.error, m) }
    public func warning(_ m: @autoclosure () -> String) { emit(.warning, m) }
    public func info(_ m: @autoclosure () -> String) { emit(.info, m) }
    public func debug(_ m: @autoclosure () -> String) { emit(.debug, m) }

    private func emit(_ l: Level, _ m: () -> String) {
        guard l <= level else { return }
        let tag = l == .error ? "error: " : l == .warning ? "warning: " : ""
        let line = (journal ? "<\(l.rawValue)>" : "zramnbd: ") + tag + m() + "\n"
        FileSystem.writeAll(2, line)
    }
}
