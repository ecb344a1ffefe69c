#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""bench/cost.py - user-space instructions per echo round trip, by callgrind.

Each program here drives both ends of an echo from one thread (bench/cost
for tern; grpc_echo and ucp_echo --one-thread for the peers), so nothing
spins while waiting for another process and the count does not depend on
timing.  Only the measured loop is counted (valgrind --tool=callgrind
--toggle-collect=bench_measure); the per-run constant is divided out by counting N
and 2N round trips and taking the difference over N.  Every figure is
measured twice, from scratch: the two agree to the instruction for tern
(the "repeat" column shows it).  Client and server together, everything in
user space (the kernel's share is not counted: callgrind cannot see it).

usage: bench/cost.py [--lanes shm,tcp] [--kinds raw,inplace] [--sizes 32,4096]
                     [--progress busy] [--metrics off,on] [--iters N] [--peers]
                     [--compare REF]
                     [--builddir DIR] [--json FILE]

  --metrics on   count tern with per-method metrics on (rows "tern +metrics");
                 off,on counts both, for what recording them costs
  --peers        also count the peers on the same lanes: gRPC (tcp), a UCP
                 active-message echo (shm: UCX_TLS=posix and sm; rdma: rc_verbs)
  --compare REF  also build tern at git ref REF (its library, this bench/cost.c)
                 and print the ratio this tree / REF for every figure
  --lanes rdma   needs a verbs device (run it in tools/rxe-vm)

Output: a Markdown table on stdout and, with --json, one JSON line per figure.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(TOP, "bench"))
from peers import RDMA_ENV  # noqa: E402  (one definition of the UCX-on-rxe settings)


def log(*a):
    print("cost:", *a, file=sys.stderr, flush=True)


def callgrind(cmd, env=None):
    """Instructions counted inside bench_measure() for one run of @cmd."""
    with tempfile.TemporaryDirectory(prefix="tern-cost-") as d:
        out = os.path.join(d, "callgrind.out")
        full = ["valgrind", "--tool=callgrind", "--toggle-collect=bench_measure",
                f"--callgrind-out-file={out}", *cmd]
        p = subprocess.run(full, env=dict(os.environ, **(env or {})), capture_output=True,
                           text=True, timeout=1800)
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: exit {p.returncode}: {p.stderr[-600:]}")
        with open(out) as f:
            for line in f:
                if line.startswith("summary:"):
                    n = int(line.split()[1])
                    if n == 0:
                        raise RuntimeError(f"{' '.join(cmd)}: nothing counted in bench_measure()")
                    return n
    raise RuntimeError(f"{' '.join(cmd)}: no summary in the callgrind output")


def per_round_trip(make, n, env=None):
    """(count(2n) - count(n)) / n: the constant parts (first-call set-up,
    the loop's own entry) cancel."""
    a = callgrind(make(n), env)
    b = callgrind(make(2 * n), env)
    return (b - a) / n


