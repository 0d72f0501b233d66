// `zramnbd status --watch`: the table redrawn every few seconds, with rates between frames.
#if canImport(Glibc)
import Glibc
#endif

struct StatusWatch {
    var output: String?
    var all: Bool
    var format: StatusReport.Format
    var devices: [String]
    var socket: String
    var interval: Double
    /// nil: until Ctrl-C.
    var frames: Int?
    /// On a terminal each frame replaces the last; otherwise frames follow each other, a blank
    /// line apart, so a log or a pipe keeps them all.
    var terminal: Bool

    func run() throws(DaemonError) {
        // Ctrl-C is how a live view ends: exit 0, not 130.
        signal(SIGINT) { _ in _exit(0) }
        var previous: [String: ControlRecord] = [:]
        var previousTime = 0.0
        var columns: [StatusColumn]?
        var frame = 0
        while true {
            let started = SystemInfo.now()
            let records = try ControlClient.send(.status(devices), socket: socket).map(ControlRecord.parse)
            // The default set depends on what the daemon reports (I/O counters, a backing
            // device), so it is chosen from the first frame.
            let cols: [StatusColumn]
            if let columns { cols = columns } else {
                cols = try StatusReport.select(output, all: all, watch: true, defaults: StatusReport.watchDefaults(records))
                columns = cols
            }
            let table = StatusReport.table(records, columns: cols, format: format, previous: previous,
                                           seconds: frame == 0 ? 0 : started - previousTime)
            FileSystem.writeAll(1, render(table, frame: frame))
            frame += 1
            if let frames, frame >= frames { return }
            previous = Dictionary(records.compactMap { r in r["name"].map { ($0, r) } }, uniquingKeysWith: { a, _ in a })
            previousTime = started
            Self.sleep(until: started + interval)
        }
    }

    func render(_ table: String, frame: Int) -> String {
        guard terminal else { return (frame == 0 ? "" : "\n") + table }
        // Home and clear, then a title as watch(1) has one.
        return "\u{1B}[H\u{1B}[2J" + "Every \(Self.seconds(interval)): zramnbd status (Ctrl-C to quit)\n\n" + table
    }

    static func seconds(_ s: Double) -> String {
        s == s.rounded() && s < 1e9 ? "\(Int(s))s" : "\(s)s"
    }

    static func sleep(until deadline: Double) {
        while true {
            let left = deadline - SystemInfo.now()
            if left <= 0 { return }
            var ts = timespec(tv_sec: Int(left), tv_nsec: Int((left - left.rounded(.down)) * 1e9))
            _ = nanosleep(&ts, nil)
        }
    }
}
