# SPDX-License-Identifier: MIT
"""tern.RnrMonitor on fake sysfs trees: mlx5-like and rxe-like layouts."""
import errno
import os
import threading

import pytest

from rnr_support import FakeTree

from tern import RnrMonitor
from tern import rnr
from tern.rnr import CANONICAL, CounterReadError


@pytest.fixture
def tree(tmp_path):
    return FakeTree(tmp_path)


@pytest.fixture
def both(tree):
    tree.add_rxe("rxe0", 5)
    tree.add_mlx5("mlx5_0", 9)
    return tree


def test_discovers_ports_of_mlx5_and_rxe_layouts(both):
    with RnrMonitor(both.root) as mon:
        snap = mon.snapshot()
    ports = {(p.device, p.port): p for p in snap.ports}
    assert list(ports) == [("mlx5_0", 0), ("mlx5_0", 1), ("rxe0", 1)]
    assert ports[("rxe0", 1)].lifespan_ms == 12
    assert ports[("mlx5_0", 1)].lifespan_ms == 10
    assert all(p.state == "present" for p in snap.ports)
    assert "lifespan" not in {c.raw for c in snap.values()}
    assert snap[("mlx5_0", 0, "rx_icrc_encapsulated")].value == 9
    assert snap[("mlx5_0", 1, "counters/port_xmit_data")].value == 7
    assert snap[("mlx5_0", 1, "counters/port_xmit_data")].group == "counters"


def test_driver_names_map_onto_canonical_names(both):
    snap = RnrMonitor(both.root).snapshot()
    want = {
        ("rxe0", "responder_out_of_buffer"): "send_rnr_err",
        ("rxe0", "requester_rnr_nak"): "rcvd_rnr_err",
        ("rxe0", "rnr_retries_exceeded"): "retry_rnr_exceeded_err",
        ("rxe0", "transport_retries_exceeded"): "retry_exceeded_err",
        ("mlx5_0", "responder_out_of_buffer"): "out_of_buffer",
        ("mlx5_0", "requester_rnr_nak"): "rnr_nak_retry_err",
        ("mlx5_0", "transport_retries_exceeded"): "local_ack_timeout_err",
        ("rxe0", "requester_retries"): "completer_retry_err",
        ("rxe0", "requester_sequence_nak"): "rcvd_seq_err",
        ("rxe0", "responder_duplicate_request"): "duplicate_request",
        ("rxe0", "responder_out_of_sequence"): "out_of_seq_request",
        ("mlx5_0", "requester_sequence_nak"): "packet_seq_err",
        ("mlx5_0", "responder_duplicate_request"): "duplicate_request",
        ("mlx5_0", "responder_out_of_sequence"): "out_of_sequence",
    }
    for (dev, name), raw in want.items():
        c = snap[(dev, 1, name)]
        assert (c.raw, c.canonical, c.name, c.key) == (raw, name, name, (dev, 1, name))
    assert ("mlx5_0", 1, "rnr_retries_exceeded") not in snap  # no such mlx5 file here
    assert ("mlx5_0", 1, "requester_retries") not in snap  # mlx5 has no such counter
    assert snap[("rxe0", 1, "sent_pkts")].canonical is None


def test_canonical_constants_and_table():
    assert CANONICAL == ("responder_out_of_buffer", "requester_rnr_nak",
                         "rnr_retries_exceeded", "transport_retries_exceeded",
                         "requester_retries", "requester_sequence_nak",
                         "responder_duplicate_request", "responder_out_of_sequence")
    assert rnr.RESPONDER_OUT_OF_BUFFER == "responder_out_of_buffer"
    assert rnr.REQUESTER_RETRIES == "requester_retries"
    assert rnr.canonical_name("completer_retry_err") == rnr.REQUESTER_RETRIES
    assert rnr.canonical_name("send_rnr_err") == rnr.RESPONDER_OUT_OF_BUFFER
    assert rnr.canonical_name("out_of_buffer") == rnr.RESPONDER_OUT_OF_BUFFER
    assert rnr.canonical_name("sent_pkts") is None
    assert rnr.is_canonical("requester_rnr_nak")
    assert not rnr.is_canonical("rcvd_rnr_err")


