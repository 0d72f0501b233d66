#if canImport(Glibc)
import Glibc
#endif
import Posix

/// A plain RAM disk: the reference backend for tests and for measuring the transport alone.
/// One anonymous mapping (pages become resident on first write) plus one state byte per 4 KiB
/// page for block status. Trimmed and zeroed whole pages are given back to the kernel.
/// Concurrent overlapping writes race on the bytes, as NBD allows; nothing else is shared.
public final class MemoryBackend: BlockBackend, @unchecked Sendable {
    private enum Allocation: UInt8 {
        case hole = 0  // never written, or trimmed
        case zero = 1  // zeroed with NO_HOLE
        case data = 2
    }

    public let size: UInt64
    public let capabilities: BackendCapabilities
    private let base: UnsafeMutableRawPointer
    private let pages: UnsafeMutablePointer<UInt8>
    private let pageCount: Int

    /// `size` is rounded up to whole pages.
    public init(size: UInt64, capabilities: BackendCapabilities = .all) throws(NBDError) {
        let pageSize = UInt64(pageSize)
        let rounded = (size + pageSize - 1) / pageSize * pageSize
        guard rounded > 0, rounded <= UInt64(Int.max / 2) else {
            throw .invalidConfiguration("memory backend size \(size) is unusable")
        }
        let p: UnsafeMutableRawPointer
        do { p = try VirtualMemory.reserve(byteCount: Int(rounded)) } catch { throw NBDError(error) }
        self.size = rounded
        self.capabilities = capabilities
        base = p
        pageCount = Int(rounded / pageSize)
        pages = .allocate(capacity: pageCount)
        pages.initialize(repeating: Allocation.hole.rawValue, count: pageCount)
    }

    deinit {
        VirtualMemory.unmap(base, byteCount: Int(size))
        pages.deallocate()
    }

    public func read(into buffer: UnsafeMutableRawPointer, offset: UInt64, length: Int) throws(NBDError) {
        buffer.copyMemory(from: base + Int(offset), byteCount: length)
    }

    /// Pages never written, trimmed or zeroed are reported instead of copied.
    public func read(into buffer: UnsafeMutableRawPointer, offset: UInt64, length: Int,
                     reportingZeroes zero: (_ start: Int, _ length: Int) -> Void) throws(NBDError) {
        let o = Int(offset)
        var position = 0
        while position < length {
            let page = (o + position) / pageSize
            let n = min(pageSize - (o + position) % pageSize, length - position)
            if pages[page] == Allocation.data.rawValue {
                (buffer + position).copyMemory(from: base + o + position, byteCount: n)
            } else {
                zero(position, n)
            }
            position += n
        }
    }

    public func write(from buffer: UnsafeRawPointer, offset: UInt64, length: Int, fua: Bool) throws(NBDError) {
        (base + Int(offset)).copyMemory(from: buffer, byteCount: length)
        mark(.data, from: Int(offset) / pageSize, to: (Int(offset) + length - 1) / pageSize + 1)
    }

    public func trim(offset: UInt64, length: UInt64) throws(NBDError) {
        // Only whole pages: a trim is a hint, so partial pages keep their data.
        let (first, last) = wholePages(offset, length)
        release(first, last, as: .hole)
    }

    public func zero(offset: UInt64, length: UInt64, mayTrim: Bool, fast: Bool) throws(NBDError) {
        let o = Int(offset), l = Int(length)
        let (first, last) = wholePages(offset, length)
        if first < last {
            let headBytes = first * pageSize - o
            let tailStart = last * pageSize
            memset(base + o, 0, headBytes)
            memset(base + tailStart, 0, o + l - tailStart)
            release(first, last, as: mayTrim ? .hole : .zero)
        } else {
            memset(base + o, 0, l)
        }
    }

    public func blockStatus(offset: UInt64, length: UInt64,
                            _ body: (_ length: UInt64, _ flags: ExtentFlags) -> Bool) throws(NBDError) {
        let end = offset + length
        var position = offset
        while position < end {
            let page = Int(position) / pageSize
            let state = pages[page]
            var next = page + 1
            while next < pageCount && pages[next] == state && UInt64(next * pageSize) < end { next += 1 }
            let runEnd = min(UInt64(next * pageSize), end)
            let flags = switch Allocation(rawValue: state) {
            case .hole: ExtentFlags.unallocated
            case .zero: ExtentFlags.zero
            case .data, nil: ExtentFlags.data
            }
            guard body(runEnd - position, flags) else { return }
            position = runEnd
        }
    }

    /// Pages wholly inside [offset, offset+length) as a half-open page range.
    private func wholePages(_ offset: UInt64, _ length: UInt64) -> (Int, Int) {
        let ps = UInt64(pageSize)
        let first = Int((offset + ps - 1) / ps)
        let last = Int((offset + length) / ps)
        return (first, max(first, last))
    }

    private func release(_ first: Int, _ last: Int, as state: Allocation) {
        guard first < last else { return }
        _ = madvise(base + first * pageSize, (last - first) * pageSize, MADV_DONTNEED)
        mark(state, from: first, to: last)
    }

    private func mark(_ state: Allocation, from first: Int, to last: Int) {
        (pages + first).update(repeating: state.rawValue, count: last - first)
    }
}
