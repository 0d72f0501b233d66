#!/usr/bin/python3
"""NBD server conformance checks, driven by libnbd and by a raw socket.

Points at ANY fixed-newstyle NBD server (nbdkit, qemu-nbd, zramnbd) and checks
the behaviour listed in shared/docs/nbd.md §1 and issue 4.

    /usr/bin/python3 Tests/conformance/nbd_conformance.py --unix SOCK \
        --size 1073741824 [--export NAME] [--profile nbdkit|zramnbd] [--exports a,b]
        [--read-only] [--only SUBSTR] [--skip SUBSTR]...

Run it with /usr/bin/python3: it needs python3-libnbd (the pyenv python3 on
PATH lacks it).  Profiles:
  zramnbd  issue-4 behaviour exactly (BLOCK_SIZE 1/4096/32 MiB, NAME and
           DESCRIPTION infos, LIST with descriptions, ERR_UNKNOWN for unknown
           exports, zram block-status states).
  nbdkit   relaxes only what nbdkit's memory plugin legitimately does
           differently (no block sizes, no descriptions, any export name is
           accepted, block status at 32 KiB page granularity).
The script writes to the export (everything from 0 to 128 MiB, a TRIM of all
from 64 MiB up, and the last 64 KiB), so run it on a scratch device; with
--read-only it writes nothing and runs only the read-only checks (EPERM).  Each check prints PASS/FAIL/SKIP; the last line is
"N passed, N failed" (SKIP lines are not counted); exit status 1 on failure.
"""

import argparse
import errno
import os
import random
import socket
import struct
import sys
import time
import urllib.parse

try:
    import nbd
except ImportError:
    sys.exit("nbd_conformance.py: the python 'nbd' module is missing; "
             "run with /usr/bin/python3 (package python3-libnbd)")

# --- wire constants (nbd.md §1.1) -------------------------------------------
NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
OPT_REPLY_MAGIC = 0x0003E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF

FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES = 1, 2

OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_STARTTLS = 1, 2, 3, 5
OPT_INFO, OPT_GO, OPT_STRUCTURED_REPLY = 6, 7, 8
OPT_LIST_META_CONTEXT, OPT_SET_META_CONTEXT, OPT_EXTENDED_HEADERS = 9, 10, 11

REP_ACK, REP_SERVER, REP_INFO, REP_META_CONTEXT = 1, 2, 3, 4
ERR_BIT = 1 << 31
ERR_UNSUP, ERR_POLICY, ERR_INVALID = ERR_BIT + 1, ERR_BIT + 2, ERR_BIT + 3
ERR_UNKNOWN = ERR_BIT + 6
REP_NAMES = {1: "ACK", 2: "SERVER", 3: "INFO", 4: "META_CONTEXT",
             ERR_UNSUP: "ERR_UNSUP", ERR_POLICY: "ERR_POLICY",
             ERR_INVALID: "ERR_INVALID", ERR_BIT + 4: "ERR_PLATFORM",
             ERR_BIT + 5: "ERR_TLS_REQD", ERR_UNKNOWN: "ERR_UNKNOWN",
             ERR_BIT + 7: "ERR_SHUTDOWN", ERR_BIT + 8: "ERR_BLOCK_SIZE_REQD",
             ERR_BIT + 9: "ERR_TOO_BIG", ERR_BIT + 10: "ERR_EXT_HEADER_REQD"}

INFO_EXPORT, INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE = 0, 1, 2, 3

CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH, CMD_TRIM = 0, 1, 2, 3, 4
CMD_CACHE, CMD_WRITE_ZEROES, CMD_BLOCK_STATUS = 5, 6, 7
CF_FUA, CF_NO_HOLE, CF_DF, CF_REQ_ONE, CF_FAST_ZERO = 1, 2, 4, 8, 16

CHUNK_NONE, CHUNK_OFFSET_DATA, CHUNK_OFFSET_HOLE = 0, 1, 2
CHUNK_BLOCK_STATUS, CHUNK_ERROR, CHUNK_ERROR_OFFSET = 5, 0x8001, 0x8002
CHUNK_DONE = 1

# Transmission flags expected from a RAM store (nbd.md §1.5).
FLAGS_SR, FLAGS_NO_SR = 0x0DED, 0x0D6D

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30
IO_TIMEOUT = 5.0      # seconds any single socket read may take
MIN_SIZE = 128 * MIB  # the regions below live in the first 128 MiB


def rname(t):
    return REP_NAMES.get(t, hex(t))


def ename(e):
    return errno.errorcode.get(e, str(e))


def pattern(seed, n):
    """Deterministic, incompressible-ish bytes."""
    return random.Random(seed).randbytes(n)


def region(k):
    """Offset of the k-th 1 MiB scratch region; each check uses its own."""
    assert 1 <= k < 64
    return k * MIB


class Fail(Exception):
    pass


class Skip(Exception):
    pass


def expect(cond, why):
    if not cond:
        raise Fail(why)


# --- target ----------------------------------------------------------------
class Target:
    """Where the server listens plus what we expect of it."""

    def __init__(self, args):
        self.export = args.export
        self.size = args.size
        self.profile = args.profile
        self.exports = [e for e in (args.exports or "").split(",") if e]
        self.unix = args.unix
        self.host = self.port = None
        if args.uri:
            u = urllib.parse.urlparse(args.uri)
            q = urllib.parse.parse_qs(u.query)
            if u.scheme == "nbd+unix":
                self.unix = q.get("socket", [None])[0]
            elif u.scheme == "nbd":
                self.host, self.port = u.hostname or "localhost", u.port or 10809
            else:
                sys.exit(f"unsupported URI scheme {u.scheme!r} (nbd:// or nbd+unix://)")
            if args.export is None:
                self.export = urllib.parse.unquote(u.path[1:]) if u.path else ""
        if self.export is None:
            self.export = ""
        if not self.unix and not self.host:
            sys.exit("give --unix SOCKET or --uri URI")

    @property
    def zram(self):
        return self.profile == "zramnbd"

    def sock(self):
        if self.unix:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(IO_TIMEOUT)
            s.connect(self.unix)
        else:
            s = socket.create_connection((self.host, self.port), IO_TIMEOUT)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.settimeout(IO_TIMEOUT)
        return s

    def handle(self, opt_mode=False, sr=True, meta=True, strict=True, export=None):
        """A libnbd handle; connected (or in option mode if opt_mode)."""
        h = nbd.NBD()
        h.set_export_name(self.export if export is None else export)
        h.set_opt_mode(opt_mode)
        h.set_request_structured_replies(sr)
        if meta:
            h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
        if not strict:
            h.set_strict_mode(0)
        if self.unix:
            h.connect_unix(self.unix)
        else:
            h.connect_tcp(self.host, str(self.port))
        return h


# --- raw client ------------------------------------------------------------
class Closed(Exception):
    pass


