#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""tern-rnr, the command: formats, alerts, exit statuses, /metrics over HTTP.

usage: test_rnr_cli.py PATH/TO/tern-rnr

Every test builds a fake sysfs tree in a temporary directory (an rxe-like
and an mlx5-like device, as the kernel lays them out) and runs the real
binary against it with --root.  Standard library only.  Any server this
starts is killed on every path (tearDown).
"""
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

TERN_RNR = None  # set from argv in main

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, EXIT_ALERT, EXIT_NO_DEVICE = 0, 1, 2, 3, 4

RXE_COUNTERS = [
    "ack_deferred", "completer_retry_err", "duplicate_request", "link_downed",
    "out_of_seq_request", "rcvd_pkts", "rcvd_rnr_err", "rcvd_seq_err", "rdma_recvs",
    "rdma_sends", "retry_exceeded_err", "retry_rnr_exceeded_err", "send_err",
    "send_rnr_err", "sent_pkts",
]
MLX5_COUNTERS = [
    "rx_write_requests", "rx_read_requests", "out_of_buffer", "out_of_sequence",
    "duplicate_request", "rnr_nak_retry_err", "packet_seq_err", "local_ack_timeout_err",
]


class FakeTree:
    """A sysfs root with class/infiniband/<dev> links into devices/."""

    def __init__(self):
        self.root = tempfile.mkdtemp(prefix="tern-rnr-cli.")

    def cleanup(self):
        shutil.rmtree(self.root, ignore_errors=True)

    def _device(self, devices_dir, dev):
        real = os.path.join(self.root, devices_dir, dev, "ports", "1")
        os.makedirs(real, exist_ok=True)
        cls = os.path.join(self.root, "class", "infiniband")
        os.makedirs(cls, exist_ok=True)
        os.symlink(os.path.join("..", "..", devices_dir, dev), os.path.join(cls, dev))

    def set(self, dev, name, value, group="hw_counters", port=1):
        d = os.path.join(self.root, "class", "infiniband", dev, "ports", str(port), group)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, name), "w") as f:
            f.write(value if isinstance(value, str) else f"{value}\n")

    def add_rxe(self, dev="rxe0", base=0):
        self._device("devices/virtual/infiniband", dev)
        for n in RXE_COUNTERS:
            self.set(dev, n, base)
        self.set(dev, "lifespan", 12)

    def add_mlx5(self, dev="mlx5_0", base=0):
        self._device("devices/pci0000:00/0000:00:03.0/infiniband", dev)
        for n in MLX5_COUNTERS:
            self.set(dev, n, base)
        self.set(dev, "lifespan", 10)
        self.set(dev, "port_xmit_data", 7, group="counters")
        self.set(dev, "link_downed", "N/A (no PMA)\n", group="counters")

    def unplug(self, dev):
        os.unlink(os.path.join(self.root, "class", "infiniband", dev))


def run(args, timeout=60):
    return subprocess.run([TERN_RNR] + args, capture_output=True, text=True, timeout=timeout)


def read_line(pipe, timeout):
    """One line from a child's pipe, or fail after @timeout seconds."""
    r, _, _ = select.select([pipe], [], [], timeout)
    if not r:
        raise AssertionError(f"no output within {timeout} s")
    return pipe.readline()


def counter_value(json_line, raw):
    """The value of raw counter @raw (the first port that has it) in a JSON reading."""
    for port in json.loads(json_line)["ports"]:
        for c in port["counters"]:
            if c["raw"] == raw:
                return c["value"]
    raise AssertionError(f"no counter {raw} in {json_line[:200]}")


