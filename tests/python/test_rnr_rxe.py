# SPDX-License-Identifier: MIT
"""tern.RnrMonitor on a real device: rxe0, in the Soft-RoCE VM (rdma suite).

The counters come from the kernel's /sys, and test_rnr_provoke (the C rdma
test that makes a responder with no receive posted answer RNR NAKs) moves
them: Python must see what the C monitor sees.  Exits 77 (skip) without
rxe0, which tools/test counts as a failure of the rdma lane.
"""
import json
import os
import subprocess
import sys
import time

import pytest

from rnr_support import RNR_WATCH

from tern import RnrMonitor
from tern.rnr import CANONICAL


@pytest.fixture(scope="module", autouse=True)
def rxe0():
    if not os.path.isdir("/sys/class/infiniband/rxe0"):
        pytest.exit("no rxe0 here: the rdma suite runs in tools/rxe-vm", returncode=77)


RXE_NAMES = {
    "responder_out_of_buffer": "send_rnr_err",
    "requester_rnr_nak": "rcvd_rnr_err",
    "rnr_retries_exceeded": "retry_rnr_exceeded_err",
    "transport_retries_exceeded": "retry_exceeded_err",
    "requester_retries": "completer_retry_err",
    "requester_sequence_nak": "rcvd_seq_err",
    "responder_duplicate_request": "duplicate_request",
    "responder_out_of_sequence": "out_of_seq_request",
}


def test_reads_rxe0_counters_under_canonical_names():
    with RnrMonitor(devices="rxe0") as mon:
        snap = mon.snapshot()
    assert [(p.device, p.port, p.state) for p in snap.ports] == [("rxe0", 1, "present")]
    port = snap.ports[0]
    assert port.lifespan_ms is not None and port.lifespan_ms > 0
    assert list(port.counters)[:len(CANONICAL)] == list(CANONICAL)
    for name, raw in RXE_NAMES.items():
        c = snap[("rxe0", 1, name)]
        assert (c.raw, c.group, c.status, c.delta) == (raw, "hw_counters", "ok", 0)
        assert isinstance(c.value, int)
    assert snap.errors == {}
    assert len(snap) >= 15  # every hw_counter rxe has on 6.1


def test_sees_the_rnr_that_test_rnr_provoke_causes():
    provoke = os.environ["TERN_TEST_RNR_PROVOKE"]
    with RnrMonitor(devices="rxe*") as mon:
        before = mon.snapshot()
        r = subprocess.run([provoke], capture_output=True, text=True, timeout=500)
        assert r.returncode == 0, r.stdout + r.stderr
        # The kernel caches hw_counters for lifespan_ms.
        time.sleep(before.ports[0].lifespan_ms / 1000 + 0.05)
        after = mon.snapshot()
    for name in ("responder_out_of_buffer", "requester_rnr_nak", "rnr_retries_exceeded"):
        assert after.delta(name, "rxe0", 1) >= 1, name
        assert after.rate(name, before) > 0, name
    assert after.delta("out_of_buffer") == after.delta("send_rnr_err") >= 1


def test_rnr_watch_reads_rxe0():
    r = subprocess.run([sys.executable, RNR_WATCH, "--device", "rxe0", "--count", "1",
                        "--interval", "0.1", "--format", "json",
                        "--alert", "responder_out_of_buffer.total<0"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    ports = json.loads(r.stdout)["ports"]
    assert [(p["device"], p["port"]) for p in ports] == [("rxe0", 1)]
    names = {c["counter"]: c for c in ports[0]["counters"]}
    assert names["responder_out_of_buffer"]["raw"] == "send_rnr_err"
    assert names["responder_out_of_buffer"]["status"] == "ok"
