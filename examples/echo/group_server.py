#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""echo group_server.py - Echo (echo.tern) served by a context group, in Python.

    PYTHONPATH=build/python python3 examples/echo/group_server.py URI [MEMBERS]

Serves URI (tcp://HOST:PORT or shm://NAME; port 0 picks one) with MEMBERS
member contexts (default 2), each on a thread tern starts; prints the URI
to connect to (build/examples/echo/echo_client takes it), and on SIGINT or
SIGTERM closes the group and prints how many sessions each member took.

Echo.copy is raw: the handler returns the bytes.  Echo.zerocopy is
inplace: it writes its reply into ``out`` (in a group, a buffer of the
slot's size that tern copies into the slot).  Both run on the members'
threads, one at a time under the GIL; the sessions' I/O runs on all of them.
"""
import os
import signal
import sys

import tern

idl = tern.load_idl(os.path.join(os.path.dirname(os.path.abspath(__file__)), "echo.tern"))


class Echo(idl.Echo):
    @tern.method
    def copy(self, req):
        return bytes(req)

    @tern.method
    def zerocopy(self, req, out):
        n = len(req)
        out[:n] = req
        return n


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__.split("\n\n")[1])
    members = int(sys.argv[2]) if len(sys.argv) == 3 else 2
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    with tern.Group(sys.argv[1], Echo(), members=members) as g:
        print(g.uri, flush=True)
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    print(f"group_server: sessions per member: {list(g.accepted)}", flush=True)


if __name__ == "__main__":
    main()
