// The device's state as a successor process inherits it (issue 15): four memfds and one header.
// See Sources/ZsPool/STATE.md for what lives where and why the zsmalloc metadata is rebuilt.
import Codec
import Glibc
import Posix
import ZsPool

/// The fds of a device's state. `exportState()` hands out duplicates the caller owns;
/// `ZramDevice(attaching:)` adopts them (and closes them if it refuses).
public struct DeviceStateFDs: Sendable {
    /// One page: `DeviceStateHeader`, the versioned description of the other three.
    public var header: Int32
    /// The slot table (16 bytes per device page).
    public var slots: Int32
    /// The pool's page arena (the compressed data and zsmalloc's object headers).
    public var arena: Int32
    /// The pool's page map (8 bytes per arena page: which zspage a page belongs to).
    public var pageMap: Int32
    /// The backing device's open file (writeback), -1 without one. Its bitmap is not passed:
    /// the successor rebuilds it from the written-back slots.
    public var backing: Int32
    /// Per priority (0 the primary, 1...3 recomp_algorithm's), a memfd holding the dictionary
    /// its pages were compressed with, -1 without one. The bytes, not the path: the file may
    /// have changed since, and a trained dictionary may have none.
    public var dictionaries: [Int32]

    public init(header: Int32, slots: Int32, arena: Int32, pageMap: Int32, backing: Int32 = -1,
                dictionaries: [Int32] = Array(repeating: -1, count: ZramDevice.maxPriorities)) {
        self.header = header; self.slots = slots; self.arena = arena; self.pageMap = pageMap; self.backing = backing
        self.dictionaries = dictionaries
    }

    /// Every fd, in this order (the backing one and the dictionaries only where there are).
    public var all: [Int32] { [header, slots, arena, pageMap] + ([backing] + dictionaries).filter { $0 >= 0 } }

    /// Closes them all (a caller giving up on a hand-over).
    public func closeAll() { for fd in all where fd >= 0 { close(fd) } }

    /// Close-on-exec duplicates of every fd, the caller's to own (a successor attaches with them
    /// and keeps these for the previous binary); nil, with none left open, if one cannot be made.
    public func duplicates() -> DeviceStateFDs? {
        var copy = DeviceStateFDs(header: -1, slots: -1, arena: -1, pageMap: -1)
        var parts: [WritableKeyPath<DeviceStateFDs, Int32>] = [\.header, \.slots, \.arena, \.pageMap, \.backing]
        parts += dictionaries.indices.map { \DeviceStateFDs.dictionaries[$0] }
        for part in parts where self[keyPath: part] >= 0 {
            let d = fcntl(self[keyPath: part], F_DUPFD_CLOEXEC, 0)
            guard d >= 0 else {
                copy.closeAll()
                return nil
            }
            copy[keyPath: part] = d
        }
        return copy
    }
}

/// The header page: little-endian 64-bit words at fixed offsets, then the counters, then two
/// NUL-padded names. Layout version 1. A change that an older reader would misread gets a new
/// version; readers refuse versions they do not know, so a failed upgrade leaves the old process
/// serving. The checksum (FNV-1a over the page with its own word zeroed) catches a torn header.
public struct DeviceStateHeader: Sendable, Equatable {
    /// "zramnbdS" as 8 bytes in file order.
    public static let magic: UInt64 = 0x5364_626e_6d61_727a
    public static let layoutVersion: UInt64 = 1
    public static let bytes = 4096

    public var name: String
    public var pageSize: Int
    public var chainSize: Int
    public var diskSize: Int
    public var pageCount: Int
    public var poolMaxPages: Int
    public var poolHighWater: Int
    public var pagesCompacted: Int
    public var algorithm: CompressionAlgorithm
    public var level: Int32
    /// Bumped by every export: a successor can tell two exports apart.
    public var generation: UInt64
    /// The device's counters (mm_stat, io_stat, bd_stat, mem_limit, mem_used_max, ...), in
    /// `counterOrder`.
    var counters: [Int]
    /// recomp_algorithm's secondary compressors: slots record the priority that produced them,
    /// so a successor must read them with the same algorithm at the same priority.
    public var recompressors: [Recompressor] = []

    /// The backing device (writeback): its path (for `backing_dev` and messages), whether the
    /// daemon created the file (it removes it with the device), and its size in blocks.
    public var backing: BackingFile?