def test_canonical_counters_come_first_in_order(both):
    snap = RnrMonitor(both.root).snapshot()
    rxe = snap.select("rxe0", 1)[0]
    n = len(CANONICAL)  # rxe has all of them
    assert list(rxe.counters)[:n] == list(CANONICAL)
    assert list(rxe.counters)[n:] == sorted(list(rxe.counters)[n:])


def test_raw_names_and_other_drivers_names_are_aliases(both):
    snap = RnrMonitor(both.root).snapshot()
    c = snap[("rxe0", 1, "responder_out_of_buffer")]
    assert snap[("rxe0", 1, "send_rnr_err")] is c
    assert snap[("rxe0", 1, "out_of_buffer")] is c  # mlx5's name, rxe's counter
    assert snap[("rxe0", 1, "hw_counters/send_rnr_err")] is c
    for key in [("rxe0", 1, "nope"), ("rxe0", 2, "send_rnr_err"), ("eth0", 1, "sent_pkts"),
                ("rxe0", 1), "rxe0", ("rxe0", 1, 7)]:
        with pytest.raises(KeyError):
            snap[key]


def test_delta_counts_from_the_baseline(both):
    mon = RnrMonitor(both.root)
    both.set("rxe0", "send_rnr_err", 8)
    both.set("mlx5_0", "out_of_buffer", 10)
    assert mon.delta("responder_out_of_buffer", "rxe0", 1) == 3
    assert mon.delta("out_of_buffer", "mlx5_0") == 1
    assert mon.delta("out_of_buffer") == 4  # summed over every port
    deltas = mon.delta()
    assert deltas[("rxe0", 1, "responder_out_of_buffer")] == 3
    assert deltas[("rxe0", 1, "sent_pkts")] == 0
    assert set(mon.delta(device="rxe0")) == {k for k in deltas if k.device == "rxe0"}
    snap = mon.snapshot()
    c = snap[("rxe0", 1, "send_rnr_err")]
    assert (c.value, c.total, c.delta, c.resets) == (8, 3, 3, 0)


def test_rebaseline_starts_deltas_again(both):
    mon = RnrMonitor(both.root)
    both.set("rxe0", "send_rnr_err", 8)
    assert mon.delta("send_rnr_err") == 3
    mon.rebaseline()
    assert mon.delta("send_rnr_err") == 0
    both.set("rxe0", "send_rnr_err", 10)
    assert mon.delta("send_rnr_err") == 2
    assert mon.snapshot()[("rxe0", 1, "send_rnr_err")].total == 5


def test_rate_between_two_snapshots_uses_their_times(both):
    mon = RnrMonitor(both.root)
    a = mon.snapshot()
    both.set("rxe0", "rcvd_rnr_err", 1005)
    b = mon.snapshot()
    seconds = (b.time_ns - a.time_ns) / 1e9
    assert b.rate("requester_rnr_nak", a, "rxe0", 1) == pytest.approx(1000 / seconds)
    rates = b.rates(a)
    assert rates[("rxe0", 1, "requester_rnr_nak")] == pytest.approx(1000 / seconds)
    assert rates[("rxe0", 1, "sent_pkts")] == 0.0
    assert ("mlx5_0", 1, "counters/link_downed") not in rates  # garbage: no rate
    with pytest.raises(ValueError):
        a.rate("requester_rnr_nak", b)  # not in time order
    with pytest.raises(ValueError):
        b.rate("requester_rnr_nak", RnrMonitor(both.root).snapshot())  # another monitor
    with pytest.raises(TypeError):
        b.rates(None)


def test_monitor_rates_since_the_previous_reading(both):
    mon = RnrMonitor(both.root)
    both.set("rxe0", "rcvd_rnr_err", 20)
    assert mon.rates("rcvd_rnr_err") > 0
    assert mon.rates("rcvd_rnr_err") == 0.0  # nothing new since the last reading
    both.set("rxe0", "rcvd_rnr_err", 30)
    rates = mon.rates(device="rxe0")
    assert rates[("rxe0", 1, "requester_rnr_nak")] > 0
    assert {k.device for k in rates} == {"rxe0"}


