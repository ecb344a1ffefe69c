# SPDX-License-Identifier: MIT
"""Serving one URI with N member contexts on N threads: tern.Group."""
import atexit
import weakref

from . import _tern
from .service import _KIND_CODE, PROGRESS, _adapter, _session_opts, describe

#: the most members a group may have (TERN_GROUP_MAX)
GROUP_MAX = _tern.GROUP_MAX

# Groups not closed yet: closed at exit, before the interpreter goes, so no
# member thread asks for the GIL of an interpreter that is finalizing.
_open = weakref.WeakSet()


@atexit.register
def _close_all():
    for g in list(_open):
        g.close()


class Group:
    """``members`` contexts, each on a thread tern starts, serving ``uri``.

    Accepted sessions are spread round-robin over the members still alive,
    and each session stays on its member for its whole life.  Methods are
    registered once for the group.  Python handlers run on the members'
    threads and take the GIL for their duration, so they run one at a time;
    what runs in parallel is each member's I/O and framing, and handlers
    written in C (``register_c``), which never take the GIL.

    A Python handler gets a memoryview of a copy of the request (it may
    keep it), an inplace one a memoryview of a bytearray of the slot's room
    for its reply, copied into the slot after; the group serves ``raw``,
    ``inplace`` and ``oneway`` methods (a ``tern.Server`` serves deferred
    and batch ones too).  Set up (``register_c``) before
    ``start()``; ``stop()`` stops the members (their sessions close, so
    their clients' calls fail), ``close()`` frees everything and may be
    called any number of times, from any thread but a handler's.
    """

    def __init__(self, uri, service=None, *, members, progress="event", slot_size=None,
                 slot_count=None, start=True):
        if progress not in PROGRESS:
            raise ValueError(f"progress must be one of {', '.join(PROGRESS)}")
        if isinstance(members, bool) or not isinstance(members, int):
            raise TypeError(f"members must be an int, not {type(members).__name__}")
        if not isinstance(uri, str):
            raise TypeError(f"uri must be a str, not {type(uri).__name__}")
        self._g = _tern.Group(members, PROGRESS[progress])
        _open.add(self)
        self.services = []
        self._opts = _session_opts(slot_size, slot_count, None)
        self._uri = uri
        self.uri = None
        try:
            services = [] if service is None else \
                service if isinstance(service, (list, tuple)) else [service]
            for svc in services:
                self._add(svc)
            if start:
                self.start()
        except BaseException:
            self.close()
            raise

    def _add(self, svc):
        spec, bindings = describe(svc)
        obj = svc() if isinstance(svc, type) else svc
        for rpc, (attr, kind, _batch) in bindings.items():
            ms = spec.methods[rpc]
            if kind not in ("raw", "inplace", "oneway"):
                raise ValueError(f"{ms.service}.{ms.name} is a {kind} method: a Group "
                                 f"serves raw, inplace and oneway Python methods "
                                 f"(tern.Server serves every kind)")
            self._g.register(ms.id, _KIND_CODE[kind], _adapter(getattr(obj, attr), kind, ms))
        self._g.service_register(*spec.ref)
        self.services.append(spec)

    def register_c(self, method_id, fn, user=0):
        """Serve ``method_id`` with a C ``tern_inplace_handler`` at address
        ``fn`` (``ctypes.cast(lib.handler, ctypes.c_void_p).value``), called
        with ``user`` on the members' threads, without the GIL.  The library
        must stay loaded while the group lives.  Before start()."""
        self._g.register_c(method_id, fn, user)

    def start(self):
        """Listen on the URI and start the members' threads; returns the URI
        to connect to (port 0 replaced by the real one), also ``self.uri``."""
        if self.uri is None:
            self.uri = self._g.listen(self._uri, self._opts)
        self._g.start()
        return self.uri

    def stop(self, member=None):
        """Stop every member (or one, by index): its sessions close and new
        sessions go to the members still alive (none left: refused).
        Thread-safe, also from a handler."""
        self._g.stop(-1 if member is None else member)

    def close(self):
        """Stop every member, wait for their threads, free the group."""
        self._g.close()
        _open.discard(self)

    @property
    def members(self):
        """How many member contexts."""
        return self._g.members

    @property
    def accepted(self):
        """Sessions each member accepted so far: a tuple, one count per member."""
        return self._g.accepted

    @property
    def ended(self):
        """Sessions each member saw end (the peer closed or failed)."""
        return self._g.ended

    @property
    def alive(self):
        """Which members still run: a tuple of bools."""
        return self._g.alive

    @property
    def refused(self):
        """Connections a member refused at the handshake (schema, service)."""
        return self._g.refused

    @property
    def closed(self):
        return self._g.closed

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