class Raw:
    """A hand-rolled NBD client that can send anything."""

    def __init__(self, t, client_flags=FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES, hello=True):
        self.t = t
        self.s = t.sock()
        self.structured = False
        if hello:
            h = self.recv(18)
            magic, opt, self.hflags = struct.unpack(">QQH", h)
            expect(magic == NBDMAGIC and opt == IHAVEOPT, f"bad hello {h.hex()}")
            if client_flags is not None:
                self.send(struct.pack(">I", client_flags))

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def send(self, b):
        try:
            self.s.sendall(b)
        except (BrokenPipeError, ConnectionResetError) as e:
            raise Closed(str(e))

    def recv(self, n):
        buf = bytearray()
        while len(buf) < n:
            try:
                c = self.s.recv(min(n - len(buf), 1 << 20))
            except ConnectionResetError:
                c = b""
            except socket.timeout:
                raise Fail(f"timed out after {IO_TIMEOUT:.0f}s waiting for {n - len(buf)} of {n} bytes")
            if not c:
                raise Closed(f"EOF after {len(buf)} of {n} bytes")
            buf += c
        return bytes(buf)

    def is_closed(self, timeout=IO_TIMEOUT):
        """True if the server closes the connection (EOF/reset) within timeout.
        Any data received before that is discarded."""
        self.s.settimeout(timeout)
        end = time.monotonic() + timeout
        try:
            while time.monotonic() < end:
                try:
                    c = self.s.recv(65536)
                except ConnectionResetError:
                    return True
                if not c:
                    return True
            return False
        except socket.timeout:
            return False
        finally:
            self.s.settimeout(IO_TIMEOUT)

    # options
    def opt(self, option, data=b""):
        self.send(struct.pack(">QII", IHAVEOPT, option, len(data)) + data)

    def opt_reply(self, option):
        magic, opt, rtype, length = struct.unpack(">QIII", self.recv(20))
        expect(magic == OPT_REPLY_MAGIC, f"bad option reply magic {magic:#x}")
        expect(opt == option, f"reply echoes option {opt}, sent {option}")
        expect(length <= 64 * KIB, f"absurd option reply length {length}")
        return rtype, self.recv(length)

    def opt_all(self, option, data=b""):
        """Send one option, collect replies up to the final ACK or error."""
        self.opt(option, data)
        out = []
        while True:
            rtype, d = self.opt_reply(option)
            out.append((rtype, d))
            if rtype == REP_ACK or rtype & ERR_BIT:
                return out

    def opt_final(self, option, data=b""):
        return self.opt_all(option, data)[-1][0]

    def structured_reply(self):
        r = self.opt_all(OPT_STRUCTURED_REPLY)
        expect(r[-1][0] == REP_ACK, f"STRUCTURED_REPLY -> {rname(r[-1][0])}")
        self.structured = True

    def set_meta(self, names, export=None):
        ex = (self.t.export if export is None else export).encode()
        d = struct.pack(">I", len(ex)) + ex + struct.pack(">I", len(names))
        for n in names:
            d += struct.pack(">I", len(n)) + n.encode()
        return self.opt_all(OPT_SET_META_CONTEXT, d)

    def go(self, export=None, infos=(), option=OPT_GO):
        """GO/INFO; returns (final reply type, {info type: payload})."""
        ex = (self.t.export if export is None else export).encode()
        d = struct.pack(">I", len(ex)) + ex + struct.pack(">H", len(infos))
        d += b"".join(struct.pack(">H", i) for i in infos)
        replies = self.opt_all(option, d)
        info = {}
        for rtype, p in replies:
            if rtype == REP_INFO:
                expect(len(p) >= 2, "REP_INFO shorter than 2 bytes")
                info[struct.unpack(">H", p[:2])[0]] = p[2:]
        return replies[-1][0], info

    def start(self, sr=False, meta=False, export=None):
        """Negotiate to transmission; returns the transmission flags."""
        if sr:
            self.structured_reply()
        if meta:
            r = self.set_meta(["base:allocation"], export)
            expect(r[-1][0] == REP_ACK, f"SET_META_CONTEXT -> {rname(r[-1][0])}")
            ctx = [p for rt, p in r if rt == REP_META_CONTEXT]
            expect(len(ctx) == 1, f"{len(ctx)} contexts selected, want 1")
            self.meta_id = struct.unpack(">I", ctx[0][:4])[0]
        final, info = self.go(export)
        expect(final == REP_ACK, f"GO -> {rname(final)}")
        expect(INFO_EXPORT in info, "GO without INFO_EXPORT")
        size, flags = struct.unpack(">QH", info[INFO_EXPORT])
        expect(size == self.t.size, f"size {size}, want {self.t.size}")
        return flags

    # transmission
    def request(self, cmd, offset=0, length=0, flags=0, cookie=0x1122334455667788, payload=b""):
        self.send(struct.pack(">IHHQQI", REQUEST_MAGIC, flags, cmd, cookie, offset, length) + payload)

    def reply(self, read_len=0):
        """One reply: ('simple', err, cookie, data) or ('chunk', flags, type, cookie, payload).
        read_len: READ data that follows a successful simple reply."""
        magic = struct.unpack(">I", self.recv(4))[0]
        if magic == SIMPLE_REPLY_MAGIC:
            err, cookie = struct.unpack(">IQ", self.recv(12))
            data = self.recv(read_len) if err == 0 and read_len else b""
            return ("simple", err, cookie, data)
        if magic == STRUCTURED_REPLY_MAGIC:
            flags, ctype, cookie, length = struct.unpack(">HHQI", self.recv(16))
            expect(length <= 64 * MIB + 64, f"absurd chunk length {length}")
            return ("chunk", flags, ctype, cookie, self.recv(length))
        raise Fail(f"bad reply magic {magic:#x}")

    def error_of(self, cookie=0x1122334455667788, read_len=0):
        """Collect the full reply to one request; return its errno (0 = ok).
        Structured errors count; data chunks are discarded."""
        err = 0
        while True:
            r = self.reply(read_len)
            if r[0] == "simple":
                expect(r[2] == cookie, f"cookie {r[2]:#x}, want {cookie:#x}")
                return r[1]
            _, flags, ctype, ck, p = r
            expect(ck == cookie, f"cookie {ck:#x}, want {cookie:#x}")
            if ctype & 0x8000:
                expect(len(p) >= 6, "error chunk shorter than 6 bytes")
                err = err or struct.unpack(">I", p[:4])[0]
            if flags & CHUNK_DONE:
                return err

    def cmd_errno(self, cmd, offset=0, length=0, flags=0, payload=b"", cookie=0xC0FFEE):
        self.request(cmd, offset, length, flags, cookie, payload)
        return self.error_of(cookie, read_len=length if cmd == CMD_READ else 0)

    def read_ok(self, offset, length, cookie=0xABCD):
        """A READ that must succeed; returns the data (simple or structured)."""
        self.request(CMD_READ, offset, length, 0, cookie)
        if not self.structured:
            kind, err, ck, data = self.reply(length)
            expect(kind == "simple" and err == 0 and ck == cookie, f"READ failed: err {err}")
            return data
        buf = bytearray(length)
        for kind, flags, ctype, ck, p in self.chunks(cookie):
            expect(not ctype & 0x8000, f"READ error chunk {ctype:#x}")
            if ctype == CHUNK_OFFSET_DATA:
                o = struct.unpack(">Q", p[:8])[0] - offset
                buf[o:o + len(p) - 8] = p[8:]
        return bytes(buf)

    def chunks(self, cookie):
        out = []
        while True:
            r = self.reply()
            expect(r[0] == "chunk", "simple reply where a structured one is required")
            expect(r[3] == cookie, f"cookie {r[3]:#x}, want {cookie:#x}")
            out.append(r)
            if r[1] & CHUNK_DONE:
                return out

    def alive(self):
        """The connection still answers a READ."""
        self.read_ok(0, 512, cookie=0xA11CE)


# --- runner ----------------------------------------------------------------
CHECKS = []


RO_CHECKS = []


def check(name, zram_only=None, read_only=False):
    """Register a check.  zram_only: reason why nbdkit's profile skips it.
    read_only: the check is for a read-only export (--read-only runs only those)."""
    def deco(fn):
        (RO_CHECKS if read_only else CHECKS).append((name, fn, zram_only))
        return fn
    return deco


def server_alive(t):
    with Raw(t) as r:
        r.start()
        r.alive()


def nbd_errno(fn, *a, **kw):
    """Run a libnbd call; return 0 or the errno it failed with."""
    try:
        fn(*a, **kw)
        return 0
    except nbd.Error as e:
        return e.errnum or -1


# ============================================================================
# libnbd: option haggling
# ============================================================================
@check("lib.opt_list")
def _(t):
    h = t.handle(opt_mode=True)
    got = []
    n = h.opt_list(lambda name, desc: got.append((name, desc)))
    h.opt_abort()
    expect(n >= 1 and got, "LIST returned no export")
    names = [g[0] for g in got]
    expect(len(set(names)) == len(names), f"duplicate names in LIST: {names}")
    want = set(t.exports)
    if t.export or not t.zram:
        want.add(t.export)
    missing = want - set(names)
    expect(not missing, f"LIST lacks {sorted(missing)}; got {names}")
    if t.zram:
        nodesc = [n for n, d in got if not d]
        expect(not nodesc, f"exports without description: {nodesc}")
    return f"{len(got)} export(s): " + ", ".join(f"{n!r}" for n in names)


@check("lib.opt_info")
def _(t):
    h = t.handle(opt_mode=True)
    h.set_full_info(True)
    h.opt_info()
    size = h.get_size()
    expect(size == t.size, f"size {size}, want {t.size}")
    expect(size % 4096 == 0, f"size {size} not a multiple of 4096")
    canon = h.get_canonical_export_name()
    desc = None
    try:
        desc = h.get_export_description()
    except nbd.Error:
        pass
    h.opt_abort()
    if t.zram:
        expect(canon, "no canonical NAME info")
        expect(desc, "no DESCRIPTION info")
        if t.export:
            expect(canon == t.export, f"canonical name {canon!r} for {t.export!r}")
    return f"name {canon!r} description {desc!r}"


@check("lib.opt_info_block_size")
def _(t):
    h = t.handle(opt_mode=True)
    h.set_request_block_size(True)
    h.opt_info()
    bs = [h.get_block_size(k) for k in (nbd.SIZE_MINIMUM, nbd.SIZE_PREFERRED, nbd.SIZE_MAXIMUM)]
    h.opt_abort()
    if t.zram:
        expect(bs == [1, 4096, 32 * MIB], f"block sizes {bs}, want [1, 4096, 33554432]")
    elif bs != [0, 0, 0]:
        mn, pr, mx = bs
        pow2 = lambda x: x and not x & (x - 1)
        expect(pow2(mn) and mn <= 64 * KIB, f"minimum {mn}")
        expect(pow2(pr) and pr >= max(mn, 512), f"preferred {pr}")
        expect(mx >= pr, f"maximum {mx} < preferred")
    return f"min/pref/max {bs}" + (" (not advertised)" if bs == [0, 0, 0] else "")


