# SPDX-License-Identifier: MIT
"""Shared fixtures of the Python binding tests.

The transport comes from TERN_PY_TRANSPORT (shm, tcp or rdma); meson passes
it with the paths of the C examples (TERN_BIN_<NAME>) and runs this suite
once per transport: shm and tcp on the host, rdma in the Soft-RoCE VM.
"""
import itertools
import os
import re
import signal
import subprocess
import sys
import threading

import pytest

import tern

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.dirname(os.path.dirname(HERE))
TRANSPORT = os.environ.get("TERN_PY_TRANSPORT", "tcp")
_names = itertools.count()


def rdma_addr():
    sys.path.insert(0, os.path.join(SRC, "tests", "gen"))
    import run_example
    return run_example.find_rdma_addr()


def listen_uri():
    """A URI to listen on, for this run's transport."""
    if TRANSPORT == "shm":
        return f"shm://tern-py-{os.getpid()}-{next(_names)}"
    if TRANSPORT == "tcp":
        return "tcp://127.0.0.1:0"
    if TRANSPORT == "rdma":
        addr = rdma_addr()
        if not addr:
            pytest.skip("no RDMA device")
        return f"rdma://{addr}:0"
    raise RuntimeError(f"unknown TERN_PY_TRANSPORT {TRANSPORT!r}")


def c_env():
    """The environment for a C program: its own ASan runtime, leak check on.

    The interpreter runs with LD_PRELOAD of the sanitizer runtimes and
    without the leak check (CPython leaks at exit); the C examples are
    linked with ASan and keep theirs.
    """
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    if "ASAN_OPTIONS" in env:
        env["ASAN_OPTIONS"] = "detect_leaks=1"
    return env


def binary(name):
    path = os.environ.get("TERN_BIN_" + name.upper())
    if not path or not os.path.exists(path):
        pytest.skip(f"{name} is not built (TERN_BIN_{name.upper()})")
    return path


def run_calc_client(uri):
    """examples/calc's C client against @uri: its output, checked for what
    calc_server answers (and any Calc server must)."""
    r = subprocess.run([binary("calc_client"), uri], capture_output=True, text=True,
                       env=c_env(), timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"^add\(40, 2\) = 42$", r.stdout, re.M)
    assert re.search(r"^add\(INT64_MAX, 1\) failed: .*: a \+ b overflows an i64$", r.stdout,
                     re.M)
    assert re.search(r"^stats: adds=9 total=3678 recent=\[808 707 606 505\]$", r.stdout, re.M)
    assert "calc_client: all answers right" in r.stdout
    return r.stdout


def ticks_while(fn):
    """Run fn() while another thread counts as fast as it can: the count
    is the Python that ran meanwhile (thousands if fn released the GIL)."""
    ticks = [0]
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            ticks[0] += 1
    t = threading.Thread(target=spin)
    t.start()
    try:
        fn()
    finally:
        stop.set()
        t.join()
    return ticks[0]


# examples/calc/calc.tern's Calc with AddReq.b an i32: incompatible
BAD_CALC = """
service Calc {
  rpc add(AddReq) returns (AddResp);
  rpc stats(bytes) returns (Stats) deferred;
}
message AddReq { i64 a; i32 b; }
message AddResp { i64 sum; }
message Stats { u64 adds; i64 total; i64 recent[4]; }
"""



@pytest.fixture
def uri():
    return listen_uri()


@pytest.fixture(scope="session")
def calc_idl():
    return tern.load_idl(os.path.join(SRC, "examples", "calc", "calc.tern"))


@pytest.fixture(scope="session")
def echo_idl():
    return tern.load_idl(os.path.join(SRC, "examples", "echo", "echo.tern"))


class ThreadServer:
    """A tern.Server served by a thread of this process until stop()."""

    def __init__(self, service, progress="event", **kw):
        self.srv = tern.Server(listen_uri(), service, progress=progress, **kw)
        self.uri = self.srv.uri
        self.error = None
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        try:
            self.srv.serve_forever()
        except BaseException as e:  # handed to the test by stop()
            self.error = e

    def on_loop(self, fn, timeout=30):
        """Run fn() on the serving thread; its result, or its exception."""
        done = threading.Event()
        out = {}

        def run():
            try:
                out["r"] = fn()
            except BaseException as e:
                out["e"] = e
            done.set()
        self.srv.call_soon(run)
        assert done.wait(timeout), "the serving thread did not run it"
        if "e" in out:
            raise out["e"]
        return out.get("r")

    def stop(self):
        self.srv.stop()
        self.t.join(60)
        assert not self.t.is_alive(), "the server thread did not stop"
        self.srv.close()
        if self.error:
            raise self.error


@pytest.fixture
def serve_thread():
    servers = []

    def start(service, **kw):
        s = ThreadServer(service, **kw)
        servers.append(s)
        return s
    yield start
    for s in servers:
        if s.t.is_alive():
            s.stop()


class Proc:
    """A server process that prints its URI first; always stopped."""

    def __init__(self, argv, env=None):
        if env is None and not argv[0].endswith(("python3", ".py")) and \
                os.path.basename(argv[0]) != os.path.basename(sys.executable):
            env = c_env()
        self.p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env=env)
        line = self.p.stdout.readline().strip()
        if not line:
            out, err = self.p.communicate(timeout=60)
            raise AssertionError(f"{argv[0]} printed no URI: {err}")
        self.uri = line

    def stop(self, sig=signal.SIGTERM):
        if self.p.poll() is None:
            self.p.send_signal(sig)
        try:
            out, err = self.p.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.p.kill()
            out, err = self.p.communicate()
        return self.p.returncode, out, err


@pytest.fixture
def procs():
    started = []

    def start(argv, env=None):
        p = Proc(argv, env)
        started.append(p)
        return p
    yield start
    for p in started:
        if p.p.poll() is None:
            p.p.kill()
            p.p.communicate()
