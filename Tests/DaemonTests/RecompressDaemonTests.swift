import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif
@testable import ZramDaemon

@Suite("recompression through ctl")
struct RecompressDaemonTests {
    @Test("ctl recomp-algorithm and recompress as sysfs has them: the stats file, the run's sentence, the counters, the data")
    func ctlRecompress() throws {
        let dir = TempDir()
        defer { dir.remove() }
        let d = try RunningDaemon(dir)
        let corpus = Corpus()
        corpus.write(to: dir.file("corpus.bin"))
        let copy = try Subprocess.run(["nbdcopy", "--no-extents", dir.file("corpus.bin"), d.uri], outputPrefix: dir.file("nbdcopy"))
        #expect(copy.succeeded, "\(copy.stderr)")

        let none = try d.ctl(["recompress"])
        #expect(!none.succeeded && none.stderr.contains("no recompression algorithm"), "\(none.stderr)")
        #expect(!(try d.ctl(["recomp-algorithm", "algo=brotli"])).succeeded)
        #expect(!(try d.ctl(["recomp-algorithm", "algo=zstd", "priority=4"])).succeeded)
        #expect(try d.ctl(["recomp-algorithm", "algo=zstd"]).succeeded)
        #expect(dir.read("stats/recomp_algorithm") == "#1: lzo-rle lzo lz4 lz4hc [zstd] deflate \n")

        let before = d.mmStat()
        let run = try d.ctl(["recompress", "type=huge"])
        // The corpus's random pages are its only huge ones, and zstd cannot shrink random data.
        #expect(run.succeeded && run.stdout.hasPrefix("recompressed 0 of \(corpus.randomPages) pages tried"), "\(run.stdout) \(run.stderr)")
        let all = try d.ctl(["recompress"])
        #expect(all.succeeded && all.stdout.hasPrefix("recompressed "), "\(all.stderr)")
        let after = d.mmStat()
        #expect(after[0] == before[0] && after[1] < before[1])   // same data, fewer compressed bytes
        let show = try d.ctl(["show"]).stdout
        #expect(show.contains("recompress_runs=2") && show.contains("recompressed_pages="))
        let busy = try d.ctl(["recomp-algorithm", "algo=lz4", "priority=1"])
        #expect(!busy.succeeded && busy.stderr.contains("recompressed"), "\(busy.stderr)")

        // algorithm_params: a level changes only while nothing stored depends on the algorithm.
        let stored = try d.ctl(["algorithm-params", "priority=1", "level=7"])
        #expect(!stored.succeeded && stored.stderr.contains("are stored"), "\(stored.stderr)")
        #expect(!(try d.ctl(["algorithm-params", "algo=zstd", "dict=/nonexistent"])).succeeded)
        #expect(!(try d.ctl(["algorithm-params", "algo=deflate", "level=1"])).succeeded)
        #expect(try d.ctl(["add", "size=16M", "socket=none", "stats-dir=none"], device: "zram1").succeeded)
        let fresh = try d.ctl(["algorithm-params", "priority=0", "level=5"], device: "zram1")
        #expect(fresh.succeeded, "\(fresh.stderr)")
        #expect(try d.ctl(["get", "level"], device: "zram1").stdout == "5\n")
        #expect(try d.ctl(["remove"], device: "zram1").succeeded)

        let back = try Subprocess.run(["nbdcopy", "--no-extents", d.uri, dir.file("back.bin")], outputPrefix: dir.file("nbdcopy-back"))
        #expect(back.succeeded)
        let bytes = try FileSystem.readBytes(dir.file("back.bin"))
        #expect(Array(bytes.prefix(corpus.bytes.count)) == corpus.bytes)
        #expect(d.stop() == .exited(0))
    }

    @Test("--recomp-algorithm and --recompress-idle-after: the daemon recompresses idle pages by itself and logs the run")
    func policy() throws {
        let dir = TempDir()
        defer { dir.remove() }
        let d = try RunningDaemon(dir, extra: ["--recomp-algorithm", "zstd(level=5)", "--recompress-idle-after", "1"])
        #expect(dir.read("stats/recomp_algorithm") == "#1: lzo-rle lzo lz4 lz4hc [zstd] deflate \n")
        let corpus = Corpus()
        let client = try NBDClient(socket: d.socket)
        #expect(client.write(corpus.bytes, at: 0) == 0)
        client.close()
        var pages = 0
        for _ in 0..<1000 where pages == 0 {
            pages = Int(try d.ctl(["get", "recompressed-pages"]).stdout.split(separator: "\n").first ?? "") ?? 0
            if pages == 0 { var ts = timespec(tv_sec: 0, tv_nsec: 10_000_000); nanosleep(&ts, nil) }
        }
        #expect(pages > 0)
        #expect(d.stop() == .exited(0))
        #expect(d.process.stderr.contains("zram0: idle for 1 s: recompressed "), "\(d.process.stderr.suffix(1000))")
        let bad = try Subprocess.run([zramnbdBinary, "serve", "--check", "--recomp-algorithm", "zstd(dict=/x)"], outputPrefix: dir.file("bad"))
        #expect(bad.termination == .exited(2) && bad.stderr.contains("--recomp-algorithm: parameter 'dict of zstd' is not supported"), "\(bad.stderr)")
        let none = try Subprocess.run([zramnbdBinary, "serve", "--check", "--recompress-idle-after", "1"], outputPrefix: dir.file("none"))
        #expect(none.termination == .exited(2) && none.stderr.contains("need a recomp-algorithm"), "\(none.stderr)")
    }
}
