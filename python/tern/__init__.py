# SPDX-License-Identifier: MIT
"""tern: RPC over RDMA verbs, shared memory and TCP, from Python.

    import tern

    idl = tern.load_idl("examples/calc/calc.tern")

    class Calc(idl.Calc):
        @tern.method
        def add(self, req):                 # req: idl.AddReq, read in its slot
            return idl.AddResp(sum=req.a + req.b)

    tern.serve("tcp://127.0.0.1:7000", Calc())          # blocks; Ctrl-C returns

    calc = tern.proxy("tcp://127.0.0.1:7000", idl.Calc)
    print(calc.add(a=40, b=2).result(timeout=1).sum)    # 42

See docs/python.md for views, their lifetime, and the exceptions.
"""
from . import _tern
from .errors import (ERRORS, LOCAL_ERRORS, REMOTE_ERRORS, Aborted, AlreadyExists, BadRequest,
                     Cancelled, ConnectFailed, ConnectionLost, HandshakeError, InvalidArgument,
                     MessageTooLarge, NoSuchMethod, NotFound, OutOfRange, PermissionDenied,
                     ProtocolError, RemoteError, RemoteMessageTooLarge, RemoteTimeout,
                     ResourceExhausted, RpcError, RpcTimeout, SchemaMismatch, Unavailable,
                     Unsupported, WouldBlock, error_class)
from .idl import Idl, Message, MethodSpec, ServiceSpec, load_idl, parse_idl
from .service import Deferred, Proxy, SendSlot, Server, describe, method, proxy, serve, wait_all
from .group import GROUP_MAX, Group

Batch = _tern.Batch
Future = _tern.Future
SlotView = _tern.SlotView
CallSlot = _tern.CallSlot
Memory = _tern.Memory


def register(buffer):
    """Register ``buffer`` (bytearray, numpy array, mmap...) for large messages.

    A request inside it, or a reply buffer inside it, moves with no copy
    (RDMA READ and WRITE on rdma://) on every proxy that uses it: each
    context registers it the first time a call names memory inside it.
    The Memory holds an export of the buffer (it cannot be freed or
    resized) until ``close()`` (or the end of a ``with`` block, or its
    last reference), which deregisters it everywhere; close() is refused
    while calls use it.
    """
    return Memory(buffer)


__version__ = _tern.version

from .rnr import CANONICAL, CounterReadError, RnrMonitor  # the soft-RNR monitor, over tern._rnr

__all__ = [
    "Aborted", "AlreadyExists", "BadRequest", "Batch", "CallSlot", "Cancelled", "CANONICAL",
    "ConnectFailed", "ConnectionLost", "CounterReadError", "Deferred", "describe",
    "error_class", "ERRORS", "Future", "Group", "GROUP_MAX", "HandshakeError", "Idl",
    "InvalidArgument", "load_idl",
    "LOCAL_ERRORS", "Memory", "Message", "MessageTooLarge", "method", "MethodSpec",
    "NoSuchMethod", "NotFound", "OutOfRange", "parse_idl", "PermissionDenied", "ProtocolError",
    "Proxy", "proxy", "register", "REMOTE_ERRORS", "RemoteError", "RemoteMessageTooLarge",
    "RemoteTimeout", "ResourceExhausted", "RnrMonitor", "RpcError", "RpcTimeout",
    "SchemaMismatch", "SendSlot", "serve", "Server", "ServiceSpec", "SlotView", "Unavailable",
    "Unsupported", "wait_all", "WouldBlock",
]
