#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Python servers for the C clients and for the killed-peer tests.

usage: py_server.py calc|echo|hang URI

Prints the URI to connect to, then serves with tern.serve() until Ctrl-C
(SIGINT), and exits 0.  calc serves examples/calc/calc.tern as
calc_server does; echo serves examples/echo/echo.tern (copy raw, zerocopy
inplace with numpy); hang serves Hang.wait, a deferred method that never
answers, for the tests that kill it mid-call.
"""
import errno
import os
import sys

import tern

SRC = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
calc = tern.load_idl(os.path.join(SRC, "examples", "calc", "calc.tern"))
echo = tern.load_idl(os.path.join(SRC, "examples", "echo", "echo.tern"))
hang = tern.parse_idl("service Hang { rpc wait(bytes) returns (bytes) deferred; }\n",
                      "hang.tern")
I64_MAX = 2**63 - 1


class Calc(calc.Calc):
    def __init__(self):
        self.adds = 0
        self.total = 0
        self.recent = [0, 0, 0, 0]

    @tern.method
    def add(self, req):
        s = req.a + req.b
        if not -I64_MAX - 1 <= s <= I64_MAX:
            raise tern.RemoteError(errno.ERANGE, "a + b overflows an i64")
        self.adds += 1
        self.total += s
        self.recent = [s] + self.recent[:3]
        return calc.AddResp(sum=s)

    @tern.method(deferred=True)
    def stats(self, req, reply):
        out = reply.acquire()  # a calc.Stats written in the send slot
        out.adds = self.adds
        out.total = self.total
        out.recent = self.recent
        reply.commit()


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


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("calc", "echo", "hang"):
        print(__doc__, file=sys.stderr)
        return 2
    svc = {"calc": Calc, "echo": Echo, "hang": Hang}[sys.argv[1]]()
    tern.serve(sys.argv[2], svc, progress="adaptive",
               ready=lambda uri: print(uri, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
