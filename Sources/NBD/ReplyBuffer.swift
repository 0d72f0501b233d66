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
        if let data {
            if ReplyBuffer.isBig(dataCapacity) { spare.budget.release(data, dataCapacity) } else { DataBuffers.give(data, dataCapacity) }
        }
    }

    /// Buffers over DataBuffers' sizes come from the connection's PayloadBudget.
    @inline(__always) static func isBig(_ capacity: Int) -> Bool { capacity > retainedDataCapacity }

    /// A reply other than READ data (whose early sending the engine's READ byte count governs)
    /// holding a shared or budget buffer: a block status of many descriptors, a WRITE read
    /// straight into a big buffer. The engine sends it at once rather than letting up to 64 of
    /// them wait in a batch, and returns the buffer.
    @inline(__always) var holdsBigData: Bool { readBytes == 0 && dataCapacity >= ReplyBuffer.sharedDataCapacity }

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

    /// A data buffer of at least `count` bytes (contents not kept). Over DataBuffers' sizes it
    /// waits for room in the payload budget.
    func reserveData(_ count: Int) -> UnsafeMutableRawPointer {
        if let data, dataCapacity >= count { return data }
        if let old = data {
            data = nil
            if ReplyBuffer.isBig(dataCapacity) { spare.budget.give(old, dataCapacity, to: spare) } else { DataBuffers.give(old, dataCapacity) }
            dataCapacity = 0
        }
        let (p, capacity) = ReplyBuffer.isBig(count) ? spare.budget.take(count, for: spare) : DataBuffers.take(count)
        data = p
        dataCapacity = capacity
        return p
    }

    /// Grows the data buffer to `capacity`, keeping its contents.
    func growData(to capacity: Int) -> UnsafeMutableRawPointer {
        let oldBig = ReplyBuffer.isBig(dataCapacity)
        let (bigger, biggerCapacity) = ReplyBuffer.isBig(capacity)
            ? spare.budget.take(capacity, for: spare, holding: oldBig ? dataCapacity : 0) : DataBuffers.take(capacity)
        if let old = data {
            bigger.copyMemory(from: old, byteCount: dataCapacity)
            if oldBig { spare.budget.release(old, dataCapacity) } else { DataBuffers.give(old, dataCapacity) }
        }
        data = bigger
        dataCapacity = biggerCapacity
        return bigger
    }

    /// After the reply was sent: small buffers stay with the reply; big ones go back to the shared
    /// cache, where the next request takes the most recently used one, so a stream of big READs
    /// keeps filling the same cache-hot buffer. Buffers over the cache's largest go back to the
    /// payload budget, which keeps one as the connection's spare.
    func sent() {
        if let d = data, dataCapacity >= ReplyBuffer.sharedDataCapacity {
            if dataCapacity <= ReplyBuffer.retainedDataCapacity {
                DataBuffers.give(d, dataCapacity)
            } else {
                spare.budget.give(d, dataCapacity, to: spare)
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
/// Its budget lends and reclaims it (PayloadBudget.take/give); the connection retires it when it
/// ends.
final class SpareBuffer: @unchecked Sendable {  // @unchecked: buffer and capacity are guarded by the budget's lock
    let budget: PayloadBudget
    var buffer: UnsafeMutableRawPointer?
    var capacity = 0

    init(budget: PayloadBudget = PayloadBudget(bytes: .max)) {
        self.budget = budget
    }
}
