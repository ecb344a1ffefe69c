# SPDX-License-Identifier: MIT
"""The Python API against Python servers: kinds, views, errors, timeouts."""
import errno
import gc
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

import tern
from conftest import BAD_CALC, HERE, listen_uri, ticks_while

np = pytest.importorskip("numpy")


class Kinds:
    """Every kind, bytes in and out."""
    service_name = "Kinds"

    def __init__(self):
        self.oneway = []
        self.batches = []
        self.deferred = []
        self.kept = []

    @tern.method
    def upper(self, req):
        assert isinstance(req, memoryview) and req.readonly
        return bytes(req).upper()

    @tern.method(inplace=True)
    def scale(self, req, out):
        # f32 in, 2 * it out, written in the send slot: no copy by tern
        x = np.frombuffer(req, dtype=np.float32)
        y = np.frombuffer(out, dtype=np.float32, count=x.size)
        assert not x.flags.writeable and y.flags.writeable
        assert isinstance(memoryview(req).obj, tern.SlotView)
        np.multiply(x, 2, out=y)
        return x.nbytes

    @tern.method(deferred=True)
    def later(self, req, reply):
        self.deferred.append((bytes(req), reply))

    @tern.method(oneway=True)
    def note(self, req):
        self.oneway.append(bytes(req))

    @tern.method(batch=(8, 5000))
    def square(self, batch):
        self.batches.append(len(batch))
        return [int.to_bytes(int.from_bytes(batch[i], "little") ** 2, 8, "little")
                for i in range(len(batch))]

    @tern.method(raw=True)
    def fail(self, req):
        what = bytes(req)
        if what == b"value":
            raise ValueError("no such thing")
        if what == b"oserror":
            raise PermissionError(errno.EACCES, "not yours")
        raise tern.RemoteError(errno.ENOSPC, "full")

    @tern.method
    def keep(self, req):
        self.kept.append(req)  # the view outlives the handler
        return b"kept"

    @tern.method
    def grab(self, req):
        self.kept.append(req.obj)  # the SlotView behind the memoryview
        return str(len(req)).encode()

    @tern.method
    def keep_array(self, req):
        self.kept.append(np.frombuffer(req, dtype=np.uint8))  # an export of the slot
        return b"held"


@pytest.fixture
def kinds(serve_thread):
    svc = Kinds()
    srv = serve_thread(svc)
    p = tern.proxy(srv.uri, Kinds, timeout=20)
    yield svc, srv, p
    p.close()


def test_raw(kinds):
    _, _, p = kinds
    assert p.upper(b"hello").result() == b"HELLO"
    assert p.upper().result() == b""


def test_inplace_echo_numpy(kinds):
    _, _, p = kinds
    x = np.arange(1000, dtype=np.float32) / 7
    got = np.frombuffer(p.scale(x).result(), dtype=np.float32)
    assert np.array_equal(got, 2 * x)


def test_deferred_answered_later(kinds):
    svc, srv, p = kinds
    futs = [p.later(bytes([i])) for i in range(5)]
    assert not tern.wait_all(futs, 0.2)  # nobody answered yet
    srv.on_loop(lambda: [reply.reply(data * 3) for data, reply in svc.deferred])
    assert tern.wait_all(futs, 10)
    assert [f.result() for f in futs] == [bytes([i]) * 3 for i in range(5)]


def test_deferred_error_and_acquire(kinds):
    svc, srv, p = kinds
    f1, f2 = p.later(b"a"), p.later(b"b")
    while len(svc.deferred) < 2:
        f1.wait(0.01)  # runs the client's loop: the calls go out
    (_, r1), (_, r2) = svc.deferred

    def answer():
        r1.error(errno.EIO, "disk on fire")
        out = r2.acquire()
        out[:3] = b"xyz"
        r2.commit(3)
    srv.on_loop(answer)
    with pytest.raises(tern.RemoteError) as e:
        f1.result(10)
    assert (e.value.code, e.value.message) == (-errno.EIO, "disk on fire")
    assert f2.result(10) == b"xyz"
    with pytest.raises(ValueError):
        srv.on_loop(lambda: r2.reply(b"again"))  # answered already
    with pytest.raises(RuntimeError, match="call_soon"):
        r2.reply(b"from the wrong thread")


