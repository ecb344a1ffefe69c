# SPDX-License-Identifier: MIT
"""The soft-RNR monitor: RDMA port counters, canonical names, deltas, rates.

When a receive queue runs dry, an RC responder answers with an RNR NAK and
the requester's NIC retries in hardware; only per-port counters in sysfs
show it, named differently by every driver.  RnrMonitor reads them through
the C library (include/tern/rnr.h, wrapped by tern._rnr): the same sysfs
scan, canonical names, reset handling and hot-plug rules as the tern-rnr
command.

    from tern import RnrMonitor

    with RnrMonitor(devices="rxe*") as mon:    # the baseline is taken here
        run_the_workload()
        if mon.delta("out_of_buffer"):         # summed over every port
            print("the workload caused RNR")

A reading is keyed by (device, port, name): name is the canonical name where
the counter has one (see CANONICAL), else the driver's file name, with
"counters/" in front for the IB PMA counters (ports/N/counters/).  Lookups
also take raw names and other drivers' names for a canonical counter, so
"out_of_buffer" finds rxe's send_rnr_err.
"""
import errno
import fnmatch
import os
from collections import namedtuple
from collections.abc import Mapping
from dataclasses import dataclass

from . import _rnr

__all__ = [
    "CANONICAL", "RESPONDER_OUT_OF_BUFFER", "REQUESTER_RNR_NAK", "RNR_RETRIES_EXCEEDED",
    "TRANSPORT_RETRIES_EXCEEDED", "REQUESTER_RETRIES", "REQUESTER_SEQUENCE_NAK",
    "RESPONDER_DUPLICATE_REQUEST", "RESPONDER_OUT_OF_SEQUENCE", "CounterKey", "Counter", "Port", "Snapshot", "RnrMonitor",
    "CounterReadError", "canonical_name", "is_canonical",
]

#: The canonical counter names, in the order a reading lists them: the four
#: RNR ones, then the four retransmission ones (what a lossy link costs).
CANONICAL = _rnr.CANONICAL
(RESPONDER_OUT_OF_BUFFER, REQUESTER_RNR_NAK, RNR_RETRIES_EXCEEDED,
 TRANSPORT_RETRIES_EXCEEDED, REQUESTER_RETRIES, REQUESTER_SEQUENCE_NAK,
 RESPONDER_DUPLICATE_REQUEST, RESPONDER_OUT_OF_SEQUENCE) = CANONICAL

#: canonical_name(raw): the canonical name a driver's counter maps to, or None.
canonical_name = _rnr.canonical_name
#: is_canonical(name): whether name is one of CANONICAL.
is_canonical = _rnr.is_canonical

#: The key of one counter in a reading.
CounterKey = namedtuple("CounterKey", "device port name")

# How the C API reports a counter it could not read (tern_rnr_snapshot_delta).
_STATUS_OF_ERRNO = {errno.ENODATA: "missing", errno.EBADMSG: "garbage"}


class CounterReadError(OSError):
    """A counter that matched but could not be read now.

    status is "missing", "garbage" or "unreadable"; known is the delta (or
    rate) as far as it is known: from the readings that worked.
    """

    def __init__(self, code, name, known):
        self.name = name
        self.status = _STATUS_OF_ERRNO.get(code, "unreadable")
        self.known = known
        super().__init__(code, f"counter {name!r} is {self.status}: {os.strerror(code)}")

    def __str__(self):
        return self.strerror


@dataclass(frozen=True)
class Counter:
    """One counter of one port in one reading."""

    device: str
    port: int
    name: str               # the key: canonical, raw, or "counters/RAW"
    raw: str                # the file name in sysfs
    canonical: str | None   # None when the counter has no canonical name
    group: str              # "hw_counters" or "counters"
    status: str             # "ok", "missing", "garbage" or "unreadable"
    errno: int              # 0, or the errno behind missing / unreadable
    value: int | None       # the value read now; None unless status is "ok"
    total: int              # reset-corrected increase since first seen
    delta: int              # reset-corrected increase since the baseline
    resets: int             # resets seen since the baseline

    @property
    def key(self):
        return CounterKey(self.device, self.port, self.name)

    @property
    def ok(self):
        return self.status == "ok"

    @property
    def error(self):
        """Why the counter could not be read now, or None."""
        if self.ok:
            return None
        if self.status == "garbage":
            return "garbage: not a decimal u64"
        return f"{self.status}: {os.strerror(self.errno or errno.EIO)}"


