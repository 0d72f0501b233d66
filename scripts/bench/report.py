#!/usr/bin/python3
"""Tables for scripts/bench.sh.

  report.py fio FILE.json        print "iops MBps p50_us p99_us" of the job's busy direction
  report.py table RESULTS.tsv    print the report: absolute numbers, ratios, issue 6 targets

RESULTS.tsv has one measurement a line: TARGET <tab> KEY <tab> VALUE (bench.sh writes it).
Ratios are always zramnbd / peer: for times, latencies and memory lower is better, for
throughput and IOPS higher is better.
"""
import json
import sys

TARGETS = ["kzram", "nbdkit-zstd", "nbdkit-sparse", "zramnbd-lz4", "zramnbd-zstd"]
HEAD = {"kzram": "kernel-lz4", "nbdkit-zstd": "nbdkit-zstd", "nbdkit-sparse": "nbdkit-sparse",
        "zramnbd-lz4": "zramnbd-lz4", "zramnbd-zstd": "zramnbd-zstd"}
RATIOS = [("zramnbd-lz4", "kzram", "lz4/kern"), ("zramnbd-lz4", "nbdkit-zstd", "lz4/nzstd"),
          ("zramnbd-lz4", "nbdkit-sparse", "lz4/sparse"), ("zramnbd-zstd", "kzram", "zstd/kern"),
          ("zramnbd-zstd", "nbdkit-zstd", "zstd/nzstd")]
MIB = 1 << 20
PAGE = 4096
REAL_CORPORA = ("ext4", "procmem")


def fio_summary(path):
    with open(path) as f:
        text = f.read()
    d = json.loads(text[text.index("{"):])  # fio may print warnings before the JSON
    job = d["jobs"][0]
    side = job["write"] if job["write"]["io_bytes"] > job["read"]["io_bytes"] else job["read"]
    pct = side.get("lat_ns", {}).get("percentile") or side.get("clat_ns", {}).get("percentile") or {}
    p50 = pct.get("50.000000", 0) / 1000
    p99 = pct.get("99.000000", 0) / 1000
    errors = job.get("error", 0)
    if errors:
        raise SystemExit(f"report.py: fio job failed with error {errors} ({path})")
    print(f"{side['iops']:.1f} {side['bw_bytes'] / 1e6:.1f} {p50:.1f} {p99:.1f}")


class Results:
    def __init__(self, path):
        self.v = {}
        self.notes = []
        self.info = []
        with open(path) as f:
            for line in f:
                parts = line.rstrip("\n").split("\t", 2)
                if len(parts) != 3:
                    continue
                t, k, val = parts
                if k == "note":
                    self.notes.append(f"{t}: {val}" if t != "-" else val)
                elif k.startswith("info."):
                    self.info.append((k[5:], val))
                else:
                    self.v[(t, k)] = val

    def num(self, t, k):
        try:
            return float(self.v[(t, k)])
        except (KeyError, ValueError):
            return None

    def has(self, prefix):
        return any(k.startswith(prefix) for (_, k) in self.v)

    def corpora(self):
        names = []
        for (t, k) in self.v:
            if t == "-" and k.startswith("corpus.") and k.endswith(".bytes"):
                names.append(k.split(".")[1])
        order = ["ext4", "procmem", "random", "same"]
        return sorted(set(names), key=lambda n: order.index(n) if n in order else 99)


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def deviation(a, b):
    """|a/b - 1|, where 0 against 0 (same-filled pages cost nothing) is no deviation."""
    if a is None or b is None:
        return None
    if b == 0:
        return 0.0 if a == 0 else float("inf")
    return abs(a / b - 1)


