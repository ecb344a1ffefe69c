#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""A consumer that finished on its own still exits 0 when SIGTERM follows.

usage: test_features_sigterm.py CONSUMER PRODUCER

The race issue 13 names: examples/features' consumer leaves its loop once
every frame is in, closes its signal handlers and tears its context down,
while the test harness (run_example.py) sends SIGTERM as soon as the
producer is done.  A SIGTERM that lands after the handlers are closed must
not kill a consumer that is already on its way out.  Here the window is
hit on purpose: once the producer has finished, SIGTERM is sent every
millisecond until the consumer exits.  Runs over shm:// on the host.
"""
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run_example  # noqa: E402


def main(argv):
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    consumer, producer = argv[1], argv[2]
    failures = 0
    rounds = int(os.environ.get("TERN_SIGTERM_ROUNDS", "5"))
    for r in range(rounds):
        uri = f"shm://tern-feat-sigterm-{os.getpid()}-{r}"
        with run_example.Server([consumer, uri, "2000"]) as srv:
            if not srv.uri():
                print(f"FAILED: round {r}: the consumer printed no URI")
                return 1
            p = subprocess.run([producer, uri, "2000"], capture_output=True, text=True,
                               timeout=300)
            if p.returncode != 0:
                print(p.stdout + p.stderr)
                print(f"FAILED: round {r}: producer exit status {p.returncode}")
                return 1
            end = time.monotonic() + 60
            while srv.p.poll() is None and time.monotonic() < end:
                try:
                    srv.p.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    break
                time.sleep(0.001)
            rc = srv.stop()
            out = srv.p.stdout.read()
            if rc != 0 or "all 2000 frames checked" not in out:
                print(out + srv.stderr)
                print(f"FAILED: round {r}: consumer exit status {rc}")
                failures += 1
            else:
                print(f"round {r}: consumer exited 0 under repeated SIGTERM")
    run_example.print_count(rounds - failures, failures)  # each round is a case
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
