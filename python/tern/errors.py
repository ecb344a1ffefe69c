# SPDX-License-Identifier: MIT
"""tern's exceptions: who failed, then which code.

Every failure tern reports is a negative errno or a TERN_E* code, and the
same code can come from either end: a handler may fail a call with
-ECONNRESET, which this side also reports when the session goes down.  So
the class says first *who* failed:

- ``RemoteError`` and its subclasses: the peer answered the call with an
  error (its handler's own code, or the server's refusal of the request).
  The subclass is chosen by the code (``REMOTE_ERRORS``; -ENOENT is
  ``NotFound``), and none of them is a built-in ``OSError``: ``except
  ConnectionError`` or ``except TimeoutError`` never catches a remote
  failure.
- every other ``RpcError``: this side failed (``LOCAL_ERRORS``): the
  deadline passed (``RpcTimeout``, a ``TimeoutError``), the session went
  away (``ConnectionLost``, a ``ConnectionError``), the connection or its
  handshake was refused, a bad argument.

Every exception carries ``code`` (negative), ``name`` ("ETIMEDOUT",
"TERN_ENOMETHOD") and ``message``.
"""
import errno as _errno

from . import _tern


class RpcError(Exception):
    """Base of every tern error."""

    code = None  # a subclass's default code, for raise NotFound("no such key")

    def __init__(self, code=None, message=""):
        if isinstance(code, str) and not message:
            code, message = None, code
        if code is None:
            code = type(self).code if type(self).code is not None else _tern.EREMOTE
        code = -abs(int(code))
        self.code = code
        self.name, text = _tern.strerror(code)
        self.message = message or text
        super().__init__(f"{self.name}: {self.message}")


# ---- the peer failed ---------------------------------------------------------------

class RemoteError(RpcError):
    """The peer answered the call with an error: ``code`` and ``message`` are its.

    Raise it (or any RpcError, or an OSError) in a handler to fail a call
    with a code: ``raise tern.RemoteError(errno.ERANGE, "a + b overflows")``,
    or a subclass with its own code: ``raise tern.NotFound("no such key")``.
    """


class NoSuchMethod(RemoteError):
    """TERN_ENOMETHOD: the peer serves no such method: its answer to the call,
    or (raised before anything is sent) what it said in the service check
    at connect (docs/idl.md, "Compatible changes")."""
    code = _tern.ENOMETHOD


class BadRequest(RemoteError):
    """EBADMSG, EINVAL: the peer refused the request (its length for its type, a bad value)."""
    code = -_errno.EINVAL


class NotFound(RemoteError):
    """ENOENT: what the request names does not exist at the peer."""
    code = -_errno.ENOENT


class AlreadyExists(RemoteError):
    """EEXIST."""
    code = -_errno.EEXIST


class PermissionDenied(RemoteError):
    """EACCES, EPERM."""
    code = -_errno.EACCES


class OutOfRange(RemoteError):
    """ERANGE, EDOM, EOVERFLOW."""
    code = -_errno.ERANGE


class ResourceExhausted(RemoteError):
    """ENOSPC, ENOMEM, EDQUOT, ENOBUFS, EMFILE, ENFILE: the peer ran out of something."""
    code = -_errno.ENOSPC


class Unavailable(RemoteError):
    """EAGAIN, EBUSY, ESHUTDOWN and the connection codes a handler returns
    (ECONNRESET, ECONNREFUSED, ECONNABORTED, ENOTCONN, EPIPE, EHOSTUNREACH,
    ENETUNREACH): the peer cannot serve it now; its own session is fine."""
    code = -_errno.EAGAIN


class Unsupported(RemoteError):
    """ENOSYS, EOPNOTSUPP, EPROTONOSUPPORT."""
    code = -_errno.EOPNOTSUPP


class Aborted(RemoteError):
    """ECANCELED: the peer gave the call up (a server dropped a deferred request)."""
    code = -_errno.ECANCELED


class RemoteTimeout(RemoteError):
    """ETIMEDOUT from the handler: something the peer waited for timed out.
    Not a TimeoutError: this call's own deadline is RpcTimeout."""
    code = -_errno.ETIMEDOUT


# ---- this side failed ------------------------------------------------------------

class RpcTimeout(RpcError, TimeoutError):
    """ETIMEDOUT: the call's deadline (or a wait's timeout) passed."""


class ConnectionLost(RpcError, ConnectionError):
    """ECONNRESET, ENOTCONN, EPIPE, ECONNABORTED: the peer or the session went away."""