    /// Per priority (0 the primary, 1...3 the secondaries): algorithm_params beyond the level.
    public var parameters = [StoredParameters](repeating: StoredParameters(), count: ZramDevice.maxPriorities)

    /// What a successor needs to compress and decompress as this priority did: the dictionary
    /// itself travels in its own memfd (`DeviceStateFDs.dictionaries`); the header holds its
    /// length and checksum, so a successor never decompresses with other bytes.
    public struct StoredParameters: Sendable, Equatable {
        public var windowBits: Int32?
        public var compactFrames: Bool?
        public var dictionary: DictionaryRecord?
    }

    public struct DictionaryRecord: Sendable, Equatable {
        public var byteCount: Int
        public var checksum: UInt64
        /// Where it came from, for messages; nil if trained and not saved, or over 255 bytes.
        public var path: String?
    }

    public struct BackingFile: Sendable, Equatable {
        public var path: String
        public var wasCreated: Bool
        public var blockCount: Int
    }

    public struct Recompressor: Sendable, Equatable {
        public var priority: Int
        public var algorithm: CompressionAlgorithm
        public var level: Int32
    }

    /// Version 1's counter order: fixed here, never ZramCounter's declaration order, so adding a
    /// counter to the enum cannot shift the stored ones. New counters are appended (and a
    /// successor that knows more counters than the state holds starts the new ones at 0).
    static let counterOrder: [ZramCounter] = [
        .pagesStored, .comprDataSize, .memLimitPages, .maxUsedPages, .samePages, .hugePages, .hugePagesSince,
        .failedReads, .failedWrites, .notifyFree, .bdCount, .bdReads, .bdWrites, .writebackRuns,
        .writebackBytesFreed, .recompressRuns, .recompressedPages, .recompressBytesSaved,
    ]

    // Word offsets.
    private enum At {
        static let magic = 0, version = 8, headerBytes = 16, pageSize = 24, chainSize = 32, diskSize = 40
        static let pageCount = 48, poolMaxPages = 56, poolHighWater = 64, pagesCompacted = 72
        static let level = 80, generation = 88, counterCount = 96, checksum = 104
        static let counters = 128, maxCounters = 32
        static let algorithm = 512, name = 544, nameBytes = 256
        /// Per priority 1...3: a 32-byte algorithm name (empty: none), then its level.
        static let recompressors = 1024, recompressorBytes = 48
        /// The backing device: flags (bit 0 present, bit 1 created by us), blocks, then its path.
        static let backingFlags = 1200, backingBlocks = 1208, backingPath = 1216, backingPathBytes = 1024
        /// Per priority 0...3: flags (bit 0 winbits set, bit 1 zstd.compact set, bit 2 its value,
        /// bit 3 a dictionary), winbits, the dictionary's bytes and checksum, then its path.
        static let parameters = 2304, parameterBytes = 288, dictionaryPath = 32, dictionaryPathBytes = 256
    }

    /// Writes the page at `p` (4096 bytes).
    func store(to p: UnsafeMutableRawPointer) {
        memset(p, 0, Self.bytes)
        func put(_ at: Int, _ v: UInt64) { p.storeBytes(of: v.littleEndian, toByteOffset: at, as: UInt64.self) }
        put(At.magic, Self.magic); put(At.version, Self.layoutVersion); put(At.headerBytes, UInt64(Self.bytes))
        put(At.pageSize, UInt64(pageSize)); put(At.chainSize, UInt64(chainSize)); put(At.diskSize, UInt64(diskSize))
        put(At.pageCount, UInt64(pageCount)); put(At.poolMaxPages, UInt64(poolMaxPages))
        put(At.poolHighWater, UInt64(poolHighWater)); put(At.pagesCompacted, UInt64(pagesCompacted))
        put(At.level, UInt64(bitPattern: Int64(level))); put(At.generation, generation)
        put(At.counterCount, UInt64(counters.count))
        for (i, v) in counters.enumerated() { put(At.counters + 8 * i, UInt64(bitPattern: Int64(v))) }
        Self.putString(algorithm.rawValue, p + At.algorithm, 32)
        Self.putString(name, p + At.name, At.nameBytes)
        for r in recompressors where (1..<ZramDevice.maxPriorities).contains(r.priority) {
            let at = At.recompressors + (r.priority - 1) * At.recompressorBytes
            Self.putString(r.algorithm.rawValue, p + at, 32)
            put(at + 32, UInt64(bitPattern: Int64(r.level)))
        }
        if let b = backing {
            put(At.backingFlags, 1 | (b.wasCreated ? 2 : 0))
            put(At.backingBlocks, UInt64(b.blockCount))
            Self.putString(b.path, p + At.backingPath, At.backingPathBytes)
        }
        for (priority, sp) in parameters.prefix(ZramDevice.maxPriorities).enumerated() {
            let at = At.parameters + priority * At.parameterBytes
            var flags: UInt64 = 0
            if let w = sp.windowBits { flags |= 1; put(at + 8, UInt64(bitPattern: Int64(w))) }
            if let c = sp.compactFrames { flags |= 2 | (c ? 4 : 0) }
            if let d = sp.dictionary {
                flags |= 8
                put(at + 16, UInt64(d.byteCount)); put(at + 24, d.checksum)
                if let path = d.path, path.utf8.count < At.dictionaryPathBytes {
                    Self.putString(path, p + at + At.dictionaryPath, At.dictionaryPathBytes)
                }
            }
            put(at, flags)
        }
        put(At.checksum, Self.checksum(p))
    }

