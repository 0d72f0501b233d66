// What a daemon passes to the binary it execs at an upgrade (issue 15), in one memfd whose number
// is in $ZRAMNBD_HANDOVER: per device its configuration, its state memfds, its listening sockets
// and its live NBD connections; the control socket; the ctl connection that asked, which the
// successor answers; and the previous binary, to go back to if the successor cannot attach.
//
// Text, one control record per line (key=value, escaped as on the control socket), the first
// line naming the format's version. Everything in it is checked as input: a successor never
// traps on it and refuses what it cannot use.
#if canImport(Glibc)
import Glibc
#endif
import NBD
import Posix
import ZramDevice

struct HandoverManifest {
    /// The format's version: a successor that reads another refuses at `handover-check`, before
    /// the predecessor stops anything.
    static let version = 1

    struct Device {
        var spec: DeviceSpec
        /// The kernel NBD device the setup tools attached (`ctl attach`).
        var nbdDevice: String?
        var state: DeviceStateFDs
        var listeners: [SuspendedListener]
        var connections: [SuspendedConnection]
    }

    /// When the predecessor stopped serving (CLOCK_MONOTONIC nanoseconds, the same clock in
    /// every process): the successor reports the pause.
    var stopped: Int
    /// The binary the predecessor ran and its version (for the successor's report and a
    /// fallback's message).
    var previousVersion: String
    /// The previous binary, opened before the exec: a successor that cannot attach execs it back.
    var fallbackFD: Int32?
    /// The ctl connection that asked for the upgrade: the successor (or the fallback) answers it.
    var replyFD: Int32?
    var controlFD: Int32?
    var controlPath: String?
    var devices: [Device] = []

    /// Every descriptor the successor inherits (close-on-exec cleared for the exec).
    var descriptors: [Int32] {
        var fds = [fallbackFD, replyFD, controlFD].compactMap { $0 }
        for d in devices {
            fds += d.state.all
            fds += d.listeners.map(\.fd) + d.connections.map(\.fd)
        }
        return fds
    }

    var text: String {
        var lines: [[(String, String)]] = [[("zramnbd-handover", String(Self.version))]]
        var daemon: [(String, String)] = [("kind", "daemon"), ("stopped", String(stopped)), ("previous-version", previousVersion)]
        if let f = fallbackFD { daemon.append(("fallback-fd", String(f))) }
        if let f = replyFD { daemon.append(("reply-fd", String(f))) }
        if let f = controlFD, let p = controlPath { daemon += [("control-fd", String(f)), ("control-path", p)] }
        lines.append(daemon)
        for d in devices {
            let s = d.state
            var state: [(String, String)] = [("kind", "device"), ("name", d.spec.name), ("header", String(s.header)),
                                              ("slots", String(s.slots)), ("arena", String(s.arena)), ("pagemap", String(s.pageMap))]
            if s.backing >= 0 { state.append(("backing", String(s.backing))) }
            for (priority, fd) in s.dictionaries.enumerated() where fd >= 0 { state.append(("dict\(priority)", String(fd))) }
            if let n = d.nbdDevice { state.append(("nbd-device", n)) }
            lines.append(state)
            lines.append([("kind", "spec")] + d.spec.handoverFields)
            for l in d.listeners {
                lines.append([("kind", "listener"), ("fd", String(l.fd))] + (l.ownedPath.map { [("path", $0)] } ?? []))
            }
            for c in d.connections {
                var f: [(String, String)] = [("kind", "connection"), ("fd", String(c.fd)), ("export", c.exportName),
                                             ("structured", c.structuredReplies ? "1" : "0")]
                if let m = c.metaContextID { f.append(("meta", String(m))) }
                if let l = c.listener { f.append(("listener", String(l))) }
                if !c.unread.isEmpty { f.append(("unread", Self.hex(c.unread))) }
                lines.append(f)
            }
        }
        return lines.map { ControlRecord($0).line + "\n" }.joined()
    }

