import CNBD  // its <sys/socket.h> owns SOCK_* in whole-module builds, so import it wherever they are used
import Foundation
import Glibc
import NBD
import Testing
import TestSupport

// MARK: - Byte building and parsing for tests

struct Bytes {
    var bytes: [UInt8] = []
    mutating func u16(_ v: UInt16) { withUnsafeBytes(of: v.bigEndian) { bytes += $0 } }
    mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.bigEndian) { bytes += $0 } }
    mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.bigEndian) { bytes += $0 } }
    mutating func string(_ s: String) { bytes += Array(s.utf8) }
    mutating func lengthPrefixed(_ s: String) {
        u32(UInt32(s.utf8.count))
        string(s)
    }
}

func be16(_ b: ArraySlice<UInt8>, _ at: Int) -> UInt16 {
    let i = b.startIndex + at
    return UInt16(b[i]) << 8 | UInt16(b[i + 1])
}
func be32(_ b: ArraySlice<UInt8>, _ at: Int) -> UInt32 {
    let i = b.startIndex + at
    return (0..<4).reduce(UInt32(0)) { $0 << 8 | UInt32(b[i + $1]) }
}
func be64(_ b: ArraySlice<UInt8>, _ at: Int) -> UInt64 {
    let i = b.startIndex + at
    return (0..<8).reduce(UInt64(0)) { $0 << 8 | UInt64(b[i + $1]) }
}

/// One option reply as parsed back from the wire.
struct OptionReplyView: Equatable, CustomStringConvertible {
    var option: UInt32
    var type: UInt32
    var data: [UInt8]
    var description: String { "reply(opt \(option), type 0x\(String(type, radix: 16)), \(data.count) bytes)" }
    var text: String { String(decoding: data, as: UTF8.self) }
}

/// Splits a byte stream of option replies.
func parseOptionReplies(_ bytes: [UInt8]) -> [OptionReplyView] {
    var out: [OptionReplyView] = []
    var s = bytes[...]
    while s.count >= 20 {
        #expect(be64(s, 0) == 0x0003_e889_0455_65a9)
        let length = Int(be32(s, 16))
        let data = Array(s.dropFirst(20).prefix(length))
        out.append(OptionReplyView(option: be32(s, 8), type: be32(s, 12), data: data))
        s = s.dropFirst(20 + length)
    }
    #expect(s.isEmpty, "trailing bytes in option replies")
    return out
}

func optionHeader(_ code: UInt32, length: Int, magic: UInt64 = 0x4948_4156_454f_5054) -> [UInt8] {
    var b = Bytes()
    b.u64(magic)
    b.u32(code)
    b.u32(UInt32(length))
    return b.bytes
}

/// Payload of INFO / GO.
func infoPayload(_ name: String, _ infos: [UInt16] = []) -> [UInt8] {
    var b = Bytes()
    b.lengthPrefixed(name)
    b.u16(UInt16(infos.count))
    for i in infos { b.u16(i) }
    return b.bytes
}

/// Payload of LIST_META_CONTEXT / SET_META_CONTEXT.
func metaPayload(_ name: String, _ queries: [String]) -> [UInt8] {
    var b = Bytes()
    b.lengthPrefixed(name)
    b.u32(UInt32(queries.count))
    for q in queries { b.lengthPrefixed(q) }
    return b.bytes
}

func requestBytes(type: CommandType, flags: CommandFlags = [], cookie: UInt64, offset: UInt64, length: UInt32,
                  rawType: UInt16? = nil) -> [UInt8] {
    var bytes = [UInt8](repeating: 0, count: 28)
    bytes.withUnsafeMutableBytes {
        RequestHeader(flags: flags, type: rawType ?? type.rawValue, cookie: cookie, offset: offset, length: length)
            .encode(into: $0.baseAddress!)
    }
    return bytes
}

// MARK: - A server on a temp unix socket

struct TestError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

final class TestServer: @unchecked Sendable {
    let dir = TempDir()
    let server: NBDServer
    let backend: MemoryBackend
    let socketPath: String
    /// The TCP port (127.0.0.1) when the server also listens on TCP.
    private(set) var tcpPort: UInt16 = 0
    var uri: String { "nbd+unix:///?socket=\(socketPath)" }
    func uri(export: String) -> String { "nbd+unix:///\(export)?socket=\(socketPath)" }