def test_counter_reset_is_not_a_huge_delta(both):
    mon = RnrMonitor(both.root)
    both.set("rxe0", "send_rnr_err", 100)  # +95
    a = mon.snapshot()
    both.set("rxe0", "send_rnr_err", 3)  # reset, then 3 more
    b = mon.snapshot()
    c = b[("rxe0", 1, "responder_out_of_buffer")]
    assert (c.value, c.delta, c.resets) == (3, 98, 1)
    assert b.rate("responder_out_of_buffer", a, "rxe0", 1) == pytest.approx(
        3 / ((b.time_ns - a.time_ns) / 1e9))


def test_missing_file_is_reported_per_counter(both):
    mon = RnrMonitor(both.root)
    both.set("rxe0", "send_rnr_err", 7)
    mon.snapshot()
    both.remove("rxe0", "send_rnr_err")
    snap = mon.snapshot()
    c = snap[("rxe0", 1, "responder_out_of_buffer")]
    assert (c.status, c.errno, c.value, c.delta) == ("missing", errno.ENOENT, None, 2)
    assert not c.ok
    assert c.error.startswith("missing: ")
    assert set(snap.errors) == {("rxe0", 1, "responder_out_of_buffer"),
                                ("mlx5_0", 1, "counters/link_downed")}
    assert snap[("rxe0", 1, "sent_pkts")].ok  # the others still read
    with pytest.raises(CounterReadError) as e:
        snap.delta("responder_out_of_buffer", "rxe0", 1)
    assert (e.value.status, e.value.errno, e.value.known) == ("missing", errno.ENODATA, 2)
    assert isinstance(e.value, OSError)
    both.set("rxe0", "send_rnr_err", 9)
    assert mon.delta("responder_out_of_buffer", "rxe0", 1) == 4


@pytest.mark.parametrize("content", ["N/A (no PMA)\n", "", "-1\n", "0x10\n",
                                     "99999999999999999999999\n"])
def test_garbage_is_reported_per_counter(both, content):
    mon = RnrMonitor(both.root)
    both.set("rxe0", "rcvd_rnr_err", content)
    snap = mon.snapshot()
    c = snap[("rxe0", 1, "requester_rnr_nak")]
    assert (c.status, c.value, c.error) == ("garbage", None, "garbage: not a decimal u64")
    with pytest.raises(CounterReadError) as e:
        mon.delta("requester_rnr_nak")
    assert (e.value.status, e.value.errno, e.value.known) == ("garbage", errno.EBADMSG, 0)
    assert "requester_rnr_nak" in str(e.value)


def test_unknown_counter_is_a_key_error(both):
    mon = RnrMonitor(both.root)
    with pytest.raises(KeyError, match="no_such"):
        mon.delta("no_such")
    with pytest.raises(KeyError, match="rxe0 port 2"):
        mon.delta("send_rnr_err", "rxe0", 2)
    with pytest.raises(KeyError):
        mon.rates("no_such")


def test_bad_lookup_arguments(both):
    mon = RnrMonitor(both.root)
    with pytest.raises(TypeError):
        mon.delta(7)
    with pytest.raises(ValueError):
        mon.delta("")
    with pytest.raises(TypeError):
        mon.delta("send_rnr_err", device=0)
    with pytest.raises(TypeError):
        mon.delta("send_rnr_err", "rxe0", "1")


def test_device_that_appears_gets_a_baseline_at_first_sight(tree):
    tree.add_rxe("rxe0", 0)
    mon = RnrMonitor(tree.root)
    tree.add_rxe("rxe1", 50)
    snap = mon.snapshot()
    states = {p.device: p.state for p in snap.ports}
    assert states == {"rxe0": "present", "rxe1": "new"}
    assert snap[("rxe1", 1, "send_rnr_err")].delta == 0
    tree.set("rxe1", "send_rnr_err", 52)
    assert mon.delta("send_rnr_err", "rxe1", 1) == 2
    assert {p.state for p in mon.snapshot().ports} == {"present"}


