# SPDX-License-Identifier: MIT
"""Compatible schema changes from Python (docs/idl.md, "Compatible changes").

Two versions of one service, each's client against the other's server:
tests/gen/compat_v1.tern and compat_v2.tern (the files test_gen_compat.c
runs in C) between Python peers, and examples/calc/calc.tern against
calc_v2.tern between Python and the C examples.  Every kind of incompatible
change is refused, naming the service, the method and the field.
"""
import os
import re
import signal
import sys
import time

import pytest

import tern
from conftest import HERE, SRC, binary, listen_uri, run_calc_client

V1 = tern.load_idl(os.path.join(SRC, "tests", "gen", "compat_v1.tern"))
V2 = tern.load_idl(os.path.join(SRC, "tests", "gen", "compat_v2.tern"))
CALC2 = tern.load_idl(os.path.join(HERE, "calc_v2.tern"))


def fields(m):
    """A message's fields as plain values (u8 arrays as bytes)."""
    out = {}
    for f in m._fields:
        v = getattr(m, f)
        out[f] = bytes(v) if isinstance(v, (bytes, memoryview)) else v
    return out


def store_class(idl):
    """A Store server of @idl's version; what its handlers read is kept."""
    v2 = idl is V2

    class Store(idl.Store):
        def __init__(self):
            self.items, self.notes, self.kept, self.batches = [], [], [], []

        @tern.method
        def put(self, req):
            self.items.append(fields(req))
            r = idl.PutResp(version=len(self.items))
            if v2:
                r.old = -req.value
            return r

        @tern.method
        def get(self, req, out):
            out.key = req.key
            out.value = req.key * 10
            if v2:
                out.ttl = 99
                out.tag = b"v2!"

        @tern.method
        def later(self, req, reply):
            self.kept.append((req, reply))  # the request, kept past the handler

        @tern.method
        def note(self, req):
            self.notes.append(fields(req))

        @tern.method
        def sum(self, batch):
            items = [idl.Item.from_peer(batch[i]) for i in range(len(batch))]
            self.batches.append([fields(m) for m in items])
            return [idl.PutResp(version=m.key + m.value) for m in items]

        @tern.method
        def blob(self, req):
            return req

    if v2:
        Store.drop = tern.method(lambda self, req: V2.PutResp(version=req.key), name="drop")

    return Store


class Audit(V2.Audit):
    @tern.method
    def log(self, req):
        return req


def wait_for(srv, cond, timeout=30):
    """Until cond() holds on the serving thread."""
    end = time.monotonic() + timeout
    while not srv.on_loop(cond):
        assert time.monotonic() < end, "timed out"
        time.sleep(0.001)


def answer_kept(srv, svc, idl):
    """Reply to every kept request with what it reads now: version = key."""
    def run():
        seen = []
        for req, reply in svc.kept:
            seen.append(fields(req))
            reply.reply(idl.PutResp(version=req.key))
        svc.kept.clear()
        return seen
    return srv.on_loop(run)


def test_a_newer_client_calls_an_older_server(serve_thread):
    svc = store_class(V1)()
    srv = serve_thread(svc)
    with tern.proxy(srv.uri, V2.Store, timeout=30) as p:
        # v2's 23-byte Item read as v1's 16; v1's 8-byte PutResp: old is 0
        r = p.put(key=7, value=70, ttl=5, tag=b"abc").result()
        assert (r.version, r.old) == (1, 0)
        assert svc.items == [{"key": 7, "value": 70}]
        g = p.get(key=7).result()
        assert fields(g) == {"key": 7, "value": 70, "ttl": 0, "tag": b"\0\0\0"}
        f = p.later(key=5, value=50, ttl=9)
        p.note(key=6, value=60, ttl=9)
        s = p.sum(key=1, value=2, ttl=9).result()
        assert (s.version, s.old) == (3, 0)
        wait_for(srv, lambda: svc.notes and svc.kept)
        assert svc.notes == [{"key": 6, "value": 60}]
        assert answer_kept(srv, svc, V1) == [{"key": 5, "value": 50}]
        assert (f.result().version, f.result().old) == (5, 0)


def test_what_an_older_server_lacks_fails_at_the_caller_unsent(serve_thread):
    srv = serve_thread(store_class(V1)())
    with tern.proxy(srv.uri, V2.Store, timeout=30) as p:
        sent = p.session.counters()["calls_sent"]
        with pytest.raises(tern.NoSuchMethod) as e:
            p.drop(key=1)  # raised by the call itself: there is nothing to wait for
        assert isinstance(e.value, tern.RemoteError)
        assert "Store.drop is not served there" in e.value.message
        with pytest.raises(tern.NoSuchMethod):
            p.touch(key=1)
        with p.peek.acquire() as slot:
            slot.message.key = 1
            with pytest.raises(tern.NoSuchMethod):
                slot.commit()
        assert p.session.counters()["calls_sent"] == sent
        assert p.put(key=1, value=1).result().version == 1
    # a service it lacks: nothing of what the client asks for is served here
    with pytest.raises(tern.SchemaMismatch) as e:
        tern.proxy(srv.uri, V2.Audit)
    assert e.value.code == tern._tern.ENOSERVICE
    assert "service Audit is not served here" in e.value.message


