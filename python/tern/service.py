# SPDX-License-Identifier: MIT
"""Declaring services, serving them and calling them."""
import logging
import time

from . import _tern, tern_gen
from .errors import error_class
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

    __slots__ = ("_req", "_resp", "_out")

    def __init__(self, req, resp):
        self._req = req
        self._resp = resp
        self._out = None

    def _drop_out(self):
        if self._out is not None:
            self._out.release()
            self._out = None

    def reply(self, data=None):
        """Answer with these bytes or this message (copied once into the slot)."""
        self._req.reply(_payload(data) if data is not None else None)

    def acquire(self):
        """The reply's place in the send slot: a writable memoryview, or a
        message of the reply type written in place."""
        mv = self._req.acquire()
        if self._resp is not None and self._resp._tail is None:
            if self._out is None:
                self._out = mv[:self._resp._size]
            return self._resp.view(self._out)
        return mv

    def commit(self, length=None):
        """Send what acquire() gave, ``length`` bytes (a typed reply: its size)."""
        if length is None:
            if self._resp is None:
                raise TypeError("commit(length): the reply is bytes")
            length = self._resp._size
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


def _adapter(fn, kind, ms):
    """The callable the C layer calls, wrapping the user's handler."""
    req, resp = ms.req, ms.resp
    if kind == "raw":
        if req is None:
            return lambda mv: _payload(fn(mv))
        return lambda mv: _payload(fn(req.view(mv)))
    if kind == "inplace":
        typed_out = resp is not None and resp._tail is None

        def inplace(mv, out):
            if not typed_out:
                return fn(req.view(mv) if req is not None else mv, out)
            o = out[:resp._size]
            try:
                r = fn(req.view(mv) if req is not None else mv, resp.view(o))
            finally:
                o.release()
            return resp._size if r is None else r
        return inplace
    if kind == "deferred":
        def deferred(mv, q):
            fn(req.view(mv) if req is not None else mv, Deferred(q, resp))
        return deferred
    if kind == "oneway":
        if req is None:
            return fn
        return lambda mv: fn(req.view(mv))
    if kind == "batch":
        def batch(b):
            r = fn(b)
            return None if r is None else [_payload(x) for x in r]
        return batch
    return fn  # oneway-batch: the Batch itself


class Server:
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
                self._ctx.service_register(spec.name, spec.schema_hash)
                self.services.append(spec)
            self.uri = self._ctx.listen(uri, {"slot_size": slot_size, "slot_count": slot_count})
        except BaseException:
            self._ctx.close()
            raise

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

class _Caller:
    __slots__ = ("_p", "_m", "__doc__")

    def __init__(self, proxy, ms):
        self._p = proxy
        self._m = ms
        self.__doc__ = f"{ms.service}.{ms.name} ({ms.kind})"

    def __call__(self, *args, _timeout=None, **fields):
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
        timeout = self._p.timeout if _timeout is None else _timeout
        ms = int(timeout * 1000) if timeout else 0
        if m.oneway:
            self._p.session.send(m.id, data if data is not None else b"", ms)
            return None
        return self._p.session.call(m.id, data, ms, self._decode())

    def _decode(self):
        resp = self._m.resp
        if resp is None:
            return None
        return resp.view


class Proxy:
    """A connection to a server, with one callable per method of the service.

    A call returns a Future (``wait(timeout)``, ``result(timeout)``); a
    one-way method sends (waiting for a credit if the server holds them all)
    and returns None.  Typed requests are a message or its fields as keyword
    arguments; a typed reply is a message.
    """

    def __init__(self, uri, service, *, timeout=None, connect_timeout=10.0, progress="busy",
                 slot_size=None, slot_count=None, check=True):
        if progress not in PROGRESS:
            raise ValueError(f"progress must be one of {', '.join(PROGRESS)}")
        self.spec, _ = describe(service)
        self.timeout = timeout
        self._ctx = _tern.Context(PROGRESS[progress])
        try:
            self.session = self._ctx.connect(
                uri, [(self.spec.name, self.spec.schema_hash)] if check else None,
                {"slot_size": slot_size, "slot_count": slot_count},
                int(connect_timeout * 1000))
        except BaseException:
            self._ctx.close()
            raise
        for ms in self.spec.methods.values():
            setattr(self, ms.name, _Caller(self, ms))

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
