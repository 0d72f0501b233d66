import Glibc
import Testing
import TestSupport
@testable import ZramDevice

/// The RSS check runs in a child process (this test binary, filtered to `MemoryProbe`), because
/// other tests in this process allocate in parallel and would blur the numbers.
@Suite("ZramDevice memory")
struct MemoryTests {
    /// Allowed growth beyond mem_used_total + slot table: the pool's resident reserve of freed
    /// pages (1 MiB), per-CPU stream buffers (16 KiB each), the probe's 1 MiB I/O buffer, malloc slack.
    static let overheadAllowance = 8 << 20

    @Test("RSS after writing the corpus <= mem_used_total + slot table + 8 MiB over the baseline")
    func residentSetSize() throws {
        _ = try Corpus.prepare()       // built here, not inside the measurement
        let dir = TempDir("zramnbd-memtest")
        defer { dir.remove() }

        let probe = try runSelf(filter: "MemoryProbe", environment: ["ZRAMNBD_MEMORY_PROBE": dir.file("probe.txt")],
                                outputPrefix: dir.file("output"))
        let report = Subprocess.readFile(dir.file("probe.txt"))
        if !probe.succeeded || report.isEmpty { print(probe.stdout + probe.stderr) }
        #expect(probe.succeeded, "\(probe.termination)")
        var v: [String: Int] = [:]
        for line in report.split(separator: "\n") {
            let kv = line.split(separator: "=")
            if kv.count == 2, let n = Int(kv[1]) { v[String(kv[0])] = n }
        }
        let baseline = try #require(v["rss_baseline"]), after = try #require(v["rss_after_write"])
        let used = try #require(v["mem_used_total"]), table = try #require(v["slot_table_bytes"])
        print("RSS baseline \(baseline >> 10) KiB, after writing a \((v["corpus_bytes"] ?? 0) >> 20) MiB corpus \(after >> 10) KiB;"
              + " mem_used_total \(used >> 10) KiB, slot table \(table >> 10) KiB,"
              + " overhead \((after - baseline - used - table) >> 10) KiB;"
              + " single-thread write \(v["write_mb_s"] ?? 0) MB/s, read \(v["read_mb_s"] ?? 0) MB/s (this build)")
        #expect(after - baseline <= used + table + Self.overheadAllowance)
        #expect(v["verified"] == 1, "corpus read back identical")
    }
}

@Suite("MemoryProbe")
struct MemoryProbe {
    static let reportPath: String? = getenv("ZRAMNBD_MEMORY_PROBE").map { String(cString: $0) }

    @Test("child half of the RSS test", .enabled(if: reportPath != nil, "runs only in the process MemoryTests spawns"))
    func probe() throws {
        let path = try #require(Self.reportPath)
        let corpus = try Corpus.prepare()
        let check = Buffer(1 << 20)
        let baseline = residentBytes()
        let dev = try ZramDevice(ZramConfig(name: "probe", diskSize: corpus.byteCount))
        var t0 = now()
        try corpus.forEachChunk { (data, offset, count) throws in
            try dev.write(from: data, offset: offset, length: count)
        }
        let writeSeconds = now() - t0
        let after = residentBytes()
        let s = dev.stats()
        var verified = 1
        var readSeconds = 0.0
        try corpus.forEachChunk { (data, offset, count) throws in
            t0 = now()
            try dev.read(into: check.base, offset: offset, length: count)
            readSeconds += now() - t0
            if memcmp(check.base, data, count) != 0 { verified = 0 }
        }
        let mb = Double(corpus.byteCount) / 1e6
        let report = """
            rss_baseline=\(baseline)
            rss_after_write=\(after)
            mem_used_total=\(s.memUsedTotal)
            slot_table_bytes=\(dev.slotTableBytes)
            corpus_bytes=\(corpus.byteCount)
            write_mb_s=\(Int(mb / writeSeconds))
            read_mb_s=\(Int(mb / readSeconds))
            verified=\(verified)

            """
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        try #require(fd >= 0)
        _ = Array(report.utf8).withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        close(fd)
    }
}

private func now() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

/// Runs this test binary again with Swift Testing filtered to `filter` (Subprocess resets the
/// signal mask, swift.md §5).
func runSelf(filter: String, environment: [String: String], outputPrefix: String) throws -> CommandResult {
    var exe = [CChar](repeating: 0, count: 4096)
    let n = readlink("/proc/self/exe", &exe, exe.count - 1)
    try #require(n > 0)
    let path = String(decoding: exe[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    return try Subprocess.run([path, "--testing-library", "swift-testing", "--filter", filter],
                              outputPrefix: outputPrefix, environment: environment, timeout: .seconds(600))
}
