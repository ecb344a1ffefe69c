#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The benchmark reports: what bench/table.py and bench/peers.py print from
JSON lines, and how bench/peers.py reads each peer's own output.

usage: test_bench_tables.py PATH/TO/SOURCE/ROOT

Standard library only; no benchmark runs here: the inputs are JSON lines
and tool outputs as the programs print them.
"""
import json
import os
import subprocess
import sys
import unittest

TOP = None  # the source tree, from argv


def run_table(script, lines):
    out = subprocess.run([sys.executable, os.path.join(TOP, "bench", script)],
                         input="".join(json.dumps(l) + "\n" for l in lines),
                         capture_output=True, text=True, check=True)
    return out.stdout


def md_rows(text, first):
    """The Markdown table rows whose first cell is @first, split into cells."""
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first:
            rows.append(cells)
    return rows


class LatencyTable(unittest.TestCase):
    """bench/table.py: tern's rdma echo against the raw verbs ping-pong."""

    def lines(self):
        # As tern_bench printed them before the fix: its "ratio" divided the
        # 16-in-flight p50 by the 1-in-flight baseline.
        base = [
            {"round": 1, "bench": "verbs_pingpong", "kind": "baseline", "size": 32,
             "inflight": 1, "p50_us": 10.0, "p99_us": 12.0, "rate_per_s": 100000},
            {"round": 1, "bench": "verbs_pingpong", "kind": "baseline", "size": 32,
             "inflight": 16, "p50_us": 40.0, "p99_us": 50.0, "rate_per_s": 400000},
        ]
        tern = [
            {"round": 1, "bench": "tern_echo", "kind": "raw", "size": 32, "inflight": 1,
             "p50_us": 12.0, "p99_us": 14.0, "rate_per_s": 83000,
             "baseline_p50_us": 10.0, "ratio": 1.2, "rate_vs_inflight1": 1.0},
            {"round": 1, "bench": "tern_echo", "kind": "raw", "size": 32, "inflight": 16,
             "p50_us": 44.0, "p99_us": 60.0, "rate_per_s": 360000,
             "baseline_p50_us": 10.0, "ratio": 4.4, "rate_vs_inflight1": 4.3},
        ]
        return base + tern

    def test_p50_ratio_divides_by_the_baseline_at_the_same_depth(self):
        rows = md_rows(run_table("table.py", self.lines()), "raw")
        by_depth = {int(r[2]): r for r in rows}
        # columns: kind, size, in flight, p50, p99, calls/s, baseline p50, ratio, ...
        self.assertEqual(by_depth[1][6], "10.0")
        self.assertEqual(by_depth[1][7], "1.20")
        self.assertEqual(by_depth[16][6], "40.0")
        self.assertEqual(by_depth[16][7], "1.10")

    def test_no_baseline_at_that_depth_shows_a_dash_not_a_ratio(self):
        lines = [l for l in self.lines() if not (l["bench"] == "verbs_pingpong"
                                                 and l["inflight"] == 16)]
        rows = md_rows(run_table("table.py", lines), "raw")
        by_depth = {int(r[2]): r for r in rows}
        self.assertEqual(by_depth[16][6], "-")
        self.assertEqual(by_depth[16][7], "-")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    TOP = sys.argv.pop(1)
    unittest.main()
