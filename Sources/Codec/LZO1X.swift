// The kernel's LZO1X-1 (lib/lzo/lzo1x_compress.c) and its safe decompressor
// (lib/lzo/lzo1x_decompress_safe.c), ported so zram's lzo and lzo-rle sizes match byte for byte.
// liblzo2's lzo1x_1 is a different compressor (a 16384-entry dictionary, another hash), and no
// library has lzo-rle (the kernel's bitstream version 1: zero runs as M4 instructions).
//
// Raw pointers throughout and wrapping arithmetic where the kernel relies on C's: the hot loops
// must not pay for bounds or overflow checks. Every read and write the decompressor makes is
// checked against the input and output ends before it is made, as the kernel's does.

@usableFromInline
enum LZO1X {
    static let dictBits = 13
    static let dictSize = 1 << dictBits
    static let dictMask = dictSize - 1
    /// Work memory for `compress`: the kernel's lzo_dict_t (u16 offsets) table.
    static let dictBytes = dictSize * MemoryLayout<UInt16>.stride

    static let m2MaxLen = 8, m3MaxLen = 33, m4MaxLen = 9
    static let m2MaxOffset = 0x0800, m3MaxOffset = 0x4000
    static let m3Marker: UInt8 = 32, m4Marker: UInt8 = 16
    static let minZeroRun = 4
    static let maxZeroRun = 2047 + minZeroRun

    /// Output the compressor can write for `count` input bytes: LZO's worst case plus the
    /// lzo-rle header and the 16-byte over-copy of literal runs.
    static func bound(_ count: Int) -> Int { count + count / 16 + 64 + 3 + 2 + 16 }

    // MARK: Unaligned little-endian access

    @inline(__always) static func load32(_ p: UnsafePointer<UInt8>) -> UInt32 {
        UInt32(littleEndian: UnsafeRawPointer(p).loadUnaligned(as: UInt32.self))
    }
    @inline(__always) static func load64(_ p: UnsafePointer<UInt8>) -> UInt64 {
        UInt64(littleEndian: UnsafeRawPointer(p).loadUnaligned(as: UInt64.self))
    }
    @inline(__always) static func load16(_ p: UnsafePointer<UInt8>) -> Int {
        Int(UInt16(littleEndian: UnsafeRawPointer(p).loadUnaligned(as: UInt16.self)))
    }
    @inline(__always) static func copy4(_ d: UnsafeMutablePointer<UInt8>, _ s: UnsafePointer<UInt8>) {
        UnsafeMutableRawPointer(d).storeBytes(of: UnsafeRawPointer(s).loadUnaligned(as: UInt32.self), as: UInt32.self)
    }
    @inline(__always) static func copy8(_ d: UnsafeMutablePointer<UInt8>, _ s: UnsafePointer<UInt8>) {
        UnsafeMutableRawPointer(d).storeBytes(of: UnsafeRawPointer(s).loadUnaligned(as: UInt64.self), as: UInt64.self)
    }
    @inline(__always) static func byte(_ v: Int) -> UInt8 { UInt8(truncatingIfNeeded: v) }

    // MARK: Compressor

    /// lzogeneric1x_1_compress: `rle` selects lzo-rle (bitstream version 1). `out` must hold
    /// `bound(count)` bytes; `dict` `dictSize` entries. Returns the compressed length.
    static func compress(_ input: UnsafePointer<UInt8>, count inLen: Int, into out: UnsafeMutablePointer<UInt8>,
                         dict: UnsafeMutablePointer<UInt16>, rle: Bool) -> Int {
        var ip = input
        var op = out
        var l = inLen
        var t = 0
        var stateOffset = -2
        let m4MaxOffset = rle ? 0xbffe : 0xbfff
        // LZO v0 never starts with 17 (but for empty input): that byte versions the bitstream.
        if rle {
            op[0] = 17
            op[1] = 1
            op += 2
        }
        let dataStart = op
        // The kernel also stops when ip + ll would wrap the address space; a Swift buffer cannot.
        while l > 20 {
            let ll = min(l, m4MaxOffset + 1)
            dict.update(repeating: 0, count: dictSize)
            let r = doCompress(ip, count: ll, into: op, ti: t, dict: dict, stateOffset: &stateOffset, rle: rle)
            t = r.remaining
            ip += ll
            op += r.written
            l -= ll
        }
        t += l
        if t > 0 {
            var ii = input + (inLen - t)
            if op == dataStart && t <= 238 {
                op.pointee = byte(17 + t); op += 1
            } else if t <= 3 {
                op[stateOffset] |= byte(t)
            } else if t <= 18 {
                op.pointee = byte(t - 3); op += 1
            } else {
                var tt = t - 18
                op.pointee = 0; op += 1
                while tt > 255 { tt -= 255; op.pointee = 0; op += 1 }
                op.pointee = byte(tt); op += 1
            }
            while t >= 16 {
                copy8(op, ii); copy8(op + 8, ii + 8)
                op += 16; ii += 16; t -= 16
            }
            while t > 0 { op.pointee = ii.pointee; op += 1; ii += 1; t -= 1 }
        }
        op[0] = m4Marker | 1
        op[1] = 0
        op[2] = 0
        op += 3
        return op - out
    }