    init(size: UInt64 = 16 << 20, exports extra: [Export] = [], readOnly: Bool = false,
         maxInFlight: Int = 64,
         limits: NegotiationLimits = NegotiationLimits(), grace: Duration = .seconds(5),
         busyPoll: Duration = .zero, handshakeLimit: Duration = .seconds(10),
         tcp: Bool = false, unixConnections: ConnectionLimits = ConnectionLimits(),
         tcpConnections: ConnectionLimits = ConnectionLimits(), payloadBudget: PayloadBudget? = nil,
         logLevel: NBDLogger.Level = .off, logSink: (@Sendable (NBDLogger.Level, String) -> Void)? = nil,
         backend customBackend: (any BlockBackend)? = nil,
         tls: (mode: TLSMode, server: any TLSServer)? = nil, allowedPeers: [String]? = nil) throws {
        backend = try MemoryBackend(size: size)
        let main = Export(name: "disk", description: "test disk", backend: customBackend ?? backend, readOnly: readOnly,
                          allowedPeers: allowedPeers)
        var config = NBDServer.Configuration(catalog: try ExportCatalog([main] + extra, defaultExport: "disk"))
        config.maxInFlight = maxInFlight
        config.limits = limits
        config.stopGrace = grace
        config.busyPoll = busyPoll
        config.handshakeLimit = handshakeLimit
        config.unixConnections = unixConnections
        config.tcpConnections = tcpConnections
        if let payloadBudget { config.payloadBudget = payloadBudget }
        if let tls {
            config.unixTLS = tls.mode
            config.tcpTLS = tls.mode
            config.tlsServer = tls.server
        }
        config.logger = logSink.map { NBDLogger(level: logLevel, sink: $0) } ?? NBDLogger(level: logLevel)
        server = try NBDServer(config)
        socketPath = dir.file("nbd.sock")
        let sockets = try server.listen(on: [.unix(path: socketPath)] + (tcp ? [.tcp(host: "127.0.0.1", port: 0)] : []))
        tcpPort = sockets.last?.port ?? 0
    }

    deinit { server.stop() }
}

// MARK: - A raw socket client for bad-input tests

final class RawClient {
    let fd: Int32

    init(unixPath: String) throws {
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in unixPath.utf8.enumerated() { raw[i] = b }
        }
        let r = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        // No close here: a class init that throws after initialising every property still runs
        // deinit, which closes fd; closing twice could close another test's new descriptor.
        guard r == 0 else { throw TestError("connect \(unixPath): errno \(errno)") }
    }

    init(tcpPort: UInt16) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = tcpPort.bigEndian
        addr.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
        let r = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard r == 0 else { throw TestError("connect 127.0.0.1:\(tcpPort): errno \(errno)") }
    }

    init(fd: Int32) { self.fd = fd }

    deinit { close(fd) }

    /// Sends what fits without blocking; the bytes taken, 0 when the socket is full, -1 on error.
    func sendWithoutBlocking(_ bytes: [UInt8]) -> Int {
        let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress!, bytes.count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT)) }
        if n < 0 { return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -1 }
        return n
    }

    func send(_ bytes: [UInt8]) throws {
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + done, bytes.count - done, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { throw TestError("send failed: errno \(errno)") }
            done += n
        }
    }

    /// Exactly `count` bytes; throws on EOF or after `timeout` seconds without data.
    func receive(_ count: Int, timeout: Int32 = 10_000) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        var got = 0
        while got < count {
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, timeout) == 1 else { throw TestError("timed out waiting for \(count - got) bytes") }
            let n = out.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + got, count - got, 0) }
            guard n > 0 else { throw TestError("connection closed after \(got) of \(count) bytes") }
            got += n
        }
        return out
    }

    /// True if the server closes the connection (EOF or reset) within `timeout` ms, reading and
    /// dropping whatever arrives first.
    func closedByServer(timeout: Int32 = 10_000) -> Bool {
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, timeout) == 1 else { return false }
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, 4096, 0) }
            if n <= 0 { return true }
        }
    }

    // Negotiation helpers

    func hello(flags: UInt32 = 3) throws {
        let h = try receive(18)
        #expect(be64(h[...], 0) == 0x4e42_444d_4147_4943)
        #expect(be64(h[...], 8) == 0x4948_4156_454f_5054)
        #expect(be16(h[...], 16) == 3)
        var b = Bytes()
        b.u32(flags)
        try send(b.bytes)
    }

    func option(_ code: OptionCode, _ payload: [UInt8] = []) throws {
        try send(optionHeader(code.rawValue, length: payload.count) + payload)
    }

    func optionReply() throws -> OptionReplyView {
        let h = try receive(20)
        #expect(be64(h[...], 0) == 0x0003_e889_0455_65a9)
        let length = Int(be32(h[...], 16))
        let data = length > 0 ? try receive(length) : []
        return OptionReplyView(option: be32(h[...], 8), type: be32(h[...], 12), data: data)
    }

    /// Replies to one option up to and including its final ACK or error.
    func optionReplies() throws -> [OptionReplyView] {
        var out: [OptionReplyView] = []
        while true {
            let r = try optionReply()
            out.append(r)
            if r.type == OptionReplyType.ack.rawValue || r.type & 0x8000_0000 != 0 { return out }
        }
    }

    /// Full handshake up to transmission; returns (size, transmission flags).
    @discardableResult
    func negotiate(export: String = "", structured: Bool = true, metaContext: Bool = true) throws -> (UInt64, UInt16) {
        try hello()
        if structured {
            try option(.structuredReply)
            #expect(try optionReplies().last?.type == OptionReplyType.ack.rawValue)
            if metaContext {
                try option(.setMetaContext, metaPayload(export, ["base:allocation"]))
                #expect(try optionReplies().count == 2)
            }
        }
        try option(.go, infoPayload(export))
        let replies = try optionReplies()
        guard replies.last?.type == OptionReplyType.ack.rawValue,
              let info = replies.first(where: { $0.type == OptionReplyType.info.rawValue && be16($0.data[...], 0) == 0 })
        else { throw TestError("GO failed: \(replies)") }
        return (be64(info.data[...], 2), be16(info.data[...], 10))
    }

    // Transmission helpers

    func request(_ type: CommandType, flags: CommandFlags = [], cookie: UInt64, offset: UInt64 = 0,
                 length: UInt32 = 0, payload: [UInt8] = []) throws {
        try send(requestBytes(type: type, flags: flags, cookie: cookie, offset: offset, length: length) + payload)
    }

    /// A simple reply: (error, cookie).
    func simpleReply() throws -> (UInt32, UInt64) {
        let r = try receive(16)
        #expect(be32(r[...], 0) == 0x6744_6698)
        return (be32(r[...], 4), r.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 8, as: UInt64.self) })
    }

    struct Chunk {
        var flags: UInt16
        var type: UInt16
        var cookie: UInt64
        var payload: [UInt8]
        var isError: Bool { type & 0x8000 != 0 }
        var errorCode: UInt32 { be32(payload[...], 0) }
        var errorMessage: String { String(decoding: payload.dropFirst(6), as: UTF8.self) }
    }

    /// Any reply: a simple one comes back as a chunk of type 0xffff with the error in the payload.
    func reply() throws -> Chunk {
        let m = try receive(4)
        switch be32(m[...], 0) {
        case 0x6744_6698:
            let r = try receive(12)
            var b = Bytes()
            b.u32(be32(r[...], 0))
            return Chunk(flags: 1, type: 0xffff, cookie: r.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 4, as: UInt64.self) },
                         payload: b.bytes)
        case 0x668e_33ef:
            let r = try receive(16)
            let length = Int(be32(r[...], 12))
            return Chunk(flags: be16(r[...], 0), type: be16(r[...], 2),
                         cookie: r.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 4, as: UInt64.self) },
                         payload: length > 0 ? try receive(length) : [])
        default:
            throw TestError("bad reply magic \(m)")
        }
    }
}

