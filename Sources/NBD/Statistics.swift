// What an export served: per command, requests, bytes, failures and a service-latency histogram;
// failures by errno; connections open and in total.
//
// Each connection counts into a shard of its own. A shard has one writer (the connection's
// thread), which adds with a relaxed load and store: no locked instruction and no cache line
// shared with another connection on the data path. Readers sum the live shards with what closed
// connections left behind, so a reading is at most a request or two behind the traffic.

import Posix
import Synchronization

/// The commands an export counts, in the order of every report.
public enum IOCommand: Int, CaseIterable, Sendable {
    case read, write, trim, writeZeroes, flush, cache, blockStatus

    /// The name in stat.json, `status` records and Prometheus labels.
    public var name: String {
        switch self {
        case .read: "read"
        case .write: "write"
        case .trim: "trim"
        case .writeZeroes: "write_zeroes"
        case .flush: "flush"
        case .cache: "cache"
        case .blockStatus: "block_status"
        }
    }

    init?(type: UInt16) {
        switch CommandType(rawValue: type) {
        case .read: self = .read
        case .write: self = .write
        case .trim: self = .trim
        case .writeZeroes: self = .writeZeroes
        case .flush: self = .flush
        case .cache: self = .cache
        case .blockStatus: self = .blockStatus
        case .disconnect, nil: return nil
        }
    }

    /// The bytes a request covers (0 for FLUSH).
    static func bytes(_ command: Command) -> Int {
        switch command {
        case .read(_, let length, _), .write(_, let length, _): length
        case .trim(_, let length, _), .cache(_, let length), .writeZeroes(_, let length, _, _, _),
             .blockStatus(_, let length, _): Int(clamping: length)
        case .flush: 0
        }
    }
}

/// Service-latency buckets: powers of two from 1 µs to 2^24 µs (16.8 s), then +Inf. The time is
/// the backend's, from the request parsed to its reply encoded (waiting in the socket and the
/// reply's send are the client's to measure).
public enum LatencyBuckets {
    /// Finite upper bounds (le), in microseconds: 1, 2, 4, ... 2^24.
    public static let boundsMicroseconds: [Int] = (0...24).map { 1 << $0 }
    /// Buckets counted: one per bound, plus +Inf.
    public static let count = boundsMicroseconds.count + 1

    /// The bucket of a duration: the first whose bound it does not reach.
    @inline(__always)
    static func index(nanoseconds: Int) -> Int {
        let us = max(0, nanoseconds) / 1000
        return us == 0 ? 0 : min(count - 1, Int.bitWidth - us.leadingZeroBitCount)
    }
}

/// The errnos a reply can carry, in report order; anything else counts as `other`.
public enum IOErrnoColumn {
    public static let errnos: [NBDErrno] = [.eperm, .eio, .enomem, .einval, .enospc, .eoverflow, .enotsup, .eshutdown]
    public static let count = errnos.count + 1

    static func index(_ e: NBDErrno) -> Int { errnos.firstIndex(of: e) ?? errnos.count }

    /// `eio`, or `other`.
    public static func name(_ index: Int) -> String {
        index < errnos.count ? errnos[index].description.lowercased() : "other"
    }
}

/// The layout of a shard: per command [requests, bytes, errors, latency sum in ns, buckets...],
/// then one word per errno column.
private enum Slot {
    static let perCommand = 4 + LatencyBuckets.count
    static let errnoBase = IOCommand.allCases.count * perCommand
    static let count = errnoBase + IOErrnoColumn.count

    static func requests(_ c: IOCommand) -> Int { c.rawValue * perCommand }
    static func bytes(_ c: IOCommand) -> Int { c.rawValue * perCommand + 1 }
    static func errors(_ c: IOCommand) -> Int { c.rawValue * perCommand + 2 }
    static func latencySum(_ c: IOCommand) -> Int { c.rawValue * perCommand + 3 }
    static func bucket(_ c: IOCommand, _ i: Int) -> Int { c.rawValue * perCommand + 4 + i }
}

/// One connection's counters: written by its thread only, read by anyone.
final class IOShard: Sendable {
    private let values = CounterArray(count: Slot.count)

    @inline(__always)
    private func bump(_ slot: Int, _ n: Int) { values.addBySoleWriter(slot, n) }

    func load(_ slot: Int) -> Int { values.load(slot) }

