# SPDX-License-Identifier: MIT
"""Context.mem() / Server.mem(): tern_ctx_mem() from Python."""
import time

import tern

RESERVED = ("slots_registered", "slots_shared", "slots_heap", "staging_heap",
            "staging_registered", "staging_shared", "user_registered", "user_shared",
            "conn_heap", "session_heap")


class Echo:
    service_name = "MemEcho"

    @tern.method
    def echo(self, req):
        return bytes(req)


def mem_when(srv, pred, timeout=30):
    """The server's figures, once pred(figures) holds (sessions close asynchronously)."""
    end = time.monotonic() + timeout
    while True:
        m = srv.on_loop(srv.srv.mem)
        if pred(m) or time.monotonic() > end:
            return m
        time.sleep(0.02)


def test_server_mem_follows_its_sessions(serve_thread):
    srv = serve_thread(Echo())
    base = srv.on_loop(srv.srv.mem)
    assert base["sessions"] == 0
    assert set(RESERVED) <= set(base)
    proxies = [tern.proxy(srv.uri, Echo, timeout=20) for _ in range(3)]
    assert proxies[0].echo(b"x" * 100).result() == b"x" * 100
    m = mem_when(srv, lambda m: m["sessions"] == 3)
    assert m["sessions"] == 3
    per = (sum(m[k] for k in RESERVED) - sum(base[k] for k in RESERVED)) / 3
    # 2 x (2N + 3) slots of 8 KiB at the defaults, however each provider holds them
    assert per >= 2 * 131 * 8192
    assert m["slots_shared_resident"] <= m["slots_shared"]
    assert m["slots_heap_resident"] <= m["slots_heap"]
    for p in proxies:
        p.close()
    m = mem_when(srv, lambda m: m["sessions"] == 0)
    assert {k: m[k] for k in RESERVED} == {k: base[k] for k in RESERVED}


def test_context_mem_on_a_closed_context_raises():
    ctx = tern._tern.Context(0)
    assert ctx.mem()["sessions"] == 0
    ctx.close()
    try:
        ctx.mem()
    except ValueError:
        return
    raise AssertionError("mem() on a closed context must raise")
