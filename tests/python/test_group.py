# SPDX-License-Identifier: MIT
"""tern.Group: one URI served by N member contexts on N threads tern starts.

The unit lanes run these over shm and tcp, the rdma lane (in the VM) over
rdma://, where the acceptor hands rdma_cm connection requests to the members.
"""
import ctypes
import errno
import os
import subprocess
import sys
import threading

import pytest

import tern
import conftest


def listen_uri():
    return conftest.listen_uri()


class Shout:
    """Answers that prove which request, and which member, they came from."""

    def __init__(self):
        self.notes = []
        self.lock = threading.Lock()

    @tern.method(raw=True)
    def upper(self, req):
        return bytes(req).upper()

    @tern.method(raw=True)
    def who(self, req):
        # the member's thread: one per member, whoever connects
        return threading.get_ident().to_bytes(8, "little")

    @tern.method(raw=True)
    def fail(self, req):
        raise ValueError(f"no {bytes(req).decode()}")

    @tern.method(raw=True)
    def junk(self, req):
        return 42

    @tern.method(oneway=True)
    def note(self, req):
        with self.lock:
            self.notes.append(bytes(req))

    @tern.method(raw=True)
    def keep(self, req):
        # a group's request is a copy: keeping it is safe
        with self.lock:
            self.notes.append(req)
        return b"kept"


def proxy(uri, **kw):
    # event progress: many client threads busy-polling would starve the
    # members' threads (in the VM lane, emulated, to a crawl)
    return tern.proxy(uri, Shout, timeout=30, progress="event", **kw)


def run_clients(client, n, timeout=120):
    """client(k) for k in range(n), each on its own thread: re-raise what failed."""
    errors = []

    def run(k):
        try:
            client(k)
        except BaseException as e:
            errors.append(e)
    ts = [threading.Thread(target=run, args=(k,)) for k in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout)
        assert not t.is_alive(), "a client hangs"
    assert not errors, errors


@pytest.fixture
def group():
    made = []

    def make(service=None, **kw):
        g = tern.Group(listen_uri(), service, **kw)
        made.append(g)
        return g
    yield make
    for g in made:
        g.close()


def test_sessions_land_on_every_member(group):
    g = group(Shout(), members=3)
    assert g.members == 3 and g.uri and g.alive == (True, True, True)
    ps = [proxy(g.uri) for _ in range(6)]
    try:
        who = [int.from_bytes(p.who().result(), "little") for p in ps]
        # round-robin in accept order: client k on member k % 3, each on its own thread
        assert len(set(who)) == 3
        assert who[:3] == who[3:]
        assert g.accepted == (2, 2, 2)
        for i, p in enumerate(ps):
            assert p.upper(b"m%d" % i).result() == b"M%d" % i
    finally:
        for p in ps:
            p.close()


def test_many_clients_all_answered(group):
    g = group(Shout(), members=4)

    def client(k):
        with proxy(g.uri) as p:
            futs = [(p.upper(b"c%d-%d" % (k, i)), b"C%d-%d" % (k, i)) for i in range(64)]
            for f, want in futs:
                assert f.result() == want
            for i in range(100):
                assert p.upper(b"x%d" % i).result() == b"X%d" % i
    run_clients(client, 8)
    assert sum(g.accepted) == 8 and min(g.accepted) == 2


def test_oneway_and_kept_request(group):
    svc = Shout()
    g = group(svc, members=2)
    with proxy(g.uri) as p, proxy(g.uri) as q:
        p.note(b"one")
        q.note(b"two")
        assert p.keep(b"abc").result() == b"kept"
        assert q.upper(b"sync").result() == b"SYNC"  # after q's note, in order
        assert p.upper(b"sync").result() == b"SYNC"
    assert sorted(n for n in svc.notes if isinstance(n, bytes)) == [b"one", b"two"]
    kept = [n for n in svc.notes if isinstance(n, memoryview)]
    assert len(kept) == 1 and bytes(kept[0]) == b"abc"


def test_handler_errors_reach_the_client(group):
    g = group(Shout(), members=2)
    with proxy(g.uri) as p:
        with pytest.raises(tern.RemoteError, match="ValueError: no luck"):
            p.fail(b"luck").result()
        with pytest.raises(tern.RemoteError, match="handler returned int, not bytes"):
            p.junk(b"").result()
        assert p.upper(b"still").result() == b"STILL"


def test_close_while_clients_connected(group):
    g = group(Shout(), members=2)
    ps = [proxy(g.uri) for _ in range(4)]
    for p in ps:
        assert p.upper(b"up").result() == b"UP"
    g.close()
    assert g.closed and g.alive == (False, False)
    for p in ps:
        with pytest.raises(tern.RpcError):
            p.upper(b"gone").result(30)
        p.close()
    g.close()  # twice: nothing left to do
    with pytest.raises(tern.ConnectFailed):
        proxy(g.uri, connect_timeout=5)


