# SPDX-License-Identifier: MIT
"""tern.Group, property-style (python3-hypothesis): for any member count,
client count and mix of calls (Python raw, a failing handler, one-way
messages, a C handler run without the GIL), every call is answered exactly
once, with the bytes its own request calls for."""
import collections
import ctypes
import os

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import tern
import conftest
from test_group import Shout, listen_uri, run_clients

# The VM lane (emulated CPUs) runs a few examples, without shrinking; the
# host lanes run 30 and shrink what fails.
VM = conftest.TRANSPORT == "rdma"


class Rev:
    """The C handler's method (tern_test_reverse in group_handlers.c)."""

    @tern.method(raw=True)
    def rev(self, req):
        raise AssertionError("served in C")


REV_ID = tern.describe(Rev)[0].methods["rev"].id


class Counted(Shout):
    """Shout counting each request it saw, by its (unique) bytes."""

    service_name = "Shout"

    def __init__(self):
        super().__init__()
        self.seen = collections.Counter()

    @tern.method(raw=True)
    def upper(self, req):
        b = bytes(req)
        with self.lock:
            self.seen[b] += 1
        return b.upper()


OPS = st.sampled_from(["upper", "fail", "note", "rev"])
# Short payloads as drawn, long ones (to most of a default 8 KiB slot) as a
# pattern from a drawn seed and length: cheap to draw, and every byte counts.
LONG = st.tuples(st.integers(0, 255), st.integers(0, 6000)).map(
    lambda t: bytes((t[0] + i * 7) & 0xff for i in range(t[1])))
CALL = st.tuples(OPS, st.one_of(st.binary(max_size=64), LONG))
CLIENT = st.lists(CALL, max_size=40)


@pytest.fixture(scope="module")
def rev_fn():
    path = os.environ.get("TERN_GROUP_HANDLERS")
    if not path:
        pytest.skip("TERN_GROUP_HANDLERS is not set")
    lib = ctypes.CDLL(path)
    return lib, ctypes.cast(lib.tern_test_reverse, ctypes.c_void_p).value


@settings(max_examples=4 if VM else 30, deadline=None, database=None,
          phases=[Phase.generate] if VM else list(Phase),
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(members=st.integers(1, 4), clients=st.lists(CLIENT, min_size=1, max_size=5),
       window=st.integers(1, 16))
def test_every_call_answered_once_and_right(rev_fn, members, clients, window):
    svc = Counted()
    count = ctypes.c_ulong(0)
    g = tern.Group(listen_uri(), svc, members=members, start=False)
    try:
        g.register_c(REV_ID, rev_fn[1], ctypes.addressof(count))
        uri = g.start()

        def client(k):
            calls = clients[k]
            with tern.proxy(uri, Shout, timeout=60, progress="event") as p:
                inflight = collections.deque()

                def settle():
                    f, op, req = inflight.popleft()
                    if op == "fail":
                        with pytest.raises(tern.RemoteError, match="ValueError: no "):
                            f.result(60)
                    elif op == "upper":
                        assert f.result(60) == req.upper()
                    else:
                        assert f.result(60) == req[::-1]
                for i, (op, data) in enumerate(calls):
                    req = b"%d.%d:" % (k, i) + data  # unique: counted once
                    if op == "note":
                        p.note(req)
                        continue
                    if op == "rev":
                        f = p.session.call(REV_ID, req)
                    elif op == "fail":
                        f = p.fail(b"x" + data[:32].hex().encode())
                    else:
                        f = p.upper(req)
                    inflight.append((f, op, req))
                    if len(inflight) >= window:
                        settle()
                while inflight:
                    settle()
                # one-way messages before it in the session are handled first
                assert p.upper(b"%d.end" % k).result(60) == b"%d.END" % k
        run_clients(client, len(clients))
        want_upper = collections.Counter(
            b"%d.%d:" % (k, i) + d for k, c in enumerate(clients)
            for i, (op, d) in enumerate(c) if op == "upper")
        want_upper.update(b"%d.end" % k for k in range(len(clients)))
        assert svc.seen == want_upper
        want_notes = sorted(b"%d.%d:" % (k, i) + d for k, c in enumerate(clients)
                            for i, (op, d) in enumerate(c) if op == "note")
        assert sorted(svc.notes) == want_notes
        assert count.value == sum(op == "rev" for c in clients for op, _ in c)
        assert sum(g.accepted) == len(clients)
        assert max(g.accepted) - min(g.accepted) <= 1  # round-robin
    finally:
        g.close()
