import Posix
import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif
@testable import ZramDaemon

extension RunningDaemon {
    /// Writes the corpus to the export with nbdcopy.
    func copyIn(_ corpus: Corpus) throws -> Bool {
        corpus.write(to: dir.file("corpus.bin"))
        return try Subprocess.run(["nbdcopy", "--no-extents", dir.file("corpus.bin"), uri], outputPrefix: dir.file("nbdcopy")).succeeded
    }

    /// The export reads back as the corpus (nbdcopy).
    func holds(_ corpus: Corpus) throws -> Bool {
        let back = try Subprocess.run(["nbdcopy", "--no-extents", uri, dir.file("back.bin")], outputPrefix: dir.file("nbdcopy-back"))
        return try back.succeeded && Array(FileSystem.readBytes(dir.file("back.bin")).prefix(corpus.bytes.count)) == corpus.bytes
    }
}

@Suite("recompression through ctl")
struct RecompressDaemonTests {
    @Test("ctl recomp-algorithm and recompress as sysfs has them: the stats file, the run's sentence, the counters, the data")
    func ctlRecompress() throws {
        let dir = TempDir()
        defer { dir.remove() }
        let d = try RunningDaemon(dir)
        let corpus = Corpus()
        #expect(try d.copyIn(corpus))

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

        #expect(try d.holds(corpus))
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
        let bad = try Subprocess.run([zramnbdBinary, "serve", "--check", "--recomp-algorithm", "zstd(dictionary=/x)"], outputPrefix: dir.file("bad"))
        #expect(bad.termination == .exited(2) && bad.stderr.contains("--recomp-algorithm: parameter 'dictionary of zstd' is not supported"), "\(bad.stderr)")
        let none = try Subprocess.run([zramnbdBinary, "serve", "--check", "--recompress-idle-after", "1"], outputPrefix: dir.file("none"))
        #expect(none.termination == .exited(2) && none.stderr.contains("need a recomp-algorithm"), "\(none.stderr)")
    }

    @Test("dictionaries through ctl: train-dict end to end, bad files refused with their reason, a dictionary in use is busy")
    func ctlDictionaries() throws {
        let dir = TempDir()
        defer { dir.remove() }
        let d = try RunningDaemon(dir)
        let corpus = Corpus()
        #expect(try d.copyIn(corpus))
        func refused(_ args: [String], _ message: String, device: String = "zram0") throws {
            let r = try d.ctl(args, device: device)
            #expect(!r.succeeded && r.stderr.contains(message), "\(args): \(r.stderr)")
        }
        try refused(["train-dict"], "no zstd recomp_algorithm to train for")
        #expect(try d.ctl(["recomp-algorithm", "algo=lz4hc", "priority=1"]).succeeded)
        try refused(["train-dict", "priority=1"], "priority 1's algorithm is lz4hc; train-dict makes zstd dictionaries")
        #expect(try d.ctl(["recomp-algorithm", "algo=zstd", "priority=2"]).succeeded)
        try refused(["train-dict", "size=10"], "size=10 is outside 256...1048576 bytes")
        try refused(["train-dict", "priority=0"], "priority=0 is not 1...3")
        try refused(["train-dict", "output=rel.dict"], "output=rel.dict is not an absolute path")

        // Each bad dictionary file is refused with its reason, before anything changes.
        dir.write("empty.dict", "")
        // zstd's dictionary magic, then no valid tables.
        let corrupt = open(dir.file("corrupt.dict"), O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        #expect(IO.writeFully(corrupt, [0x37, 0xA4, 0x30, 0xEC] + [UInt8](repeating: 0xFF, count: 300)))
        close(corrupt)
        dir.write("big.dict", String(repeating: "z", count: (1 << 20) + 1))
        try refused(["algorithm-params", "priority=2", "dict=\(dir.file("missing.dict"))"], "missing.dict: No such file or directory")
        try refused(["algorithm-params", "priority=2", "dict=\(dir.file("empty.dict"))"], "empty.dict is empty")
        try refused(["algorithm-params", "priority=2", "dict=\(dir.path)"], "is not a regular file")
        try refused(["algorithm-params", "priority=2", "dict=\(dir.file("big.dict"))"], "is 1048577 bytes; at most 1048576 are taken")
        try refused(["algorithm-params", "priority=2", "dict=rel.dict"], "dict=rel.dict is not an absolute path")
        try refused(["algorithm-params", "priority=1", "deflate.winbits=-11"], "lz4hc takes no deflate.winbits")
        try refused(["algorithm-params", "priority=0", "dict=\(dir.file("big.dict"))"], "big.dict is 1048577 bytes")
        try refused(["algorithm-params", "priority=1", "zstd.compact=1"], "lz4hc takes no zstd.compact")
        try refused(["algorithm-params", "priority=2", "zstd.compact=yes"], "zstd.compact=yes is not 0 or 1")

        let trained = try d.ctl(["train-dict", "sample=500", "size=8K", "output=\(dir.file("trained.dict"))"])
        #expect(trained.succeeded && trained.stdout.hasPrefix("trained a ") && trained.stdout.contains("priority 2 uses it, saved as \(dir.file("trained.dict"))"),
                "\(trained.stdout) \(trained.stderr)")
        let saved = try FileSystem.readBytes(dir.file("trained.dict"))
        #expect(saved.count > 0 && saved.count <= 8192)
        try refused(["algorithm-params", "priority=2", "dict=\(dir.file("corrupt.dict"))"], "is not a usable zstd dictionary")
        #expect(try d.ctl(["recompress", "priority=2"]).succeeded)
        try refused(["train-dict"], "pages recompressed at priority 2 are stored; its dictionary changes only while none are")
        // Another dictionary would misread the pages made with this one; the same bytes again change nothing.
        dir.write("other.dict", String(repeating: "other dictionary ", count: 100))
        try refused(["algorithm-params", "priority=2", "dict=\(dir.file("other.dict"))"], "pages recompressed at priority 2 are stored")
        try refused(["algorithm-params", "priority=2"], "pages recompressed at priority 2 are stored")
        let same = try d.ctl(["algorithm-params", "priority=2", "dict=\(dir.file("trained.dict"))"])
        #expect(same.succeeded, "\(same.stderr)")
        #expect(try d.holds(corpus))

        // ctl add takes dict= and deflate.winbits= directly.
        #expect(try d.ctl(["add", "size=16M", "socket=none", "stats-dir=none", "algorithm=zstd", "dict=\(dir.file("trained.dict"))"], device: "zram1").succeeded)
        #expect(try d.ctl(["add", "size=16M", "socket=none", "stats-dir=none", "algorithm=deflate", "deflate.winbits=-15"], device: "zram2").succeeded)
        try refused(["add", "size=16M", "socket=none", "stats-dir=none", "algorithm=lzo", "dict=\(dir.file("trained.dict"))"],
                    "lzo takes no dictionary", device: "zram3")
        try refused(["add", "size=16M", "socket=none", "stats-dir=none", "algorithm=deflate", "deflate.winbits=16"],
                    "deflate.winbits=16 is outside -15...-9", device: "zram3")
        try refused(["add", "size=16M", "socket=none", "stats-dir=none", "algorithm=zstd", "dict=\(dir.file("missing.dict"))"],
                    "missing.dict: No such file or directory", device: "zram3")
        #expect(d.stop() == .exited(0))
    }

