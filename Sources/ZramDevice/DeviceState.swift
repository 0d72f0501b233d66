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

    public init(header: Int32, slots: Int32, arena: Int32, pageMap: Int32) {
        self.header = header; self.slots = slots; self.arena = arena; self.pageMap = pageMap
    }

    /// Closes all four (a caller giving up on a hand-over).
    public func closeAll() { for fd in [header, slots, arena, pageMap] where fd >= 0 { close(fd) } }
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

    /// FNV-1a over the page, its checksum word counted as zero.
    static func checksum(_ p: UnsafeRawPointer) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for i in 0..<bytes {
            let b = i >= At.checksum && i < At.checksum + 8 ? 0 : p.load(fromByteOffset: i, as: UInt8.self)
            h = (h ^ UInt64(b)) &* 0x100_0000_01b3
        }
        return h
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
        return DeviceStateHeader(name: getString(p + At.name, At.nameBytes), pageSize: ps, chainSize: chain,
                                 diskSize: disk, pageCount: pages, poolMaxPages: maxPages, poolHighWater: highWater,
                                 pagesCompacted: compacted, algorithm: algorithm, level: level,
                                 generation: get(At.generation), counters: counters)
    }
}

extension ZramDevice {
    /// Writes the state header and returns duplicates of the four state fds (the caller owns
    /// them; close-on-exec, the hand-over clears it). Runs with I/O quiesced, so the header and
    /// the memfds agree; the header describes the device as of this call, and a successor must
    /// attach before the device serves again (the hand-over stops I/O first). Refused for
    /// anonymous memory and for state not carried over yet (a backing device, recompression).
    public func exportState() throws(ZramError) -> DeviceStateFDs {
        try quiesce.exclusive { () throws(ZramError) -> DeviceStateFDs in
            let pool = storage.pool
            guard let slotsMemory = slots.shared, let arena = pool.arenaFD, let map = pool.pageMapFD else {
                throw .incompatibleState("\(name): its memory is anonymous (backing \(backing.rawValue)); only memfd state can be handed over")
            }
            guard storage.backing == nil else {
                throw .incompatibleState("\(name): a backing device's state is not carried over yet")
            }
            let p = storage.streams.parameters
            guard p.dictionary == nil, p.windowBits == nil, p.compactFrames == nil else {
                throw .incompatibleState("\(name): a dictionary, deflate.winbits or zstd.compact is not carried over yet")
            }
            guard storage.recompressors.allSatisfy({ $0 == nil }) else {
                throw .incompatibleState("\(name): recompression algorithms are not carried over yet")
            }
            if stateHeader == nil {
                do { stateHeader = try SharedMemory(name: "\(name).state", byteCount: DeviceStateHeader.bytes) } catch {
                    throw .outOfMemory("cannot create the state header: \(error)")
                }
            }
            guard let header = stateHeader else { throw .outOfMemory("no state header") }
            generation &+= 1
            let h = DeviceStateHeader(
                name: name, pageSize: pageSize, chainSize: chainSize, diskSize: diskSize, pageCount: pageCount,
                poolMaxPages: pool.maxPages, poolHighWater: pool.highWater, pagesCompacted: pool.pagesCompacted,
                algorithm: storage.streams.algorithm, level: storage.streams.level, generation: generation,
                counters: DeviceStateHeader.counterOrder.map { counters.load($0) })
            h.store(to: header.base)
            var fds = DeviceStateFDs(header: -1, slots: -1, arena: -1, pageMap: -1)
            do throws(PosixError) {
                fds.header = try header.duplicateFD()
                fds.slots = try slotsMemory.duplicateFD()
                fds.arena = try Self.duplicate(arena)
                fds.pageMap = try Self.duplicate(map)
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

    /// A successor's check before serving: every slot that names a pool object names a live one of
    /// a fitting size, no slot is locked or written back (nothing carries those yet), and the slot
    /// census agrees with the inherited counters and the pool. Reads only the slot table's data
    /// extents.
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
                guard !f.isWrittenBack else {
                    throw .incompatibleState("\(name): slot \(index) is on a backing device, which is not carried over yet")
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
        guard c.storedPages == expected.0, c.samePages == expected.1, c.hugePages == expected.2,
              c.comprBytes == expected.3, objects == live else {
            throw .incompatibleState("""
                \(name): slots and counters disagree (stored \(c.storedPages)/\(expected.0), same \(c.samePages)/\(expected.1), \
                huge \(c.hugePages)/\(expected.2), compressed bytes \(c.comprBytes)/\(expected.3), objects \(objects)/\(live) in the pool): \
                the state is stale or torn
                """)
        }
    }
}
