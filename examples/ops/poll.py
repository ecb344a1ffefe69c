#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""poll - an operator's view of a tern server: one line per interval.

Polls the server's GET /metrics (tern_ctx_metrics_listen(), or
metrics_listen() from Python) and, beside it, the RDMA ports' RNR counters:
either tern-rnr --listen's /metrics (--rnr URL, any host) or this host's
sysfs through tern.RnrMonitor (--rnr-sysfs ROOT, the tern package).  Each
interval prints calls/s, calls, errors, calls in flight, p50 and p99 (the
bounds of the latency buckets they fall in, read from the histogram's
increase over the interval), and the increase of each RNR counter.

    examples/ops/poll.py http://127.0.0.1:9464/metrics --rnr http://127.0.0.1:9465
    examples/ops/poll.py 127.0.0.1:9464 --rnr-sysfs /sys --interval 5 --json

The first reading is the baseline: line i covers reading i-1 to reading i.
A counter that went backwards (the server restarted) counts from zero,
as Prometheus's rate() does.  Standard library only, plus the tern package
for --rnr-sysfs.

Exit status: 0 after --count lines (or on SIGINT/SIGTERM), 1 when the first
reading fails (later failures print on stderr and skip that line), 2 on a
usage error.
"""
import argparse
import json
import math
import re
import signal
import sys
import time
import urllib.error
import urllib.request

# The RNR counters an operator watches first (tern's canonical names, which
# tern-rnr and tern.RnrMonitor map every driver's counters onto), and the
# short names the text lines use for them.
RNR = {
    "responder_out_of_buffer": "out_of_buffer",
    "requester_rnr_nak": "rnr_nak",
    "rnr_retries_exceeded": "rnr_retry_exc",
    "transport_retries_exceeded": "retry_exc",
}

SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+-?\d+)?$")
LABEL = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"\s*(?:,|$)')
UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


def parse_prometheus(text):
    """[(name, {label: value}, float)] of every sample in @text (format 0.0.4)."""
    out = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        if not m:
            raise ValueError(f"not a Prometheus sample: {line[:120]!r}")
        name, labels, value = m.groups()
        lab = {}
        pos = 0
        while labels and pos < len(labels):
            lm = LABEL.match(labels, pos)
            if not lm or lm.end() == pos:
                raise ValueError(f"bad labels: {line[:120]!r}")
            lab[lm.group(1)] = re.sub(r'\\[\\"n]', lambda e: UNESCAPE[e.group(0)], lm.group(2))
            pos = lm.end()
        out.append((name, lab, float(value)))
    return out


def fetch(url, timeout):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        if r.status != 200:
            raise OSError(f"{url}: HTTP {r.status}")
        return r.read().decode("utf-8", "replace")


class Reading:
    """The server's figures at one moment, summed over the methods of the
    chosen side(s); per method too, for --json."""

    def __init__(self, samples, sides):
        self.calls = self.errors = self.started = self.in_flight = 0.0
        self.codes = {}
        self.buckets = {}   # le (seconds, inf for +Inf) -> cumulative count
        self.methods = {}   # "side:method" -> [calls, errors]
        for name, lab, v in samples:
            if lab.get("side") not in sides:
                continue
            key = f'{lab["side"]}:{lab.get("method", "?")}'
            if name == "tern_rpc_calls_total":
                self.calls += v
                self.methods.setdefault(key, [0.0, 0.0])[0] += v
            elif name == "tern_rpc_errors_total":
                self.errors += v
                self.codes[lab.get("code", "?")] = self.codes.get(lab.get("code", "?"), 0) + v
                self.methods.setdefault(key, [0.0, 0.0])[1] += v
            elif name == "tern_rpc_started_total":
                self.started += v
            elif name == "tern_rpc_in_flight":
                self.in_flight += v
            elif name == "tern_rpc_latency_seconds_bucket":
                le = math.inf if lab["le"] == "+Inf" else float(lab["le"])
                self.buckets[le] = self.buckets.get(le, 0) + v


def since(now, before):
    """now - before, or now when the counter went backwards (a restart)."""
    return now - before if now >= before else now


def quantile_le_us(buckets_now, buckets_before, q):
    """The upper bound in µs of the bucket holding quantile @q of what the
    histogram gained; None without calls or past the last finite bound."""
    les = sorted(buckets_now)
    gained = [since(buckets_now[le], buckets_before.get(le, 0)) for le in les]
    total = gained[-1] if les and les[-1] == math.inf else 0
    if total <= 0:
        return None
    rank = max(1, math.ceil(q * total - 1e-9))
    for le, cum in zip(les, gained):
        if cum >= rank:
            return None if le == math.inf else round(le * 1e6, 3)
    return None


class RnrHttp:
    """RNR counters from tern-rnr --listen: its tern_rnr_counter_delta
    (increase since its own baseline), summed over the ports."""

    def __init__(self, url, timeout):
        self.url, self.timeout = url, timeout

    def read(self):
        out = {name: 0 for name in RNR}
        for name, lab, v in parse_prometheus(fetch(self.url, self.timeout)):
            if name == "tern_rnr_counter_delta" and lab.get("counter") in out:
                out[lab["counter"]] += int(v)
        return out


class RnrSysfs:
    """RNR counters from this host's sysfs through tern.RnrMonitor."""

    def __init__(self, root, devices):
        import tern  # only here: the rest of the poller needs no tern package
        self.mon = tern.RnrMonitor(root=root, devices=devices)

    def read(self):
        out = {name: 0 for name in RNR}
        for p in self.mon.snapshot().ports:
            for c in p.counters.values():
                if c.canonical in out:
                    out[c.canonical] += c.delta
        return out