    static func parse(_ text: String) throws(DaemonError) -> HandoverManifest {
        func fail(_ m: String) -> DaemonError { .device("hand-over manifest: \(m)") }
        let lines = text.split(separator: "\n").map { ControlRecord.parse(String($0)) }
        guard let first = lines.first, first.fields.count == 1, first.fields[0].0 == "zramnbd-handover" else {
            throw fail("not a zramnbd hand-over")
        }
        guard first.fields[0].1 == String(version) else {
            throw fail("version \(first.fields[0].1); this zramnbd reads version \(version)")
        }
        func fd(_ r: ControlRecord, _ key: String) throws(DaemonError) -> Int32 {
            guard let v = r[key], let n = Int32(v), n >= 0 else { throw fail("\(key) '\(r[key] ?? "")' is not a descriptor") }
            return n
        }
        func optionalFD(_ r: ControlRecord, _ key: String) throws(DaemonError) -> Int32? {
            r[key] == nil ? nil : try fd(r, key)
        }
        var m = HandoverManifest(stopped: 0, previousVersion: "")
        var sawDaemon = false
        for r in lines.dropFirst() {
            switch r["kind"] {
            case "daemon":
                guard let s = r["stopped"].flatMap({ Int($0) }) else { throw fail("no stop time") }
                m.stopped = s
                m.previousVersion = r["previous-version"] ?? ""
                m.fallbackFD = try optionalFD(r, "fallback-fd")
                m.replyFD = try optionalFD(r, "reply-fd")
                m.controlFD = try optionalFD(r, "control-fd")
                m.controlPath = r["control-path"]
                sawDaemon = true
            case "device":
                guard let name = r["name"] else { throw fail("a device without a name") }
                var dictionaries = [Int32](repeating: -1, count: ZramDevice.maxPriorities)
                for priority in dictionaries.indices { dictionaries[priority] = try optionalFD(r, "dict\(priority)") ?? -1 }
                let state = DeviceStateFDs(header: try fd(r, "header"), slots: try fd(r, "slots"),
                                           arena: try fd(r, "arena"), pageMap: try fd(r, "pagemap"),
                                           backing: try optionalFD(r, "backing") ?? -1, dictionaries: dictionaries)
                m.devices.append(Device(spec: DeviceSpec(name: name, diskSize: 0), nbdDevice: r["nbd-device"],
                                        state: state, listeners: [], connections: []))
            case "spec":
                guard let i = m.devices.indices.last else { throw fail("a spec before its device") }
                let spec = try DeviceSpec(handoverFields: Array(r.fields.dropFirst()))
                guard spec.name == m.devices[i].spec.name else { throw fail("spec \(spec.name) under device \(m.devices[i].spec.name)") }
                m.devices[i].spec = spec
            case "listener":
                guard let i = m.devices.indices.last else { throw fail("a listener before its device") }
                m.devices[i].listeners.append(SuspendedListener(fd: try fd(r, "fd"), ownedPath: r["path"]))
            case "connection":
                guard let i = m.devices.indices.last else { throw fail("a connection before its device") }
                guard let export = r["export"], let structured = r["structured"], structured == "0" || structured == "1" else {
                    throw fail("a connection without its export or reply mode")
                }
                var meta: UInt32?
                if let v = r["meta"] {
                    guard let id = UInt32(v) else { throw fail("meta context id '\(v)'") }
                    meta = id
                }
                var listener: Int?
                if let v = r["listener"] {
                    guard let l = Int(v), l >= 0 else { throw fail("listener index '\(v)'") }
                    listener = l
                }
                guard let unread = unhex(r["unread"] ?? "") else { throw fail("unread bytes are not hex") }
                m.devices[i].connections.append(SuspendedConnection(fd: try fd(r, "fd"), exportName: export,
                                                                    structuredReplies: structured == "1", metaContextID: meta,
                                                                    unread: unread, listener: listener))
            default:
                throw fail("unknown line kind '\(r["kind"] ?? "")'")
            }
        }
        guard sawDaemon else { throw fail("no daemon line") }
        return m
    }

    static func hex(_ bytes: [UInt8]) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count * 2)
        for b in bytes { out += [digits[Int(b >> 4)], digits[Int(b & 15)]] }
        return String(decoding: out, as: UTF8.self)
    }

    static func unhex(_ text: String) -> [UInt8]? {
        let u = Array(text.utf8)
        guard u.count % 2 == 0 else { return nil }
        func nibble(_ c: UInt8) -> UInt8? {
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - UInt8(ascii: "a") + 10
            default: return nil
            }
        }
        var out: [UInt8] = []
        out.reserveCapacity(u.count / 2)
        var i = 0
        while i < u.count {
            guard let hi = nibble(u[i]), let lo = nibble(u[i + 1]) else { return nil }
            out.append(hi << 4 | lo)
            i += 2
        }
        return out
    }
}

