# SPDX-License-Identifier: MIT
"""Typed messages and services from a .tern file.

``load_idl(path)`` parses the file with tern-gen's own parser (imported as
``tern.tern_gen``), so method ids and schema hashes are the C generator's.
It returns an ``Idl`` whose attributes are one class per message and one per
service.  A message object reads and writes its fields in place, in
whatever buffer it wraps: its own bytearray when you construct one, or a
slot when tern hands it to a handler (``Msg.view(buffer)``).
"""
import struct
import sys

from . import tern_gen

_FMT = {"u8": "B", "u16": "H", "u32": "I", "u64": "Q", "i8": "b", "i16": "h",
        "i32": "i", "i64": "q", "f32": "f", "f64": "d"}
_LITTLE = sys.byteorder == "little"


class Message:
    """Base of the message classes load_idl makes; fields are properties."""

    __slots__ = ("_buf", "_tail_len")
    _size = 0
    _fields = ()
    _tail = None
    _ends = frozenset()  # where an older, shorter version of it may end

    def __init__(self, *args, **fields):
        if args:
            raise TypeError(f"{type(self).__name__}() takes keyword arguments only")
        self._buf = bytearray(self._size)
        self._tail_len = None
        for k, v in fields.items():
            if k not in self._fields:
                raise TypeError(f"{type(self).__name__} has no field {k!r}")
            setattr(self, k, v)

    @classmethod
    def view(cls, buf):
        """A message over ``buf`` (any buffer), read (and written) in place.

        A longer buffer is read as far as the message goes (a peer whose
        message type has more fields: docs/idl.md, "Compatible changes"),
        or, with trailing bytes, to its end.
        """
        mv = _bytes_view(buf)
        n = mv.nbytes
        if n < cls._size:
            want = "at least " if cls._tail is not None else ""
            raise ValueError(f"{cls.__name__}: {n} bytes, expected {want}{cls._size}")
        # all of it, not a slice: a slice would be one more view of a
        # request's slot for its handler to release before answering
        return cls._over(mv)

    @classmethod
    def from_peer(cls, buf):
        """A message a peer sent: as view(), and an older peer's shorter one,
        which ends at one of the fields, reads as zero past its end (then the
        message is a copy).  Generated C does the same."""
        mv = _bytes_view(buf)
        n = mv.nbytes
        if n < cls._size and n in cls._ends:
            return cls._over(bytearray(mv) + bytes(cls._size - n))
        if n < cls._size:
            want = "at least " if cls._tail is not None else ""
            more = "" if cls._tail is not None else " (or fewer, ending at a field)"
            raise ValueError(f"{cls.__name__}: {n} bytes, expected {want}{cls._size}{more}")
        return cls.view(mv)

    @classmethod
    def _over(cls, buf):
        m = object.__new__(cls)
        m._buf = buf
        m._tail_len = None
        return m

    @property
    def buffer(self):
        """The bytes the message lives in (a bytearray or a memoryview; from
        a peer whose message type is longer, all of its message)."""
        return self._buf

    def __bytes__(self):
        if self._tail is None and len(self._buf) > self._size:
            return bytes(memoryview(self._buf)[:self._size])
        return bytes(self._buf)

    def __len__(self):
        return self._size if self._tail is None else len(self._buf)

    def __eq__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        return bytes(self) == bytes(other)

    __hash__ = None

    def __repr__(self):
        parts = []
        for f in self._fields:
            v = getattr(self, f)
            if isinstance(v, memoryview):
                v = v.tolist() if f != self._tail else bytes(v)
            parts.append(f"{f}={v!r}")
        return f"{type(self).__name__}({', '.join(parts)})"


def _bytes_view(buf):
    mv = buf if isinstance(buf, memoryview) else memoryview(buf)
    if mv.format != "B" or mv.ndim != 1:
        mv = mv.cast("B")
    return mv


def _scalar(off, fmt):
    s = struct.Struct("<" + fmt)

    def get(self):
        return s.unpack_from(self._buf, off)[0]

    def put(self, v):
        s.pack_into(self._buf, off, v)
    return property(get, put)


def _array(off, fmt, count):
    s = struct.Struct(f"<{count}{fmt}")
    size = s.size

    def get(self):
        if _LITTLE:
            # in place: numpy.frombuffer(msg.field, ...) makes no copy
            return memoryview(self._buf)[off:off + size].cast(fmt)
        return s.unpack_from(self._buf, off)

    def put(self, v):
        try:
            mv = memoryview(v)
        except TypeError:
            mv = None
        if _LITTLE and mv is not None and mv.nbytes == size and mv.format in (fmt, "<" + fmt):
            memoryview(self._buf)[off:off + size] = mv.cast("B")
            return
        vals = list(v)
        if len(vals) != count:
            raise ValueError(f"{count} values expected, got {len(vals)}")
        s.pack_into(self._buf, off, *vals)
    return property(get, put)


def _as_bytes(v, what):
    """The bytes of a bytes-like object (or of a sequence of ints) for field ``what``."""
    if isinstance(v, (str, int)):
        raise TypeError(f"{what} takes bytes, not {type(v).__name__}")
    try:
        return memoryview(v).cast("B")
    except TypeError:
        return memoryview(bytes(v))  # a list of ints; ValueError outside 0..255