@check("lib.opt_info_then_go_agree")
def _(t):
    h = t.handle(opt_mode=True)
    h.opt_info()
    a = (h.get_size(), h.is_read_only(), h.can_flush(), h.can_fua(), h.can_trim(),
         h.can_zero(), h.can_fast_zero(), h.can_df(), h.can_multi_conn(), h.can_cache(),
         h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION), h.get_block_size(nbd.SIZE_MAXIMUM))
    h.opt_go()
    b = (h.get_size(), h.is_read_only(), h.can_flush(), h.can_fua(), h.can_trim(),
         h.can_zero(), h.can_fast_zero(), h.can_df(), h.can_multi_conn(), h.can_cache(),
         h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION), h.get_block_size(nbd.SIZE_MAXIMUM))
    h.shutdown()
    expect(a == b, f"INFO {a} != GO {b}")


@check("lib.opt_info_unknown_export", zram_only="nbdkit memory serves any export name")
def _(t):
    h = t.handle(opt_mode=True, export="no-such-export-\u00e9")
    e = nbd_errno(h.opt_info)
    expect(e != 0, "INFO for an unknown export succeeded")
    h.set_export_name(t.export)
    h.opt_go()  # the connection survived the error
    expect(h.get_size() == t.size, "wrong size after retry")
    h.shutdown()


@check("lib.opt_go_unknown_export_then_retry", zram_only="nbdkit memory serves any export name")
def _(t):
    h = t.handle(opt_mode=True, export="no-such-export")
    expect(nbd_errno(h.opt_go) != 0, "GO for an unknown export succeeded")
    expect(h.aio_is_negotiating(), "connection left option mode after a failed GO")
    h.set_export_name(t.export)
    h.opt_go()
    h.pread(512, 0)
    h.shutdown()


@check("lib.exports_all_servable")
def _(t):
    names = t.exports or [t.export]
    sizes = {}
    for n in names:
        h = t.handle(export=n)
        sizes[n] = h.get_size()
        h.pread(4096, 0)
        h.shutdown()
    return ", ".join(f"{n!r}={s}" for n, s in sizes.items())


@check("lib.list_meta_context_all")
def _(t):
    h = t.handle(opt_mode=True, meta=False)
    got = []
    h.opt_list_meta_context(lambda c: got.append(c))
    h.opt_abort()
    expect("base:allocation" in got, f"no base:allocation in {got}")
    return f"{got}"


@check("lib.list_meta_context_namespace_wildcard")
def _(t):
    h = t.handle(opt_mode=True, meta=False)
    h.add_meta_context("base:")
    got = []
    h.opt_list_meta_context(lambda c: got.append(c))
    h.opt_abort()
    expect(got == ["base:allocation"], f"query 'base:' gave {got}")


@check("lib.list_meta_context_unknown_ignored")
def _(t):
    h = t.handle(opt_mode=True, meta=False)
    h.add_meta_context("x-no-such-namespace:thing")
    h.add_meta_context("base:no-such-leaf")
    got = []
    n = h.opt_list_meta_context(lambda c: got.append(c))
    h.opt_go()  # unknown contexts must not break negotiation
    expect(n == 0 and not got, f"unknown queries matched {got}")
    expect(not h.can_meta_context("base:allocation"), "base:allocation selected though not asked")
    h.shutdown()


@check("lib.go_with_structured_replies")
def _(t):
    h = t.handle()
    expect(h.get_structured_replies_negotiated(), "structured replies not negotiated")
    expect(h.get_protocol() == "newstyle-fixed", f"protocol {h.get_protocol()}")
    caps = dict(flush=h.can_flush(), fua=h.can_fua(), trim=h.can_trim(), zero=h.can_zero(),
                fast_zero=h.can_fast_zero(), df=h.can_df(), multi_conn=h.can_multi_conn(),
                cache=h.can_cache(), base_allocation=h.can_meta_context("base:allocation"))
    missing = [k for k, v in caps.items() if not v]
    expect(not missing, f"capabilities missing: {missing}")
    expect(not h.is_read_only(), "export is read-only")
    expect(not h.is_rotational(), "export claims to be rotational")
    h.shutdown()


@check("lib.go_without_structured_replies")
def _(t):
    h = t.handle(sr=False)
    expect(not h.get_structured_replies_negotiated(), "SR negotiated though not requested")
    expect(not h.can_df(), "DF offered without structured replies")
    expect(not h.can_meta_context("base:allocation"), "meta context without SR")
    expect(h.can_trim() and h.can_zero() and h.can_flush(), "trim/zero/flush missing")
    data = pattern(2, 8192)
    h.pwrite(data, region(2))
    expect(h.pread(8192, region(2)) == data, "read-back mismatch")
    h.shutdown()


@check("lib.handshake_newstyle_not_fixed")
def _(t):
    # Client flags 0: libnbd must fall back to NBD_OPT_EXPORT_NAME.
    h = nbd.NBD()
    h.set_handshake_flags(0)
    h.set_export_name(t.export)
    h.connect_unix(t.unix) if t.unix else h.connect_tcp(t.host, str(t.port))
    expect(h.get_protocol() == "newstyle", f"protocol {h.get_protocol()}")
    expect(h.get_size() == t.size, "wrong size")
    data = pattern(3, 4096)
    h.pwrite(data, region(3))
    expect(h.pread(4096, region(3)) == data, "read-back mismatch")
    h.shutdown()


@check("lib.handshake_fixed_without_no_zeroes")
def _(t):
    h = nbd.NBD()
    h.set_handshake_flags(nbd.HANDSHAKE_FLAG_FIXED_NEWSTYLE)
    h.set_export_name(t.export)
    h.connect_unix(t.unix) if t.unix else h.connect_tcp(t.host, str(t.port))
    expect(h.get_handshake_flags() == nbd.HANDSHAKE_FLAG_FIXED_NEWSTYLE, "flags")
    h.pread(4096, 0)
    h.shutdown()


@check("lib.opt_abort")
def _(t):
    h = t.handle(opt_mode=True)
    h.opt_abort()
    expect(h.aio_is_closed(), "handle not closed after ABORT")
    server_alive(t)


# ============================================================================
# libnbd: commands
# ============================================================================
@check("lib.write_read_roundtrip")
def _(t):
    h = t.handle()
    base = region(4)
    # Overlapping, unaligned writes checked against a local model.
    cases = [(0, 4096), (4096, 65536), (1, 1), (513, 511), (4095, 2), (70000, 200000),
             (MIB - 100, 100), (60000, 9000)]
    model = bytearray(MIB)
    h.zero(MIB, base)
    for i, (off, n) in enumerate(cases):
        d = pattern(100 + i, n)
        h.pwrite(d, base + off)
        model[off:off + n] = d
    for off, n in cases:
        expect(h.pread(n, base + off) == model[off:off + n], f"mismatch at +{off} len {n}")
    expect(h.pread(MIB, base) == model, "whole-region mismatch")
    # Partial overwrite inside a page keeps the neighbouring bytes.
    h.pwrite(b"\xff" * 4096, base + 8 * 4096)
    h.pwrite(b"\x01\x02\x03", base + 8 * 4096 + 100)
    got = h.pread(4096, base + 8 * 4096)
    expect(got == b"\xff" * 100 + b"\x01\x02\x03" + b"\xff" * 3993, "sub-page RMW lost data")
    h.shutdown()


@check("lib.write_fua_and_flush")
def _(t):
    h = t.handle()
    d = pattern(5, 65536)
    h.pwrite(d, region(5), nbd.CMD_FLAG_FUA)
    h.flush()
    expect(h.pread(65536, region(5)) == d, "FUA write not readable")
    h.shutdown()


@check("lib.trim_reads_zero")
def _(t):
    h = t.handle()
    base = region(6)
    h.pwrite(pattern(6, MIB), base)
    h.trim(512 * KIB, base + 256 * KIB)
    got = h.pread(MIB, base)
    expect(got[:256 * KIB] == pattern(6, MIB)[:256 * KIB], "data before trim changed")
    expect(got[256 * KIB:768 * KIB] == bytes(512 * KIB), "trimmed range does not read zeros")
    expect(got[768 * KIB:] == pattern(6, MIB)[768 * KIB:], "data after trim changed")
    h.trim(MIB, base, nbd.CMD_FLAG_FUA)
    expect(h.pread(MIB, base) == bytes(MIB), "FUA trim did not zero")
    h.shutdown()


@check("lib.write_zeroes")
def _(t):
    h = t.handle()
    base = region(7)
    for flags in (0, nbd.CMD_FLAG_NO_HOLE, nbd.CMD_FLAG_FUA):
        h.pwrite(pattern(7, MIB), base)
        h.zero(512 * KIB, base + 4096 + 17, flags)
        got = h.pread(MIB, base)
        want = bytearray(pattern(7, MIB))
        want[4096 + 17:4096 + 17 + 512 * KIB] = bytes(512 * KIB)
        expect(got == want, f"zero flags={flags} wrong content")
    h.shutdown()


