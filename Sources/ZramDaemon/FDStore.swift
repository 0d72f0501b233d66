// A crash keeps the data under systemd (issue 15): each device's state memfds, and its spec in a
// small memfd, go into systemd's fd store (FDSTORE=1, FileDescriptorStoreMax= in the unit) as
// the device is made, and again when a reset or an algorithm change replaces or rewrites them.
// After a SIGKILL or a crash, Restart=on-failure starts a new process with them (LISTEN_FDS,
// LISTEN_FDNAMES); it rebuilds each device with ZramDevice(recovering:), which recounts what the
// crash left half-done and refuses a state it cannot explain, and serves it again.
//
// NBD connections are not resumed after a crash: the dead process had read requests it never
// answered, and where the next request starts in the socket is unknown (a WRITE payload read as
// a request could write garbage). Their sockets close with the process; clients reconnect
// (nbd-client -persist) and resend what was not acknowledged. docs/daemon.md states the rules.
#if canImport(Glibc)
import Glibc
#endif
import Posix
import ZramDevice

struct FDStore {
    /// The parts of a device's state, in DeviceStateFDs order, then the spec; the backing file
    /// and each priority's dictionary only where there is one.
    static let parts = ["header", "slots", "arena", "pagemap", "spec", "backing"] + dictionaryParts
    static let dictionaryParts = (0..<ZramDevice.maxPriorities).map { "dict\($0)" }

    /// FDNAME= of one part: systemd allows up to 255 printable characters but ':'; device names
    /// are letters, digits, '.', '_' and '-'.
    static func name(_ device: String, _ part: String) -> String { "\(device).zstate-\(part)" }

    let notifier: SystemdNotifier
    let log: Log

    var enabled: Bool { notifier.enabled }

    /// Puts the device's state into the fd store, replacing what was there. A device whose state
    /// cannot be exported (anonymous memory, a backing device) is taken out of it instead, and
    /// said so: a crash would lose it.
    func store(_ store: any PageStore, spec: DeviceSpec) {
        guard enabled, let zram = store as? ZramPageStore else { return }
        remove(spec.name)
        let fds: DeviceStateFDs
        do { fds = try zram.device.exportState() } catch {
            log.info("\(spec.name): not kept in systemd's fd store (\(ZramPageStore.describe(error))): a crash loses its data")
            return
        }
        defer { fds.closeAll() }
        let specFD: Int32
        do { specFD = try SharedMemory.file(name: "\(spec.name).spec", holding: Array((ControlRecord(spec.handoverFields).line + "\n").utf8)) } catch {
            log.warning("\(spec.name): not kept in systemd's fd store: \(error)")
            return
        }
        defer { close(specFD) }
        for (part, fd) in zip(Self.parts, [fds.header, fds.slots, fds.arena, fds.pageMap, specFD, fds.backing] + fds.dictionaries) where fd >= 0 {
            guard notifier.notify("FDSTORE=1\nFDNAME=\(Self.name(spec.name, part))", descriptors: [fd]) else {
                log.warning("\(spec.name): systemd did not take its \(part) into the fd store: a crash loses its data")
                remove(spec.name)
                return
            }
        }
    }

    /// Takes the device out of the fd store (it was removed, or the daemon stops cleanly). After
    /// one message found no room within its wait, the rest do not wait: the manager is not reading.
    func remove(_ device: String) {
        guard enabled else { return }
        var waiting = true
        for part in Self.parts {
            let message = "FDSTOREREMOVE=1\nFDNAME=\(Self.name(device, part))"
            if waiting { waiting = notifier.notify(message) } else { notifier.notifyUnlessFull(message) }
        }
    }

    /// A crashed predecessor's devices, from the descriptors systemd passed back: each complete
    /// set with its spec. Anything else is closed and reported.
    static func collect(_ stored: [(fd: Int32, name: String)]) -> (devices: [(spec: DeviceSpec, state: DeviceStateFDs)], problems: [String]) {
        var byDevice: [String: [String: Int32]] = [:]
        var order: [String] = []
        var problems: [String] = []
        for d in stored {
            guard let part = parts.first(where: { d.name.hasSuffix(".zstate-" + $0) }) else {
                problems.append("fd \(d.fd) from systemd is named '\(d.name)', not a device's state: closed")
                close(d.fd)
                continue
            }
            let device = String(d.name.dropLast(".zstate-".count + part.count))
            if byDevice[device] == nil { order.append(device) }
            if let old = byDevice[device]?[part] { close(old) }   // a duplicate: the last one counts
            byDevice[device, default: [:]][part] = d.fd
        }
        var devices: [(DeviceSpec, DeviceStateFDs)] = []
        for device in order {
            let p = byDevice[device] ?? [:]
            guard let h = p["header"], let s = p["slots"], let a = p["arena"], let m = p["pagemap"], let sp = p["spec"] else {
                problems.append("\(device): the fd store holds only \(p.keys.sorted().joined(separator: ", ")) of its state: not recovered")
                for fd in p.values { close(fd) }
                continue
            }
            defer { close(sp) }
            let text = SharedMemory.contents(of: sp, limit: 1 << 20).map { String(decoding: $0, as: UTF8.self) } ?? ""
            do throws(DaemonError) {
                let spec = try DeviceSpec(handoverFields: ControlRecord.parse(text.trimmed()).fields)
                guard spec.name == device else { throw .device("its spec names device \(spec.name)") }
                devices.append((spec, DeviceStateFDs(header: h, slots: s, arena: a, pageMap: m, backing: p["backing"] ?? -1,
                                                     dictionaries: Self.dictionaryParts.map { p[$0] ?? -1 })))
            } catch {
                problems.append("\(device): its spec in the fd store is unreadable (\(error)): not recovered")
                for (part, fd) in p where part != "spec" { close(fd) }
            }
        }
        return (devices, problems)
    }
}

extension Daemon {
    /// Rebuilds the devices a crashed predecessor left in the fd store; returns the names it
    /// handled, recovered or refused (a refused device is not made again empty: its clients
    /// get errors, not zeros where their pages were).
    func recoverAfterCrash(_ stored: [(fd: Int32, name: String)]) -> Set<String> {
        guard !stored.isEmpty else { return [] }
        let (devices, problems) = FDStore.collect(stored)
        for p in problems { log.error("after a crash: \(p)") }
        var handled = Set<String>()
        for (spec, state) in devices {
            handled.insert(spec.name)
            do throws(DaemonError) {
                let store = try ZramPageStore(attaching: state, spec: spec, recovering: true)
                try host.adopt(spec, store: store)
                let r = store.device.recovery
                log.info("\(spec.name): recovered after a crash from systemd's fd store: \(store.device.stats().mmStatText.split(separator: " ").first ?? "0") bytes stored"
                         + ", \(r?.droppedPages.count ?? 0) page(s) whose write the crash cut read as zeros"
                         + ((r?.droppedPages.isEmpty ?? true) ? "" : " (\(r?.droppedPages.prefix(8).map(String.init).joined(separator: ", ") ?? ""))")
                         + ", \(r?.freedObjects ?? 0) unfinished write(s) freed")
            } catch {
                let why = error.description.hasPrefix(spec.name + ": ") ? String(error.description.dropFirst(spec.name.count + 2)) : error.description
                log.error("\(spec.name): NOT SERVED: the state the crash left cannot be trusted (\(why)); refusing rather than serving wrong data. Its memfds stay in systemd's fd store; `systemctl clean --what=fdstore zramnbd` discards them")
            }
        }
        return handled
    }
}