    /// lzo1x_1_do_compress over one chunk (at most 48 KiB, so offsets fit the u16 dictionary).
    /// `ti` literals of the previous chunk are still pending. Returns the bytes written and the
    /// literals left pending at the chunk's end.
    @inline(__always)
    private static func doCompress(_ input: UnsafePointer<UInt8>, count inLen: Int, into out: UnsafeMutablePointer<UInt8>,
                                   ti tiIn: Int, dict: UnsafeMutablePointer<UInt16>, stateOffset: inout Int,
                                   rle: Bool) -> (written: Int, remaining: Int) {
        let inEnd = input + inLen
        let ipEnd = input + (inLen - 20)
        var op = out
        var ip = input
        var ii = ip
        var ti = tiIn
        ip += ti < 4 ? 4 - ti : 0
        // The kernel's `goto next` after an instruction skips the literal step.
        var skipLiteralStep = false
        while true {
            if !skipLiteralStep { ip += 1 + ((ip - ii) >> 5) }   // step faster through incompressible data
            skipLiteralStep = false
            if ip >= ipEnd { break }
            let dv = load32(ip)
            var mPos = input
            var runLength = 0
            if dv == 0 && rle {
                var ir = ip + 4
                let limit = ipEnd < ip + (maxZeroRun + 1) ? ipEnd : ip + (maxZeroRun + 1)
                while ir + 32 <= limit {
                    if load64(ir) | load64(ir + 8) | load64(ir + 16) | load64(ir + 24) != 0 { break }
                    ir += 32
                }
                while ir + 8 <= limit {
                    let v = load64(ir)
                    if v != 0 { ir += v.trailingZeroBitCount >> 3; break }
                    ir += 8
                }
                while ir < limit && ir.pointee == 0 { ir += 1 }
                runLength = min(ir - ip, maxZeroRun)
            } else {
                let h = Int(truncatingIfNeeded: (dv &* 0x1824429d) >> UInt32(32 - dictBits)) & dictMask
                mPos = input + Int(dict[h])
                dict[h] = UInt16(truncatingIfNeeded: ip - input)
                if dv != load32(mPos) { continue }
            }

            ii -= ti
            ti = 0
            var t = ip - ii
            if t != 0 {
                if t <= 3 {
                    op[stateOffset] |= byte(t)
                    copy4(op, ii)
                    op += t
                } else if t <= 16 {
                    op.pointee = byte(t - 3); op += 1
                    copy8(op, ii); copy8(op + 8, ii + 8)
                    op += t
                } else {
                    if t <= 18 {
                        op.pointee = byte(t - 3); op += 1
                    } else {
                        var tt = t - 18
                        op.pointee = 0; op += 1
                        while tt > 255 { tt -= 255; op.pointee = 0; op += 1 }
                        op.pointee = byte(tt); op += 1
                    }
                    repeat {
                        copy8(op, ii); copy8(op + 8, ii + 8)
                        op += 16; ii += 16; t -= 16
                    } while t >= 16
                    while t > 0 { op.pointee = ii.pointee; op += 1; ii += 1; t -= 1 }
                }
            }

            if runLength != 0 {
                // A zero run: M4 with distance 0xbfff, a fourth byte for the length's high bits.
                ip += runLength
                let r = UInt32(truncatingIfNeeded: runLength - minZeroRun)
                UnsafeMutableRawPointer(op).storeBytes(of: ((r << 21) | 0xfffc18 | (r & 7)).littleEndian, as: UInt32.self)
                op += 4
                stateOffset = -3
                ii = ip
                skipLiteralStep = true
                continue
            }

            var mLen = 4
            var v = load64(ip + mLen) ^ load64(mPos + mLen)
            var capped = false
            if v == 0 {
                repeat {
                    mLen += 8
                    v = load64(ip + mLen) ^ load64(mPos + mLen)
                    if ip + mLen >= ipEnd { capped = true; break }
                } while v == 0
            }
            if !capped { mLen += v.trailingZeroBitCount / 8 }

            var mOff = ip - mPos
            ip += mLen
            if mLen <= m2MaxLen && mOff <= m2MaxOffset {
                mOff -= 1
                op[0] = byte(((mLen - 1) << 5) | ((mOff & 7) << 2))
                op[1] = byte(mOff >> 3)
                op += 2
            } else if mOff <= m3MaxOffset {
                mOff -= 1
                if mLen <= m3MaxLen {
                    op.pointee = m3Marker | byte(mLen - 2); op += 1
                } else {
                    mLen -= m3MaxLen
                    op.pointee = m3Marker; op += 1
                    while mLen > 255 { mLen -= 255; op.pointee = 0; op += 1 }
                    op.pointee = byte(mLen); op += 1
                }
                op[0] = byte(mOff << 2)
                op[1] = byte(mOff >> 6)
                op += 2
            } else {
                mOff -= 0x4000
                if mLen <= m4MaxLen {
                    op.pointee = m4Marker | byte((mOff >> 11) & 8) | byte(mLen - 2); op += 1
                } else {
                    mLen -= m4MaxLen
                    op.pointee = m4Marker | byte((mOff >> 11) & 8); op += 1
                    while mLen > 255 { mLen -= 255; op.pointee = 0; op += 1 }
                    op.pointee = byte(mLen); op += 1
                }
                op[0] = byte(mOff << 2)
                op[1] = byte(mOff >> 6)
                op += 2
            }
            stateOffset = -2
            ii = ip
            skipLiteralStep = true
        }
        return (op - out, inEnd - (ii - ti))
    }

