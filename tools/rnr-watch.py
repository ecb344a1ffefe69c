#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""rnr-watch - watch RDMA ports for soft RNR with tern.RnrMonitor.

A baseline is taken at start; reading i comes i intervals later and shows,
for every counter of every port, its value, the increase since the start
(reset-corrected) and the rate over the last interval, as a table or one
JSON object per line.  --alert rules turn it into a check for cron or CI.
Standard library plus the tern package only.
"""
import argparse
import json
import math
import re
import signal
import sys
import time

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, EXIT_ALERT, EXIT_NO_DEVICE = 0, 1, 2, 3, 4

# Where `meson install` put the tern package (tools/lib/install_script.py
# writes it into the installed tern-rnr-watch); None in the source tree.
TERN_PYTHONDIR = None
PROG = "tern-rnr-watch" if TERN_PYTHONDIR else "rnr-watch"

EPILOG = """\
alert rules:
  NAME[.delta|.total|.rate] OP NUMBER, OP one of > >= < <= == !=, e.g.
  'out_of_buffer>0'.  NAME is a canonical or raw counter name; another
  driver's raw name for a canonical counter stands for it (out_of_buffer
  matches rxe's send_rnr_err).  .delta (default) is the increase since
  start, .total the value read, .rate per second over the last interval.
  A counter that cannot be read proves nothing either way.

exit status:
  0  all readings taken (or stopped by SIGINT/SIGTERM)
  1  runtime error (sysfs unreadable, tern not importable, cannot write)
  2  usage error
  3  an --alert rule fired
  4  no RDMA device found (or none matches --device)
