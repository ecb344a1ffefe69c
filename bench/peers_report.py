#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""bench/peers_report.py - the tables and plots of tern against its peers.

Reads JSON lines (files, or stdin): bench/peers.py's measurements,
bench/cost.py's instruction counts ("bench":"cost") and the run's
{"meta": ...} lines; writes Markdown tables (stdout) and, with --plots DIR,
the PNGs docs/peers.md shows.

Figures are medians over the rounds.  A ratio is taken within each round
(tern and the peer measured back to back) and then the median, with the
smallest and largest round in brackets: a spread that crosses 1 means the
run did not resolve which is faster.  Latency ratios are tern ÷ peer (below
1: tern is faster); rate ratios are tern ÷ peer too (above 1: tern is faster).
Medians are compared with medians; a peer that prints only a mean
(fi_pingpong) is compared with tern's mean of the same round.

usage: bench/peers_report.py [--plots DIR] [FILE...]
"""
import argparse
import json
import statistics
import sys
from collections import defaultdict

med = statistics.median
LANES = ("tcp", "shm", "rdma")
TIE = 0.02  # every round within 2 %: a tie, whichever side the median falls
PRIMARY = {"tcp": ["tern busy", "tern event"], "shm": ["tern busy"],
           "rdma": ["tern raw", "tern inplace"]}
LANE_TITLE = {"tcp": "tcp:// on the host (loopback)", "shm": "shm:// on the host",
              "rdma": "rdma:// in the Soft-RoCE VM (rxe0, TCG)"}


def size_str(n):
    for unit, shift in (("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} B"


def load(paths):
    rows, cost, meta = [], [], []
    files = [open(p) for p in paths] if paths else [sys.stdin]
    for f in files:
        for line in f:
            if not line.startswith("{"):
                continue
            r = json.loads(line)
            if "meta" in r:
                meta.append(r["meta"])
            elif r.get("bench") == "cost":
                cost.append(r)
            elif "lane" in r and "variant" in r:
                rows.append(r)
    return rows, cost, meta


class Data:
    def __init__(self, rows):
        self.at = defaultdict(dict)  # (lane, variant, size, depth) -> {round: row}
        self.impl, self.stat = {}, {}
        for r in rows:
            k = (r["lane"], r["variant"], r["size"], r["inflight"])
            self.at[k][r["round"]] = r
            self.impl[(r["lane"], r["variant"])] = r["impl"]
            self.stat[(r["lane"], r["variant"])] = r["stat"]

    def variants(self, lane, tern=None):
        vs = sorted({k[1] for k in self.at if k[0] == lane})
        if tern is None:
            return vs
        return [v for v in vs if (self.impl[(lane, v)] == "tern") == tern]

    def sizes(self, lane):
        return sorted({k[2] for k in self.at if k[0] == lane})

    def depths(self, lane):
        return sorted({k[3] for k in self.at if k[0] == lane})

    def value(self, lane, variant, size, depth, key):
        xs = [r[key] for r in self.at.get((lane, variant, size, depth), {}).values()
              if r.get(key) is not None]
        return med(xs) if xs else None

    def ratios(self, lane, tern, peer, size, depth, key):
        a = self.at.get((lane, tern, size, depth), {})
        b = self.at.get((lane, peer, size, depth), {})
        return [a[n][key] / b[n][key] for n in a if n in b and a[n].get(key) and b[n].get(key)]


def fmt_ratio(xs, lower_is_better, marked=True):
    if not xs:
        return "-"
    m, lo, hi = med(xs), min(xs), max(xs)
    good = (hi < 1) if lower_is_better else (lo > 1)
    bad = (lo > 1) if lower_is_better else (hi < 1)
    tie = 1 - TIE <= lo and hi <= 1 + TIE
    mark = ("=" if tie else "✓" if good else "✗" if bad else "~") if marked else ""
    spread = f" ({lo:.2f}–{hi:.2f})" if len(xs) > 1 else ""
    return f"{m:.2f}{spread} {mark}"


def fmt(x, d=2):
    if x is None:
        return "-"
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.{d}f}"


def latency_table(D, lane):
    terns = [t for t in PRIMARY[lane] if t in D.variants(lane, tern=True)]
    peers = D.variants(lane, tern=False)
    if not terns or not peers or 1 not in D.depths(lane):
        return
    print(f"Round trip, 1 call in flight, µs ({LANE_TITLE[lane]}); ratio: tern ÷ peer, "
          "below 1 = tern faster\n")
    print("| size | peer | peer stat | peer µs | " +
          " | ".join(f"{t} µs | {t} ÷ peer" for t in terns) + " |")
    print("|---|---|---|---:|" + "---:|---:|" * len(terns))
    for size in D.sizes(lane):
        for p in peers:
            stat = D.stat[(lane, p)]
            key = "p50_us" if stat == "median" else "mean_us"
            pv = D.value(lane, p, size, 1, key)
            if pv is None:
                continue
            floor = D.impl[(lane, p)] == "verbs"  # not a peer: no verdict
            cells = []
            for t in terns:
                cells.append(fmt(D.value(lane, t, size, 1, key)))
                cells.append(fmt_ratio(D.ratios(lane, t, p, size, 1, key), True, not floor))
            label = p + (" (floor)" if floor else "")
            print(f"| {size_str(size)} | {label} | {'p50' if stat == 'median' else 'mean'} | "
                  f"{fmt(pv)} | " + " | ".join(cells) + " |")
    print()


def rate_table(D, lane):
    terns = [t for t in PRIMARY[lane] if t in D.variants(lane, tern=True)]
    deep = [d for d in D.depths(lane) if d > 1]
    if not terns or not deep:
        return
    for depth in deep:
        peers = [p for p in D.variants(lane, tern=False)
                 if any((lane, p, s, depth) in D.at for s in D.sizes(lane))]
        if not peers or not any((lane, t, s, depth) in D.at for t in terns
                                for s in D.sizes(lane)):
            continue
        print(f"Calls per second, {depth} calls in flight ({LANE_TITLE[lane]}); ratio: "
              "tern ÷ peer, above 1 = tern faster\n")
        print("| size | peer | peer calls/s | " +
              " | ".join(f"{t} calls/s | {t} ÷ peer" for t in terns) + " |")
        print("|---|---|---:|" + "---:|---:|" * len(terns))
        for size in D.sizes(lane):
            for p in peers:
                pv = D.value(lane, p, size, depth, "rate_per_s")
                if pv is None:
                    continue
                floor = D.impl[(lane, p)] == "verbs"
                cells = []
                for t in terns:
                    cells.append(fmt(D.value(lane, t, size, depth, "rate_per_s")))
                    cells.append(fmt_ratio(D.ratios(lane, t, p, size, depth, "rate_per_s"),
                                           False, not floor))
                label = p + (" (floor)" if floor else "")
                print(f"| {size_str(size)} | {label} | {fmt(pv)} | " + " | ".join(cells) + " |")
        print()


def tern_table(D, lane):
    """tern's own figures at every depth: p50, p99, mean, rate."""
    terns = D.variants(lane, tern=True)
    if not terns:
        return
    print(f"tern itself ({LANE_TITLE[lane]})\n")
    print("| variant | size | in flight | p50 µs | p99 µs | mean µs | calls/s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for t in terns:
        for size in D.sizes(lane):
            for d in D.depths(lane):
                if (lane, t, size, d) not in D.at:
                    continue
                v = [D.value(lane, t, size, d, k) for k in
                     ("p50_us", "p99_us", "mean_us", "rate_per_s")]
                print(f"| {t} | {size_str(size)} | {d} | " + " | ".join(fmt(x) for x in v) + " |")
    print()


def cost_table(cost):
    if not cost:
        return
    tern = {(c["lane"], c["kind"], c["progress"], c["size"]): c["instr_per_rt"] for c in cost
            if c["what"] == "tern"}
    print("### Instructions per round trip, every lane\n")
    print("User-space instructions per round trip (client and server, one thread, "
          "callgrind; bench/cost.py).  The ratio divides tern raw, same lane, size and "
          "progress (busy polling, or sleeping in epoll: event), by the peer.\n")
    print("| lane | what | kind | progress | size | instructions | repeat | tern raw ÷ this |")
    print("|---|---|---|---|---:|---:|---:|---:|")
    for c in cost:
        t = tern.get((c["lane"], "raw", c["progress"], c["size"]))
        same = "same" if c["repeat"] == c["instr_per_rt"] else f"{c['repeat']:,.0f}"
        ratio = f"{t / c['instr_per_rt']:.2f}" if t and c["what"] != "tern" else "-"
        print(f"| {c['lane']} | {c['what']} | {c['kind']} | {c['progress']} | "
              f"{size_str(c['size'])} | {c['instr_per_rt']:,.0f} | {same} | {ratio} |")
    print()


def meta_lines(meta):
    for m in meta:
        bits = [f"{k}: {' '.join(v) if isinstance(v, list) else v}" for k, v in m.items()]
        print("- " + "; ".join(bits))
    if meta:
        print()


# ---- plots ------------------------------------------------------------------------

def plots(D, outdir):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lanes = [l for l in LANES if D.variants(l)]
    # one colour per variant in every panel and plot: tern's in strong
    # colours and thick lines, the peers' thin
    # (a peer belongs to one lane, so its colour is unique within the lane)
    strong = ["#000000", "#d62728", "#1f77b4", "#2ca02c"]
    muted = ["#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
             "#aec7e8", "#ffbb78", "#98df8a", "#c5b0d5", "#c49c94"]
    colour = {}
    for lane in lanes:
        tern_names = D.variants(lane, tern=True)
        for i, v in enumerate(tern_names):
            colour[(lane, v)] = strong[i % len(strong)]
        for i, v in enumerate(D.variants(lane, tern=False)):
            colour[(lane, v)] = muted[i % len(muted)]

    def st(lane, v):
        tern = D.impl[(lane, v)] == "tern"
        return dict(color=colour[(lane, v)], lw=2.6 if tern else 1.3, marker="o" if tern else ".",
                    ls="-" if D.stat[(lane, v)] == "median" else "--")

    written = []
    # 1. latency vs size, 1 in flight
    fig, axes = plt.subplots(1, len(lanes), figsize=(6 * len(lanes), 4.8), squeeze=False)
    for ax, lane in zip(axes[0], lanes):
        for v in D.variants(lane):
            key = "p50_us" if D.stat[(lane, v)] == "median" else "mean_us"
            pts = [(s, D.value(lane, v, s, 1, key)) for s in D.sizes(lane)]
            pts = [(s, y) for s, y in pts if y]
            if pts:
                ax.plot(*zip(*pts), label=v + ("" if key == "p50_us" else " (mean)"),
                        **st(lane, v))
        ax.set(xscale="log", yscale="log", xlabel="message size (bytes)",
               ylabel="round trip (µs)", title=LANE_TITLE[lane])
        ax.set_xticks(D.sizes(lane), [size_str(s) for s in D.sizes(lane)])
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Echo round trip, 1 call in flight (median over rounds; dashed: mean)")
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    written.append(f"{outdir}/peers-latency.png")
    fig.savefig(written[-1], dpi=90)
    plt.close(fig)

    # 2. bandwidth vs size: payload each way = size x calls/s; one row per depth,
    # so that only programs measured at the same depth share a panel
    depths = sorted({d for l in lanes for d in D.depths(l)})
    fig, axes = plt.subplots(len(depths), len(lanes), figsize=(6 * len(lanes), 4.4 * len(depths)),
                             squeeze=False)
    for row, d in zip(axes, depths):
        for ax, lane in zip(row, lanes):
            for v in D.variants(lane):
                pts = [(s, D.value(lane, v, s, d, "rate_per_s")) for s in D.sizes(lane)]
                pts = [(s, s * y / 1e6) for s, y in pts if y]
                if pts:
                    ax.plot(*zip(*pts), label=v, **st(lane, v))
            ax.set(xscale="log", yscale="log", xlabel="message size (bytes)",
                   ylabel="payload MB/s each way", title=f"{LANE_TITLE[lane]}, {d} in flight")
            ax.set_xticks(D.sizes(lane), [size_str(s) for s in D.sizes(lane)])
            ax.grid(True, which="both", alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=7)
    fig.suptitle("Echo payload throughput each way (size × calls/s), median over rounds")
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    written.append(f"{outdir}/peers-bandwidth.png")
    fig.savefig(written[-1], dpi=90)
    plt.close(fig)

    # 3. rate vs calls in flight, smallest size
    fig, axes = plt.subplots(1, len(lanes), figsize=(6 * len(lanes), 4.8), squeeze=False)
    for ax, lane in zip(axes[0], lanes):
        size = D.sizes(lane)[0]
        for v in D.variants(lane):
            pts = [(d, D.value(lane, v, size, d, "rate_per_s")) for d in D.depths(lane)]
            pts = [(d, y) for d, y in pts if y]
            if pts:
                ax.plot(*zip(*pts), label=v, **st(lane, v))
        ax.set(xscale="log", yscale="log", xlabel="calls in flight",
               ylabel="calls/s", title=f"{LANE_TITLE[lane]}, {size_str(size)}")
        ax.set_xticks(D.depths(lane), [str(d) for d in D.depths(lane)])
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Calls per second against calls in flight (median over rounds)")
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    written.append(f"{outdir}/peers-rate.png")
    fig.savefig(written[-1], dpi=90)
    plt.close(fig)
    return written


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--plots", metavar="DIR")
    ap.add_argument("files", nargs="*")
    a = ap.parse_args()
    rows, cost, meta = load(a.files)
    D = Data(rows)
    meta_lines(meta)
    rounds = max([r["round"] for r in rows] or [0])
    if rows:
        print(f"Medians over {rounds} round(s).  ✓: tern faster in every round; "
              "✗: slower in every round; =: every round within 2 %; "
              "~: the rounds disagree (not resolved).\n")
    for lane in LANES:
        if not D.variants(lane):
            continue
        print(f"### {LANE_TITLE[lane]}\n")
        latency_table(D, lane)
        rate_table(D, lane)
        tern_table(D, lane)
    cost_table(cost)
    if a.plots and rows:
        for p in plots(D, a.plots):
            print(f"wrote {p}", file=sys.stderr)


if __name__ == "__main__":
    main()
