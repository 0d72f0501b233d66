// One reply as it will go on the wire: encoded headers plus the data they frame, described by
// iovecs so the engine sends a batch of replies with one writev and copies no data.

#if canImport(Glibc)
import Glibc
#endif

/// The reply to one request. A connection keeps up to its in-flight limit of these and reuses
/// them, so a 4 KiB request allocates nothing.
final class ReplyBuffer {
    /// Most chunks one READ reply is split into (data and hole runs); more runs are sent as data.
    static let maxReadChunks = 16
    static let headCapacity = max(maxReadChunks * StructuredReply.offsetHoleSize, StructuredReply.maxErrorSize)
    static let iovCapacity = 2 * maxReadChunks + 1
    /// Data buffers up to this size come from and go back to DataBuffers; bigger ones are the
    /// connection's spare. 256 KiB covers nbdcopy's requests and the kernel client's (128 KiB by
    /// default): allocating such a buffer per request cost page faults and munmap TLB
    /// shootdowns, ~20% of a read-back.
    static let retainedDataCapacity = 256 << 10
    /// Buffers from this size on return to DataBuffers as soon as the reply is sent (smaller ones
    /// stay with the reply: 4 KiB requests then take no shared lock).
    static let sharedDataCapacity = 64 << 10

    /// Reply headers (simple reply, chunk headers, error chunk).
    let head = UnsafeMutableRawPointer.allocate(byteCount: ReplyBuffer.headCapacity, alignment: 16)
    private(set) var headUsed = 0
    /// The reply as it goes on the wire: pieces of `head` and of `data`.
    let iov = UnsafeMutablePointer<iovec>.allocate(capacity: ReplyBuffer.iovCapacity)
    private(set) var iovCount = 0
    /// Read data, a WRITE payload too big for the input buffer, or block status descriptors.
    private(set) var data: UnsafeMutableRawPointer?
    private(set) var dataCapacity = 0
    /// READ data bytes this reply carries (the engine sends early once enough is ready).
    var readBytes = 0
    /// READ plan: runs of data and zeros.
    let runs = UnsafeMutablePointer<ReadRun>.allocate(capacity: ReplyBuffer.maxReadChunks)
    /// The connection's one buffer for requests over `retainedDataCapacity`.
    private let spare: SpareBuffer

    struct ReadRun {
        var start: Int
        var length: Int
        var zero: Bool
    }

    init(spare: SpareBuffer) {
        self.spare = spare
    }

    deinit {
        head.deallocate()
        iov.deallocate()
        runs.deallocate()
        if let data { DataBuffers.give(data, dataCapacity) }
    }

    /// Empty, ready for the next request.
    @inline(__always) func clear() {
        headUsed = 0
        iovCount = 0
        readBytes = 0
    }

    /// Where the next header bytes go.
    @inline(__always) var headEnd: UnsafeMutableRawPointer { head + headUsed }

    /// Adds `count` bytes just encoded at `headEnd` to the reply (merging with the previous piece
    /// when it is contiguous).
    @inline(__always) func appendHead(_ count: Int) {
        let p = head + headUsed
        if iovCount > 0, let base = iov[iovCount - 1].iov_base, base + iov[iovCount - 1].iov_len == p {
            iov[iovCount - 1].iov_len += count
        } else {
            iov[iovCount] = iovec(iov_base: p, iov_len: count)
            iovCount += 1
        }
        headUsed += count
    }

    @inline(__always) func appendData(_ p: UnsafeMutableRawPointer, _ count: Int) {
        iov[iovCount] = iovec(iov_base: p, iov_len: count)
        iovCount += 1
    }

    /// A data buffer of at least `count` bytes (contents not kept).
    func reserveData(_ count: Int) -> UnsafeMutableRawPointer {
        if let data, dataCapacity >= count { return data }
        if let old = data { DataBuffers.give(old, dataCapacity) }
        if count > ReplyBuffer.retainedDataCapacity, let (p, capacity) = spare.take(atLeast: count) {
            data = p
            dataCapacity = capacity
            return p
        }
        let (p, capacity) = DataBuffers.take(count)
        data = p
        dataCapacity = capacity
        return p
    }

    /// Grows the data buffer to `capacity`, keeping its contents.
    func growData(to capacity: Int) -> UnsafeMutableRawPointer {
        let (bigger, biggerCapacity) = DataBuffers.take(capacity)
        if let old = data {
            bigger.copyMemory(from: old, byteCount: dataCapacity)
            DataBuffers.give(old, dataCapacity)
        }
        data = bigger
        dataCapacity = biggerCapacity
        return bigger
    }

    /// After the reply was sent: small buffers stay with the reply; big ones go back to the shared
    /// cache, where the next request takes the most recently used one, so a stream of big READs
    /// keeps filling the same cache-hot buffer. Buffers over the cache's largest become the
    /// connection's spare (at most the advertised maximum request size).
    func sent() {
        if let d = data, dataCapacity >= ReplyBuffer.sharedDataCapacity {
            if dataCapacity <= ReplyBuffer.retainedDataCapacity {
                DataBuffers.give(d, dataCapacity)
            } else {
                spare.keep(d, dataCapacity)
            }
            data = nil
            dataCapacity = 0
        }
        clear()
    }

    /// The reply's bytes in order (for tests).
    var bytes: [UInt8] {
        var out: [UInt8] = []
        for i in 0..<iovCount {
            if let base = iov[i].iov_base {
                out += UnsafeRawBufferPointer(start: base, count: iov[i].iov_len)
            }
        }
        return out
    }
}

/// A connection's one buffer for requests bigger than DataBuffers serves (up to the advertised
/// maximum): a client that sends 32 MiB requests reuses it instead of mapping 32 MiB per request.
final class SpareBuffer {
    private var buffer: UnsafeMutableRawPointer?
    private var capacity = 0

    deinit { buffer?.deallocate() }

    func take(atLeast count: Int) -> (UnsafeMutableRawPointer, Int)? {
        guard let b = buffer, capacity >= count else { return nil }
        defer {
            buffer = nil
            capacity = 0
        }
        return (b, capacity)
    }

    /// Keeps `p` if it is bigger than the current spare and not over the maximum request size.
    func keep(_ p: UnsafeMutableRawPointer, _ size: Int) {
        guard size > capacity, size <= Int(BlockSize.maximumPayload) else {
            DataBuffers.give(p, size)
            return
        }
        buffer?.deallocate()
        buffer = p
        capacity = size
    }
}
