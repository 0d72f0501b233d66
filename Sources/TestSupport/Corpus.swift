import Glibc

/// The test corpus: an ext4 image (`mkfs.ext4 -d`) of real system files followed by synthetic
/// pages (zero, same-filled non-zero, random, and pages of known compressibility).
///
/// Built once per machine (about 3 s) and cached under /var/tmp/zramnbd-corpus/, keyed by `version`;
/// concurrent builders (parallel tests, several test processes) serialise on a lock file. The
/// contents are deterministic for a given machine (fixed UUID and hash seed, files in directory
/// order, seeded synthetic pages); only inode timestamps (about 0.03% of the bytes) differ between
/// rebuilds, since mkfs copies ctime from the staged files. Tests always see the cached copy.
public struct Corpus: Sendable {
    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    /// Change when the recipe changes, so stale caches are ignored.
    public static let version = "v1"
    public static let cacheDirectory = "/var/tmp/zramnbd-corpus"
    /// Size of the ext4 part.
    public static let imageBytes = 256 << 20
    /// Synthetic pages after the image: 1/8 zero, 1/8 same-filled non-zero, 1/4 random, 1/2 random
    /// prefixes of every length followed by zeros (compressed lengths spread over 0...4096).
    public static let syntheticPages = 4096
    public static let byteCount = imageBytes + syntheticPages * 4096

    public let path: String
    public var byteCount: Int { Self.byteCount }

    /// Returns the cached corpus, building it first if needed (a few seconds).
    public static func prepare() throws(Failure) -> Corpus {
        let path = cacheDirectory + "/corpus-\(version).bin"
        mkdir(cacheDirectory, 0o755)
        let lockFD = open(cacheDirectory + "/lock", O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard lockFD >= 0 else { throw Failure(description: "cannot open \(cacheDirectory)/lock: errno \(errno)") }
        defer { close(lockFD) }
        while flock(lockFD, LOCK_EX) != 0 && errno == EINTR {}
        var st = stat()
        if stat(path, &st) == 0 && Int(st.st_size) == byteCount { return Corpus(path: path) }
        try build(into: path)
        return Corpus(path: path)
    }

    /// Streams the corpus through one 4096-aligned buffer in `chunk`-byte pieces (the page cache
    /// holds the file, not this process).
    public func forEachChunk<E: Error>(_ chunk: Int = 1 << 20,
                                       _ body: (_ data: UnsafeRawPointer, _ offset: Int, _ count: Int) throws(E) -> Void) throws {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw Failure(description: "cannot open \(path): errno \(errno)") }
        defer { close(fd) }
        let buf = UnsafeMutableRawPointer.allocate(byteCount: chunk, alignment: 4096)
        defer { buf.deallocate() }
        var offset = 0
        while offset < byteCount {
            let want = min(chunk, byteCount - offset)
            var got = 0
            while got < want {
                let n = pread(fd, buf + got, want - got, off_t(offset + got))
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else { throw Failure(description: "short read of \(path) at \(offset + got)") }
                got += n
            }
            try body(buf, offset, want)
            offset += want
        }
    }

    // MARK: Building

