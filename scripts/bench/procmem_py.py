#!/usr/bin/python3
"""A python program that holds realistic data in memory, for the process-memory corpus.

Usage: procmem_py.py TARGET_RSS_BYTES
Builds records, indexes, text and numbers out of real text on this machine until its
resident set reaches the target, prints "ready" and waits for stdin to close. corpus.py
then dumps its private memory: the pages swap would see.
"""
import hashlib
import os
import random
import sys


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def words_from_sources(limit):
    """Identifiers and words of the python standard library: real text, real vocabulary."""
    words = []
    root = "/usr/lib/python3.11"
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if not name.endswith(".py"):
                continue
            try:
                with open(os.path.join(dirpath, name), encoding="utf-8", errors="replace") as f:
                    text = f.read()
            except OSError:
                continue
            for token in text.replace("(", " ").replace(")", " ").replace(".", " ").split():
                if token.isidentifier():
                    words.append(token)
            if len(words) >= limit:
                return words
    return words


def main():
    target = int(sys.argv[1])
    rng = random.Random(6)
    words = words_from_sources(400_000)
    lines = []            # text lines, as a log or document store holds them
    records = []          # row objects, as an ORM or a JSON API holds them
    by_tag = {}           # an index: tag -> list of record ids
    counts = {}           # word frequencies
    series = []           # numeric time series
    digests = {}          # content hashes -> names (caches, dedup tables)
    n = 0
    while rss_bytes() < target:
        for _ in range(5000):
            first, last = rng.choice(words), rng.choice(words)
            tags = rng.sample(words[:2000], 3)
            rec = {
                "id": n,
                "name": f"{first.capitalize()} {last.capitalize()}",
                "email": f"{first.lower()}.{last.lower()}@example.org",
                "score": round(rng.random() * 100, 2),
                "visits": rng.randrange(10_000),
                "tags": tags,
                "created": f"2024-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}T"
                           f"{rng.randrange(24):02d}:{rng.randrange(60):02d}:00Z",
                "active": rng.random() < 0.8,
            }
            records.append(rec)
            for t in tags:
                by_tag.setdefault(t, []).append(n)
            start = rng.randrange(len(words) - 12)
            line = " ".join(words[start:start + rng.randrange(4, 12)])
            lines.append(line)
            for w in line.split():
                counts[w] = counts.get(w, 0) + 1
            series.append((n, rng.gauss(50.0, 12.0), rng.randrange(1 << 20)))
            if n % 4 == 0:
                digests[hashlib.sha1(line.encode()).hexdigest()] = rec["name"]
            n += 1
    print("ready", n, flush=True)
    sys.stdin.read()      # hold the data until the dumper is done
    return len(records) + len(by_tag) + len(counts) + len(series) + len(digests)


if __name__ == "__main__":
    main()
