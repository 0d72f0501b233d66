import Testing
#if canImport(Glibc)
import Glibc
#endif
import TestSupport
@testable import ZramDaemon

/// An in-memory stand-in for ZramDevice: counts pages like zram does (orig = pages × 4096,
/// compressed = half) so host/control/stats logic can be tested without the real store.
final class FakeStore: PageStore, @unchecked Sendable {   // @unchecked: guarded by `lock`
    private let lock = NSLockish()
    private var s: DeviceSnapshot
    private(set) var resets = 0

    init(_ spec: DeviceSpec) {
        s = DeviceSnapshot(name: spec.name)
        s.diskSize = spec.diskSize
        s.algorithm = spec.algorithm
        s.level = spec.level ?? 1
        s.streams = 2
        s.memLimit = spec.memLimit
    }

    func store(pages: UInt64) {
        lock.with {
            s.origDataSize += pages * 4096
            s.comprDataSize += pages * 2048
            s.memUsedTotal = (s.comprDataSize / 4096 + 1) * 4096 * 2
            s.memUsedMax = max(s.memUsedMax, s.memUsedTotal)
        }
    }

    func snapshot(classes: Bool) -> DeviceSnapshot {
        lock.with {
            var c = s   // its mm_stat/io_stat/debug_stat/bd_stat texts come from its stats
            c.compAlgorithmText = c.algorithm == "lz4" ? "lzo-rle lzo [lz4] lz4hc zstd deflate \n" : "lzo-rle lzo lz4 lz4hc [zstd] deflate \n"
            c.classesText = classes ? "class  size\n" : ""
            return c
        }
    }

    func compact() throws(DaemonError) -> UInt64 {
        lock.with {
            let freed = s.memUsedTotal / 4096 / 2
            s.memUsedTotal -= freed * 4096
            s.pagesCompacted += freed
            return freed
        }
    }

    func reset() throws(DaemonError) {
        lock.with {
            let keep = (s.diskSize, s.memLimit)
            s = DeviceSnapshot(name: s.name)
            (s.diskSize, s.memLimit) = keep
            s.streams = 2
            resets += 1
        }
    }

    var compactablePages: Int { lock.with { Int(s.memUsedTotal / 4096 / 2) } }

    func setMemLimit(_ bytes: UInt64) throws(DaemonError) { lock.with { s.memLimit = (bytes + 4095) / 4096 * 4096 } }
    func resetMemUsedMax() throws(DaemonError) { lock.with { s.memUsedMax = s.memUsedTotal } }
}

final class FakeExport: ExportHandle {
    var activeConnections = 0
    var stopped = false
    func stop() { stopped = true }
}

final class FakeDeviceFactory: DeviceFactory {
    var stores: [String: FakeStore] = [:]
    var exports: [String: FakeExport] = [:]

    func makeStore(_ spec: DeviceSpec) throws(DaemonError) -> any PageStore {
        let s = FakeStore(spec)
        stores[spec.name] = s
        return s
    }

    func export(_ store: any PageStore, spec: DeviceSpec) throws(DaemonError) -> any ExportHandle {
        let e = FakeExport()
        exports[spec.name] = e
        return e
    }
}

/// A pthread mutex with a closure API (Foundation-free).
final class NSLockish: @unchecked Sendable {
    private let m = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    init() { pthread_mutex_init(m, nil) }
    deinit { pthread_mutex_destroy(m); m.deallocate() }
    func with<T>(_ body: () throws -> T) rethrows -> T {
        pthread_mutex_lock(m)
        defer { pthread_mutex_unlock(m) }
        return try body()
    }
}

/// The package root (Tests/DaemonTests/<file> → ../..).
let packageRoot: String = {
    var parts = #filePath.split(separator: "/", omittingEmptySubsequences: false)
    parts.removeLast(3)
    return parts.joined(separator: "/")
}()

/// The zramnbd binary the test command built (`swift build` before `swift test`).
let zramnbdBinary = packageRoot + "/.build/debug/zramnbd"

/// Result of a finished child process.
struct Finished {
    var status: Int32
    var stdout: String
    var stderr: String
}

/// Runs `argv` to completion with posix_spawn and an empty signal mask (Swift Testing's threads
/// block signals and children would inherit that), output captured in files under `dir`.
func runProcess(_ argv: [String], in dir: TempDir, tag: String = "cmd") throws -> Finished {
    let out = dir.file("\(tag).stdout"), err = dir.file("\(tag).stderr")
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 1, out, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    posix_spawn_file_actions_addopen(&actions, 2, err, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    var attr = posix_spawnattr_t()
    posix_spawnattr_init(&attr)
    defer { posix_spawnattr_destroy(&attr) }
    resetSignals(in: &attr)
    var cargs: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) } + [nil]
    defer { for p in cargs { free(p) } }
    var pid: pid_t = 0
    let rc = posix_spawn(&pid, argv[0], &actions, &attr, &cargs, environ)
    guard rc == 0 else { throw DaemonError.system("posix_spawn \(argv[0])", errno: rc) }
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0, errno == EINTR {}
    let code = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
    return Finished(status: code, stdout: dir.read("\(tag).stdout") ?? "", stderr: dir.read("\(tag).stderr") ?? "")
}

/// A config text that must be refused with an error starting with `message` (exit status 2).
func expectConfigRefused(_ text: String, _ message: String) {
    do {
        _ = try ConfigFile.parse([("b.conf", text)], ramMiB: 1000)
        Issue.record("accepted: \(text)")
    } catch {
        #expect(error.description.hasPrefix(message), "\(error)")
        #expect(error.exitStatus == 2)
    }
}

/// The error evaluating `text` (with ram = 1000 MiB) throws; nil, recorded as an issue, if it evaluates.
func expressionError(_ text: String) -> DaemonError? {
    do {
        _ = try SizeExpression(text).evaluate(["ram": 1000])
        Issue.record("'\(text)' evaluated")
        return nil
    } catch {
        return error
    }
}
