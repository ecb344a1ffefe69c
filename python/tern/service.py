# SPDX-License-Identifier: MIT
"""Declaring services, serving them and calling them."""
import errno
import logging
import operator
import time

from . import _tern, tern_gen
from .errors import BadRequest, MessageTooLarge, RemoteMessageTooLarge, error_class
from .idl import Idl, Message, ServiceSpec, _spec_from_schema

log = logging.getLogger("tern")

PROGRESS = {"busy": _tern.PROGRESS_BUSY, "event": _tern.PROGRESS_EVENT,
            "adaptive": _tern.PROGRESS_ADAPTIVE}
_KIND_CODE = {"raw": 0, "inplace": 1, "deferred": 2, "oneway": 3, "batch": 4,
              "oneway-batch": 5}


class _Mark:
    def __init__(self, kind, batch, name):
        self.kind, self.batch, self.name = kind, batch, name


def method(fn=None, *, raw=False, inplace=False, deferred=False, oneway=False, batch=None,
           name=None):
    """Mark a method of a service class as an RPC method.

    ``@tern.method`` alone takes the kind from the IDL (raw without one);
    ``raw=True``, ``inplace=True``, ``deferred=True``, ``oneway=True`` and
    ``batch=(max, wait_us)`` (with ``oneway=True`` for a one-way batch) say
    it, and must then agree with the IDL.  ``name`` is the RPC name when it
    differs from the Python one.
    """
    flags = [k for k, on in (("raw", raw), ("inplace", inplace), ("deferred", deferred))
             if on]
    if len(flags) > 1:
        raise TypeError(f"tern.method: {' and '.join(flags)} exclude each other")
    if batch is not None:
        if flags and flags != ["raw"]:
            raise TypeError(f"tern.method: a {flags[0]} method cannot be batched "
                            "(batch methods are raw or oneway)")
        try:
            bmax, wait_us = batch
        except (TypeError, ValueError):
            raise TypeError("tern.method: batch=(max, wait_us)") from None
        if not (isinstance(bmax, int) and 1 <= bmax <= 65536 and isinstance(wait_us, int)
                and 0 <= wait_us < 2**32):
            raise ValueError("tern.method: batch max must be 1..65536 and wait_us >= 0")
        kind = "oneway-batch" if oneway else "batch"
        batch = (bmax, wait_us)
    elif oneway:
        if flags:
            raise TypeError(f"tern.method: a one-way method cannot be {flags[0]}")
        kind = "oneway"
    else:
        kind = flags[0] if flags else None

    def mark(f):
        f.__tern_method__ = _Mark(kind, batch, name or f.__name__)
        return f
    return mark(fn) if fn is not None else mark


def _marks(cls):
    out = {}
    for attr in dir(cls):
        f = getattr(cls, attr, None)
        m = getattr(f, "__tern_method__", None)
        if isinstance(m, _Mark):
            out[m.name] = (attr, m)
    return out


def _synthesize(name, marks):
    """A service declared in Python only: the .tern file it stands for."""
    lines = [f"service {name} {{"]
    for rpc, (_, m) in sorted(marks.items()):
        kind = m.kind or "raw"
        if kind in ("oneway", "oneway-batch"):
            decl = f"  rpc {rpc}(bytes) oneway"
        else:
            decl = f"  rpc {rpc}(bytes) returns (bytes)"
            if kind != "batch":
                decl += f" {kind}"
        if m.batch:
            decl += f" batch(max={m.batch[0]}, wait_us={m.batch[1]})"
        lines.append(decl + ";")
    lines.append("}")
    return "\n".join(lines) + "\n"


