// The actions on a device, in one table for both ends of the control socket:
//
//   command line:  zramnbd ctl DEVICE ACTION [ARGS...]
//   wire:          ACTION DEVICE [ARGS...]
//
// Both become the words [ACTION, DEVICE, ARGS...] and go through `ControlAction.request`, so the
// two accept the same things and refuse them with the same messages. `ctl --help` and the
// "unknown action" message are generated from `ControlAction.all`: a new action is one entry
// there (plus the ControlRequest case it builds and DeviceHost's handling of it).

/// One action on a device: its name, what follows the device, and the request it becomes.
struct ControlAction: Sendable {
    /// Where a request comes from.
    enum Origin: Sendable {
        /// `zramnbd ctl`: knows the client-side actions too.
        case ctl
        /// A control-socket line.
        case wire
    }

    let name: String
    /// What follows `zramnbd ctl DEVICE NAME` in the help and usage message ("" = nothing).
    let synopsis: String
    /// How many words may follow the device.
    let arguments: ClosedRange<Int>
    /// For `ctl --help` (wrapped there).
    let help: String
    /// false for actions only `ctl` knows: it sends the request they build and does the rest itself.
    let onWire: Bool
    /// The request, from the validated device name and its `arguments` (count already checked).
    let build: @Sendable (_ device: String, _ arguments: [String]) throws(DaemonError) -> ControlRequest

    init(_ name: String, _ synopsis: String = "", arguments: ClosedRange<Int> = 0...0, onWire: Bool = true,
         help: String, build: @escaping @Sendable (_ device: String, _ arguments: [String]) throws(DaemonError) -> ControlRequest) {
        self.name = name
        self.synopsis = synopsis
        self.arguments = arguments
        self.help = help
        self.onWire = onWire
        self.build = build
    }

    /// Any number of words, e.g. zram's `writeback type=idle max_pages=10`.
    static let anyNumber = 0...Int.max

    /// Every action, in the order `ctl --help` and the "unknown action" message list them.
    static let all: [ControlAction] = [
        ControlAction("compact", help: "compact the pool now (zram's compact)") { d, _ in .compact(d) },
        ControlAction("reset", help: "drop all data and counters (refused while a client is connected)") { d, _ in .reset(d) },
        ControlAction("mem-limit", "SIZE", arguments: 1...1,
                      help: "limit the pool's memory, 0 = none (zram's mem_limit)") { d, a throws(DaemonError) in
            .memLimit(d, try ByteSize.parse(a[0]))
        },
        ControlAction("mem-used-max-reset", help: "restart the mem_used_max peak from the current usage") { d, _ in .memUsedMaxReset(d) },
        ControlAction("add", "[KEY=VALUE...]", arguments: ControlAction.anyNumber,
                      help: "create the device (zram's hot_add); keys as in the config file, plus size=, mem-limit=, algorithm=, level=, "
                          + "dict=, deflate.winbits=, zstd.compact=") {
            d, a throws(DaemonError) in .add(d, try keyValues(a))
        },
        ControlAction("remove", help: "stop and drop the device (zram's hot_remove)") { d, _ in .remove(d) },
        ControlAction("show", help: "print every setting and counter as key=value lines") { d, _ in .show(d) },
        // Client-side: `ctl` picks the key out of the `show` reply.
        ControlAction("get", "KEY", arguments: 1...1, onWire: false, help: "print one of them") { d, _ in .show(d) },
        ControlAction("attach", "/dev/nbdN", arguments: 1...1,
                      help: "tell the daemon which kernel NBD device serves it (setup tools)") { d, a in .attach(d, a[0]) },
        ControlAction("detach", help: "tell the daemon no kernel NBD device serves it any more") { d, _ in .attach(d, nil) },
        attribute("idle", "all|SECONDS", arguments: 1...1,
                  help: "mark pages idle: all, or those not read or written for SECONDS (zram's idle)"),
        attribute("writeback", "ARGS...", arguments: 1...anyNumber.upperBound,
                  help: "write pages to the backing device: type=idle|huge|huge_idle or type=incompressible, "
                      + "page_index=N, page_indexes=LO-HI (zram's writeback)"),
        attribute("writeback-limit", "PAGES", arguments: 1...1,
                  help: "pages (4 KiB) writeback may still write while writeback-limit-enable is 1"),
        attribute("writeback-limit-enable", "0|1", arguments: 1...1, help: "count writeback against writeback-limit"),
        attribute("writeback-batch-size", "N", arguments: 1...1, help: "pages written per batch (default 32)"),
        attribute("compressed-writeback", "0|1", arguments: 1...1,
                  help: "write pages back compressed (zram 7.0); only while nothing is written back"),
        attribute("writeback-packing", "0|1", arguments: 1...1,
                  help: "with compressed-writeback, pack several pages into each backing block (zramnbd's own)"),
        attribute("backing-dev", "PATH|none", arguments: 1...1,
                  help: "the file or block device pages are written back to; a missing file is created "
                      + "sparse and removed with the device"),
        attribute("recomp-algorithm", "algo=NAME [priority=1..3]", arguments: 1...2,
                  help: "a secondary algorithm for recompress, priority 1 (default) to 3 (zram's recomp_algorithm)"),
        attribute("algorithm-params", "priority=N|algo=NAME [K=V...]", arguments: 1...6,
                  help: "an algorithm's parameters, all at once (unset = default), of the primary (priority=0) or a "
                      + "recomp_algorithm: level=N, dict=PATH (zstd, lz4, lz4hc), deflate.winbits=N (zram's "
                      + "algorithm_params); zstd.compact=0|1 (zramnbd's own)"),
        attribute("recompress", "[ARGS...]", arguments: 0...anyNumber.upperBound,
                  help: "store pages again with the secondary algorithms when they shrink into a smaller size class: "
                      + "type=idle|huge|huge_idle, max_pages=N, threshold=BYTES, algo=NAME, priority=N (zram's recompress)"),
        attribute("train-dict", "[K=V...]", arguments: 0...4,
                  help: "train a zstd dictionary of size=BYTES (default 110K) from sample=PAGES stored pages (8192) "
                      + "and install it for the zstd recomp_algorithm (or priority=N); recompress then uses it; "
                      + "output=PATH saves it (zramnbd's own)"),
        attribute("block-state", "[LO-HI]", arguments: 0...1,
                  help: "per stored page: index, access time, flags s w h i r n (zram's debugfs block_state)"),
    ]

