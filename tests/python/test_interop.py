# SPDX-License-Identifier: MIT
"""Python against C, both ways, from the same .tern files."""
import errno
import os
import re
import signal
import subprocess
import sys

import pytest

import tern
from conftest import HERE, SRC, binary, c_env, listen_uri, run_calc_client

I64_MAX = 2**63 - 1


def test_ids_and_hash_are_tern_gen_s(calc_idl):
    spec = calc_idl.Calc.__tern_service__
    assert spec.methods["add"].id == 0xbdaf910d
    assert spec.methods["stats"].id == 0x9b0c8355
    assert spec.schema_hash == 0x4dfdcc79dea8f83b
    out = subprocess.run([sys.executable, os.path.join(SRC, "tools", "tern-gen"), "--describe",
                          os.path.join(SRC, "examples", "calc", "calc.tern")],
                         capture_output=True, text=True, check=True).stdout
    assert f"{spec.schema_hash:016x}" in out.lower() or str(spec.schema_hash) in out


def test_python_declared_service_hashes_like_its_tern_file(echo_idl):
    class Echo:
        @tern.method
        def copy(self, req):
            return req

        @tern.method(inplace=True)
        def zerocopy(self, req, out):
            return 0
    spec, _ = tern.describe(Echo)
    want = echo_idl.Echo.__tern_service__
    assert spec.schema_hash == want.schema_hash
    assert {m: s.id for m, s in spec.methods.items()} == \
        {m: s.id for m, s in want.methods.items()}


def test_python_client_c_calc_server(procs, calc_idl):
    srv = procs([binary("calc_server"), listen_uri()])
    with tern.proxy(srv.uri, calc_idl.Calc, timeout=10) as calc:
        assert calc.add(a=40, b=2).result().sum == 42
        futs = [calc.add(calc_idl.AddReq(a=i, b=100 * i)) for i in range(1, 9)]
        assert tern.wait_all(futs, 10)
        assert sum(f.result().sum for f in futs) == 101 * 36
        with pytest.raises(tern.OutOfRange) as e:  # a RemoteError: the C handler's ERANGE
            calc.add(a=I64_MAX, b=1).result()
        assert e.value.code == -errno.ERANGE
        assert e.value.message == "a + b overflows an i64"
        st = calc.stats().result(10)  # deferred at the server, answered from a timer
        assert st.adds == 9
        assert list(st.recent) == [800 + 8, 707, 606, 505]
    rc, out, err = srv.stop()
    assert rc == 0, err


def test_c_calc_client_python_server(procs):
    srv = procs([sys.executable, os.path.join(HERE, "py_server.py"), "calc", listen_uri()])
    run_calc_client(srv.uri)
    rc, out, err = srv.stop(signal.SIGINT)
    assert rc == 0, err
    assert "Traceback" not in err


