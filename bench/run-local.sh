#!/usr/bin/env bash
# bench/run-local.sh - tern over shm:// and tcp:// against their raw floors,
# measured in the same run, on this host.
#
#   shm  tern_local_bench --transport shm   vs  shm_ring_pingpong (raw SPSC ring)
#   tcp  tern_local_bench --transport tcp   vs  tcp_pingpong (raw loopback TCP)
#
# Every run measures each baseline and then tern, back to back, so a ratio
# always divides two numbers taken minutes apart at most on a noisy
# machine.  Output: every JSON line (tern's carry baseline_p50_us and ratio
# from the same run), then a table of medians over the runs.
#
# usage: bench/run-local.sh [--runs N] [--sizes 32,256,4K,64K] [--quick]
# environment: TERN_BENCH_BUILDDIR (default build-release)
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd -P)
builddir=${TERN_BENCH_BUILDDIR:-$top/build-release}
runs=5
sizes=32,256,4K,64K
shm_iters=200000
tcp_iters=20000
event_iters=20000
pipe_iters=200000

while [ $# -gt 0 ]; do
	case "$1" in
	--runs) runs=${2:?}; shift 2 ;;
	--sizes) sizes=${2:?}; shift 2 ;;
	--quick) runs=2; shm_iters=50000; tcp_iters=5000; event_iters=5000; pipe_iters=50000; shift ;;
	-h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "run-local.sh: unknown argument $1" >&2; exit 2 ;;
	esac
done

if [ ! -f "$builddir/build.ninja" ]; then
	meson setup "$builddir" "$top" --buildtype=release -Dtests=false >/dev/null
fi
meson compile -C "$builddir" >/dev/null
b=$builddir/bench
out=$(mktemp)
trap 'rm -f "$out"' EXIT

tag() { sed "s/^{/{\"run\":$1,/"; }
w_shm=$((shm_iters / 10)) w_tcp=$((tcp_iters / 10)) w_ev=$((event_iters / 10))

for run in $(seq 1 "$runs"); do
	echo "run $run of $runs ..." >&2
	"$b/shm_ring_pingpong" --sizes "$sizes" --iters "$shm_iters" --warmup "$w_shm" | tag "$run" >>"$out"
	"$b/tern_local_bench" --transport shm --mode busy --sizes "$sizes" \
		--iters "$shm_iters" --warmup "$w_shm" | tag "$run" >>"$out"
	"$b/tern_local_bench" --transport shm --mode adaptive --sizes "$sizes" \
		--iters "$event_iters" --warmup "$w_ev" | tag "$run" >>"$out"
	"$b/tern_local_bench" --transport shm --mode event --sizes "$sizes" \
		--iters "$event_iters" --warmup "$w_ev" | tag "$run" >>"$out"
	"$b/tcp_pingpong" --modes busy,blocking,epoll --sizes "$sizes" --iters "$tcp_iters" \
		--warmup "$w_tcp" | tag "$run" >>"$out"
	for mode in busy event; do
		"$b/tern_local_bench" --transport tcp --mode "$mode" --sizes "$sizes" \
			--iters "$tcp_iters" --warmup "$w_tcp" | tag "$run" >>"$out"
	done
	for tp in shm tcp; do
		"$b/tern_local_bench" --transport "$tp" --mode busy --inflight 32 --sizes "$sizes" \
			--iters "$pipe_iters" --warmup $((pipe_iters / 10)) | tag "$run" >>"$out"
	done
done

python3 - "$out" <<'EOF'
import json, statistics, sys

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
# tern (transport, mode) -> the raw run it is divided by, and the target
PAIRS = {
    ("shm", "busy"): (("shm_ring_pingpong", "busy"), 1.5),
    ("tcp", "busy"): (("tcp_pingpong", "busy"), 1.2),
    ("tcp", "event"): (("tcp_pingpong", "epoll"), 1.2),
}
base = {(r["run"], r["bench"], r["mode"], r["size"]): r["p50_us"]
        for r in rows if r.get("kind") == "baseline"}
blocking = {(r["run"], r["size"]): r["p50_us"]
            for r in rows if r["bench"] == "tcp_pingpong" and r["mode"] == "blocking"}
for r in rows:
    if r.get("kind") == "baseline":
        r["baseline_p50_us"], r["ratio"] = r["p50_us"], 1.0
        continue
    pair = PAIRS.get((r["transport"], r["mode"])) if r["inflight"] == 1 else None
    b = base.get((r["run"], pair[0][0], pair[0][1], r["size"])) if pair else None
    r["baseline"] = f"{pair[0][0]}/{pair[0][1]}" if pair else None
    r["baseline_p50_us"] = b
    r["ratio"] = round(r["p50_us"] / b, 3) if b else None
    if pair and r["transport"] == "tcp" and r["mode"] == "event":
        bb = blocking.get((r["run"], r["size"]))
        r["ratio_vs_blocking"] = round(r["p50_us"] / bb, 3) if bb else None
for r in rows:
    print(json.dumps(r, separators=(",", ":")))

def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None

def fmt(x, d=2):
    return "-" if x is None else f"{x:.{d}f}"

print()
print(f"medians over {max(r['run'] for r in rows)} runs (p50/p99 in us; rate in calls/s)")
print(f"{'transport':9} {'mode':8} {'size':>6} {'inflight':>8} {'p50':>8} {'p99':>8} "
      f"{'rate':>10} {'raw p50':>8} {'ratio':>6} {'target':>6}  met")
keys = []
for r in rows:
    if r.get("kind") == "baseline":
        continue
    k = (r["transport"], r["mode"], r["inflight"], r["size"])
    if k not in keys:
        keys.append(k)
for k in keys:
    g = [r for r in rows if r.get("kind") != "baseline" and
         (r["transport"], r["mode"], r["inflight"], r["size"]) == k]
    pair = PAIRS.get((k[0], k[1])) if k[2] == 1 else None
    ratio = med(r["ratio"] for r in g)
    target = pair[1] if pair else None
    met = "-" if ratio is None else ("yes" if ratio <= target else "NO")
    print(f"{k[0]:9} {k[1]:8} {k[3]:>6} {k[2]:>8} {fmt(med(r['p50_us'] for r in g)):>8} "
          f"{fmt(med(r['p99_us'] for r in g)):>8} {med(r['rate_per_s'] for r in g):>10.0f} "
          f"{fmt(med(r['baseline_p50_us'] for r in g)):>8} {fmt(ratio):>6} "
          f"{fmt(target, 1) if target else '-':>6}  {met}")
print()
print("raw floors (medians):")
for bench, mode in sorted({(r["bench"], r["mode"]) for r in rows if r.get("kind") == "baseline"}):
    for size in sorted({r["size"] for r in rows}):
        g = [r for r in rows if r.get("kind") == "baseline" and r["bench"] == bench and
             r["mode"] == mode and r["size"] == size]
        if g:
            print(f"  {bench:18} {mode:8} {size:>6}  p50 {fmt(med(r['p50_us'] for r in g))}"
                  f"  p99 {fmt(med(r['p99_us'] for r in g))}")
EOF
