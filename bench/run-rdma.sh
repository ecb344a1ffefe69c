#!/usr/bin/env bash
# bench/run-rdma.sh [BUILDDIR] - the issue-3 benchmark on one verbs device.
#
# Runs the raw-verbs RC ping-pong baseline and then tern's echo, in the same
# run, on the same device, both busy-polling, and prints JSON lines: first
# the baseline's, then tern's with baseline_p50_us and ratio filled in.
# Needs a verbs device: run it through tools/rxe-vm on a host without one
# (tools/bench does that).
set -euo pipefail
b=${1:-build-release}
sizes=${TERN_BENCH_SIZES:-32,256,1K,4K,8160}
iters=${TERN_BENCH_ITERS:-3000}
base=$(mktemp /tmp/tern-baseline.XXXXXX)
trap 'rm -f "$base"' EXIT
"$b/bench/verbs_pingpong" --sizes "$sizes" --iters "$iters" >"$base"
cat "$base"
"$b/bench/tern_bench" --baseline "$base" --sizes "$sizes" --depths 1,16 --iters "$iters"