    // MARK: Safe decompressor

    private enum Step { case instruction, literalRun, matchCopy, matchNext }

    /// lzo1x_decompress_safe: decodes lzo and lzo-rle (the version byte decides). Returns the
    /// decoded length, or nil on any error (input or output overrun, look-behind before the
    /// start, a bad end marker, input left over). Reads only `in[0..<count]`, writes only
    /// `out[0..<capacity]`.
    static func decompress(_ input: UnsafePointer<UInt8>, count inLen: Int, into out: UnsafeMutablePointer<UInt8>,
                           capacity: Int) -> Int? {
        guard inLen >= 3, capacity >= 0 else { return nil }
        let ipEnd = input + inLen
        let opEnd = out + capacity
        var ip = input
        var op = out
        var t = 0
        var next = 0
        var state = 0
        var dist = 0
        @inline(__always) func haveIP(_ n: Int) -> Bool { ipEnd - ip >= n }
        @inline(__always) func haveOP(_ n: Int) -> Bool { opEnd - op >= n }

        var rleVersion = false
        if inLen >= 5 && ip[0] == 17 {
            rleVersion = ip[1] != 0
            ip += 2
        }
        var step = Step.instruction
        if ip.pointee > 17 {
            t = Int(ip.pointee) - 17
            ip += 1
            if t < 4 {
                next = t
                step = .matchNext
            } else {
                step = .literalRun
            }
        }

        // Invariant on entering .instruction: at least 3 input bytes remain (every path there
        // checked for them), so the opcode and the byte or two after it can be read.
        while true {
            switch step {
            case .instruction:
                t = Int(ip.pointee)
                ip += 1
                if t < 16 {
                    if state == 0 {
                        if t == 0 {
                            guard let n = zeroExtension(&ip, ipEnd) else { return nil }
                            t = n &+ 15 &+ Int(ip.pointee)
                            ip += 1
                        }
                        t += 3
                        step = .literalRun
                        continue
                    } else if state != 4 {
                        next = t & 3
                        dist = 1 + (t >> 2) + (Int(ip.pointee) << 2)
                        ip += 1
                        guard dist <= op - out, haveOP(2) else { return nil }
                        op[0] = op[-dist]
                        op[1] = op[1 - dist]
                        op += 2
                        step = .matchNext
                        continue
                    } else {
                        next = t & 3
                        dist = 1 + m2MaxOffset + (t >> 2) + (Int(ip.pointee) << 2)
                        ip += 1
                        t = 3
                    }
                } else if t >= 64 {
                    next = t & 3
                    dist = 1 + ((t >> 2) & 7) + (Int(ip.pointee) << 3)
                    ip += 1
                    t = (t >> 5) - 1 + (3 - 1)
                } else if t >= 32 {
                    t = (t & 31) + (3 - 1)
                    if t == 2 {
                        guard let n = zeroExtension(&ip, ipEnd) else { return nil }
                        t = t &+ n &+ 31 &+ Int(ip.pointee)
                        ip += 1
                        guard haveIP(2) else { return nil }
                    }
                    next = load16(ip)
                    ip += 2
                    dist = 1 + (next >> 2)
                    next &= 3
                } else {
                    guard haveIP(2) else { return nil }
                    next = load16(ip)
                    if (next & 0xfffc) == 0xfffc && (t & 0xf8) == 0x18 && rleVersion {
                        // lzo-rle's zero run.
                        guard haveIP(3) else { return nil }
                        t = ((t & 7) | (Int(ip[2]) << 3)) + minZeroRun
                        guard haveOP(t) else { return nil }
                        UnsafeMutableRawPointer(op).initializeMemory(as: UInt8.self, repeating: 0, count: t)
                        op += t
                        next &= 3
                        ip += 3
                        step = .matchNext
                        continue
                    }
                    let far = (t & 8) << 11
                    t = (t & 7) + (3 - 1)
                    if t == 2 {
                        guard let n = zeroExtension(&ip, ipEnd) else { return nil }
                        t = t &+ n &+ 7 &+ Int(ip.pointee)
                        ip += 1
                        guard haveIP(2) else { return nil }
                        next = load16(ip)
                    }
                    ip += 2
                    dist = far + (next >> 2)
                    next &= 3
                    if dist == 0 {
                        // End of stream: M4 with distance 16384 and length 3.
                        guard t == 3, ip == ipEnd else { return nil }
                        return op - out
                    }
                    dist += 0x4000
                }
                step = .matchCopy

            case .literalRun:
                if haveIP(t &+ 15) && haveOP(t &+ 15) {
                    let ie = ip + t, oe = op + t
                    repeat {
                        copy8(op, ip); copy8(op + 8, ip + 8)
                        op += 16; ip += 16
                    } while ip < ie
                    ip = ie
                    op = oe
                } else {
                    guard haveOP(t), haveIP(t &+ 3) else { return nil }
                    UnsafeMutableRawPointer(op).copyMemory(from: ip, byteCount: t)
                    op += t; ip += t
                }
                state = 4
                step = .instruction

            case .matchCopy:
                guard dist <= op - out else { return nil }
                var mPos = UnsafePointer(op - dist)
                let oe = op + t
                step = .matchNext
                if dist >= 8 {
                    if haveOP(t &+ 15) {
                        repeat {
                            copy8(op, mPos); copy8(op + 8, mPos + 8)
                            op += 16; mPos += 16
                        } while op < oe
                        op = oe
                        if haveIP(6) {
                            // The next instruction's 0..3 literals, copied as 4 bytes.
                            state = next
                            copy4(op, ip)
                            op += next
                            ip += next
                            step = .instruction
                        }
                    } else {
                        guard haveOP(t) else { return nil }
                        repeat { op.pointee = mPos.pointee; op += 1; mPos += 1 } while op < oe
                    }
                } else {
                    // Overlapping copy (a run): byte by byte, as each byte may be one just written.
                    guard haveOP(t) else { return nil }
                    repeat { op.pointee = mPos.pointee; op += 1; mPos += 1 } while op < oe
                }

            case .matchNext:
                state = next
                t = next
                if haveIP(6) && haveOP(4) {
                    copy4(op, ip)
                    op += t
                    ip += t
                } else {
                    guard haveIP(t + 3), haveOP(t) else { return nil }
                    while t > 0 { op.pointee = ip.pointee; op += 1; ip += 1; t -= 1 }
                }
                step = .instruction
            }
        }
    }

    /// A length's run of zero bytes (each worth 255), leaving `ip` at the first non-zero byte,
    /// which is known to be in the input. nil when the input ends first.
    @inline(__always)
    private static func zeroExtension(_ ip: inout UnsafePointer<UInt8>, _ ipEnd: UnsafePointer<UInt8>) -> Int? {
        let start = ip
        while ip.pointee == 0 {
            ip += 1
            guard ipEnd - ip >= 1 else { return nil }
        }
        return (ip - start) &* 255
    }
}
