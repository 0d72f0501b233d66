// A node program that holds realistic data in memory, for the process-memory corpus.
//
// Usage: node procmem_node.js TARGET_RSS_BYTES
// Builds objects, maps, strings and typed arrays out of real text on this machine until
// its resident set reaches the target, prints "ready" and waits for stdin to close.
// corpus.py then dumps its private memory: the pages swap would see.
'use strict';
const fs = require('fs');
const path = require('path');
const crypto = require('crypto');

const target = Number(process.argv[2]);

// Deterministic PRNG (mulberry32): the same data on every run of this machine.
let seed = 6;
function rnd() {
  seed |= 0; seed = (seed + 0x6D2B79F5) | 0;
  let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}
const pick = (a) => a[Math.floor(rnd() * a.length)];

// Words of real text: node's own bundled docs/sources if present, else C headers.
function collectWords(limit) {
  const words = [];
  const roots = ['/usr/share/nodejs', '/usr/include'];
  const walk = (dir) => {
    let entries;
    try { entries = fs.readdirSync(dir, { withFileTypes: true }); } catch { return; }
    entries.sort((a, b) => (a.name < b.name ? -1 : 1));
    for (const e of entries) {
      if (words.length >= limit) return;
      const p = path.join(dir, e.name);
      if (e.isDirectory()) { walk(p); continue; }
      if (!/\.(js|h|md|json)$/.test(e.name)) continue;
      let text;
      try { text = fs.readFileSync(p, 'utf8'); } catch { continue; }
      for (const m of text.matchAll(/[A-Za-z_][A-Za-z0-9_]{2,}/g)) words.push(m[0]);
    }
  };
  for (const r of roots) walk(r);
  return words;
}

const words = collectWords(300000);
const users = [];                 // row objects, like a web service's cache
const sessions = new Map();       // token -> session object
const index = new Map();          // word -> array of ids
const messages = [];              // text
const metrics = [];               // numeric samples in typed arrays
let n = 0;
while (process.memoryUsage().rss < target) {
  for (let i = 0; i < 5000; i++, n++) {
    const first = pick(words), last = pick(words);
    const user = {
      id: n,
      name: `${first} ${last}`,
      email: `${first.toLowerCase()}.${last.toLowerCase()}@example.com`,
      age: 18 + Math.floor(rnd() * 60),
      balance: Math.round(rnd() * 1e6) / 100,
      roles: rnd() < 0.1 ? ['admin', 'user'] : ['user'],
      lastLogin: new Date(1.7e12 + Math.floor(rnd() * 3e10)).toISOString(),
    };
    users.push(user);
    if (n % 3 === 0) {
      const token = crypto.createHash('sha1').update(user.email + n).digest('hex');
      sessions.set(token, { user: n, created: Date.now(), ip: `10.${n & 255}.${(n >> 8) & 255}.${n % 7}` });
    }
    const k = Math.floor(rnd() * (words.length - 10));
    const msg = words.slice(k, k + 3 + Math.floor(rnd() * 8)).join(' ');
    messages.push(msg);
    const w = pick(words);
    if (!index.has(w)) index.set(w, []);
    index.get(w).push(n);
  }
  const samples = new Float64Array(2048);
  for (let j = 0; j < samples.length; j++) samples[j] = 50 + 10 * Math.sin(j / 30) + rnd();
  metrics.push(samples);
}
process.stdout.write(`ready ${n}\n`);
process.stdin.resume();           // hold the data until the dumper closes stdin
process.stdin.on('end', () => process.exit(users.length + sessions.size + messages.length > 0 ? 0 : 1));