def _u8_array(off, count, name):
    """``u8 name[N]``: reads as its N bytes; takes up to N bytes, zero-padded."""
    what = f"u8 {name}[{count}]"

    def get(self):
        return bytes(memoryview(self._buf)[off:off + count])

    def put(self, v):
        b = _as_bytes(v, what)
        n = b.nbytes
        if n > count:
            raise ValueError(f"{what}: {n} bytes do not fit")
        mv = memoryview(self._buf)
        mv[off:off + n] = b
        mv[off + n:off + count] = bytes(count - n)
    return property(get, put)


def _tail_field(off, name):
    """The trailing ``bytes``: the rest of the buffer.

    Setting it replaces the tail of a message that owns its buffer; in a
    view (a slot) it writes the bytes at the tail's start, and the message
    remembers their length: what an inplace handler or a commit() sends.
    """
    def get(self):
        return memoryview(self._buf)[off:]

    def put(self, v):
        b = _as_bytes(v, f"bytes {name}")
        n = b.nbytes
        if isinstance(self._buf, bytearray):
            self._buf[off:] = b
        else:
            room = len(self._buf) - off
            if n > room:
                raise ValueError(f"bytes {name}: {n} bytes do not fit the {room} of the slot")
            memoryview(self._buf)[off:off + n] = b
        self._tail_len = n
    return property(get, put)


def message_class(msg):
    """A Message subclass for a tern_gen message."""
    ns = {"__slots__": (), "_size": msg.size, "_tail": None,
          "_fields": tuple(f.name for f in msg.fields), "__module__": "tern.idl"}
    if not msg.tail and msg.size:
        ns["_ends"] = frozenset([0] + [f.offset + f.size for f in msg.fields][:-1])
    for f in msg.fields:
        if f.is_tail:
            ns["_tail"] = f.name
            ns[f.name] = _tail_field(f.offset, f.name)
        elif f.count and f.type == "u8":
            ns[f.name] = _u8_array(f.offset, f.count, f.name)
        elif f.count:
            ns[f.name] = _array(f.offset, _FMT[f.type], f.count)
        else:
            ns[f.name] = _scalar(f.offset, _FMT[f.type])
    return type(msg.name, (Message,), ns)


class MethodSpec:
    """One method: its id, kind and request and reply types."""

    def __init__(self, service, name, kind, req=None, resp=None, batch=None):
        self.service = service
        self.name = name
        self.id = tern_gen.method_id(service, name)
        self.kind = kind        # raw inplace deferred oneway batch oneway-batch
        self.req = req          # a Message class, or None for bytes
        self.resp = resp
        self.batch = batch      # (max, wait_us) or None

    @property
    def oneway(self):
        return self.kind in ("oneway", "oneway-batch")

    def __repr__(self):
        return f"<method {self.service}.{self.name} 0x{self.id:08x} {self.kind}>"


class ServiceSpec:
    """A service: name, schema hash and text, layout, methods by name.

    ``layout`` is what the service check compares with the peer's, method
    by method (tern-gen's schema_layout(); docs/idl.md, "Compatible
    changes").
    """

    def __init__(self, name, schema_hash, schema_text, methods, layout=b""):
        self.name = name
        self.schema_hash = schema_hash
        self.schema_text = schema_text
        self.methods = methods
        self.layout = layout

    @property
    def ref(self):
        """(name, schema hash, layout): the service as a session lists it."""
        return (self.name, self.schema_hash, self.layout)

    def __repr__(self):
        return f"<service {self.name} schema {self.schema_hash:016x}>"


def _spec_from_schema(schema, svc, classes):
    methods = {}
    for m in schema.service(svc).methods:
        kind = m.schema_kind
        batch = (m.batch[0], m.batch[1]) if m.batch else None
        req = classes.get(m.req) if m.req != "bytes" else None
        resp = classes.get(m.resp) if m.resp not in (None, "bytes") else None
        methods[m.name] = MethodSpec(svc, m.name, kind, req, resp, batch)
    return ServiceSpec(svc, tern_gen.schema_hash(schema, svc),
                       tern_gen.schema_text(schema, svc), methods,
                       tern_gen.schema_layout(schema, svc))


class Idl:
    """What a .tern file declares: message and service classes as attributes."""

    def __init__(self, schema, path):
        self.path = path
        self.schema = schema
        self.messages = {n: message_class(m) for n, m in schema.messages.items()}
        self.services = {}
        for name, cls in self.messages.items():
            setattr(self, name, cls)
        for svc in (s.name for s in schema.services):
            spec = _spec_from_schema(schema, svc, self.messages)
            base = type(svc, (), {"__tern_service__": spec, "__module__": "tern.idl",
                                  "__doc__": f"Service {svc} of {path}: subclass it "
                                             "and decorate its methods with @tern.method"})
            self.services[svc] = base
            setattr(self, svc, base)

    def __repr__(self):
        return f"<tern IDL {self.path}: {', '.join(self.services)}>"


def load_idl(path):
    """Parse a .tern file; raises tern.tern_gen.IdlError ("file:line:col: ...")."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return Idl(tern_gen.parse(text, str(path)), str(path))


def parse_idl(text, filename="<string>"):
    """Like load_idl, from the text of a .tern file."""
    return Idl(tern_gen.parse(text, filename), filename)
