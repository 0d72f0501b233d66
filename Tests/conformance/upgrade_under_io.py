#!/usr/bin/python3
"""Upgrade under live I/O (issue 15), with libnbd: a corpus is written; a writer and a reader run
on their own open connections against a shadow copy; the daemon is upgraded (`ctl upgrade
--binary COPY`) while they run, UPGRADES times; the same connections go on with no error; then,
with I/O quiet, mm_stat is the same before and after one more upgrade, and the whole device's
sha256 equals the shadow's. Prints PASS/FAIL lines; exits 1 on any FAIL.

  upgrade_under_io.py --uri URI --zramnbd BIN --control SOCK --binary COPY [--upgrades N] [--mib M]
"""
import argparse, hashlib, os, random, subprocess, sys, threading, time
import nbd

PAGE = 4096
p = argparse.ArgumentParser()
p.add_argument("--uri", required=True)
p.add_argument("--zramnbd", required=True)
p.add_argument("--control", required=True)
p.add_argument("--binary", required=True)
p.add_argument("--upgrades", type=int, default=2)
p.add_argument("--mib", type=int, default=32)
a = p.parse_args()

failures = []
def check(ok, what):
    print(("PASS " if ok else "FAIL ") + what, flush=True)
    if not ok:
        failures.append(what)

def ctl(*words):
    r = subprocess.run([a.zramnbd, "ctl", "--control-socket", a.control] + list(words), capture_output=True, text=True, timeout=600)
    return r.returncode, r.stdout.strip(), r.stderr.strip()

def show():
    rc, out, err = ctl("zram0", "show")
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

pages = a.mib * 1024 * 1024 // PAGE
rng = random.Random(15)
shadow = bytearray(pages * PAGE)
# A corpus that compresses like memory: text-like pages, zero pages, random pages.
for i in range(pages):
    kind = i % 5
    if kind in (0, 1):
        words = b" ".join(rng.choice([b"zram", b"nbd", b"page", b"swap", b"kernel", b"0x%04x" % i]) for _ in range(900))
        shadow[i * PAGE:(i + 1) * PAGE] = (words * 2)[:PAGE]
    elif kind == 2:
        shadow[i * PAGE:(i + 1) * PAGE] = rng.randbytes(PAGE)
    # kinds 3, 4: zero
setup = nbd.NBD()
setup.connect_uri(a.uri)
for off in range(0, len(shadow), 1 << 20):
    setup.pwrite(bytes(shadow[off:off + (1 << 20)]), off)
setup.flush()
setup.shutdown()

writer_h = nbd.NBD(); writer_h.connect_uri(a.uri)
reader_h = nbd.NBD(); reader_h.connect_uri(a.uri)
lock = threading.Lock()
stop = threading.Event()
errors = []
counts = {"writes": 0, "reads": 0}
half = pages // 2   # the writer owns the first half, the reader checks the second

def writer():
    r = random.Random(1)
    try:
        while not stop.is_set():
            i = r.randrange(half)
            data = r.randbytes(PAGE) if i % 3 else bytes([i & 0xff]) * PAGE
            writer_h.pwrite(data, i * PAGE)
            with lock:
                shadow[i * PAGE:(i + 1) * PAGE] = data
            counts["writes"] += 1
    except Exception as e:
        errors.append("writer: %s" % e)

def reader():
    r = random.Random(2)
    try:
        while not stop.is_set():
            i = half + r.randrange(pages - half)
            got = reader_h.pread(PAGE, i * PAGE)
            if got != bytes(shadow[i * PAGE:(i + 1) * PAGE]):
                errors.append("reader: page %d differs" % i)
                return
            counts["reads"] += 1
    except Exception as e:
        errors.append("reader: %s" % e)

threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
for t in threads:
    t.start()
for n in range(a.upgrades):
    time.sleep(0.5)
    before = dict(counts)
    rc, out, err = ctl("upgrade", "--binary", a.binary)
    check(rc == 0 and "connection(s) resumed" in out, "upgrade %d under I/O: %s" % (n + 1, out or err))
    # Both go on (on a loaded machine that may take a while; an error ends the wait).
    deadline = time.time() + 120
    while time.time() < deadline and not errors and not (counts["writes"] > before["writes"] + 100 and counts["reads"] > before["reads"] + 100):
        time.sleep(0.05)
    check(counts["writes"] > before["writes"] and counts["reads"] > before["reads"],
          "upgrade %d: both connections went on (%d writes, %d reads so far)" % (n + 1, counts["writes"], counts["reads"]))
stop.set()
for t in threads:
    t.join()
check(not errors, "no I/O error on the open connections: %s" % (errors or "none"))

# Quiet: counters carry over exactly.
# mm_stat's, io_stat's and bd_stat's fields, and zramnbd's run counters.
keys = ["orig_data_size", "compr_data_size", "mem_used_total", "mem_limit", "mem_used_max", "same_pages",
        "pages_compacted", "huge_pages", "huge_pages_since", "failed_reads", "failed_writes", "notify_free",
        "bd_count", "bd_reads", "bd_writes", "writeback_runs", "recompress_runs", "recompressed_pages"]
s1 = show()
rc, out, err = ctl("upgrade", "--binary", a.binary)
check(rc == 0, "quiet upgrade: %s" % (out or err))
s2 = show()
check(all(k in s1 for k in keys), "ctl show has every counter")
changed = ["%s %s -> %s" % (k, s1.get(k), s2.get(k)) for k in keys if s1.get(k) != s2.get(k)]
check(not changed, "mm_stat, io_stat and bd_stat carried over unchanged (orig_data_size %s, mem_used_max %s): %s"
      % (s2.get("orig_data_size"), s2.get("mem_used_max"), changed or "all equal"))
# The writer's connection still works after the last upgrade, and the device matches the shadow.
writer_h.pwrite(b"\x5a" * PAGE, 0)
shadow[0:PAGE] = b"\x5a" * PAGE
h = hashlib.sha256()
for off in range(0, len(shadow), 1 << 20):
    h.update(reader_h.pread(min(1 << 20, len(shadow) - off), off))
check(h.hexdigest() == hashlib.sha256(shadow).hexdigest(), "whole-device sha256 equals the shadow's")
writer_h.shutdown()
reader_h.shutdown()
print("%s: %d checks failed" % ("FAIL" if failures else "PASS", len(failures)))
sys.exit(1 if failures else 0)
