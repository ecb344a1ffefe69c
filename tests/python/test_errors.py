# SPDX-License-Identifier: MIT
"""Who failed: the peer's errors are RemoteErrors, this side's are not.

A handler's errno reaches the caller as the RemoteError subclass of that
code, also when the code is one this side uses for its own failures
(-ECONNRESET, -ETIMEDOUT, -ECANCELED); a session that goes down, a deadline
and a local close stay ConnectionLost, RpcTimeout and Cancelled.  A server
tells its user about the clients it refused.
"""
import errno
import logging
import os
import sys
import time

import pytest

import tern
from conftest import BAD_CALC, HERE, listen_uri

BUILTIN_OS = (OSError, ConnectionError, TimeoutError, BlockingIOError)


class Failing:
    """fail(code as 4 bytes LE) fails with that errno; drop() drops its request."""
    service_name = "Failing"

    def __init__(self):
        self.held = []

    @tern.method
    def fail(self, req):
        code = int.from_bytes(req, "little", signed=True)
        raise tern.RemoteError(code, f"handler code {code}")

    @tern.method
    def raise_subclass(self, req):
        raise tern.NotFound("no key " + bytes(req).decode())

    @tern.method
    def raise_oserror(self, req):
        raise ConnectionResetError(errno.ECONNRESET, "the backend hung up")

    @tern.method(deferred=True)
    def drop(self, req, reply):
        pass  # the Deferred goes away unanswered: the caller gets ECANCELED

    @tern.method(deferred=True)
    def hold(self, req, reply):
        self.held.append(reply)


@pytest.fixture
def failing(serve_thread):
    svc = Failing()
    srv = serve_thread(svc)
    p = tern.proxy(srv.uri, Failing, timeout=20)
    yield svc, srv, p
    p.close()


def code_bytes(code):
    return code.to_bytes(4, "little", signed=True)


@pytest.mark.parametrize("code, cls", [
    (errno.ENOENT, tern.NotFound),
    (errno.EEXIST, tern.AlreadyExists),
    (errno.EACCES, tern.PermissionDenied),
    (errno.EINVAL, tern.BadRequest),
    (errno.ERANGE, tern.OutOfRange),
    (errno.ENOSPC, tern.ResourceExhausted),
    (errno.EBUSY, tern.Unavailable),
    (errno.ECONNRESET, tern.Unavailable),    # locally: ConnectionLost
    (errno.ENOTCONN, tern.Unavailable),
    (errno.ECONNREFUSED, tern.Unavailable),  # locally: ConnectFailed
    (errno.ESHUTDOWN, tern.Unavailable),     # locally: Cancelled
    (errno.EAGAIN, tern.Unavailable),        # locally: WouldBlock
    (errno.ETIMEDOUT, tern.RemoteTimeout),   # locally: RpcTimeout
    (errno.ECANCELED, tern.Aborted),         # locally: Cancelled
    (errno.EOPNOTSUPP, tern.Unsupported),
    (errno.EMSGSIZE, tern.RemoteMessageTooLarge),
    (errno.EIO, tern.RemoteError),           # no subclass: RemoteError itself
])
def test_a_handlers_errno_is_a_remote_error_of_its_class(failing, code, cls):
    _, _, p = failing
    with pytest.raises(tern.RpcError) as e:
        p.fail(code_bytes(code)).result()
    assert type(e.value) is cls
    assert isinstance(e.value, tern.RemoteError)
    assert not isinstance(e.value, BUILTIN_OS)  # except ConnectionError never catches it
    assert e.value.code == -code and e.value.message == f"handler code {code}"


def test_remote_and_local_timeouts_and_resets_are_told_apart(failing):
    svc, srv, p = failing
    with pytest.raises(tern.RemoteTimeout):
        p.fail(code_bytes(errno.ETIMEDOUT)).result()
    with pytest.raises(tern.RpcTimeout) as e:
        p.hold(b"x", _timeout=0.2).result()  # the deadline is ours
    assert not isinstance(e.value, tern.RemoteError) and isinstance(e.value, TimeoutError)
    f = p.hold(b"y")
    end = time.monotonic() + 60
    while len(svc.held) < 2 and time.monotonic() < end:
        f.wait(0.01)
    assert len(svc.held) == 2
    p.session.close()  # closed here: every call in flight is cancelled
    with pytest.raises(tern.Cancelled) as e:
        f.result(10)
    assert isinstance(e.value, tern.ConnectionLost) and not isinstance(e.value, tern.RemoteError)
    assert f.remote is False


