#!/usr/bin/env bash
# bench/run-bw-local.sh - large messages over shm:// and tcp:// against
# their floors, measured in the same run, on this host.
#
#   shm  tern_bw --transport shm   vs  local_bw --memcpy (one memcpy, one thread)
#   tcp  tern_bw --transport tcp   vs  local_bw --tcp    (raw loopback TCP)
#
# tern_bw: one call in flight, client and server in two processes; replies
# pushed into the caller's registered buffer, requests pulled from it.  Each
# round measures a baseline and then tern, back to back.  Output: every
# JSON line (tern's carry baseline_gb_per_s and ratio from the same round),
# then a table of medians over the rounds, and the 16 MiB shm target
# (>= 0.8 x memcpy) met or not.
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
	"$b/tern_bw" --transport shm --baseline "$base" --sizes "$sizes" --iters "$iters" |
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
    if tp == "shm" and sz == 16 << 20:
        target = min(ra, target) if target is not None else ra
print()
if target is None:
    print("shm target (16 MiB >= 0.8 x memcpy): not measured (no 16M size)")
else:
    print("shm target (16 MiB >= 0.8 x memcpy, both directions): %s (worst median ratio %.2f)"
          % ("met" if target >= 0.8 else "NOT met", target))
PY
