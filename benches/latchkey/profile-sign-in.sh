#!/usr/bin/env bash
# Profiles the service during the benchmark's sign-in slices: perf (Debian's linux-perf)
# samples the service process for 10 s with DWARF call graphs, inferno draws the flame
# graph, and the CPU split by thread and by crate is printed. Needs perf and
# `cargo install inferno`. Writes target/bench/sign-in.{folded,svg}.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=target/bench
mkdir -p "$out"
log="$out/profile-bench.log"
LATCHKEY_BENCH_ONLY=sign-in LATCHKEY_BENCH_PAIRS=3 cargo bench --locked --bench latchkey >"$log" 2>&1 &
bench=$!
for _ in $(seq 1 600); do grep -q "(1)+(2)" "$log" 2>/dev/null && break; sleep 1; done
sleep 4 # past the warm-up, into the slices
# The newest instance is the one the sign-in slices go to (connected to Postgres directly).
pid=$(pgrep -n -f "release/latchkey serve")
perf record -e cpu-clock -F 499 --call-graph dwarf,16384 -p "$pid" -o "$out/perf.data" -- sleep 10
wait "$bench"
perf script -i "$out/perf.data" 2>/dev/null | inferno-collapse-perf >"$out/sign-in.folded"
inferno-flamegraph --title "latchkey sign-in under load" <"$out/sign-in.folded" >"$out/sign-in.svg"
python3 - "$out/sign-in.folded" <<'PY'
import collections, sys
crates = [
    ("argon2", ["argon2::", "blake2"]),
    ("templates (askama)", ["askama"]),
    ("Postgres client (sqlx)", ["sqlx"]),
    ("sessions and cookies", ["tower_sessions", "session_cookie", "session_store", "hmac"]),
    ("HTTP (hyper, axum, tower)", ["hyper", "axum", "tower", "http::"]),
    ("tokio runtime", ["tokio::"]),
]
total, threads, split, leaves = 0, collections.Counter(), collections.Counter(), collections.Counter()
for line in open(sys.argv[1]):
    stack, n = line.rsplit(" ", 1)
    n = int(n)
    frames = stack.split(";")
    total += n
    threads[frames[0]] += n
    leaves[frames[-1]] += n
    name = next((c for c, marks in crates if any(m in f for f in frames for m in marks)), "the rest")
    split[name] += n
for title, counter, top in (("threads", threads, 10), ("by crate", split, 10), ("top self entries", leaves, 15)):
    print(title)
    for key, n in counter.most_common(top):
        print(f"  {100 * n / total:5.1f} %  {key[:100]}")
PY
echo "flame graph: $out/sign-in.svg"