def http(port, raw, timeout=30):
    """Send @raw bytes, return (status, headers dict, body bytes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(raw)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:])}
    return status, headers, body


PROM_SAMPLE = re.compile(r'^([a-z_]+)\{((?:[a-z_]+="(?:[^"\\]|\\.)*",?)+)\} (\d+)$')


class Base(unittest.TestCase):
    def setUp(self):
        self.tree = FakeTree()
        self.procs = []

    def tearDown(self):
        for p in self.procs:  # no server outlives its test
            if p.poll() is None:
                p.kill()
            p.wait(timeout=30)
            for f in (p.stdout, p.stderr):
                if f:
                    f.close()
        self.tree.cleanup()

    def start(self, args):
        p = subprocess.Popen([TERN_RNR] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
        self.procs.append(p)
        return p

    def start_server(self, args):
        p = self.start(["--root", self.tree.root, "--listen", "127.0.0.1:0"] + args)
        line = read_line(p.stderr, 60)
        m = re.search(r"serving http://127\.0\.0\.1:(\d+)/metrics", line)
        self.assertIsNotNone(m, line)
        return p, int(m.group(1))


class Help(Base):
    def test_help_lists_options_and_exit_statuses(self):
        r = run(["--help"])
        self.assertEqual(r.returncode, EXIT_OK)
        for opt in ("--interval", "--count", "--device", "--root", "--format", "--listen",
                    "--alert"):
            self.assertIn(opt, r.stdout)
        self.assertIn("3  an --alert rule fired", r.stdout)
        self.assertIn("4  no RDMA device found", r.stdout)
        self.assertIn("2  usage error", r.stdout)


class Formats(Base):
    def setUp(self):
        super().setUp()
        self.tree.add_rxe("rxe0", 5)
        self.tree.add_mlx5("mlx5_0", 9)

    def test_prom_count_1_against_a_fake_tree(self):
        r = run(["--root", self.tree.root, "--format", "prom", "--count", "1",
                 "--interval", "0"])
        self.assertEqual(r.returncode, EXIT_OK, r.stderr)
        lines = r.stdout.splitlines()
        self.assertIn('tern_rnr_counter_total{device="rxe0",port="1",group="hw_counters",'
                      'counter="responder_out_of_buffer",raw="send_rnr_err"} 5', lines)
        self.assertIn('tern_rnr_counter_total{device="mlx5_0",port="1",group="hw_counters",'
                      'counter="responder_out_of_buffer",raw="out_of_buffer"} 9', lines)
        self.assertIn('tern_rnr_counter_total{device="mlx5_0",port="1",group="counters",'
                      'counter="port_xmit_data",raw="port_xmit_data"} 7', lines)
        self.assertIn('tern_rnr_counter_read_error{device="mlx5_0",port="1",group="counters",'
                      'counter="link_downed",raw="link_downed",status="garbage"} 1', lines)
        self.assertIn('tern_rnr_port_present{device="rxe0",port="1"} 1', lines)
        self.assertFalse(any("lifespan" in l for l in lines))

    def test_prom_lines_are_well_formed_and_typed(self):
        r = run(["--root", self.tree.root, "--format", "prom", "--count", "1",
                 "--interval", "0"])
        self.assertEqual(r.returncode, EXIT_OK, r.stderr)
        typed, helped, samples = {}, set(), 0
        for line in r.stdout.splitlines():
            if line.startswith("# HELP "):
                helped.add(line.split()[2])
            elif line.startswith("# TYPE "):
                _, _, name, kind = line.split()
                self.assertIn(kind, ("counter", "gauge"))
                self.assertIn(name, helped, "HELP comes before TYPE")
                typed[name] = kind
            else:
                m = PROM_SAMPLE.match(line)
                self.assertIsNotNone(m, f"not a sample line: {line!r}")
                self.assertIn(m.group(1), typed, "TYPE comes before the samples")
                labels = dict(re.findall(r'([a-z_]+)="((?:[^"\\]|\\.)*)"', m.group(2)))
                for key in ("device", "port"):
                    self.assertIn(key, labels)
                if m.group(1).startswith("tern_rnr_counter_"):
                    self.assertIn("counter", labels)
                samples += 1
        self.assertEqual(set(typed), {"tern_rnr_counter_total", "tern_rnr_counter_delta",
                                      "tern_rnr_counter_resets", "tern_rnr_counter_read_error",
                                      "tern_rnr_port_present"})
        self.assertEqual(typed["tern_rnr_counter_total"], "counter")
        self.assertGreater(samples, 40)

    def test_json_is_one_object_per_line(self):
        r = run(["--root", self.tree.root, "--format", "json", "--count", "2",
                 "--interval", "0.05"])
        self.assertEqual(r.returncode, EXIT_OK, r.stderr)
        lines = r.stdout.splitlines()
        self.assertEqual(len(lines), 2)
        for line in lines:
            obj = json.loads(line)
            self.assertGreater(obj["interval_s"], 0)
            ports = {(p["device"], p["port"]): p for p in obj["ports"]}
            rxe = {c["counter"]: c for c in ports[("rxe0", 1)]["counters"]}
            self.assertEqual(rxe["responder_out_of_buffer"]["raw"], "send_rnr_err")
            self.assertEqual(rxe["responder_out_of_buffer"]["value"], 5)
            self.assertEqual(rxe["responder_out_of_buffer"]["rate"], 0.0)
            self.assertEqual(ports[("rxe0", 1)]["lifespan_ms"], 12)

    def test_table_columns_are_aligned(self):
        r = run(["--root", self.tree.root, "--count", "1", "--interval", "0"])
        self.assertEqual(r.returncode, EXIT_OK, r.stderr)
        rows = [l for l in r.stdout.splitlines() if l and not l.startswith("#")]
        self.assertTrue(rows[0].startswith("DEVICE"))
        self.assertEqual(len({len(l) for l in rows}), 1, "all rows equally wide")
        status_col = rows[0].index("STATUS")
        for row in rows[1:]:
            self.assertIn(row[status_col:].split()[0], ("ok", "garbage"))

    def test_device_filter(self):
        r = run(["--root", self.tree.root, "--format", "json", "--count", "1",
                 "--interval", "0", "--device", "rxe*"])
        self.assertEqual(r.returncode, EXIT_OK, r.stderr)
        self.assertEqual({p["device"] for p in json.loads(r.stdout)["ports"]}, {"rxe0"})

    def test_unplugged_device_is_reported_gone(self):
        self.tree.add_rxe("rxe1", 0)
        p = self.start(["--root", self.tree.root, "--format", "json", "--count", "2",
                        "--interval", "0.3"])
        first = json.loads(read_line(p.stdout, 60))
        self.assertIn("rxe1", {x["device"] for x in first["ports"]})
        self.tree.unplug("rxe1")
        second = json.loads(read_line(p.stdout, 60))
        states = {x["device"]: x["state"] for x in second["ports"]}
        self.assertEqual(states["rxe1"], "gone")
        self.assertEqual(states["rxe0"], "present")
        self.assertEqual(p.wait(timeout=60), EXIT_OK)


class Alerts(Base):
    def setUp(self):
        super().setUp()
        self.tree.add_rxe("rxe0", 0)

    # The alert tests change a counter after the first reading, whenever this
    # process gets to it: on a loaded machine that can be several readings
    # later, so the tool may not stop after a handful of them (it did, with
    # --count 5, and exited 0), and readings may come before the one that
    # fires.  What must hold is that it stops at the first reading that sees
    # the change.
    def test_delta_alert_fires_with_status_3(self):
        p = self.start(["--root", self.tree.root, "--format", "json", "--count", "200",
                        "--interval", "0.3", "--alert", "out_of_buffer>0"])
        read_line(p.stdout, 60)  # reading 1: nothing yet
        self.tree.set("rxe0", "send_rnr_err", 2)
        self.assertEqual(p.wait(timeout=60), EXIT_ALERT)
        err = p.stderr.read()
        self.assertIn("alert 'out_of_buffer>0' fired: rxe0 port 1 responder_out_of_buffer "
                      "(send_rnr_err) delta 2", err)
        seen = [counter_value(line, "send_rnr_err") for line in p.stdout.read().splitlines()]
        self.assertEqual(seen[-1:], [2], "the last reading is the one that fired")
        self.assertEqual(seen[:-1], [0] * (len(seen) - 1), "stops at the reading that fired")

    def test_rate_alert_fires_with_status_3(self):
        p = self.start(["--root", self.tree.root, "--format", "json", "--count", "200",
                        "--interval", "0.3", "--alert", "requester_rnr_nak.rate > 1"])
        read_line(p.stdout, 60)
        self.tree.set("rxe0", "rcvd_rnr_err", 1000)
        self.assertEqual(p.wait(timeout=60), EXIT_ALERT)
        self.assertIn("requester_rnr_nak (rcvd_rnr_err)", p.stderr.read())

    def test_quiet_counters_exit_0(self):
        r = run(["--root", self.tree.root, "--count", "2", "--interval", "0",
                 "--alert", "responder_out_of_buffer>0", "--alert", "send_rnr_err.rate>0"])
        self.assertEqual(r.returncode, EXIT_OK, r.stderr)
        self.assertNotIn("alert", r.stderr)

    def test_rules_take_canonical_raw_and_alias_names(self):
        self.tree.set("rxe0", "send_rnr_err", 5)
        self.tree.add_mlx5("mlx5_0", 0)
        cases = [
            ("send_rnr_err.total>=5", EXIT_ALERT),        # raw
            ("responder_out_of_buffer.total==5", EXIT_ALERT),  # canonical
            ("out_of_buffer.total>4", EXIT_ALERT),        # mlx5 name, rxe counter
            ("rcvd_rnr_err.total>100", EXIT_OK),
            ("counters/port_xmit_data.total!=7", EXIT_OK),
            ("counters/port_xmit_data.total==7", EXIT_ALERT),
            ("sent_pkts<1", EXIT_ALERT),                  # delta 0 < 1
        ]
        for rule, want in cases:
            with self.subTest(rule=rule):
                r = run(["--root", self.tree.root, "--count", "1", "--interval", "0",
                         "--format", "json", "--alert", rule])
                self.assertEqual(r.returncode, want, r.stderr)


class Errors(Base):
    def test_bad_arguments_exit_2_with_a_message(self):
        self.tree.add_rxe("rxe0", 0)
        root = ["--root", self.tree.root]
        cases = [
            (["--interval", "abc"], "--interval needs seconds"),
            (["--interval", "-1"], "--interval needs seconds"),
            (["--interval", "nan"], "--interval needs seconds"),
            (["--interval", "0"], "would spin forever"),
            (["--count", "0"], "--count needs a whole number"),
            (["--count", "-3"], "--count needs a whole number"),
            (["--count", "2x"], "--count needs a whole number"),
            (["--format", "xml"], "--format is table, json or prom"),
            (["--device", ""], "--device needs a name"),
            (["--alert", "out_of_buffer"], "bad --alert"),
            (["--alert", "out_of_buffer>>0"], "bad --alert"),
            (["--alert", ">0"], "bad --alert"),
            (["--alert", "out_of_buffer>zero"], "bad --alert"),
            (["--alert", "no_such_counter>0"], "not a canonical name"),
            (["--alert", "x>0"] * 17, "at most 16"),
            (["--listen", "nocolon"], "--listen needs HOST:PORT"),
            (["--listen", "127.0.0.1:99999"], "--listen needs HOST:PORT"),
            (["--listen", "not-an-ip:80"], "--listen needs HOST:PORT"),
            (["--bogus"], "unknown option '--bogus'"),
            (["--interval"], "needs an argument"),
            (["stray"], "unexpected argument 'stray'"),
        ]
        for args, msg in cases:
            with self.subTest(args=args):
                r = run(root + args, timeout=15)  # a usage error is immediate
                self.assertEqual(r.returncode, EXIT_USAGE, r.stderr)
                self.assertIn(msg, r.stderr)
                self.assertIn("try 'tern-rnr --help'", r.stderr)
        r = run(["--root", os.path.join(self.tree.root, "nope"), "--count", "1"])
        self.assertEqual(r.returncode, EXIT_USAGE)
        self.assertIn("is not a directory", r.stderr)

    def test_no_rdma_devices_exit_4(self):
        r = run(["--root", self.tree.root, "--count", "1", "--interval", "0"])
        self.assertEqual(r.returncode, EXIT_NO_DEVICE)
        self.assertIn("no RDMA devices found under", r.stderr)
        self.assertIn("load an RDMA driver", r.stderr)
        self.assertEqual(r.stdout, "")
        os.makedirs(os.path.join(self.tree.root, "class", "infiniband"))
        r = run(["--root", self.tree.root, "--count", "1", "--interval", "0"])
        self.assertEqual(r.returncode, EXIT_NO_DEVICE)
        self.tree.add_rxe("rxe0", 0)
        r = run(["--root", self.tree.root, "--count", "1", "--interval", "0",
                 "--device", "mlx5_*"])
        self.assertEqual(r.returncode, EXIT_NO_DEVICE)
        self.assertIn("matching 'mlx5_*'", r.stderr)
        self.assertIn("--device is a glob", r.stderr)

    def test_port_in_use_is_a_runtime_error(self):
        self.tree.add_rxe("rxe0", 0)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen()
            port = s.getsockname()[1]
            r = run(["--root", self.tree.root, "--listen", f"127.0.0.1:{port}"])
        self.assertEqual(r.returncode, EXIT_RUNTIME)
        self.assertIn("cannot listen", r.stderr)


class Listen(Base):
    def setUp(self):
        super().setUp()
        self.tree.add_rxe("rxe0", 3)

    def test_serves_metrics_and_404_then_stops_after_count(self):
        p, port = self.start_server(["--count", "2"])
        status, headers, body = http(port, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(status, 404)
        status, headers, body = http(port, b"HEAD /metrics HTTP/1.1\r\n\r\n")
        self.assertEqual(status, 200)
        self.assertEqual(body, b"")
        self.assertGreater(int(headers["content-length"]), 100)
        for _ in range(2):
            status, headers, body = http(port, b"GET /metrics?x=1 HTTP/1.1\r\nHost: x\r\n\r\n")
            self.assertEqual(status, 200)
            self.assertEqual(headers["content-type"], "text/plain; version=0.0.4; charset=utf-8")
            self.assertEqual(int(headers["content-length"]), len(body))
            text = body.decode()
            self.assertIn("# TYPE tern_rnr_counter_total counter\n", text)
            self.assertIn('counter="responder_out_of_buffer",raw="send_rnr_err"} 3\n', text)
        self.assertEqual(p.wait(timeout=60), EXIT_OK)  # --count 2: two GETs of /metrics

    def test_scrape_reads_the_counters_afresh(self):
        p, port = self.start_server([])
        self.tree.set("rxe0", "send_rnr_err", 10)
        _, _, body = http(port, b"GET /metrics HTTP/1.0\r\n\r\n")
        self.assertIn('tern_rnr_counter_delta{device="rxe0",port="1",group="hw_counters",'
                      'counter="responder_out_of_buffer",raw="send_rnr_err"} 7\n', body.decode())
        p.send_signal(signal.SIGTERM)
        self.assertEqual(p.wait(timeout=60), EXIT_OK)

    def test_bad_requests_get_4xx(self):
        p, port = self.start_server([])
        self.assertEqual(http(port, b"GET /" + b"a" * 9000)[0], 431)
        self.assertEqual(http(port, b"POST /metrics HTTP/1.1\r\n\r\n")[0], 405)
        self.assertEqual(http(port, b"garbage\r\n\r\n")[0], 400)
        self.assertEqual(http(port, b"GET /metrics SPDY/3\r\n\r\n")[0], 400)
        self.assertEqual(http(port, b"GET /met\0rics HTTP/1.1\r\n\r\n")[0], 400)
        # Still serving after all that.
        self.assertEqual(http(port, b"GET /metrics HTTP/1.1\r\n\r\n")[0], 200)
        p.send_signal(signal.SIGINT)
        self.assertEqual(p.wait(timeout=60), EXIT_OK)

    def test_half_sent_requests_do_not_block_others(self):
        p, port = self.start_server([])
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(5)]
        try:
            for s in idle:
                s.sendall(b"GET /metr")
            self.assertEqual(http(port, b"GET /metrics HTTP/1.1\r\n\r\n")[0], 200)
        finally:
            for s in idle:
                s.close()

    def test_alert_exits_3_after_the_scrape(self):
        p, port = self.start_server(["--alert", "send_rnr_err.total>0"])
        status, _, body = http(port, b"GET /metrics HTTP/1.1\r\n\r\n")
        self.assertEqual(status, 200)
        self.assertIn(b"tern_rnr_counter_total", body)
        self.assertEqual(p.wait(timeout=60), EXIT_ALERT)
        self.assertIn("alert 'send_rnr_err.total>0' fired", p.stderr.read())


def main():
    global TERN_RNR
    if len(sys.argv) < 2 or not os.access(sys.argv[1], os.X_OK):
        print(__doc__, file=sys.stderr)
        return 2
    TERN_RNR = os.path.abspath(sys.argv.pop(1))
    suite = unittest.defaultTestLoader.loadTestsFromModule(sys.modules[__name__])
    result = unittest.TextTestRunner(verbosity=2, stream=sys.stdout).run(suite)
    failed = len(result.failures) + len(result.errors)
    passed = result.testsRun - failed - len(result.skipped)
    # The count line tools/lib/test_summary.py reads, as pytest prints it.
    print(f"{passed} passed, {failed} failed, {len(result.skipped)} skipped")
    return 0 if result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())
