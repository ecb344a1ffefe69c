# SPDX-License-Identifier: MIT
"""The records of one benchmark in a JSON-lines result file (bench/results/*.jsonl).

A result file starts with a meta line ({"meta": ...}, tools/bench) and may
hold other text; records(stream, "idle") yields the dicts whose "bench" is
"idle", in order.
"""
import json


def records(stream, bench):
    for line in stream:
        line = line.strip()
        if not line.startswith("{"):
            continue
        d = json.loads(line)
        if d.get("bench") == bench:
            yield d
