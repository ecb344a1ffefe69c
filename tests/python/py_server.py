#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Python servers for the C clients and for the killed-peer tests.

usage: py_server.py calc|calc2|echo|hang|store URI

Prints the URI to connect to, then serves with tern.serve() until Ctrl-C
(SIGINT), and exits 0.  calc serves examples/calc/calc.tern as
calc_server does, calc2 the same from calc_v2.tern, a newer version of it
(AddReq.c, added to the sum, reads as zero from an older client); echo serves examples/echo/echo.tern (copy raw, zerocopy
inplace with numpy); hang serves Hang.wait, a deferred method that never
answers, for the tests that kill it mid-call; store serves store.tern as
store_server.c does, every method inplace, replies written through typed
views and returning what the C handlers return.
"""
import errno
import os
import sys

import tern

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.dirname(os.path.dirname(HERE))
calc = tern.load_idl(os.path.join(SRC, "examples", "calc", "calc.tern"))
calc2 = tern.load_idl(os.path.join(HERE, "calc_v2.tern"))
store = tern.load_idl(os.path.join(HERE, "store.tern"))
echo = tern.load_idl(os.path.join(SRC, "examples", "echo", "echo.tern"))
hang = tern.parse_idl("service Hang { rpc wait(bytes) returns (bytes) deferred; }\n",
                      "hang.tern")
I64_MAX = 2**63 - 1


class _Totals:
    """What both versions of Calc keep, and the stats they answer with."""

    def __init__(self):
        self.adds = 0
        self.total = 0
        self.recent = [0, 0, 0, 0]

    def _added(self, s):
        if not -I64_MAX - 1 <= s <= I64_MAX:
            raise tern.RemoteError(errno.ERANGE, "a + b overflows an i64")
        self.adds += 1
        self.total += s
        self.recent = [s] + self.recent[:3]
        return s

    @tern.method(deferred=True)
    def stats(self, req, reply):
        out = reply.acquire()  # a Stats written in the send slot
        out.adds = self.adds
        out.total = self.total
        out.recent = self.recent
        reply.commit()


class Calc(_Totals, calc.Calc):
    @tern.method
    def add(self, req):
        return calc.AddResp(sum=self._added(req.a + req.b))


class Calc2(_Totals, calc2.Calc):
    """Calc from calc_v2.tern: an older client's AddReq has no c (zero here),
    and it does not see AddResp.terms."""

    @tern.method
    def add(self, req):
        return calc2.AddResp(sum=self._added(req.a + req.b + req.c), terms=3)

    @tern.method
    def mul(self, req):
        return calc2.AddResp(sum=req.a * req.b, terms=2)


class Echo(echo.Echo):
    @tern.method
    def copy(self, req):
        return req  # the request's view: copied once into the reply slot

    @tern.method(inplace=True)
    def zerocopy(self, req, out):
        try:
            import numpy as np
        except ImportError:
            out[:len(req)] = req
            return len(req)
        np.frombuffer(out, dtype=np.uint8, count=len(req))[:] = np.frombuffer(req, np.uint8)
        return len(req)


class Hang(hang.Hang):
    def __init__(self):
        self.held = []

    @tern.method(deferred=True)
    def wait(self, req, reply):
        self.held.append(reply)  # never answered


def sum32(data):
    """FNV-1a over 32 bits, as store_server.c computes it."""
    h = 2166136261
    for b in data:
        h = ((h ^ b) * 16777619) & 0xffffffff
    return h


class Store(store.Store):
    """store_server.c's handlers, line for line, on typed views of the slots."""

    def __init__(self):
        self.entries = {}  # name (16 bytes) -> (version, sum, data)

    def _stat(self, name, e, out):
        out.name = name
        out.size = len(e[2])
        out.version = e[0]
        out.sum = e[1]

    @tern.method
    def put(self, req, out):  # req: an Entry in its slot; out: a Stat in the send slot
        e = self.entries.get(req.name)
        if e is not None and req.flags & 1:
            raise tern.AlreadyExists("the key exists")
        if e is None and len(self.entries) == 64:
            raise tern.ResourceExhausted("the store is full")
        data = bytes(req.data)
        e = self.entries[req.name] = ((e[0] if e else 0) + 1, sum32(data), data)
        self._stat(req.name, e, out)
        return 0

    @tern.method
    def get(self, req, out):  # out: a Value over the whole room, its tail included
        e = self.entries.get(req.name)
        if e is None:
            raise tern.NotFound("no such key")
        if len(e[2]) > len(out.data):
            raise tern.RemoteMessageTooLarge("the value does not fit the slot")
        out.name = req.name
        out.version = e[0]
        out.sum = e[1]
        out.data[:len(e[2])] = e[2]  # the trailing bytes, written in place
        return len(e[2])  # the tail's length, as the C handler returns

    @tern.method
    def stat(self, req, out):
        e = self.entries.get(req.name)
        if e is None:
            raise tern.NotFound("no such key")
        self._stat(req.name, e, out)  # and None: the Stat's size, as C's 0

    @tern.method
    def name(self, req, out):  # an untyped reply: out is the slot's memoryview
        e = self.entries.get(req.name)
        text = req.name.split(b"\0", 1)[0] + (b"@v%d" % e[0] if e else b"@missing")
        out[:len(text)] = text
        return len(text)


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("calc", "calc2", "echo", "hang", "store"):
        print(__doc__, file=sys.stderr)
        return 2
    svc = {"calc": Calc, "calc2": Calc2, "echo": Echo, "hang": Hang,
           "store": Store}[sys.argv[1]]()
    tern.serve(sys.argv[2], svc, progress="adaptive",
               ready=lambda uri: print(uri, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
