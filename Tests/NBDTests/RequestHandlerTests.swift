@testable import NBD
import Testing

/// The request handler without a socket: command and payload in, MemoryBackend calls, reply
/// bytes out.
@Suite struct RequestHandlerTests {
    let disk: MemoryBackend
    let spare = SpareBuffer()

    init() throws {
        disk = try MemoryBackend(size: 1 << 20)
    }

    func handler(structured: Bool = true, backend: (any BlockBackend)? = nil) throws -> RequestHandler {
        let export = Export(name: "d", backend: backend ?? disk)
        return RequestHandler(Session(export: export, structuredReplies: structured,
                                      metaContextID: structured ? MetaContext.baseAllocationID : nil))
    }

    func header(_ type: CommandType, _ flags: CommandFlags = [], cookie: UInt64 = 9, offset: UInt64, length: Int) -> RequestHeader {
        RequestHeader(flags: flags, type: type.rawValue, cookie: cookie, offset: offset, length: UInt32(length))
    }

    /// Runs one command through the validation and the handler, as the engine does.
    func serve(_ h: RequestHandler, _ header: RequestHeader, payload: [UInt8] = [], structured: Bool = true) -> [UInt8] {
        let rules = RequestRules(size: disk.size, flags: TransmissionFlags(rawValue: structured ? 0xded : 0xd6d),
                                 structuredReplies: structured, metaContextID: structured ? 1 : nil)
        let reply = ReplyBuffer(spare: spare)
        switch rules.validate(header) {
        case .serve(let command):
            payload.withUnsafeBytes { h.handle(header, command, payload: $0.baseAddress, into: reply) }
        case .refuse(let errno, let message):
            h.refuse(header, errno, message, into: reply)
        case .disconnect, .hangUp:
            Issue.record("unexpected verdict for \(header)")
        }
        return reply.bytes
    }

    struct Chunk: Equatable {
        var type: UInt16
        var done: Bool
        var offset: UInt64
        var length: Int
        var data: [UInt8]
    }

    /// Splits structured chunks of one reply (OFFSET_DATA, OFFSET_HOLE, ERROR, BLOCK_STATUS).
    func chunks(_ b: [UInt8]) -> [Chunk] {
        var out: [Chunk] = []
        var i = 0
        while i + 20 <= b.count {
            #expect(be32(b[...], i) == Wire.structuredReplyMagic)
            let flags = be16(b[...], i + 4), type = be16(b[...], i + 6), length = Int(be32(b[...], i + 16))
            let body = Array(b[(i + 20)..<(i + 20 + length)])
            switch type {
            case ChunkType.offsetData.rawValue:
                out.append(Chunk(type: type, done: flags & 1 != 0, offset: be64(body[...], 0), length: length - 8,
                                 data: Array(body[8...])))
            case ChunkType.offsetHole.rawValue:
                out.append(Chunk(type: type, done: flags & 1 != 0, offset: be64(body[...], 0),
                                 length: Int(be32(body[...], 8)), data: []))
            default:
                out.append(Chunk(type: type, done: flags & 1 != 0, offset: 0, length: length, data: body))
            }
            i += 20 + length
        }
        #expect(i == b.count)
        return out
    }

    @Test func simpleWriteThenReadReturnsTheData() throws {
        let h = try handler(structured: false)
        let data = pattern(8192, seed: 1)
        let w = serve(h, header(.write, offset: 4096, length: 8192), payload: data, structured: false)
        #expect(w.count == 16 && be32(w[...], 0) == Wire.simpleReplyMagic && be32(w[...], 4) == 0)
        #expect(w[8..<16] == [9, 0, 0, 0, 0, 0, 0, 0])  // the cookie as it came
        let r = serve(h, header(.read, offset: 4096, length: 8192), structured: false)
        #expect(r.count == 16 + 8192)
        #expect(Array(r[16...]) == data)
    }