def describe(service):
    """The ServiceSpec of a service: an IDL service class, a class (or an
    instance of one) with @tern.method methods, or an Idl with one service.

    Returns (spec, bindings) where bindings maps each implemented RPC name
    to (python attribute, kind, batch).
    """
    if isinstance(service, Idl):
        if len(service.services) != 1:
            raise ValueError(f"{service!r} declares {len(service.services)} services; "
                             "pass one of them (idl.Name)")
        service = next(iter(service.services.values()))
    if isinstance(service, ServiceSpec):
        return service, {}
    cls = service if isinstance(service, type) else type(service)
    spec = getattr(cls, "__tern_service__", None)
    marks = _marks(cls)
    if spec is None:
        if not marks:
            raise TypeError(f"{cls.__name__} has no @tern.method methods and no IDL service")
        name = getattr(cls, "service_name", cls.__name__)
        text = _synthesize(name, marks)
        schema = tern_gen.parse(text, f"<{cls.__name__}>")
        spec = _spec_from_schema(schema, name, {})
    bindings = {}
    for rpc, (attr, m) in marks.items():
        ms = spec.methods.get(rpc)
        if ms is None:
            raise TypeError(f"{cls.__name__}.{attr}: service {spec.name} has no method {rpc!r}")
        if m.kind is not None and m.kind != ms.kind:
            raise TypeError(f"{cls.__name__}.{attr}: declared {m.kind}, but {spec.name}.{rpc} "
                            f"is {ms.kind} in the IDL")
        bindings[rpc] = (attr, ms.kind, m.batch or ms.batch)
    return spec, bindings


def _release(mv):
    """Release a memoryview we sliced off a slot; one the handler exported
    from (a numpy array) stays, and holds the reply until it goes."""
    try:
        mv.release()
    except BufferError:
        pass


def _commit_length(cls, message, length, what):
    """The bytes a commit() sends, as C's commit functions count them.

    ``cls`` None (bytes): ``length`` itself.  A message type: its size
    (``length`` None).  One with trailing bytes: its size plus ``length``,
    the tail's (None: what ``message.data =`` set, or none).
    """
    if cls is None:
        if length is None:
            raise TypeError(f"commit(length): the {what} is bytes")
        return length
    if cls._tail is None:
        if length not in (None, cls._size):
            raise ValueError(f"commit(): a {cls.__name__} is {cls._size} bytes")
        return cls._size
    if length is None:
        length = (message._tail_len if message is not None else None) or 0
    return cls._size + operator.index(length)


def _payload(x):
    """Bytes to send for a reply or request: a Message's buffer, bytes-likes as they are."""
    if isinstance(x, Message):
        return x._buf
    return x


# ---- serving -----------------------------------------------------------------------

class Deferred:
    """The answer to a deferred call, handed to its handler with the request.

    The request (and any view of it) stays valid until one of reply(),
    commit() or error() answers the call; then its views are released.
    """

    __slots__ = ("_req", "_resp", "_name", "_out")

    def __init__(self, req, resp, name):
        self._req = req
        self._resp = resp
        self._name = name
        self._out = None

    def _drop_out(self):
        if self._out is not None:
            buf = self._out._buf
            self._out = None
            _release(buf)

    def reply(self, data=None):
        """Answer with these bytes or this message (copied once into the slot)."""
        self._req.reply(_payload(data) if data is not None else None)

    def acquire(self):
        """The reply's place in the send slot: a writable memoryview, or a
        message of the reply type written in place (with trailing bytes: a
        message over all the room, its tail written through it)."""
        mv = self._req.acquire()
        if self._resp is None:
            return mv
        if self._out is None:
            self._out = _reply_view(self._resp, self._name, mv)
        return self._out

    def commit(self, length=None):
        """Send what acquire() gave, as C's reply_commit does: ``length``
        bytes of an untyped reply; nothing for a typed one (its size); for
        one with trailing bytes, the tail's length (None: what was set
        through the message, or none)."""
        length = _commit_length(self._resp, self._out, length, "reply")
        self._drop_out()
        self._req.commit(length)

    def error(self, code, message=None):
        """Fail the call with an errno (or an RpcError) and a short message."""
        if isinstance(code, BaseException):
            message = message or getattr(code, "message", None) or str(code)
            code = getattr(code, "code", None) or getattr(code, "errno", None) or \
                _tern.EREMOTE
        self._drop_out()
        self._req.error(int(code), message)

    @property
    def answered(self):
        return self._req.answered


