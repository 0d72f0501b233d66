#!/usr/bin/python3
"""socket-fuzz.py - fuzz a live zramnbd over its NBD unix socket, and check it stays correct.

  scripts/socket-fuzz.py [--duration SEC] [--iterations N] [--seed S] [--verify-every K]
                         [--binary .build/debug/zramnbd]
  scripts/socket-fuzz.py --socket PATH [--export NAME] [--ref-socket PATH --ref-export NAME]
                         [--stats-dir DIR] [--pid PID] ...

Without --socket it starts `zramnbd serve` on a temporary configuration with two 64 MiB devices:
zram0, which the fuzzer attacks, and zramref, which only the reference client writes (fuzzed
writes land anywhere on zram0, so patterns there could be overwritten legitimately). Each
iteration opens a raw connection to zram0 and sends a generated handshake and, often,
transmission requests, mutated (bit flips, truncations, bogus lengths up to 4 GiB, wrong magics,
huge option lengths, random commands/flags/offsets), in random pieces, then closes: cleanly,
abruptly mid-payload, or later (a few connections are left hanging). Every K iterations a libnbd
client writes a known pattern to zramref at a random offset and reads it back, re-reads an older
one, and checks zram0 still negotiates and reads. At the end: the daemon is alive, its stats
files still update, every pattern written reads back intact, and (own daemon) SIGTERM stops it
with status 0. Exit 0 only if all hold. The RNG seed is printed first: --seed reproduces a run.
"""
import argparse
import os
import random
import select
import signal
import socket
import struct
import subprocess
import sys
import traceback
import tempfile
import time

try:
    import nbd
except ImportError:
    print("socket-fuzz.py: SKIP: python3-libnbd is not installed (import nbd failed)")
    sys.exit(77)

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
REQUEST_MAGIC = 0x25609513
OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_PEEK, OPT_STARTTLS, OPT_INFO, OPT_GO = 1, 2, 3, 4, 5, 6, 7
OPT_STRUCTURED, OPT_LIST_META, OPT_SET_META, OPT_EXTENDED = 8, 9, 10, 11
CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH, CMD_TRIM, CMD_CACHE, CMD_ZEROES, CMD_STATUS = range(8)
SIZE = 64 << 20
MAX_DRAIN = 4 << 20


class Failure(Exception):
    pass


class Stats:
    def __init__(self):
        self.connections = self.frames = self.bytes = self.mutations = 0
        self.abrupt = self.hung = self.refused = 0
        self.verifications = self.pattern_bytes = self.liveness = 0


def u32(v):
    return struct.pack(">I", v & 0xFFFFFFFF)


def option(code, payload=b"", length=None):
    return struct.pack(">QII", IHAVEOPT, code & 0xFFFFFFFF, len(payload) if length is None else length) + payload


def request(rng, cmd, flags, offset, length, with_payload=True):
    head = struct.pack(">IHHQQI", REQUEST_MAGIC, flags & 0xFFFF, cmd & 0xFFFF, rng.getrandbits(64),
                       offset & (2**64 - 1), length & 0xFFFFFFFF)
    if cmd == CMD_WRITE and with_payload:
        # A bogus length is announced, not sent: at most 256 KiB of payload goes out.
        head += rng.randbytes(min(length, 256 << 10))
    return head


