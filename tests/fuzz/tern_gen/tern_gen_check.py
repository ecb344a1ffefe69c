# SPDX-License-Identifier: MIT
"""The property tern-gen must hold for any input, fuzzed or generated.

tern-gen reads files people write, and files people did not mean to write.
Whatever the bytes, it either compiles them or rejects them with its own
positioned error (IdlError: "file:line:col: message", the position inside
the file); anything else it raises is a bug.  A file it accepts must also
generate, describe and hash without an exception.

check(data) applies that to one input and raises Violation when it fails.
Used by fuzz_tern_gen.py (tools/fuzz tern_gen) and test_tern_gen_fuzz.py
(the unit suite).
"""
import importlib.machinery
import importlib.util
import json
import os
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
TERN_GEN = os.path.normpath(os.path.join(HERE, "..", "..", "..", "tools", "tern-gen"))


def load(path=TERN_GEN):
    """tern-gen, imported as a module (as the Python bindings import it)."""
    loader = importlib.machinery.SourceFileLoader("tern_gen", path)
    spec = importlib.util.spec_from_loader("tern_gen", loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


class Violation(Exception):
    """tern-gen broke the property for this input."""


class Checker:
    def __init__(self, tg=None):
        self.tg = tg or load()
        # a file, so that parse_file's own decoding is what runs
        shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
        fd, self.path = tempfile.mkstemp(suffix=".tern", prefix="fz-", dir=shm)
        os.close(fd)

    def close(self):
        os.unlink(self.path)

    def _position_ok(self, data, e):
        """The error names this file and a line and column inside it."""
        if e.filename != self.path or not isinstance(e.line, int) or not isinstance(e.col, int):
            return False
        lines = data.split(b"\n")
        if not 1 <= e.line <= len(lines):
            return False
        line = lines[e.line - 1]
        try:
            width = len(line.decode("utf-8"))
        except UnicodeDecodeError:
            width = len(line)  # columns count bytes up to a decoding error
        return 1 <= e.col <= width + 1 and str(e).startswith(f"{self.path}:{e.line}:{e.col}: ")

    def check(self, data, generate=True):
        """Return "ok" or the kind of error tern-gen gave; raise Violation.

        @generate: also generate the C of an accepted file (the slow part:
        the fuzzer does it for new shapes of file and a sample of the rest).
        """
        tg = self.tg
        with open(self.path, "wb") as f:
            f.write(data)
        try:
            schema = tg.parse_file(self.path)
        except tg.IdlError as e:
            if not self._position_ok(data, e):
                raise Violation(f"an error outside the file: {e!s:.200}") from e
            return "err:" + _shape(e.message)
        except RecursionError as e:
            raise Violation("parse recursed without bound") from e
        except Exception as e:
            raise Violation(f"parse raised {type(e).__name__}: {e!s:.200}") from e
        try:
            for svc in schema.services:
                tg.schema_hash(schema, svc)
            json.dumps(tg.describe(schema))
            try:
                tg._check_c_names(schema, tg.default_prefix(self.path))
            except tg.IdlError as e:
                if not self._position_ok(data, e):
                    raise Violation(f"a C-name error outside the file: {e!s:.200}") from e
                return "err:" + _shape(e.message)
            if generate:
                h, c = tg.generate(schema)
                if not h or not c:
                    raise Violation("generated nothing")
        except Violation:
            raise
        except Exception as e:
            raise Violation(f"an accepted file failed later: {type(e).__name__}: {e!s:.200}") from e
        return f"ok:{len(schema.services)}:{len(schema.messages)}"


def _shape(msg):
    """An error message with its names and numbers taken out: which check."""
    out, skip = [], False
    for ch in msg:
        if ch == "'":
            skip = not skip
            if not skip:
                out.append("_")
            continue
        if not skip and not ch.isdigit():
            out.append(ch)
    return "".join(out)[:60]
