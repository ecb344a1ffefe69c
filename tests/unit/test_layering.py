#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""tests/unit/test_layering.py - tern's floors call each other one way only.

usage: test_layering.py SOURCE_ROOT LIBTERN_INTERNAL.a [PROVIDER.a ...]

Three floors, in three folders (docs/architecture.md):

    rpc/        the service layer: methods, calls, requests, batches
    src/        the engine: contexts, sessions, credits, the wire, bulk
    transport/  the providers, behind struct tern_transport_ops

A floor may name what is below it; it reaches what is above it only
through a table of function pointers the floor above filled (the
engine's struct tern_upcalls, the providers' struct tern_transport_events).
Checked on what the compiler made, with nm: no object of a floor has an
undefined symbol that an object of a floor above it defines.  And on the
sources: no file of a floor includes a header of a floor above it.

The objects are the members of the static archive meson builds the
library from (named after their sources: "ctx.c.o", ".._rpc_client.c.o",
".._transport_shm_shm.c.o"), plus any provider archive the tests build
(transport/mem/).
"""
import os
import re
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "gen"))
import unittest_main  # noqa: E402  (the count line tools/lib/test_summary.py reads)

FLOORS = ["transport", "src", "rpc"]  # bottom to top

SOURCE_ROOT = None
ARCHIVES = []


def floor_of_member(name):
    """The floor of an archive member, from the source file meson named it after."""
    base = os.path.basename(name)
    if base.startswith(".._rpc_"):
        return "rpc"
    if base.startswith(".._transport_"):
        return "transport"
    if base.startswith(".._"):
        return None  # a file from elsewhere: no floor
    return "src"


def nm(archive, *flags):
    """{member: [(type, symbol)]} for every member of @archive."""
    out = subprocess.run(["nm", "-A", *flags, archive], check=True, capture_output=True,
                         text=True).stdout
    members = {}
    for line in out.splitlines():
        # "archive:member:  U symbol" or "archive:member:0000 T symbol"
        head, _, rest = line.rpartition(":")
        parts = rest.split()
        if len(parts) < 2:
            continue
        member = head[len(archive) + 1:] if head.startswith(archive + ":") else head
        members.setdefault(member, []).append((parts[-2], parts[-1]))
    return members


class Objects:
    def __init__(self, archives):
        self.defined = {}  # symbol -> (floor, member)
        self.undefined = []  # (floor, member, symbol)
        self.members = {f: set() for f in FLOORS}
        for i, a in enumerate(archives):
            for member, syms in nm(a, "-g").items():
                floor = floor_of_member(member) if i == 0 else "transport"
                if floor is None:
                    continue
                self.members[floor].add(member)
                for kind, sym in syms:
                    if kind == "U":
                        self.undefined.append((floor, member, sym))
                    else:
                        self.defined[sym] = (floor, member)


def upward(objs, floor):
    """Undefined references of @floor's objects to symbols a higher floor defines."""
    above = FLOORS[FLOORS.index(floor) + 1:]
    bad = []
    for f, member, sym in objs.undefined:
        if f != floor or sym not in objs.defined:
            continue
        def_floor, def_member = objs.defined[sym]
        if def_floor in above:
            bad.append(f"{os.path.basename(member)} names {sym}, "
                       f"defined in {os.path.basename(def_member)} ({def_floor}/)")
    return sorted(set(bad))


INCLUDE = re.compile(r'^\s*#\s*include\s*[<"]([^>"]+)[>"]', re.M)
# The headers each floor keeps for itself.
FLOOR_HEADERS = {
    "src": {"internal.h", "credit.h", "wire.h"},
    "rpc": {"rpc.h"},
}


def sources(folder):
    top = os.path.join(SOURCE_ROOT, folder)
    for d, _, files in os.walk(top):
        for f in files:
            if f.endswith((".c", ".h")):
                yield os.path.join(d, f)


def includes_from_above(folder, floor):
    above = FLOORS[FLOORS.index(floor) + 1:]
    banned = set().union(*(FLOOR_HEADERS.get(f, set()) for f in above))
    bad = []
    for path in sources(folder):
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
        for inc in INCLUDE.findall(text):
            parts = inc.split("/")
            if os.path.basename(inc) in banned or any(p in above for p in parts[:-1]):
                bad.append(f"{os.path.relpath(path, SOURCE_ROOT)} includes {inc}")
    return bad


class Layering(unittest.TestCase):
    maxDiff = None

    @classmethod
    def setUpClass(cls):
        cls.objs = Objects(ARCHIVES)

    def test_every_floor_has_objects(self):
        # Otherwise the checks below would pass on nothing.
        for floor in FLOORS:
            self.assertTrue(self.objs.members[floor], f"no object of {floor}/ found")
        self.assertIn("ctx.c.o", {os.path.basename(m) for m in self.objs.members["src"]})

    def test_the_engine_names_nothing_of_the_service_layer(self):
        self.assertEqual(upward(self.objs, "src"), [])

    def test_providers_name_nothing_of_the_engine_or_the_service_layer(self):
        self.assertEqual(upward(self.objs, "transport"), [])

    def test_the_engine_includes_no_service_layer_header(self):
        self.assertEqual(includes_from_above("src", "src"), [])

    def test_providers_include_only_the_interface(self):
        self.assertEqual(includes_from_above("transport", "transport"), [])


def main():
    global SOURCE_ROOT, ARCHIVES
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    SOURCE_ROOT = os.path.abspath(sys.argv[1])
    ARCHIVES = [os.path.abspath(a) for a in sys.argv[2:]]
    return unittest_main.run(__name__)


if __name__ == "__main__":
    sys.exit(main())