"""

RULE = re.compile(r"^\s*([A-Za-z0-9_/-]+)(?:\.(delta|total|rate))?\s*(>=|<=|==|!=|>|<)\s*(\S+)\s*$")
OPS = {
    ">": lambda a, b: a > b, ">=": lambda a, b: a >= b, "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b, "==": lambda a, b: a == b, "!=": lambda a, b: a != b,
}


class Rule:
    def __init__(self, text):
        m = RULE.match(text)
        if not m:
            raise ValueError(text)
        self.text = text
        self.name, field, self.op, number = m.groups()
        self.field = field or "delta"
        self.threshold = float(number)  # ValueError for "zero"
        if not math.isfinite(self.threshold):
            raise ValueError(text)

    def value(self, c, rates):
        if self.field == "delta":
            return c.delta
        if self.field == "total":
            return c.value
        return rates.get(c.key)

    def holds(self, c, rates):
        v = self.value(c, rates)
        return v is not None and OPS[self.op](v, self.threshold)


def parse_args(argv):
    ap = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Watch the RDMA ports' counters for soft RNR (receive queues that ran "
                    "dry), under canonical names where there are some.")
    ap.add_argument("--interval", metavar="S", default="1",
                    help="seconds between readings (default 1; 0 needs --count)")
    ap.add_argument("--count", metavar="N",
                    help="stop after N readings (default: until interrupted)")
    ap.add_argument("--device", metavar="GLOB", action="append",
                    help="only devices matching GLOB, e.g. 'mlx5_*' (repeatable)")
    ap.add_argument("--root", metavar="DIR", default="/sys", help="sysfs root (default /sys)")
    ap.add_argument("--format", choices=("table", "json"), default="table",
                    help="a table (default) or one JSON object per reading per line")
    ap.add_argument("--alert", metavar="RULE", action="append", default=[],
                    help="exit with status 3 when RULE holds on any port (repeatable)")
    a = ap.parse_args(argv)
    try:
        a.interval = float(a.interval)
        if not 0 <= a.interval <= 1e6:
            raise ValueError
    except ValueError:
        ap.error(f"--interval needs seconds from 0 to 1e6, not '{a.interval}'")
    if a.count is not None:
        if not a.count.isdigit() or int(a.count) == 0:
            ap.error(f"--count needs a whole number above 0, not '{a.count}'")
        a.count = int(a.count)
    if a.interval == 0 and a.count is None:
        ap.error("--interval 0 without --count would spin forever")
    if a.device is not None and not all(a.device):
        ap.error("--device needs a name or a glob")
    try:
        a.rules = [Rule(r) for r in a.alert]
    except ValueError as e:
        ap.error(f"bad --alert '{e}': want NAME[.delta|.total|.rate] OP NUMBER, "
                 "e.g. 'out_of_buffer>0'")
    return a


def table(snap, prev, rates):
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    head = f"# {when}  rates over {(snap.time_ns - prev.time_ns) / 1e9:.3f} s"
    rows = [("DEVICE", "PORT", "COUNTER", "RAW", "STATUS", "VALUE", "DELTA", "RATE/s")]
    for p in snap.ports:
        for c in p.counters.values():
            status = c.status
            if p.state == "gone":
                status = "gone"
            elif p.state == "new" and c.ok:
                status = "new"
            rate = rates.get(c.key)
            rows.append((p.device, str(p.port), c.name, c.raw, status,
                         "-" if c.value is None else str(c.value), str(c.delta),
                         "-" if rate is None else f"{rate:.2f}"))
    if len(rows) == 1:
        return head + "\n# no RDMA ports\n"
    width = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
    lines = [head]
    for r in rows:
        # Port and the numbers right-aligned, text left.
        cells = [r[k].rjust(width[k]) if k == 1 or k >= 5 else r[k].ljust(width[k])
                 for k in range(len(r))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def json_line(snap, prev, rates):
    ports = []
    for p in snap.ports:
        counters = [{
            "counter": c.name, "raw": c.raw, "canonical": c.canonical, "group": c.group,
            "status": c.status, "error": c.error, "value": c.value, "delta": c.delta,
            "resets": c.resets, "rate": rates.get(c.key),
        } for c in p.counters.values()]
        ports.append({"device": p.device, "port": p.port, "state": p.state,
                      "lifespan_ms": p.lifespan_ms, "counters": counters})
    return json.dumps({"unix_time": round(time.time(), 3),
                       "interval_s": (snap.time_ns - prev.time_ns) / 1e9,
                       "ports": ports}, separators=(",", ":")) + "\n"


def name_known(name, snap, tern_rnr):
    if tern_rnr.is_canonical(name) or tern_rnr.canonical_name(name):
        return True
    return any((p.device, p.port, name) in snap for p in snap.ports)


def alerts_fired(rules, snap, rates):
    fired = False
    for r in rules:
        for p in snap.ports:
            c = snap.get((p.device, p.port, r.name))
            if c is None or not c.ok or not r.holds(c, rates):
                continue
            print(f"{PROG}: alert '{r.text}' fired: {p.device} port {p.port} {c.name} ({c.raw}) "
                  f"delta {c.delta} value {c.value}", file=sys.stderr)
            fired = True
    return fired


def stop(signum, frame):
    raise KeyboardInterrupt


def watch(a, tern_rnr):
    try:
        mon = tern_rnr.RnrMonitor(a.root, a.device)
    except (FileNotFoundError, NotADirectoryError):
        print(f"{PROG}: --root '{a.root}' is not a directory", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:
        print(f"{PROG}: cannot read {a.root}/class/infiniband: {e}", file=sys.stderr)
        return EXIT_RUNTIME
    with mon:
        prev = mon.snapshot()
        if not prev.ports:
            where = f"{a.root}/class/infiniband"
            if a.device:
                print(f"{PROG}: no RDMA devices found under {where} matching "
                      f"{', '.join(repr(d) for d in a.device)}", file=sys.stderr)
            else:
                print(f"{PROG}: no RDMA devices found under {where}\n{PROG}: load an RDMA "
                      "driver (e.g. modprobe mlx5_ib, or rdma link add rxe0 type rxe netdev "
                      "eth0), or point --root at a sysfs tree", file=sys.stderr)
            return EXIT_NO_DEVICE
        for r in a.rules:
            if not name_known(r.name, prev, tern_rnr):
                print(f"{PROG}: --alert names '{r.name}', which is not a canonical name nor "
                      f"a counter on any port\n{PROG}: try '{PROG} --help'", file=sys.stderr)
                return EXIT_USAGE
        start = time.monotonic()
        i = 0
        while a.count is None or i < a.count:
            i += 1
            # Deadlines from the start, so the interval does not drift.
            time.sleep(max(0.0, start + i * a.interval - time.monotonic()))
            snap = mon.snapshot()
            if snap.time_ns <= prev.time_ns:
                continue  # no clock tick since: nothing to rate
            rates = snap.rates(prev)
            out = table(snap, prev, rates) + "\n" if a.format == "table" else \
                json_line(snap, prev, rates)
            sys.stdout.write(out)
            sys.stdout.flush()
            prev = snap
            if alerts_fired(a.rules, snap, rates):
                return EXIT_ALERT
    return EXIT_OK


def main(argv):
    a = parse_args(argv)
    if TERN_PYTHONDIR and TERN_PYTHONDIR not in sys.path:
        sys.path.append(TERN_PYTHONDIR)  # after PYTHONPATH: a user's choice wins
    try:
        import tern.rnr as tern_rnr
    except ImportError as e:
        print(f"{PROG}: cannot import tern ({e}); build with -Dpython=enabled and "
              "meson install, or put the package on PYTHONPATH", file=sys.stderr)
        return EXIT_RUNTIME
    signal.signal(signal.SIGTERM, stop)
    try:
        return watch(a, tern_rnr)
    except KeyboardInterrupt:
        return EXIT_OK
    except BrokenPipeError:
        return EXIT_RUNTIME
    except OSError as e:
        print(f"{PROG}: reading failed: {e}", file=sys.stderr)
        return EXIT_RUNTIME


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
