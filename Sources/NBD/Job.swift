#if canImport(Glibc)
import Glibc
#endif

/// One request in flight and the reply it produced. Jobs are made once per connection (up to
/// the in-flight limit) and reused, so a 4 KiB request allocates nothing.
final class Job: @unchecked Sendable {  // @unchecked: owned by one thread at a time (reader → executor → writer)
    /// Most chunks one READ reply is split into (data and hole runs); more runs are sent as data.
    static let maxReadChunks = 16
    static let headCapacity = max(Job.maxReadChunks * StructuredReply.offsetHoleSize, StructuredReply.maxErrorSize)
    static let iovCapacity = 2 * Job.maxReadChunks + 1
    /// Data buffers up to this size are reused through DataBuffers; bigger ones are the
    /// connection's spare. 256 KiB covers nbdcopy's requests and the kernel client's (128 KiB by
    /// default): allocating such a buffer per request cost page faults and munmap TLB
    /// shootdowns, ~20% of a read-back.
    static let retainedDataCapacity = 256 << 10
    /// Buffers from this size on return to DataBuffers as soon as the reply is sent (smaller ones
    /// stay with the job: 4 KiB requests then take no shared lock).
    static let sharedDataCapacity = 64 << 10

    /// The connection outlives its jobs: it waits for every job in flight before it goes away.
    unowned(unsafe) let transmission: Transmission
    var header = RequestHeader(type: 0, cookie: 0, offset: 0, length: 0)
    var command = Command.flush
    /// The reply is already encoded (the request was refused before reaching the backend).
    var answered = false
    /// WRITE payload: in `data`, or in the reader's input buffer (then only valid until the reader
    /// reads again, so it is copied before the job leaves the reader's thread).
    var payload: UnsafeRawPointer?
    var payloadInInput = false

    /// Reply headers (simple reply, chunk headers, error chunk).
    let head = UnsafeMutableRawPointer.allocate(byteCount: Job.headCapacity, alignment: 16)
    var headUsed = 0
    /// The reply as it goes on the wire: pieces of `head` and of `data`.
    let iov = UnsafeMutablePointer<iovec>.allocate(capacity: Job.iovCapacity)
    var iovCount = 0
    /// Read data, write payload or block status descriptors.
    var data: UnsafeMutableRawPointer?
    var dataCapacity = 0
    /// READ plan: runs of data and zeros.
    let runs = UnsafeMutablePointer<ReadRun>.allocate(capacity: Job.maxReadChunks)

    struct ReadRun {
        var start: Int
        var length: Int
        var zero: Bool
    }

    init(_ transmission: Transmission) {
        self.transmission = transmission
    }

    deinit {
        head.deallocate()
        iov.deallocate()
        runs.deallocate()
        if let data { DataBuffers.give(data, dataCapacity) }
    }

    /// Ready for the next request.
    @inline(__always) func reset(header h: RequestHeader, command c: Command) {
        header = h
        command = c
        answered = false
        payload = nil
        payloadInInput = false
        headUsed = 0
        iovCount = 0
    }

    /// Adds `count` bytes just encoded at `head + headUsed` to the reply (merging with the
    /// previous piece when it is contiguous).
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

    /// Discards whatever reply was built so far.
    @inline(__always) func clearReply() {
        headUsed = 0
        iovCount = 0
    }
}
