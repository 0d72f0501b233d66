import Glibc
import NBD
import Testing

/// Hostile or broken clients: each gets the right error or loses its own connection, while the
/// server stays up and another client's data stays intact.
@Suite struct BadInputTests {
    /// A server with a well-behaved client that wrote known data first.
    struct Fixture {
        let server: TestServer
        let good: RawClient
        let data: [UInt8]

        init(size: UInt64 = 16 << 20, readOnly: Bool = false) throws {
            server = try TestServer(size: size, readOnly: readOnly)
            good = try RawClient(unixPath: server.socketPath)
            try good.negotiate(structured: false)
            data = readOnly ? [UInt8](repeating: 0, count: 4096) : pattern(4096, seed: 42)
            if !readOnly {
                try good.request(.write, cookie: 1, offset: 65536, length: 4096, payload: data)
                #expect(try good.simpleReply() == (0, 1))
            }
        }

        func client() throws -> RawClient { try RawClient(unixPath: server.socketPath) }

        /// The server still works and the good client's data is intact.
        func checkHealthy() throws {
            try good.request(.read, cookie: 99, offset: 65536, length: 4096)
            #expect(try good.simpleReply() == (0, 99))
            #expect(try good.receive(4096) == data)
            let fresh = try client()
            try fresh.negotiate(structured: false)
        }
    }

    @Test func badHelloMagicFromClientIsAnOptionWithBadMagic() throws {
        let f = try Fixture()
        let c = try f.client()
        try c.hello()
        try c.send(Array("NBDMAGICIHAVEOPT".utf8))
        #expect(c.closedByServer())
        try f.checkHealthy()
    }

    @Test func badOptionMagic() throws {
        let f = try Fixture()
        let c = try f.client()
        try c.hello()
        try c.send(optionHeader(7, length: 0, magic: 0x1234_5678_9abc_def0))
        #expect(c.closedByServer())
        try f.checkHealthy()
    }

    @Test func unknownClientFlags() throws {
        let f = try Fixture()
        let c = try f.client()
        try c.hello(flags: 0x8000_0003)
        #expect(c.closedByServer())
        try f.checkHealthy()
    }

    @Test func truncatedClientFlags() throws {
        let f = try Fixture()
        let c = try f.client()
        _ = try c.receive(18)
        try c.send([0, 0])
        shutdown(c.fd, Int32(SHUT_WR))
        #expect(c.closedByServer())
        try f.checkHealthy()
    }

    @Test func truncatedOptionHeader() throws {
        let f = try Fixture()
        let c = try f.client()
        try c.hello()
        try c.send(Array(optionHeader(7, length: 0).prefix(9)))
        shutdown(c.fd, Int32(SHUT_WR))
        #expect(c.closedByServer())
        try f.checkHealthy()
    }

    @Test func truncatedOptionPayload() throws {
        let f = try Fixture()
        let c = try f.client()
        try c.hello()
        try c.send(optionHeader(OptionCode.go.rawValue, length: 100) + [0, 0, 0])
        shutdown(c.fd, Int32(SHUT_WR))
        #expect(c.closedByServer())
        try f.checkHealthy()
    }

    @Test func truncatedRequestHeader() throws {
        let f = try Fixture()
        let c = try f.client()
        try c.negotiate(structured: false)
        try c.send(Array(requestBytes(type: .read, cookie: 1, offset: 0, length: 4096).prefix(20)))
        shutdown(c.fd, Int32(SHUT_WR))
        #expect(c.closedByServer())
        try f.checkHealthy()
    }

    @Test func optionFlood() throws {
        let f = try Fixture()
        let c = try f.client()
        try c.hello()
        var sent = 0
        // The server may hang up while we still send, so stop at the first failed send.
        while sent < 1000, (try? c.send(optionHeader(99, length: 0))) != nil { sent += 1 }
        var answered = 0
        while let r = try? c.optionReply() {
            #expect(r.type == OptionReplyType.errUnsupported.rawValue)
            answered += 1
        }
        #expect(answered == 32)
        try f.checkHealthy()
    }

    @Test func fourGiBOptionLength() throws {
        let f = try Fixture()
        let c = try f.client()
        try c.hello()
        try c.send(optionHeader(OptionCode.info.rawValue, length: Int(UInt32.max)))
        #expect(c.closedByServer())
        try f.checkHealthy()
    }

    @Test func fourGiBWrite() throws {
        let f = try Fixture()
        let c = try f.client()
        try c.negotiate(structured: false)
        try c.send(requestBytes(type: .write, cookie: 1, offset: 0, length: UInt32.max) + pattern(65536, seed: 1))
        #expect(c.closedByServer())
        try f.checkHealthy()
    }

    @Test func writeJustOverTheMaximumIsSkippedAndRefused() throws {
        let f = try Fixture(size: 80 << 20)
        let c = try f.client()
        try c.negotiate(structured: false)
        let n = (64 << 20) + 1
        try c.send(requestBytes(type: .write, cookie: 1, offset: 0, length: UInt32(n)) + [UInt8](repeating: 7, count: n))
        #expect(try c.simpleReply() == (22, 1))
        try c.request(.flush, cookie: 2)
        #expect(try c.simpleReply() == (0, 2))
        try f.checkHealthy()
    }

