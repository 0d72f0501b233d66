import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif
import Posix
@testable import ZramDaemon

/// A host with one fake device whose stats go to a temp dir.
func makeHost(_ dir: TempDir, prometheus: Bool = false) throws -> (DeviceHost, FakeDeviceFactory) {
    let factory = FakeDeviceFactory()
    let host = DeviceHost(factory: factory, prometheusFile: prometheus ? dir.file("zramnbd.prom") : nil, log: .quiet)
    var spec = DeviceSpec(name: "zram0", diskSize: 64 << 20)
    spec.statsDir = dir.file("zram0")
    spec.socket = dir.file("zram0.sock")
    try host.add(spec)
    return (host, factory)
}

@Suite("Device host: stats files and control")
struct HostTests {
    @Test("the stats directory is laid out like /sys/block/zramN")
    func layout() throws {
        let dir = TempDir()
        defer { dir.remove() }
        let (host, factory) = try makeHost(dir)
        factory.stores["zram0"]!.store(pages: 10)
        host.refreshStats()
        let names = Set(FileSystem.listDirectory(dir.file("zram0")))
        #expect(names == ["mm_stat", "io_stat", "debug_stat", "bd_stat", "disksize", "comp_algorithm", "initstate",
                          "mem_limit", "mem_used_max", "max_comp_streams", "classes", "stat.json", "backing_dev",
                          "writeback_limit", "writeback_limit_enable", "writeback_batch_size", "compressed_writeback",
                          "recomp_algorithm"])
        #expect(dir.read("zram0/backing_dev") == "none\n")
        #expect(dir.read("zram0/writeback_batch_size") == "32\n")
        #expect(dir.read("zram0/disksize") == "67108864\n")
        #expect(dir.read("zram0/initstate") == "1\n")
        #expect(dir.read("zram0/comp_algorithm") == "lzo-rle lzo [lz4] lz4hc zstd deflate \n")
        let mm = try #require(dir.read("zram0/mm_stat"))
        #expect(mm == factory.stores["zram0"]!.snapshot(classes: false).mmStatText)
        #expect(mm.split(separator: " ").first == "40960")
        let json = try #require(dir.read("zram0/stat.json"))
        #expect(json.hasPrefix("{\"name\":\"zram0\",\"disksize\":67108864,"))
        #expect(json.contains("\"orig_data_size\":40960,"))
        host.stopAll()
        #expect(!FileSystem.exists(dir.file("zram0")))
    }

    @Test("control operations update the files at once")
    func controlUpdatesFiles() throws {
        let dir = TempDir()
        defer { dir.remove() }
        let (host, factory) = try makeHost(dir)
        defer { host.stopAll() }
        factory.stores["zram0"]!.store(pages: 100)   // not yet published
        guard case .ok(let lines) = host.handle(.compact("zram0")) else { Issue.record("compact failed"); return }
        #expect(lines.first?.hasPrefix("pages_compacted=") == true)
        let fields = try #require(dir.read("zram0/mm_stat")).split(separator: " ")
        #expect(fields[0] == "409600")
        #expect(fields[6] != "0")   // pages_compacted

        #expect(host.handle(.memLimit("zram0", 1 << 20)) == .ok([]))
        #expect(dir.read("zram0/mem_limit") == "1048576\n")

        #expect(host.handle(.reset("zram0")) == .ok([]))
        #expect(try #require(dir.read("zram0/mm_stat")).split(separator: " ").first == "0")
        #expect(factory.stores["zram0"]!.resets == 1)
    }

    @Test("reset and remove are refused while a client is connected (zram's EBUSY)")
    func busy() throws {
        let dir = TempDir()
        defer { dir.remove() }
        let (host, factory) = try makeHost(dir)
        defer { host.stopAll() }
        factory.exports["zram0"]!.activeConnections = 1
        guard case .error(let m) = host.handle(.reset("zram0")) else { Issue.record("reset accepted"); return }
        #expect(m == "zram0 is in use by 1 NBD connection(s); disconnect it first")
        guard case .error = host.handle(.remove("zram0")) else { Issue.record("remove accepted"); return }
        #expect(factory.stores["zram0"]!.resets == 0)
    }

    @Test("add and remove devices at runtime")
    func addRemove() throws {
        let dir = TempDir()
        defer { dir.remove() }
        let (host, factory) = try makeHost(dir)
        defer { host.stopAll() }
        let reply = host.handle(.add("zram1", [("size", "16M"), ("stats-dir", dir.file("zram1")), ("socket", dir.file("z1.sock"))]))
        guard case .ok(let lines) = reply else { Issue.record("\(reply)"); return }
        #expect(ControlRecord.parse(lines[0])["disksize"] == "16777216")
        #expect(host.deviceNames == ["zram0", "zram1"])
        #expect(dir.read("zram1/disksize") == "16777216\n")
        guard case .error(let dup) = host.handle(.add("zram1", [])) else { Issue.record("duplicate accepted"); return }
        #expect(dup == "device 'zram1' exists already")
        guard case .error(let sock) = host.handle(.add("zram2", [("socket", dir.file("z1.sock"))])) else {
            Issue.record("shared socket accepted"); return
        }
        #expect(sock.contains("used by another device"))
        #expect(host.handle(.remove("zram1")) == .ok([]))
        #expect(factory.exports["zram1"]!.stopped)
        #expect(!FileSystem.exists(dir.file("zram1")))
        guard case .error(let missing) = host.handle(.compact("zram1")) else { Issue.record("unknown device"); return }
        #expect(missing == "no device 'zram1' (have: zram0)")
    }

    @Test("status records agree with the stats files")
    func statusAgreesWithFiles() throws {
        let dir = TempDir()
        defer { dir.remove() }
        let (host, factory) = try makeHost(dir)
        defer { host.stopAll() }
        factory.stores["zram0"]!.store(pages: 33)
        host.refreshStats()
        guard case .ok(let lines) = host.handle(.status([])) else { Issue.record("status failed"); return }
        let r = ControlRecord.parse(lines[0])
        let mm = try #require(dir.read("zram0/mm_stat")).split(separator: " ", omittingEmptySubsequences: true)
        let keys = ["orig_data_size", "compr_data_size", "mem_used_total", "mem_limit", "mem_used_max", "same_pages",
                    "pages_compacted", "huge_pages", "huge_pages_since"]
        for (i, k) in keys.enumerated() { #expect(r[k] == mm[i].trimmingNewline, "\(k)") }
        #expect(r["socket"] == dir.file("zram0.sock"))
        #expect(r["fs_type"] == "swap" && r["mountpoint"] == "")
    }

    @Test("Prometheus text file, node_exporter format")
    func prometheus() throws {
        let dir = TempDir()
        defer { dir.remove() }
        let (host, factory) = try makeHost(dir, prometheus: true)
        factory.stores["zram0"]!.store(pages: 1)
        host.refreshStats()
        let text = try #require(dir.read("zramnbd.prom"))
        #expect(text.contains("# TYPE zramnbd_orig_data_bytes gauge\nzramnbd_orig_data_bytes{device=\"zram0\"} 4096\n"))
        #expect(text.contains("# TYPE zramnbd_pages_compacted_total counter\n"))
        #expect(text.contains("zramnbd_device_info{device=\"zram0\",algorithm=\"lz4\",level=\"1\"} 1\n"))
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            #expect(line.split(separator: " ").count == 2, "\(line)")
        }
        host.stopAll()
        #expect(!FileSystem.exists(dir.file("zramnbd.prom")))
    }
}