def test_oneway_in_order(kinds):
    svc, _, p = kinds
    for i in range(300):
        p.note(i.to_bytes(2, "little"))
    p.drain(20)
    assert svc.oneway == [i.to_bytes(2, "little") for i in range(300)]


def test_batch(kinds):
    svc, _, p = kinds
    futs = [p.square(i.to_bytes(8, "little")) for i in range(64)]
    assert tern.wait_all(futs, 20)
    assert [int.from_bytes(f.result(), "little") for f in futs] == [i * i for i in range(64)]
    assert sum(svc.batches) == 64 and max(svc.batches) > 1 and max(svc.batches) <= 8


def test_handler_exceptions_reach_the_caller(kinds):
    _, _, p = kinds
    with pytest.raises(tern.RemoteError) as e:
        p.fail(b"value").result()
    assert e.value.code == tern._tern.EREMOTE
    assert e.value.message == "ValueError: no such thing"
    with pytest.raises(tern.PermissionDenied) as e:
        p.fail(b"oserror").result()
    assert (e.value.code, e.value.message) == (-errno.EACCES, "not yours")
    with pytest.raises(tern.ResourceExhausted) as e:
        p.fail(b"rpc").result()
    assert (e.value.code, e.value.message) == (-errno.ENOSPC, "full")


def test_view_used_after_release_raises(kinds):
    svc, _, p = kinds
    assert p.keep(b"abc").result() == b"kept"
    mv = svc.kept.pop()
    with pytest.raises(ValueError):
        bytes(mv)  # released when the handler returned
    with pytest.raises(ValueError):
        mv.obj


def test_slotview_refuses_new_exports_after_release(kinds):
    svc, _, p = kinds
    assert p.grab(b"xyz").result() == b"3"
    sv = svc.kept.pop()
    assert isinstance(sv, tern.SlotView) and sv.released
    with pytest.raises(BufferError):
        memoryview(sv)
    with pytest.raises(BufferError):
        np.frombuffer(sv, dtype=np.uint8)
    with pytest.raises(ValueError):
        len(sv)


def test_kept_numpy_array_holds_the_reply(kinds):
    svc, srv, p = kinds
    f = p.keep_array(b"\x01\x02\x03")
    end = time.monotonic() + 60
    while not svc.kept and time.monotonic() < end:
        assert not f.wait(0.01)  # the handler has not run yet, or keeps the array
    srv.on_loop(lambda: None)  # the handler has returned
    assert not f.wait(0.3)  # the array still reads the request's slot
    assert srv.srv.held_replies == 1
    arr = svc.kept.pop()
    assert bytes(arr) == b"\x01\x02\x03"  # never anything but the request
    del arr
    gc.collect()
    assert f.result(10) == b"held"
    assert srv.srv.held_replies == 0


def test_deferred_answer_refused_while_a_view_lives(kinds):
    svc, srv, p = kinds
    f = p.later(b"abcd")
    while not svc.deferred:
        f.wait(0.01)
    data, reply = svc.deferred.pop()
    held = reply._req.data  # the request's memoryview
    arr = np.frombuffer(held, dtype=np.uint8)
    with pytest.raises(BufferError):
        srv.on_loop(lambda: reply.reply(b"no"))
    assert bytes(arr) == b"abcd"
    del arr
    srv.on_loop(lambda: reply.reply(b"yes"))
    assert f.result(10) == b"yes"
    with pytest.raises(ValueError):
        bytes(held)


def test_timeout(kinds):
    _, _, p = kinds
    t0 = time.monotonic()
    f = p.later(b"never", _timeout=0.3)
    # not done before its deadline (on a loaded machine this thread may
    # sleep past it: then the deadline is what finished it)
    assert not f.wait(0.05) or time.monotonic() - t0 >= 0.3
    t0 = time.monotonic()
    with pytest.raises(tern.RpcTimeout) as e:
        f.result(10)
    assert time.monotonic() - t0 < 5
    assert e.value.code == -errno.ETIMEDOUT and isinstance(e.value, TimeoutError)