    @Test func readAndWritePastTheEnd() throws {
        let f = try Fixture()
        let c = try f.client()
        let (size, _) = try c.negotiate(structured: false)
        try c.request(.read, cookie: 1, offset: size - 4096, length: 8192)
        #expect(try c.simpleReply() == (22, 1))
        try c.request(.write, cookie: 2, offset: size, length: 4096, payload: pattern(4096, seed: 1))
        #expect(try c.simpleReply() == (28, 2))
        try c.request(.writeZeroes, cookie: 3, offset: size - 1, length: 2)
        #expect(try c.simpleReply() == (28, 3))
        try c.request(.trim, cookie: 4, offset: UInt64.max - 100, length: 4096)
        #expect(try c.simpleReply() == (22, 4))
        // The payload of the refused write was skipped: this request parses fine.
        try c.request(.read, cookie: 5, offset: size - 4096, length: 4096)
        #expect(try c.simpleReply() == (0, 5))
        _ = try c.receive(4096)
        try f.checkHealthy()
    }

    @Test func readPastTheEndWithStructuredRepliesIsAnErrorChunk() throws {
        let f = try Fixture()
        let c = try f.client()
        let (size, _) = try c.negotiate()
        try c.request(.read, cookie: 1, offset: size, length: 1)
        let r = try c.reply()
        #expect(r.isError && r.errorCode == 22 && r.flags == 1 && r.cookie == 1)
        #expect(!r.errorMessage.isEmpty)
        try f.checkHealthy()
    }

    @Test func zeroLengthRequests() throws {
        let f = try Fixture()
        let c = try f.client()
        try c.negotiate(structured: false)
        for (i, t) in [CommandType.read, .write, .trim, .writeZeroes, .cache].enumerated() {
            try c.request(t, cookie: UInt64(i), offset: 0, length: 0)
            #expect(try c.simpleReply() == (22, UInt64(i)))
        }
        try f.checkHealthy()
    }

    @Test func requestBeforeGo() throws {
        let f = try Fixture()
        let c = try f.client()
        try c.hello()
        try c.request(.read, cookie: 1, offset: 0, length: 4096)
        #expect(c.closedByServer())
        try f.checkHealthy()
    }

    @Test func blockStatusWithoutAContext() throws {
        let f = try Fixture()
        let c = try f.client()
        try c.negotiate(structured: true, metaContext: false)
        try c.request(.blockStatus, cookie: 1, offset: 0, length: 4096)
        let r = try c.reply()
        #expect(r.isError && r.errorCode == 22)
        let s = try f.client()
        try s.negotiate(structured: false)
        try s.request(.blockStatus, cookie: 2, offset: 0, length: 4096)
        #expect(try s.simpleReply() == (22, 2))
        try f.checkHealthy()
    }

    @Test func badRequestMagic() throws {
        let f = try Fixture()
        let c = try f.client()
        try c.negotiate(structured: false)
        var req = requestBytes(type: .read, cookie: 1, offset: 0, length: 4096)
        req[3] ^= 0x55
        try c.send(req)
        #expect(c.closedByServer())
        try f.checkHealthy()
    }

    @Test func unknownCommandAndFlags() throws {
        let f = try Fixture()
        let c = try f.client()
        try c.negotiate(structured: false)
        try c.send(requestBytes(type: .read, cookie: 1, offset: 0, length: 0, rawType: 77))
        #expect(try c.simpleReply() == (22, 1))
        try c.request(.read, flags: CommandFlags(rawValue: 0x4000), cookie: 2, offset: 0, length: 4096)
        #expect(try c.simpleReply() == (22, 2))
        try c.request(.write, flags: .reqOne, cookie: 3, offset: 0, length: 4096, payload: pattern(4096, seed: 3))
        #expect(try c.simpleReply() == (22, 3))
        try c.request(.flush, cookie: 4, offset: 0, length: 4096)
        #expect(try c.simpleReply() == (22, 4))
        try f.checkHealthy()
    }

    @Test func writesToAReadOnlyExport() throws {
        let f = try Fixture(readOnly: true)
        let c = try f.client()
        let (_, flags) = try c.negotiate(structured: false)
        #expect(flags & 2 != 0)
        try c.request(.write, cookie: 1, offset: 0, length: 4096, payload: pattern(4096, seed: 1))
        #expect(try c.simpleReply() == (1, 1))
        try c.request(.trim, cookie: 2, offset: 0, length: 4096)
        #expect(try c.simpleReply() == (1, 2))
        try c.request(.read, cookie: 3, offset: 0, length: 4096)
        #expect(try c.simpleReply() == (0, 3))
        #expect(try c.receive(4096) == [UInt8](repeating: 0, count: 4096))
        try f.checkHealthy()
    }

    @Test func disconnectMidPayload() throws {
        let f = try Fixture()
        do {
            let c = try f.client()
            try c.negotiate(structured: false)
            try c.send(requestBytes(type: .write, cookie: 1, offset: 65536, length: 65536) + pattern(1000, seed: 9))
        }
        try f.checkHealthy()
        #expect(eventually { f.server.server.connectionCount == 1 })  // only the good one is left
    }
}
