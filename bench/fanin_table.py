#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""bench/fanin_table.py < fanin.jsonl - the Markdown table of bench/fanin's JSON lines.

One row per run: sessions (client processes x sessions each), calls made
and answered right, what went wrong (failed, wrong bytes, answered twice,
lost, accepts that failed), the RNR counters' movement (rdma), the time to
bring every session up, the rate and the clients' p50/p99 round trip, and
the server's registered memory with every session up.  Lines without
"bench": "fanin" (the meta line) are skipped.
"""
import sys

from jsonl import records


def main():
    rows = []
    for d in records(sys.stdin, "fanin"):
        bad = sum(d[k] for k in ("failed", "wrong", "twice", "lost", "accept_failed",
                                 "server_errors"))
        rnr = sum(d["rnr"].values()) if d["transport"] == "rdma" else None
        rows.append("| {} | {} x {} = {} | {} | {:,} | {:,} | {} | {} | {:.1f} | {:,.0f} | "
                    "{:,.0f} | {:,.0f} | {} |".format(
                        d["transport"], d["procs"], d["sessions"] // d["procs"], d["sessions"],
                        d["depth"], d["calls"], d["ok"], bad,
                        "-" if rnr is None else rnr, d["connect_s"], d["calls_per_s"],
                        d["p50_us"], d["p99_us"],
                        f'{d["server_registered"] / 2**20:,.1f}' if d["transport"] == "rdma"
                        else "-"))
    print("| transport | sessions | in flight each | calls | right | wrong, lost or failed | "
          "RNR counters moved | all up s | calls/s | p50 µs | p99 µs | "
          "server registered MiB |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