class Table:
    """Rows of (label, {target: value}); prints absolute values, then the zramnbd/peer ratios."""

    def __init__(self, title, unit_note, fmt, ratios=RATIOS):
        self.title, self.unit_note, self.fmt, self.ratios = title, unit_note, fmt, ratios
        self.rows = []

    def row(self, label, values, fmt=None):
        self.rows.append((label, values, fmt or self.fmt))

    def render(self, out):
        if not self.rows:
            return
        lw = max(22, max(len(r[0]) for r in self.rows) + 1)
        out.append(f"{self.title}  ({self.unit_note})")
        hdr = "".ljust(lw) + "".join(HEAD[t].rjust(14) for t in TARGETS) + "  |" + \
            "".join(name.rjust(11) for (_, _, name) in self.ratios)
        out.append(hdr)
        for label, values, fmt in self.rows:
            if all(values.get(t) is None for t in TARGETS):
                continue  # not measured in this mode (e.g. --quick)
            cells = "".join((fmt(values[t]) if values.get(t) is not None else "n/a").rjust(14)
                            for t in TARGETS)
            rs = "".join(fmt_ratio(ratio(values.get(a), values.get(b))).rjust(11)
                         for (a, b, _) in self.ratios)
            out.append(label.ljust(lw) + cells + "  |" + rs)
        out.append("")


def fmt_ratio(r):
    return "-" if r is None else f"{r:.2f}x"


def fmt_s(x):
    return f"{x:.3f}s"


def fmt_iops(x):
    return f"{x / 1000:.1f}k"


def fmt_us(x):
    return f"{x:.1f}us"


def fmt_mib(x):
    return f"{x / MIB:.1f}M"


def fmt_count(x):
    return f"{x:.0f}"


def fmt_mbs(x):
    return f"{x:.0f}MB/s"


class Verdicts:
    def __init__(self):
        self.lines = []

    def add(self, what, value, target_text, ok, detail=""):
        if value is None:
            shown, verdict = "n/a", "n/a"
        else:
            shown, verdict = value, ("PASS" if ok else "MISS")
        self.lines.append((what, shown, target_text, verdict, detail))

    def render(self, out):
        out.append("Targets of issue 6 (zramnbd lz4, chain 8; informational, from this one run)")
        w = max(len(x[0]) for x in self.lines) + 2
        for what, shown, tgt, verdict, detail in self.lines:
            out.append(f"  {what.ljust(w)}{shown.rjust(12)}  {tgt.ljust(16)}{verdict.ljust(5)} {detail}".rstrip())
        out.append("")