@Suite("Control protocol")
struct ControlProtocolTests {
    @Test("requests survive the wire", arguments: [
        ControlRequest.status([]), .status(["zram0", "zram1"]), .show("zram0"), .compact("zram0"), .reset("z"),
        .memLimit("zram0", 1 << 30), .memUsedMaxReset("zram0"), .add("zram1", [("size", "1G"), ("mount-point", "/a b")]),
        .remove("zram1"), .attach("zram0", "/dev/nbd0"), .attach("zram0", nil),
    ])
    func roundTrip(_ r: ControlRequest) throws {
        #expect(try ControlRequest.parse(r.line + "\n") == r)
    }

    @Test("bad requests are refused with a reason", arguments: [
        ("", "empty request"), ("frob zram0", "unknown command 'frob'"), ("compact", "'compact' takes a device"),
        ("mem-limit zram0 lots", "invalid size 'lots'"), ("reset ../x", "invalid device name '../x'"),
    ])
    func badRequests(_ line: String, _ message: String) {
        do {
            _ = try ControlRequest.parse(line)
            Issue.record("accepted '\(line)'")
        } catch {
            #expect(error.description.hasPrefix(message), "\(error)")
        }
    }

    @Test("records escape blanks, '=' and '%'")
    func records() {
        let r = ControlRecord([("name", "zram0"), ("mountpoint", "/mnt/a b=c%d"), ("empty", ""), ("utf8", "zäh")])
        #expect(r.line == "name=zram0 mountpoint=/mnt/a%20b%3Dc%25d empty= utf8=zäh")
        #expect(ControlRecord.parse(r.line) == r)
    }