def test_close_while_serving(group):
    """close() from another thread while clients call: each client's calls
    are answered right until they fail cleanly (an RpcError), none hangs,
    and the group is freed."""
    g = group(Shout(), members=3)
    ready = [threading.Event() for _ in range(3)]
    outcomes = [None] * 3

    def client(k):
        try:
            with proxy(g.uri) as p:
                for i in range(1000000):
                    try:
                        r = p.upper(b"busy%d" % i).result(30)
                    except tern.RpcError as e:
                        outcomes[k] = e
                        return
                    if r != b"BUSY%d" % i:
                        outcomes[k] = AssertionError(r)
                        return
                    ready[k].set()
        except BaseException as e:
            outcomes[k] = e
    ts = [threading.Thread(target=client, args=(k,)) for k in range(3)]
    for t in ts:
        t.start()
    for e in ready:
        assert e.wait(60)
    g.close()
    for t in ts:
        t.join(60)
        assert not t.is_alive()
    assert all(isinstance(o, tern.RpcError) for o in outcomes), outcomes


def wait_alive(g, want):
    for _ in range(1200):
        if g.alive == want:
            return
        threading.Event().wait(0.05)
    assert g.alive == want


def test_stop_one_member(group):
    """A member's death closes its sessions only; new sessions go to the
    members still alive."""
    g = group(Shout(), members=3)
    ps = [proxy(g.uri) for _ in range(3)]
    try:
        g.stop(1)
        wait_alive(g, (True, False, True))
        with pytest.raises(tern.RpcError):
            ps[1].upper(b"x").result(30)
        assert ps[0].upper(b"a").result() == b"A"
        assert ps[2].upper(b"c").result() == b"C"
        with proxy(g.uri) as p, proxy(g.uri) as q:
            assert p.upper(b"n").result() == b"N" and q.upper(b"m").result() == b"M"
        assert g.accepted[1] == 1 and g.accepted[0] + g.accepted[2] == 4
        g.stop(1)  # dead already: nothing to do
        g.stop()
        wait_alive(g, (False, False, False))
        for p in (ps[0], ps[2]):
            with pytest.raises(tern.RpcError):
                p.upper(b"a").result(30)
        with pytest.raises(tern.RpcError):  # nobody to take it
            proxy(g.uri, connect_timeout=5)
    finally:
        for p in ps:
            p.close()


def test_stop_and_close_from_a_handler(group):
    class Stopper:
        @tern.method(raw=True)
        def halt(self, req):
            g.stop()
            return b"stopping"

        @tern.method(raw=True)
        def shut(self, req):
            g.close()
            return b"closed?"
    g = group(Stopper(), members=2)
    with tern.proxy(g.uri, Stopper, timeout=30, progress="event") as p:
        with pytest.raises(tern.RemoteError, match="cannot close a group from its handler"):
            p.shut().result()
        try:  # the reply races the member's end
            assert p.halt().result(30) == b"stopping"
        except tern.ConnectionLost:
            pass
    wait_alive(g, (False, False))
    g.close()
    assert g.closed


def test_c_handler_without_the_gil(group):
    lib = ctypes.CDLL(os.environ.get("TERN_GROUP_HANDLERS") or pytest.skip("no handlers lib"))
    fn = ctypes.cast(lib.tern_test_reverse, ctypes.c_void_p).value
    count = ctypes.c_ulong(0)
    g = group(members=2, start=False)
    spec, _ = tern.describe(Shout)
    rid = spec.methods["upper"].id
    g.register_c(rid, fn, ctypes.addressof(count))
    with pytest.raises(tern.RpcError):  # the same method twice
        g.register_c(rid, fn)
    uri = g.start()
    with pytest.raises(tern.RpcError, match="before start"):
        g.register_c(rid + 1, fn)

    def client(k):
        with proxy(uri, check=False) as p:
            futs = [(p.upper(b"%d:%d" % (k, i)), (b"%d:%d" % (k, i))[::-1]) for i in range(50)]
            for f, want in futs:
                assert f.result() == want
    run_clients(client, 4)
    assert count.value == 200
    assert g.accepted == (2, 2)