def table(path, only):
    r = Results(path)
    out = []
    out.append("zramnbd benchmark: zramnbd vs kernel zram and nbdkit memory, same run, same data")
    for k, val in r.info:
        out.append(f"  {k}: {val}")
    corpora = r.corpora()
    for c in corpora:
        b = r.num("-", f"corpus.{c}.bytes")
        out.append(f"  corpus {c}: {b / MIB:.0f} MiB, {r.v.get(('-', f'corpus.{c}.desc'), '')}")
    out.append("")
    want = lambda w: only in ("all", w)  # noqa: E731

    # 1. sequential write and read-back
    if want("seq") and r.has("seq."):
        t = Table("1. Sequential write / read-back of each corpus",
                  "seconds, lower is better; kernel: dd bs=1M direct, NBD: nbdcopy -S 0 --no-extents, 4 conns",
                  fmt_s)
        for c in corpora:
            for op in ("write", "read"):
                t.row(f"{c} {op}", {x: r.num(x, f"seq.{c}.{op}_s") for x in TARGETS})
        for op in ("write", "read"):
            t.row(f"all corpora {op}", {x: sum_or_none([r.num(x, f"seq.{c}.{op}_s") for c in corpora])
                                        for x in TARGETS})
        t.render(out)

    # 2. 4k random I/O, QD32
    if want("rand") and r.has("rand."):
        t = Table("2. fio 4k random I/O, QD32, compressible buffers (50%), after a prefill",
                  "IOPS, higher is better; NBD: fio nbd engine, kernel: libaio direct", fmt_iops)
        for jobs in (1, 2):
            for op in ("write", "read"):
                t.row(f"rand{op} {jobs} job{'s' if jobs > 1 else ''}",
                      {x: r.num(x, f"rand.{op}.j{jobs}.iops") for x in TARGETS})
        t.render(out)

    # 3. QD1 latency
    if want("latency") and r.has("lat."):
        t = Table("3. 4k QD1 latency (fio, total latency percentiles)",
                  "microseconds, lower is better; same = client and server pinned to CPU 0, "
                  "split = client CPU 0, server CPU 1", fmt_us)
        for pin in ("same", "split"):
            for op in ("read", "write"):
                for p in ("p50", "p99"):
                    t.row(f"rand{op} {pin} {p}", {x: r.num(x, f"lat.{op}.{pin}.{p}") for x in TARGETS})
        t.render(out)

    # 4. memory
    if want("memory") and r.has("mem."):
        t = Table("4. Memory after writing each corpus",
                  "MiB, lower is better; 'store' = mm_stat mem_used_total (kernel, zramnbd) or "
                  "RSS growth (nbdkit); 'RSS' = server VmRSS", fmt_mib)
        for c in corpora:
            store = {x: r.num(x, f"mem.{c}.mem_used") for x in ("kzram", "zramnbd-lz4", "zramnbd-zstd")}
            for x in ("nbdkit-zstd", "nbdkit-sparse"):
                a, b = r.num(x, f"mem.{c}.rss"), r.num(x, f"mem.{c}.rss0")
                store[x] = None if a is None or b is None else a - b
            t.row(f"{c} store", store)
            t.row(f"{c} RSS", {x: r.num(x, f"mem.{c}.rss") for x in TARGETS})
            t.row(f"{c} compr_data_size", {x: r.num(x, f"mem.{c}.compr") for x in TARGETS})
            t.row(f"{c} same_pages", {x: r.num(x, f"mem.{c}.same") for x in TARGETS}, fmt_count)
            t.row(f"{c} huge_pages", {x: r.num(x, f"mem.{c}.huge") for x in TARGETS}, fmt_count)
        t.render(out)

    # 5. scaling
    if want("scaling") and r.has("scale."):
        t = Table("5. Scaling with connections", "nbdcopy of the ext4 corpus in MB/s and fio 4k QD32 "
                  "in IOPS, higher is better; the kernel row uses fio jobs", fmt_mbs)
        for op in ("write", "read"):
            for c in (1, 2, 4):
                t.row(f"nbdcopy {op} {c} conn", {x: r.num(x, f"scale.{op}.c{c}") for x in TARGETS})
        for op in ("write", "read"):
            for j in (1, 2, 4):
                t.row(f"fio rand{op} {j} conn", {x: r.num(x, f"rand.{op}.j{j}.iops") for x in TARGETS},
                      fmt_iops)
        t.render(out)

    # 6. the pool alone
    pool = sorted(((int(k.split(".")[1]), v) for (t, k), v in r.v.items() if k.startswith("pool.")))
    if want("pool") and pool:
        out.append("6. zsmalloc port alone (zspool-bench, release; no compression, no NBD)")
        out.extend(f"  {line}" for _, line in pool)
        out.append("")

    # 7. transports
    if want("tls") and r.has("tls."):
        t = Table("7. Transports: unix socket, TCP 127.0.0.1, TCP with TLS (PSK, --tls=require)",
                  "nbdcopy of the ext4 corpus in MB/s, 4k random QD32 in IOPS (nbd-iops, libnbd aio: "
                  "fio's nbd engine cannot open TLS key files), higher is better", fmt_mbs)
        for tr in ("unix", "tcp", "tls"):
            for op in ("write", "read"):
                t.row(f"{tr} nbdcopy {op}", {x: r.num(x, f"tls.{tr}.{op}") for x in TARGETS})
        for tr in ("unix", "tcp", "tls"):
            for op in ("write", "read"):
                t.row(f"{tr} 4k rand{op}", {x: r.num(x, f"tls.{tr}.rand{op}") for x in TARGETS}, fmt_iops)
        t.render(out)

    if want("writeback") and r.has("wb."):
        out.append("8. Writeback (zramnbd-lz4, `idle all` then `writeback type=idle` of the whole corpus to a")
        out.append("   sparse file on this disk, O_DIRECT; 4k random reads at QD1 with fio, microseconds)")
        cols = [(c, m) for c in REAL_CORPORA for m in ("plain", "compressed", "packed")]
        out.append("   plain: pages as they read; compressed: zram 7.0's compressed_writeback, one object a")
        out.append("   block; packed: compressed objects packed into shared blocks (zramnbd's own)")
        out.append("".ljust(34) + "".join(f"{c} {m}".rjust(17) for c, m in cols))
        rows = [("pages written back", "pages", "{:.0f}"), ("writeback MB/s", "mbs", "{:.1f}"),
                ("pool MiB freed per MiB written", "freed_per_mib", "{:.3f}"),
                ("RSS MiB freed per MiB written", "rss_freed_per_mib", "{:.3f}"),
                ("backing bytes per page", "backing_per_page", "{:.0f}"),
                ("read p50 in RAM", "ram.p50", "{:.1f}"), ("read p99 in RAM", "ram.p99", "{:.1f}"),
                ("read p50 during writeback", "during.p50", "{:.1f}"), ("read p99 during writeback", "during.p99", "{:.1f}"),
                ("read p50 written back", "back.p50", "{:.1f}"), ("read p99 written back", "back.p99", "{:.1f}")]
        for label, key, fmt in rows:
            cells = []
            for c, m in cols:
                v = r.num("zramnbd-lz4", f"wb.{c}.{m}.{key}")
                cells.append((fmt.format(v) if v is not None else "n/a").rjust(17))
            out.append(label.ljust(34) + "".join(cells))
        out.append("")

    if want("recompress") and r.has("rc."):
        out.append("9. Recompression (zramnbd, one device per line; MiB of mm_stat mem_used_total, seconds,")
        out.append("   4k random read p50 at QD1 over the whole corpus in microseconds; nbdkit: RSS growth)")
        cols = [c for c in REAL_CORPORA if r.num("zramnbd-lz4", f"rc.{c}.primary.lz4.mem") is not None
                or r.num("nbdkit-zstd", f"rc.{c}.nbdkit.rss_growth") is not None]
        out.append("".ljust(50) + "".join(c.rjust(12) for c in cols))

        def line(label, target, key, fmt):
            cells = []
            for c in cols:
                v = r.num(target, f"rc.{c}.{key}")
                cells.append((fmt(v) if v is not None else "n/a").rjust(12))
            out.append(label.ljust(50) + "".join(cells))

        mib = lambda v: f"{v / MIB:.1f}"  # noqa: E731
        for a in ("lz4", "lz4hc", "lzo", "lzo-rle", "zstd", "deflate"):
            if any(r.num("zramnbd-lz4", f"rc.{c}.primary.{a}.mem") is not None for c in cols):
                line(f"primary {a}: mem_used_total", "zramnbd-lz4", f"primary.{a}.mem", mib)
                line(f"primary {a}: write s", "zramnbd-lz4", f"primary.{a}.write_s", lambda v: f"{v:.2f}")
        for mode, what in (("zstd", "zstd-3"), ("dict", "zstd-3 + train-dict")):
            line(f"lz4 -> {what}: mem_used_total", "zramnbd-lz4", f"{mode}.mem", mib)
            line(f"lz4 -> {what}: mem_used_total compacted", "zramnbd-lz4", f"{mode}.mem_compacted", mib)
            if mode == "dict":
                line(f"lz4 -> {what}: train-dict s", "zramnbd-lz4", f"{mode}.train_s", lambda v: f"{v:.2f}")
            line(f"lz4 -> {what}: recompress s", "zramnbd-lz4", f"{mode}.recompress_s", lambda v: f"{v:.2f}")
            line(f"lz4 -> {what}: pages recompressed", "zramnbd-lz4", f"{mode}.pages", lambda v: f"{v:.0f}")
            line(f"lz4 -> {what}: RSS growth (compacted)", "zramnbd-lz4", f"{mode}.rss_growth", mib)
            line(f"lz4 -> {what}: read p50 before (lz4)", "zramnbd-lz4", f"{mode}.before.p50", lambda v: f"{v:.1f}")
            line(f"lz4 -> {what}: read p50 after", "zramnbd-lz4", f"{mode}.after.p50", lambda v: f"{v:.1f}")
        line("nbdkit memory allocator=zstd: RSS growth", "nbdkit-zstd", "nbdkit.rss_growth", mib)
        out.append("")

    verdicts(r, corpora).render(out)
    if r.notes:
        out.append("Notes")
        out.extend(f"  - {n}" for n in r.notes)
        out.append("")
    print("\n".join(out))