def test_cancel_timeout_closes_a_session_whose_server_keeps_a_timed_out_call(serve_thread):
    # The server's deferred handler never answers, nor the cancel: the
    # caller gives its window's piece up after cancel_timeout, by closing.
    svc = Kinds()
    srv = serve_thread(svc)
    with pytest.raises(ValueError):
        tern.proxy(srv.uri, Kinds, cancel_timeout=0)
    with tern.proxy(srv.uri, Kinds, timeout=20, cancel_timeout=0.3) as p, \
            tern.proxy(srv.uri, Kinds, timeout=20) as q:
        fp, fq = p.later(b"kept", _timeout=0.2), q.later(b"kept", _timeout=0.2)
        for f in (fp, fq):
            with pytest.raises(tern.RpcTimeout):
                f.result(10)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 5:  # well under the default's 10 s
            p.poll(0.05)
            try:
                p.upper(b"x").result(10)
            except tern.ConnectionLost as e:
                # ECONNABORTED: the call was in the window the close ended;
                # ENOTCONN: the close came first (inside p.poll), so the
                # call was refused at once.  Either way the context's last
                # error names the call the server kept.
                assert e.code in (-errno.ECONNABORTED, -errno.ENOTCONN), e
                assert "cancel_timeout_ms" in p._ctx.last_error, p._ctx.last_error
                break
        else:
            pytest.fail("the session outlived cancel_timeout by 5 s")
        # the default (10 s) session kept its call, and still calls
        assert q.upper(b"y").result(10) == b"Y"


def test_no_such_method(serve_thread, echo_idl):
    class OnlyCopy(echo_idl.Echo):
        @tern.method
        def copy(self, req):
            return req
    srv = serve_thread(OnlyCopy())
    with tern.proxy(srv.uri, echo_idl.Echo) as p:
        assert p.copy(b"1").result(10) == b"1"
        with pytest.raises(tern.NoSuchMethod) as e:
            p.zerocopy(b"1").result(10)
        assert isinstance(e.value, tern.RemoteError)


def test_schema_mismatch(serve_thread, calc_idl):
    bad = tern.parse_idl(BAD_CALC)

    class Calc(calc_idl.Calc):
        @tern.method
        def add(self, req):
            return calc_idl.AddResp(sum=0)
    srv = serve_thread(Calc())
    with pytest.raises(tern.SchemaMismatch) as e:
        tern.proxy(srv.uri, bad.Calc)
    assert ("service Calc, method add: request AddReq, field 2 at offset 8: b i32 at the "
            "client, b i64 at the server") in e.value.message


def test_connect_refused_and_bad_uri():
    if listen_uri().startswith("shm"):
        with pytest.raises(tern.ConnectFailed):
            tern.proxy(f"shm://tern-py-nobody-{os.getpid()}", Kinds, connect_timeout=5)
    else:
        with pytest.raises(tern.RpcError):
            tern.proxy(listen_uri().rsplit(":", 1)[0] + ":1", Kinds, connect_timeout=5)
    with pytest.raises(tern.InvalidArgument) as e:
        tern.proxy("tcp://nohost", Kinds)
    assert e.value.code == -errno.EINVAL


def test_killed_peer_raises_connection_lost(procs, echo_idl):
    import py_server
    srv = procs([sys.executable, os.path.join(HERE, "py_server.py"), "hang", listen_uri()])
    p = tern.proxy(srv.uri, py_server.hang.Hang, timeout=60)
    futs = [p.wait(b"x") for _ in range(4)]
    assert not tern.wait_all(futs, 0.3)
    srv.p.kill()
    srv.p.wait()
    assert tern.wait_all(futs, 60)
    for f in futs:
        with pytest.raises(tern.ConnectionLost):
            f.result()
    with pytest.raises(tern.ConnectionLost):
        p.wait(b"again").result(10)
    p.close()


def test_gil_released_while_waiting(kinds):
    _, _, p = kinds

    def wait():
        f = p.later(b"never", _timeout=0.5)
        with pytest.raises(tern.RpcTimeout):
            f.result()
    assert ticks_while(wait) > 1000