    /// One request served (or refused, with `errno`) in `nanoseconds`.
    @inline(__always)
    func record(_ command: IOCommand, bytes: Int, nanoseconds: Int, errno: NBDErrno?) {
        bump(Slot.requests(command), 1)
        bump(Slot.bytes(command), bytes)
        bump(Slot.latencySum(command), max(0, nanoseconds))
        bump(Slot.bucket(command, LatencyBuckets.index(nanoseconds: nanoseconds)), 1)
        if let errno {
            bump(Slot.errors(command), 1)
            bump(Slot.errnoBase + IOErrnoColumn.index(errno), 1)
        }
    }

    /// A refused request whose command we do not count (an unknown type).
    func recordError(_ errno: NBDErrno) { bump(Slot.errnoBase + IOErrnoColumn.index(errno), 1) }
}

/// An export's I/O counters (see the top of this file). Shared by every connection to the export.
public final class ExportStatistics: Sendable {
    private struct State: ~Copyable {
        var live: [ObjectIdentifier: IOShard] = [:]
        /// What closed connections counted, slot by slot.
        var retired = [Int](repeating: 0, count: Slot.count)
        var connectionsTotal = 0
    }

    private let state = Mutex(State())

    public init() {}

    /// A connection starts transmitting: its shard.
    func open() -> IOShard {
        let shard = IOShard()
        state.withLock {
            $0.live[ObjectIdentifier(shard)] = shard
            $0.connectionsTotal += 1
        }
        return shard
    }

    /// The connection ended: its counts stay in the totals.
    func close(_ shard: IOShard) {
        state.withLock {
            guard $0.live.removeValue(forKey: ObjectIdentifier(shard)) != nil else { return }
            for i in 0..<Slot.count { $0.retired[i] &+= shard.load(i) }
        }
    }

    /// Every counter now.
    public func read() -> IOStatistics {
        state.withLock { s in
            var v = s.retired
            for shard in s.live.values { for i in 0..<Slot.count { v[i] &+= shard.load(i) } }
            return IOStatistics(values: v.map { UInt64(bitPattern: Int64($0)) },
                                connectionsOpen: s.live.count, connectionsTotal: s.connectionsTotal)
        }
    }
}

/// An export's I/O counters at one moment (ExportStatistics.read).
public struct IOStatistics: Sendable, Equatable {
    fileprivate let values: [UInt64]
    public let connectionsOpen: Int
    public let connectionsTotal: Int

    fileprivate init(values: [UInt64], connectionsOpen: Int, connectionsTotal: Int) {
        self.values = values
        self.connectionsOpen = connectionsOpen
        self.connectionsTotal = connectionsTotal
    }

    /// No traffic, no connections.
    public static let zero = IOStatistics(values: [UInt64](repeating: 0, count: Slot.count), connectionsOpen: 0, connectionsTotal: 0)

    public func requests(_ c: IOCommand) -> UInt64 { values[Slot.requests(c)] }
    public func bytes(_ c: IOCommand) -> UInt64 { values[Slot.bytes(c)] }
    public func errors(_ c: IOCommand) -> UInt64 { values[Slot.errors(c)] }
    public func latencySumNanoseconds(_ c: IOCommand) -> UInt64 { values[Slot.latencySum(c)] }
    /// Requests per latency bucket (LatencyBuckets), not cumulative.
    public func buckets(_ c: IOCommand) -> [UInt64] { (0..<LatencyBuckets.count).map { values[Slot.bucket(c, $0)] } }
    /// Failed requests by errno column (IOErrnoColumn).
    public var errnoCounts: [UInt64] { (0..<IOErrnoColumn.count).map { values[Slot.errnoBase + $0] } }

    /// The latency below which `fraction` of the command's requests were served, in microseconds
    /// (a bucket's upper bound; nil without requests, .max past the last bound).
    public func latencyQuantileMicroseconds(_ c: IOCommand, _ fraction: Double) -> Int? {
        let b = buckets(c)
        let total = b.reduce(0, &+)
        guard total > 0 else { return nil }
        let target = Double(total) * min(1, max(0, fraction))
        var seen: UInt64 = 0
        for (i, n) in b.enumerated() {
            seen &+= n
            if Double(seen) >= target { return i < LatencyBuckets.boundsMicroseconds.count ? LatencyBuckets.boundsMicroseconds[i] : .max }
        }
        return .max
    }
}
