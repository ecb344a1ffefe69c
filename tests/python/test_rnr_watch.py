# SPDX-License-Identifier: MIT
"""tools/rnr-watch.py, the ops script, end to end on fake sysfs trees."""
import json
import select
import signal
import subprocess
import sys

import pytest

from rnr_support import RNR_WATCH, FakeTree

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, EXIT_ALERT, EXIT_NO_DEVICE = 0, 1, 2, 3, 4


def run(args, timeout=60):
    return subprocess.run([sys.executable, RNR_WATCH] + args, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def tree(tmp_path):
    t = FakeTree(tmp_path)
    t.add_rxe("rxe0", 0)
    return t


@pytest.fixture
def procs():
    started = []

    def start(args):
        p = subprocess.Popen([sys.executable, RNR_WATCH] + args, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        started.append(p)
        return p

    yield start
    for p in started:  # nothing outlives its test
        if p.poll() is None:
            p.kill()
        p.communicate(timeout=30)


def read_line(pipe, timeout=60):
    r, _, _ = select.select([pipe], [], [], timeout)
    assert r, f"no output within {timeout} s"
    return pipe.readline()


def test_help_lists_options_and_exit_statuses():
    r = run(["--help"])
    assert r.returncode == EXIT_OK
    for opt in ("--interval", "--count", "--device", "--root", "--format", "--alert"):
        assert opt in r.stdout
    for line in ("0  all readings taken", "1  runtime error", "2  usage error",
                 "3  an --alert rule fired", "4  no RDMA device found"):
        assert line in r.stdout


def test_table_has_a_row_per_counter_in_aligned_columns(tree):
    tree.add_mlx5("mlx5_0", 9)
    r = run(["--root", tree.root, "--count", "1", "--interval", "0"])
    assert r.returncode == EXIT_OK, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("# ") and "rates over" in lines[0]
    head = lines[1]
    assert head.split() == ["DEVICE", "PORT", "COUNTER", "RAW", "STATUS", "VALUE", "DELTA",
                            "RATE/s"]
    rows = [line.split() for line in lines[2:] if line]
    assert ["rxe0", "1", "responder_out_of_buffer", "send_rnr_err", "ok", "0", "0",
            "0.00"] in rows
    assert ["mlx5_0", "1", "counters/link_downed", "link_downed", "garbage", "-", "0",
            "-"] in rows
    table = [line for line in lines[1:] if line]
    assert len({len(line) for line in table}) == 1, "all rows equally wide"
    status = head.index("STATUS")
    assert {line[status:].split()[0] for line in table[1:]} == {"ok", "garbage"}


def test_json_lines_one_object_per_reading(tree, procs):
    # A second between the readings: time for the test to change a counter.
    p = procs(["--root", tree.root, "--format", "json", "--count", "2", "--interval", "1"])
    first = json.loads(read_line(p.stdout))
    tree.set("rxe0", "send_rnr_err", 4)
    second = json.loads(read_line(p.stdout))
    assert p.wait(timeout=60) == EXIT_OK
    for obj in (first, second):
        assert obj["interval_s"] > 0
        assert [(x["device"], x["port"], x["state"], x["lifespan_ms"]) for x in obj["ports"]] \
            == [("rxe0", 1, "present", 12)]
    c = {x["counter"]: x for x in second["ports"][0]["counters"]}["responder_out_of_buffer"]
    assert (c["raw"], c["canonical"], c["status"], c["value"], c["delta"]) == \
        ("send_rnr_err", "responder_out_of_buffer", "ok", 4, 4)
    assert c["rate"] == pytest.approx(4 / second["interval_s"], rel=0.01)


def test_device_filter_is_repeatable(tree):
    tree.add_rxe("rxe1")
    tree.add_mlx5("mlx5_0")
    r = run(["--root", tree.root, "--format", "json", "--count", "1", "--interval", "0",
             "--device", "rxe1", "--device", "mlx5_*"])
    assert r.returncode == EXIT_OK, r.stderr
    assert {p["device"] for p in json.loads(r.stdout)["ports"]} == {"rxe1", "mlx5_0"}


def test_delta_alert_fires_with_status_3(tree, procs):
    p = procs(["--root", tree.root, "--format", "json", "--count", "10", "--interval", "0.2",
               "--alert", "out_of_buffer>0"])
    read_line(p.stdout)  # reading 1: nothing yet
    tree.set("rxe0", "send_rnr_err", 2)
    assert p.wait(timeout=60) == EXIT_ALERT
    out, err = p.communicate()
    assert "alert 'out_of_buffer>0' fired: rxe0 port 1 responder_out_of_buffer " \
           "(send_rnr_err) delta 2 value 2" in err
    lines = out.splitlines()
    assert json.loads(lines[-1])["ports"][0]["counters"][0]["delta"] == 2, \
        "it prints the reading that fired"


def test_rate_alert_fires_with_status_3(tree, procs):
    p = procs(["--root", tree.root, "--format", "json", "--count", "10", "--interval", "0.2",
               "--alert", "requester_rnr_nak.rate > 1"])
    read_line(p.stdout)
    tree.set("rxe0", "rcvd_rnr_err", 1000)
    assert p.wait(timeout=60) == EXIT_ALERT
    assert "requester_rnr_nak (rcvd_rnr_err)" in p.communicate()[1]


@pytest.mark.parametrize("rule, want", [
    ("send_rnr_err.total>=5", EXIT_ALERT),              # raw
    ("responder_out_of_buffer.total==5", EXIT_ALERT),   # canonical
    ("out_of_buffer.total>4", EXIT_ALERT),              # mlx5's name, rxe's counter
    ("rcvd_rnr_err.total>100", EXIT_OK),
    ("sent_pkts<1", EXIT_ALERT),                        # delta 0 < 1
    ("send_rnr_err.rate!=0", EXIT_OK),
])
def test_rules_take_canonical_raw_and_alias_names(tree, rule, want):
    tree.set("rxe0", "send_rnr_err", 5)
    r = run(["--root", tree.root, "--count", "1", "--interval", "0", "--alert", rule])
    assert r.returncode == want, r.stderr


def test_unreadable_counters_never_fire(tree):
    tree.set("rxe0", "send_rnr_err", "N/A\n")
    r = run(["--root", tree.root, "--count", "1", "--interval", "0", "--format", "json",
             "--alert", "send_rnr_err.total<1"])
    assert r.returncode == EXIT_OK, r.stderr
    c = json.loads(r.stdout)["ports"][0]["counters"][0]
    assert (c["status"], c["value"], c["error"]) == ("garbage", None,
                                                     "garbage: not a decimal u64")


@pytest.mark.parametrize("args, msg", [
    (["--interval", "abc"], "--interval needs seconds"),
    (["--interval", "-1"], "--interval needs seconds"),
    (["--interval", "nan"], "--interval needs seconds"),
    (["--interval", "0"], "would spin forever"),
    (["--count", "0"], "--count needs a whole number"),
    (["--count", "2x"], "--count needs a whole number"),
    (["--format", "xml"], "invalid choice: 'xml'"),
    (["--device", ""], "--device needs a name"),
    (["--alert", "out_of_buffer"], "bad --alert"),
    (["--alert", "out_of_buffer>>0"], "bad --alert"),
    (["--alert", "out_of_buffer>zero"], "bad --alert"),
    (["--alert", "out_of_buffer>inf"], "bad --alert"),
    (["--alert", "no_such_counter>0", "--count", "1"], "not a canonical name"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_bad_arguments_exit_2_with_a_message(tree, args, msg):
    r = run(["--root", tree.root] + args, timeout=30)
    assert r.returncode == EXIT_USAGE, r.stderr
    assert msg in r.stderr
    assert r.stdout == ""


def test_root_that_is_not_a_directory_is_a_usage_error(tmp_path):
    r = run(["--root", str(tmp_path / "nope"), "--count", "1"])
    assert r.returncode == EXIT_USAGE
    assert "is not a directory" in r.stderr


def test_no_rdma_devices_exit_4(tmp_path):
    r = run(["--root", str(tmp_path), "--count", "1", "--interval", "0"])
    assert r.returncode == EXIT_NO_DEVICE
    assert "no RDMA devices found under" in r.stderr
    assert "load an RDMA driver" in r.stderr
    tree = FakeTree(tmp_path)
    tree.add_rxe("rxe0")
    r = run(["--root", tree.root, "--count", "1", "--interval", "0", "--device", "mlx5_*"])
    assert r.returncode == EXIT_NO_DEVICE
    assert "matching 'mlx5_*'" in r.stderr


def test_unplugged_device_is_reported_gone(tree, procs):
    tree.add_rxe("rxe1")
    p = procs(["--root", tree.root, "--format", "json", "--count", "2", "--interval", "1"])
    json.loads(read_line(p.stdout))
    tree.unplug("rxe1")
    states = {x["device"]: x["state"] for x in json.loads(read_line(p.stdout))["ports"]}
    assert states == {"rxe0": "present", "rxe1": "gone"}
    assert p.wait(timeout=60) == EXIT_OK


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_it_with_status_0(tree, procs, sig):
    p = procs(["--root", tree.root, "--format", "json", "--interval", "0.2"])
    read_line(p.stdout)
    p.send_signal(sig)
    assert p.wait(timeout=60) == EXIT_OK
