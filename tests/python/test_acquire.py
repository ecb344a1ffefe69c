# SPDX-License-Identifier: MIT
"""Requests built in the send slot, from Python (tern_call_acquire /
tern_call_commit / tern_call_abort, tern_send_acquire / tern_send_commit):
through a memoryview, a numpy view or a typed message, with no copy; the
slot's views are refused once it is committed or aborted."""
import gc
import time

import pytest

import tern
from conftest import ticks_while

np = pytest.importorskip("numpy")

IDL = tern.parse_idl("""
service Slots {
  rpc sum(Pair) returns (Total);
  rpc tag(Blob) returns (Blob);
  rpc echo(bytes) returns (bytes);
  rpc note(Pair) oneway;
  rpc hold(bytes) returns (bytes) deferred;
}
message Pair { i64 a; i64 b; }
message Total { i64 sum; }
message Blob { u32 id; u8 name[6]; bytes data; }
""", "slots.tern")


class Slots(IDL.Slots):
    def __init__(self):
        self.notes = []
        self.held = []
        self.open = False  # hold() answers at once

    @tern.method
    def sum(self, req):
        return IDL.Total(sum=req.a + req.b)

    @tern.method
    def tag(self, req):
        return IDL.Blob(id=req.id + 1, name=req.name, data=bytes(req.data).upper())

    @tern.method
    def echo(self, req):
        return req

    @tern.method
    def note(self, req):
        self.notes.append((req.a, req.b))

    @tern.method
    def hold(self, req, reply):
        if self.open:
            reply.reply(b"ok")
        else:
            self.held.append(reply)


@pytest.fixture
def slots(serve_thread):
    svc = Slots()
    srv = serve_thread(svc, slot_count=8)
    p = tern.proxy(srv.uri, IDL.Slots, timeout=30, slot_count=8)
    yield svc, srv, p
    p.close()


def test_a_typed_request_built_in_the_slot(slots):
    _, _, p = slots
    with p.sum.acquire() as s:
        assert isinstance(s.message, IDL.Pair)
        s.message.a = 40
        s.message.b = 2
        f = s.commit()
    assert f.result().sum == 42


def test_trailing_bytes_built_in_the_slot(slots):
    _, _, p = slots
    s = p.tag.acquire()
    assert len(s.message) == s.cap == p.session.max_payload  # all the room is the tail's
    s.message.id = 6
    s.message.name = b"abc"
    s.message.data = b"written in place"
    r = s.commit().result()
    assert (r.id, r.name, bytes(r.data)) == (7, b"abc\0\0\0", b"WRITTEN IN PLACE")
    s = p.tag.acquire()
    s.message.data[:3] = b"xyz"  # or through the tail's view, its length told
    assert bytes(s.commit(3).result().data) == b"XYZ"


def test_bytes_built_through_numpy(slots):
    _, _, p = slots
    s = p.echo.acquire()
    a = np.frombuffer(s.buffer, dtype=np.float32)  # the slot itself, no copy
    a[:256] = np.arange(256, dtype=np.float32)
    with pytest.raises(BufferError):
        s.commit(1024)  # the array still writes the slot
    assert not s.committed
    del a
    f = s.commit(1024)
    assert np.array_equal(np.frombuffer(f.result(), np.float32), np.arange(256, dtype=np.float32))


def test_views_are_refused_after_commit_and_abort(slots):
    _, _, p = slots
    s = p.echo.acquire()
    mv = s.buffer
    mv[:2] = b"hi"
    slot = s._slot
    assert isinstance(slot, tern.SlotView)  # a CallSlot is a SlotView
    assert s.commit(2).result() == b"hi"
    with pytest.raises(ValueError):
        bytes(mv)  # the memoryview handed out is released
    with pytest.raises(ValueError):
        s.buffer
    with pytest.raises(BufferError):
        memoryview(slot)  # nothing new reaches the slot
    assert slot.released and s.committed
    with pytest.raises(ValueError):
        s.commit(2)
    s = p.echo.acquire()
    mv = s.buffer
    s.abort()
    with pytest.raises(ValueError):
        mv[0] = 1
    with pytest.raises(BufferError):
        np.frombuffer(s._slot, np.uint8)


def take_all(p):
    """Acquire send slots until none is free (a call needs a slot, a credit
    and room for its reply: at most the slot count)."""
    taken = []
    while True:
        try:
            taken.append(p.echo.acquire(timeout=0))
        except tern.WouldBlock:
            return taken
        assert len(taken) <= 8


def test_abort_and_with_give_the_slot_back(slots):
    _, _, p = slots
    first = take_all(p)
    assert first
    for s in first:
        s.abort()
    for _ in range(3):
        taken = take_all(p)
        assert len(taken) == len(first)  # every aborted slot came back
        for s in taken:
            s.abort()
    for _ in range(20):
        with p.echo.acquire(timeout=0) as s:
            s.buffer[:1] = b"x"  # left unsent: the with block aborts it
    assert p.echo(b"after").result() == b"after"


def test_oneway_built_in_the_slot(slots):
    svc, _, p = slots
    for i in range(50):
        with p.note.acquire() as s:
            s.message.a, s.message.b = i, -i
            assert s.commit() is None
    p.drain(30)
    assert svc.notes == [(i, -i) for i in range(50)]


def test_the_loop_waits_while_a_slot_is_out(slots):
    _, _, p = slots
    f = p.echo(b"first")
    s = p.echo.acquire()
    with pytest.raises(RuntimeError, match="neither committed nor aborted"):
        f.result(10)  # the session must not go down under the slot
    with pytest.raises(RuntimeError):
        p.drain(1)
    s.buffer[:6] = b"second"
    g = s.commit(6)
    assert f.result(10) == b"first" and g.result(10) == b"second"


def test_closing_with_a_slot_out(slots):
    _, _, p = slots
    s = p.echo.acquire()
    a = np.frombuffer(s.buffer, np.uint8)
    with pytest.raises(BufferError):
        p.close()  # an array still writes the slot
    del a
    gc.collect()
    p.close()  # the slot is aborted with the session
    with pytest.raises(ValueError):
        s.buffer


def test_acquire_waits_for_a_slot_with_the_gil_released(slots):
    svc, srv, p = slots
    futs = [p.hold(b"x") for _ in range(8)]  # the server holds the calls (the rest queue)
    end = time.monotonic() + 60
    while not svc.held and time.monotonic() < end:
        futs[0].wait(0.01)
    assert svc.held and len(take_all(p)) == 0  # nothing free: acquire has to wait

    def wait():
        with pytest.raises(tern.RpcTimeout):
            p.echo.acquire(timeout=0.5)
    assert ticks_while(wait) > 1000

    def release():
        svc.open = True
        for r in svc.held:
            r.reply(b"ok")
    srv.on_loop(release)
    s = p.echo.acquire(timeout=30)  # waits for a reply to free one
    s.buffer[:2] = b"go"
    assert s.commit(2).result() == b"go"
    assert [f.result(10) for f in futs] == [b"ok"] * 8