extension DeviceSpec {
    /// Every field, as key=value pairs `init(handoverFields:)` reads back into an equal spec
    /// (HandoverTests checks the round trip, so a new field that is not added here fails it).
    var handoverFields: [(String, String)] {
        var f: [(String, String)] = [("name", name), ("disk-size", String(diskSize)), ("algorithm", algorithm),
                                     ("chain-size", String(chainSize)), ("mem-limit", String(memLimit))]
        func opt(_ key: String, _ v: String?) { if let v { f.append((key, v)) } }
        func flag(_ key: String, _ v: Bool) { f.append((key, v ? "1" : "0")) }
        opt("level", level.map { String($0) })
        opt("dict", dictionary)
        opt("winbits", windowBits.map { String($0) })
        opt("compact-frames", compactFrames.map { $0 ? "1" : "0" })
        opt("socket", socket)
        opt("listen", listen)
        opt("stats-dir", statsDir)
        flag("read-only", readOnly)
        if let ids = tlsIdentities {
            f.append(("tls-identities", String(ids.count)))
            for id in ids { f.append(("tls-identity", id)) }
        }
        f.append(("swap-priority", String(swapPriority)))
        opt("fs-type", fsType)
        opt("mount-point", mountPoint)
        f.append(("options", options))
        opt("writeback-device", writebackDevice)
        f.append(("writeback-limit", String(writebackLimit)))
        flag("writeback-limit-enable", writebackLimitEnable)
        f.append(("writeback-batch-size", String(writebackBatchSize)))
        flag("compressed-writeback", compressedWriteback)
        flag("writeback-packing", writebackPacking)
        let p = postProcessing
        opt("writeback-idle-after", p.idleAfter.map { String($0) })
        flag("writeback-on-pressure", p.onPressure)
        opt("writeback-daily-limit", p.dailyLimitPages.map { String($0) })
        opt("recompress-idle-after", p.recompressIdleAfter.map { String($0) })
        flag("recompress-on-pressure", p.recompressOnPressure)
        f.append(("recompress-arguments", p.recompressArguments))
        // Each secondary: its name, then its parameters (they apply to the last name).
        for a in recompressionAlgorithms {
            f.append(("recomp-algorithm", a.name))
            if let l = a.level { f.append(("recomp-level", String(l))) }
            if let d = a.dictionary { f.append(("recomp-dict", d)) }
            if let w = a.windowBits { f.append(("recomp-winbits", String(w))) }
            if let c = a.compactFrames { f.append(("recomp-compact-frames", c ? "1" : "0")) }
        }
        return f
    }

    init(handoverFields fields: [(String, String)]) throws(DaemonError) {
        func fail(_ key: String, _ v: String) -> DaemonError { .device("hand-over manifest: spec field \(key)='\(v)'") }
        func number<T: FixedWidthInteger>(_ key: String, _ v: String) throws(DaemonError) -> T {
            guard let n = T(v) else { throw fail(key, v) }
            return n
        }
        func bool(_ key: String, _ v: String) throws(DaemonError) -> Bool {
            guard v == "0" || v == "1" else { throw fail(key, v) }
            return v == "1"
        }
        guard let name = fields.first(where: { $0.0 == "name" })?.1 else { throw DaemonError.device("hand-over manifest: a spec without a name") }
        self.init(name: name, diskSize: 0)
        var identities: [String]?
        for (k, v) in fields {
            switch k {
            case "name": break
            case "disk-size": diskSize = try number(k, v)
            case "algorithm": algorithm = v
            case "chain-size": chainSize = try number(k, v)
            case "mem-limit": memLimit = try number(k, v)
            case "level": level = try number(k, v)
            case "dict": dictionary = v
            case "winbits": windowBits = try number(k, v)
            case "compact-frames": compactFrames = try bool(k, v)
            case "socket": socket = v
            case "listen": listen = v
            case "stats-dir": statsDir = v
            case "read-only": readOnly = try bool(k, v)
            case "tls-identities": identities = []
            case "tls-identity":
                guard identities != nil else { throw fail(k, v) }
                identities?.append(v)
            case "swap-priority": swapPriority = try number(k, v)
            case "fs-type": fsType = v
            case "mount-point": mountPoint = v
            case "options": options = v
            case "writeback-device": writebackDevice = v
            case "writeback-limit": writebackLimit = try number(k, v)
            case "writeback-limit-enable": writebackLimitEnable = try bool(k, v)
            case "writeback-batch-size": writebackBatchSize = try number(k, v)
            case "compressed-writeback": compressedWriteback = try bool(k, v)
            case "writeback-packing": writebackPacking = try bool(k, v)
            case "writeback-idle-after": postProcessing.idleAfter = try number(k, v)
            case "writeback-on-pressure": postProcessing.onPressure = try bool(k, v)
            case "writeback-daily-limit": postProcessing.dailyLimitPages = try number(k, v)
            case "recompress-idle-after": postProcessing.recompressIdleAfter = try number(k, v)
            case "recompress-on-pressure": postProcessing.recompressOnPressure = try bool(k, v)
            case "recompress-arguments": postProcessing.recompressArguments = v
            case "recomp-algorithm": recompressionAlgorithms.append(AlgorithmChoice(name: v))
            case "recomp-level", "recomp-dict", "recomp-winbits", "recomp-compact-frames":
                guard let last = recompressionAlgorithms.indices.last else { throw fail(k, v) }
                switch k {
                case "recomp-level": recompressionAlgorithms[last].level = try number(k, v)
                case "recomp-dict": recompressionAlgorithms[last].dictionary = v
                case "recomp-winbits": recompressionAlgorithms[last].windowBits = try number(k, v)
                default: recompressionAlgorithms[last].compactFrames = try bool(k, v)
                }
            default: throw DaemonError.device("hand-over manifest: unknown spec field '\(k)'")
            }
        }
        tlsIdentities = identities
        try validate()
    }
}