def test_an_older_client_calls_a_newer_server(serve_thread):
    svc = store_class(V2)()
    srv = serve_thread([svc, Audit()])
    with tern.proxy(srv.uri, V1.Store, timeout=30) as p:
        # v1's Item: ttl and tag read as zero at the v2 handler
        assert p.put(key=7, value=70).result().version == 1
        assert svc.items == [{"key": 7, "value": 70, "ttl": 0, "tag": b"\0\0\0"}]
        assert fields(p.get(key=7).result()) == {"key": 7, "value": 70}
        f = p.later(key=5, value=50)
        p.note(key=6, value=60)
        assert p.sum(key=1, value=2).result().version == 3
        wait_for(srv, lambda: svc.notes and svc.kept)
        assert svc.notes == [{"key": 6, "value": 60, "ttl": 0, "tag": b"\0\0\0"}]
        assert svc.batches == [[{"key": 1, "value": 2, "ttl": 0, "tag": b"\0\0\0"}]]
        for i in range(8):  # requests come and go while later's is kept
            p.put(key=100 + i, value=i).result()
        assert answer_kept(srv, svc, V2) == [{"key": 5, "value": 50, "ttl": 0,
                                              "tag": b"\0\0\0"}]
        assert f.result().version == 5
    with tern.proxy(srv.uri, V2.Audit, timeout=30) as a:
        assert a.log(b"new service").result() == b"new service"


def test_a_newer_python_client_calls_the_c_calc_server(procs):
    srv = procs([binary("calc_server"), listen_uri()])
    with tern.proxy(srv.uri, CALC2.Calc, timeout=10) as calc:
        r = calc.add(a=40, b=2, c=1000).result()  # c: the C server has no such field
        assert (r.sum, r.terms) == (42, 0)
        with pytest.raises(tern.NoSuchMethod):
            calc.mul(a=6, b=7)
        assert calc.stats().result(10).adds == 1
    rc, out, err = srv.stop()
    assert rc == 0, err


def test_the_c_calc_client_calls_a_newer_python_server(procs):
    srv = procs([sys.executable, os.path.join(HERE, "py_server.py"), "calc2", listen_uri()])
    # the sums are a + b + c with c zero: the same answers as calc_server's
    run_calc_client(srv.uri)
    rc, out, err = srv.stop(signal.SIGINT)
    assert rc == 0, err
    assert "Traceback" not in err


# compat_v1.tern changed incompatibly, one way per case, and what the
# refusal says: the service, the method and the field
V1_TEXT = open(os.path.join(SRC, "tests", "gen", "compat_v1.tern")).read()
INCOMPATIBLE = {
    "retyped": (("message Item { u64 key; i64 value; }", "message Item { u64 key; f64 value; }"),
                "service Store, method put: request Item, field 2 at offset 8: value f64 at the client, "
                "value i64 at the server"),
    "inserted": (("message Item { u64 key; i64 value; }",
                  "message Item { u64 key; u32 ttl; i64 value; }"),
                 "service Store, method put: request Item, field 2 at offset 8: ttl u32 at the client, "
                 "value i64 at the server"),
    "reordered": (("message Item { u64 key; i64 value; }",
                   "message Item { i64 value; u64 key; }"),
                  "service Store, method put: request Item, field 1 at offset 0: value i64 at the client, "
                  "key u64 at the server"),
    "removed": (("message Item { u64 key; i64 value; }", "message Item { i64 value; }"),
                "service Store, method put: request Item, field 1 at offset 0: value i64 at the client, "
                "key u64 at the server"),
    "renamed": (("message Key { u64 key; }", "message Key { u64 id; }"),
                "service Store, method get: request Key, field 1 at offset 0: "
                "id u64 at the client, key u64 at the server"),
    "array": (("message Key { u64 key; }", "message Key { u64 key[2]; }"),
              "service Store, method get: request Key, field 1 at offset 0: "
              "key u64[2] at the client, key u64 at the server"),
    "reply": (("message PutResp { u64 version; }", "message PutResp { i64 version; }"),
              "service Store, method put: reply PutResp, field 1 at offset 0: version i64 at the client, "
              "version u64 at the server"),
    "tail": (("message Blob { u32 id; bytes data; }",
              "message Blob { u32 id; u8 kind; bytes data; }"),
             "service Store, method blob: request Blob, field 2 at offset 4: kind u8 at the "
             "client, data bytes at the server"),
    "kind": (("rpc get(Key) returns (Item) inplace;", "rpc get(Key) returns (Item);"),
             "service Store, method get: raw at the client, inplace at the server"),
    "oneway": (("rpc note(Item) oneway;", "rpc note(Item) returns (bytes);"),
               "service Store, method note: raw at the client, oneway at the server"),
    "batch": (("rpc sum(Item) returns (PutResp) batch(max=4, wait_us=200);",
               "rpc sum(Item) returns (PutResp);"),
              "service Store, method sum: raw at the client, batch at the server"),
    "bytes": (("rpc blob(Blob) returns (Blob);", "rpc blob(bytes) returns (Blob);"),
              "service Store, method blob: request bytes at the client, Blob at the server"),
}


@pytest.mark.parametrize("case", sorted(INCOMPATIBLE))
def test_an_incompatible_change_is_refused_by_service_method_and_field(serve_thread, case):
    (old, new), why = INCOMPATIBLE[case]
    assert old in V1_TEXT
    bad = tern.parse_idl(V1_TEXT.replace(old, new), f"{case}.tern")
    refused = []
    srv = serve_thread(store_class(V1)(), on_refused=refused.append)
    with pytest.raises(tern.SchemaMismatch) as e:
        tern.proxy(srv.uri, bad.Store)
    assert e.value.code == tern._tern.ESCHEMA
    assert why in e.value.message
    assert re.search(r"service Store, method \w+: ", e.value.message)
    wait_for(srv, lambda: refused)  # reported once the refused session closes
    assert len(refused) == 1 and why in refused[0].message
