import Dispatch
import NBD
import Synchronization

/// A test backend that adds behaviour around a MemoryBackend: everything it does not define
/// itself goes straight to `inner` (flush and cache keep BlockBackend's defaults).
protocol WrappingBackend: BlockBackend {
    var inner: MemoryBackend { get }
}

extension WrappingBackend {
    var size: UInt64 { inner.size }
    func read(into buffer: UnsafeMutableRawPointer, offset: UInt64, length: Int) throws(NBDError) {
        try inner.read(into: buffer, offset: offset, length: length)
    }
    func write(from buffer: UnsafeRawPointer, offset: UInt64, length: Int, fua: Bool) throws(NBDError) {
        try inner.write(from: buffer, offset: offset, length: length, fua: fua)
    }
    func trim(offset: UInt64, length: UInt64) throws(NBDError) { try inner.trim(offset: offset, length: length) }
    func zero(offset: UInt64, length: UInt64, mayTrim: Bool, fast: Bool) throws(NBDError) {
        try inner.zero(offset: offset, length: length, mayTrim: mayTrim, fast: fast)
    }
    func blockStatus(offset: UInt64, length: UInt64, _ body: (UInt64, ExtentFlags) -> Bool) throws(NBDError) {
        try inner.blockStatus(offset: offset, length: length, body)
    }
}

/// Wraps a MemoryBackend; a read at `heldOffset` waits inside the backend until the test calls
/// `releaseHeld()`, which keeps a request in flight for as long as the test needs. It also
/// counts reads, and can be told to wait on `gate` inside every read (to keep requests in flight).
final class GatedBackend: WrappingBackend, @unchecked Sendable {
    let inner: MemoryBackend
    let heldOffset: UInt64?
    private let release = DispatchSemaphore(value: 0)
    /// When set, every read waits for one signal on this semaphore first.
    let gate: DispatchSemaphore?
    let readsStarted = Atomic<Int>(0)
    let heldTimedOut = Atomic<Bool>(false)

    init(inner: MemoryBackend, heldOffset: UInt64? = nil, gate: DispatchSemaphore? = nil) {
        self.inner = inner
        self.heldOffset = heldOffset
        self.gate = gate
    }

    func releaseHeld() { release.signal() }

    func read(into buffer: UnsafeMutableRawPointer, offset: UInt64, length: Int) throws(NBDError) {
        readsStarted.add(1, ordering: .sequentiallyConsistent)
        if let gate, gate.wait(timeout: .now() + 20) == .timedOut {
            throw .request(.eio, message: "test gate never opened")
        }
        if offset == heldOffset {
            if release.wait(timeout: .now() + 20) == .timedOut {
                heldTimedOut.store(true, ordering: .sequentiallyConsistent)
            }
        }
        try inner.read(into: buffer, offset: offset, length: length)
    }
}

/// A backend whose every call fails with a given error, to check the error path and the errno map.
final class FailingBackend: BlockBackend, @unchecked Sendable {
    let error: NBDError
    init(_ error: NBDError) { self.error = error }
    var size: UInt64 { 1 << 20 }
    var capabilities: BackendCapabilities { BackendCapabilities.all.subtracting(.extents) }
    func read(into buffer: UnsafeMutableRawPointer, offset: UInt64, length: Int) throws(NBDError) { throw error }
    func write(from buffer: UnsafeRawPointer, offset: UInt64, length: Int, fua: Bool) throws(NBDError) { throw error }
    func trim(offset: UInt64, length: UInt64) throws(NBDError) { throw error }
    func zero(offset: UInt64, length: UInt64, mayTrim: Bool, fast: Bool) throws(NBDError) {
        if fast { throw .notSupported }
        throw error
    }
}
