#!/usr/bin/env bash
# bench/run-bw-local.sh - large messages over shm:// and tcp:// against
# their floors, measured in the same run, on this host.
#
#   shm  tern_bw --transport shm   vs  local_bw --memcpy (one memcpy, one thread)
#        three ways, taking turns call by call (tern_bw --shm-paths):
#        process_vm, a tern_mem_alloc() buffer the server maps, and a
#        staging memfd (what Yama ptrace_scope 1 leaves)
#   tcp  tern_bw --transport tcp   vs  local_bw --tcp    (raw loopback TCP)
#
# tern_bw: one call in flight, client and server in two processes; replies
# pushed into the caller's registered buffer, requests pulled from it.  Each
# round measures a baseline and then tern, back to back.  Output: every
# JSON line (tern's carry baseline_gb_per_s and ratio from the same round),
# then a table of medians over the rounds, the memfd paths against
# process_vm (medians of the per-round ratios), and the 16 MiB shm targets
# (>= 0.8 x memcpy with tern_mem_alloc memory, >= 0.5 x through staging).
#
# usage: bench/run-bw-local.sh [--rounds N] [--sizes 64K,1M,16M,256M] [--iters N]
# environment: TERN_BENCH_BUILDDIR (default build-release)
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd -P)
builddir=${TERN_BENCH_BUILDDIR:-$top/build-release}
rounds=${TERN_BENCH_ROUNDS:-3}
sizes=${TERN_BW_SIZES:-64K,1M,16M,256M}
iters=${TERN_BW_ITERS:-20}

while [ $# -gt 0 ]; do
	case "$1" in
	--rounds) rounds=${2:?}; shift 2 ;;
	--sizes) sizes=${2:?}; shift 2 ;;
	--iters) iters=${2:?}; shift 2 ;;
	-h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "run-bw-local.sh: unknown argument $1" >&2; exit 2 ;;
	esac
done

if [ ! -f "$builddir/build.ninja" ]; then
	meson setup "$builddir" "$top" --buildtype=release -Dtests=false >/dev/null
fi
meson compile -C "$builddir" >/dev/null
b=$builddir/bench
out=$(mktemp)
base=$(mktemp)
trap 'rm -f "$out" "$base"' EXIT
tag() { sed "s/^{/{\"round\":$1,/"; }

for r in $(seq 1 "$rounds"); do
	echo "round $r of $rounds ..." >&2
	"$b/local_bw" --memcpy --sizes "$sizes" --iters "$iters" >"$base"
	tag "$r" <"$base" >>"$out"
	"$b/tern_bw" --transport shm --shm-paths --baseline "$base" --sizes "$sizes" \
		--iters "$iters" |
		tag "$r" >>"$out"
	"$b/local_bw" --tcp --sizes "$sizes" --iters "$iters" >"$base"
	tag "$r" <"$base" >>"$out"
	"$b/tern_bw" --transport tcp --baseline "$base" --sizes "$sizes" --iters "$iters" |
		tag "$r" >>"$out"
done
cat "$out"
echo
python3 - "$out" <<'PY'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    j = json.loads(line)
    if j.get("bench") != "tern_bw":
        continue
    k = (j["transport"], j["kind"], j["size"])
    rows.setdefault(k, []).append(j)
def size(n):
    for u, s in ((1 << 30, "G"), (1 << 20, "M"), (1 << 10, "K")):
        if n >= u and n % u == 0:
            return "%d%s" % (n // u, s)
    return str(n)
print("| transport | kind | size | tern GB/s | baseline | baseline GB/s | ratio |")
print("|---|---|---:|---:|---|---:|---:|")
target = None
for (tp, kind, sz), js in sorted(rows.items(), key=lambda x: (x[0][0], x[0][1], x[0][2])):
    g = statistics.median(j["gb_per_s"] for j in js)
    bg = statistics.median(j["baseline_gb_per_s"] for j in js)
    ra = statistics.median(j["ratio"] for j in js)
    print("| %s | %s | %s | %.2f | %s | %.2f | %.2f |" % (tp, kind, size(sz), g, js[0]["baseline"], bg, ra))
    if tp == "shm" and sz == 16 << 20 and "process_vm" in kind:
        target = min(ra, target) if target is not None else ra
print()
if target is not None:
    print("shm target (16 MiB, process_vm >= 0.8 x memcpy, both directions): %s (worst median ratio %.2f)"
          % ("met" if target >= 0.8 else "NOT met", target))
print()
print("shm paths against process_vm, same run (median of per-round ratios)")
print("| kind | size | GB/s | process_vm GB/s | ratio |")
print("|---|---:|---:|---:|---:|")
targets = {}
for (tp, kind, sz), js in sorted(rows.items(), key=lambda x: (x[0][1], x[0][2])):
    if tp != "shm" or "vm_ratio" not in js[0] or "process_vm" in kind:
        continue
    print("| %s | %s | %.2f | %.2f | %.2f |" % (kind, size(sz),
          statistics.median(j["gb_per_s"] for j in js),
          statistics.median(j["vm_gb_per_s"] for j in js),
          statistics.median(j["vm_ratio"] for j in js)))
    if sz == 16 << 20:
        way = "map" if "map" in kind else "stage"
        ra = statistics.median(j["ratio"] for j in js)
        targets[way] = min(ra, targets.get(way, ra))
print()
for way, want, what in (("map", 0.8, "tern_mem_alloc memory"), ("stage", 0.5, "staging memfd")):
    if way not in targets:
        print("shm target (16 MiB, %s >= %.1f x memcpy): not measured (no 16M size)" % (what, want))
    else:
        print("shm target (16 MiB, %s >= %.1f x memcpy, both directions): %s (worst median ratio %.2f)"
              % (what, want, "met" if targets[way] >= want else "NOT met", targets[way]))
PY