class Cancelled(ConnectionLost):
    """ECANCELED, ESHUTDOWN: this side closed the session or the context."""


class ConnectFailed(RpcError, ConnectionError):
    """ECONNREFUSED, EHOSTUNREACH, ENETUNREACH, EADDRNOTAVAIL, EADDRINUSE, ENOENT."""


class SchemaMismatch(RpcError):
    """TERN_ESCHEMA, TERN_ENOSERVICE: the peer serves another schema, or not the service."""


class HandshakeError(RpcError):
    """TERN_EVERSION, TERN_EGEOMETRY: wire version or slot geometry refused."""


class ProtocolError(RpcError):
    """TERN_EPEER: the peer broke the protocol."""


class MessageTooLarge(RpcError):
    """EMSGSIZE: a message over the slot (or the peer's limit, or the reply buffer)."""


class RemoteMessageTooLarge(RemoteError, MessageTooLarge):
    """EMSGSIZE from the peer: the reply did not fit its slot or the caller's
    reply buffer (name a larger one).  Both a RemoteError and a MessageTooLarge."""
    code = -_errno.EMSGSIZE


class WouldBlock(RpcError, BlockingIOError):
    """EAGAIN, ENOBUFS: no slot or credit free now, or the wait queue is full."""


class InvalidArgument(RpcError, ValueError):
    """EINVAL, EPROTONOSUPPORT: a bad URI, option or argument."""


def _codes(table):
    return {(-c if c > 0 else c): cls for cs, cls in table for c in cs}


E = _errno
#: Codes this side reports, by class; a code not here is an RpcError.
LOCAL_ERRORS = _codes([
    ((E.ETIMEDOUT,), RpcTimeout),
    ((E.ECONNRESET, E.ENOTCONN, E.EPIPE, E.ECONNABORTED), ConnectionLost),
    ((E.ECANCELED, E.ESHUTDOWN), Cancelled),
    ((E.ECONNREFUSED, E.EHOSTUNREACH, E.ENETUNREACH, E.EADDRNOTAVAIL, E.EADDRINUSE,
      E.ENOENT), ConnectFailed),
    ((E.EMSGSIZE,), MessageTooLarge),
    ((E.EAGAIN, E.ENOBUFS), WouldBlock),
    ((E.EINVAL, E.EPROTONOSUPPORT), InvalidArgument),
    ((_tern.ENOSERVICE, _tern.ESCHEMA), SchemaMismatch),
    ((_tern.EVERSION, _tern.EGEOMETRY), HandshakeError),
    ((_tern.EPEER,), ProtocolError),
])
#: Codes the peer sends, by class; a code not here is a RemoteError.
REMOTE_ERRORS = _codes([
    ((_tern.ENOMETHOD,), NoSuchMethod),
    ((E.EBADMSG, E.EINVAL), BadRequest),
    ((E.ENOENT,), NotFound),
    ((E.EEXIST,), AlreadyExists),
    ((E.EACCES, E.EPERM), PermissionDenied),
    ((E.ERANGE, E.EDOM, E.EOVERFLOW), OutOfRange),
    ((E.ENOSPC, E.ENOMEM, E.EDQUOT, E.ENOBUFS, E.EMFILE, E.ENFILE), ResourceExhausted),
    ((E.EAGAIN, E.EBUSY, E.ESHUTDOWN, E.ECONNRESET, E.ECONNREFUSED, E.ECONNABORTED,
      E.ENOTCONN, E.EPIPE, E.EHOSTUNREACH, E.ENETUNREACH), Unavailable),
    ((E.ENOSYS, E.EOPNOTSUPP, E.EPROTONOSUPPORT), Unsupported),
    ((E.ECANCELED,), Aborted),
    ((E.ETIMEDOUT,), RemoteTimeout),
    ((E.EMSGSIZE,), RemoteMessageTooLarge),
    ((_tern.EREMOTE,), RemoteError),
])
del E
#: The local table, under its old name.
ERRORS = LOCAL_ERRORS


def error_class(code, remote=False):
    """The exception class of ``code``: sent by the peer (``remote``) or made here."""
    code = -abs(int(code))
    if remote or code == _tern.ENOMETHOD:
        # TERN_ENOMETHOD is the peer's word either way: its answer, or what
        # it said at connect, before this side sent anything
        return REMOTE_ERRORS.get(code, RemoteError)
    return LOCAL_ERRORS.get(code, RpcError)


def _from_code(code, message, remote=False):
    return error_class(code, remote)(code, message)


_tern._set_error_factory(_from_code, RpcError)