def _request_view(ms):
    """The request as a handler gets it: the slot's memoryview, or a message
    over it, its length checked as C's generated skeleton does (EBADMSG)."""
    req = ms.req
    if req is None:
        return lambda mv: mv
    name = f"{ms.service}.{ms.name}"
    tail = req._tail is not None

    def view(mv):
        n = mv.nbytes
        if n >= req._size:
            return req.view(mv)  # a newer peer's longer message: read as far as ours goes
        if n in req._ends:
            return req.from_peer(mv)  # an older peer's: the fields it lacks read as zero
        more = "" if tail else " (or fewer, ending at a field)"
        raise BadRequest(-errno.EBADMSG, f"{name}: request of {n} bytes, expected "
                         f"{'at least ' if tail else ''}{req._size}{more}")
    return view


def _reply_view(resp, name, out):
    """A message of type ``resp`` over the reply's room ``out``: all of it
    when the reply has trailing bytes, else exactly its size (a slice of
    ``out``, which the caller releases: the message's ``_buf``)."""
    cap = out.nbytes
    if cap < resp._size:
        raise RemoteMessageTooLarge(f"{name}: reply of {resp._size} bytes, the slot holds {cap}")
    return resp.view(out[:] if resp._tail is not None else out[:resp._size])


def _status(r, what):
    """A handler's return as C's: an int (None is 0)."""
    if r is None:
        return 0
    try:
        return operator.index(r)
    except TypeError:
        raise TypeError(f"{what} returned {type(r).__name__}, not an int") from None


def _inplace(fn, ms):
    """An inplace handler called as C's generated skeleton calls it.

    Untyped reply: fn(req, out) with ``out`` the slot's memoryview, returns
    the reply's length or a negative errno.  Typed reply: ``out`` is a
    message written in the slot; fn returns 0 (or None) or a negative
    errno.  Typed reply with trailing bytes: ``out`` spans the whole room,
    its tail written through it (``out.data[:n] = ...`` or ``out.data =
    ...``); fn returns the tail's length (None: what ``out.data =`` set, or
    none) or a negative errno.
    """
    reqv, resp = _request_view(ms), ms.resp
    name = f"{ms.service}.{ms.name}"
    if resp is None:
        return lambda mv, out: fn(reqv(mv), out)
    size = resp._size

    def inplace(mv, out):
        m = _reply_view(resp, name, out)
        try:
            r = fn(reqv(mv), m)
            tail = m._tail_len
        finally:
            _release(m._buf)
        r = _status(r if r is not None or resp._tail is None else tail, f"{name}'s handler")
        if r < 0 or resp._tail is None:
            return r if r < 0 else size
        if r > out.nbytes - size:
            raise RemoteMessageTooLarge(f"{name}: reply of {size + r} bytes, the slot holds "
                                        f"{out.nbytes}")
        return size + r
    return inplace


def _adapter(fn, kind, ms):
    """The callable the C layer calls, wrapping the user's handler."""
    reqv = _request_view(ms)
    if kind == "raw":
        return lambda mv: _payload(fn(reqv(mv)))
    if kind == "inplace":
        return _inplace(fn, ms)
    if kind == "deferred":
        name = f"{ms.service}.{ms.name}"

        def deferred(mv, q):
            fn(reqv(mv), Deferred(q, ms.resp, name))
        return deferred
    if kind == "oneway":
        return lambda mv: fn(reqv(mv))
    if kind == "batch":
        def batch(b):
            r = fn(b)
            return None if r is None else [_payload(x) for x in r]
        return batch
    return fn  # oneway-batch: the Batch itself


class _Metrics:
    """Per-method metrics of this end's context (docs/metrics.md).

    Like everything else on a context, call these on the thread that runs
    it: the caller's for a Proxy, the serving thread for a Server (from a
    handler, or through ``call_soon``).
    """

    def metrics_enable(self, on=True):
        """Record per-method counts, errors, bytes and latencies (on by
        default; ``metrics_enable(False)`` stops them, or TERN_METRICS=0 in
        the environment before the context is made)."""
        self._ctx.metrics_enable(bool(on))

    def metrics(self):
        """The metrics and the sessions' counters, in Prometheus text format."""
        return self._ctx.metrics_text()

    def method_stats(self):
        """One dict per method and side (``served``/``issued``), with the
        method's ``name`` ("Service.method") where this end knows it, else
        None (``method`` 0xffffffff: the shared entry of unknown methods)."""
        names = {ms.id: f"{ms.service}.{ms.name}"
                 for spec in self._specs() for ms in spec.methods.values()}
        out = self._ctx.method_stats()
        for d in out:
            d["name"] = names.get(d["method"])
        return out

    def metrics_listen(self, addr="127.0.0.1:0"):
        """Serve GET /metrics (Prometheus text) on this context's loop, at
        ``addr`` ("HOST:PORT", port 0: a free one); returns the port."""
        return self._ctx.metrics_listen(addr)