def test_device_that_disappears_is_reported_gone_once(tree):
    tree.add_rxe("rxe0", 0)
    tree.add_rxe("rxe1", 0)
    mon = RnrMonitor(tree.root)
    tree.set("rxe1", "send_rnr_err", 4)
    mon.snapshot()
    tree.unplug("rxe1")
    snap = mon.snapshot()
    gone = snap.select("rxe1")[0]
    assert gone.state == "gone"
    assert {c.status for c in gone.counters.values()} == {"missing"}
    assert snap[("rxe1", 1, "send_rnr_err")].delta == 4  # kept for this last report
    assert [p.device for p in mon.snapshot().ports] == ["rxe0"]
    tree.replug("rxe1")
    back = mon.snapshot()
    assert back.select("rxe1")[0].state == "new"
    assert back[("rxe1", 1, "send_rnr_err")].delta == 0


def test_device_filter_is_a_glob_or_a_list_of_globs(tree):
    tree.add_rxe("rxe0")
    tree.add_rxe("rxe1")
    tree.add_mlx5("mlx5_0")
    tree.add_mlx5("mlx5_1")

    def devices(filt):
        return sorted({p.device for p in RnrMonitor(tree.root, filt).snapshot().ports})

    assert devices(None) == ["mlx5_0", "mlx5_1", "rxe0", "rxe1"]
    assert devices("rxe*") == ["rxe0", "rxe1"]
    assert devices(["mlx5_1"]) == ["mlx5_1"]
    assert devices(["rxe1", "mlx5_*"]) == ["mlx5_0", "mlx5_1", "rxe1"]
    assert devices(("rxe0", "nope")) == ["rxe0"]
    assert devices("nope*") == []
    mon = RnrMonitor(tree.root, ["rxe1", "mlx5_0"])
    tree.set("rxe0", "send_rnr_err", 100)  # filtered out: not summed
    tree.set("rxe1", "send_rnr_err", 1)
    assert mon.delta("out_of_buffer") == 1
    assert {k.device for k in mon.delta()} == {"rxe1", "mlx5_0"}


@pytest.mark.parametrize("bad, exc", [
    (7, TypeError), (b"rxe0", TypeError), ({"rxe0": 1}, TypeError), ([7], TypeError),
    ("", ValueError), ([], ValueError), (["rxe0", ""], ValueError),
])
def test_bad_device_filter_is_refused(both, bad, exc):
    with pytest.raises(exc, match="device"):
        RnrMonitor(both.root, bad)


def test_bad_root_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        RnrMonitor(tmp_path / "nope")
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError, match="not a directory"):
        RnrMonitor(tmp_path / "file")
    with pytest.raises(TypeError, match="root is a path"):
        RnrMonitor(42)
    with pytest.raises(ValueError):
        RnrMonitor("")


def test_root_without_rdma_has_no_ports(tmp_path):
    with RnrMonitor(tmp_path) as mon:  # pathlib works as well as str
        snap = mon.snapshot()
    assert snap.ports == ()
    assert len(snap) == 0


def test_close_and_context_manager_release_the_monitor(both):
    with RnrMonitor(both.root) as mon:
        both.set("rxe0", "send_rnr_err", 6)
        snap = mon.snapshot()
        assert not mon.closed
    assert mon.closed
    for call in (mon.snapshot, mon.rebaseline, mon.delta, mon.rates):
        with pytest.raises(ValueError, match="closed"):
            call()
    mon.close()  # idempotent
    assert snap.delta("send_rnr_err") == 1  # snapshots outlive their monitor
    assert "closed" in repr(mon)


def test_threads_may_share_a_monitor(both):
    mon = RnrMonitor(both.root)
    both.set("rxe0", "send_rnr_err", 25)
    seen, errors = [], []

    def reader():
        try:
            for _ in range(20):
                seen.append(mon.delta("send_rnr_err", "rxe0", 1))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert seen == [20] * 80


def test_real_sys_does_not_fail_without_rdma():
    if not os.path.isdir("/sys"):
        pytest.skip("no /sys")
    with RnrMonitor() as mon:
        assert mon.root == "/sys"
        mon.snapshot()
