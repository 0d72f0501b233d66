#if canImport(Glibc)
import Glibc
#endif

/// A growable array of trivial values in raw memory (zspage descriptors, handle slots). Growth copies
/// under the owner's lock; readers hold the same lock, so no reader sees a stale base.
///
/// Memory comes from malloc, so running out is a nil/false the pool turns into a failed allocation
/// (zram: -ENOMEM for that write), never a trap: these grow with the data clients write.
struct RawVector<Element: BitwiseCopyable> {
    private(set) var base: UnsafeMutablePointer<Element>
    private(set) var capacity: Int

    /// nil when the memory cannot be allocated.
    init?(capacity: Int, fill: Element) {
        let n = max(capacity, 1)
        guard let p = Self.allocate(n) else { return nil }
        self.capacity = n
        base = p
        base.initialize(repeating: fill, count: n)
    }

    private static func allocate(_ count: Int) -> UnsafeMutablePointer<Element>? {
        let (bytes, overflow) = count.multipliedReportingOverflow(by: MemoryLayout<Element>.stride)
        guard !overflow, let raw = malloc(bytes) else { return nil }
        return raw.bindMemory(to: Element.self, capacity: count)
    }

    /// Grows to at least `minimum` elements, new ones set to `fill`; false (nothing changed) when
    /// the memory cannot be allocated.
    @inline(__always)
    mutating func reserve(_ minimum: Int, fill: Element) -> Bool {
        guard minimum > capacity else { return true }
        return grow(minimum, fill: fill)
    }

    private mutating func grow(_ minimum: Int, fill: Element) -> Bool {
        var newCapacity = capacity
        while newCapacity < minimum {
            let (doubled, overflow) = newCapacity.multipliedReportingOverflow(by: 2)
            guard !overflow else { return false }
            newCapacity = doubled
        }
        guard let newBase = Self.allocate(newCapacity) else { return false }
        newBase.moveInitialize(from: base, count: capacity)
        (newBase + capacity).initialize(repeating: fill, count: newCapacity - capacity)
        free(base)
        base = newBase
        capacity = newCapacity
        return true
    }

    func release() { free(base) }

    @inline(__always) subscript(i: Int) -> Element {
        get { base[i] }
        nonmutating set { base[i] = newValue }
    }
}
