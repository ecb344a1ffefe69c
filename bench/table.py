#!/usr/bin/env python3
"""Benchmark JSON lines (stdin) -> the Markdown tables docs/performance.md shows.

Lines may come from several rounds ("round" key); every figure is the median
over the rounds, and ratios are taken within a round (tern against the
baseline measured just before it) before the median.
"""
import json
import statistics
import sys
from collections import defaultdict

med = statistics.median
rows = [json.loads(l) for l in sys.stdin if l.startswith("{")]
rounds = max([r.get("round", 1) for r in rows] or [1])


def fmt(xs, digits):
    """The median of @xs, or "-" when nothing was measured."""
    return f"{med(xs):.{digits}f}" if xs else "-"


def by(pred, key):
    out = defaultdict(list)
    for r in rows:
        if pred(r):
            out[key(r)].append(r)
    return out


def latency():
    base = by(lambda r: r["bench"] == "verbs_pingpong", lambda r: (r["size"], r["inflight"]))
    tern = by(lambda r: r["bench"] == "tern_echo", lambda r: (r["kind"], r["size"], r["inflight"]))
    if not tern:
        return
    print(f"tern echo over rdma, medians of {rounds} round(s); ratios within each round\n")
    print("| kind | size B | in flight | p50 µs | p99 µs | calls/s | raw verbs p50 µs (same depth) | p50 ÷ raw verbs | rate ÷ 1 in flight | rate ÷ raw verbs at same depth |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (kind, size, inflight), rs in sorted(tern.items(), key=lambda x: (x[0][0] != "raw", x[0][1], x[0][2])):
        # Like with like: tern at N in flight against the raw ping-pong at N
        # in flight, measured in the same round (a 16-deep p50 divided by a
        # 1-deep one only says that queues are longer).
        same = [(r, b) for r in rs for b in base.get((size, inflight), [])
                if b.get("round") == r.get("round")]
        vs_raw = [r["rate_per_s"] / b["rate_per_s"] for r, b in same]
        ratio = [r["p50_us"] / b["p50_us"] for r, b in same]
        bp50 = [b["p50_us"] for b in base.get((size, inflight), [])]
        print(f"| {kind} | {size} | {inflight} | {med(r['p50_us'] for r in rs):.1f} | "
              f"{med(r['p99_us'] for r in rs):.1f} | {med(r['rate_per_s'] for r in rs):,.0f} | "
              f"{fmt(bp50, 1)} | {fmt(ratio, 2)} | "
              f"{med(r.get('rate_vs_inflight1', 0) for r in rs):.2f} | "
              f"{fmt(vs_raw, 2)} |")
    print()
    print("| raw verbs RC (baseline) size B | in flight | p50 µs | p99 µs | messages/s | rate ÷ 1 in flight |")
    print("|---:|---:|---:|---:|---:|---:|")
    for (size, inflight), rs in sorted(base.items()):
        one = base.get((size, 1), [])
        gain = med(r["rate_per_s"] for r in rs) / med(r["rate_per_s"] for r in one) if one else 0
        print(f"| {size} | {inflight} | {med(r['p50_us'] for r in rs):.1f} | "
              f"{med(r['p99_us'] for r in rs):.1f} | {med(r['rate_per_s'] for r in rs):,.0f} | "
              f"{gain:.2f} |")
    print()


def bandwidth():
    tern = by(lambda r: r["bench"] == "tern_bw", lambda r: (r["kind"], r["size"]))
    if not tern:
        return
    base = by(lambda r: r["bench"] in ("verbs_write_bw", "verbs_read_bw"),
              lambda r: (r["bench"], r["size"]))
    print(f"large messages over rdma, one call in flight, medians of {rounds} round(s)\n")
    print("| direction | size | tern GB/s | raw verbs GB/s (same op) | ratio |")
    print("|---|---:|---:|---:|---:|")
    for (kind, size), rs in sorted(tern.items(), key=lambda x: (x[0][0], x[0][1])):
        print(f"| {kind} | {size_str(size)} | {med(r['gb_per_s'] for r in rs):.3f} | "
              f"{med(r['baseline_gb_per_s'] for r in rs):.3f} | {med(r['ratio'] for r in rs):.2f} |")
    print()


def size_str(n):
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} B"


def features():
    fs = by(lambda r: r["bench"] == "features", lambda r: (r["side"], r.get("lang", "c")))
    if not fs:
        return
    print(f"features stream (f32[256] frames, one way, batches of 256), medians of {rounds} round(s)\n")
    print("| side | frames | frames/s | GB/s | bad frames |")
    print("|---|---:|---:|---:|---:|")
    for (side, lang), rs in sorted(fs.items()):
        gb = med(r.get("gb_per_s", r["frames_per_s"] * 1024 / 1e9) for r in rs)
        print(f"| {side} ({lang}) | {rs[0]['frames']:,} | {med(r['frames_per_s'] for r in rs):,.0f} | "
              f"{gb:.3f} | {max(r.get('bad', 0) for r in rs)} |")
    print()


latency()
bandwidth()
features()