def test_an_oserror_in_a_handler_is_remote_too(failing):
    _, _, p = failing
    f = p.raise_oserror(b"")
    with pytest.raises(tern.Unavailable) as e:
        f.result()
    assert e.value.code == -errno.ECONNRESET and e.value.message == "the backend hung up"
    assert f.remote is True and not isinstance(e.value, ConnectionError)


def test_a_subclass_raised_by_its_name_carries_its_code(failing):
    _, _, p = failing
    with pytest.raises(tern.NotFound) as e:
        p.raise_subclass(b"k1").result()
    assert e.value.code == -errno.ENOENT and e.value.message == "no key k1"


def test_a_dropped_deferred_request_is_aborted_remotely(failing):
    _, _, p = failing
    with pytest.raises(tern.Aborted) as e:
        p.drop(b"").result()
    assert e.value.code == -errno.ECANCELED
    assert not isinstance(e.value, tern.ConnectionLost)


def test_a_dead_server_is_connection_lost_not_remote(procs):
    import py_server
    srv = procs([sys.executable, os.path.join(HERE, "py_server.py"), "hang", listen_uri()])
    p = tern.proxy(srv.uri, py_server.hang.Hang, timeout=60)
    f = p.wait(b"x")
    assert not f.wait(0.3)
    srv.p.kill()
    srv.p.wait()
    with pytest.raises(tern.ConnectionLost) as e:
        f.result(60)
    assert not isinstance(e.value, tern.RemoteError) and f.remote is False
    p.close()


def test_the_tables_split_remote_from_local():
    for code, cls in tern.REMOTE_ERRORS.items():
        assert issubclass(cls, tern.RemoteError), cls
        assert not issubclass(cls, BUILTIN_OS), cls
        assert tern.error_class(code, remote=True) is cls
    for code, cls in tern.LOCAL_ERRORS.items():
        assert not issubclass(cls, tern.RemoteError), cls
        assert tern.error_class(code) is cls
        e = cls(code, "m")
        assert e.code == code and e.name != "UNKNOWN"
    assert tern.error_class(-errno.EIO, remote=True) is tern.RemoteError
    assert tern.error_class(-errno.EIO) is tern.RpcError
    assert tern.error_class(-errno.ECONNRESET) is tern.ConnectionLost
    assert tern.error_class(-errno.ECONNRESET, remote=True) is tern.Unavailable
    assert issubclass(tern.RemoteMessageTooLarge, tern.MessageTooLarge)


def test_refused_clients_are_logged_and_counted(serve_thread, calc_idl, caplog):
    v2 = tern.parse_idl(BAD_CALC)  # incompatible
    other = tern.parse_idl("service Other { rpc f(bytes) returns (bytes); }\n")
    seen = []

    class Calc(calc_idl.Calc):
        @tern.method
        def add(self, req):
            return calc_idl.AddResp(sum=0)
    caplog.set_level(logging.WARNING, logger="tern")
    srv = serve_thread(Calc(), on_refused=seen.append)
    with pytest.raises(tern.SchemaMismatch):
        tern.proxy(srv.uri, v2.Calc)
    with pytest.raises(tern.SchemaMismatch):
        tern.proxy(srv.uri, other.Other)
    with tern.proxy(srv.uri, calc_idl.Calc) as p:  # the right schema still gets in
        assert p.add(a=1, b=2).result(10).sum == 0
    srv.on_loop(lambda: None)  # the refusals have been reported by now
    assert srv.srv.refused == 2
    assert [type(e) for e in seen] == [tern.SchemaMismatch, tern.SchemaMismatch]
    assert seen[0].code == tern._tern.ESCHEMA and "Calc" in seen[0].message
    assert seen[1].code == tern._tern.ENOSERVICE and "Other" in seen[1].message
    logged = [r for r in caplog.records if r.name == "tern"]
    assert len(logged) == 2 and all(r.levelno == logging.WARNING for r in logged)
    assert "Calc" in logged[0].getMessage() and "Other" in logged[1].getMessage()