/// Polls `condition` every millisecond until it holds (true) or `timeout` passes (false).
func eventually(timeout: Duration = .seconds(10), _ condition: () -> Bool) -> Bool {
    let deadline = ContinuousClock.now + timeout
    while !condition() {
        if ContinuousClock.now >= deadline { return false }
        var ts = timespec(tv_sec: 0, tv_nsec: 1_000_000)
        nanosleep(&ts, nil)
    }
    return true
}

/// Runs blocking work (such as NBDServer.stop) on its own thread: Swift Testing's cooperative
/// threads may all be busy in blocking tests, so a Task could wait for a thread indefinitely.
final class Background: @unchecked Sendable {
    private let done = DispatchSemaphore(value: 0)
    init(_ body: @escaping @Sendable () -> Void) {
        let t = Thread { [done] in
            body()
            done.signal()
        }
        t.start()
    }
    /// True if the work finished within `seconds`.
    func wait(seconds: Double = 20) -> Bool { done.wait(timeout: .now() + seconds) == .success }
}

/// Log lines a test server wrote, for tests that check what was logged (and how often).
final class LogLines: @unchecked Sendable {  // @unchecked: `lines` is guarded by `lock`
    private let lock = NSLock()
    private var lines: [String] = []

    var sink: @Sendable (NBDLogger.Level, String) -> Void {
        { [self] _, message in lock.withLock { lines.append(message) } }
    }

    /// The lines that contain `text`.
    func matching(_ text: String) -> [String] { lock.withLock { lines.filter { $0.contains(text) } } }

    /// The sum of the numbers that follow `word` ("refused 3 connections" counts 3).
    func total(after word: String) -> Int {
        matching(word + " ").reduce(0) { sum, line in
            let words = line.split(separator: " ")
            guard let i = words.firstIndex(where: { $0 == word }), i + 1 < words.count else { return sum }
            return sum + (Int(words[i + 1]) ?? 0)
        }
    }
}