def url_of(arg):
    if "://" not in arg:
        arg = "http://" + arg
    if arg.count("/") == 2:
        arg += "/metrics"
    return arg


def fmt_us(v):
    return "-" if v is None else f"<={v:g}us"


def main(argv=None):
    ap = argparse.ArgumentParser(
        prog="poll.py", description="Poll a tern server's /metrics and the RNR counters; "
        "one line per interval.",
        epilog="exit status: 0 done or interrupted, 1 the first reading failed, 2 usage")
    ap.add_argument("metrics", help="the server's /metrics: URL, or HOST:PORT")
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between readings")
    ap.add_argument("--count", type=int, default=0, help="stop after N lines (0: never)")
    ap.add_argument("--side", choices=["served", "issued", "both"], default="served",
                    help="the calls this context serves (default) or issues")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--rnr", metavar="URL", help="tern-rnr --listen's /metrics (HOST:PORT)")
    src.add_argument("--rnr-sysfs", metavar="ROOT", help="read sysfs at ROOT (/sys) here "
                     "with tern.RnrMonitor")
    ap.add_argument("--rnr-device", metavar="GLOB", help="with --rnr-sysfs: these devices")
    ap.add_argument("--json", action="store_true", help="one JSON object per line")
    ap.add_argument("--timeout", type=float, default=5.0, help="seconds per HTTP request")
    a = ap.parse_args(argv)
    if not (a.interval > 0 and math.isfinite(a.interval)) or a.count < 0 or a.timeout <= 0:
        ap.error("--interval and --timeout must be positive, --count not negative")
    sides = ("served", "issued") if a.side == "both" else (a.side,)
    url = url_of(a.metrics)

    stop = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.append(1))

    def take():
        t0 = time.time()
        r = Reading(parse_prometheus(fetch(url, a.timeout)), sides)
        r.rnr = rnr.read() if rnr else {}
        r.t0, r.t1 = t0, time.time()
        return r

    try:
        rnr = (RnrHttp(url_of(a.rnr), a.timeout) if a.rnr else
               RnrSysfs(a.rnr_sysfs, a.rnr_device) if a.rnr_sysfs else None)
        first = prev = take()
    except (OSError, ValueError, ImportError) as e:
        print(f"poll.py: first reading: {e}", file=sys.stderr)
        return 1
    lines = 0
    next_t = first.t0 + a.interval
    while not stop and (not a.count or lines < a.count):
        while not stop and time.time() < next_t:
            time.sleep(min(0.05, max(0.0, next_t - time.time())))
        if stop:
            break
        next_t += a.interval
        try:
            cur = take()
        except (OSError, ValueError) as e:
            print(f"poll.py: {e}", file=sys.stderr)
            continue
        dt = max(cur.t0 - prev.t0, 1e-9)
        calls = since(cur.calls, prev.calls)
        errors = since(cur.errors, prev.errors)
        rec = {
            "time": round(cur.t0, 6), "interval_s": round(dt, 6),
            "calls": int(calls), "calls_per_s": round(calls / dt, 3), "errors": int(errors),
            "errors_by_code": {k: int(since(v, prev.codes.get(k, 0)))
                               for k, v in sorted(cur.codes.items())
                               if since(v, prev.codes.get(k, 0))},
            "in_flight": int(cur.in_flight),
            "p50_le_us": quantile_le_us(cur.buckets, prev.buckets, 0.50),
            "p99_le_us": quantile_le_us(cur.buckets, prev.buckets, 0.99),
            "calls_total": int(since(cur.calls, first.calls)),
            "errors_total": int(since(cur.errors, first.errors)),
            "methods": {k: {"calls": int(since(v[0], prev.methods.get(k, [0, 0])[0])),
                            "errors": int(since(v[1], prev.methods.get(k, [0, 0])[1]))}
                        for k, v in sorted(cur.methods.items())},
            "rnr": {n: since(v, prev.rnr.get(n, 0)) for n, v in cur.rnr.items()},
        }
        if a.json:
            print(json.dumps(rec), flush=True)
        else:
            rnr_text = "  rnr " + " ".join(f"{RNR[n]} +{v}" for n, v in rec["rnr"].items()) \
                if rec["rnr"] else ""
            print(f'{time.strftime("%H:%M:%S", time.localtime(cur.t0))}  '
                  f'calls/s {rec["calls_per_s"]:10.1f}  calls {rec["calls"]:8d}  '
                  f'errors {rec["errors"]:6d}  in flight {rec["in_flight"]:4d}  '
                  f'p50 {fmt_us(rec["p50_le_us"]):>12}  p99 {fmt_us(rec["p99_le_us"]):>12}'
                  f'{rnr_text}', flush=True)
        prev = cur
        lines += 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