    @Test("replies")
    func replies() throws {
        #expect(try ControlReply.parse("ok\na=1\n") == .ok(["a=1"]))
        #expect(try ControlReply.parse("error no device 'x'\n") == .error("no device 'x'"))
        #expect(ControlReply.error("two\nlines").text == "error two lines\n")
        #expect(throws: DaemonError.self) { try ControlReply.parse("") }
    }

    // Found by scripts/fuzz.sh --long (control target): the protocol split lines and words on
    // Characters, where "\r\n" is one Character that is neither "\r" nor "\n", and a blank, '='
    // or "error " followed by a combining mark joins it into one Character.
    @Test("framing and escaping hold for CR LF and combining marks")
    func scalarFraming() throws {
        #expect(ControlReply.error("a\r\nb").text == "error a  b\n")
        #expect(try ControlReply.parse("ok\nline\r\n") == .ok(["line\r"]))
        #expect(try ControlReply.parse("error \u{301}x\n") == .error("\u{301}x"))
        #expect(ControlRecord.unescape("\u{600}%41") == "\u{600}A")
        let fields = [("k", "\u{301}v"), ("\u{301}k", "x"), ("\u{600}\u{8}", "")]
        #expect(ControlRecord.parse(ControlRecord(fields).line).fields.elementsEqual(fields, by: { $0 == $1 }))
        #expect(try ControlAction.keyValues(["a=\u{301}b"]).elementsEqual([("a", "\u{301}b")], by: { $0 == $1 }))
        let add = ControlRequest.add("zram1", [("\u{301}a", "\u{301}b")])
        guard case .add(_, let kv) = try ControlRequest.parse(add.line) else { Issue.record("not add"); return }
        #expect(kv.elementsEqual([("\u{301}a", "\u{301}b")], by: { $0 == $1 }))
        // The server's request line ends at the LF byte, even after a CR.
        var fds: [Int32] = [0, 0]
        #expect(socketpair(AF_UNIX, Sockets.stream, 0, &fds) == 0)
        defer { close(fds[0]); close(fds[1]) }
        #expect(FileSystem.writeAll(fds[1], "status zram0\r\nframe zram0\n"))
        ControlServer.serve(PeerConnection(fd: fds[0], stop: -1)) { .ok([$0.line]) }
        shutdown(fds[0], Int32(SHUT_WR))
        let reply = Sockets.readMessage(fds[1], limit: 1 << 16, timeout: 5000, stopAtNewline: false) ?? []
        #expect(String(decoding: reply, as: UTF8.self) == "ok\nstatus zram0\n")
    }

