// The NBD I/O counters (NBD's ExportStatistics) in the daemon's outputs: flat keys in `status`
// and `show` records, an "io" object in stat.json, and Prometheus counters and histograms.
import NBD

enum IOReport {
    /// The records' word for a command's requests: nbd_reads, nbd_flushes, ...
    static func plural(_ c: IOCommand) -> String {
        switch c {
        case .read: "reads"
        case .write: "writes"
        case .trim: "trims"
        case .writeZeroes: "write_zeroes"
        case .flush: "flushes"
        case .cache: "caches"
        case .blockStatus: "block_statuses"
        }
    }

    /// Flat counters for `status`/`show` records and `status --watch`: per command its requests,
    /// bytes (not for FLUSH), failures and summed service time; failures by errno; connections.
    static func recordFields(_ io: IOStatistics) -> [(String, UInt64)] {
        var f: [(String, UInt64)] = []
        for c in IOCommand.allCases {
            f.append(("nbd_\(plural(c))", io.requests(c)))
            if c != .flush { f.append(("nbd_\(c.name)_bytes", io.bytes(c))) }
            f.append(("nbd_\(c.name)_errors", io.errors(c)))
            f.append(("nbd_\(c.name)_latency_ns", io.latencySumNanoseconds(c)))
        }
        for (i, n) in io.errnoCounts.enumerated() { f.append(("nbd_errors_\(IOErrnoColumn.name(i))", n)) }
        f.append(("connections_total", UInt64(io.connectionsTotal)))
        return f
    }

    static let recordKeys = Set(recordFields(.zero).map(\.0))

    /// stat.json's "io": per command {requests, bytes, errors, latency_sum_ns, latency_us: {bound: count}},
    /// errors by errno, connections open and in total.
    static func json(_ io: IOStatistics) -> JSONValue {
        var commands: [(String, JSONValue)] = []
        for c in IOCommand.allCases {
            let buckets = io.buckets(c)
            var histogram: [(String, JSONValue)] = LatencyBuckets.boundsMicroseconds.enumerated().map { ("\($1)", .uint(buckets[$0])) }
            histogram.append(("+Inf", .uint(buckets[LatencyBuckets.count - 1])))
            commands.append((c.name, .object([
                ("requests", .uint(io.requests(c))), ("bytes", .uint(io.bytes(c))), ("errors", .uint(io.errors(c))),
                ("latency_sum_ns", .uint(io.latencySumNanoseconds(c))), ("latency_us", .object(histogram)),
            ])))
        }
        let errnos: [(String, JSONValue)] = io.errnoCounts.enumerated().map { (IOErrnoColumn.name($0), .uint($1)) }
        return .object(commands + [("errors_by_errno", .object(errnos)),
                                   ("connections", .int(io.connectionsOpen)), ("connections_total", .int(io.connectionsTotal))])
    }

    /// Prometheus's text for the I/O of these devices: `_total` counters, one service-time
    /// histogram per command, connections.
    static func prometheus(_ snapshots: [DeviceSnapshot]) -> String {
        var out = ""
        func family(_ name: String, _ kind: String, _ help: String) { out += "# HELP \(name) \(help)\n# TYPE \(name) \(kind)\n" }
        func perCommand(_ name: String, _ help: String, skip: Set<IOCommand> = [], _ value: (IOStatistics, IOCommand) -> UInt64) {
            family(name, "counter", help)
            for s in snapshots {
                for c in IOCommand.allCases where !skip.contains(c) {
                    out += "\(name){device=\(PrometheusText.label(s.name)),command=\"\(c.name)\"} \(value(s.io, c))\n"
                }
            }
        }
        perCommand("zramnbd_nbd_requests_total", "NBD requests served, by command.") { $0.requests($1) }
        perCommand("zramnbd_nbd_bytes_total", "Bytes NBD requests covered, by command.", skip: [.flush]) { $0.bytes($1) }
        perCommand("zramnbd_nbd_failed_requests_total", "NBD requests answered with an error, by command.") { $0.errors($1) }
        family("zramnbd_nbd_errors_total", "counter", "NBD requests answered with an error, by errno.")
        for s in snapshots {
            for (i, n) in s.io.errnoCounts.enumerated() {
                out += "zramnbd_nbd_errors_total{device=\(PrometheusText.label(s.name)),errno=\"\(IOErrnoColumn.name(i))\"} \(n)\n"
            }
        }
        let h = "zramnbd_nbd_request_duration_seconds"
        family(h, "histogram", "Service time of NBD requests, from the request read to its reply ready, by command.")
        for s in snapshots {
            let device = PrometheusText.label(s.name)
            for c in IOCommand.allCases {
                let buckets = s.io.buckets(c)
                var cumulative: UInt64 = 0
                for (i, bound) in LatencyBuckets.boundsMicroseconds.enumerated() {
                    cumulative &+= buckets[i]
                    out += "\(h)_bucket{device=\(device),command=\"\(c.name)\",le=\"\(seconds(microseconds: bound))\"} \(cumulative)\n"
                }
                cumulative &+= buckets[LatencyBuckets.count - 1]
                out += "\(h)_bucket{device=\(device),command=\"\(c.name)\",le=\"+Inf\"} \(cumulative)\n"
                out += "\(h)_sum{device=\(device),command=\"\(c.name)\"} \(Double(s.io.latencySumNanoseconds(c)) / 1e9)\n"
                out += "\(h)_count{device=\(device),command=\"\(c.name)\"} \(cumulative)\n"
            }
        }
        family("zramnbd_nbd_connections", "gauge", "NBD connections transmitting now.")
        for s in snapshots { out += "zramnbd_nbd_connections{device=\(PrometheusText.label(s.name))} \(s.io.connectionsOpen)\n" }
        family("zramnbd_nbd_connections_total", "counter", "NBD connections that reached transmission.")
        for s in snapshots { out += "zramnbd_nbd_connections_total{device=\(PrometheusText.label(s.name))} \(s.io.connectionsTotal)\n" }
        return out
    }

    /// `0.000256` for 256 µs: exact decimals, as Prometheus users read `le` labels.
    static func seconds(microseconds us: Int) -> String {
        let whole = us / 1_000_000
        var fraction = String(us % 1_000_000)
        fraction = String(repeating: "0", count: 6 - fraction.count) + fraction
        while fraction.hasSuffix("0") { fraction.removeLast() }
        return fraction.isEmpty ? "\(whole)" : "\(whole).\(fraction)"
    }
}
