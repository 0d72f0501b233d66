import Glibc

/// A private kernel zram device for oracle tests: created with hot_add, removed (after a reset) when
/// the object goes away. Never touches zram0, which the system may use.
public final class KernelZram {
    public enum Failure: Error, CustomStringConvertible {
        case unavailable(String)
        case sysfs(String, errno: Int32)
        case io(String, errno: Int32)

        public var description: String {
            switch self {
            case .unavailable(let why): "kernel zram unavailable: \(why)"
            case .sysfs(let path, let e): "\(path): \(String(cString: strerror(e)))"
            case .io(let what, let e): "\(what): \(String(cString: strerror(e)))"
            }
        }
    }

    static let control = "/sys/class/zram-control"

    /// Why kernel zram cannot be used here, or nil if it can (root, zram module loaded).
    public static var unavailableReason: String? {
        if geteuid() != 0 { return "not running as root" }
        if access(control + "/hot_add", R_OK) != 0 { return "\(control)/hot_add missing (zram module not loaded?)" }
        if access(control + "/hot_remove", W_OK) != 0 { return "\(control)/hot_remove not writable" }
        return nil
    }

    public static var available: Bool { unavailableReason == nil }

    public let id: Int
    public var sysfs: String { "/sys/block/zram\(id)" }
    public var devicePath: String { "/dev/zram\(id)" }
    private var fd: Int32 = -1
    private var removed = false

    /// hot_add a device, select `algorithm`, set the disk size and open the block device for
    /// direct I/O.
    public init(algorithm: String, diskSize: Int) throws(Failure) {
        if let why = Self.unavailableReason { throw .unavailable(why) }
        let added = try Self.readText(Self.control + "/hot_add")
        guard let n = Int(added.trimmingWhitespace()) else {
            throw .unavailable("hot_add returned \(added.debugDescription)")
        }
        guard n > 0 else {
            // zram0 did not exist and hot_add just made it: undo that, and leave zram0 to the system.
            try? Self.writeText(Self.control + "/hot_remove", "0")
            throw .unavailable("hot_add gave zram0, which these tests never use")
        }
        id = n
        do throws(Failure) {
            try Self.writeText(sysfs + "/comp_algorithm", algorithm)
            try Self.writeText(sysfs + "/disksize", String(diskSize))
            fd = open(devicePath, O_RDWR | O_CLOEXEC | oDirect)
            guard fd >= 0 else { throw .io("open \(devicePath)", errno: errno) }
        } catch {
            remove()
            throw error
        }
    }

    deinit { remove() }

    /// Closes, resets and hot_removes the device. Safe to call twice. Anyone else holding the
    /// device open (udev's blkid; a child process spawned meanwhile, if a descriptor lacked
    /// O_CLOEXEC) makes reset fail with EBUSY, so both steps retry for up to 2 s; a device that
    /// still cannot go is reported, not left silently.
    public func remove() {
        guard !removed else { return }
        removed = true
        if fd >= 0 { close(fd); fd = -1 }
        let reset = Self.retryWhileBusy { () throws(Failure) in try Self.writeText(sysfs + "/reset", "1") }
        let gone = Self.retryWhileBusy { () throws(Failure) in try Self.writeText(Self.control + "/hot_remove", String(id)) }
        if let error = reset ?? gone {
            print("WARNING: kernel zram\(id) was not removed: \(error)")
        }
    }

    /// Runs `body` until it does not fail with EBUSY (100 tries, 20 ms apart); returns the last error.
    private static func retryWhileBusy(_ body: () throws(Failure) -> Void) -> Failure? {
        var last: Failure?
        for _ in 0..<100 {
            do throws(Failure) {
                try body()
                return nil
            } catch {
                last = error
                guard case .sysfs(_, let e) = error, e == EBUSY else { return error }
                usleep(20_000)
            }
        }
        return last
    }

