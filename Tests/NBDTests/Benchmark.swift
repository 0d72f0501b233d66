import Foundation
import Glibc
import NBD
import TestSupport
import Testing

// The transport benchmark behind Sources/NBD/DESIGN.md: the shipped connection engine over a RAM
// disk that burns compressor-like CPU, optionally beside nbdkit. Off by default (speed belongs in
// benchmarks, not in the test suite). Run it on a release build, with nothing else busy:
//   NBD_BENCH=1 swift test -c release --filter NBDBenchmark
// Knobs: NBD_BENCH_SECONDS (per run, default 5), NBD_BENCH_SERVER_CPUS (default "1"),
// NBD_BENCH_CLIENT_CPU (default "0"), NBD_BENCH_COSTS ("0,8" µs per written page),
// NBD_BENCH_JOBS (fio jobs = connections, default 1), NBD_BENCH_REPEAT (interleaved runs, default 1),
// NBD_BENCH_LOADS ("randread:1,randwrite:32", ...), NBD_BENCH_OUT (also write the table to this file),
// NBD_BENCH_NBDKIT=1 to add nbdkit's memory plugin as the reference peer.

@_silgen_name("sched_setaffinity")
private func c_sched_setaffinity(_ pid: pid_t, _ size: Int, _ mask: UnsafeRawPointer) -> Int32
@_silgen_name("sched_getaffinity")
private func c_sched_getaffinity(_ pid: pid_t, _ size: Int, _ mask: UnsafeMutableRawPointer) -> Int32

/// Pins the calling thread (threads it creates inherit the mask); returns the old mask.
private func pinCurrentThread(to cpus: [Int]) -> [UInt64] {
    var old = [UInt64](repeating: 0, count: 16)
    _ = old.withUnsafeMutableBytes { c_sched_getaffinity(0, $0.count, $0.baseAddress!) }
    var mask = [UInt64](repeating: 0, count: 16)
    for c in cpus { mask[c / 64] |= 1 << UInt64(c % 64) }
    _ = mask.withUnsafeBytes { c_sched_setaffinity(0, $0.count, $0.baseAddress!) }
    return old
}

private func restoreAffinity(_ mask: [UInt64]) {
    _ = mask.withUnsafeBytes { c_sched_setaffinity(0, $0.count, $0.baseAddress!) }
}

/// A RAM disk that also burns CPU like a compressor would: `writeCost` µs of thread CPU time per
/// written 4 KiB page and a quarter of it per read page (lz4: ~8 µs to compress, ~2 to decompress).
final class CostlyBackend: WrappingBackend, @unchecked Sendable {
    let inner: MemoryBackend
    let writeCostNS: Int
    init(inner: MemoryBackend, writeCostMicroseconds: Int) {
        self.inner = inner
        writeCostNS = writeCostMicroseconds * 1000
    }
    private func burn(_ ns: Int) {
        guard ns > 0 else { return }
        var t = timespec()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t)
        let end = t.tv_sec * 1_000_000_000 + t.tv_nsec + ns
        repeat { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t) } while t.tv_sec * 1_000_000_000 + t.tv_nsec < end
    }
    func read(into buffer: UnsafeMutableRawPointer, offset: UInt64, length: Int) throws(NBDError) {
        burn(writeCostNS / 4 * max(1, length / 4096))
        try inner.read(into: buffer, offset: offset, length: length)
    }
    func write(from buffer: UnsafeRawPointer, offset: UInt64, length: Int, fua: Bool) throws(NBDError) {
        burn(writeCostNS * max(1, length / 4096))
        try inner.write(from: buffer, offset: offset, length: length, fua: fua)
    }
}

@Suite(.serialized, .enabled(if: ProcessInfo.processInfo.environment["NBD_BENCH"] != nil))
struct NBDBenchmark {
    let env = ProcessInfo.processInfo.environment
    var seconds: Int { Int(env["NBD_BENCH_SECONDS"] ?? "") ?? 5 }
    var serverCPUs: [Int] { (env["NBD_BENCH_SERVER_CPUS"] ?? "1").split(separator: ",").compactMap { Int($0) } }
    var clientCPU: String { env["NBD_BENCH_CLIENT_CPU"] ?? "0" }
    var costs: [Int] { (env["NBD_BENCH_COSTS"] ?? "0,8").split(separator: ",").compactMap { Int($0) } }
    /// NBD_BENCH_LOADS, e.g. "randread:1,randwrite:32"; default QD1/16/32 random reads and writes.
    var loads: [(rw: String, depth: Int)] {
        let spec = env["NBD_BENCH_LOADS"] ?? "randread:1,randread:16,randread:32,randwrite:1,randwrite:16,randwrite:32"
        return spec.split(separator: ",").compactMap {
            let parts = $0.split(separator: ":")
            guard parts.count == 2, let depth = Int(parts[1]) else { return nil }
            return (String(parts[0]), depth)
        }
    }

