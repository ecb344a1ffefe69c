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
from conftest import HERE, SRC, binary, c_env, listen_uri

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
    r = subprocess.run([binary("calc_client"), srv.uri], capture_output=True, text=True,
                       env=c_env(), timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"^add\(40, 2\) = 42$", r.stdout, re.M)
    assert re.search(r"^add\(INT64_MAX, 1\) failed: .*: a \+ b overflows an i64$", r.stdout,
                     re.M)
    assert re.search(r"^stats: adds=9 total=3678 recent=\[808 707 606 505\]$", r.stdout, re.M)
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