def test_c_echo_client_python_server(procs):
    srv = procs([sys.executable, os.path.join(HERE, "py_server.py"), "echo", listen_uri()])
    r = subprocess.run([binary("echo_client"), srv.uri], capture_output=True, text=True,
                       env=c_env(), timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "echo_client: every byte came back" in r.stdout
    assert re.search(r"^8160 bytes: copy ok, zerocopy ok$", r.stdout, re.M)
    rc, out, err = srv.stop(signal.SIGINT)
    assert rc == 0, err


def test_python_client_c_echo_server(procs, echo_idl):
    srv = procs([binary("echo_server"), listen_uri()])
    with tern.proxy(srv.uri, echo_idl.Echo, timeout=10) as echo:
        big = bytes(i * 7 % 251 for i in range(echo.session.max_payload))
        for data in (b"", b"x", b"hello, tern", big):
            assert echo.copy(data).result() == data
            assert echo.zerocopy(data).result() == data
        with pytest.raises(tern.MessageTooLarge) as e:
            echo.copy(big + b"!").result()  # the request goes; its echo fits no slot
        assert isinstance(e.value, tern.RemoteError)
    rc, out, err = srv.stop()
    assert rc == 0, err


def test_features_python_consumer_c_producer(procs):
    consumer = os.path.join(SRC, "examples", "features", "consumer.py")
    srv = procs([sys.executable, consumer, listen_uri(), "20000"])
    r = subprocess.run([binary("features_producer"), srv.uri, "20000"], capture_output=True,
                       text=True, env=c_env(), timeout=300)
    if r.returncode != 0:
        rc, out, err = srv.stop()
        raise AssertionError(f"producer: {r.stdout}{r.stderr}\nconsumer ({rc}): {out}{err}")
    assert "features_producer: 20000 frames sent and consumed" in r.stdout
    rc, out, err = srv.stop(signal.SIGCONT)  # it exits by itself once the producer closed
    assert rc == 0, out + err
    assert "features consumer.py: all 20000 frames checked" in out
    assert '"lang":"python","frames":20000,"bad":0' in out


def store_session(uri):
    """One client's calls on a Store server, checked, and what came back."""
    import py_server
    idl = py_server.store
    seen = []

    def call(f, *args, **kw):
        try:
            r = f(*args, **kw).result()
        except tern.RpcError as e:
            seen.append((type(e).__name__, e.code, e.message))
            return e
        seen.append(("ok", bytes(r)))
        return r

    with tern.proxy(uri, idl.Store, timeout=30) as p:
        room = p.session.max_payload
        st = call(p.put, name=b"alpha", data=b"one")
        assert (st.name, st.size, st.version) == (b"alpha" + bytes(11), 3, 1)
        assert st.sum == py_server.sum32(b"one")
        assert isinstance(call(p.put, name=b"alpha", flags=1, data=b"x"), tern.AlreadyExists)
        assert call(p.put, name=b"alpha", data=b"two!!").version == 2
        v = call(p.get, name=b"alpha")  # typed reply with its tail, written in place
        assert (v.name, v.version, bytes(v.data)) == (b"alpha" + bytes(11), 2, b"two!!")
        assert len(v) == 24 + 5
        e = call(p.get, name=b"zeta")
        assert isinstance(e, tern.NotFound) and isinstance(e, tern.RemoteError)
        assert (e.code, e.message) == (-errno.ENOENT, "no such key")
        assert call(p.stat, name=b"alpha").size == 5
        assert isinstance(call(p.stat, name=b"zeta"), tern.NotFound)
        assert call(p.name, name=b"alpha") == b"alpha@v2"
        assert call(p.name, name=b"zeta") == b"zeta@missing"
        # the tail fills the slot exactly; four bytes more do not fit
        big = bytes(i * 7 % 251 for i in range(room - 24))
        call(p.put, name=b"beta", data=big)
        v = call(p.get, name=b"beta")
        assert len(v) == room and bytes(v.data) == big
        call(p.put, name=b"gamma", data=big + b"!!!!")
        e = call(p.get, name=b"gamma")
        assert isinstance(e, tern.RemoteMessageTooLarge) and e.code == -errno.EMSGSIZE
        # a request whose length does not fit its type is refused the same way
        e = call(p.session.call, idl.Store.__tern_service__.methods["get"].id, b"abc")
        assert isinstance(e, tern.BadRequest)
        assert (e.code, e.message) == (-errno.EBADMSG, "Store.get: request of 3 bytes, "
                                       "expected 16 (or fewer, ending at a field)")
        # requests built in the send slot
        with p.get.acquire() as s:
            s.message.name = b"alpha"
            v = call(s.commit)
        assert bytes(v.data) == b"two!!"
        s = p.put.acquire()
        s.message.name = b"delta"
        s.message.data = b"built in the slot"
        st = call(s.commit)
        assert (st.size, st.version) == (17, 1)
    return seen


def test_inplace_typed_replies_the_same_from_c_and_python(procs):
    """The same .tern served by C and by Python inplace handlers: one client
    sees the same bytes and the same errors from both."""
    c = procs([binary("store_server"), listen_uri()])
    py = procs([sys.executable, os.path.join(HERE, "py_server.py"), "store", listen_uri()])
    from_c = store_session(c.uri)
    from_py = store_session(py.uri)
    assert from_c == from_py
    assert len(from_c) == 16 and sum(1 for x in from_c if x[0] == "ok") == 11
    for srv, sig in ((c, signal.SIGTERM), (py, signal.SIGINT)):
        rc, out, err = srv.stop(sig)
        assert rc == 0, err
        assert "Traceback" not in err