    private static func build(into path: String) throws(Failure) {
        let stage = cacheDirectory + "/stage-\(getpid())"
        let temp = path + ".tmp-\(getpid())"
        _ = try? run(["/bin/rm", "-rf", stage, temp])
        defer { _ = try? run(["/bin/rm", "-rf", stage]) }
        guard mkdir(stage, 0o755) == 0 else { throw Failure(description: "mkdir \(stage): errno \(errno)") }

        // Text: headers and the Python standard library. Copied, not hard-linked: a link would
        // change the system files' ctime.
        var sources: [(String, String)] = []
        if isDirectory("/usr/include") { sources.append(("/usr/include", "include")) }
        if let py = listDirectory("/usr/lib").filter({ $0.hasPrefix("python3.") }).sorted().last {
            sources.append(("/usr/lib/" + py, "python"))
        }
        for (src, name) in sources {
            try check(run(["/bin/cp", "-a", src, stage + "/" + name]), "cp -a \(src)")
        }
        // Binary: shared libraries (Swift runtime if present, else system libraries), in name order,
        // up to a budget, so ELF code and data make up part of the image.
        let libDir = isDirectory("/opt/swift/usr/lib/swift/linux") ? "/opt/swift/usr/lib/swift/linux"
                                                                   : "/usr/lib/x86_64-linux-gnu"
        var libs: [String] = []
        var budget = 36 << 20
        for name in listDirectory(libDir).sorted() where name.contains(".so") {
            var st = stat()
            let src = libDir + "/" + name
            guard lstat(src, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else { continue }
            let size = Int(st.st_size)
            guard size <= 12 << 20, size <= budget else { continue }
            libs.append(src)
            budget -= size
        }
        mkdir(stage + "/lib", 0o755)
        if !libs.isEmpty { try check(run(["/bin/cp", "-p"] + libs + [stage + "/lib/"]), "cp libraries") }

        // Fixed UUID, hash seed and time: the same bytes on every build.
        let uuid = "5a1e0c2e-7a3d-4f6b-9c1d-2e3f4a5b6c7d"
        let fd = open(temp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw Failure(description: "create \(temp): errno \(errno)") }
        defer { close(fd) }
        guard ftruncate(fd, off_t(imageBytes)) == 0 else { throw Failure(description: "truncate \(temp)") }
        try check(run(["/sbin/mkfs.ext4", "-q", "-F", "-b", "4096", "-N", "40000", "-U", uuid,
                       "-E", "hash_seed=\(uuid),lazy_itable_init=0,lazy_journal_init=0,root_owner=0:0",
                       "-d", stage, temp],
                      environment: ["E2FSPROGS_FAKE_TIME=1700000000", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"]),
                  "mkfs.ext4 -d")
        try writeSynthetic(fd)
        guard fsync(fd) == 0, rename(temp, path) == 0 else {
            throw Failure(description: "cannot install \(path): errno \(errno)")
        }
    }

    private static func writeSynthetic(_ fd: Int32) throws(Failure) {
        let pages = syntheticPages
        let buf = UnsafeMutableRawPointer.allocate(byteCount: pages * 4096, alignment: 4096)
        defer { buf.deallocate() }
        memset(buf, 0, pages * 4096)
        var rng: UInt64 = 0x2545_f491_4f6c_dd1d
        func next() -> UInt64 {
            rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17
            return rng
        }
        func fillRandom(_ p: UnsafeMutableRawPointer, _ count: Int) {
            var i = 0
            while i < count {
                var w = next()
                withUnsafeBytes(of: &w) { (p + i).copyMemory(from: $0.baseAddress!, byteCount: min(8, count - i)) }
                i += 8
            }
        }
        for j in 0..<pages {
            let page = buf + j * 4096
            switch j % 8 {
            case 0:
                break // zero page
            case 1:
                // Same-filled, non-zero: byte repeats and 8-byte patterns that are not byte repeats.
                let word: UInt64 = j % 16 == 1 ? 0x0101_0101_0101_0101 &* UInt64(j / 16 % 255 + 1)
                                               : 0x0000_0000_dead_beef &+ UInt64(j) << 32
                for k in 0..<512 { page.storeBytes(of: word, toByteOffset: k * 8, as: UInt64.self) }
            case 2, 3:
                fillRandom(page, 4096)
            default:
                // Random prefix of a length that sweeps 1...4096, then zeros.
                fillRandom(page, (j * 7919) % 4096 + 1)
            }
        }
        var done = 0
        while done < pages * 4096 {
            let n = pwrite(fd, buf + done, pages * 4096 - done, off_t(imageBytes + done))
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw Failure(description: "writing synthetic pages: errno \(errno)") }
            done += n
        }
    }

    private static func check(_ status: Int32, _ what: String) throws(Failure) {
        guard status == 0 else { throw Failure(description: "\(what) failed with status \(status)") }
    }

    /// Runs a command to completion, stdout/stderr inherited; returns its exit status.
    /// posix_spawn with the signal mask reset (test threads block most signals; see swift.md §5).
    private static func run(_ argv: [String], environment: [String]? = nil) throws(Failure) -> Int32 {
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        resetSignals(in: &attr)
        let cargs: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) } + [nil]
        let cenv: [UnsafeMutablePointer<CChar>?]? = environment.map { $0.map { strdup($0) } + [nil] }
        defer {
            cargs.forEach { free($0) }
            cenv?.forEach { free($0) }
        }
        var pid: pid_t = 0
        let rc: Int32
        if let cenv {
            rc = posix_spawn(&pid, argv[0], nil, &attr, cargs, cenv)
        } else {
            rc = posix_spawn(&pid, argv[0], nil, &attr, cargs, environ)
        }
        guard rc == 0 else { throw Failure(description: "cannot run \(argv[0]): \(String(cString: strerror(rc)))") }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        // WIFEXITED/WEXITSTATUS are macros Swift cannot import.
        return status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
    }

    private static func isDirectory(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
    }

    private static func listDirectory(_ path: String) -> [String] {
        guard let dir = opendir(path) else { return [] }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(cString: raw.baseAddress!.assumingMemoryBound(to: CChar.self))
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }
}
