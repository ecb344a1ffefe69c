#!/usr/bin/env bash
# bench/run-bw.sh [BUILDDIR] - large-message bandwidth against raw RDMA WRITE.
#
# ROUNDS rounds; each runs bench/verbs_write_bw (raw RDMA WRITE and raw RDMA
# READ, one transfer in flight) and then bench/tern_bw (tern's large replies,
# pushed with RDMA WRITE, and large requests, pulled with RDMA READ, one call
# in flight) on the same device, back to back; each tern line is divided by
# the raw operation it uses.  Needs a verbs device (tools/bench uses the VM).
set -euo pipefail
b=${1:-build-release}
sizes=${TERN_BW_SIZES:-64K,1M,16M,256M}
iters=${TERN_BW_ITERS:-5}
rounds=${TERN_BENCH_ROUNDS:-3}
base=$(mktemp /tmp/tern-bw-baseline.XXXXXX)
trap 'rm -f "$base"' EXIT
for r in $(seq "$rounds"); do
	"$b/bench/verbs_write_bw" --sizes "$sizes" --iters "$iters" >"$base"
	"$b/bench/verbs_write_bw" --sizes "$sizes" --iters "$iters" --read >>"$base"
	sed "s/^{/{\"round\":$r,/" "$base"
	"$b/bench/tern_bw" --baseline "$base" --sizes "$sizes" --iters "$iters" |
		sed "s/^{/{\"round\":$r,/"
done