    @Test("a request over a real control socket")
    func socketRoundTrip() throws {
        let dir = TempDir()
        defer { dir.remove() }
        let (host, factory) = try makeHost(dir)
        defer { host.stopAll() }
        factory.stores["zram0"]!.store(pages: 2)
        let server = try ControlServer(path: dir.file("control.sock"))
        defer { server.close() }
        // The client writes its request into the socket buffer before the server runs, so one
        // thread can play both sides in order: connect+send, serve, then read the reply.
        let fd = try Sockets.connectUnix(dir.file("control.sock"))
        defer { close(fd) }
        #expect(FileSystem.writeAll(fd, "status\n"))
        server.serveOne { host.handle($0) }
        let reply = try ControlReply.parse(String(decoding: Sockets.readMessage(fd, limit: 1 << 20, timeout: 5000, stopAtNewline: false) ?? [], as: UTF8.self))
        guard case .ok(let lines) = reply else { Issue.record("\(reply)"); return }
        #expect(ControlRecord.parse(lines[0])["orig_data_size"] == "8192")
        var st = stat()
        #expect(stat(dir.file("control.sock"), &st) == 0 && st.st_mode & 0o777 == 0o600)
    }

    @Test("a second daemon cannot take over a live control socket")
    func liveSocket() throws {
        let dir = TempDir()
        defer { dir.remove() }
        let server = try ControlServer(path: dir.file("control.sock"))
        defer { server.close() }
        #expect(throws: DaemonError.device("\(dir.file("control.sock")) is in use by another process")) {
            try ControlServer(path: dir.file("control.sock"))
        }
    }
}

@Suite("status output")
struct StatusReportTests {
    let records = [
        ControlRecord([("name", "zram0"), ("disksize", "4294967296"), ("algorithm", "lz4"), ("level", "1"), ("streams", "2"),
                       ("orig_data_size", "536870912"), ("compr_data_size", "217882026"), ("mem_used_total", "223629312"),
                       ("swap_priority", "-1"), ("mountpoint", "[SWAP]"), ("socket", "")]),
        ControlRecord([("name", "zram1"), ("disksize", "0"), ("algorithm", "zstd"), ("streams", "2"), ("mountpoint", "")]),
    ]