class Generator:
    """Handshakes and request streams, valid at first, then mutated."""

    def __init__(self, rng, export):
        self.rng = rng
        self.export = export.encode()

    def name(self):
        r = self.rng.random()
        if r < 0.6:
            return self.export
        if r < 0.75:
            return b""
        if r < 0.9:
            return self.rng.randbytes(self.rng.randrange(0, 40))
        return b"x" * self.rng.choice([255, 4096, 5000])

    def info_payload(self):
        n = self.name()
        infos = [self.rng.randrange(0, 5) for _ in range(self.rng.randrange(0, 5))]
        name_len = len(n) if self.rng.random() < 0.85 else self.rng.getrandbits(32)
        return u32(name_len) + n + struct.pack(">H", len(infos)) + b"".join(struct.pack(">H", i) for i in infos)

    def meta_payload(self):
        n = self.name()
        queries = [self.rng.choice([b"base:allocation", b"base:", b"", b"qemu:dirty-bitmap:x", self.rng.randbytes(8)])
                   for _ in range(self.rng.randrange(0, 4))]
        body = u32(len(n)) + n + u32(len(queries) if self.rng.random() < 0.9 else self.rng.getrandbits(32))
        return body + b"".join(u32(len(q)) + q for q in queries)

    def options(self, frames):
        """Option frames; the last one may end negotiation (GO/EXPORT_NAME)."""
        out = []
        for _ in range(self.rng.randrange(0, 7)):
            r = self.rng.random()
            if r < 0.12:
                out.append(option(OPT_LIST, b"" if self.rng.random() < 0.8 else b"junk"))
            elif r < 0.24:
                # STARTTLS (ERR_POLICY here, or the upgrade where TLS is on), and options after it.
                out.append(option(OPT_STARTTLS, b"" if self.rng.random() < 0.9 else b"x"))
            elif r < 0.4:
                out.append(option(OPT_INFO, self.info_payload()))
            elif r < 0.52:
                out.append(option(OPT_STRUCTURED))
            elif r < 0.68:
                out.append(option(self.rng.choice([OPT_LIST_META, OPT_SET_META]), self.meta_payload()))
            elif r < 0.76:
                out.append(option(self.rng.choice([OPT_PEEK, OPT_EXTENDED, 12, 0x7FFF, self.rng.getrandbits(32)]),
                                  self.rng.randbytes(self.rng.randrange(0, 16))))
            elif r < 0.84:
                # A huge option length with a short payload: the server must refuse, not allocate.
                out.append(option(self.rng.choice([OPT_INFO, OPT_LIST, OPT_SET_META]), self.rng.randbytes(8),
                                  length=self.rng.choice([4097, 1 << 20, 0x7FFFFFFF, 0xFFFFFFFF])))
            elif r < 0.88:
                out.append(option(OPT_ABORT))
            else:
                out.append(option(OPT_GO, self.info_payload()))
        frames[0] += len(out)
        return out

    def handshake(self, frames, to_transmission):
        flags = 3 if self.rng.random() < 0.9 else self.rng.getrandbits(32)
        parts = [u32(flags)] + self.options(frames)
        if to_transmission:
            if self.rng.random() < 0.15:
                parts.append(option(OPT_EXPORT_NAME, self.export))
            else:
                if self.rng.random() < 0.6:
                    parts.append(option(OPT_STRUCTURED))
                    if self.rng.random() < 0.6:
                        q = b"base:allocation"
                        parts.append(option(OPT_SET_META, u32(len(self.export)) + self.export + u32(1) + u32(len(q)) + q))
                    frames[0] += 1
                parts.append(option(OPT_GO, u32(len(self.export)) + self.export + struct.pack(">H", 0)))
            frames[0] += 1
        return parts

    def offset_length(self):
        rng = self.rng
        r = rng.random()
        if r < 0.5:
            off = rng.randrange(0, SIZE // 4096) * 4096
            ln = rng.choice([4096, 8192, 65536, 512, 1]) if rng.random() < 0.8 else rng.randrange(1, 1 << 20)
        elif r < 0.7:
            off = rng.randrange(0, SIZE)
            ln = rng.randrange(0, 70000)
        elif r < 0.85:
            off = SIZE - rng.randrange(0, 8192)
            ln = rng.randrange(0, 16384)
        else:
            off = rng.choice([SIZE, SIZE + 4096, 2**63, 2**64 - 4096, rng.getrandbits(64)])
            ln = rng.choice([0, 1, 4096, 32 << 20, 64 << 20, (64 << 20) + 1, 0x80000000, 0xFFFFFFFF])
        return off, ln

    def requests(self, frames):
        rng = self.rng
        out = []
        for _ in range(rng.randrange(1, 24)):
            r = rng.random()
            if r < 0.85:
                cmd = rng.choice([CMD_READ, CMD_WRITE, CMD_WRITE, CMD_TRIM, CMD_ZEROES, CMD_STATUS, CMD_FLUSH, CMD_CACHE])
            else:
                cmd = rng.choice([CMD_DISC, 8, 9, 0xFFFF, rng.getrandbits(16)])
            flags = rng.choice([0, 0, 0, 1, 2, 4, 8, 16, 0x12, rng.getrandbits(16)])
            off, ln = self.offset_length()
            out.append(request(rng, cmd, flags, off, ln, with_payload=rng.random() < 0.95))
            if cmd == CMD_DISC:
                break
        frames[0] += len(out)
        return out

    def stream(self, frames):
        r = self.rng.random()
        if r < 0.03:
            return [self.rng.randbytes(self.rng.randrange(0, 200))]
        to_tx = r < 0.6
        parts = self.handshake(frames, to_tx)
        if to_tx:
            parts += self.requests(frames)
        return parts

    def mutate(self, data, stats):
        """A few mutations of the joined stream (or none)."""
        rng = self.rng
        if rng.random() < 0.4 or not data:
            return data
        b = bytearray(data)
        for _ in range(rng.randrange(1, 6)):
            stats.mutations += 1
            m = rng.random()
            if not b:
                break
            i = rng.randrange(0, len(b))
            if m < 0.35:
                b[i] ^= 1 << rng.randrange(8)
            elif m < 0.5:
                b[i] = rng.getrandbits(8)
            elif m < 0.62:
                # A bogus u32 (a length, most likely) anywhere.
                b[i:i + 4] = u32(rng.choice([0, 1, 4095, 4097, 1 << 25, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF,
                                             rng.getrandbits(32)]))
            elif m < 0.72:
                # Wrong magic: break an IHAVEOPT or a request magic.
                for magic in (struct.pack(">Q", IHAVEOPT), u32(REQUEST_MAGIC)):
                    j = b.find(magic, rng.randrange(0, len(b)))
                    if j >= 0:
                        b[j + rng.randrange(len(magic))] ^= 0xFF
                        break
            elif m < 0.82:
                del b[i:i + rng.randrange(1, 64)]
            elif m < 0.92:
                b[i:i] = rng.randbytes(rng.randrange(1, 32))
            else:
                j = rng.randrange(0, len(b))
                b[i:i] = b[j:j + rng.randrange(1, 256)]
        return bytes(b)


def drain(sock, limit, until):
    """Reads what the server sends until EOF, an error, `limit` bytes or `until`; the byte count."""
    got = 0
    while got < limit:
        left = until - time.monotonic()
        if left <= 0:
            break
        r, _, _ = select.select([sock], [], [], left)
        if not r:
            break
        try:
            chunk = sock.recv(1 << 20)
        except (BlockingIOError, InterruptedError):
            continue
        except OSError:
            break
        if not chunk:
            break
        got += len(chunk)
    return got


def send_all(sock, data, until):
    """Sends `data` unless the server stops reading or hangs up; False then."""
    view = memoryview(data)
    while view:
        left = until - time.monotonic()
        if left <= 0:
            return False
        _, w, _ = select.select([], [sock], [], left)
        if not w:
            return False
        try:
            n = sock.send(view)
        except (BlockingIOError, InterruptedError):
            continue
        except OSError:
            return False
        view = view[n:]
    return True


def fuzz_connection(path, gen, rng, stats, hung):
    frames = [0]
    data = gen.mutate(b"".join(gen.stream(frames)), stats)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.setblocking(False)
    try:
        s.connect(path)
    except (BlockingIOError, InterruptedError):
        pass
    except OSError as e:
        s.close()
        raise Failure(f"cannot connect to {path}: {e}")
    stats.connections += 1
    stats.frames += frames[0]
    deadline = time.monotonic() + 2.0
    # Some clients send before reading the greeting; most read it first.
    if rng.random() < 0.8:
        drain(s, 18, time.monotonic() + 1.0)
    ending = rng.random()
    cut = len(data) if ending < 0.7 else rng.randrange(0, len(data) + 1)
    pos = 0
    while pos < cut:
        n = min(cut - pos, rng.choice([1, 7, 16, 28, 512, 65536, 1 << 20]))
        if not send_all(s, data[pos:pos + n], deadline):
            stats.refused += 1
            break
        pos += n
        stats.bytes += n
        if rng.random() < 0.3:
            drain(s, MAX_DRAIN, time.monotonic() + 0.001)
    if ending < 0.7:
        # The whole stream, then our end of it: the server reaches EOF and closes.
        try:
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        drain(s, MAX_DRAIN, time.monotonic() + 0.5)
        s.close()
    elif ending < 0.95:
        # Abruptly mid-stream (a truncated payload, header or option), sometimes with a RST.
        stats.abrupt += 1
        if rng.random() < 0.5:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    else:
        # Left hanging mid-stream: the server's handshake limit or our later close ends it.
        stats.hung += 1
        hung.append(s)
        if len(hung) > 24:
            hung.pop(0).close()


def pattern(seed, length):
    return random.Random(seed).randbytes(length)


class Reference:
    """The libnbd client and the model of what the reference export holds."""

    def __init__(self, args, rng, stats):
        self.args, self.rng, self.stats = args, rng, stats
        self.model = bytearray(SIZE)
        self.ranges = []   # (offset, length) written

    def handle(self, path, export):
        h = nbd.NBD()
        h.set_export_name(export)
        h.connect_unix(path)
        return h

    def verify_step(self):
        h = self.handle(self.args.ref_socket, self.args.ref_export)
        try:
            if h.get_size() != SIZE:
                raise Failure(f"reference export size {h.get_size()}, expected {SIZE}")
            length = self.rng.choice([4096, 8192, 65536, 1000, 3 * 4096 + 17])
            offset = self.rng.randrange(0, (SIZE - length) // 512) * 512
            data = pattern(self.rng.getrandbits(64), length)
            h.pwrite(data, offset)
            self.model[offset:offset + length] = data
            self.ranges.append((offset, length))
            self.check(h, offset, length, "just written")
            if len(self.ranges) > 1:
                o, n = self.rng.choice(self.ranges)
                self.check(h, o, n, "written earlier")
            self.stats.verifications += 1
        finally:
            h.shutdown()
        # The attacked export still negotiates and serves.
        h = self.handle(self.args.socket, self.args.export)
        try:
            h.pread(4096, self.rng.randrange(0, SIZE // 4096) * 4096)
            self.stats.liveness += 1
        finally:
            h.shutdown()

    def check(self, h, offset, length, what):
        got = h.pread(length, offset)
        if got != bytes(self.model[offset:offset + length]):
            bad = next(i for i in range(length) if got[i] != self.model[offset + i])
            raise Failure(f"pattern {what} at {offset}+{length} differs from byte {offset + bad} on")
        self.stats.pattern_bytes += length

    def final(self):
        h = self.handle(self.args.ref_socket, self.args.ref_export)
        try:
            for o, n in self.ranges:
                self.check(h, o, n, "in the final pass")
        finally:
            h.shutdown()


def wait_ready(notify, proc, timeout):
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        if proc.poll() is not None:
            return False
        r, _, _ = select.select([notify], [], [], 0.5)
        if r and b"READY=1" in notify.recv(4096):
            return True
    return False


def stats_update(dirs, poke, timeout=5.0):
    """True once some mm_stat/io_stat under `dirs` changes after `poke()`."""
    def snapshot():
        out = {}
        for d in dirs:
            for f in ("mm_stat", "io_stat"):
                try:
                    with open(os.path.join(d, f)) as fh:
                        out[(d, f)] = fh.read()
                except OSError:
                    out[(d, f)] = None
        return out
    before = snapshot()
    if None in before.values():
        return False
    poke()
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        if snapshot() != before:
            return True
        select.select([], [], [], 0.05)   # the stats interval is 0.2 s: poll a few times per interval
    return False


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--binary", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".build", "debug", "zramnbd"))
    p.add_argument("--socket", help="fuzz this running daemon's NBD socket instead of starting one")
    p.add_argument("--export", default="zram0")
    p.add_argument("--ref-socket", help="the reference device's socket (default: --socket)")
    p.add_argument("--ref-export", help="the reference device's export (default: --export)")
    p.add_argument("--stats-dir", action="append", default=[], help="stats directory to watch (repeatable)")
    p.add_argument("--pid", type=int, help="the running daemon's pid (with --socket)")
    p.add_argument("--duration", type=float, default=15.0, help="seconds to fuzz (default 15)")
    p.add_argument("--iterations", type=int, default=0, help="stop after this many connections (0 = by duration)")
    p.add_argument("--verify-every", type=int, default=50, help="reference check every K connections")
    p.add_argument("--seed", type=int, default=None)
    args = p.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().getrandbits(48)
    print(f"socket-fuzz.py: seed {seed} (reproduce with --seed {seed})", flush=True)
    rng = random.Random(seed)
    stats = Stats()

    proc = tmp = None
    if args.socket is None:
        tmp = tempfile.TemporaryDirectory(prefix="socket-fuzz.")
        d = tmp.name
        args.socket, args.export = os.path.join(d, "zram0.sock"), "zram0"
        args.ref_socket, args.ref_export = os.path.join(d, "zramref.sock"), "zramref"
        args.stats_dir = [os.path.join(d, "zram0"), os.path.join(d, "zramref")]
        conf = os.path.join(d, "zramnbd.conf")
        with open(conf, "w") as f:
            f.write(f"[zram0]\nzram-size = {SIZE >> 20}\nsocket = {args.socket}\nstats-dir = {args.stats_dir[0]}\n\n"
                    f"[zramref]\nzram-size = {SIZE >> 20}\nsocket = {args.ref_socket}\nstats-dir = {args.stats_dir[1]}\n\n"
                    f"[zramnbd]\ncontrol-socket = {os.path.join(d, 'control.sock')}\nstats-interval = 0.2\n"
                    "lock-memory = no\nhandshake-limit = 2\n")
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(os.path.join(d, "notify.sock"))
        log = open(os.path.join(d, "daemon.log"), "w+")
        proc = subprocess.Popen([args.binary, "serve", "--config", conf], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=log, env=dict(os.environ, NOTIFY_SOCKET=os.path.join(d, "notify.sock")))
        if not wait_ready(notify, proc, 30):
            proc.kill()
            log.seek(0)
            print(f"socket-fuzz.py: FAIL: the daemon did not get ready:\n{log.read()[-3000:]}")
            return 1
    args.ref_socket = args.ref_socket or args.socket
    args.ref_export = args.ref_export or args.export

    def alive():
        if proc is not None:
            return proc.poll() is None
        if args.pid is not None:
            try:
                os.kill(args.pid, 0)
            except OSError:
                return False
        return True

    gen = Generator(rng, args.export)
    ref = Reference(args, rng, stats)
    hung = []
    failure = None
    start = time.monotonic()
    i = 0
    try:
        while True:
            if args.iterations and i >= args.iterations:
                break
            if not args.iterations and time.monotonic() - start >= args.duration:
                break
            fuzz_connection(args.socket, gen, rng, stats, hung)
            i += 1
            if i % args.verify_every == 0:
                if not alive():
                    raise Failure(f"the daemon died after {i} connections")
                ref.verify_step()
        for s in hung:
            s.close()
        hung.clear()
        if not alive():
            raise Failure("the daemon died")
        ref.verify_step()
        # The stats files follow new I/O: a write to a page never written on each device.
        if args.stats_dir:
            def poke():
                for path, export in ((args.socket, args.export), (args.ref_socket, args.ref_export)):
                    h = ref.handle(path, export)
                    try:
                        h.trim(SIZE, 0) if path != args.ref_socket else None
                        h.pwrite(rng.randbytes(4096), SIZE - 4096)
                    finally:
                        h.shutdown()
                ref.model[SIZE - 4096:] = bytes(4096)   # unknown now; the final pass skips it
            ref.ranges = [(o, n) for o, n in ref.ranges if o + n <= SIZE - 4096]
            if not stats_update(args.stats_dir, poke):
                raise Failure(f"the stats files in {', '.join(args.stats_dir)} did not update")
        ref.final()
        if not alive():
            raise Failure("the daemon died during the final checks")
    except (Failure, nbd.Error) as e:
        failure = f"{type(e).__name__}: {e}"
    except Exception as e:   # a bug in this script: still report it and stop the daemon below
        traceback.print_exc()
        failure = f"socket-fuzz.py itself failed: {type(e).__name__}: {e}"
    finally:
        for s in hung:
            s.close()
    elapsed = time.monotonic() - start
    print(f"socket-fuzz.py: {stats.connections} connections, {stats.frames} frames, {stats.bytes} bytes, "
          f"{stats.mutations} mutations, {stats.abrupt} abrupt closes, {stats.hung} left hanging, "
          f"{stats.refused} refused mid-send; {stats.verifications} verifications "
          f"({stats.pattern_bytes} pattern bytes read back), {stats.liveness} liveness checks, "
          f"{len(ref.ranges)} patterns in the final pass; {elapsed:.1f} s", flush=True)
    if proc is not None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                rc = proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = "hung on SIGTERM"
            if rc != 0 and failure is None:
                failure = f"the daemon did not stop cleanly: {rc}"
        else:
            failure = failure or f"the daemon exited: {proc.returncode}"
        if failure:
            log.seek(0)
            print(f"daemon log (tail):\n{log.read()[-3000:]}")
    if failure:
        print(f"socket-fuzz.py: FAIL (seed {seed}): {failure}")
        return 1
    print("socket-fuzz.py: PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