    /// Writes with O_DIRECT, so the data reaches zram at once. `buffer`, `offset` and `count`
    /// must be 4096-aligned (direct I/O).
    public func write(_ buffer: UnsafeRawPointer, count: Int, offset: Int) throws(Failure) {
        precondition(Int(bitPattern: buffer) % 4096 == 0 && offset % 4096 == 0 && count % 4096 == 0,
                     "direct I/O needs 4096-aligned buffer, offset and length")
        var done = 0
        while done < count {
            let n = pwrite(fd, buffer + done, count - done, off_t(offset + done))
            if n < 0 {
                if errno == EINTR { continue }
                throw .io("pwrite \(devicePath) at \(offset + done)", errno: errno)
            }
            done += n
        }
    }

    /// Reads with O_DIRECT (same alignment rules as `write`).
    public func read(into buffer: UnsafeMutableRawPointer, count: Int, offset: Int) throws(Failure) {
        precondition(Int(bitPattern: buffer) % 4096 == 0 && offset % 4096 == 0 && count % 4096 == 0)
        var done = 0
        while done < count {
            let n = pread(fd, buffer + done, count - done, off_t(offset + done))
            if n < 0 {
                if errno == EINTR { continue }
                throw .io("pread \(devicePath)", errno: errno)
            }
            if n == 0 { throw .io("pread \(devicePath): short read", errno: EIO) }
            done += n
        }
    }

    /// BLKDISCARD on the range (zram frees the whole pages in it).
    public func discard(offset: Int, length: Int) throws(Failure) {
        var range: (UInt64, UInt64) = (UInt64(offset), UInt64(length))
        let r = withUnsafeMutablePointer(to: &range) { ioctl(fd, UInt(0x1277), $0) } // BLKDISCARD
        if r != 0 { throw .io("BLKDISCARD \(devicePath)", errno: errno) }
    }

    public func compact() throws(Failure) { try Self.writeText(sysfs + "/compact", "1") }

    /// `echo VALUE > idle`: "all", or an age in seconds (this kernel has no access times, so EINVAL).
    public func idle(_ value: String) throws(Failure) { try Self.writeText(sysfs + "/idle", value) }

    public func setMemLimit(_ bytes: Int) throws(Failure) { try Self.writeText(sysfs + "/mem_limit", String(bytes)) }

    public func mmStatText() throws(Failure) -> String { try Self.readText(sysfs + "/mm_stat") }
    public func ioStatText() throws(Failure) -> String { try Self.readText(sysfs + "/io_stat") }

    /// mm_stat's nine numbers: orig_data_size compr_data_size mem_used_total mem_limit mem_used_max
    /// same_pages pages_compacted huge_pages huge_pages_since.
    public func mmStat() throws(Failure) -> [UInt64] { Self.numbers(try mmStatText()) }
    /// io_stat: failed_reads failed_writes 0 notify_free.
    public func ioStat() throws(Failure) -> [UInt64] { Self.numbers(try ioStatText()) }

    static func numbers(_ text: String) -> [UInt64] {
        text.split(whereSeparator: { $0 == " " || $0 == "\n" }).compactMap { UInt64($0) }
    }

    static func readText(_ path: String) throws(Failure) -> String {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .sysfs(path, errno: errno) }
        defer { close(fd) }
        var buf = [UInt8](repeating: 0, count: 8192)
        let n = buf.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
        guard n >= 0 else { throw .sysfs(path, errno: errno) }
        return String(decoding: buf[..<n], as: UTF8.self)
    }

    static func writeText(_ path: String, _ value: String) throws(Failure) {
        let fd = open(path, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .sysfs(path, errno: errno) }
        defer { close(fd) }
        let bytes = Array(value.utf8)
        let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        guard n == bytes.count else { throw .sysfs(path, errno: n < 0 ? errno : EIO) }
    }
}

#if arch(x86_64)
/// O_DIRECT is not exported by the Glibc module (it needs _GNU_SOURCE).
let oDirect: Int32 = 0o40000
#elseif arch(arm64)
let oDirect: Int32 = 0o200000
#endif

fileprivate extension String {
    func trimmingWhitespace() -> String {
        var s = Substring(self)
        while let c = s.last, c.isWhitespace { s.removeLast() }
        while let c = s.first, c.isWhitespace { s.removeFirst() }
        return String(s)
    }
}
