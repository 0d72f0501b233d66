#!/usr/bin/python3
"""Build (or reuse) the benchmark corpora, each a page-aligned file of a whole number of MiB.

Usage: corpus.py CACHE_DIR quick|full
Prints one line per corpus: NAME <tab> PATH <tab> BYTES <tab> DESCRIPTION.

  ext4     an ext4 image made with `mkfs.ext4 -d` from system directories (text, headers,
           binaries, libraries, docs), free space included, as a file system holds it
  procmem  the private resident memory of real running programs (python3 and node holding
           records, indexes, strings, numbers): the pages swap would see
  random   incompressible pages (seeded, repeatable): every page is a huge page in zram
  same     same-filled pages (zeros and repeated words): zram stores none of them

Files are cached in CACHE_DIR by name, size and recipe VERSION and written atomically (tmp +
rename), so a killed build never leaves a half corpus behind; concurrent builders (a benchmark
and the test suite's --quick run) serialise on CACHE_DIR/lock.
"""
import fcntl
import ctypes
import os
import random
import shutil
import signal
import struct
import subprocess
import sys

VERSION = "v2"  # change when a recipe changes, so stale caches are ignored
PAGE = 4096
MIB = 1 << 20
HERE = os.path.dirname(os.path.abspath(__file__))

SIZES = {  # MiB
    "quick": {"ext4": 32, "procmem": 24, "random": 8, "same": 8},  # procmem: python only
    "full": {"ext4": 256, "procmem": 416, "random": 64, "same": 64},  # procmem: sum of RSS targets
}

EXT4_SOURCES = ["/usr/lib/python3.11", "/usr/include", "/usr/bin", "/usr/share/doc",
                "/opt/swift/usr/lib/swift/linux", "/usr/lib/x86_64-linux-gnu", "/usr/share/locale"]


def log(msg):
    print(f"corpus: {msg}", file=sys.stderr, flush=True)