class Server(_Metrics):
    """A listener serving one or more services, driven by the caller.

    ``poll(timeout)`` runs the loop for up to ``timeout`` seconds (0: one
    turn), ``serve_forever()`` until ``stop()`` or Ctrl-C.  ``uri`` is the
    address to connect to (port 0 replaced by the real one).

    A client refused at the door (another schema, a service not served
    here, a bad handshake) is told why; the server logs it as a warning on
    the ``tern`` logger, counts it in ``refused``, and calls
    ``on_refused(error)`` if given, with the RpcError (``SchemaMismatch``,
    ``HandshakeError``...) whose message names the service and the reason.
    """

    def __init__(self, uri, service, *, progress="busy", slot_size=None, slot_count=None,
                 on_refused=None):
        if progress not in PROGRESS:
            raise ValueError(f"progress must be one of {', '.join(PROGRESS)}")
        services = service if isinstance(service, (list, tuple)) else [service]
        self._ctx = _tern.Context(PROGRESS[progress])
        self._on_refused = on_refused
        self._ctx.on_refused = self._refused
        self.services = []
        try:
            for svc in services:
                spec, bindings = describe(svc)
                obj = svc() if isinstance(svc, type) else svc
                for rpc, (attr, kind, batch) in bindings.items():
                    ms = spec.methods[rpc]
                    fn = _adapter(getattr(obj, attr), kind, ms)
                    self._ctx.register(ms.id, _KIND_CODE[kind], fn,
                                       batch[0] if batch else 0, batch[1] if batch else 0)
                self._ctx.service_register(*spec.ref)
                self.services.append(spec)
            self.uri = self._ctx.listen(uri, {"slot_size": slot_size, "slot_count": slot_count})
        except BaseException:
            self._ctx.close()
            raise

    def _specs(self):
        return self.services

    def _refused(self, status, message):
        log.warning("%s", message)
        if self._on_refused is not None:
            self._on_refused(error_class(status)(status, message))

    @property
    def refused(self):
        """How many connections the listener refused."""
        return self._ctx.refused

    def poll(self, timeout=0):
        """Serve for up to ``timeout`` seconds (None: until stop())."""
        self._ctx.run(timeout)

    def serve_forever(self):
        self._ctx.run(None)

    def stop(self):
        """Make serve_forever() (or a poll) return; from a handler or any thread."""
        self._ctx.stop()

    def call_soon(self, fn):
        """Run ``fn()`` on the thread serving, at its next loop turn.

        Thread-safe: the way for other threads to answer deferred requests
        (a context and its requests belong to the thread that runs it).
        """
        self._ctx.call_soon(fn)

    def close(self):
        self._ctx.close()

    def mem(self):
        """What the server's context holds, in bytes: a dict of tern_ctx_mem()'s
        fields (sessions, slots_registered, slots_shared, slots_shared_resident,
        slots_heap, slots_heap_resident, staging_*, user_*, conn_heap);
        docs/memory.md says what each counts."""
        return self._ctx.mem()

    @property
    def peers_closed(self):
        """How many accepted sessions have ended (the peer closed or went away)."""
        return self._ctx.peers_closed

    @property
    def held_replies(self):
        """Replies waiting for a handler's kept views to be released."""
        return self._ctx.held_replies

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def serve(uri, service, *, progress="busy", ready=None, slot_size=None, slot_count=None,
          on_refused=None):
    """Serve ``service`` on ``uri`` until Ctrl-C (or a handler calls stop()).

    ``ready(uri)``, if given, is called once listening, with the URI to
    connect to.  Ctrl-C closes every session and returns.  Refused clients
    are logged (see Server).
    """
    with Server(uri, service, progress=progress, slot_size=slot_size,
                slot_count=slot_count, on_refused=on_refused) as srv:
        if ready is not None:
            ready(srv.uri)
        try:
            srv.serve_forever()
        except KeyboardInterrupt:
            pass


