#!/usr/bin/env python3
"""Turn benchmark JSON lines (stdin) into the Markdown table README.md shows."""
import json
import sys

rows = [json.loads(l) for l in sys.stdin if l.startswith("{")]
base = {r["size"]: r for r in rows if r.get("kind") == "baseline"}
print("| kind | size | in flight | p50 µs | p99 µs | calls/s | baseline p50 µs | p50 ratio | rate vs 1 in flight |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for r in rows:
    if r.get("kind") == "baseline":
        continue
    print(f"| {r['kind']} | {r['size']} | {r['inflight']} | {r['p50_us']:.1f} | {r['p99_us']:.1f} | "
          f"{r['rate_per_s']:,.0f} | {r['baseline_p50_us']:.1f} | {r['ratio']:.2f} | "
          f"{r.get('rate_vs_inflight1', 0):.2f} |")
if base:
    print()
    print("| baseline (raw verbs RC ping-pong) size | p50 µs | p99 µs | round trips/s |")
    print("|---:|---:|---:|---:|")
    for s, r in sorted(base.items()):
        print(f"| {s} | {r['p50_us']:.1f} | {r['p99_us']:.1f} | {r['rate_per_s']:,.0f} |")
