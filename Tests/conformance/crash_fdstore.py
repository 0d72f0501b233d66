#!/usr/bin/python3
"""A crash under systemd keeps the data (issue 15). This script plays systemd's part: it listens
on a NOTIFY_SOCKET and keeps the descriptors the daemon stores (FDSTORE=1, FDNAME=), starts the
daemon with FDSTORE=N, kills it with SIGKILL in the middle of a libnbd write stream, and starts it
again with the stored descriptors as LISTEN_FDS / LISTEN_FDNAMES (what Restart=on-failure does).
Every acknowledged page must read back right and the device must take new I/O. Then a state that
cannot be trusted (a slot naming no object, with no request in flight) must make the daemon
refuse the device, loudly, instead of serving it. Prints PASS/FAIL lines; exits 1 on a FAIL.

  crash_fdstore.py --zramnbd BIN --dir DIR [--backing | --dictionary]

--backing: the device has a backing file, and the corpus is written back to it before the
stream starts, so the restart also rebuilds the backing file's bitmap from the slots.
--dictionary: the corpus is recompressed with zstd and a dictionary train-dict made (no file
holds it), so the dictionary's own memfd must be in the store for the restart to read the pages.
"""
import argparse, array, os, random, signal, socket, subprocess, sys, threading, time
import nbd

PAGE = 4096
p = argparse.ArgumentParser()
p.add_argument("--zramnbd", required=True)
p.add_argument("--dir", required=True)
p.add_argument("--backing", action="store_true")
p.add_argument("--dictionary", action="store_true")
a = p.parse_args()
D = a.dir
SOCK = D + "/zram0.sock"
URI = "nbd+unix:///zram0?socket=" + SOCK
failures = []

def check(ok, what):
    print(("PASS " if ok else "FAIL ") + what, flush=True)
    if not ok:
        failures.append(what)

notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
notify.bind(D + "/notify.sock")
store = {}        # FDNAME -> our descriptor, as systemd's fd store keeps them
messages = []