def sum_or_none(xs):
    return None if not xs or any(x is None for x in xs) else sum(xs)


def max_or_none(xs):
    return None if not xs or any(x is None for x in xs) else max(xs)


def verdicts(r, corpora):
    v = Verdicts()
    L, Z, K, NZ, NS = "zramnbd-lz4", "zramnbd-zstd", "kzram", "nbdkit-zstd", "nbdkit-sparse"
    real = [c for c in corpora if c in REAL_CORPORA]

    def total(t, key):
        return sum_or_none([r.num(t, f"seq.{c}.{key}") for c in corpora])

    x = ratio(total(L, "write_s"), total(K, "write_s"))
    v.add("sequential write time / kernel zram", f"{x:.2f}x" if x else None, "<= 1.00x", x and x <= 1.0)
    x = ratio(total(L, "read_s"), total(K, "read_s"))
    v.add("read-back time / kernel zram", f"{x:.2f}x" if x else None, "<= 1.25x", x and x <= 1.25)

    def worst_iops(op, peer, fn):  # over the job counts measured (--quick runs 1 job only)
        rs = [ratio(r.num(L, f"rand.{op}.j{j}.iops"), r.num(peer, f"rand.{op}.j{j}.iops")) for j in (1, 2)]
        rs = [q for q in rs if q is not None]
        return fn(rs) if rs else None

    x = worst_iops("write", NZ, min)
    v.add("4k randwrite IOPS / nbdkit zstd", f"{x:.1f}x" if x else None, ">= 20x", x and x >= 20,
          "worse of 1 and 2 jobs")
    x = worst_iops("write", NS, min)
    v.add("4k randwrite IOPS / nbdkit sparse", f"{x:.2f}x" if x else None, ">= 0.90x", x and x >= 0.9,
          "worse of 1 and 2 jobs")
    x = worst_iops("read", NS, min)
    v.add("4k randread IOPS / nbdkit sparse", f"{x:.2f}x" if x else None, ">= 1.00x", x and x >= 1.0,
          "worse of 1 and 2 jobs")

    x = max_or_none([deviation(r.num(L, f"mem.{c}.mem_used"), r.num(K, f"mem.{c}.mem_used"))
                     for c in corpora])
    v.add("mem_used_total vs kernel zram", f"{x * 100:.3f}%" if x is not None else None, "within 0.5%",
          x is not None and x <= 0.005, "largest deviation over the corpora")

    budgets = []
    for c in corpora:
        rss, used = r.num(L, f"mem.{c}.rss"), r.num(L, f"mem.{c}.mem_used")
        pages = (r.num("-", f"corpus.{c}.bytes") or 0) / PAGE
        budgets.append(None if rss is None or used is None else rss / (used + 24 * pages + 64 * MIB))
    x = max_or_none(budgets)
    v.add("daemon RSS / (mem_used + 24 B/page + 64 MiB)", f"{x:.2f}x" if x else None, "<= 1.00x",
          x and x <= 1.0, "largest over the corpora")

    x = max_or_none([ratio(r.num(Z, f"mem.{c}.mem_used"), r.num(K, f"mem.{c}.mem_used")) for c in real])
    v.add("zstd mem_used_total / kernel lz4's", f"{x:.2f}x" if x else None, "<= 0.80x", x and x <= 0.8,
          "real-data corpora (" + ",".join(real) + ")")

    growth = []
    for c in real:
        a, b = r.num(NZ, f"mem.{c}.rss"), r.num(NZ, f"mem.{c}.rss0")
        growth.append(ratio(r.num(Z, f"mem.{c}.mem_used"), None if a is None or b is None else a - b))
    x = max_or_none(growth)
    v.add("zstd mem_used_total / nbdkit zstd RSS growth", f"{x:.2f}x" if x else None, "<= 1.10x",
          x and x <= 1.1, "real-data corpora")

    x = ratio(total(Z, "write_s"), total(L, "write_s"))
    v.add("zstd write time / zramnbd lz4's", f"{x:.2f}x" if x else None, "<= 3.00x", x and x <= 3.0)
    return v


def main():
    if len(sys.argv) >= 3 and sys.argv[1] == "fio":
        fio_summary(sys.argv[2])
    elif len(sys.argv) >= 3 and sys.argv[1] == "table":
        table(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "all")
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
