#!/usr/bin/env python3
"""Benchmark JSON lines (stdin) -> the Markdown tables README.md shows.

Lines may come from several rounds ("round" key); every figure reported is
the median over the rounds, and ratios are taken within a round (tern
against the baseline measured just before it) before the median.
"""
import json
import statistics
import sys
from collections import defaultdict

rows = [json.loads(l) for l in sys.stdin if l.startswith("{")]
med = statistics.median
base = defaultdict(list)  # (size, inflight) -> rows
tern = defaultdict(list)  # (kind, size, inflight) -> rows
for r in rows:
    if r.get("kind") == "baseline":
        base[(r["size"], r["inflight"])].append(r)
    else:
        tern[(r["kind"], r["size"], r["inflight"])].append(r)
rounds = max([r.get("round", 1) for r in rows] or [1])


def base_in_round(size, inflight, rnd):
    for b in base.get((size, inflight), []):
        if b.get("round", 1) == rnd:
            return b
    return None


print(f"tern echo over rdma, medians of {rounds} round(s); ratios within each round\n")
print("| kind | size B | in flight | p50 µs | p99 µs | calls/s | baseline p50 µs | p50 ÷ baseline | rate ÷ 1 in flight | rate ÷ raw verbs at same depth |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for (kind, size, inflight), rs in sorted(tern.items(), key=lambda x: (x[0][0] != "raw", x[0][1], x[0][2])):
    vs_raw = []
    for r in rs:
        b = base_in_round(size, inflight, r.get("round", 1))
        if b:
            vs_raw.append(r["rate_per_s"] / b["rate_per_s"])
    print(f"| {kind} | {size} | {inflight} | {med(r['p50_us'] for r in rs):.1f} | "
          f"{med(r['p99_us'] for r in rs):.1f} | {med(r['rate_per_s'] for r in rs):,.0f} | "
          f"{med(r['baseline_p50_us'] for r in rs):.1f} | {med(r['ratio'] for r in rs):.2f} | "
          f"{med(r.get('rate_vs_inflight1', 0) for r in rs):.2f} | "
          f"{(med(vs_raw) if vs_raw else 0):.2f} |")
if base:
    print()
    print("| raw verbs RC (baseline) size B | in flight | p50 µs | p99 µs | messages/s | rate ÷ 1 in flight |")
    print("|---:|---:|---:|---:|---:|---:|")
    for (size, inflight), rs in sorted(base.items()):
        one = base.get((size, 1), [])
        gain = med(r["rate_per_s"] for r in rs) / med(r["rate_per_s"] for r in one) if one else 0
        print(f"| {size} | {inflight} | {med(r['p50_us'] for r in rs):.1f} | "
              f"{med(r['p99_us'] for r in rs):.1f} | {med(r['rate_per_s'] for r in rs):,.0f} | "
              f"{gain:.2f} |")
