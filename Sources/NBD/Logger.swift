#if canImport(Glibc)
import Glibc
#endif

/// A minimal logger: a level and a sink. Messages are plain sentences ("replying to NBD_OPT_GO
/// with NBD_REP_ACK"); building them costs nothing when the level is off.
public struct NBDLogger: Sendable {
    public enum Level: Int, Sendable, Comparable {
        case off = 0, error, info, debug
        public static func < (a: Level, b: Level) -> Bool { a.rawValue < b.rawValue }
    }

    public var level: Level
    public var sink: @Sendable (Level, String) -> Void

    public init(level: Level, sink: @escaping @Sendable (Level, String) -> Void = NBDLogger.stderr) {
        self.level = level
        self.sink = sink
    }

    public static let disabled = NBDLogger(level: .off)

    /// Writes "zramnbd: <message>\n" to stderr with one write(2), so lines from threads don't mix.
    public static let stderr: @Sendable (Level, String) -> Void = { _, message in
        let line = "nbd: " + message + "\n"
        var bytes = Array(line.utf8)
        _ = bytes.withUnsafeMutableBytes { write(2, $0.baseAddress, $0.count) }
    }

    @inline(__always) public func error(_ message: @autoclosure () -> String) {
        if level >= .error { sink(.error, message()) }
    }
    @inline(__always) public func info(_ message: @autoclosure () -> String) {
        if level >= .info { sink(.info, message()) }
    }
    @inline(__always) public func debug(_ message: @autoclosure () -> String) {
        if level >= .debug { sink(.debug, message()) }
    }
}