@dataclass(frozen=True)
class Port:
    """One port of one device in one reading (port 0: device-wide)."""

    device: str
    port: int
    state: str              # "present", "new" (first seen now) or "gone"
    lifespan_ms: int | None  # the kernel's cache time for hw_counters
    counters: dict          # name -> Counter, canonical ones first


def _counter(device, port, t):
    name, raw, canonical, group, status, code, value, total, delta, resets = t
    if group == "counters":
        name = "counters/" + raw
    return Counter(device, port, name, raw, canonical, group, status, code, value, total, delta,
                   resets)


def _check_name(name):
    if not isinstance(name, str):
        raise TypeError(f"a counter name is a str, not {type(name).__name__}")
    if not name:
        raise ValueError("an empty counter name")


class Snapshot(Mapping):
    """One reading: a mapping of CounterKey(device, port, name) to Counter.

    Made by RnrMonitor.snapshot().  Also has ports (a tuple of Port, sorted
    by device and port), time_ns (the monitor's clock) and errors (the
    counters that could not be read now).
    """

    def __init__(self, csnap, keep_device):
        self._c = csnap
        self.time_ns = csnap.time_ns
        ports = []
        for device, port, state, lifespan_ms, counters in csnap.ports():
            if keep_device and not keep_device(device):
                continue
            cs = (_counter(device, port, t) for t in counters)
            ports.append(Port(device, port, state, lifespan_ms, {c.name: c for c in cs}))
        self.ports = tuple(ports)
        self._counters = {c.key: c for p in ports for c in p.counters.values()}

    def __getitem__(self, key):
        try:
            device, port, name = key
        except (TypeError, ValueError):
            raise KeyError(key) from None
        c = self._counters.get(CounterKey(device, port, name))
        if c is None and isinstance(name, str) and any(
                p.device == device and p.port == port for p in self.ports):
            # Not a key as such: a raw name or an alias, as the C lookup has it.
            t = self._c.find(device, port, name)
            if t is not None:
                c = self._counters.get(_counter(device, port, t).key)
        if c is None:
            raise KeyError(key)
        return c

    def __iter__(self):
        return iter(self._counters)

    def __len__(self):
        return len(self._counters)

    def __repr__(self):
        return f"<Snapshot of {len(self.ports)} ports, {len(self)} counters>"

    @property
    def errors(self):
        """{key: Counter} of the counters that could not be read now."""
        return {k: c for k, c in self._counters.items() if not c.ok}

    def select(self, device=None, port=None):
        """The ports of this reading on @device (and @port), None for any."""
        if device is not None and not isinstance(device, str):
            raise TypeError(f"device is a str or None, not {type(device).__name__}")
        if port is not None and (not isinstance(port, int) or isinstance(port, bool)):
            raise TypeError(f"port is an int or None, not {type(port).__name__}")
        return [p for p in self.ports
                if (device is None or p.device == device) and (port is None or p.port == port)]

    def _sum(self, lookup, name, device, port):
        """Add lookup(device, port, name) over the selected ports, as the C sums do."""
        _check_name(name)
        total, code, found = 0, 0, False
        for p in self.select(device, port):
            value, err = lookup(p.device, p.port, name)
            if err == errno.ENOENT:
                continue
            found = True
            total += value
            code = code or err
        if not found:
            where = "any port" if device is None else f"{device}" + (
                "" if port is None else f" port {port}")
            raise KeyError(f"no counter {name!r} on {where}")
        if code:
            raise CounterReadError(code, name, total)
        return total

    def delta(self, name, device=None, port=None):
        """The increase of counter @name since the baseline, summed over the ports.

        name is canonical, raw, "hw_counters/RAW", "counters/RAW" or another
        driver's name for a canonical counter.  KeyError when no selected
        port has it; CounterReadError when one could not be read now.
        """
        return self._sum(self._c.delta, name, device, port)

    def _check_since(self, since):
        if not isinstance(since, Snapshot):
            raise TypeError(f"since is a Snapshot, not {type(since).__name__}")

    def rate(self, name, since, device=None, port=None):
        """Counter @name's increase per second from @since to this reading.

        Resets and ports that came and went between the two are handled as
        the C API does; errors as for delta().
        """
        self._check_since(since)
        return self._sum(lambda d, p, n: self._c.rate(since._c, d, p, n), name, device, port)

    def rates(self, since, device=None, port=None):
        """{key: per second} from @since to this reading, for every counter read now."""
        self._check_since(since)
        out = {}
        for p in self.select(device, port):
            for c in p.counters.values():
                if not c.ok:
                    continue
                per_sec, err = self._c.rate(since._c, c.device, c.port, c.name)
                if err == 0:
                    out[c.key] = per_sec
        return out