# ---- calling ------------------------------------------------------------------------


def _session_opts(slot_size, slot_count, cancel_timeout):
    """The session options (struct tern_session_opts) the C layer takes."""
    if cancel_timeout is not None:
        if cancel_timeout <= 0:
            raise ValueError("cancel_timeout must be positive (None: the default, 10 s)")
        cancel_timeout = max(1, round(cancel_timeout * 1000))
    return {"slot_size": slot_size, "slot_count": slot_count,
            "cancel_timeout_ms": cancel_timeout}


class _Caller:
    __slots__ = ("_p", "_m", "__doc__")

    def __init__(self, proxy, ms):
        self._p = proxy
        self._m = ms
        self.__doc__ = f"{ms.service}.{ms.name} ({ms.kind})"

    def __call__(self, *args, _timeout=None, _reply_buf=None, **fields):
        """Call with a request (a message, its fields as keywords, or bytes).

        ``_timeout`` overrides the proxy's deadline.  ``_reply_buf`` (a
        writable buffer: bytearray, memoryview, numpy array) receives the
        reply, of any size up to its own, larger than a slot too; the
        result is then a memoryview of its first bytes (or a message over
        them).  With no copy when the buffer lies in a tern.register()ed
        region, as a large request does.
        """
        m = self._m
        if fields:
            if args or m.req is None:
                raise TypeError(f"{m.service}.{m.name}: keyword arguments build a "
                                "typed request, nothing else")
            data = m.req(**fields)._buf
        elif len(args) == 1:
            data = _payload(args[0])
        elif not args:
            data = m.req()._buf if m.req is not None else None
        else:
            raise TypeError(f"{m.service}.{m.name} takes one request")
        ms = self._p._timeout_ms(_timeout)
        if m.oneway:
            if _reply_buf is not None:
                raise TypeError(f"{m.service}.{m.name} is one-way: no reply")
            self._p.session.send(m.id, data if data is not None else b"", ms)
            return None
        return self._p.session.call(m.id, data, ms, self._decode(), _reply_buf)

    def acquire(self, timeout=None):
        """A send slot to build the request in, with no copy: a SendSlot.

        Waits for a free slot and credit up to ``timeout`` seconds (None:
        the proxy's timeout, or no limit; 0: WouldBlock at once).
        """
        m = self._m
        t = self._p.timeout if timeout is None else timeout
        slot = self._p.session.acquire(m.oneway, t)
        return SendSlot(slot, m, self._p, self._decode())

    def _decode(self):
        resp = self._m.resp
        if resp is None:
            return None
        return resp.from_peer


