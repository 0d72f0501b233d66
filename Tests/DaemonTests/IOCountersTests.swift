import CNBD
import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif
@testable import NBD
@testable import ZramDaemon

@Suite("NBD I/O counters: requests, bytes, latency, errors and connections")
struct IOCountersTests {
    /// The record fields of `ctl show` as a dictionary.
    static func show(_ d: RunningDaemon) throws -> [String: String] {
        let r = try d.ctl(["show"])
        #expect(r.succeeded, "\(r.stderr)")
        var out: [String: String] = [:]
        for word in r.stdout.split(whereSeparator: { $0 == " " || $0 == "\n" }) {
            guard let eq = word.firstIndex(of: "=") else { continue }
            out[String(word[..<eq])] = String(word[word.index(after: eq)...])
        }
        return out
    }

    /// Polls `body` until it holds (the daemon publishes every 0.2 s here), at most 10 s.
    static func eventually(_ body: () throws -> Bool) rethrows -> Bool {
        for _ in 0..<1000 {
            if try body() { return true }
            var ts = timespec(tv_sec: 0, tv_nsec: 10_000_000)
            nanosleep(&ts, nil)
        }
        return false
    }

    @Test("libnbd's requests, including a write past mem_limit and a read past the end, show in ctl show, stat.json and Prometheus")
    func countsWhatClientsDid() throws {
        let dir = TempDir()
        defer { dir.remove() }
        let d = try RunningDaemon(dir, extra: ["--mem-limit", "1M"])
        let c = try NBDClient(socket: d.socket)
        let text = [UInt8](String(repeating: "zramnbd counts every request. ", count: 2200).utf8.prefix(65536))
        for i in 0..<3 { #expect(c.write(text, at: UInt64(i) * 65536) == 0) }
        #expect(c.read(65536, at: 0) == 0 && c.read(65536, at: 65536) == 0)
        #expect(c.trim(1 << 20, 1 << 20) && c.zero(2 << 20, 1 << 20) && c.flush())
        var rng = SystemRandomNumberGenerator()
        let random = (0..<(4 << 20)).map { _ in UInt8.random(in: 0...255, using: &rng) }
        #expect(c.write(random, at: 8 << 20) == ENOSPC)       // past mem_limit: the device refuses it
        nbd_set_strict_mode(c.h, 0)                           // let the read past the end reach the server
        #expect(c.read(4096, at: 64 << 20) == EINVAL)

        let live = try Self.show(d)
        #expect(live["connections"] == "1" && live["connections_total"] == "1")
        c.close()
        var f: [String: String] = [:]
        #expect(try Self.eventually { f = try Self.show(d); return f["connections"] == "0" })
        let expected: [String: UInt64] = [
            "nbd_writes": 4, "nbd_write_bytes": 3 * 65536 + (4 << 20), "nbd_write_errors": 1,
            "nbd_reads": 3, "nbd_read_bytes": 2 * 65536 + 4096, "nbd_read_errors": 1,
            "nbd_trims": 1, "nbd_trim_bytes": 1 << 20, "nbd_write_zeroes": 1, "nbd_write_zeroes_bytes": 1 << 20,
            "nbd_flushes": 1, "nbd_flush_errors": 0, "nbd_block_statuses": 0,
            "nbd_errors_enospc": 1, "nbd_errors_einval": 1, "nbd_errors_eio": 0, "connections_total": 1,
            "failed_writes": 1,   // zram's own io_stat agrees
        ]
        for (k, v) in expected { #expect(f[k] == "\(v)", "\(k): \(f[k] ?? "missing")") }
        #expect(UInt64(f["nbd_write_latency_ns"] ?? "0") ?? 0 > 0)

        // stat.json: the same numbers in its "io" object, once the next refresh has run.
        var json = ""
        #expect(Self.eventually {
            json = dir.read("stats/stat.json") ?? ""
            return json.contains("\"connections\":0,\"connections_total\":1}")
        }, "\(json)")
        #expect(json.contains("\"write\":{\"requests\":4,\"bytes\":\(3 * 65536 + (4 << 20)),\"errors\":1,"), "\(json)")
        #expect(json.contains("\"errors_by_errno\":{\"eperm\":0,\"eio\":0,\"enomem\":0,\"einval\":1,\"enospc\":1,"), "\(json)")

        // Prometheus: counters, a histogram whose buckets grow to its count, and build_info.
        var prom = ""
        #expect(Self.eventually {
            prom = dir.read("zramnbd.prom") ?? ""
            return prom.contains("zramnbd_nbd_connections{device=\"zram0\"} 0\n")
        })
        #expect(prom.contains("zramnbd_nbd_connections_total{device=\"zram0\"} 1\n"))
        #expect(prom.contains("zramnbd_nbd_requests_total{device=\"zram0\",command=\"write\"} 4\n"))
        #expect(prom.contains("zramnbd_nbd_bytes_total{device=\"zram0\",command=\"trim\"} 1048576\n"))
        #expect(prom.contains("zramnbd_nbd_errors_total{device=\"zram0\",errno=\"enospc\"} 1\n"))
        #expect(prom.contains("zramnbd_nbd_request_duration_seconds_count{device=\"zram0\",command=\"read\"} 3\n"))
        #expect(prom.contains("zramnbd_build_info{version=\"\(BuildInfo.version)\"} 1\n"))
        let buckets = prom.split(separator: "\n")
            .filter { $0.hasPrefix("zramnbd_nbd_request_duration_seconds_bucket{device=\"zram0\",command=\"write\"") }
            .compactMap { $0.split(separator: " ").last.flatMap { UInt64($0) } }
        #expect(buckets.count == LatencyBuckets.count)
        #expect(buckets == buckets.sorted() && buckets.last == 4)
        #expect(prom.contains("le=\"0.000001\"") && prom.contains("le=\"16.777216\"") && prom.contains("le=\"+Inf\""))
        #expect(d.stop() == .exited(0))
    }

    @Test("a shard's counts outlive its connection; buckets are powers of two in microseconds")
    func shardsAndBuckets() {
        let stats = ExportStatistics()
        let a = stats.open(), b = stats.open()
        a.record(.read, bytes: 4096, nanoseconds: 1500, errno: nil)
        b.record(.read, bytes: 8192, nanoseconds: 999, errno: .eio)
        b.recordError(.eperm)
        var s = stats.read()
        #expect(s.connectionsOpen == 2 && s.connectionsTotal == 2)
        #expect(s.requests(.read) == 2 && s.bytes(.read) == 12288 && s.errors(.read) == 1)
        #expect(s.latencySumNanoseconds(.read) == 2499)
        #expect(Array(s.buckets(.read).prefix(3)) == [1, 1, 0])   // 999 ns ≤ 1 µs; 1.5 µs ≤ 2 µs
        stats.close(b)
        stats.close(b)   // closing twice counts once
        s = stats.read()
        #expect(s.connectionsOpen == 1 && s.connectionsTotal == 2 && s.requests(.read) == 2)
        #expect(s.errnoCounts[IOErrnoColumn.index(.eio)] == 1 && s.errnoCounts[IOErrnoColumn.index(.eperm)] == 1)
        #expect(s.latencyQuantileMicroseconds(.read, 0.5) == 1 && s.latencyQuantileMicroseconds(.read, 1) == 2)
        #expect(s.latencyQuantileMicroseconds(.write, 0.5) == nil)

        #expect(LatencyBuckets.index(nanoseconds: -5) == 0)
        #expect(LatencyBuckets.index(nanoseconds: 1999) == 1 && LatencyBuckets.index(nanoseconds: 2000) == 2)
        #expect(LatencyBuckets.index(nanoseconds: (1 << 24) * 1000 - 1) == 24)
        #expect(LatencyBuckets.index(nanoseconds: .max) == LatencyBuckets.count - 1)
        #expect(IOReport.seconds(microseconds: 1) == "0.000001" && IOReport.seconds(microseconds: 2_000_000) == "2"
                && IOReport.seconds(microseconds: 16_777_216) == "16.777216")
    }
}