@check("lib.write_zeroes_fast_zero")
def _(t):
    h = t.handle()
    base = region(8)
    d = pattern(8, 256 * KIB)
    h.pwrite(d, base)
    e = nbd_errno(h.zero, 128 * KIB, base, nbd.CMD_FLAG_FAST_ZERO)
    got = h.pread(256 * KIB, base)
    if e == 0:
        expect(got == bytes(128 * KIB) + d[128 * KIB:], "fast zero wrong content")
    else:
        expect(e == errno.ENOTSUP, f"FAST_ZERO failed with {ename(e)}, only ENOTSUP allowed")
        expect(got == d, "a failed fast zero changed the data")
    h.shutdown()
    return "zeroed" if e == 0 else "ENOTSUP"


@check("lib.cache")
def _(t):
    h = t.handle()
    d = pattern(9, 128 * KIB)
    h.pwrite(d, region(9))
    h.cache(128 * KIB, region(9))
    expect(h.pread(128 * KIB, region(9)) == d, "CACHE changed data")
    h.shutdown()


def layout_block_status(h, base):
    """[0,64K) data, [64K,128K) written zeros, [128K,192K) zero NO_HOLE,
    [192K,256K) zero (may trim), [256K,1M) trimmed, with 64K-aligned borders."""
    h.trim(MIB, base)
    h.pwrite(pattern(10, 64 * KIB), base)
    h.pwrite(bytes(64 * KIB), base + 64 * KIB)
    h.zero(64 * KIB, base + 128 * KIB, nbd.CMD_FLAG_NO_HOLE)
    h.zero(64 * KIB, base + 192 * KIB)
    h.flush()


def extents_of(h, length, offset, flags=0):
    got = []

    def cb(ctx, off, entries, err):
        if ctx == "base:allocation":
            got.append((off, list(entries)))
        return 0
    h.block_status(length, offset, cb, flags)
    expect(len(got) == 1, f"{len(got)} base:allocation replies, want 1")
    e = got[0][1]
    return [(e[i], e[i + 1]) for i in range(0, len(e), 2)]


