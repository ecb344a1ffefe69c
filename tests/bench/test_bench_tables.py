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


def peers_module():
    sys.path.insert(0, os.path.join(TOP, "bench"))
    import peers  # noqa: E402
    return peers


# As the tools print them (ucx_perftest 1.13 -f, perftest 4.5, libfabric 1.17).
UCX_PERFTEST_OUT = """\
+--------------+--------------+------------------------------+---------------------+-----------------------+
|              |              |        latency (usec)        |   bandwidth (MB/s)  |  message rate (msg/s) |
+--------------+--------------+----------+---------+---------+----------+----------+-----------+-----------+
|     Test     | # iterations | 50.0%ile | average | overall |  average |  overall |  average  |  overall  |
+--------------+--------------+----------+---------+---------+----------+----------+-----------+-----------+
                      100000      0.486    11.268   236.146        2.71       0.13       88747        4235
"""
IB_SEND_LAT_OUT = """\
---------------------------------------------------------------------------------------
 #bytes #iterations    t_min[usec]    t_max[usec]  t_typical[usec]    t_avg[usec]    t_stdev[usec]   99% percentile[usec]   99.9% percentile[usec] 
 32      1000          11.82          391493.27      28.72    \t       4055.05     \t3598.11\t\t53090.24 \t\t391493.27
---------------------------------------------------------------------------------------
"""
IB_SEND_LAT_UNCALIBRATED = """\
 #bytes #iterations    t_min[usec]    t_max[usec]  t_typical[usec]    t_avg[usec]    t_stdev[usec]   99% percentile[usec]   99.9% percentile[usec] 
Correlation coefficient r^2: 0.89034 < 0.9
 32      1000          inf            inf          inf      \t       inf         \t-nan   \t\tinf     \t\tinf    
"""
FI_PINGPONG_OUT = """\
bytes   #sent   #ack     total       time     MB/sec    usec/xfer   Mxfers/sec
32      10k     =10k     625k       16.62s      0.04     831.10       0.00
"""


class PeerOutputs(unittest.TestCase):
    """bench/peers.py reads every tool's own output into a round trip."""

    def test_ucx_perftest_one_way_figures_are_doubled(self):
        r = peers_module().parse_ucx_perftest(UCX_PERFTEST_OUT)
        self.assertAlmostEqual(r["p50_us"], 0.972)
        self.assertAlmostEqual(r["mean_us"], 472.292)  # "overall", not the moment average
        self.assertEqual(r["iters"], 100000)

    def test_ib_send_lat_typical_is_the_median_doubled(self):
        r = peers_module().parse_ib_send_lat(IB_SEND_LAT_OUT)
        self.assertAlmostEqual(r["p50_us"], 57.44)
        self.assertAlmostEqual(r["mean_us"], 8110.10)
        self.assertAlmostEqual(r["p99_us"], 106180.48)

    def test_ib_send_lat_without_a_clock_gives_no_figure(self):
        self.assertIsNone(peers_module().parse_ib_send_lat(IB_SEND_LAT_UNCALIBRATED))

    def test_fi_pingpong_gives_a_mean_and_no_median(self):
        r = peers_module().parse_fi_pingpong(FI_PINGPONG_OUT)
        self.assertIsNone(r["p50_us"])
        self.assertAlmostEqual(r["mean_us"], 1662.2)


def peer_line(rnd, impl, variant, stat, size, inflight, **kw):
    return dict({"lane": "rdma", "round": rnd, "impl": impl, "variant": variant, "stat": stat,
                 "size": size, "inflight": inflight}, **kw)


class PeersReport(unittest.TestCase):
    """bench/peers_report.py: ratios within a round, like statistic with like."""

    def test_a_mean_only_peer_is_divided_into_terns_mean(self):
        lines = []
        for rnd, (t50, tmean, fmean) in enumerate([(10, 20, 40), (30, 12, 24)], 1):
            lines.append(peer_line(rnd, "tern", "tern raw", "median", 32, 1,
                                   p50_us=t50, mean_us=tmean, rate_per_s=1))
            lines.append(peer_line(rnd, "libfabric", "fi_pingpong verbs msg", "mean", 32, 1,
                                   mean_us=fmean, rate_per_s=1))
        rows = md_rows(run_table("peers_report.py", lines), "32 B")
        self.assertEqual(len(rows), 1)
        # peer, stat, peer us (median of 40, 24), tern us (median of 20, 12), ratio
        self.assertEqual(rows[0][1:5], ["fi_pingpong verbs msg", "mean", "32.00", "16.00"])
        self.assertEqual(rows[0][5], "0.50 (0.50–0.50) ✓")

    def test_ratios_are_taken_within_a_round(self):
        lines = []
        # tern is 0.9x the peer in each round, though its median over the
        # rounds is above the peer's: only same-round ratios say that
        for rnd, (t, p) in enumerate([(9, 10), (27, 30), (90, 100)], 1):
            lines.append(peer_line(rnd, "tern", "tern raw", "median", 32, 1, p50_us=t))
            lines.append(peer_line(rnd, "perftest", "ib_send_lat", "median", 32, 1,
                                   p50_us=p))
        lines.append(peer_line(4, "perftest", "ib_send_lat", "median", 32, 1, p50_us=1))
        rows = md_rows(run_table("peers_report.py", lines), "32 B")
        self.assertEqual(rows[0][5], "0.90 (0.90–0.90) ✓")

    def test_rounds_within_two_percent_are_a_tie(self):
        lines = []
        for rnd, (t, p) in enumerate([(101, 100), (99, 100)], 1):
            lines.append(peer_line(rnd, "tern", "tern raw", "median", 32, 1, p50_us=t))
            lines.append(peer_line(rnd, "ucx", "ucx_perftest tag_lat", "median", 32, 1,
                                   p50_us=p))
        rows = md_rows(run_table("peers_report.py", lines), "32 B")
        self.assertTrue(rows[0][5].endswith("="), rows[0][5])

    def test_rounds_that_disagree_are_marked_unresolved(self):
        lines = []
        for rnd, (t, p) in enumerate([(8, 10), (12, 10)], 1):
            lines.append(peer_line(rnd, "tern", "tern raw", "median", 32, 1, p50_us=t))
            lines.append(peer_line(rnd, "ucx", "ucx_perftest tag_lat", "median", 32, 1,
                                   p50_us=p))
        rows = md_rows(run_table("peers_report.py", lines), "32 B")
        self.assertTrue(rows[0][5].endswith("~"), rows[0][5])


class DocBlock(unittest.TestCase):
    def test_only_the_block_between_the_markers_changes(self):
        sys.path.insert(0, os.path.join(TOP, "bench"))
        from doc_block import replace_block
        text = "a\n<!-- t:begin -->\nold\n<!-- t:end -->\nb\n"
        self.assertEqual(replace_block(text, "t", "new"),
                         "a\n<!-- t:begin -->\nnew\n<!-- t:end -->\nb\n")
        with self.assertRaises(ValueError):
            replace_block("no markers", "t", "x")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    TOP = sys.argv.pop(1)
    # the count line tools/lib/test_summary.py reads
    sys.path.insert(0, os.path.join(TOP, "tests", "gen"))
    import unittest_main  # noqa: E402
    sys.exit(unittest_main.run(__name__))