def _device_filter(devices):
    """(C fnmatch pattern or None, Python predicate or None) for @devices."""
    if devices is None:
        return None, None
    if isinstance(devices, str):
        patterns = [devices]
    elif isinstance(devices, (list, tuple, set, frozenset)):
        patterns = list(devices)
        if not patterns:
            raise ValueError("devices=[] would match no device; None means all")
    else:
        raise TypeError("devices is a glob such as 'mlx5_*', a list of globs, or None, "
                        f"not {type(devices).__name__}")
    for p in patterns:
        if not isinstance(p, str):
            raise TypeError(f"a device glob is a str, not {type(p).__name__}")
        if not p:
            raise ValueError("an empty device glob matches no device")
    if len(patterns) == 1:
        return patterns[0], None        # the C monitor filters
    # The C monitor takes one pattern: read every device, keep the matches.
    return None, lambda d: any(fnmatch.fnmatchcase(d, p) for p in patterns)


class RnrMonitor:
    """Watch RDMA ports' counters for soft RNR.

    root is the sysfs root ("/sys"; tests point it at a tree they build),
    devices a glob on device names ("mlx5_*"), a list of globs, or None for
    every device.  The baseline is taken here.  Devices that appear later
    are picked up by later readings, each with its baseline at first sight;
    a device that disappears is reported "gone" once.

    Every snapshot(), delta() or rates() takes a fresh reading.  Close the
    monitor (or use it as a context manager) to free it at once; the
    snapshots it made stay usable.  One monitor may be shared by threads:
    readings are serialised, and run without the GIL.
    """

    def __init__(self, root="/sys", devices=None):
        try:
            root = os.fsdecode(os.fspath(root))
        except TypeError:
            raise TypeError(f"root is a path, not {type(root).__name__}") from None
        if not root:
            raise ValueError("root is an empty path")
        if not os.path.exists(root):
            raise FileNotFoundError(errno.ENOENT, "the sysfs root does not exist", root)
        if not os.path.isdir(root):
            raise NotADirectoryError(errno.ENOTDIR, "the sysfs root is not a directory", root)
        pattern, self._keep = _device_filter(devices)
        self.root = root
        self.devices = devices
        self._mon = _rnr.Monitor(root, pattern)
        # The first reading: what rates() measures from until the next one.
        self._last = self.snapshot()

    def __repr__(self):
        state = "closed" if self.closed else f"{len(self._last.ports)} ports"
        return f"<RnrMonitor root={self.root!r} devices={self.devices!r} {state}>"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def closed(self):
        return self._mon.closed

    def close(self):
        """Free the monitor; later calls raise ValueError.  Idempotent."""
        self._mon.close()

    def snapshot(self):
        """A reading now, as a Snapshot."""
        snap = Snapshot(self._mon.read(), self._keep)
        self._last = snap
        return snap

    def rebaseline(self):
        """Read now and make it the baseline: every delta and resets starts from 0."""
        self._mon.rebaseline()

    def delta(self, name=None, device=None, port=None):
        """Increases since the baseline, from a reading now.

        With a name: that counter's delta summed over the ports (of @device,
        @port when given), as Snapshot.delta().  Without: {key: delta} of
        every counter, the ones that could not be read now included (their
        delta is what is known).
        """
        snap = self.snapshot()
        if name is not None:
            return snap.delta(name, device, port)
        return {c.key: c.delta for p in snap.select(device, port) for c in p.counters.values()}

    def rates(self, name=None, device=None, port=None):
        """Increases per second since the previous reading, from a reading now.

        With a name: that counter's rate summed over the ports, as
        Snapshot.rate().  Without: {key: per second} of every counter read
        now.  The previous reading is the last snapshot(), delta() or
        rates() call, or the monitor's creation.
        """
        since = self._last
        snap = self.snapshot()
        if name is not None:
            return snap.rate(name, since, device, port)
        return snap.rates(since, device, port)