    @Test("the config's zstd(level=3,dict=PATH), for the primary and a recompression entry")
    func configDictionaries() throws {
        let dir = TempDir()
        defer { dir.remove() }
        dir.write("raw.dict", String(repeating: "The quick brown fox jumps over the lazy dog. ", count: 100))
        dir.write("z.conf", """
            [zram0]
            zram-size = 64
            compression-algorithm = zstd(level=3,dict=\(dir.file("raw.dict")),zstd.compact=1) lz4hc(level=9,dict=\(dir.file("raw.dict"))) deflate(deflate.winbits=-15)
            socket = \(dir.file("zram0.sock"))
            stats-dir = \(dir.file("stats"))
            """)
        let d = try RunningDaemon(dir, extra: ["--config", dir.file("z.conf")], deviceFlags: false)
        #expect(dir.read("stats/recomp_algorithm") == "#1: lzo-rle lzo lz4 [lz4hc] zstd deflate \n#2: lzo-rle lzo lz4 lz4hc zstd [deflate] \n")
        let corpus = Corpus()
        #expect(try d.copyIn(corpus))
        #expect(try d.ctl(["recompress"]).succeeded)
        #expect(try d.holds(corpus))
        #expect(d.stop() == .exited(0))

        // A dictionary that cannot be read stops the device from being made, saying why.
        dir.write("bad.conf", "[zram0]\nzram-size = 64\ncompression-algorithm = zstd(dict=\(dir.file("gone.dict")))\n")
        let bad = try runProcess([zramnbdBinary, "serve", "--config", dir.file("bad.conf"), "--no-mlock", "--control-socket", dir.file("c2.sock")], in: dir)
        #expect(bad.status != 0 && bad.stderr.contains("gone.dict: No such file or directory"), "\(bad.stderr)")
        dir.write("lzo.conf", "[zram0]\nzram-size = 64\ncompression-algorithm = lzo(dict=/x)\n")
        let lzo = try runProcess([zramnbdBinary, "serve", "--check", "--config", dir.file("lzo.conf")], in: dir, tag: "lzo")
        #expect(lzo.status == 2 && lzo.stderr.contains("compression-algorithm: dict: lzo takes no dictionary"), "\(lzo.stderr)")
    }
}
