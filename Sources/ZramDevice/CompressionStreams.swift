import Codec
import Glibc
import Posix
import Synchronization

/// One stream's working memory: codec contexts, zram's 2-page output buffer, a page to copy a
/// stored object into before decompressing it, and a bounce page for read-modify-write.
final class StreamBuffers {
    let codec: any CompressionStream
    /// Compressor output; 2 pages because incompressible input can grow past 4096.
    let buffer: UnsafeMutableRawPointer
    /// Compressed object copied out of the pool (zram's local_copy).
    let scratch: UnsafeMutableRawPointer
    /// Whole page assembled for sub-page writes and reads.
    let bounce: UnsafeMutableRawPointer

    /// nil when the 16 KiB cannot be allocated (an error for the device being created, not a trap).
    init?(codec: any CompressionStream) {
        var raw: UnsafeMutableRawPointer?
        guard posix_memalign(&raw, pageSize, 4 * pageSize) == 0, let mem = raw else { return nil }
        self.codec = codec
        mem.initializeMemory(as: UInt8.self, repeating: 0, count: 4 * pageSize)
        buffer = mem
        scratch = mem + 2 * pageSize
        bounce = mem + 3 * pageSize
    }

    deinit { free(buffer) }
}

/// zram 6.15+'s per-CPU compression streams: one per online CPU, each behind a mutex. A thread
/// takes the stream of the CPU it runs on, so the mutex is uncontended unless it migrates.
final class CompressionStreams: @unchecked Sendable {
    let algorithm: CompressionAlgorithm
    let level: Int32
    /// What algorithm_params set (level unresolved: nil = default), dictionary included.
    let parameters: AlgorithmParameters
    private let streams: [LockedStream]

    /// A stream behind its mutex (a class, because arrays cannot hold a noncopyable Mutex).
    private final class LockedStream: Sendable {
        let mutex: Mutex<StreamBuffers>
        init(_ s: sending StreamBuffers) { mutex = Mutex(s) }
    }

    convenience init(algorithm: CompressionAlgorithm, level: Int32?) throws(ZramError) {
        try self.init(algorithm: algorithm, parameters: AlgorithmParameters(level: level))
    }

    init(algorithm: CompressionAlgorithm, parameters: AlgorithmParameters) throws(ZramError) {
        let prepared: PreparedAlgorithm
        do { prepared = try algorithm.prepare(parameters) } catch { throw .invalidArgument(error.description) }
        let cpus = Threads.onlineCPUs
        var s: [LockedStream] = []
        s.reserveCapacity(cpus)
        for _ in 0..<cpus {
            let codec: any CompressionStream
            do { codec = try prepared.makeStream() } catch { throw .invalidArgument(error.description) }
            guard let buffers = StreamBuffers(codec: codec) else {
                throw .outOfMemory("cannot allocate compression stream buffers")
            }
            s.append(LockedStream(buffers))
        }
        self.algorithm = algorithm
        self.level = prepared.level
        self.parameters = parameters
        streams = s
    }

    /// Runs `body` with this CPU's stream held.
    @inline(__always)
    func withStream<R: Sendable>(_ body: (StreamBuffers) throws(ZramError) -> R) throws(ZramError) -> R {
        let cpu = Threads.currentCPU()
        let i = cpu >= 0 ? cpu % streams.count : 0
        return try streams[i].mutex.withLock { (s: inout StreamBuffers) throws(ZramError) -> R in try body(s) }
    }
}
