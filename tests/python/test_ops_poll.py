# SPDX-License-Identifier: MIT
"""examples/ops/poll.py against a real tern server on tcp:// and the RNR
counters of a fake sysfs tree (through tern-rnr --listen, and through
tern.RnrMonitor): every line's figures against the calls the test made.

Batches of calls (some failing, with known codes) are made right after the
poller prints a line, and the fake rxe0's send_rnr_err is bumped by a known
amount with each.  The poller's totals must match the calls exactly at every
line it read after a batch had ended, its errors by code likewise, and an
interval that holds one whole batch must show that batch's calls, errors,
RNR increase and p99, the p99 computed here from the server's own
histogram with the bucket bounds of docs/metrics.md.
"""
import errno
import json
import math
import os
import re
import subprocess
import sys
import threading
import time

import pytest

import tern
import conftest
from conftest import c_env, ThreadServer
from rnr_support import FakeTree

HERE = os.path.dirname(os.path.abspath(__file__))
POLL = os.path.join(os.path.dirname(os.path.dirname(HERE)), "examples", "ops", "poll.py")

IDL = tern.parse_idl("""
service Ops {
  rpc echo(bytes) returns (bytes);
  rpc fail(bytes) returns (bytes);
  rpc slow(bytes) returns (bytes) deferred;
}
""", "ops.tern")


class Ops(IDL.Ops):
    server = None  # the tern.Server, for slow()'s replies

    @tern.method
    def echo(self, req):
        return bytes(req)

    @tern.method
    def fail(self, req):
        raise tern.RemoteError(-(errno.EINVAL if req[0] % 2 else errno.ENOENT), "on purpose")

    @tern.method(deferred=True)
    def slow(self, req, reply):
        """Answered req[0] ms later, from the loop: a served latency that
        spans turns, so the interval's p99 is not bucket 0."""
        data = bytes(req)
        threading.Timer(data[0] / 1000, self.server.call_soon,
                        args=(lambda: reply.reply(data),)).start()


def bucket_le_us(i):
    """docs/metrics.md: bucket 0 <= 1024 ns, then 1.5*2^k and 2^(k+1) ns, k = 10..35."""
    if i == 0:
        return 1.024
    k, half = 10 + (i - 1) // 2, (i - 1) % 2
    return (1.5 * 2 ** k if half == 0 else 2 ** (k + 1)) / 1000


def p99_of(after, before):
    gained = [a - b for a, b in zip(after, before)]
    rank = math.ceil(0.99 * sum(gained))
    seen = 0
    for i, n in enumerate(gained):
        seen += n
        if seen >= rank:
            return None if i == len(gained) - 1 else round(bucket_le_us(i), 3)


def buckets(stats):
    """The latency histogram of every served method together."""
    out = [0] * 54  # TERN_METRICS_BUCKETS
    for d in stats.values():
        out = [a + b for a, b in zip(out, d["buckets"])]
    return out


def served(srv):
    """{"echo": stats, "fail": stats} of the server, read on its thread."""
    return {d["name"].split(".")[1]: d for d in srv.on_loop(srv.srv.method_stats)
            if d["side"] == "served" and d["name"]}


class Poller:
    def __init__(self, argv, env=None):
        self.p = subprocess.Popen([sys.executable, POLL, *argv], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=env)

    def line(self):
        line = self.p.stdout.readline()
        assert line, "the poller ended: " + self.p.stderr.read()
        return json.loads(line)

    def stop(self):
        if self.p.poll() is None:
            self.p.terminate()
        out, err = self.p.communicate(timeout=60)
        return self.p.returncode, err


@pytest.fixture(autouse=True)
def on_tcp(monkeypatch):
    """The server on tcp://, whatever lane runs the suite."""
    monkeypatch.setattr(conftest, "listen_uri", lambda: "tcp://127.0.0.1:0")


@pytest.fixture
def tree(tmp_path):
    t = FakeTree(tmp_path)
    t.add_rxe("rxe0", 100)
    return t