def test_garbage_arguments():
    for bad, exc in ((0, ValueError), (-1, ValueError), (tern.GROUP_MAX + 1, ValueError),
                     ("3", TypeError), (None, TypeError), (2.0, TypeError), (True, TypeError)):
        with pytest.raises(exc):
            tern.Group(listen_uri(), Shout(), members=bad)
    with pytest.raises(TypeError):
        tern.Group(None, Shout(), members=2)
    with pytest.raises(ValueError):
        tern.Group(listen_uri(), Shout(), members=2, progress="fast")
    with pytest.raises(tern.InvalidArgument):
        tern.Group("bogus://x", Shout(), members=2)
    with pytest.raises(TypeError):
        tern.Group(listen_uri(), object(), members=2)

    class Deferring:
        @tern.method(deferred=True)
        def later(self, req, d):
            d.reply(b"")
    with pytest.raises(ValueError, match="raw, inplace and oneway"):
        tern.Group(listen_uri(), Deferring(), members=2)

    g = tern._tern.Group(2)
    try:
        for args, exc in (((0, 0, len), ValueError), ((2**32, 0, len), ValueError),
                          (("1", 0, len), TypeError), ((1, 0, None), TypeError),
                          ((1, 4, len), ValueError), ((1, 2, len), ValueError), ((1,), TypeError)):
            with pytest.raises(exc):
                g.register(*args)
        for args, exc in (((1, 0), ValueError), ((1, "f"), TypeError), ((1, None), TypeError),
                          ((1, 1, "u"), TypeError), ((0, 1), ValueError)):
            with pytest.raises(exc):
                g.register_c(*args)
        with pytest.raises(TypeError):
            g.listen(listen_uri(), [1, 2])
        with pytest.raises(ValueError):
            g.stop(2)
        with pytest.raises(ValueError):
            g.stop(-2)
    finally:
        g.close()
    for call in (lambda: g.register(1, 0, len), lambda: g.register_c(1, 8), g.start,
                 lambda: g.listen(listen_uri()), g.stop, lambda: g.service_register("S", 1)):
        with pytest.raises(ValueError, match="closed"):
            call()
    g.close()
    assert g.accepted == (0, 0) and g.alive == (False, False)


def test_start_twice_and_never_started(group):
    g = group(Shout(), members=2)
    with pytest.raises(tern.RpcError):
        g._g.start()
    g2 = tern.Group(listen_uri(), Shout(), members=3, start=False)
    g2.close()  # never started: the members are destroyed unrun
    g3 = tern.Group(listen_uri(), Shout(), members=2, start=False)
    del g3  # garbage: freed by its last reference


def test_listen_failure_says_why(group):
    """A URI taken already: the error carries tern_group_last_error()'s text."""
    g = group(Shout(), members=2)
    with pytest.raises(tern.RpcError) as ei:
        tern.Group(g.uri, Shout(), members=2)
    assert ei.value.code < 0 and len(str(ei.value)) > 20, str(ei.value)
    with proxy(g.uri) as p:  # the first group serves on
        assert p.upper(b"ok").result() == b"OK"


def test_rdma_serves_or_says_no_device():
    """rdma:// serves groups (the rdma lane runs every test here on it); a
    host with no RDMA says so."""
    if not os.path.exists("/dev/infiniband/rdma_cm"):
        with pytest.raises(tern.RpcError) as ei:
            tern.Group("rdma://127.0.0.1:0", Shout(), members=2)
        assert ei.value.code == -errno.ENODEV
        return
    addr = conftest.rdma_addr()
    assert addr, "an rdma_cm device with no address to listen on"
    g = tern.Group(f"rdma://{addr}:0", Shout(), members=2)
    try:
        assert g.uri.startswith("rdma://")
        for _ in range(2):  # one session on each member
            with proxy(g.uri) as p:
                assert p.upper(b"rdma").result() == b"RDMA"
    finally:
        g.close()


def test_echo_group_example(procs):
    """examples/echo/group_server.py against the C echo_client, three times:
    every byte back (copy is raw, zerocopy inplace), sessions spread."""
    srv = procs([sys.executable, os.path.join(conftest.SRC, "examples", "echo", "group_server.py"),
                 listen_uri(), "3"], env=dict(os.environ))
    for _ in range(3):
        r = subprocess.run([conftest.binary("echo_client"), srv.uri], capture_output=True,
                           text=True, env=conftest.c_env(), timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "echo_client: every byte came back" in r.stdout
        assert "8160 bytes: copy ok, zerocopy ok" in r.stdout
    rc, out, err = srv.stop()
    assert rc == 0, err
    assert "group_server: sessions per member: [1, 1, 1]" in out, out + err


def test_member_thread_fails_to_start(tmp_path):
    """start() when the acceptor's or a member's thread cannot start (the
    failthread shim fails pthread_create after n): an RpcError with tern's
    code, no second start, and close() (twice) frees what did start."""
    shim = os.environ.get("TERN_FAILTHREAD")
    if not shim:
        pytest.skip("TERN_FAILTHREAD is not set")
    script = tmp_path / "fail_start.py"
    script.write_text(f"""
import ctypes, errno, os, sys
sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
import pytest
import tern
from test_group import Shout, listen_uri
shim = ctypes.CDLL({shim!r})
for ok in range(4):  # the acceptor's thread, then members 0, 1 and 2 of 3
    g = tern.Group(listen_uri(), Shout(), members=3, start=False)
    shim.tern_test_threads_ok(ok)
    try:
        with pytest.raises(tern.WouldBlock) as ei:
            g.start()
    finally:
        shim.tern_test_threads_ok(-1)
    assert ei.value.code == -errno.EAGAIN and "did not start" in str(ei.value)
    with pytest.raises(tern.RpcError):
        g.start()  # not again: close() is what is left
    g.close()
    g.close()
    assert g.alive == (False, False, False)
print("every failed start closed")
""")
    env = dict(os.environ)
    env["LD_PRELOAD"] = (env.get("LD_PRELOAD", "") + " " + shim).strip()
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "every failed start closed" in r.stdout