def die_with_parent():
    """Children die with us: a killed benchmark leaves no data-holding programs behind."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


# ---------------------------------------------------------------- ext4

def stage_tree(staging, budget):
    """Copy files from each source directory until its share of the budget is used.

    Copies, not hard links: a link would change the system files' ctime.
    """
    sources = [d for d in EXT4_SOURCES if os.path.isdir(d)]
    share = budget // len(sources)
    for src in sources:
        used = 0
        dst_root = os.path.join(staging, src.strip("/").replace("/", "_"))
        for dirpath, dirnames, filenames in os.walk(src):
            dirnames.sort()
            for name in sorted(filenames):
                p = os.path.join(dirpath, name)
                try:
                    st = os.lstat(p)
                except OSError:
                    continue
                if not os.path.isfile(p) or os.path.islink(p):
                    continue
                cost = (st.st_size + PAGE - 1) // PAGE * PAGE + PAGE  # data blocks + metadata guess
                if st.st_size > share // 4 or used + cost > share:
                    continue
                d = os.path.join(dst_root, os.path.relpath(dirpath, src))
                os.makedirs(d, exist_ok=True)
                try:
                    shutil.copyfile(p, os.path.join(d, name))
                except OSError:
                    continue
                used += cost
            if used >= share * 0.98:
                break


def build_ext4(path, size):
    staging = path + ".staging"
    budget = int(size * 0.80)
    env = dict(os.environ, E2FSPROGS_FAKE_TIME="1700000000")  # repeatable timestamps
    while True:
        shutil.rmtree(staging, ignore_errors=True)
        os.makedirs(staging)
        try:
            stage_tree(staging, budget)
            if os.path.exists(path + ".tmp"):
                os.unlink(path + ".tmp")
            r = subprocess.run(
                ["mkfs.ext4", "-q", "-F", "-b", "4096", "-L", "zramnbd-bench",
                 "-U", "6a3f3a8e-6b8e-4b5e-9d59-2c1f0c0ffee6",
                 "-E", "hash_seed=6a3f3a8e-6b8e-4b5e-9d59-2c1f0c0ffee7,root_owner=0:0",
                 "-d", staging, path + ".tmp", str(size // 1024) + "k"],
                env=env, stdout=sys.stderr, stderr=subprocess.PIPE, text=True)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if r.returncode == 0:
            os.rename(path + ".tmp", path)
            return
        if budget < size // 4:
            raise SystemExit(f"corpus: mkfs.ext4 -d failed: {r.stderr.strip()}")
        budget = int(budget * 0.9)  # the tree did not fit (metadata): try with less
        log(f"ext4: tree too big, retrying with {budget // MIB} MiB of files")


# ---------------------------------------------------------------- process memory

def dump_private_memory(pid, out):
    """Append every resident anonymous page of pid's private writable mappings to out."""
    regions = []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split()
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            perms = parts[1]
            name = parts[5] if len(parts) > 5 else ""
            if perms[1] == "w" and perms[3] == "p" and name not in ("[vvar]", "[vdso]", "[vsyscall]"):
                regions.append((lo, hi))
    pm = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
    mem = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    written = 0
    try:
        for lo, hi in regions:
            n = (hi - lo) // PAGE
            entries = os.pread(pm, n * 8, lo // PAGE * 8)
            run = None  # [first page index, count] of consecutive pages to copy
            for i, (e,) in enumerate(struct.iter_unpack("<Q", entries)):
                # present or swapped, and not a file page (clean file pages are never swapped)
                anon = (e >> 63 | e >> 62) & 1 and not (e >> 61) & 1
                if anon and run and run[0] + run[1] == i:
                    run[1] += 1
                    continue
                if run:
                    written += copy_pages(mem, lo, run, out)
                run = [i, 1] if anon else None
            if run:
                written += copy_pages(mem, lo, run, out)
    finally:
        os.close(pm)
        os.close(mem)
    return written


def copy_pages(mem, base, run, out):
    first, count = run
    done = 0
    while done < count:
        chunk = min(count - done, 4096)
        try:
            data = os.pread(mem, chunk * PAGE, base + (first + done) * PAGE)
        except OSError:
            data = b""
        if len(data) != chunk * PAGE:  # a page vanished under us (guard page, race): skip it
            data = data[: len(data) // PAGE * PAGE]
        out.write(data)
        done += chunk
    return count


def run_and_dump(argv, out):
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                         preexec_fn=die_with_parent)
    try:
        line = p.stdout.readline()
        if not line.startswith("ready"):
            raise SystemExit(f"corpus: {argv[0]} did not get ready: {line!r}")
        os.kill(p.pid, signal.SIGSTOP)  # a still picture of its memory
        try:
            n = dump_private_memory(p.pid, out)
        finally:
            os.kill(p.pid, signal.SIGCONT)
        p.stdin.close()
        p.wait(timeout=30)
        return n
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def java_program(cache):
    """argv of the compiled ProcMem, or None without a JDK (source launch would hold javac too)."""
    if not (shutil.which("java") and shutil.which("javac")):
        return None
    classes = os.path.join(cache, "java-classes")
    r = subprocess.run(["javac", "-d", classes, os.path.join(HERE, "ProcMem.java")],
                       stdout=sys.stderr, stderr=sys.stderr)
    if r.returncode != 0:
        return None
    return ["java", "-Xmx1g", "-cp", classes, "ProcMem"]


def build_procmem(path, size):
    """Three runtimes (python3, node, java), each to its share of SIZE as resident set size.

    node and the JVM hold 45-85 MiB before they allocate anything: the quick corpus is python only.
    """
    programs = [(["/usr/bin/python3", os.path.join(HERE, "procmem_py.py")], 0.4)]
    if size > 64 * MIB:
        node = shutil.which("node") or shutil.which("nodejs")
        if node:
            programs.append(([node, os.path.join(HERE, "procmem_node.js")], 0.27))
        else:
            log("procmem: node not found: left out")
        java = java_program(os.path.dirname(path))
        if java:
            programs.append((java, 0.33))
        else:
            log("procmem: no JDK (java, javac): left out")
    total = sum(share for _, share in programs)
    programs = [(argv, share / total) for argv, share in programs]
    tmp = path + ".tmp"
    names = " + ".join(os.path.basename(argv[0]) for argv, _ in programs)
    with open(path + ".desc", "w") as f:  # which programs, for the report
        f.write(f"private memory of running programs ({names}) holding records, indexes, text")
    with open(tmp, "wb") as out:
        for argv, share in programs:
            pages = run_and_dump(argv + [str(int(size * share))], out)
            log(f"procmem: {os.path.basename(argv[-1])}: {pages} pages ({pages * PAGE // MIB} MiB)")
    whole = os.path.getsize(tmp) // MIB * MIB  # whole MiB, for dd bs=1M
    os.truncate(tmp, whole)
    os.rename(tmp, path)


# ---------------------------------------------------------------- synthetic

def build_random(path, size):
    rng = random.Random(6)
    with open(path + ".tmp", "wb") as f:
        for _ in range(size // MIB):
            f.write(rng.randbytes(MIB))
    os.rename(path + ".tmp", path)


def build_same(path, size):
    """Half zero pages, half pages of one repeated 8-byte word (what zram's same-page check finds)."""
    words = [0xFFFFFFFFFFFFFFFF, 0x0101010101010101, 0x00000000DEADBEEF, 1, 0x8000000000000000,
             0x5A5A5A5A5A5A5A5A, 0x00007F0000000000, 0x3FF0000000000000]
    rng = random.Random(6)
    with open(path + ".tmp", "wb") as f:
        for i in range(size // PAGE):
            w = 0 if i % 2 == 0 else rng.choice(words)
            f.write(struct.pack("<Q", w) * (PAGE // 8))
    os.rename(path + ".tmp", path)


BUILDERS = {
    "ext4": (build_ext4, "ext4 image (mkfs.ext4 -d of system dirs)"),
    "procmem": (build_procmem, "private memory of running programs"),
    "random": (build_random, "random pages"),
    "same": (build_same, "same-filled pages (1/2 zero)"),
}


def main():
    cache, mode = sys.argv[1], sys.argv[2]
    os.makedirs(cache, exist_ok=True)
    lock = open(os.path.join(cache, "lock"), "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    for f in os.listdir(cache):  # corpora of older recipes
        if f.endswith((".img", ".img.desc")) and f"-{VERSION}.img" not in f:
            os.unlink(os.path.join(cache, f))
    for name, mib in SIZES[mode].items():
        build, desc = BUILDERS[name]
        path = os.path.join(cache, f"{name}-{mib}M-{VERSION}.img")
        if not os.path.exists(path):
            log(f"building {name} ({mib} MiB) in {path}")
            build(path, mib * MIB)
        if os.path.exists(path + ".desc"):
            with open(path + ".desc") as f:
                desc = f.read().strip()
        print(f"{name}\t{path}\t{os.path.getsize(path)}\t{desc}", flush=True)


if __name__ == "__main__":
    main()