def tern_rnr(tree):
    path = os.environ.get("TERN_BIN_TERN_RNR")
    if not path or not os.path.exists(path):
        pytest.fail("TERN_BIN_TERN_RNR: tern-rnr is not built")
    p = subprocess.Popen([path, "--root", tree.root, "--listen", "127.0.0.1:0"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=c_env())
    line = p.stderr.readline()
    m = re.search(r"serving http://127\.0\.0\.1:(\d+)/metrics", line)
    if not m:
        p.kill()
        pytest.fail(f"tern-rnr did not listen: {line}{p.communicate()[1]}")
    return p, int(m.group(1))


@pytest.mark.parametrize("rnr_source", ["tern-rnr", "sysfs"])
def test_the_poller_counts_what_was_called(tree, rnr_source):
    ops = Ops()
    srv = ThreadServer(ops)
    ops.server = srv.srv
    rnr_proc = None
    poller = None
    try:
        port = srv.on_loop(lambda: srv.srv.metrics_listen("127.0.0.1:0"))
        if rnr_source == "tern-rnr":
            rnr_proc, rnr_port = tern_rnr(tree)
            rnr_args = ["--rnr", f"127.0.0.1:{rnr_port}"]
        else:
            rnr_args = ["--rnr-sysfs", tree.root]
        with tern.proxy(srv.uri, Ops) as p:
            assert p.echo(b"warm").result(30) == b"warm"  # before the baseline
            poller = Poller([f"127.0.0.1:{port}", "--json", "--interval", "0.4", *rnr_args])
            rnr_bump = 0
            total = {"calls": 0, "errors": 0, "EINVAL": 0, "ENOENT": 0, "rnr": 0}
            exact = slow_p99 = 0
            rec = poller.line()
            for batch in range(1, 30):
                if exact >= 3 and batch > 4:
                    break
                before = dict(total)
                st0 = served(srv)
                # a batch: its size, its failures and its RNR bump all differ
                n_echo, n_fail, n_slow = 5 + 3 * batch, batch % 4, 1 + batch % 2
                rnr_bump = 2 * batch + 1
                tree.set("rxe0", "send_rnr_err", 100 + total["rnr"] + rnr_bump)
                for i in range(n_echo):
                    assert p.echo(bytes([i])).result(30) == bytes([i])
                for i in range(n_fail):
                    with pytest.raises(tern.RemoteError):
                        p.fail(bytes([i])).result(30)
                    total["EINVAL" if i % 2 else "ENOENT"] += 1
                for i in range(n_slow):
                    ms = 2 + (batch * 7 + i) % 20
                    assert p.slow(bytes([ms])).result(30) == bytes([ms])
                ended = time.time()
                n_echo += n_slow  # only the count of those that succeed from here on
                total["calls"] += n_echo + n_fail
                total["errors"] += n_fail
                total["rnr"] += rnr_bump
                st1 = served(srv)
                assert sum(d["completed"] for d in st1.values()) - \
                    sum(d["completed"] for d in st0.values()) == n_echo + n_fail

                # every line up to the first read after the batch ended
                prev_total = rec["calls_total"]
                while True:
                    rec = poller.line()
                    assert rec["calls_total"] - prev_total == rec["calls"]
                    prev_total = rec["calls_total"]
                    assert before["calls"] <= rec["calls_total"] <= total["calls"]
                    assert rec["calls"] == sum(m["calls"] for m in rec["methods"].values())
                    assert rec["in_flight"] == 0 or rec["time"] < ended
                    if rec["time"] > ended:
                        break
                assert rec["calls_total"] == total["calls"]
                assert rec["errors_total"] == total["errors"]
                assert rec["in_flight"] == 0
                if rec["calls"] == n_echo + n_fail:
                    # the interval holds this batch and nothing else
                    exact += 1
                    assert rec["errors"] == n_fail
                    want = {k: v for k, v in (("EINVAL", n_fail // 2),
                                              ("ENOENT", n_fail - n_fail // 2)) if v}
                    assert rec["errors_by_code"] == want
                    assert rec["rnr"]["responder_out_of_buffer"] == rnr_bump
                    assert rec["rnr"]["requester_rnr_nak"] == 0
                    assert rec["calls_per_s"] == pytest.approx(rec["calls"] / rec["interval_s"],
                                                               rel=1e-3)
                    want_p99 = p99_of(buckets(st1), buckets(st0))
                    assert rec["p99_le_us"] == want_p99
                    slow_p99 += want_p99 > 1.024  # a slow call as the 99th percentile
                    assert rec["p50_le_us"] == 1.024  # most calls answer in their turn
            assert exact >= 3, "no interval held exactly one batch"
            assert slow_p99, "the p99 checks never saw a call slower than bucket 0"

            # nothing more called: an idle interval reads zero, p99 none
            rec = poller.line()
            assert (rec["calls"], rec["errors"], rec["p99_le_us"]) == (0, 0, None)
            assert rec["rnr"]["responder_out_of_buffer"] == 0
        rc, err = poller.stop()
        assert rc == 0, err
    finally:
        if poller:
            poller.stop()
        if rnr_proc:
            rnr_proc.terminate()
            rnr_proc.communicate(timeout=60)
        srv.stop()


def test_text_lines_and_a_server_that_is_not_there():
    srv = ThreadServer(Ops)
    try:
        port = srv.on_loop(lambda: srv.srv.metrics_listen("127.0.0.1:0"))
        r = subprocess.run([sys.executable, POLL, f"http://127.0.0.1:{port}/metrics",
                            "--interval", "0.2", "--count", "2"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert len(lines) == 2
        assert all(re.search(r"calls/s +0\.0 +calls +0 +errors +0 +in flight +0 +p50 +- +p99 +-$",
                             line) for line in lines), lines
    finally:
        srv.stop()
    # the server is gone: the first reading fails
    r = subprocess.run([sys.executable, POLL, f"127.0.0.1:{port}", "--count", "1",
                        "--timeout", "2"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "first reading" in r.stderr
    r = subprocess.run([sys.executable, POLL, "127.0.0.1:1", "--interval", "0"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
