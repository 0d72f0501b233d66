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
        var template = Array("/tmp/zramnbd-memtest-XXXXXX".utf8CString)
        let dir = try #require(template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }.map { String(cString: $0) })
        defer { unlink(dir + "/probe.txt"); unlink(dir + "/output.txt"); rmdir(dir) }

        let status = try spawnSelf(filter: "MemoryProbe", environment: ["ZRAMNBD_MEMORY_PROBE=" + dir + "/probe.txt"],
                                   output: dir + "/output.txt")
        let report = readFile(dir + "/probe.txt")
        if status != 0 || report.isEmpty { print(readFile(dir + "/output.txt")) }
        #expect(status == 0)
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

func readFile(_ path: String) -> String {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return "" }
    defer { close(fd) }
    var out: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = buf.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
        if n <= 0 { break }
        out += buf[..<n]
    }
    return String(decoding: out, as: UTF8.self)
}

/// Runs this test binary again with Swift Testing filtered to `filter`, output to a file; returns
/// the exit status. posix_spawn resets the signal mask (swift.md §5).
func spawnSelf(filter: String, environment extra: [String], output: String) throws -> Int32 {
    var exe = [CChar](repeating: 0, count: 4096)
    let n = readlink("/proc/self/exe", &exe, exe.count - 1)
    try #require(n > 0)
    let path = String(decoding: exe[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    let argv = [path, "--testing-library", "swift-testing", "--filter", filter]
    var env: [String] = []
    var e = environ
    while let p = e.pointee { env.append(String(cString: p)); e += 1 }
    env += extra

    var attr = posix_spawnattr_t()
    posix_spawnattr_init(&attr)
    defer { posix_spawnattr_destroy(&attr) }
    resetSignals(in: &attr)
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 1, output, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    posix_spawn_file_actions_adddup2(&actions, 1, 2)
    let cargs: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) } + [nil]
    let cenv: [UnsafeMutablePointer<CChar>?] = env.map { strdup($0) } + [nil]
    defer { cargs.forEach { free($0) }; cenv.forEach { free($0) } }
    var pid: pid_t = 0
    let rc = posix_spawn(&pid, path, &actions, &attr, cargs, cenv)
    try #require(rc == 0, "posix_spawn: \(rc)")
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    return status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
}