def subjects(args, cost_bin, build):
    """(lane, what, kind, progress, size, make(n) -> argv, env, n)"""
    for lane in args.lanes:
        for kind in args.kinds:
            for prog in args.progress:
                for size in args.sizes:
                    for mx in args.metrics:
                        yield (lane, "tern" if mx == "off" else "tern +metrics", kind, prog, size,
                               lambda n, lane=lane, kind=kind, prog=prog, size=size, mx=mx: [
                                   cost_bin, "--transport", lane, "--kind", kind,
                                   "--progress", prog, "--size", str(size), "--iters", str(n),
                                   "--warmup", "100"] + (["--metrics"] if mx == "on" else []),
                               None, args.iters)
        if not args.peers:
            continue
        peers = {
            # gRPC takes ~60x tern's instructions: fewer round trips do
            "tcp": [("gRPC", "async, one CQ", os.path.join(build, "bench", "grpc_echo"), None)],
            "shm": [("UCX", "UCP AM (posix)", os.path.join(build, "bench", "ucp_echo"),
                     {"UCX_TLS": "posix"}),
                    ("UCX", "UCP AM (sm)", os.path.join(build, "bench", "ucp_echo"),
                     {"UCX_TLS": "sm"})],
            "rdma": [("UCX", "UCP AM (rc_verbs)", os.path.join(build, "bench", "ucp_echo"),
                      RDMA_ENV)],
        }[lane]
        for what, kind, exe, env in peers:
            for size in args.sizes:
                yield (lane, what, kind, "busy" if what == "UCX" else "event", size,
                       lambda n, exe=exe, size=size: [exe, "--one-thread", "--sizes", str(size),
                                                      "--iters", str(n), "--warmup", "100"],
                       env, max(args.iters // 8, 100) if what == "gRPC" else args.iters)


def build_ref(ref, workdir):
    """tern's library at @ref, and this tree's bench/cost.c linked to it."""
    sha = subprocess.run(["git", "-C", TOP, "rev-parse", "--verify", ref + "^{commit}"],
                         capture_output=True, text=True, check=True).stdout.strip()
    src, bld = os.path.join(workdir, "src"), os.path.join(workdir, "build")
    os.makedirs(src)
    arch = subprocess.Popen(["git", "-C", TOP, "archive", sha], stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", src], stdin=arch.stdout, check=True)
    arch.wait()
    log(f"building {ref} ({sha[:12]}) in {workdir}")
    for cmd in (["meson", "setup", bld, src, "--buildtype=release", "-Dtests=false",
                 "-Dpython=disabled"],
                ["meson", "compile", "-C", bld]):
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode:
            raise RuntimeError(f"{' '.join(cmd)}: {p.stdout[-800:]}{p.stderr[-800:]}")
    return sha, link_cost(os.path.join(src, "include"), os.path.join(bld, "src"),
                          os.path.join(workdir, "cost"))


def link_cost(include, libdir, out):
    """bench/cost.c, compiled one way for both sides of a comparison."""
    uv = subprocess.run(["pkg-config", "--cflags", "--libs", "libuv"], capture_output=True,
                        text=True, check=True).stdout.split()
    cmd = ["cc", "-O3", "-std=gnu11", "-D_GNU_SOURCE", "-I", include, "-I",
           os.path.join(TOP, "bench"), os.path.join(TOP, "bench", "cost.c"),
           os.path.join(TOP, "bench", "stats.c"), "-L", libdir, f"-Wl,-rpath,{libdir}",
           "-ltern", *uv, "-o", out]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: {p.stderr[-800:]}")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lanes", default="shm,tcp")
    ap.add_argument("--kinds", default="raw,inplace")
    ap.add_argument("--sizes", default="32,4096")
    ap.add_argument("--progress", default="busy")
    ap.add_argument("--iters", type=int, default=2000,
                    help="N: the runs count N and 2N round trips")
    ap.add_argument("--metrics", default="off,on",
                    help="off, on or off,on: tern with per-method metrics recorded "
                         "(the 'tern +metrics' rows)")
    ap.add_argument("--peers", action="store_true")
    ap.add_argument("--compare", metavar="REF")
    ap.add_argument("--builddir", default=os.environ.get("TERN_BENCH_BUILDDIR",
                                                         os.path.join(TOP, "build-release")))
    ap.add_argument("--json", metavar="FILE")
    a = ap.parse_args()
    a.lanes, a.kinds, a.progress = a.lanes.split(","), a.kinds.split(","), a.progress.split(",")
    a.metrics = a.metrics.split(",")
    if not set(a.metrics) <= {"off", "on"}:
        sys.exit("cost.py: --metrics takes off, on or off,on")
    a.sizes = [int(x) for x in a.sizes.split(",")]
    if not shutil.which("valgrind"):
        sys.exit("cost.py: valgrind is not installed (apt-get install valgrind)")
    build = os.path.abspath(a.builddir)
    cost_bin = os.path.join(build, "bench", "cost")
    ref_bin = tmp = None
    if a.compare:
        tmp = tempfile.mkdtemp(prefix="tern-cost-ref-")
        try:
            ref_sha, ref_bin = build_ref(a.compare, tmp)
            # this tree compiled the same way as the ref, so only the library differs
            cost_bin = link_cost(os.path.join(TOP, "include"), os.path.join(build, "src"),
                                 os.path.join(tmp, "cost-here"))
        except (RuntimeError, subprocess.CalledProcessError) as e:
            shutil.rmtree(tmp, ignore_errors=True)
            sys.exit(f"cost.py: --compare {a.compare}: {e}")
    jf = open(a.json, "a") if a.json else None
    head = "| lane | what | kind | progress | size B | instructions / round trip | repeat |"
    sep = "|---|---|---|---|---:|---:|---:|"
    if ref_bin:
        head += f" at {a.compare} | ratio |"
        sep += "---:|---:|"
    print(head)
    print(sep)
    status = 0
    try:
        for lane, what, kind, prog, size, make, env, n in subjects(a, cost_bin, build):
            try:
                one = per_round_trip(make, n, env)
                two = per_round_trip(make, n, env)
                ref = None
                if ref_bin and what == "tern":
                    ref = per_round_trip(lambda k: [ref_bin] + make(k)[1:], n, env)
            except RuntimeError as e:
                log(str(e))
                status = 1
                continue
            row = (f"| {lane} | {what} | {kind} | {prog} | {size} | {one:,.1f} | "
                   f"{'same' if one == two else f'{two:,.1f}'} |")
            if ref_bin:
                row += (f" {ref:,.1f} | {one / ref:.3f} |" if ref else " - | - |")
            print(row, flush=True)
            if jf:
                rec = {"bench": "cost", "lane": lane, "what": what, "kind": kind,
                       "progress": prog, "size": size, "iters": n,
                       "instr_per_rt": round(one, 1), "repeat": round(two, 1)}
                if env:
                    rec["env"] = " ".join(f"{k}={v}" for k, v in env.items()
                                          if k != "UCX_WARN_UNUSED_ENV_VARS")
                if ref is not None:
                    rec.update(ref=a.compare, ref_sha=ref_sha, ref_instr_per_rt=round(ref, 1))
                jf.write(json.dumps(rec, separators=(",", ":")) + "\n")
                jf.flush()
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    sys.exit(status)


if __name__ == "__main__":
    main()