    @Test("the table has zramctl's columns and alignment, plus RATIO")
    func table() {
        #expect(StatusReport.table(records) == """
            NAME  ALGORITHM DISKSIZE  DATA  COMPR  TOTAL STREAMS RATIO MOUNTPOINT
            zram0 lz4             4G  512M 207.8M 213.3M       2  2.40 [SWAP]
            zram1 zstd            0B    0B     0B     0B       2     -

            """)
        #expect(StatusReport.table(records, bytes: true).contains(" 536870912 217882026 223629312 "))
    }

    @Test("JSON has numbers as numbers and both ratios")
    func json() {
        let j = StatusReport.json(records)
        #expect(j.hasPrefix("{\"devices\":[{\"name\":\"zram0\",\"disksize\":4294967296,\"algorithm\":\"lz4\",\"level\":1,"))
        #expect(j.contains("\"swap_priority\":-1,"))
        #expect(j.contains("\"socket\":null"))
        #expect(j.contains("\"compression_ratio\":2.464,\"memory_ratio\":2.401}"))
        #expect(j.contains("\"compression_ratio\":null,\"memory_ratio\":null}"))
    }
}

extension Substring {
    var trimmingNewline: String { String(self).trimmed() }
}

@Suite("HTTP /metrics")
struct MetricsServerTests {
    /// Sends `request` to the server, lets it answer, returns the response.
    func exchange(_ server: MetricsServer, _ request: String) throws -> String {
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = server.port.bigEndian
        addr.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
        let fd = socket(AF_INET, Sockets.stream, 0)
        defer { close(fd) }
        let ok = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        #expect(ok == 0)
        #expect(FileSystem.writeAll(fd, request))
        server.serveOne { "zramnbd_up 1\n" }
        return String(decoding: Sockets.readMessage(fd, limit: 1 << 20, timeout: 5000, stopAtNewline: false) ?? [], as: UTF8.self)
    }

    @Test("GET /metrics answers the Prometheus text, anything else 404")
    func metrics() throws {
        let server = try MetricsServer(address: HostPort(host: "127.0.0.1", port: 0))
        defer { server.close() }
        let ok = try exchange(server, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        #expect(ok.hasPrefix("HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: 13\r\n"))
        #expect(ok.hasSuffix("\r\n\r\nzramnbd_up 1\n"))
        #expect(try exchange(server, "GET / HTTP/1.1\r\n\r\n").hasPrefix("HTTP/1.0 404 Not Found\r\n"))
    }
}

@Suite("The real page store behind the host")
struct ZramStoreTests {
    @Test("stats files show ZramDevice's own counters and formats")
    func realStore() throws {
        let dir = TempDir()
        defer { dir.remove() }
        var spec = DeviceSpec(name: "zram0", diskSize: 16 << 20)
        spec.algorithm = "zstd"
        spec.statsDir = dir.file("zram0")
        let store = try ZramPageStore(spec)
        let host = DeviceHost(factory: FakeDeviceFactory(), log: .quiet)
        defer { host.stopAll() }
        // The fake factory makes fake stores; put the real one in through the same path.
        try host.adopt(spec, store: store)
        var page = [UInt8](repeating: 0, count: 4096)
        for i in 0..<4096 { page[i] = UInt8(truncatingIfNeeded: i / 64) }
        for p in 0..<100 { try page.withUnsafeBytes { try store.device.write(from: $0.baseAddress!, offset: p * 4096, length: 4096) } }
        let zero = [UInt8](repeating: 0, count: 4096)
        try zero.withUnsafeBytes { try store.device.write(from: $0.baseAddress!, offset: 200 * 4096, length: 4096) }
        host.refreshStats()
        #expect(dir.read("zram0/mm_stat") == store.device.stats().mmStatText)
        let mm = try #require(dir.read("zram0/mm_stat")).split(separator: " ", omittingEmptySubsequences: true)
        #expect(mm[0] == "413696" && mm[5] == "1")   // 101 pages, one of them same-filled
        #expect(dir.read("zram0/comp_algorithm") == "lzo-rle lzo lz4 lz4hc [zstd] deflate \n")
        #expect(dir.read("zram0/classes")?.hasPrefix(" class  size") == true)
        #expect(dir.read("zram0/debug_stat") == "version: 1\n0        0\n")
        #expect(host.handle(.memLimit("zram0", 5000)) == .ok([]))
        #expect(dir.read("zram0/mem_limit") == "8192\n")   // rounded up to pages
        #expect(host.handle(.reset("zram0")) == .ok([]))
        #expect(dir.read("zram0/mm_stat") == "       0        0        0     8192        0        0        0        0        0\n")
    }
}

@Suite("Compaction under memory pressure")
struct PressureTests {
    @Test("compacts the devices that have pages to give back and publishes the result")
    func compactUnderPressure() throws {
        let dir = TempDir()
        defer { dir.remove() }
        let (host, factory) = try makeHost(dir)
        defer { host.stopAll() }
        factory.stores["zram0"]!.store(pages: 40)
        host.refreshStats()
        let freed = host.compactUnderPressure()
        #expect(freed > 0)
        let mm = try #require(dir.read("zram0/mm_stat")).split(separator: " ", omittingEmptySubsequences: true)
        #expect(mm[6] == "\(freed)")
    }

    @Test("a PSI trigger can be armed on this kernel")
    func trigger() {
        guard FileSystem.exists("/proc/pressure/memory") else { print("skipping: no /proc/pressure (PSI off)"); return }
        #expect(MemoryPressure() != nil)
    }
}
