#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Run an example's server and client and check what they say.

usage: run_example.py [--listen URI] [--server-arg ARG]... [--clients N]
                      [--valgrind VALGRIND [ARG]... --]
                      SERVER CLIENT [--expect REGEX]... [--fail-expect REGEX]

Starts SERVER [ARG]... URI in the background (URI: --listen, else rdma://<address>:0),
reads the URI it prints, runs CLIENT with it (N times, one after another,
with --clients), and checks each client's exit status (0, or non-zero with
--fail-expect) and that each REGEX matches its output.  Then it stops the server with SIGTERM and checks that it exits 0
with no sanitizer report (its leak check runs at exit).  The server is
killed on every path.  --valgrind runs both under VALGRIND ARG... (give it
--error-exitcode: a report then shows as that exit status).  Prints
"1 passed, 0 failed, 0 skipped" (or 0 passed, 1 failed) last, the count
tools/lib/test_summary.py reads.

The rdma address: $TERN_RDMA_ADDR, else the first IPv4 address of a netdev
that an RDMA device sits on (rxe0 on dummy0 in tools/rxe-vm: 10.77.0.1).  No
RDMA device: exit 77 (skipped).  Standard library only; importable.
"""
import glob
import os
import re
import select
import signal
import subprocess
import sys

SKIP = 77


def rdma_netdevs():
    """Netdevs that carry an RDMA device's port (RoCE and iWARP)."""
    devs = []
    for p in sorted(glob.glob("/sys/class/infiniband/*/ports/*/gid_attrs/ndevs/*")):
        try:
            with open(p) as f:
                name = f.read().strip()
        except OSError:
            continue
        if name and name not in devs:
            devs.append(name)
    return devs


def find_rdma_addr():
    """An IPv4 address rdma_cm can bind to an RDMA device, or None."""
    env = os.environ.get("TERN_RDMA_ADDR")
    if env:
        return env
    for dev in rdma_netdevs():
        try:
            out = subprocess.run(["ip", "-4", "-o", "addr", "show", "dev", dev],
                                 capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.TimeoutExpired):
            continue
        m = re.search(r"\binet (\d+\.\d+\.\d+\.\d+)/", out)
        if m:
            return m.group(1)
    return None


class Server:
    """A server process that prints its URI first; always stopped on exit."""

    def __init__(self, argv, env=None):
        self.p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env=env)
        self.stderr = ""

    def uri(self, timeout=120):
        """The first line the server prints (its listener's URI), or None."""
        ready, _, _ = select.select([self.p.stdout], [], [], timeout)
        if not ready:
            return None
        return self.p.stdout.readline().strip() or None

    def stop(self, timeout=60):
        """SIGTERM, then SIGKILL if it lingers; returns the exit status."""
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
        try:
            self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
        self.stderr = self.p.stderr.read()
        return self.p.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()
        for f in (self.p.stdout, self.p.stderr):
            f.close()


def _text(b):
    return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")


SANITIZER_REPORT = re.compile(r"ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:")


def print_count(passed, failed, skipped=0):
    """The case count line tools/lib/test_summary.py reads (pytest's wording)."""
    print(f"{passed} passed, {failed} failed, {skipped} skipped")


def run_pair(server, client, listen, expect=(), client_ok=True, env=None, timeout=300,
             wrap=(), server_args=(), clients=1):
    """Run one server/client pair; returns a list of problems (empty: passed)."""
    problems = []
    with Server([*wrap, server, *server_args, listen], env) as srv:
        uri = srv.uri()
        if not uri:
            rc = srv.stop()
            return [f"the server printed no URI (exit {rc}): {srv.stderr.strip()}"]
        print(f"server listening on {uri}")
        outs = ""
        for _ in range(clients):
            try:
                c = subprocess.run([*wrap, client, uri], capture_output=True, text=True, env=env,
                                   timeout=timeout)
                out, rc = c.stdout + c.stderr, c.returncode
            except subprocess.TimeoutExpired as e:
                # (Its output comes back as bytes even in text mode.)
                out, rc = _text(e.stdout) + _text(e.stderr), "timeout"
            print(out, end="")
            outs += out
            if (rc == 0) != client_ok:
                problems.append(f"client exit status {rc}")
            for pat in expect:
                if not re.search(pat, out, re.M):
                    problems.append(f"client output lacks /{pat}/")
        src = srv.stop()
        if srv.stderr:
            print(srv.stderr, end="")
        if src != 0:
            problems.append(f"server exit status {src} after SIGTERM")
        if SANITIZER_REPORT.search(srv.stderr + outs):
            problems.append("a sanitizer reported an error")
    return problems


def main(argv):
    args, expect, fail, listen, wrap, server_args, clients = [], [], False, None, [], [], 1
    it = iter(argv[1:])
    for a in it:
        if a == "--expect":
            expect.append(next(it))
        elif a == "--fail-expect":
            expect.append(next(it))
            fail = True
        elif a == "--listen":
            listen = next(it)
        elif a == "--server-arg":
            server_args.append(next(it))
        elif a == "--clients":
            clients = int(next(it))
        elif a == "--valgrind":
            wrap = [next(it)]
            wrap += iter(lambda: next(it), "--")
        else:
            args.append(a)
    if len(args) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    if not listen:
        addr = find_rdma_addr()
        if not addr:
            print("SKIP: no RDMA device with an IPv4 address (set TERN_RDMA_ADDR)")
            return SKIP
        listen = f"rdma://{addr}:0"
    # valgrind's own start-up and bookkeeping take their time
    timeout = 900 if wrap else 300
    problems = run_pair(args[0], args[1], listen, expect, client_ok=not fail, timeout=timeout,
                        wrap=wrap, server_args=server_args, clients=clients)
    for p in problems:
        print(f"FAILED: {p}")
    print_count(0 if problems else 1, 1 if problems else 0)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
