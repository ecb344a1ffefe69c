# SPDX-License-Identifier: MIT
"""tern's exceptions: one class per C error code.

Every failure tern reports is a negative errno or a TERN_E* code; ERRORS maps
each code to one exception class, and a code it does not list becomes
RemoteError when a call's peer sent it (a handler's own errno) and RpcError
otherwise.  Every exception carries ``code`` (negative), ``name``
("ETIMEDOUT", "TERN_ENOMETHOD") and ``message``.
"""
import errno as _errno

from . import _tern


class RpcError(Exception):
    """Base of every tern error."""

    def __init__(self, code, message=""):
        code = -abs(int(code))
        self.code = code
        self.name, text = _tern.strerror(code)
        self.message = message or text
        super().__init__(f"{self.name}: {self.message}")


class RemoteError(RpcError):
    """The remote handler failed: ``code`` and ``message`` are the remote's.

    Raise it (or any RpcError) in a handler to fail a call with a code:
    ``raise tern.RemoteError(errno.ERANGE, "a + b overflows an i64")``.
    """


class NoSuchMethod(RemoteError):
    """TERN_ENOMETHOD: the peer serves no such method."""


class RpcTimeout(RpcError, TimeoutError):
    """ETIMEDOUT: the call's deadline (or a wait's timeout) passed."""


class ConnectionLost(RpcError, ConnectionError):
    """ECONNRESET, ENOTCONN, EPIPE: the peer or the session went away."""


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
    """EMSGSIZE: a message over the slot (or the peer's limit)."""


class WouldBlock(RpcError, BlockingIOError):
    """EAGAIN, ENOBUFS: no slot or credit free now, or the wait queue is full."""


class BadRequest(RemoteError):
    """EBADMSG: the server refused the request's length for its type."""


class InvalidArgument(RpcError, ValueError):
    """EINVAL, EPROTONOSUPPORT: a bad URI, option or argument."""


ERRORS = {
    -_errno.ETIMEDOUT: RpcTimeout,
    -_errno.ECONNRESET: ConnectionLost,
    -_errno.ENOTCONN: ConnectionLost,
    -_errno.EPIPE: ConnectionLost,
    -_errno.ECANCELED: Cancelled,
    -_errno.ESHUTDOWN: Cancelled,
    -_errno.ECONNREFUSED: ConnectFailed,
    -_errno.EHOSTUNREACH: ConnectFailed,
    -_errno.ENETUNREACH: ConnectFailed,
    -_errno.EADDRNOTAVAIL: ConnectFailed,
    -_errno.EADDRINUSE: ConnectFailed,
    -_errno.ENOENT: ConnectFailed,
    -_errno.EMSGSIZE: MessageTooLarge,
    -_errno.EAGAIN: WouldBlock,
    -_errno.ENOBUFS: WouldBlock,
    -_errno.EBADMSG: BadRequest,
    -_errno.EINVAL: InvalidArgument,
    -_errno.EPROTONOSUPPORT: InvalidArgument,
    _tern.ENOMETHOD: NoSuchMethod,
    _tern.ENOSERVICE: SchemaMismatch,
    _tern.ESCHEMA: SchemaMismatch,
    _tern.EVERSION: HandshakeError,
    _tern.EGEOMETRY: HandshakeError,
    _tern.EREMOTE: RemoteError,
    _tern.EPEER: ProtocolError,
}


def error_class(code, remote=True):
    """The exception class of a code; unlisted codes are RemoteError when remote."""
    cls = ERRORS.get(-abs(int(code)))
    if cls is None:
        cls = RemoteError if remote else RpcError
    return cls


def _from_code(code, message):
    return error_class(code)(code, message)


_tern._set_error_factory(_from_code)
