#!/usr/bin/env bash
# bench/run-rdma.sh [BUILDDIR] - the issue-3 benchmark on one verbs device.
#
# Timings on shared machines drift, so it runs ROUNDS rounds; each round
# measures the raw-verbs RC baseline (1 and 16 in flight) and then tern's
# echo, back to back on the same device, both busy-polling, and tern's lines
# carry that round's baseline p50 and the ratio.  bench/table.py reports
# the median of each figure over the rounds.  Needs a verbs device: run it
# through tools/rxe-vm on a host without one (tools/bench does that).
set -euo pipefail
b=${1:-build-release}
sizes=${TERN_BENCH_SIZES:-32,256,1K,4K,8160}
iters=${TERN_BENCH_ITERS:-3000}
rounds=${TERN_BENCH_ROUNDS:-3}
base=$(mktemp /tmp/tern-baseline.XXXXXX)
trap 'rm -f "$base"' EXIT
for r in $(seq "$rounds"); do
	"$b/bench/verbs_pingpong" --sizes "$sizes" --iters "$iters" >"$base"
	"$b/bench/verbs_pingpong" --sizes "$sizes" --iters "$iters" --depth 16 >>"$base"
	sed "s/^{/{\"round\":$r,/" "$base"
	"$b/bench/tern_bench" --baseline "$base" --sizes "$sizes" --depths 1,16 --iters "$iters" |
		sed "s/^{/{\"round\":$r,/"
done
