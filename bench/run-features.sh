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
# One stream: start the consumer (the command given, printing its URI on its
# first line) within @tenths tenths of a second, push every frame into it from
# the C producer, and print both sides' JSON lines tagged with the round;
# @extra is added to the producer's lines.
stream() {
	local r=$1 tenths=$2 extra=$3
	shift 3
	"$@" "$uri" "$frames" >"$out" &
	cp=$!
	for _ in $(seq "$tenths"); do [ -s "$out" ] && break; sleep 0.1; done
	"$b/examples/features/features_producer" "$(head -1 "$out")" "$frames" |
		grep '^{' | sed "s/^{/{\"round\":$r,$extra/"
	wait "$cp"
	cp=
	grep '^{' "$out" | sed "s/^{/{\"round\":$r,/"
}

for r in $(seq "$rounds"); do
	stream "$r" 300 "" "$b/examples/features/features_consumer"
	if [ -d "$b/python/tern" ]; then
		PYTHONPATH="$b/python" stream "$r" 600 '"lang":"c-to-python",' \
			/usr/bin/python3 examples/features/consumer.py
	else
		echo "run-features: $b has no Python package (meson -Dpython=enabled); C only" >&2
	fi
done