class SendSlot:
    """A send slot acquired to build a request in (tern_call_acquire()).

    ``message`` is the request written in place, a message of the request
    type over the slot (None when the request is bytes); ``buffer`` is all
    of the slot's room, a writable memoryview (numpy.frombuffer() on it
    makes no copy).  ``commit()`` sends it: a Future, or None for a one-way
    method; ``abort()`` gives the slot back unsent; a ``with`` block aborts
    what it did not commit.  Both are refused (BufferError) while an array
    or memoryview made from the slot lives, and after them the slot's views
    are released.  Until then the proxy's loop does not run: build the
    request, then commit.
    """

    __slots__ = ("_slot", "_m", "_p", "_decode", "message")

    def __init__(self, slot, ms, proxy, decode):
        self._slot = slot
        self._m = ms
        self._p = proxy
        self._decode = decode
        self.message = None
        req = ms.req
        if req is not None:
            mv = slot.buffer
            if mv.nbytes < req._size:
                slot.abort()
                raise MessageTooLarge(-errno.EMSGSIZE, f"a {req.__name__} is {req._size} "
                                      f"bytes, the slot holds {mv.nbytes}")
            self.message = req.view(mv[:] if req._tail is not None else mv[:req._size])

    @property
    def buffer(self):
        return self._slot.buffer

    @property
    def cap(self):
        """The slot's room, in bytes."""
        return self._slot.cap

    @property
    def committed(self):
        """True once committed or aborted."""
        return self._slot.committed

    def _drop_message(self):
        if self.message is not None:
            _release(self.message._buf)

    def commit(self, length=None, *, timeout=None):
        """Send the request: ``length`` bytes of a bytes request; nothing for a
        typed one (its size); for one with trailing bytes, the tail's length
        (None: what ``message.data =`` set, or none).  ``timeout``
        overrides the proxy's deadline.  Returns a Future (None: one-way)."""
        m = self._m
        length = _commit_length(m.req, self.message, length, "request")
        self._drop_message()
        if m.oneway:
            return self._slot.commit(m.id, length)
        return self._slot.commit(m.id, length, self._p._timeout_ms(timeout), self._decode)

    def abort(self):
        """Give the slot back unsent."""
        self._drop_message()
        self._slot.abort()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if not self._slot.committed:
            self.abort()


class Proxy(_Metrics):
    """A connection to a server, with one callable per method of the service.

    A call returns a Future (``wait(timeout)``, ``result(timeout)``); a
    one-way method sends (waiting for a credit if the server holds them all)
    and returns None.  Typed requests are a message or its fields as keyword
    arguments; a typed reply is a message.

    ``cancel_timeout`` (seconds; None: the C default, 10 s) bounds how long
    after a call's deadline the server may hold the call unanswered: a
    call that times out is cancelled, and a server that answers neither
    the call nor its cancel within this closes the session (every call then
    raises ``ConnectionLost``, ``ECONNABORTED``), rather than keep a piece of
    the window for good (session option ``cancel_timeout_ms``).
    """

    def __init__(self, uri, service, *, timeout=None, connect_timeout=10.0, progress="busy",
                 slot_size=None, slot_count=None, check=True, cancel_timeout=None):
        if progress not in PROGRESS:
            raise ValueError(f"progress must be one of {', '.join(PROGRESS)}")
        self.spec, _ = describe(service)
        self.timeout = timeout
        self._ctx = _tern.Context(PROGRESS[progress])
        try:
            self.session = self._ctx.connect(
                uri, [self.spec.ref] if check else None,
                _session_opts(slot_size, slot_count, cancel_timeout),
                int(connect_timeout * 1000))
        except BaseException:
            self._ctx.close()
            raise
        for ms in self.spec.methods.values():
            setattr(self, ms.name, _Caller(self, ms))

    def _specs(self):
        return [self.spec]

    def _timeout_ms(self, timeout):
        timeout = self.timeout if timeout is None else timeout
        return int(timeout * 1000) if timeout else 0

    def drain(self, timeout=None):
        """Wait until the server has consumed every one-way message sent."""
        self.session.drain(int(timeout * 1000) if timeout else 0)

    def poll(self, timeout=0):
        self._ctx.run(timeout)

    def close(self):
        self.session.close()
        self._ctx.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def proxy(uri, service, **kw):
    """Connect to ``uri`` and return a Proxy for ``service`` (see Proxy)."""
    return Proxy(uri, service, **kw)


def wait_all(futures, timeout=None):
    """Wait until every future is done; True if they all are, False on timeout."""
    futures = list(futures)
    by_ctx = {}
    for f in futures:
        by_ctx.setdefault(id(f.context), (f.context, []))[1].append(f)
    if len(by_ctx) == 1:
        ctx, fs = next(iter(by_ctx.values()))
        return ctx.wait(fs, timeout)
    end = None if timeout is None else time.monotonic() + timeout
    while True:
        pending = [(c, [f for f in fs if not f.done()]) for c, fs in by_ctx.values()]
        pending = [(c, fs) for c, fs in pending if fs]
        if not pending:
            return True
        if end is not None and time.monotonic() >= end:
            return False
        for c, fs in pending:
            c.wait(fs, 0.001)