def test_nonblocking_server_poll(calc_idl):
    class Calc(calc_idl.Calc):
        @tern.method
        def add(self, req):
            return calc_idl.AddResp(sum=req.a + req.b)
    with tern.Server(listen_uri(), Calc(), progress="busy") as srv:
        result = {}

        def client():
            with tern.proxy(srv.uri, calc_idl.Calc, timeout=20) as p:
                result["sum"] = p.add(a=1, b=2).result().sum
        t = threading.Thread(target=client)
        t.start()
        end = time.monotonic() + 60
        while t.is_alive() and time.monotonic() < end:
            srv.poll(0.01)  # the caller's own loop
        t.join()
    assert result == {"sum": 3}


def test_serve_returns_on_ctrl_c(tmp_path):
    p = subprocess.Popen([sys.executable, os.path.join(HERE, "py_server.py"), "echo",
                          listen_uri()], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    assert p.stdout.readline().strip()
    time.sleep(0.2)
    t0 = time.monotonic()
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert "Traceback" not in err
    assert time.monotonic() - t0 < 30


def test_message_classes_read_in_place(calc_idl):
    st = calc_idl.Stats(adds=3, total=-5, recent=[1, 2, 3, 4])
    assert len(st) == 48 and bytes(st)[:8] == (3).to_bytes(8, "little")
    ro = calc_idl.Stats.view(bytes(st))
    assert ro.total == -5 and list(ro.recent) == [1, 2, 3, 4]
    with pytest.raises(TypeError):
        ro.adds = 1  # a read-only buffer
    assert np.frombuffer(ro.recent, dtype=np.int64).tolist() == [1, 2, 3, 4]
    with pytest.raises(ValueError):
        calc_idl.AddReq.view(b"short")
    with pytest.raises(TypeError):
        calc_idl.AddReq(c=1)


TAILS = tern.parse_idl("""
service Tails {
  rpc fill(Pair) returns (Blob) inplace;
  rpc swap(Pair) returns (Pair) inplace;
  rpc later(Pair) returns (Blob) deferred;
}
message Pair { i64 a; i64 b; }
message Blob { u32 id; bytes data; }
""", "tails.tern")


class Tails(TAILS.Tails):
    """Typed inplace and deferred replies, returning what C's handlers return."""

    def __init__(self):
        self.held = []

    @tern.method
    def fill(self, req, out):  # out: a Blob over the whole room
        if req.a < 0:
            return -errno.ENOENT  # a negative errno fails the call
        out.id = req.a
        if req.b > len(out.data):
            return req.b  # claims more than the room: refused, never cut
        out.data = b"x" * req.b  # the tail's length is what was set
        return None

    @tern.method
    def swap(self, req, out):  # out: a Pair in the send slot
        out.a, out.b = req.b, req.a
        return 0  # as C: 0 is the whole message

    @tern.method
    def later(self, req, reply):
        self.held.append(reply)


def test_typed_inplace_and_deferred_replies_return_what_c_returns(serve_thread):
    svc = Tails()
    srv = serve_thread(svc)
    with tern.proxy(srv.uri, TAILS.Tails, timeout=30) as p:
        room = p.session.max_payload
        r = p.swap(a=1, b=2).result()
        assert (r.a, r.b, len(r)) == (2, 1, 16)
        r = p.fill(a=5, b=3).result()
        assert (r.id, bytes(r.data), len(r)) == (5, b"xxx", 7)
        r = p.fill(a=6, b=room - 4).result()  # the tail fills the slot
        assert len(r) == room and bytes(r.data) == b"x" * (room - 4)
        with pytest.raises(tern.NotFound) as e:
            p.fill(a=-1, b=0).result()
        assert e.value.code == -errno.ENOENT
        with pytest.raises(tern.RemoteMessageTooLarge) as e:
            p.fill(a=7, b=room).result()
        assert e.value.message == f"Tails.fill: reply of {room + 4} bytes, the slot holds {room}"
        with pytest.raises(tern.BadRequest) as e:
            p.session.call(TAILS.Tails.__tern_service__.methods["swap"].id, b"short").result()
        assert e.value.message == ("Tails.swap: request of 5 bytes, expected 16 "
                                   "(or fewer, ending at a field)")
        f1, f2 = p.later(a=1, b=1), p.later(a=2, b=2)
        end = time.monotonic() + 30
        while len(svc.held) < 2 and time.monotonic() < end:
            f1.wait(0.01)

        def answer():
            out = svc.held[0].acquire()  # a Blob over the room, as C's reply_acquire
            out.id = 9
            out.data = b"abc"
            svc.held[0].commit()  # the tail set through the message
            out = svc.held[1].acquire()
            out.id = 10
            out.data[:2] = b"zz"
            svc.held[1].commit(2)  # the tail's length, as C's reply_commit
        srv.on_loop(answer)
        r1, r2 = f1.result(), f2.result()
        assert (r1.id, bytes(r1.data)) == (9, b"abc")
        assert (r2.id, bytes(r2.data)) == (10, b"zz")


NAMED = tern.parse_idl("""
message Named { u32 id; u8 name[8]; u8 tag[3]; bytes data; }
service N { rpc f(Named) returns (Named); }
""", "named.tern")


def test_fixed_u8_arrays_take_short_bytes_and_read_as_bytes():
    m = NAMED.Named(id=7, name=b"bob", tag=b"xyz", data=b"tail")
    assert m.name == b"bob\0\0\0\0\0" and isinstance(m.name, bytes)  # zero-padded, as C
    assert m.tag == b"xyz"
    assert bytes(m) == (7).to_bytes(4, "little") + b"bob" + bytes(5) + b"xyz" + b"tail"
    assert repr(m) == "Named(id=7, name=b'bob\\x00\\x00\\x00\\x00\\x00', tag=b'xyz', data=b'tail')"
    m.name = b"alice"  # a shorter name clears what the longer one left
    m.name = b"al"
    assert m.name == b"al" + bytes(6)
    m.name = bytearray(b"12345678")
    assert m.name == b"12345678"
    m.name = memoryview(b"ab")
    assert m.name == b"ab" + bytes(6)
    with pytest.raises(ValueError):
        m.name = b"123456789"  # over N: refused, nothing truncated
    assert m.name == b"ab" + bytes(6)
    with pytest.raises(TypeError):
        m.name = "bob"  # text has no byte layout: encode it
    with pytest.raises(TypeError):
        m.name = 3
    view = NAMED.Named.view(bytes(m))
    assert view.name == b"ab" + bytes(6) and view.data.tobytes() == b"tail"


def test_trailing_bytes_are_set_in_an_owned_message_and_in_a_view():
    m = NAMED.Named(id=1)
    assert len(m) == 15 and m.data.nbytes == 0
    m.data = b"hello"
    assert len(m) == 20 and bytes(m.data) == b"hello"
    m.data = b"hi"
    assert len(m) == 17 and bytes(m)[-2:] == b"hi"
    slot = bytearray(32)
    v = NAMED.Named.view(slot)  # a slot: the tail is the room left
    v.data = b"abc"
    assert slot[15:18] == b"abc" and v._tail_len == 3
    with pytest.raises(ValueError):
        v.data = bytes(18)


def test_declaration_errors(calc_idl):
    with pytest.raises(TypeError):
        tern.method(inplace=True, deferred=True)
    with pytest.raises(TypeError):
        tern.method(inplace=True, batch=(4, 10))

    class Wrong(calc_idl.Calc):
        @tern.method(inplace=True)
        def add(self, req, out):
            return 0
    with pytest.raises(TypeError, match="raw in the IDL"):
        tern.describe(Wrong)

    class Unknown(calc_idl.Calc):
        @tern.method
        def sub(self, req):
            return None
    with pytest.raises(TypeError, match="no method 'sub'"):
        tern.describe(Unknown)


def test_kept_arrays_of_oneway_messages_and_batches_hold_their_slots(serve_thread):
    class Keeper:
        service_name = "Keeper"

        def __init__(self):
            self.kept = []
            self.seen = 0

        def _take(self, mv):
            self.seen += 1
            if bytes(mv[:4]) == b"keep":
                self.kept.append(np.frombuffer(mv, dtype=np.uint8))  # holds the slot

        @tern.method(oneway=True)
        def put(self, req):
            self._take(req)

        @tern.method(oneway=True, batch=(4, 2000))
        def puts(self, batch):
            for i in range(len(batch)):
                self._take(batch[i])

    def wait(p, cond):
        end = time.monotonic() + 30
        while not cond() and time.monotonic() < end:
            p.poll(0.01)
        assert cond()

    k = Keeper()
    srv = serve_thread(k, slot_count=8)
    keep = [b"keep%02d" % i + bytes([i]) * 58 for i in range(6)]
    with tern.proxy(srv.uri, Keeper, slot_count=8) as p:
        for m in keep[:3]:
            p.put(m)
        for m in keep[3:]:
            p.puts(m)
        wait(p, lambda: k.seen == 6)
        assert srv.srv.held_replies == 6
        # the two slots left take many more messages; the kept ones stay
        for i in range(200):
            (p.put if i % 2 else p.puts)(b"temp" + bytes([i]) * 60)
        wait(p, lambda: k.seen == 206)
        assert sorted(bytes(a) for a in k.kept) == keep
        assert srv.t.is_alive() and srv.error is None
        # released with the arrays (here, on another thread than the loop's)
        k.kept.clear()
        gc.collect()
        wait(p, lambda: srv.srv.held_replies == 0)
        # every slot is back: the full window again
        for i in range(200):
            (p.put if i % 2 else p.puts)(b"more" + bytes([i]) * 60)
        wait(p, lambda: k.seen == 406)
    srv.stop()  # nothing held: it closes cleanly
    assert k.seen == 406 and not k.kept


def test_kept_arrays_outlive_their_connection(serve_thread):
    """The peer goes away while arrays hold slots: their bytes stay."""
    class Keeper:
        service_name = "Keeper"

        def __init__(self):
            self.kept = []

        @tern.method(oneway=True)
        def put(self, req):
            self.kept.append(np.frombuffer(req, dtype=np.uint8))  # holds the slot

        @tern.method(oneway=True, batch=(4, 2000))
        def puts(self, batch):
            for i in range(len(batch)):
                self.kept.append(np.frombuffer(batch[i], dtype=np.uint8))

    k = Keeper()
    srv = serve_thread(k, slot_count=8)
    keep = [b"keep%02d" % i + bytes([i]) * 58 for i in range(4)]
    with tern.proxy(srv.uri, Keeper, slot_count=8) as p:
        p.put(keep[0])
        p.put(keep[1])
        p.puts(keep[2])
        p.puts(keep[3])
        end = time.monotonic() + 30
        while len(k.kept) < 4 and time.monotonic() < end:
            p.poll(0.01)
        assert len(k.kept) == 4
    # the client is gone: the server's session goes down under the holds
    end = time.monotonic() + 30
    while srv.srv.peers_closed < 1 and time.monotonic() < end:
        time.sleep(0.01)
    assert srv.srv.peers_closed == 1
    assert sorted(bytes(a) for a in k.kept) == keep
    k.kept.clear()
    gc.collect()
    end = time.monotonic() + 30
    while srv.srv.held_replies and time.monotonic() < end:
        time.sleep(0.01)
    assert srv.srv.held_replies == 0
    assert srv.t.is_alive() and srv.error is None
    srv.stop()


def test_call_soon_from_many_threads(serve_thread):
    """call_soon() is tern_ctx_post(): every callable runs once, on the
    serving thread, in each thread's order; after close() it is refused."""
    srv = serve_thread(Kinds())
    threads, per = 4, 500
    seen = {t: [] for t in range(threads)}
    where = set()
    done = threading.Event()
    left = [threads * per]

    def post(t, i):
        def fn():
            seen[t].append(i)
            where.add(threading.get_ident())
            left[0] -= 1  # only the serving thread runs this
            if left[0] == 0:
                done.set()
        return fn

    def poster(t):
        for i in range(per):
            srv.srv.call_soon(post(t, i))

    ts = [threading.Thread(target=poster, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert done.wait(30)
    assert all(seen[t] == list(range(per)) for t in range(threads))
    assert where == {srv.t.ident}
    srv.stop()
    with pytest.raises(ValueError, match="closed"):
        srv.srv.call_soon(lambda: None)
