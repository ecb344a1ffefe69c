# SPDX-License-Identifier: MIT
"""Messages larger than a slot, from Python: replies into a named buffer,
requests from numpy, and tern.register()ed memory that moves with no copy.

Every size is checked with a checksum, on every provider (shm and tcp
here, rdma in the VM).
"""
import gc
import threading
import time
import zlib

import pytest

import tern
np = pytest.importorskip("numpy")

SIZES = [1 << 20, 16 << 20]


def pattern(n, seed):
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8)


class Bulk:
    service_name = "Bulk"

    def __init__(self):
        self.held = []

    @tern.method
    def make(self, req):
        """(n, seed) -> n bytes of pattern(n, seed): a reply over the slot."""
        n, seed = int.from_bytes(req[:8], "little"), int.from_bytes(req[8:16], "little")
        return pattern(n, seed)

    @tern.method
    def crc(self, req):
        """The request's crc32 and length."""
        return zlib.crc32(req).to_bytes(4, "little") + len(req).to_bytes(8, "little")

    @tern.method
    def echo(self, req):
        return req

    @tern.method(deferred=True)
    def hold(self, req, reply):
        self.held.append(reply)


def ask(n, seed):
    return n.to_bytes(8, "little") + seed.to_bytes(8, "little")


def crc_of(reply):
    return int.from_bytes(reply[:4], "little"), int.from_bytes(reply[4:12], "little")


@pytest.fixture
def bulk(serve_thread):
    svc = Bulk()
    srv = serve_thread(svc)
    p = tern.proxy(srv.uri, Bulk, timeout=120)
    yield svc, srv, p
    p.close()