    @Test func structuredReadSendsHolesForUnwrittenPagesInOnePass() throws {
        let h = try handler()
        let data = pattern(4096, seed: 2)
        _ = serve(h, header(.write, offset: 4096, length: 4096), payload: data)
        let c = chunks(serve(h, header(.read, offset: 0, length: 16384)))
        #expect(c.map(\.type) == [2, 1, 2])
        #expect(c.map(\.offset) == [0, 4096, 8192])
        #expect(c.map(\.length) == [4096, 4096, 8192])
        #expect(c.map(\.done) == [false, false, true])
        #expect(c[1].data == data)
    }

    @Test func dontFragmentGetsOneDataChunkWithTheZerosFilledIn() throws {
        let h = try handler()
        let data = pattern(4096, seed: 3)
        _ = serve(h, header(.write, offset: 4096, length: 4096), payload: data)
        let c = chunks(serve(h, header(.read, .dontFragment, offset: 0, length: 12288)))
        #expect(c.count == 1 && c[0].type == 1 && c[0].done)
        #expect(c[0].data == [UInt8](repeating: 0, count: 4096) + data + [UInt8](repeating: 0, count: 4096))
    }

    @Test func tooManyRunsGoAsOneDataChunk() throws {
        let h = try handler()
        // Every other page written: 40 runs, more than a reply is split into.
        for page in stride(from: 0, to: 40, by: 2) {
            _ = serve(h, header(.write, offset: UInt64(page * 4096), length: 4096), payload: pattern(4096, seed: UInt8(page)))
        }
        let c = chunks(serve(h, header(.read, offset: 0, length: 40 * 4096)))
        #expect(c.count == 1 && c[0].type == 1 && c[0].length == 40 * 4096)
        var expected: [UInt8] = []
        for page in 0..<40 { expected += page % 2 == 0 ? pattern(4096, seed: UInt8(page)) : [UInt8](repeating: 0, count: 4096) }
        #expect(c[0].data == expected)
    }

    @Test func backendErrorsBecomeErrorChunksWithTheirMessage() throws {
        let h = try handler(backend: FailingBackend(.request(.enospc, message: "pool is full")))
        let c = chunks(serve(h, header(.write, offset: 0, length: 4096), payload: pattern(4096, seed: 0)))
        #expect(c.count == 1 && c[0].type == ChunkType.error.rawValue && c[0].done)
        #expect(be32(c[0].data[...], 0) == 28)
        #expect(String(decoding: c[0].data[6...], as: UTF8.self) == "pool is full")
        // ENOTSUP is only legal for FAST_ZERO.
        let trim = chunks(serve(h, header(.writeZeroes, .fastZero, offset: 0, length: 4096)))
        #expect(be32(trim[0].data[...], 0) == 95)
    }

    @Test func blockStatusMergesRunsIntoDescriptors() throws {
        let h = try handler()
        _ = serve(h, header(.write, offset: 0, length: 8192), payload: pattern(8192, seed: 4))
        _ = serve(h, header(.writeZeroes, .noHole, offset: 8192, length: 4096))
        let c = chunks(serve(h, header(.blockStatus, offset: 0, length: 65536)))
        #expect(c.count == 1 && c[0].type == ChunkType.blockStatus.rawValue && c[0].done)
        let d = c[0].data.dropFirst(4)
        let descriptors = stride(from: 0, to: d.count, by: 8).map { (be32(d, $0), be32(d, $0 + 4)) }
        #expect(descriptors.map(\.0) == [8192, 4096, 65536 - 12288])
        #expect(descriptors.map(\.1) == [0, 2, 3])
    }

    @Test func refusalsAreSimpleOrStructuredAsNegotiated() throws {
        let simple = serve(try handler(structured: false), header(.read, offset: 1 << 20, length: 4096), structured: false)
        #expect(simple.count == 16 && be32(simple[...], 4) == 22)
        let c = chunks(serve(try handler(), header(.write, offset: 1 << 20, length: 4096), payload: pattern(4096, seed: 5)))
        #expect(c.count == 1 && c[0].type == ChunkType.error.rawValue && be32(c[0].data[...], 0) == 28)
        #expect(String(decoding: c[0].data[6...], as: UTF8.self).contains("out of range"))
    }
}
