#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""bench/peers.py - tern against the libraries a user would pick instead.

Runs, in every round and back to back, tern and its peers on one lane at the
same sizes and depths, and prints one JSON line per measurement (stdout;
progress on stderr).  bench/peers_report.py turns the lines into tables and
plots.  Every peer is started here, server and client, with the settings
written below; nothing has to run beforehand.

  tcp   (host)  tern tcp:// busy and event progress      tern_local_bench
                gRPC C++ unary echo (sync API at 1 in     bench/grpc_echo
                flight, async API above)
  shm   (host)  tern shm:// busy                          tern_local_bench
                UCX: a UCP active-message echo             bench/ucp_echo
                  (UCX_TLS=posix, and UCX_TLS=sm: UCX's own pick, sysv + cma)
                UCX: ucx_perftest tag_lat and ucp_am_lat (UCX_TLS=posix, sysv)
                libfabric: fi_pingpong -p shm -e rdm
  rdma  (VM)    tern rdma:// raw and inplace               tern_bench
                raw verbs RC ping-pong (the floor)         verbs_pingpong
                UCX: the UCP AM echo, ucx_perftest tag_lat and ucp_am_lat,
                  UCT am_lat, all over rc_verbs on rxe0 (RDMA_ENV below)
                libfabric: fi_pingpong -p verbs -e msg
                perftest: ib_send_lat

Every figure is a round trip of SIZE bytes each way.  Tools that print
one-way latency (half the round trip) are doubled; "stat" says whether a
figure is a median or a mean, because fi_pingpong prints only a mean (see
docs/peers.md for each tool's definition).

usage: bench/peers.py --lane tcp|shm|rdma [--rounds N] [--sizes 32,1K,4K,64K]
                      [--depths 1,32] [--iters N] [--builddir DIR]
environment: TERN_PEERS_ROUNDS, TERN_PEERS_SIZES, TERN_PEERS_DEPTHS,
             TERN_PEERS_ITERS, or TERN_PEERS_ITERS_TCP|SHM|RDMA for one lane
             (per lane defaults below)
"""
import argparse
import json
import os
import random
import re
import shlex
import subprocess
import sys
import time

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# UCX over rxe0.  rc_verbs carries the messages; UCP needs ud_verbs as the
# auxiliary transport for wire-up, and UD on rxe's RoCE v2 GID (index 1)
# fails UCX's destination-GID check unless it is off, which otherwise aborts
# wire-up with "UD endpoint ... unhandled timeout error".  Without UCX_TLS,
# UCP on one host would silently pick shared memory.
RDMA_ENV = {"UCX_TLS": "rc_verbs,ud_verbs", "UCX_NET_DEVICES": "rxe0:1",
            "UCX_UD_VERBS_ETH_DGID_CHECK": "n", "UCX_WARN_UNUSED_ENV_VARS": "n"}
RDMA_ADDR = os.environ.get("TERN_RDMA_ADDR", "10.77.0.1")  # tools/rxe-vm's rxe0
RXE_GID_INDEX = "1"  # RoCE v2, IPv4-mapped: what rdma_cm and tern use

LANE_DEFAULTS = {  # iterations per measurement (warm-up: a tenth more)
    "tcp": 20000,
    "shm": 100000,
    "rdma": 3000,
}


def log(*a):
    print("peers:", *a, file=sys.stderr, flush=True)


def size_list(s):
    out = []
    for tok in s.split(","):
        m = re.fullmatch(r"(\d+)([kKmM]?)", tok.strip())
        if not m:
            raise SystemExit(f"peers.py: bad size {tok!r}")
        out.append(int(m.group(1)) << {"": 0, "k": 10, "K": 10, "m": 20, "M": 20}[m.group(2)])
    return out


# ---- reading what each tool prints ----------------------------------------------

def parse_json_lines(text):
    return [json.loads(l) for l in text.splitlines() if l.startswith("{")]


def parse_ucx_perftest(text):
    """ucx_perftest -f: the final line is
    iterations, latency p50, avg, overall (us), bandwidth avg, overall (MB/s),
    message rate avg, overall.  Latencies are one way: the round trip / 2
    (libperf divides ping-pong times by 2); the p50 is over the last 2048
    iterations (its timing queue), "overall" the mean over all of them."""
    for line in reversed(text.splitlines()):
        f = line.split()
        if len(f) == 7 + 1 and all(re.fullmatch(r"[\d.]+", x) for x in f):
            return {"p50_us": 2 * float(f[1]), "mean_us": 2 * float(f[3]),
                    "iters": int(f[0]), "tool_p50_us": float(f[1]),
                    "tool_mean_us": float(f[3])}
    return None


def parse_ib_send_lat(text):
    """ib_send_lat: #bytes #iterations t_min t_max t_typical t_avg t_stdev
    99% 99.9%, in microseconds, each half a round trip (perftest divides
    send-latency samples by 2).  t_typical is the median of the iterations'
    times, t_avg their mean, both without the two largest samples."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith("#bytes") and i + 1 < len(lines):
            f = lines[i + 1].split()
            if len(f) >= 9:
                try:
                    typ, avg, p99 = float(f[4]), float(f[5]), float(f[7])
                except ValueError:
                    return None
                if not all(x == x and x not in (float("inf"),) for x in (typ, avg)):
                    return None  # perftest could not calibrate its clock
                return {"p50_us": 2 * typ, "mean_us": 2 * avg, "p99_us": 2 * p99,
                        "iters": int(f[1]), "tool_p50_us": typ, "tool_mean_us": avg}
    return None


def parse_fi_pingpong(text):
    """fi_pingpong: bytes #sent #ack total time MB/sec usec/xfer Mxfers/sec.
    usec/xfer = elapsed / (iterations * 2): the mean one-way time.  It prints
    no median."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.split()[:2] == ["bytes", "#sent"] and i + 1 < len(lines):
            f = lines[i + 1].split()
            if len(f) >= 8:
                us = float(f[6])
                return {"p50_us": None, "mean_us": 2 * us, "tool_mean_us": us}
    return None


# ---- running things ------------------------------------------------------------

class Runner:
    def __init__(self, args):
        self.a = args
        self.b = os.path.join(args.builddir, "bench")
        self.port = random.randrange(20000, 40000)
        self.slow = args.lane == "rdma"  # the VM: everything starts slowly

    def next_port(self):
        self.port += 1
        return self.port

    def run(self, cmd, env=None, timeout=None):
        e = dict(os.environ, **(env or {}))
        try:
            p = subprocess.run(cmd, env=e, capture_output=True, text=True,
                               timeout=timeout or self.a.timeout)
        except subprocess.TimeoutExpired:
            log(f"{shlex.join(cmd)}: no result in {timeout or self.a.timeout} s (killed)")
            return None
        if p.returncode != 0:
            log(f"{shlex.join(cmd)}: exit {p.returncode}: {p.stderr.strip()[-400:]}")
            return None
        return p.stdout

    def pair(self, server, client, env=None):
        """Start @server, then run @client against it (retrying while the
        server is still getting ready).  Returns (client out, server out)."""
        e = dict(os.environ, **(env or {}))
        srv = subprocess.Popen(server, env=e, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
        out, tries = None, 0
        try:
            time.sleep(1.5 if self.slow else 0.3)
            while True:
                tries += 1
                try:
                    p = subprocess.run(client, env=e, capture_output=True, text=True,
                                       timeout=self.a.timeout)
                except subprocess.TimeoutExpired:
                    log(f"{shlex.join(client)}: no result in {self.a.timeout} s (killed)")
                    break
                if p.returncode == 0:
                    out = p.stdout + p.stderr
                    break
                if srv.poll() is not None or tries >= 10:
                    log(f"{shlex.join(client)}: exit {p.returncode}: "
                        f"{(p.stdout + p.stderr).strip()[-400:]}")
                    break
                time.sleep(1.0 if self.slow else 0.3)
            try:
                sout, _ = srv.communicate(timeout=30 if out else 2)
            except subprocess.TimeoutExpired:
                srv.kill()
                sout, _ = srv.communicate()
        finally:
            if srv.poll() is None:
                srv.kill()
                srv.wait()
        return out, sout

    def warm(self, n):
        return max(n // 10, 10)


def emit(rnd, lane, impl, variant, stat, r, cmd, env=None, **extra):
    line = {"lane": lane, "round": rnd, "impl": impl, "variant": variant, "stat": stat}
    for k in ("size", "inflight", "iters", "mode", "p50_us", "p99_us", "mean_us", "rate_per_s",
              "tool_p50_us", "tool_mean_us"):
        if r.get(k) is not None:
            line[k] = r[k]
    line.update(extra)
    if env:
        line["env"] = " ".join(f"{k}={v}" for k, v in env.items()
                               if k != "UCX_WARN_UNUSED_ENV_VARS")
    line["cmd"] = cmd if isinstance(cmd, str) else shlex.join(cmd)
    print(json.dumps(line, separators=(",", ":")), flush=True)


def json_runs(R, rnd, lane, impl, variant, cmd, env=None, stat="median"):
    out = R.run(cmd, env)
    for r in parse_json_lines(out or ""):
        emit(rnd, lane, impl, variant, stat, r, cmd, env)


def per_size(R, rnd, lane, impl, variant, sizes, make, parse, env=None, stat="median"):
    """A tool that measures one size per server/client pair."""
    for size in sizes:
        server, client = make(size, R.next_port())
        out, sout = R.pair(server, client, env)
        r = parse(out or "") or parse(sout or "")
        if not r:
            log(f"{impl} {variant} {size} B: no result")
            continue
        r.update(size=size, inflight=1)
        if r.get("mean_us"):  # one call at a time: calls/s is 1 / the mean
            r["rate_per_s"] = round(1e6 / r["mean_us"])
        emit(rnd, lane, impl, variant, stat, r, client, env)


# ---- lanes ----------------------------------------------------------------------

def lane_tcp(R, rnd, sizes, depths, iters):
    sz = ",".join(map(str, sizes))
    for d in depths:
        for mode in ("busy", "event"):
            json_runs(R, rnd, "tcp", "tern", f"tern {mode}",
                      [f"{R.b}/tern_local_bench", "--transport", "tcp", "--mode", mode,
                       "--sizes", sz, "--iters", str(iters), "--warmup", str(R.warm(iters)),
                       "--inflight", str(d)])
        # one variant across depths: the sync API at 1 in flight, async above
        # (the line's "mode" says which)
        json_runs(R, rnd, "tcp", "grpc", "gRPC",
                  [f"{R.b}/grpc_echo", "--sizes", sz, "--iters", str(iters),
                   "--warmup", str(R.warm(iters)), "--inflight", str(d)])


def lane_shm(R, rnd, sizes, depths, iters):
    sz = ",".join(map(str, sizes))
    warm = str(R.warm(iters))
    for d in depths:
        json_runs(R, rnd, "shm", "tern", "tern busy",
                  [f"{R.b}/tern_local_bench", "--transport", "shm", "--mode", "busy",
                   "--sizes", sz, "--iters", str(iters), "--warmup", warm, "--inflight", str(d)])
        for tls in ("posix", "sm"):
            env = {"UCX_TLS": tls}
            json_runs(R, rnd, "shm", "ucx", f"UCP AM echo ({tls})",
                      [f"{R.b}/ucp_echo", "--sizes", sz, "--iters", str(iters), "--warmup", warm,
                       "--inflight", str(d)], env)
    for test in ("tag_lat", "ucp_am_lat"):
        for tls in ("posix", "sysv"):
            env = {"UCX_TLS": tls}

            def make(size, port, test=test):
                return (["ucx_perftest", "-p", str(port)],
                        ["ucx_perftest", "127.0.0.1", "-p", str(port), "-t", test,
                         "-s", str(size), "-n", str(iters), "-w", warm, "-f"])
            per_size(R, rnd, "shm", "ucx", f"ucx_perftest {test} ({tls})", sizes, make,
                     parse_ucx_perftest, env)

    def fi_make(size, port):
        return (["fi_pingpong", "-p", "shm", "-e", "rdm", "-S", str(size), "-I", str(iters),
                 "-B", str(port)],
                ["fi_pingpong", "-p", "shm", "-e", "rdm", "-S", str(size), "-I", str(iters),
                 "-P", str(port), "127.0.0.1"])
    per_size(R, rnd, "shm", "libfabric", "fi_pingpong shm rdm", sizes, fi_make,
             parse_fi_pingpong, stat="mean")


def lane_rdma(R, rnd, sizes, depths, iters):
    sz = ",".join(map(str, sizes))
    warm = str(R.warm(iters))
    # Slots big enough for the largest size: a user who sends 64 KiB calls
    # sizes the slots for them (multiple of 64, header included).
    slot = max(8192, (max(sizes) + 1024 + 63) // 64 * 64)
    for d in sorted({min(d, 32) for d in depths}):  # verbs_pingpong: at most 32
        json_runs(R, rnd, "rdma", "verbs", "raw verbs RC",
                  [f"{R.b}/verbs_pingpong", "--sizes", sz, "--iters", str(iters),
                   "--warmup", warm, "--depth", str(d)])
    out = R.run([f"{R.b}/tern_bench", "--sizes", sz, "--depths", ",".join(map(str, depths)),
                 "--iters", str(iters), "--warmup", warm, "--slot-size", str(slot)])
    for r in parse_json_lines(out or ""):
        emit(rnd, "rdma", "tern", f"tern {r['kind']}", "median", r,
             f"{R.b}/tern_bench --sizes {sz} --depths {','.join(map(str, depths))} "
             f"--iters {iters} --slot-size {slot}")
    for d in depths:
        json_runs(R, rnd, "rdma", "ucx", "UCP AM echo (rc_verbs)",
                  [f"{R.b}/ucp_echo", "--sizes", sz, "--iters", str(iters), "--warmup", warm,
                   "--inflight", str(d)], RDMA_ENV)
    for test in ("tag_lat", "ucp_am_lat", "am_lat"):
        def make(size, port, test=test):
            # UCT's am_lat sends one segment: "short" up to rc_verbs' 79 bytes,
            # "bcopy" up to its 8 KiB segment, no larger (sizes above: none)
            uct = (["-d", "rxe0:1", "-x", "rc_verbs", "-D", "short" if size <= 64 else "bcopy"]
                   if test == "am_lat" else [])
            return (["ucx_perftest", "-p", str(port), *uct],
                    ["ucx_perftest", RDMA_ADDR, "-p", str(port), "-t", test, "-s", str(size),
                     "-n", str(iters), "-w", warm, "-f", *uct])
        fit = [s for s in sizes if test != "am_lat" or s <= 8192]
        per_size(R, rnd, "rdma", "ucx", f"ucx_perftest {test} (rc_verbs)", fit, make,
                 parse_ucx_perftest, RDMA_ENV)

    def ib_make(size, port):
        common = ["ib_send_lat", "-d", "rxe0", "-x", RXE_GID_INDEX, "-s", str(size),
                  "-n", str(iters), "-p", str(port), "-F"]
        return common, common + [RDMA_ADDR]
    per_size(R, rnd, "rdma", "perftest", "ib_send_lat", sizes, ib_make, parse_ib_send_lat)

    def fi_make(size, port):
        common = ["fi_pingpong", "-p", "verbs", "-e", "msg", "-S", str(size), "-I", str(iters)]
        return common + ["-B", str(port)], common + ["-P", str(port), RDMA_ADDR]
    per_size(R, rnd, "rdma", "libfabric", "fi_pingpong verbs msg", sizes, fi_make,
             parse_fi_pingpong, stat="mean")


LANES = {"tcp": lane_tcp, "shm": lane_shm, "rdma": lane_rdma}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lane", required=True, choices=sorted(LANES))
    ap.add_argument("--rounds", type=int, default=int(os.environ.get("TERN_PEERS_ROUNDS", 3)))
    ap.add_argument("--sizes", default=os.environ.get("TERN_PEERS_SIZES", "32,1K,4K,64K"))
    ap.add_argument("--depths", default=os.environ.get("TERN_PEERS_DEPTHS", "1,32"))
    ap.add_argument("--iters", type=int, default=int(os.environ.get("TERN_PEERS_ITERS", 0)))
    ap.add_argument("--builddir", default=os.environ.get("TERN_BENCH_BUILDDIR",
                                                         os.path.join(TOP, "build-release")))
    ap.add_argument("--timeout", type=int, default=600, help="seconds per program")
    a = ap.parse_args()
    sizes, depths = size_list(a.sizes), [int(x) for x in a.depths.split(",")]
    iters = (a.iters or int(os.environ.get(f"TERN_PEERS_ITERS_{a.lane.upper()}", 0))
             or LANE_DEFAULTS[a.lane])
    R = Runner(a)
    for rnd in range(1, a.rounds + 1):
        log(f"{a.lane}: round {rnd} of {a.rounds}")
        LANES[a.lane](R, rnd, sizes, depths, iters)


if __name__ == "__main__":
    main()