def reply_buffer(kind, n):
    if kind == "bytearray":
        return bytearray(n)
    if kind == "memoryview":
        return memoryview(bytearray(n + 64))[32:32 + n]
    return np.zeros(n // 4, dtype=np.uint32)  # any C-contiguous array: its bytes


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("kind", ["bytearray", "memoryview", "numpy"])
@pytest.mark.parametrize("registered", [False, True], ids=["copied", "registered"])
def test_a_reply_larger_than_a_slot_lands_in_the_named_buffer(bulk, n, kind, registered):
    _, _, p = bulk
    assert n > p.session.max_payload
    buf = reply_buffer(kind, n)
    mem = tern.register(buf) if registered else None
    r = p.make(ask(n, n + 1), _reply_buf=buf).result()
    assert isinstance(r, memoryview) and r.nbytes == n and r.format == "B"
    assert np.shares_memory(np.frombuffer(r, np.uint8), np.frombuffer(buf, np.uint8))
    assert zlib.crc32(r) == zlib.crc32(pattern(n, n + 1))
    if mem is not None:
        assert mem.uses == 0 and mem.contexts == 1
        del r
        mem.close()


def test_a_shorter_reply_fills_the_start_and_says_its_length(bulk):
    _, _, p = bulk
    buf = bytearray(b"\xee" * (4 << 20))
    r = p.make(ask(3 << 20, 7), _reply_buf=buf).result()
    assert r.nbytes == 3 << 20 and zlib.crc32(r) == zlib.crc32(pattern(3 << 20, 7))
    assert buf[3 << 20:] == b"\xee" * (1 << 20)  # nothing past the reply
    small = p.make(ask(100, 9), _reply_buf=buf).result()  # fits a slot: copied into buf
    assert bytes(small) == pattern(100, 9).tobytes() and small.obj is buf


def test_a_reply_over_the_named_buffer_is_refused_not_cut(bulk):
    _, _, p = bulk
    with pytest.raises(tern.MessageTooLarge) as e:  # the server refuses it
        p.make(ask(2 << 20, 1), _reply_buf=bytearray(1 << 20)).result()
    assert isinstance(e.value, tern.RemoteError)
    with pytest.raises(tern.MessageTooLarge):  # a slot's reply over a small buffer
        p.make(ask(100, 1), _reply_buf=bytearray(10)).result()
    with pytest.raises(tern.MessageTooLarge):  # and no buffer at all
        p.make(ask(1 << 20, 1)).result()
    with pytest.raises(BufferError):  # a reply buffer must be writable
        p.make(ask(10, 1), _reply_buf=b"x" * 100)
    assert p.make(ask(100, 1)).result() == pattern(100, 1).tobytes()  # still fine


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("registered", [False, True], ids=["copied", "registered"])
def test_a_large_request_from_numpy_checksummed(bulk, n, registered):
    _, _, p = bulk
    arr = pattern(n, 3).view(np.uint32).reshape(-1, 16)  # a 2-D array of another type
    mem = tern.register(arr) if registered else None
    assert crc_of(p.crc(arr).result()) == (zlib.crc32(arr), n)
    assert crc_of(p.crc(arr[n // 128:]).result()) == (zlib.crc32(arr[n // 128:]), n - n // 2)
    if mem is not None:
        assert mem.uses == 0
        mem.close()


def test_a_large_echo_between_registered_buffers(bulk):
    _, _, p = bulk
    n = 16 << 20
    src, dst = pattern(n, 11), np.zeros(n, np.uint8)
    with tern.register(src), tern.register(dst):
        r = p.echo(src, _reply_buf=dst).result()
    assert r.nbytes == n and np.array_equal(dst, src)


class Paused:
    """Keep a ThreadServer's thread busy (in a call_soon callback) until resume()."""

    def __init__(self, srv):
        self.go, self.parked = threading.Event(), threading.Event()

        def park():
            self.parked.set()
            self.go.wait(60)
        srv.srv.call_soon(park)
        assert self.parked.wait(30)

    def resume(self):
        self.go.set()


def pump(p, until, timeout=60):
    """Run the client's loop until until()."""
    end = time.monotonic() + timeout
    while not until() and time.monotonic() < end:
        p.poll(0.001)
    assert until()


@pytest.mark.parametrize("registered", [False, True], ids=["copied", "registered"])
def test_a_registered_request_is_read_where_it_lies(bulk, registered):
    """The server reads a registered request from the caller's memory (no
    copy); an unregistered one from a copy taken when the call was made.
    The server is held until the array has changed after the call."""
    _, srv, p = bulk
    n = 4 << 20
    arr = pattern(n, 5)
    mem = tern.register(arr) if registered else None
    pause = Paused(srv)
    f = p.crc(arr)
    before = zlib.crc32(arr)
    arr[:1000] = 0xab  # after the call, before the server reads the request
    after = zlib.crc32(arr)
    pause.resume()
    assert crc_of(f.result(60)) == ((after if registered else before), n)
    if mem is not None:
        mem.close()


@pytest.mark.parametrize("registered", [False, True], ids=["copied", "registered"])
def test_a_registered_reply_buffer_is_written_where_it_lies(bulk, registered):
    """The server writes a registered reply buffer itself (no copy).  A call
    that times out is cancelled, and the server may still write the buffer
    until it has answered: so the call of a registered one finishes (with
    RpcTimeout all the same) only once the server has answered, never
    before, and the session goes on.  An unregistered one is staged: the
    call fails at its deadline, the late reply lands in the staging and is
    dropped, and the buffer is never written.  Either way the Memory is free
    again once the call has finished."""
    _, srv, p = bulk
    n = 2 << 20
    buf = np.zeros(n, np.uint8)
    mem = tern.register(buf) if registered else None
    pause = Paused(srv)
    late = p.session.counters()["late_replies"]
    f = p.make(ask(n, 21), _reply_buf=buf, _timeout=0.2)
    if registered:
        assert not f.wait(1.0)  # past its deadline, but the buffer is still lent
        assert mem.uses == 1
    else:
        with pytest.raises(tern.RpcTimeout):
            f.result(30)  # the server has not run yet
    pause.resume()
    with pytest.raises(tern.RpcTimeout):
        f.result(30)
    pump(p, lambda: p.session.counters()["late_replies"] > late)  # answered
    if registered:
        assert mem.uses == 0
        # written before the server saw the cancel, or not at all
        assert not buf.any() or np.array_equal(buf, pattern(n, 21))
    else:
        assert not buf.any()
    assert crc_of(p.crc(b"still works").result(30)) == (zlib.crc32(b"still works"), 11)
    p.close()
    if registered:
        mem.close()


def test_register_holds_the_buffer_until_closed(bulk):
    _, srv, p = bulk
    ba = bytearray(2 << 20)
    mem = tern.register(ba)
    assert mem.nbytes == len(ba) and mem.obj is ba and not mem.closed
    with pytest.raises(BufferError):
        ba.extend(b"x")  # its memory cannot move while registered
    f = p.hold(memoryview(ba)[:(1 << 20)])  # a large request the server holds
    assert mem.uses == 1 and mem.contexts == 1
    with pytest.raises(BufferError):
        mem.close()  # a call uses it
    svc = bulk[0]
    end = time.monotonic() + 60
    while not svc.held and time.monotonic() < end:
        f.wait(0.01)
    srv.on_loop(lambda: svc.held.pop().reply(b"done"))
    assert f.result(30) == b"done"
    assert mem.uses == 0
    mem.close()
    assert mem.closed and mem.contexts == 0 and mem.nbytes == 0
    ba.extend(b"x")  # free again
    mem.close()  # twice is fine
    with pytest.raises(ValueError):
        tern.register(bytearray())


def test_a_dropped_memory_is_deregistered(bulk):
    import weakref
    _, _, p = bulk
    ba = bytearray(1 << 20)
    mem = tern.register(ba)
    assert crc_of(p.crc(ba).result())[1] == len(ba)
    w = weakref.ref(mem)
    del mem
    gc.collect()
    assert w() is None
    ba.extend(b"x")  # no export left


def test_closing_the_proxy_deregisters_its_context(serve_thread):
    srv = serve_thread(Bulk())
    ba = bytearray(1 << 20)
    mem = tern.register(ba)
    p = tern.proxy(srv.uri, Bulk, timeout=60)
    assert crc_of(p.crc(ba).result())[1] == len(ba)
    assert mem.contexts == 1
    p.close()
    assert mem.contexts == 0
    mem.close()
    ba.extend(b"x")


def test_a_memory_closed_on_another_thread_is_deregistered_by_its_own(serve_thread):
    """A context belongs to the thread that runs it: a Memory closed
    elsewhere keeps its pages (an export) until that thread's loop runs."""
    srv = serve_thread(Bulk())
    ba = bytearray(1 << 20)
    mem = tern.register(ba)
    ready, go, done = threading.Event(), threading.Event(), threading.Event()
    out = {}

    def worker():
        with tern.proxy(srv.uri, Bulk, timeout=60) as p:
            out["crc"] = crc_of(p.crc(ba).result())
            ready.set()
            go.wait(30)
            p.poll(0.05)  # the loop runs: the registration is undone here
            out["freed"] = True
            done.set()
    t = threading.Thread(target=worker)
    t.start()
    assert ready.wait(60)
    assert out["crc"] == (zlib.crc32(ba), len(ba))
    mem.close()  # on this thread: handed over to the worker's
    assert mem.contexts == 0
    with pytest.raises(BufferError):
        ba.extend(b"x")  # still registered on the worker's context
    go.set()
    assert done.wait(60)
    t.join(60)
    ba.extend(b"x")  # now it is not
