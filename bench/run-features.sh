#!/usr/bin/env bash
# bench/run-features.sh [BUILDDIR] - the features stream: FRAMES (500,000)
# f32[256] frames pushed one way by the C producer into the C consumer,
# which checks each and runs batched inference on 256 at a time, over rdma://
# on this host's RDMA address (or TERN_FEATURES_URI); then, in the same round, the same stream into
# the Python consumer (examples/features/consumer.py, numpy; skipped with a
# note when BUILDDIR has no Python package).  ROUNDS rounds; JSON lines from
# every side (the producer feeding Python reports lang "c-to-python").
set -euo pipefail
b=${1:-build-release}
frames=${TERN_FEATURES_FRAMES:-500000}
rounds=${TERN_BENCH_ROUNDS:-3}
# TERN_FEATURES_URI (say shm://tern-features) runs the stream elsewhere than rdma://.
uri=${TERN_FEATURES_URI:-}
if [ -z "$uri" ]; then
	addr=${TERN_RDMA_ADDR:-$(python3 -c 'import sys; sys.path.insert(0, "tests/gen"); import run_example; print(run_example.find_rdma_addr() or "")')}
	[ -n "$addr" ] || { echo "run-features: no RDMA address" >&2; exit 77; }
	uri="rdma://$addr:0"
fi
out=$(mktemp /tmp/tern-features.XXXXXX)
trap 'rm -f "$out"; [ -n "${cp:-}" ] && kill "$cp" 2>/dev/null; true' EXIT
for r in $(seq "$rounds"); do
	"$b/examples/features/features_consumer" "$uri" "$frames" >"$out" &
	cp=$!
	for _ in $(seq 300); do [ -s "$out" ] && break; sleep 0.1; done
	"$b/examples/features/features_producer" "$(head -1 "$out")" "$frames" |
		grep '^{' | sed "s/^{/{\"round\":$r,/"
	wait "$cp"
	cp=
	grep '^{' "$out" | sed "s/^{/{\"round\":$r,/"
	if [ -d "$b/python/tern" ]; then
		PYTHONPATH="$b/python" /usr/bin/python3 examples/features/consumer.py \
			"$uri" "$frames" >"$out" &
		cp=$!
		for _ in $(seq 600); do [ -s "$out" ] && break; sleep 0.1; done
		"$b/examples/features/features_producer" "$(head -1 "$out")" "$frames" |
			grep '^{' | sed "s/^{/{\"round\":$r,\"lang\":\"c-to-python\",/"
		wait "$cp"
		cp=
		grep '^{' "$out" | sed "s/^{/{\"round\":$r,/"
	else
		echo "run-features: $b has no Python package (meson -Dpython=enabled); C only" >&2
	fi
done