def state_map(exts, base, length):
    """Per-4K state over [base, base+length) from (len, flags) extents."""
    out, pos = [], 0
    for ln, fl in exts:
        out.extend([fl] * (ln // 4096))
        pos += ln
    return out[:length // 4096]


@check("lib.block_status")
def _(t):
    h = t.handle()
    base = region(10)
    layout_block_status(h, base)
    exts = extents_of(h, MIB, base)
    expect(exts, "no extents")
    expect(all(ln > 0 for ln, _ in exts), "zero-length extent")
    expect(sum(ln for ln, _ in exts[:-1]) < MIB, "extents beyond the first N-1 overrun the request")
    align = 4096 if t.zram else 512
    expect(all(ln % align == 0 for ln, _ in exts[:-1]), f"extent lengths not {align}-aligned: {exts}")
    if t.zram:
        expect(all(exts[i][1] != exts[i + 1][1] for i in range(len(exts) - 1)),
               f"neighbouring extents with equal flags not merged: {exts}")
    st = state_map(exts, base, MIB)
    expect(len(st) == 256, f"extents cover {len(st) * 4} KiB of 1024")
    parts = {"data": st[0:16], "written zeros": st[16:32], "zero NO_HOLE": st[32:48],
             "zero": st[48:64], "trimmed": st[64:]}
    bad = lambda name, ok: [f"{name}: {sorted(set(parts[name]))}"] if not all(ok(s) for s in parts[name]) else []
    errs = []
    errs += bad("data", lambda s: s == 0)
    if t.zram:
        errs += bad("written zeros", lambda s: s == nbd.STATE_ZERO)
        errs += bad("zero NO_HOLE", lambda s: s == nbd.STATE_ZERO)
        errs += bad("zero", lambda s: s & nbd.STATE_ZERO)
        errs += bad("trimmed", lambda s: s == nbd.STATE_HOLE | nbd.STATE_ZERO)
    else:
        # Any answer is true as long as HOLE implies ZERO here (the memory
        # plugin reads zeros from holes) and data is never called ZERO.
        for k in ("written zeros", "zero NO_HOLE", "zero", "trimmed"):
            errs += bad(k, lambda s: s in (0, 2, 3))
    expect(not errs, "wrong states " + "; ".join(errs) + f" (extents {exts})")
    return f"{len(exts)} extents"


@check("lib.block_status_req_one")
def _(t):
    h = t.handle()
    base = region(11)
    layout_block_status(h, base)
    for off, want in ((0, 0), (256 * KIB, 3)):
        exts = extents_of(h, 512 * KIB, base + off, nbd.CMD_FLAG_REQ_ONE)
        expect(len(exts) == 1, f"REQ_ONE gave {len(exts)} extents")
        expect(0 < exts[0][0] <= 512 * KIB, f"REQ_ONE extent length {exts[0][0]}")
        if t.zram or want == 0:
            expect(exts[0][1] == want, f"state {exts[0][1]} at +{off}, want {want}")
    h.shutdown()


@check("lib.block_status_last_extent_at_end")
def _(t):
    h = t.handle()
    exts = extents_of(h, 64 * KIB, t.size - 64 * KIB)
    expect(sum(ln for ln, _ in exts) <= 64 * KIB, f"extents run past the end of the export: {exts}")
    h.shutdown()


@check("lib.structured_read_chunks")
def _(t):
    h = t.handle()
    base = region(12)
    h.trim(MIB, base)
    d = pattern(12, 128 * KIB)
    h.pwrite(d, base + 256 * KIB)
    seen = []

    def cb(buf, off, status, err):
        seen.append((off, len(buf), status, bytes(buf)))
        return 0
    buf = h.pread_structured(MIB, base, cb)
    expect(bytes(buf) == bytes(256 * KIB) + d + bytes(640 * KIB), "data mismatch")
    spans = sorted((o - base, o - base + n) for o, n, _, _ in seen)
    pos = 0
    for a, b in spans:
        expect(a == pos, f"chunks overlap or leave a gap at {pos}: {spans}")
        pos = b
    expect(pos == MIB, f"chunks cover {pos} of {MIB}")
    for o, n, status, data in seen:
        expect(status in (nbd.READ_DATA, nbd.READ_HOLE), f"chunk status {status}")
        if status == nbd.READ_HOLE:
            expect(o - base + n <= 256 * KIB or o - base >= 384 * KIB, "hole chunk over data")
    holes = sum(1 for s in seen if s[2] == nbd.READ_HOLE)
    # DF: one content chunk.
    seen.clear()
    h.pread_structured(64 * KIB, base + 256 * KIB - 32 * KIB, cb, nbd.CMD_FLAG_DF)
    expect(len(seen) == 1, f"DF read came in {len(seen)} chunks")
    h.shutdown()
    return f"{len(spans)} chunks, {holes} hole chunks"


@check("lib.multi_conn_coherence")
def _(t):
    a, b = t.handle(), t.handle()
    expect(a.can_multi_conn(), "CAN_MULTI_CONN not set")
    base = region(13)
    d = pattern(13, 256 * KIB)
    a.pwrite(d, base)
    a.flush()
    expect(b.pread(256 * KIB, base) == d, "write on A not visible on B")
    b.trim(128 * KIB, base)
    b.flush()
    expect(a.pread(256 * KIB, base) == bytes(128 * KIB) + d[128 * KIB:], "trim on B not visible on A")
    a.shutdown()
    b.shutdown()


@check("lib.large_io_32MiB")
def _(t):
    h = t.handle()
    n = 32 * MIB
    d = pattern(14, n)
    h.pwrite(d, 64 * MIB)
    expect(h.pread(n, 64 * MIB) == d, "32 MiB round trip mismatch")
    h.trim(n, 64 * MIB)
    h.shutdown()


@check("lib.pipelined_out_of_order")
def _(t):
    # Many requests in flight at once; each completes with its own data.
    h = t.handle()
    base = region(15)
    bufs = []
    for i in range(64):
        bufs.append(pattern(1500 + i, 4096))
        h.aio_pwrite(bufs[-1], base + i * 8192)
    while h.aio_in_flight() > 0:
        h.poll(-1)
    cookies = []
    reads = []
    for i in range(64):
        b = nbd.Buffer(4096)
        reads.append(b)
        cookies.append(h.aio_pread(b, base + i * 8192))
    while h.aio_in_flight() > 0:
        h.poll(-1)
    for i, c in enumerate(cookies):
        expect(h.aio_command_completed(c), f"read {i} not completed")
        expect(reads[i].to_bytearray() == bufs[i], f"read {i} got another request's data")
    h.shutdown()


@check("lib.end_of_device_io")
def _(t):
    h = t.handle()
    d = pattern(16, 64 * KIB)
    h.pwrite(d, t.size - 64 * KIB)
    expect(h.pread(64 * KIB, t.size - 64 * KIB) == d, "last 64 KiB mismatch")
    h.pwrite(b"Z", t.size - 1)
    expect(h.pread(1, t.size - 1) == b"Z", "last byte mismatch")
    h.shutdown()


# --- libnbd, strict mode off: bad requests -----------------------------------
def lib_bad(t, expected, fn_name, *a):
    h = t.handle(strict=False)
    e = nbd_errno(getattr(h, fn_name), *a)
    expect(e in expected, f"{fn_name} -> {ename(e) if e else 'success'}, want "
           + "/".join(ename(x) for x in expected))
    h.pread(512, 0)  # connection kept
    h.shutdown()
    return ename(e)


@check("lib.bad.read_past_end")
def _(t):
    return lib_bad(t, {errno.EINVAL}, "pread", 8192, t.size - 4096)


@check("lib.bad.read_beyond_end")
def _(t):
    return lib_bad(t, {errno.EINVAL}, "pread", 4096, t.size + 4096)


@check("lib.bad.write_past_end")
def _(t):
    return lib_bad(t, {errno.ENOSPC}, "pwrite", bytes(8192), t.size - 4096)


@check("lib.bad.zero_past_end")
def _(t):
    return lib_bad(t, {errno.ENOSPC, errno.EINVAL}, "zero", 8192, t.size - 4096)


@check("lib.bad.trim_past_end")
def _(t):
    return lib_bad(t, {errno.EINVAL}, "trim", 8192, t.size - 4096)


@check("lib.bad.cache_past_end")
def _(t):
    return lib_bad(t, {errno.EINVAL}, "cache", 8192, t.size - 4096)


@check("lib.bad.block_status_past_end")
def _(t):
    return lib_bad(t, {errno.EINVAL}, "block_status", 8192, t.size, lambda *a: 0)


@check("lib.bad.flag_req_one_on_trim")
def _(t):
    return lib_bad(t, {errno.EINVAL}, "trim", 4096, region(16), nbd.CMD_FLAG_REQ_ONE)


@check("lib.bad.flag_df_on_write")
def _(t):
    return lib_bad(t, {errno.EINVAL}, "pwrite", bytes(4096), region(16), nbd.CMD_FLAG_DF)


@check("lib.bad.flag_no_hole_on_write")
def _(t):
    return lib_bad(t, {errno.EINVAL}, "pwrite", bytes(4096), region(16), nbd.CMD_FLAG_NO_HOLE)


@check("lib.bad.flag_fast_zero_on_trim")
def _(t):
    return lib_bad(t, {errno.EINVAL}, "trim", 4096, region(16), nbd.CMD_FLAG_FAST_ZERO)


# ============================================================================
# raw socket: handshake and options
# ============================================================================
@check("raw.hello")
def _(t):
    with Raw(t, client_flags=None) as r:
        expect(r.hflags == FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES,
               f"handshake flags {r.hflags:#06x}, want 0x0003")


@check("raw.bad_client_flags_closed")
def _(t):
    for flags in (0x4, 0x80000003):
        with Raw(t, client_flags=flags) as r:
            try:
                r.opt(OPT_LIST)
            except Closed:
                continue
            expect(r.is_closed(), f"client flags {flags:#x} accepted")
    server_alive(t)


@check("raw.bad_option_magic_closed")
def _(t):
    with Raw(t) as r:
        r.send(struct.pack(">QII", 0x1234567887654321, OPT_LIST, 0))
        expect(r.is_closed(), "bad option magic accepted")
    server_alive(t)


@check("raw.truncated_option_header_closed")
def _(t):
    with Raw(t) as r:
        r.send(struct.pack(">QII", IHAVEOPT, OPT_GO, 100)[:10])
        r.s.shutdown(socket.SHUT_WR)
        expect(r.is_closed(), "server did not close after a truncated option header")
    with Raw(t) as r:  # truncated option payload
        r.send(struct.pack(">QII", IHAVEOPT, OPT_GO, 100) + b"\0\0")
        r.s.shutdown(socket.SHUT_WR)
        expect(r.is_closed(), "server did not close after a truncated option payload")
    server_alive(t)


@check("raw.truncated_hello_reply_closed")
def _(t):
    with Raw(t, client_flags=None) as r:
        r.send(b"\0\0")
        r.s.shutdown(socket.SHUT_WR)
        expect(r.is_closed(), "server did not close after 2 of 4 client flag bytes")
    server_alive(t)


@check("raw.option_flood_capped")
def _(t):
    limit = 4096
    with Raw(t) as r:
        answered = 0
        try:
            for _ in range(limit):
                r.opt(99)
                rtype, _d = r.opt_reply(99)
                expect(rtype == ERR_UNSUP, f"option 99 -> {rname(rtype)}")
                answered += 1
        except Closed:
            pass
        expect(answered < limit, f"{limit} options answered without a cap")
        expect(answered >= 16, f"only {answered} options answered before the cap")
    server_alive(t)
    return f"closed after {answered} options"


@check("raw.option_length_4GiB_closed")
def _(t):
    with Raw(t) as r:
        r.send(struct.pack(">QII", IHAVEOPT, OPT_LIST, 0xFFFFFFFF))
        expect(r.is_closed(), "connection kept waiting for a 4 GiB option")
    with Raw(t) as r:  # same for an unknown option
        r.send(struct.pack(">QII", IHAVEOPT, 99, 0xFFFFFFF0))
        expect(r.is_closed(), "connection kept waiting for a 4 GiB unknown option")
    server_alive(t)


@check("raw.unknown_option_unsup_kept")
def _(t):
    with Raw(t) as r:
        for opt, data in ((99, b""), (12345, b"some payload"), (4, b"\0\0\0\0")):
            rtype = r.opt_final(opt, data)
            expect(rtype == ERR_UNSUP, f"option {opt} -> {rname(rtype)}, want ERR_UNSUP")
        r.start()
        r.alive()


@check("raw.extended_headers_unsup_kept")
def _(t):
    with Raw(t) as r:
        rtype = r.opt_final(OPT_EXTENDED_HEADERS)
        expect(rtype == ERR_UNSUP, f"EXTENDED_HEADERS -> {rname(rtype)}")
        flags = r.start(sr=True)
        expect(flags == FLAGS_SR, f"flags {flags:#x} after EXTENDED_HEADERS refusal")
        r.alive()


@check("raw.starttls_policy_kept")
def _(t):
    with Raw(t) as r:
        rtype = r.opt_final(OPT_STARTTLS)
        expect(rtype == ERR_POLICY, f"STARTTLS -> {rname(rtype)}, want ERR_POLICY")
        rtype = r.opt_final(OPT_STARTTLS, b"x")
        expect(rtype & ERR_BIT, f"STARTTLS with payload -> {rname(rtype)}")
        r.start()
        r.alive()


@check("raw.list")
def _(t):
    with Raw(t) as r:
        replies = r.opt_all(OPT_LIST)
        expect(replies[-1][0] == REP_ACK, f"LIST ended with {rname(replies[-1][0])}")
        names = []
        for rtype, p in replies[:-1]:
            expect(rtype == REP_SERVER, f"LIST reply {rname(rtype)}")
            expect(len(p) >= 4, "REP_SERVER shorter than 4 bytes")
            n = struct.unpack(">I", p[:4])[0]
            expect(n <= len(p) - 4, f"REP_SERVER name length {n} > payload {len(p) - 4}")
            name, desc = p[4:4 + n].decode(), p[4 + n:].decode()
            expect(n <= 4096 and "\0" not in name, "bad name")
            if t.zram:
                expect(desc, f"export {name!r} has no description")
            names.append(name)
        # After LIST the connection goes on (nbd-client -l sends ABORT next).
        rtype = r.opt_final(OPT_ABORT)
        expect(rtype == REP_ACK, f"ABORT after LIST -> {rname(rtype)}")
    return f"{names}"


@check("raw.list_with_payload_invalid")
def _(t):
    with Raw(t) as r:
        rtype = r.opt_final(OPT_LIST, b"x")
        expect(rtype == ERR_INVALID, f"LIST with payload -> {rname(rtype)}")
        r.start()
        r.alive()


@check("raw.structured_reply_with_payload_invalid")
def _(t):
    with Raw(t) as r:
        rtype = r.opt_final(OPT_STRUCTURED_REPLY, b"xy")
        expect(rtype == ERR_INVALID, f"STRUCTURED_REPLY with payload -> {rname(rtype)}")
        flags = r.start()
        expect(flags == FLAGS_NO_SR, f"flags {flags:#x} after refused SR")


@check("raw.info_malformed_invalid")
def _(t):
    ex = t.export.encode()
    bad = {
        "name length past the end": struct.pack(">I", len(ex) + 50) + ex + struct.pack(">H", 0),
        "info count past the end": struct.pack(">I", len(ex)) + ex + struct.pack(">H", 5) + b"\0\0",
        "trailing garbage": struct.pack(">I", len(ex)) + ex + struct.pack(">H", 0) + b"zz",
        "too short": b"\0\0",
    }
    with Raw(t) as r:
        for why, data in bad.items():
            for opt in (OPT_INFO, OPT_GO):
                rtype = r.opt_final(opt, data)
                expect(rtype == ERR_INVALID, f"{why} ({'INFO' if opt == OPT_INFO else 'GO'}) -> {rname(rtype)}")
        r.start()
        r.alive()


@check("raw.info_always_sends_export")
def _(t):
    with Raw(t) as r:
        final, info = r.go(infos=(), option=OPT_INFO)
        expect(final == REP_ACK, f"INFO -> {rname(final)}")
        expect(len(info.get(INFO_EXPORT, b"")) == 10, "INFO_EXPORT missing or not 12 bytes")
        size, flags = struct.unpack(">QH", info[INFO_EXPORT])
        expect(size == t.size, f"size {size}")
        expect(flags == FLAGS_NO_SR, f"INFO flags without SR {flags:#x}, want {FLAGS_NO_SR:#x}")
        # Unknown info ids are ignored.
        final, info = r.go(infos=(0x7777,), option=OPT_INFO)
        expect(final == REP_ACK and INFO_EXPORT in info, f"INFO with unknown id -> {rname(final)}")
        r.start()
        r.alive()


@check("raw.info_block_size")
def _(t):
    with Raw(t) as r:
        final, info = r.go(infos=(INFO_BLOCK_SIZE,), option=OPT_INFO)
        expect(final == REP_ACK, f"INFO -> {rname(final)}")
        if INFO_BLOCK_SIZE not in info:
            expect(not t.zram, "BLOCK_SIZE asked but not sent")
            return "not advertised"
        expect(len(info[INFO_BLOCK_SIZE]) == 12, "BLOCK_SIZE info not 14 bytes")
        bs = list(struct.unpack(">III", info[INFO_BLOCK_SIZE]))
        if t.zram:
            expect(bs == [1, 4096, 32 * MIB], f"block sizes {bs}")
        # Not asked -> not sent.
        final, info = r.go(infos=(), option=OPT_INFO)
        expect(INFO_BLOCK_SIZE not in info, "BLOCK_SIZE sent though not asked")
        return f"{bs}"


@check("raw.info_name_description")
def _(t):
    with Raw(t) as r:
        final, info = r.go(infos=(INFO_NAME, INFO_DESCRIPTION), option=OPT_INFO)
        expect(final == REP_ACK, f"INFO -> {rname(final)}")
        if t.zram:
            expect(info.get(INFO_NAME), "NAME asked, not sent")
            expect(info.get(INFO_DESCRIPTION), "DESCRIPTION asked, not sent")
        return ", ".join(f"{k}={v.decode()!r}" for k, v in info.items() if k in (1, 2))


@check("raw.go_unknown_export", zram_only="nbdkit memory serves any export name")
def _(t):
    with Raw(t) as r:
        final, _ = r.go(export="no-such-export")
        expect(final == ERR_UNKNOWN, f"GO unknown export -> {rname(final)}, want ERR_UNKNOWN")
        final, _ = r.go(export="x" * 300, option=OPT_INFO)
        expect(final & ERR_BIT, f"INFO 300-byte unknown name -> {rname(final)}")
        r.start()
        r.alive()


@check("raw.export_name_unknown_closed", zram_only="nbdkit memory serves any export name")
def _(t):
    with Raw(t) as r:
        r.opt(OPT_EXPORT_NAME, b"no-such-export")
        expect(r.is_closed(), "EXPORT_NAME for an unknown export not closed")
    server_alive(t)


@check("raw.set_meta_context_before_sr_invalid")
def _(t):
    with Raw(t) as r:
        r2 = r.set_meta(["base:allocation"])
        expect(r2[-1][0] == ERR_INVALID, f"SET_META_CONTEXT before SR -> {rname(r2[-1][0])}")
        r.start()
        r.alive()


@check("raw.set_meta_context")
def _(t):
    with Raw(t) as r:
        r.structured_reply()
        replies = r.set_meta(["base:allocation", "x-unknown:foo"])
        expect(replies[-1][0] == REP_ACK, f"SET -> {rname(replies[-1][0])}")
        ctx = [p for rt, p in replies if rt == REP_META_CONTEXT]
        expect(len(ctx) == 1 and ctx[0][4:] == b"base:allocation", f"contexts {ctx}")
        replies = r.set_meta([])
        expect(replies[-1][0] == REP_ACK and len(replies) == 1, "SET with 0 queries selected something")
        r.start(sr=False, meta=True)
        r.alive()


@check("raw.meta_context_malformed_invalid")
def _(t):
    ex = t.export.encode()
    with Raw(t) as r:
        r.structured_reply()
        for opt in (OPT_LIST_META_CONTEXT, OPT_SET_META_CONTEXT):
            for data in (b"\0\0", struct.pack(">I", 999) + ex,
                         struct.pack(">I", len(ex)) + ex + struct.pack(">I", 1) + struct.pack(">I", 99) + b"base:"):
                rtype = r.opt_final(opt, data)
                expect(rtype == ERR_INVALID, f"malformed option {opt} -> {rname(rtype)}")
        r.start()
        r.alive()


@check("raw.abort")
def _(t):
    with Raw(t) as r:
        rtype = r.opt_final(OPT_ABORT)
        expect(rtype == REP_ACK, f"ABORT -> {rname(rtype)}")
        expect(r.is_closed(), "connection still open after ABORT")
    with Raw(t) as r:  # client closes before reading the ACK
        r.opt(OPT_ABORT)
    server_alive(t)


@check("raw.export_name_no_zeroes")
def _(t):
    with Raw(t) as r:
        r.opt(OPT_EXPORT_NAME, t.export.encode())
        size, flags = struct.unpack(">QH", r.recv(10))
        expect(size == t.size, f"size {size}")
        expect(flags == FLAGS_NO_SR, f"flags {flags:#x}, want {FLAGS_NO_SR:#x}")
        r.alive()  # the first bytes after the flags are a reply, not padding


@check("raw.export_name_with_zero_padding")
def _(t):
    with Raw(t, client_flags=FLAG_FIXED_NEWSTYLE) as r:
        r.opt(OPT_EXPORT_NAME, t.export.encode())
        size, flags = struct.unpack(">QH", r.recv(10))
        expect(size == t.size, f"size {size}")
        expect(r.recv(124) == bytes(124), "124 padding bytes are not zero")
        r.alive()


@check("raw.export_name_non_fixed_client")
def _(t):
    with Raw(t, client_flags=0) as r:
        r.opt(OPT_EXPORT_NAME, t.export.encode())
        size, flags = struct.unpack(">QH", r.recv(10))
        expect(r.recv(124) == bytes(124), "padding")
        expect(size == t.size, f"size {size}")
        r.alive()


@check("raw.transmission_flags")
def _(t):
    with Raw(t) as r:
        sr = r.start(sr=True)
    with Raw(t) as r:
        plain = r.start()
    expect((sr, plain) == (FLAGS_SR, FLAGS_NO_SR),
           f"flags SR {sr:#x} / no SR {plain:#x}, want {FLAGS_SR:#x} / {FLAGS_NO_SR:#x}")
    return f"{sr:#x} / {plain:#x}"


@check("raw.command_before_go_closed")
def _(t):
    with Raw(t) as r:
        r.request(CMD_READ, 0, 4096)
        expect(r.is_closed(), "a command during option haggling was accepted")
    server_alive(t)


# ============================================================================
# raw socket: transmission
# ============================================================================
def tx(t, sr=False, meta=False):
    r = Raw(t)
    r.start(sr=sr, meta=meta)
    return r


def expect_errno(r, want, cmd, offset=0, length=0, flags=0, payload=b""):
    e = r.cmd_errno(cmd, offset, length, flags, payload)
    want = {want} if isinstance(want, int) else set(want)
    expect(e in want, f"cmd {cmd} off {offset} len {length} flags {flags:#x} -> "
           f"{ename(e) if e else 'success'}, want {'/'.join(ename(w) for w in want)}")
    r.alive()
    return e


@check("raw.cookie_echo_pipelined")
def _(t):
    with tx(t) as r:
        cookies = [0x0123456789ABCDEF, 0xFFFFFFFFFFFFFFFF, 0, 0x8000000000000001, 7]
        for i, c in enumerate(cookies):
            r.request(CMD_WRITE, region(17) + i * 4096, 4096, 0, c, pattern(17 + i, 4096))
        got = set()
        for _ in cookies:
            kind, err, ck, _d = r.reply()
            expect(kind == "simple" and err == 0, f"write err {err}")
            got.add(ck)
        expect(got == set(cookies), f"cookies {sorted(map(hex, got))}")


@check("raw.unknown_command_einval")
def _(t):
    with tx(t) as r:
        expect_errno(r, errno.EINVAL, 99)
        expect_errno(r, errno.EINVAL, 8, 0, 4096)  # RESIZE: not offered


@check("raw.unknown_flag_einval")
def _(t):
    with tx(t) as r:
        expect_errno(r, errno.EINVAL, CMD_READ, 0, 4096, 0x8000)
        expect_errno(r, errno.EINVAL, CMD_READ, 0, 4096, CF_DF)  # DF without SR
        expect_errno(r, errno.EINVAL, CMD_READ, 0, 4096, CF_NO_HOLE)
        expect_errno(r, errno.EINVAL, CMD_WRITE, region(18), 4096, CF_REQ_ONE, bytes(4096))
        expect_errno(r, errno.EINVAL, CMD_FLUSH, 0, 0, CF_FAST_ZERO)


@check("raw.flush_nonzero_length_einval")
def _(t):
    with tx(t) as r:
        expect_errno(r, 0, CMD_FLUSH)
        expect_errno(r, errno.EINVAL, CMD_FLUSH, 0, 4096)


@check("raw.read_past_end_einval")
def _(t):
    with tx(t) as r:
        expect_errno(r, errno.EINVAL, CMD_READ, t.size - 4096, 8192)
        expect_errno(r, errno.EINVAL, CMD_READ, t.size, 1)
        expect_errno(r, errno.EINVAL, CMD_READ, (1 << 64) - 4096, 8192)  # offset+len overflows


@check("raw.read_past_end_structured_error")
def _(t):
    with tx(t, sr=True) as r:
        r.request(CMD_READ, t.size - 4096, 8192, 0, 0x5151)
        chunks = r.chunks(0x5151)
        errs = [c for c in chunks if c[2] & 0x8000]
        expect(errs, f"no error chunk, types {[hex(c[2]) for c in chunks]}")
        e = struct.unpack(">I", errs[0][4][:4])[0]
        expect(e == errno.EINVAL, f"error {ename(e)}")
        expect(not any(c[2] == CHUNK_OFFSET_DATA for c in chunks), "data chunk for a failed read")
        r.alive()


@check("raw.write_past_end_enospc")
def _(t):
    with tx(t) as r:
        expect_errno(r, errno.ENOSPC, CMD_WRITE, t.size - 4096, 8192, 0, bytes(8192))
        expect_errno(r, errno.ENOSPC, CMD_WRITE, t.size, 1, 0, b"x")
        expect_errno(r, (errno.ENOSPC, errno.EINVAL), CMD_WRITE, (1 << 64) - 512, 4096, 0, bytes(4096))


@check("raw.write_zeroes_past_end")
def _(t):
    with tx(t) as r:
        expect_errno(r, (errno.ENOSPC, errno.EINVAL), CMD_WRITE_ZEROES, t.size - 4096, 8192)
        expect_errno(r, (errno.ENOSPC, errno.EINVAL), CMD_WRITE_ZEROES, (1 << 64) - 512, 4096)


@check("raw.trim_cache_past_end_einval")
def _(t):
    with tx(t) as r:
        expect_errno(r, errno.EINVAL, CMD_TRIM, t.size - 4096, 8192)
        expect_errno(r, errno.EINVAL, CMD_CACHE, t.size - 4096, 8192)
        expect_errno(r, errno.EINVAL, CMD_TRIM, (1 << 64) - 512, 4096)


@check("raw.trim_whole_device")
def _(t):
    # mkfs/blkdiscard send one TRIM as large as the export (up to 4 GiB - 1).
    # Everything from 64 MiB on is scratch for this check.
    start = 64 * MIB
    n = min(t.size - start, 0xFFFFF000)
    with tx(t) as r:
        r.cmd_errno(CMD_WRITE, start + n - 4096, 4096, 0, pattern(19, 4096))
        expect_errno(r, 0, CMD_TRIM, start, n)
        expect(r.read_ok(start + n - 4096, 4096) == bytes(4096), "not zero after trim")
    return f"{n} bytes"


@check("raw.zero_length_requests_kept")
def _(t):
    res = {}
    with tx(t) as r:
        for name, cmd in (("READ", CMD_READ), ("WRITE", CMD_WRITE), ("TRIM", CMD_TRIM),
                          ("WRITE_ZEROES", CMD_WRITE_ZEROES), ("CACHE", CMD_CACHE)):
            e = r.cmd_errno(cmd, 4096, 0)
            r.alive()
            res[name] = ename(e) if e else "ok"
    with tx(t, sr=True, meta=True) as r:
        e = r.cmd_errno(CMD_BLOCK_STATUS, 4096, 0)
        r.alive()
        res["BLOCK_STATUS"] = ename(e) if e else "ok"
    return ", ".join(f"{k} {v}" for k, v in res.items())


@check("raw.block_status_without_sr_einval")
def _(t):
    with tx(t) as r:
        expect_errno(r, errno.EINVAL, CMD_BLOCK_STATUS, 0, 4096)


@check("raw.block_status_without_context_einval")
def _(t):
    with tx(t, sr=True) as r:
        expect_errno(r, errno.EINVAL, CMD_BLOCK_STATUS, 0, 4096)


@check("raw.block_status_context_for_other_export_einval")
def _(t):
    with Raw(t) as r:
        r.structured_reply()
        r.set_meta(["base:allocation"], export="some-other-export")
        r.start()
        expect_errno(r, errno.EINVAL, CMD_BLOCK_STATUS, 0, 4096)


@check("raw.block_status")
def _(t):
    with tx(t, sr=True, meta=True) as r:
        base = region(20)
        r.cmd_errno(CMD_TRIM, base, MIB)
        r.cmd_errno(CMD_WRITE, base + 64 * KIB, 64 * KIB, 0, pattern(20, 64 * KIB))
        r.request(CMD_BLOCK_STATUS, base, MIB, 0, 0xB5)
        chunks = r.chunks(0xB5)
        bs = [c for c in chunks if c[2] == CHUNK_BLOCK_STATUS]
        expect(len(bs) == 1, f"{len(bs)} BLOCK_STATUS chunks, types {[hex(c[2]) for c in chunks]}")
        p = bs[0][4]
        expect(len(p) >= 12 and (len(p) - 4) % 8 == 0, f"chunk length {len(p)}")
        ctx = struct.unpack(">I", p[:4])[0]
        expect(ctx == r.meta_id, f"context id {ctx}, SET gave {r.meta_id}")
        exts = [struct.unpack(">II", p[i:i + 8]) for i in range(4, len(p), 8)]
        expect(all(ln for ln, _ in exts), "zero-length descriptor")
        st = state_map(exts, base, MIB)
        expect(st[:16] == [3] * 16 and st[16:32] == [0] * 16, f"states {exts}")
        r.alive()


@check("raw.structured_read")
def _(t):
    with tx(t, sr=True) as r:
        base = region(21)
        r.cmd_errno(CMD_TRIM, base, MIB)
        d = pattern(21, 8192)
        r.cmd_errno(CMD_WRITE, base + 12288, 8192, 0, d)
        r.request(CMD_READ, base, 64 * KIB, 0, 0x77)
        chunks = r.chunks(0x77)
        spans, buf = [], bytearray(64 * KIB)
        for _, flags, ctype, _ck, p in chunks:
            if ctype == CHUNK_OFFSET_DATA:
                expect(len(p) >= 9, "OFFSET_DATA shorter than 9 bytes")
                o = struct.unpack(">Q", p[:8])[0] - base
                spans.append((o, o + len(p) - 8))
                buf[o:o + len(p) - 8] = p[8:]
            elif ctype == CHUNK_OFFSET_HOLE:
                expect(len(p) == 12, f"OFFSET_HOLE length {len(p)}")
                o, n = struct.unpack(">QI", p)
                expect(n > 0, "empty hole")
                spans.append((o - base, o - base + n))
            else:
                expect(ctype == CHUNK_NONE and flags & CHUNK_DONE, f"unexpected chunk {ctype:#x}")
        spans.sort()
        pos = 0
        for a, b in spans:
            expect(a == pos, f"gap/overlap at {pos}: {spans}")
            pos = b
        expect(pos == 64 * KIB, f"covered {pos}")
        expect(bytes(buf) == bytes(12288) + d + bytes(64 * KIB - 20480), "content")
        r.request(CMD_READ, base, 64 * KIB, CF_DF, 0x78)
        chunks = r.chunks(0x78)
        content = [c for c in chunks if c[2] in (CHUNK_OFFSET_DATA, CHUNK_OFFSET_HOLE)]
        expect(len(content) == 1, f"DF read: {len(content)} content chunks")
        return f"{len(spans)} chunks"


@check("raw.write_4GiB_length")
def _(t):
    # Cannot be buffered: the server must hang up (or refuse without
    # waiting for 4 GiB) and must not allocate it.
    with tx(t) as r:
        try:
            r.request(CMD_WRITE, 0, 0xFFFFFFFF, 0, 0x4)
            r.send(bytes(4096))
        except Closed:
            pass  # hung up already: fine
        expect(r.is_closed(), "connection kept waiting for a 4 GiB payload")
    server_alive(t)


@check("raw.read_4GiB_length")
def _(t):
    with tx(t) as r:
        try:
            e = r.cmd_errno(CMD_READ, 0, 0xFFFFFFFF)
            expect(e != 0, "4 GiB read succeeded")
            r.alive()
            res = ename(e)
        except Closed:
            res = "closed"
    server_alive(t)
    return res


@check("raw.write_larger_than_max_payload")
def _(t):
    # 33 MiB > the 32 MiB maximum: accepted whole, refused with the payload
    # skipped (connection kept), or closed; never half-applied.
    n, base = 33 * MIB, 64 * MIB
    old = pattern(25, 4096)
    with tx(t) as r:
        expect_errno(r, 0, CMD_WRITE, base + n - 4096, 4096, 0, old)
        try:
            r.request(CMD_WRITE, base, n, 0, 0x33, b"\xab" * n)
            e = r.error_of(0x33)
            r.alive()
            res = ename(e) if e else "accepted"
        except Closed:
            res = "closed"
    with tx(t) as r:
        got = r.read_ok(base + n - 4096, 4096)
    want = b"\xab" * 4096 if res == "accepted" else old
    expect(got == want, f"write {res}, but its last page holds other data")
    server_alive(t)
    return res


@check("raw.bad_request_magic_closed")
def _(t):
    with tx(t) as r:
        r.send(struct.pack(">IHHQQI", 0x12560953, 0, CMD_READ, 1, 0, 4096))
        expect(r.is_closed(), "bad request magic accepted")
    server_alive(t)


@check("raw.truncated_request_closed")
def _(t):
    with tx(t) as r:
        r.send(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_READ, 1, 0, 4096)[:14])
        r.s.shutdown(socket.SHUT_WR)
        expect(r.is_closed(), "server did not close after a truncated request")
    server_alive(t)


@check("raw.disconnect_mid_payload_data_intact")
def _(t):
    base = region(22)
    old = pattern(22, 64 * KIB)
    with tx(t) as r:
        expect_errno(r, 0, CMD_WRITE, base, 64 * KIB, 0, old)
    for cut in (0, 1000, 64 * KIB - 1):
        with tx(t) as r:
            r.request(CMD_WRITE, base, 64 * KIB, 0, 0x99, b"\xee" * cut)
    with tx(t) as r:
        got = r.read_ok(base, 64 * KIB)
    expect(got == old, "a half-sent write changed the data")


@check("raw.disc")
def _(t):
    with tx(t) as r:
        d = pattern(23, 4096)
        expect_errno(r, 0, CMD_WRITE, region(23), 4096, 0, d)
        r.request(CMD_DISC)
        try:
            extra = r.s.recv(1)
        except ConnectionResetError:
            extra = b""
        expect(extra == b"", "DISC got a reply")
    with tx(t) as r:
        expect(r.read_ok(region(23), 4096) == d, "data lost after DISC")


@check("raw.many_connections")
def _(t):
    rs = [tx(t) for _ in range(16)]
    try:
        for i, r in enumerate(rs):
            r.request(CMD_WRITE, region(24) + i * 4096, 4096, 0, i, pattern(2400 + i, 4096))
        for i, r in enumerate(rs):
            expect(r.error_of(i) == 0, f"conn {i} write failed")
        for i, r in enumerate(rs):
            j = (i + 5) % len(rs)
            expect(r.read_ok(region(24) + j * 4096, 4096) == pattern(2400 + j, 4096), f"conn {i} sees wrong data")
    finally:
        for r in rs:
            r.close()



# ============================================================================
# read-only exports (--read-only): flags and EPERM
# ============================================================================
@check("ro.flags", read_only=True)
def _(t):
    with Raw(t) as r:
        sr = r.start(sr=True)
    with Raw(t) as r:
        plain = r.start()
    for f in (sr, plain):
        expect(f & 1 and f & 2, f"flags {f:#x}: HAS_FLAGS|READ_ONLY not set")
    h = t.handle()
    expect(h.is_read_only(), "libnbd: not read-only")
    h.shutdown()
    return f"{sr:#x} / {plain:#x}"


@check("ro.writes_eperm", read_only=True)
def _(t):
    with tx(t) as r:
        expect_errno(r, errno.EPERM, CMD_WRITE, 0, 4096, 0, bytes(4096))
        expect_errno(r, errno.EPERM, CMD_WRITE, 0, 4096, CF_FUA, bytes(4096))
    with tx(t, sr=True) as r:
        expect_errno(r, errno.EPERM, CMD_WRITE, 0, 4096, 0, bytes(4096))


@check("ro.trim_zero_eperm", read_only=True)
def _(t):
    with tx(t) as r:
        # Either refused as not permitted, or as not offered (EINVAL).
        expect_errno(r, (errno.EPERM, errno.EINVAL), CMD_TRIM, 0, 4096)
        expect_errno(r, (errno.EPERM, errno.EINVAL), CMD_WRITE_ZEROES, 0, 4096)


@check("ro.reads_flush_ok", read_only=True)
def _(t):
    h = t.handle()
    h.pread(MIB, 0)
    h.pread(4096, t.size - 4096)
    if h.can_flush():
        h.flush()
    if h.can_cache():
        h.cache(MIB, 0)
    h.shutdown()

# ============================================================================
def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--unix", metavar="SOCKET")
    ap.add_argument("--uri", help="nbd+unix:///EXPORT?socket=PATH or nbd://HOST:PORT/EXPORT")
    ap.add_argument("--export", default=None, help='export name (default: from --uri, else "")')
    ap.add_argument("--size", type=int, required=True, help="expected export size in bytes")
    ap.add_argument("--profile", choices=("nbdkit", "zramnbd"), default="zramnbd")
    ap.add_argument("--exports", help="comma-separated export names that must all be listed and served")
    ap.add_argument("--read-only", action="store_true",
                    help="the export is read-only: run only the read-only checks (no writes)")
    ap.add_argument("--only", help="run only checks whose name contains this")
    ap.add_argument("--skip", action="append", default=[], help="skip checks whose name contains this (repeatable)")
    args = ap.parse_args()
    if args.size < MIN_SIZE:
        sys.exit(f"--size must be at least {MIN_SIZE} (checks use the first 128 MiB)")
    t = Target(args)
    passed = failed = 0
    start = time.monotonic()
    if args.read_only:
        pool = list(RO_CHECKS)
    else:
        # A sentinel written first and checked last: nothing in between may corrupt it.
        sentinel = pattern(999, 64 * KIB)
        try:
            h = t.handle()
            h.pwrite(sentinel, region(63))
            h.shutdown()
        except Exception as e:
            print(f"FAIL setup: cannot connect/write: {e}")
            print("0 passed, 1 failed")
            return 1
        pool = CHECKS + [("server_alive_data_intact", lambda t: check_sentinel(t, sentinel), None)]
    checks = [c for c in pool if (not args.only or args.only in c[0])
              and not any(k in c[0] for k in args.skip)]
    for name, fn, zram_only in checks:
        if zram_only and not t.zram:
            print(f"SKIP {name}: {zram_only} (zramnbd profile only)", flush=True)
            continue
        t0 = time.monotonic()
        try:
            note = fn(t)
            dt = time.monotonic() - t0
            print(f"PASS {name}" + (f" ({note})" if note else "") + (f" [{dt:.1f}s]" if dt > 1 else ""), flush=True)
            passed += 1
        except Skip as e:
            print(f"SKIP {name}: {e}", flush=True)
        except Fail as e:
            print(f"FAIL {name}: {e}", flush=True)
            failed += 1
        except Closed as e:
            print(f"FAIL {name}: server closed the connection ({e})", flush=True)
            failed += 1
        except nbd.Error as e:
            print(f"FAIL {name}: libnbd: {e}", flush=True)
            failed += 1
        except Exception as e:  # a bug in the check or a protocol surprise
            print(f"FAIL {name}: {type(e).__name__}: {e}", flush=True)
            failed += 1
        if failed and not reachable(t):
            # Everything after this would fail for the same reason.
            print(f"FAIL server_reachable: the server stopped accepting connections during {name}; "
                  "remaining checks not run", flush=True)
            failed += 1
            break
    print(f"# {time.monotonic() - start:.1f}s, profile {t.profile}", flush=True)
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


def reachable(t):
    try:
        with Raw(t, client_flags=None):
            return True
    except Exception:
        return False


def check_sentinel(t, sentinel):
    h = t.handle()
    got = h.pread(len(sentinel), region(63))
    h.shutdown()
    expect(got == sentinel, "sentinel written at start was changed")


if __name__ == "__main__":
    sys.exit(main())