def pump(until, timeout=300):
    """Receives notifications (keeping stored fds) until one contains `until`; False on timeout."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        notify.settimeout(max(0.01, deadline - time.time()))
        try:
            msg, anc, _, _ = notify.recvmsg(4096, socket.CMSG_SPACE(64 * 4))
        except socket.timeout:
            return False
        fds = array.array("i")
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(data[:len(data) - len(data) % 4])
        text = msg.decode()
        messages.append(text)
        fields = dict(l.split("=", 1) for l in text.split("\n") if "=" in l)
        if fields.get("FDSTORE") == "1" and "FDNAME" in fields and fds:
            if fields["FDNAME"] in store:
                os.close(store[fields["FDNAME"]])
            store[fields["FDNAME"]] = fds[0]
            for extra in fds[1:]:
                os.close(extra)
        elif fields.get("FDSTOREREMOVE") == "1":
            fd = store.pop(fields.get("FDNAME", ""), None)
            if fd is not None:
                os.close(fd)
        else:
            for fd in fds:
                os.close(fd)
        if until in text:
            return True
    return False

# Puts the stored descriptors at 3, 4, ... in the child and names them, as systemd does.
LAUNCH = r'''
import os, sys
n = int(sys.argv[1]); fds = [int(x) for x in sys.argv[2:2 + n]]; names = sys.argv[2 + n:2 + 2 * n]; argv = sys.argv[2 + 2 * n:]
high = [os.dup(f) for f in fds]
for i, f in enumerate(high):
    if f != 3 + i:
        os.dup2(f, 3 + i, inheritable=True)
    os.set_inheritable(3 + i, True)     # a dup that landed on its own target stays close-on-exec otherwise
for f in high:
    if f >= 3 + n: os.close(f)
if n:
    os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS=str(n), LISTEN_FDNAMES=":".join(names))
os.execv(argv[0], argv)
'''

def start(tag):
    names = sorted(store)
    fds = [store[n] for n in names]
    argv = [a.zramnbd, "serve", "--device", "zram0", "--size", "64M", "--socket", SOCK, "--stats-dir", D + "/stats",
            "--control-socket", D + "/control.sock", "--no-mlock", "-v"] + (["--backing-dev", D + "/wb"] if a.backing else [])
    env = dict(os.environ, NOTIFY_SOCKET=D + "/notify.sock", FDSTORE="64")
    err = open(D + "/daemon-%s.stderr" % tag, "w")
    proc = subprocess.Popen(["/usr/bin/python3", "-c", LAUNCH, str(len(fds))] + [str(f) for f in fds] + names + argv,
                            pass_fds=fds, env=env, stderr=err, stdout=err)
    return proc

def log(tag):
    return open(D + "/daemon-%s.stderr" % tag).read()

# 1. A daemon that stores its state.
d = start("first")
check(pump("READY=1"), "the daemon is ready")
parts = sorted(n for n in store if n.startswith("zram0.zstate-"))
expected = ["arena"] + (["backing"] if a.backing else []) + ["header", "pagemap", "slots", "spec"]
check(parts == ["zram0.zstate-" + x for x in expected], "it stored its state in the fd store: %s" % parts)

# 2. A corpus, then a write stream killed in the middle.
h = nbd.NBD(); h.connect_uri(URI)
pages = h.get_size() // PAGE
shadow = [None] * pages            # the last acknowledged contents of each page (None: never written)
for i in range(0, pages, 3):
    data = ((b"%08d zram page " % i) * (PAGE // 16))[:PAGE]
    h.pwrite(data, i * PAGE)
    shadow[i] = data
def ctl(*words):
    """A ctl command, the notify socket read meanwhile as systemd reads it: a command that
    changes the state stores it again, more messages than the socket's queue holds."""
    p = subprocess.Popen([a.zramnbd, "ctl", "--control-socket", D + "/control.sock"] + list(words),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    while p.poll() is None:
        pump("\0", timeout=0.05)
    return p.stdout.read().strip()
if a.backing:
    ctl("zram0", "idle", "all")
    out = ctl("zram0", "writeback", "type=idle")
    check("wrote back" in out and not out.startswith("wrote back 0 "), "the corpus went to the backing file: %s" % out)
    bd_before = [l for l in ctl("zram0", "show").splitlines() if l.startswith("bd_count=")]
if a.dictionary:
    out = " ".join([ctl("zram0", "recomp-algorithm", "algo=zstd"), ctl("zram0", "train-dict", "size=16K", "sample=1000"),
                    ctl("zram0", "idle", "all"), ctl("zram0", "recompress", "type=idle")])
    check("trained a 16K zstd dictionary" in out and "recompressed 0 " not in out, "the corpus was recompressed with a trained dictionary: %s" % out)
    expected = sorted(expected + ["dict1"])
    parts = sorted(n for n in store if n.startswith("zram0.zstate-"))
    check(parts == ["zram0.zstate-" + x for x in expected], "the dictionary went into the fd store: %s" % parts)
in_flight = {}
def stream():
    r = random.Random(9)
    try:
        while True:
            i = r.randrange(pages)
            data = r.randbytes(PAGE) if i % 2 else bytes([i % 251]) * PAGE
            in_flight["page"], in_flight["data"] = i, data
            h.pwrite(data, i * PAGE)
            shadow[i] = data
            in_flight.clear()
            in_flight["done"] = in_flight.get("done", 0)
    except Exception as e:
        in_flight["error"] = str(e)
t = threading.Thread(target=stream)
t.start()
time.sleep(1.5)
d.send_signal(signal.SIGKILL)
d.wait()
t.join(10)
check("error" in in_flight, "the stream stopped with the daemon (%s)" % in_flight.get("error", "still running"))
pump("\0", timeout=0.5)   # whatever it sent before it died

# 3. Restarted with the stored descriptors: every acknowledged page reads back.
d = start("second")
check(pump("READY=1"), "the restarted daemon is ready")
out = log("second")
check("recovered after a crash" in out, "it recovered the device: %s" % [l for l in out.splitlines() if "recovered" in l or "NOT SERVED" in l])
h2 = nbd.NBD(); h2.connect_uri(URI)
bad = []
cut = in_flight.get("page")
for i in range(pages):
    got = h2.pread(PAGE, i * PAGE)
    want = shadow[i] if shadow[i] is not None else bytes(PAGE)
    if got != want:
        # The page being written at the kill may hold its old or new data, or read as zeros.
        if i == cut and got in (in_flight.get("data"), bytes(PAGE)):
            continue
        bad.append(i)
check(not bad, "every acknowledged page reads back right (%d pages; wrong: %s)" % (pages, bad[:10]))
h2.pwrite(b"\x6b" * PAGE * 4, 0)
check(h2.pread(PAGE * 4, 0) == b"\x6b" * PAGE * 4, "the recovered device takes new writes")
h2.shutdown()
check(len([n for n in store if n.startswith("zram0.")]) == len(expected), "the fd store still holds one state (%d entries)" % len(store))
if a.backing:
    bd_after = [l for l in ctl("zram0", "show").splitlines() if l.startswith("bd_count=")]
    check(bd_after and bd_after[0] != "bd_count=0", "the rebuilt backing bitmap counts its blocks: %s (before the crash %s)" % (bd_after, bd_before))

# 4. A state that cannot be explained by a crash: the handle of a page stored as an object
#    points nowhere while no request held its slot. The daemon must refuse the device.
d.send_signal(signal.SIGKILL)
d.wait()
pump("\0", timeout=0.5)
victim = next(i for i in range(4, pages) if shadow[i] is not None and shadow[i] != shadow[i][:8] * (PAGE // 8))
slots = store["zram0.zstate-slots"]
os.pwrite(slots, (0x7777_0000_0000_0001).to_bytes(8, "little"), victim * 16)
d = start("third")
check(pump("READY=1"), "the daemon starts without the torn device")
out = log("third")
check("zram0: NOT SERVED" in out and "refusing rather than serving wrong data" in out,
      "it refuses the torn device loudly: %s" % [l for l in out.splitlines() if "zram0" in l][-3:])
served = True
try:
    h3 = nbd.NBD(); h3.connect_uri(URI); h3.pread(PAGE, victim * PAGE)
except Exception:
    served = False
check(not served, "the torn device is not served (no zeros where pages were)")
d.send_signal(signal.SIGTERM)
d.wait(20)
print("%s: %d checks failed" % ("FAIL" if failures else "PASS", len(failures)))
sys.exit(1 if failures else 0)