    /// CPU time used so far, in µs, by this process (the in-process server; the test runner
    /// idles meanwhile) or by another process (from /proc/PID/stat, 10 ms resolution).
    func processCPU(_ pid: pid_t?) -> Double {
        guard let pid else {
            var u = rusage()
            getrusage(RUSAGE_SELF.rawValue, &u)
            return Double(u.ru_utime.tv_sec + u.ru_stime.tv_sec) * 1e6 + Double(u.ru_utime.tv_usec + u.ru_stime.tv_usec)
        }
        let stat = Subprocess.readFile("/proc/\(pid)/stat")
        guard let close = stat.lastIndex(of: ")") else { return 0 }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        // After the command: state is field 3, utime 14 and stime 15 (1-based over the whole line).
        guard fields.count > 12, let user = Double(fields[11]), let system = Double(fields[12]) else { return 0 }
        return (user + system) * 1e6 / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    var repeats: Int { Int(env["NBD_BENCH_REPEAT"] ?? "") ?? 1 }
    /// fio jobs, one NBD connection each.
    var jobs: Int { Int(env["NBD_BENCH_JOBS"] ?? "") ?? 1 }

    /// fio's nbd engine (libnbd), pinned to the client CPU; returns IOPS.
    func fio(uri: String, rw: String, depth: Int, dir: TempDir) throws -> Double {
        let r = try Subprocess.run(["taskset", "-c", clientCPU, "fio", "--name=bench", "--ioengine=nbd", "--uri=\(uri)",
                                    "--rw=\(rw)", "--bs=4k", "--iodepth=\(depth)", "--size=256M",
                                    "--time_based", "--runtime=\(seconds)", "--output-format=json",
                                    "--numjobs=\(jobs)", "--group_reporting"],
                                   outputPrefix: dir.file("fio-\(rw)-\(depth)"), timeout: .seconds(seconds + 60))
        guard r.succeeded, let start = r.stdout.firstIndex(of: "{") else { throw TestError("fio failed: \(r.stderr)") }
        let json = try JSONSerialization.jsonObject(with: Data(r.stdout[start...].utf8)) as? [String: Any]
        let job = (json?["jobs"] as? [[String: Any]])?.first
        let side = (rw.contains("read") ? job?["read"] : job?["write"]) as? [String: Any]
        return side?["iops"] as? Double ?? 0
    }

    func prefill(uri: String, dir: TempDir) throws {
        let r = try Subprocess.run(["fio", "--name=fill", "--ioengine=nbd", "--uri=\(uri)", "--rw=write", "--bs=1M",
                                    "--iodepth=8", "--size=256M"], outputPrefix: dir.file("fill"), timeout: .seconds(120))
        #expect(r.succeeded, "\(r.stderr)")
    }

    /// "IOPS (server µs/request)" per load.
    func row(_ name: String, _ results: [(Double, Double)]) -> String {
        "| \(name) | " + results.map { String(format: "%.1fk (%.1f)", $0.0 / 1000, $0.1) }.joined(separator: " | ") + " |"
    }

    /// One server per cost plus, optionally, nbdkit; every load is run on each of them in turn,
    /// `repeats` times, so that noise from a shared machine hits all of them alike.
    @Test func transport() throws {
        struct Target {
            let name: String
            let uri: String
            /// nil: this process (our server); else the peer's pid.
            let pid: pid_t?
            var results: [(Double, Double)]
        }
        let dir = TempDir()
        var servers: [NBDServer] = []
        var targets: [Target] = []
        var peer: Subprocess?
        defer {
            for s in servers { s.stop() }
            peer?.stop()
        }
        for cost in costs {
            let backend = CostlyBackend(inner: try MemoryBackend(size: 256 << 20), writeCostMicroseconds: cost)
            let config = NBDServer.Configuration(catalog: try ExportCatalog([Export(name: "b", backend: backend)], defaultExport: "b"))
            let old = pinCurrentThread(to: serverCPUs)
            let server = try NBDServer(config)
            let path = dir.file("engine-\(cost).sock")
            try server.listen(on: [.unix(path: path)])
            restoreAffinity(old)
            servers.append(server)
            targets.append(Target(name: "zramnbd engine, cost \(cost) µs", uri: "nbd+unix:///?socket=\(path)",
                                  pid: nil, results: []))
        }
        if env["NBD_BENCH_NBDKIT"] != nil {
            let sock = dir.file("nbdkit.sock")
            let cpus = serverCPUs.map(String.init).joined(separator: ",")
            peer = try Subprocess(["taskset", "-c", cpus, "nbdkit", "-f", "-U", sock, "memory", "256M"],
                                  outputPrefix: dir.file("nbdkit"))
            #expect(eventually { access(sock, F_OK) == 0 })
            targets.append(Target(name: "nbdkit 1.32 memory (sparse)", uri: "nbd+unix:///?socket=\(sock)",
                                  pid: peer!.pid, results: []))
        }
        for t in targets { try prefill(uri: t.uri, dir: dir) }
        for load in loads {
            var runs = [[(Double, Double)]](repeating: [], count: targets.count)
            for r in 0..<repeats {
                for k in 0..<targets.count {
                    let i = (k + r) % targets.count  // rotate who goes first
                    let before = processCPU(targets[i].pid)
                    let iops = try fio(uri: targets[i].uri, rw: load.rw, depth: load.depth, dir: dir)
                    let cpu = (processCPU(targets[i].pid) - before) / max(1, iops * Double(seconds))
                    runs[i].append((iops, cpu))
                }
            }
            for i in targets.indices {
                let sorted = runs[i].sorted { $0.0 < $1.0 }
                targets[i].results.append(sorted[sorted.count / 2])
            }
        }
        var lines = ["server CPUs \(serverCPUs), fio on CPU \(clientCPU) with \(jobs) job(s), \(seconds) s per run, median of \(repeats) interleaved runs, "
                     + "4 KiB, 256 MiB prefilled; IOPS (server CPU µs per request)",
                     "| server | " + loads.map { "\($0.rw) QD\($0.depth)" }.joined(separator: " | ") + " |",
                     "|---|" + loads.map { _ in "---|" }.joined()]
        for t in targets { lines.append(row(t.name, t.results)) }
        print(lines.joined(separator: "\n"))
        if let out = env["NBD_BENCH_OUT"] {
            try (lines.joined(separator: "\n") + "\n").write(toFile: out, atomically: true, encoding: .utf8)
        }
    }
}