    /// An action that writes zram attribute NAME (its sysfs name, `-` for `_`) with the words
    /// as they would be echoed into the file.
    private static func attribute(_ name: String, _ synopsis: String, arguments: ClosedRange<Int>, help: String) -> ControlAction {
        let sysfs = sysfsName(action: name)
        return ControlAction(name, synopsis, arguments: arguments, help: help) { d, a in .attribute(d, name: sysfs, a) }
    }

    /// zram's file name for an action name: `writeback-limit` is `writeback_limit`.
    static func sysfsName(action: String) -> String { String(action.map { $0 == "-" ? "_" : $0 }) }
    static func actionName(sysfs: String) -> String { String(sysfs.map { $0 == "_" ? "-" : $0 }) }

    /// The commands a control-socket line may start with that are not device actions.
    static let wireOnlyCommands = ["status"]

    /// "usage: zramnbd ctl DEVICE mem-limit SIZE".
    var usage: String { "usage: zramnbd ctl DEVICE " + head }

    /// "mem-limit SIZE": the action as `ctl --help` lists it.
    var head: String { synopsis.isEmpty ? name : name + " " + synopsis }

    /// The request `words` ([ACTION, DEVICE, ARGS...]) ask for.
    static func request(_ words: [String], from origin: Origin) throws(DaemonError) -> ControlRequest {
        guard let name = words.first else { throw .invalidValue("empty request") }
        // The device name first: `zramnbd ctl ../x frob` is refused for the name.
        if words.count > 1 { try DeviceSpec.validateName(words[1]) }
        guard let action = all.first(where: { $0.name == name && (origin == .ctl || $0.onWire) }) else {
            throw unknown(name, from: origin)
        }
        guard words.count > 1 else { throw .invalidValue("'\(name)' takes a device") }
        let arguments = Array(words.dropFirst(2))
        guard action.arguments.contains(arguments.count) else {
            throw .invalidValue(action.arguments == 0...0 ? "'\(name)' takes no arguments" : action.usage)
        }
        return try action.build(words[1], arguments)
    }

    static func unknown(_ name: String, from origin: Origin) -> DaemonError {
        switch origin {
        case .ctl:
            return .invalidValue("unknown action '\(name)' (\(all.map(\.name).joined(separator: ", ")))")
        case .wire:
            let names = wireOnlyCommands + all.filter(\.onWire).map(\.name)
            return .invalidValue("unknown command '\(name)' (\(names.joined(separator: ", ")))")
        }
    }

    /// `ctl --help`'s list: each action and its help, in two columns, the help wrapped to fit 80
    /// columns (ArgumentParser breaks longer lines at the left margin).
    static var helpText: String {
        let width = all.map(\.head.count).max()! + 2
        let room = 79 - 2 - width
        return all.map { a in
            var lines: [String] = []
            for word in a.help.split(separator: " ") {
                if let last = lines.last, last.count + 1 + word.count <= room {
                    lines[lines.count - 1] += " " + word
                } else {
                    lines.append(String(word))
                }
            }
            return lines.enumerated().map { i, line in
                let left = i == 0 ? a.head : ""
                return "  " + left + String(repeating: " ", count: width - left.count) + line
            }.joined(separator: "\n")
        }.joined(separator: "\n")
    }

    /// KEY=VALUE words (the key not empty) as pairs; the value may contain '='.
    static func keyValues(_ words: [String]) throws(DaemonError) -> [(String, String)] {
        var pairs: [(String, String)] = []
        for w in words {
            // The '=' scalar: a value starting with a combining mark makes "=" part of a Character.
            let u = w.unicodeScalars
            guard let eq = u.firstIndex(of: "="), eq != u.startIndex else { throw .invalidValue("expected KEY=VALUE, got '\(w)'") }
            pairs.append((String(Substring(u[..<eq])), String(Substring(u[u.index(after: eq)...]))))
        }
        return pairs
    }
}
