import Posix

/// One counter the device keeps itself (the pool reports mem_used_total and pages_compacted).
/// Adding a counter: a case here, its row in `row`, a field (and its table row) in ZramStats, and
/// the `add`/`subtract` where the event happens.
enum ZramCounter: Int, CaseIterable, Sendable {
    case pagesStored
    case comprDataSize
    case memLimitPages
    case maxUsedPages
    case samePages
    case hugePages
    case hugePagesSince
    case failedReads
    case failedWrites
    case notifyFree
    case bdCount
    case bdReads
    case bdWrites
    case writebackRuns
    case writebackBytesFreed
    case recompressRuns
    case recompressedPages
    case recompressBytesSaved

    /// How a counter's value is reported: as it is, or as a page count shown in bytes.
    enum Unit: Sendable {
        case count
        case pages
    }

    /// The one table: the ZramStats field a counter fills, its unit, and whether `reset()` keeps it.
    var row: (field: WritableKeyPath<ZramStats, UInt64>, unit: Unit, keptByReset: Bool) {
        switch self {
        case .pagesStored: (\.origDataSize, .pages, false)
        case .comprDataSize: (\.comprDataSize, .count, false)
        case .memLimitPages: (\.memLimit, .pages, true)          // a setting, not data
        case .maxUsedPages: (\.memUsedMax, .pages, false)
        case .samePages: (\.samePages, .count, false)
        case .hugePages: (\.hugePages, .count, false)
        case .hugePagesSince: (\.hugePagesSince, .count, false)
        case .failedReads: (\.failedReads, .count, false)
        case .failedWrites: (\.failedWrites, .count, false)
        case .notifyFree: (\.notifyFree, .count, false)
        case .bdCount: (\.bdCount, .count, false)
        case .bdReads: (\.bdReads, .count, false)
        case .bdWrites: (\.bdWrites, .count, false)
        case .writebackRuns: (\.writebackRuns, .count, false)
        case .writebackBytesFreed: (\.writebackBytesFreed, .count, false)
        case .recompressRuns: (\.recompressRuns, .count, false)
        case .recompressedPages: (\.recompressedPages, .count, false)
        case .recompressBytesSaved: (\.recompressBytesSaved, .count, false)
        }
    }
}

/// The device's counters: relaxed atomics (as zram's atomic64_t), one per `ZramCounter`, updated
/// where the event happens, cleared by `reset()` and read into a `ZramStats` by `read(into:)`.
final class ZramCounters: Sendable {
    private let values = CounterArray(count: ZramCounter.allCases.count)

    @inline(__always)
    func add(_ c: ZramCounter, _ n: Int = 1) { values.add(c.rawValue, n) }

    @inline(__always)
    func subtract(_ c: ZramCounter, _ n: Int = 1) { values.subtract(c.rawValue, n) }

    @inline(__always)
    func load(_ c: ZramCounter) -> Int { values.load(c.rawValue) }

    @inline(__always)
    func store(_ c: ZramCounter, _ v: Int) { values.store(c.rawValue, v) }

    /// Raises the counter to `v` if it is lower (a peak, as mem_used_max).
    func raise(_ c: ZramCounter, to v: Int) { values.raise(c.rawValue, to: v) }

    /// Zeroes every counter but the settings (`keptByReset`).
    func reset() {
        for c in ZramCounter.allCases where !c.row.keptByReset { store(c, 0) }
    }

    /// Fills the counters' fields of `stats` (pages converted to bytes).
    func read(into stats: inout ZramStats) {
        for c in ZramCounter.allCases {
            let (field, unit, _) = c.row
            let v = UInt64(max(0, load(c)))   // never negative; clamped so a stats read cannot trap
            stats[keyPath: field] = unit == .pages ? v << UInt64(pageShift) : v
        }
    }
}
