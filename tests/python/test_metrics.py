# SPDX-License-Identifier: MIT
"""Per-method metrics from Python: the counts a random call mix made, on
both ends, errors by code, and the Prometheus text of the same figures."""
import errno
import random
import re
import urllib.request

import tern

IDL = tern.parse_idl("""
service Metered {
  rpc echo(bytes) returns (bytes);
  rpc fail(bytes) returns (bytes);
}
""", "metered.tern")

CODES = [errno.EINVAL, errno.ENOENT, errno.EACCES]


class Metered(IDL.Metered):
    @tern.method
    def echo(self, req):
        return bytes(req)

    @tern.method
    def fail(self, req):
        code = CODES[req[0] % len(CODES)]
        raise tern.RemoteError(-code, "failing on purpose")


def by_name(stats, side):
    return {d["name"]: d for d in stats if d["side"] == side}


def test_a_random_mix_is_counted_on_both_ends(serve_thread):
    srv = serve_thread(Metered)
    srv.on_loop(srv.srv.metrics_enable)
    rng = random.Random(15)
    calls = {"echo": 0, "fail": 0}
    sent = {"echo": 0, "fail": 0}
    codes = {}
    with tern.proxy(srv.uri, Metered) as p:
        p.metrics_enable()
        for _ in range(200):
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
            name = rng.choice(["echo", "fail"])
            calls[name] += 1
            sent[name] += len(data)
            if name == "echo":
                assert p.echo(data).result(30) == data
            else:
                try:
                    p.fail(data).result(30)
                except tern.RemoteError as e:
                    key = errno.errorcode[CODES[data[0] % len(CODES)]]
                    codes[key] = codes.get(key, 0) + 1
                    assert e.code == -CODES[data[0] % len(CODES)]
                else:
                    raise AssertionError("fail() succeeded")
        issued = by_name(p.method_stats(), "issued")
        text = p.metrics()
    served = by_name(srv.on_loop(srv.srv.method_stats), "served")
    for side in (issued, served):
        for name in ("echo", "fail"):
            d = side["Metered." + name]
            assert d["started"] == d["completed"] == calls[name]
            assert sum(d["buckets"]) == d["completed"]
            assert d["request_bytes"] == sent[name]
        assert side["Metered.echo"]["errors"] == 0
        assert side["Metered.echo"]["reply_bytes"] == sent["echo"]
        assert side["Metered.fail"]["errors"] == calls["fail"]
        assert side["Metered.fail"]["codes"] == codes
    fail_id = issued["Metered.fail"]["method"]
    for key, n in codes.items():
        line = (f'tern_rpc_errors_total{{side="issued",method="0x{fail_id:08x}",'
                f'code="{key}"}} {n}')
        assert line in text.splitlines()
    m = re.search(r'^tern_rpc_latency_seconds_count\{side="issued",method="0x%08x"\} (\d+)$'
                  % fail_id, text, re.M)
    assert m and int(m.group(1)) == calls["fail"]


def test_metrics_are_on_by_default_and_off_on_request(serve_thread):
    srv = serve_thread(Metered)
    with tern.proxy(srv.uri, Metered) as p:
        assert p.echo(b"x").result(30) == b"x"
        issued = by_name(p.method_stats(), "issued")
        assert issued["Metered.echo"]["completed"] == 1
        p.metrics_enable(False)
        assert p.echo(b"x").result(30) == b"x"
        assert by_name(p.method_stats(), "issued")["Metered.echo"]["completed"] == 1
        assert "tern_session_calls_sent_total" in p.metrics()
    served = by_name(srv.on_loop(srv.srv.method_stats), "served")
    assert served["Metered.echo"]["completed"] == 2  # the server's stayed on


def test_the_endpoint_serves_a_running_server(serve_thread):
    srv = serve_thread(Metered)
    port = srv.on_loop(lambda: srv.srv.metrics_listen("127.0.0.1:0"))
    srv.on_loop(srv.srv.metrics_enable)
    with tern.proxy(srv.uri, Metered) as p:
        for _ in range(3):
            assert p.echo(b"abc").result(30) == b"abc"
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = r.read().decode()
    echo_id = next(d["method"] for d in srv.on_loop(srv.srv.method_stats)
                   if d["name"] == "Metered.echo")
    assert f'tern_rpc_calls_total{{side="served",method="0x{echo_id:08x}"}} 3' in text.splitlines()