    private static func putString(_ s: String, _ p: UnsafeMutableRawPointer, _ capacity: Int) {
        for (i, b) in s.utf8.prefix(capacity - 1).enumerated() { p.storeBytes(of: b, toByteOffset: i, as: UInt8.self) }
    }

    private static func getString(_ p: UnsafeRawPointer, _ capacity: Int) -> String {
        var bytes: [UInt8] = []
        for i in 0..<capacity {
            let b = p.load(fromByteOffset: i, as: UInt8.self)
            if b == 0 { break }
            bytes.append(b)
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// FNV-1a over `bytes` (a dictionary's).
    /// `from`: the hash so far, to continue over a later piece.
    static func checksum(_ bytes: UnsafeRawBufferPointer, from start: UInt64 = 0xcbf2_9ce4_8422_2325) -> UInt64 {
        var h = start
        for b in bytes { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
        return h
    }

    /// FNV-1a over the page, its checksum word counted as zero.
    static func checksum(_ p: UnsafeRawPointer) -> UInt64 {
        let zeroWord: UInt64 = 0
        var h = checksum(UnsafeRawBufferPointer(start: p, count: At.checksum))
        h = withUnsafeBytes(of: zeroWord) { checksum($0, from: h) }
        return checksum(UnsafeRawBufferPointer(start: p + At.checksum + 8, count: bytes - At.checksum - 8), from: h)
    }

    /// Reads and checks the header page of `fd` (not adopted): the magic, the layout version,
    /// the geometry this build can serve, and the checksum. Throws `incompatibleState` saying
    /// what is wrong; nothing is changed, so the predecessor can keep serving.
    public static func validate(fd: Int32) throws(ZramError) -> DeviceStateHeader {
        let p = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 8)
        defer { p.deallocate() }
        let n = pread(fd, p, bytes, 0)
        guard n == bytes else {
            throw .incompatibleState("state header: read \(n) of \(bytes) bytes (\(n < 0 ? String(cString: strerror(errno)) : "short file"))")
        }
        return try parse(p)
    }

    static func parse(_ p: UnsafeRawPointer) throws(ZramError) -> DeviceStateHeader {
        func get(_ at: Int) -> UInt64 { UInt64(littleEndian: p.load(fromByteOffset: at, as: UInt64.self)) }
        func int(_ at: Int, _ what: String, max: Int = Int.max) throws(ZramError) -> Int {
            let v = get(at)
            guard v <= UInt64(max) else { throw .incompatibleState("state header: \(what) \(v) is out of range") }
            return Int(v)
        }
        guard get(At.magic) == magic else {
            throw .incompatibleState("not a zramnbd device state (magic 0x\(String(get(At.magic), radix: 16)), expected 0x\(String(magic, radix: 16)))")
        }
        let version = get(At.version)
        guard version == layoutVersion else {
            throw .incompatibleState("state layout version \(version); this zramnbd reads version \(layoutVersion) only")
        }
        guard get(At.headerBytes) == UInt64(bytes) else {
            throw .incompatibleState("state header of \(get(At.headerBytes)) bytes; layout version 1 has \(bytes)")
        }
        guard get(At.checksum) == checksum(p) else {
            throw .incompatibleState("state header checksum mismatch: torn or overwritten, refusing to serve from it")
        }
        let ps = try int(At.pageSize, "page size")
        guard ps == Posix.pageSize else {
            throw .incompatibleState("state written with \(ps)-byte pages; this zramnbd uses \(Posix.pageSize)")
        }
        let chain = try int(At.chainSize, "chain size")
        guard ZramConfig.chainSizes.contains(chain) else {
            throw .incompatibleState("state chain size \(chain) is not in \(ZramConfig.chainSizes)")
        }
        let disk = try int(At.diskSize, "disk size", max: ZramConfig.maxDiskSize)
        let pages = try int(At.pageCount, "page count", max: ZramConfig.maxDiskSize >> pageShift)
        guard pages << pageShift == disk else {
            throw .incompatibleState("state geometry: \(pages) pages do not make a \(disk)-byte disk")
        }
        let maxPages = try int(At.poolMaxPages, "pool size", max: Int(UInt32.max) - 1)
        guard maxPages == ZramDevice.poolMaxPages(pageCount: pages, chainSize: chain) else {
            throw .incompatibleState("state pool of \(maxPages) pages; a \(disk)-byte disk with chain size \(chain) has \(ZramDevice.poolMaxPages(pageCount: pages, chainSize: chain))")
        }
        let highWater = try int(At.poolHighWater, "pool high water", max: maxPages)
        let compacted = try int(At.pagesCompacted, "pages_compacted")
        let count = try int(At.counterCount, "counter count", max: At.maxCounters)
        guard count <= counterOrder.count else {
            throw .incompatibleState("state holds \(count) counters; this zramnbd knows \(counterOrder.count) (written by a newer version)")
        }
        var counters = [Int](repeating: 0, count: counterOrder.count)
        for i in 0..<count { counters[i] = Int(Int64(bitPattern: get(At.counters + 8 * i))) }
        let algorithmName = getString(p + At.algorithm, 32)
        guard let algorithm = CompressionAlgorithm(rawValue: algorithmName) else {
            throw .incompatibleState("state compressed with \"\(algorithmName)\", which this zramnbd does not have")
        }
        let level64 = Int64(bitPattern: get(At.level))
        guard let level = Int32(exactly: level64), algorithm.levelRange.contains(level) else {
            throw .incompatibleState("state level \(level64) is not a \(algorithm.rawValue) level")
        }
        var recompressors: [Recompressor] = []
        for priority in 1..<ZramDevice.maxPriorities {
            let at = At.recompressors + (priority - 1) * At.recompressorBytes
            let n = getString(p + at, 32)
            guard !n.isEmpty else { continue }
            guard let a = CompressionAlgorithm(rawValue: n) else {
                throw .incompatibleState("state recompresses with \"\(n)\" at priority \(priority), which this zramnbd does not have")
            }
            let l64 = Int64(bitPattern: get(at + 32))
            guard let l = Int32(exactly: l64), a.levelRange.contains(l) else {
                throw .incompatibleState("state level \(l64) at priority \(priority) is not a \(n) level")
            }
            recompressors.append(Recompressor(priority: priority, algorithm: a, level: l))
        }
        var backing: BackingFile?
        let flags = get(At.backingFlags)
        if flags & 1 != 0 {
            let path = getString(p + At.backingPath, At.backingPathBytes)
            guard path.hasPrefix("/") else { throw .incompatibleState("state backing device path '\(path)' is not absolute") }
            backing = BackingFile(path: path, wasCreated: flags & 2 != 0,
                                  blockCount: try int(At.backingBlocks, "backing device blocks", max: Int(UInt32.max)))
        }
        var parameters = [StoredParameters](repeating: StoredParameters(), count: ZramDevice.maxPriorities)
        for priority in parameters.indices {
            let at = At.parameters + priority * At.parameterBytes
            let flags = get(at)
            guard flags & ~15 == 0 else { throw .incompatibleState("state parameters at priority \(priority): unknown flags 0x\(String(flags, radix: 16))") }
            if flags & 1 != 0 {
                let w = Int64(bitPattern: get(at + 8))
                guard let bits = Int32(exactly: w) else { throw .incompatibleState("state deflate.winbits \(w) at priority \(priority)") }
                parameters[priority].windowBits = bits
            }
            if flags & 2 != 0 { parameters[priority].compactFrames = flags & 4 != 0 }
            if flags & 8 != 0 {
                let path = getString(p + at + At.dictionaryPath, At.dictionaryPathBytes)
                parameters[priority].dictionary = DictionaryRecord(
                    byteCount: try int(at + 16, "dictionary size at priority \(priority)", max: CompressionDictionary.maxBytes),
                    checksum: get(at + 24), path: path.isEmpty ? nil : path)
            }
        }
        return DeviceStateHeader(name: getString(p + At.name, At.nameBytes), pageSize: ps, chainSize: chain,
                                 diskSize: disk, pageCount: pages, poolMaxPages: maxPages, poolHighWater: highWater,
                                 pagesCompacted: compacted, algorithm: algorithm, level: level,
                                 generation: get(At.generation), counters: counters, recompressors: recompressors,
                                 backing: backing, parameters: parameters)
    }
}

extension ZramDevice {
    /// Writes the state header and returns duplicates of the four state fds (the caller owns
    /// them; close-on-exec, the hand-over clears it). Runs with I/O quiesced, so the header and
    /// the memfds agree; the header describes the device as of this call, and a successor must
    /// attach before the device serves again (the hand-over stops I/O first). Refused for
    /// anonymous memory and for state not carried over yet (a backing device).
    ///
    /// `freeze`: keep the device quiesced afterwards (every request and run waits) so nothing can
    /// change what the header describes before the process execs its successor; `thaw()` after a
    /// failed hand-over. The freezing thread must not touch the device until then.
    public func exportState(freeze: Bool = false) throws(ZramError) -> DeviceStateFDs {
        quiesce.lockExclusive()
        do {
            let fds = try exportQuiesced()
            if !freeze { quiesce.unlock() }
            return fds
        } catch {
            quiesce.unlock()
            throw error
        }
    }

    /// Ends `exportState(freeze: true)`: the device serves again in this process.
    public func thaw() { quiesce.unlock() }

    private func exportQuiesced() throws(ZramError) -> DeviceStateFDs {
        do {
            let pool = storage.pool
            guard let slotsMemory = slots.shared, let arena = pool.arenaFD, let map = pool.pageMapFD else {
                throw .incompatibleState("\(name): its memory is anonymous (backing \(backing.rawValue)); only memfd state can be handed over")
            }
            if stateHeader == nil {
                do { stateHeader = try SharedMemory(name: "\(name).state", byteCount: DeviceStateHeader.bytes) } catch {
                    throw .outOfMemory("cannot create the state header: \(error)")
                }
            }
            guard let header = stateHeader else { throw .outOfMemory("no state header") }
            if let b = storage.backing, b.file.path.utf8.count >= 1024 {
                throw .incompatibleState("\(name): the backing device's path is longer than the state keeps (1023 bytes)")
            }
            let priorities: [CompressionStreams?] = [storage.streams] + storage.recompressors.dropFirst()
            generation &+= 1
            var h = DeviceStateHeader(
                name: name, pageSize: pageSize, chainSize: chainSize, diskSize: diskSize, pageCount: pageCount,
                poolMaxPages: pool.maxPages, poolHighWater: pool.highWater, pagesCompacted: pool.pagesCompacted,
                algorithm: storage.streams.algorithm, level: storage.streams.level, generation: generation,
                counters: DeviceStateHeader.counterOrder.map { counters.load($0) },
                recompressors: storage.recompressors.enumerated().compactMap { p, r in
                    r.map { DeviceStateHeader.Recompressor(priority: p, algorithm: $0.algorithm, level: $0.level) }
                },
                backing: storage.backing.map {
                    DeviceStateHeader.BackingFile(path: $0.file.path, wasCreated: $0.file.wasCreated, blockCount: $0.blockCount)
                })
            for (priority, streams) in priorities.enumerated() {
                guard let p = streams?.parameters else { continue }
                h.parameters[priority] = DeviceStateHeader.StoredParameters(
                    windowBits: p.windowBits, compactFrames: p.compactFrames,
                    dictionary: p.dictionary.map { d in
                        DeviceStateHeader.DictionaryRecord(byteCount: d.count, checksum: d.withBytes { DeviceStateHeader.checksum($0) }, path: d.path)
                    })
            }
            h.store(to: header.base)
            var fds = DeviceStateFDs(header: -1, slots: -1, arena: -1, pageMap: -1)
            do throws(PosixError) {
                for (priority, streams) in priorities.enumerated() {
                    guard let d = streams?.parameters.dictionary else { continue }
                    fds.dictionaries[priority] = try SharedMemory.file(name: "\(name).dict\(priority)", holding: d.contents)
                }
                fds.header = try header.duplicateFD()
                fds.slots = try slotsMemory.duplicateFD()
                fds.arena = try Self.duplicate(arena)
                fds.pageMap = try Self.duplicate(map)
                if let b = storage.backing { fds.backing = try Self.duplicate(b.file.fd) }
            } catch {
                fds.closeAll()
                throw .outOfMemory("cannot duplicate the state fds: \(error)")
            }
            return fds
        }
    }

    private static func duplicate(_ fd: Int32) throws(PosixError) -> Int32 {
        let d = fcntl(fd, F_DUPFD_CLOEXEC, 0)
        guard d >= 0 else { throw .system("dup state fd", errno: errno) }
        return d
    }

    /// A written-back slot's block, taken into the rebuilt bitmap; false if there is no backing
    /// device or the block is outside it.
    private func adoptWrittenBack(_ index: Int) -> Bool {
        guard let backing = storage.backing else { return false }
        return backing.adoptReference(Backing.location(slots.handle(index)).block)
    }

    /// A successor's check before serving: every slot that names a pool object names a live one of
    /// a fitting size, every written-back slot a block of the backing device (whose bitmap is
    /// rebuilt from them), no slot is locked, and the slot census agrees with the inherited
    /// counters and the pool. Reads only the slot table's data extents.
    func verifyAttached() throws(ZramError) {
        let pool = storage.pool
        var c = SlotCensus()
        var objects = 0
        try slots.forEachPossiblyUsedRange(in: 0..<pageCount) { (range) throws(ZramError) in
            for index in range {
                let f = slots.peekFlags(index)
                guard !f.isUntouched else { continue }
                guard f.rawValue & SlotFlags.lockBit == 0 else {
                    throw .incompatibleState("\(name): slot \(index) is locked: the state was taken during I/O")
                }
                guard f.isAllocated else { continue }
                c.storedPages += 1
                if f.isWrittenBack {
                    guard adoptWrittenBack(index) else {
                        throw .incompatibleState("\(name): slot \(index) names no block of a backing device: refusing to serve wrong data")
                    }
                    continue
                }
                if f.isSame { c.samePages += 1; continue }
                let size = f.objectSize
                guard pool.isLiveObject(slots.handle(index), count: size) else {
                    throw .incompatibleState("\(name): slot \(index) names no live \(size)-byte object: refusing to serve wrong data")
                }
                objects += 1
                if f.isHuge { c.hugePages += 1 }
                c.comprBytes += size
            }
        }
        let live = pool.classStats().reduce(0) { $0 + $1.objUsed }
        let expected = (counters.load(.pagesStored), counters.load(.samePages), counters.load(.hugePages),
                        counters.load(.comprDataSize))
        let blocks = storage.backing?.blocksInUse() ?? 0
        guard c.storedPages == expected.0, c.samePages == expected.1, c.hugePages == expected.2,
              c.comprBytes == expected.3, objects == live, blocks == counters.load(.bdCount) else {
            throw .incompatibleState("""
                \(name): slots and counters disagree (stored \(c.storedPages)/\(expected.0), same \(c.samePages)/\(expected.1), \
                huge \(c.hugePages)/\(expected.2), compressed bytes \(c.comprBytes)/\(expected.3), objects \(objects)/\(live) in the pool, \
                backing blocks \(blocks)/\(counters.load(.bdCount))): the state is stale or torn
                """)
        }
    }

    /// Pages of the pool ever handed out, from the page map itself: one past its last nonzero
    /// word (its data extents are walked, so a sparse map costs nothing).
    static func pageMapExtent(_ fd: Int32, maxPages: Int) throws(ZramError) -> Int {
        var end = 0
        var at: off_t = 0
        while true {
            let data = lseek(fd, at, 3)        // SEEK_DATA
            if data < 0 { break }              // ENXIO: no data beyond `at`
            let hole = lseek(fd, data, 4)      // SEEK_HOLE
            guard hole > data else { break }
            end = Int(hole)
            at = hole
        }
        var words = min(end / 8, maxPages)
        var word: UInt64 = 0
        while words > 0 {
            guard pread(fd, &word, 8, off_t((words - 1) * 8)) == 8 else {
                throw .incompatibleState("page map: read failed: \(String(cString: strerror(errno)))")
            }
            if word != 0 { break }
            words -= 1
        }
        return words
    }

    /// The crash check of every stored slot (no I/O runs yet). A slot locked at the crash was
    /// in a request: one that names a live object of its size whose page decompresses is kept
    /// (its old or its new contents, both whole: a write fills its object before it locks the
    /// slot), any other is dropped and reads as zeros (its write was never acknowledged). An
    /// unlocked slot that names no live object cannot be explained by a crash: the device is
    /// refused. Then objects no slot names are freed (writes killed before they were installed)
    /// and the counters recounted.
    func recoverSlots() throws(ZramError) {
        let pool = storage.pool
        var c = SlotCensus()
        var referenced: [ZsHandle] = []
        var dropped: [Int] = []
        let page = UnsafeMutableRawPointer.allocate(byteCount: pageSize, alignment: 64)
        defer { page.deallocate() }
        try slots.forEachPossiblyUsedRange(in: 0..<pageCount) { (range) throws(ZramError) in
            for index in range {
                let raw = slots.peekFlags(index)
                guard !raw.isUntouched else { continue }
                let locked = raw.rawValue & SlotFlags.lockBit != 0
                let f = SlotFlags(rawValue: raw.rawValue & ~SlotFlags.lockBit)
                func drop() {
                    slots.setHandle(index, 0)
                    slots.unlock(index, flags: .empty)
                    dropped.append(index)
                }
                if locked { slots.unlock(index, flags: f) }
                guard f.isAllocated else { continue }
                if f.isWrittenBack {
                    // A writeback installs the block only once it is written: whole if named.
                    guard adoptWrittenBack(index) else {
                        if locked { drop(); continue }
                        throw .incompatibleState("\(name): slot \(index) names no block of a backing device, and no request was writing it: the state is torn, refusing to serve wrong data")
                    }
                    c.storedPages += 1
                    continue
                }
                if f.isSame {
                    // A write may have stored a new object's handle where the fill word was.
                    if locked && slots.handle(index) != 0 { drop() } else { c.storedPages += 1; c.samePages += 1 }
                    continue
                }
                let size = f.objectSize
                let handle = slots.handle(index)
                var ok = pool.isLiveObject(handle, count: size)
                if ok && locked {
                    do throws(ZramError) { try load(index, f, into: page, storage, stream: nil) } catch { ok = false }
                }
                guard ok else {
                    if locked { drop(); continue }
                    throw .incompatibleState("\(name): slot \(index) names no live \(size)-byte object, and no request was writing it: the state is torn, refusing to serve wrong data")
                }
                referenced.append(handle)
                c.storedPages += 1
                if f.isHuge { c.hugePages += 1 }
                c.comprBytes += size
            }
        }
        referenced.sort()
        for i in referenced.indices.dropFirst() where referenced[i] == referenced[i - 1] {
            throw .incompatibleState("\(name): two slots name object \(referenced[i]): the state is torn, refusing to serve wrong data")
        }
        var leaked = 0
        for h in pool.liveHandles() where !Self.contains(referenced, h) {
            pool.free(h)
            leaked += 1
        }
        counters.store(.pagesStored, c.storedPages)
        counters.store(.samePages, c.samePages)
        counters.store(.hugePages, c.hugePages)
        counters.store(.comprDataSize, c.comprBytes)
        counters.store(.bdCount, storage.backing?.blocksInUse() ?? 0)
        counters.store(.maxUsedPages, max(counters.load(.maxUsedPages), pool.totalPages))
        recovery = RecoveryReport(droppedPages: dropped, freedObjects: leaked)
    }

    private static func contains(_ sorted: [ZsHandle], _ h: ZsHandle) -> Bool {
        var lo = 0, hi = sorted.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if sorted[mid] < h { lo = mid + 1 } else { hi = mid }
        }
        return lo < sorted.count && sorted[lo] == h
    }
}

/// What `ZramDevice(recovering:)` found: pages whose write was cut by the crash (they read as
/// zeros) and objects freed because no slot named them.
public struct RecoveryReport: Sendable, Equatable {
    public var droppedPages: [Int]
    public var freedObjects: Int
}
