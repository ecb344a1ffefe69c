#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""tern-gen never raises anything but its own positioned error.

usage: test_tern_gen_fuzz.py

The unit suite's side of tools/fuzz tern_gen: every input in the tree
(tests/fuzz/tern_gen/seeds, and regressions: inputs that once broke the
property) replayed through tern_gen_check.py's property, then a
property-based test (Hypothesis, from Debian's python3-hypothesis) that
builds files from the IDL's own tokens, names, numbers of every length,
comments, stray bytes and broken UTF-8, derandomized so that the suite
runs the same examples every time.
"""
import os
import sys
import unittest

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "..", "gen"))
import tern_gen_check  # noqa: E402
import unittest_main  # noqa: E402

CHK = None

WORDS = ["service", "message", "rpc", "returns", "bytes", "batch", "raw", "inplace", "deferred",
         "oneway", "u8", "u16", "u32", "u64", "i8", "i16", "i32", "i64", "f32", "f64", "max",
         "wait_us", "Calc", "add", "Req", "Resp", "v", "tern_x", "_x", "x_", "int", "class",
         "None", "errno", "string"]
PUNCT = ["{", "}", "(", ")", "[", "]", ";", "=", ",", "//", "/*", "*/", "\n", " ", "\t", "\r"]

token = st.one_of(
    st.sampled_from(WORDS + PUNCT),
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,70}", fullmatch=True),
    st.integers(min_value=0, max_value=2 ** 70).map(str),
    st.integers(min_value=1, max_value=6000).map(lambda n: "9" * n),
    st.text(max_size=3),
)
separator = st.sampled_from(["", " ", "\n", "\t", " // c\n", "/* c */"])


@st.composite
def idl_files(draw):
    toks = draw(st.lists(st.tuples(token, separator), max_size=60))
    text = "".join(t + s for t, s in toks).encode("utf-8", "surrogatepass")
    if draw(st.booleans()):  # bytes that are not UTF-8, or half of a character
        at = draw(st.integers(min_value=0, max_value=len(text)))
        text = text[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xe2\x80", b"\x00"])) + \
            text[at:]
    return text


def corpus():
    for sub in ("seeds", "regressions"):
        d = os.path.join(HERE, sub)
        for name in sorted(os.listdir(d)) if os.path.isdir(d) else []:
            if not name.startswith(".") and name != "README":
                with open(os.path.join(d, name), "rb") as f:
                    yield sub + "/" + name, f.read()


class TernGenNeverRaisesAnythingButItsOwnError(unittest.TestCase):
    def test_every_input_in_the_tree_keeps_the_property(self):
        n = 0
        for name, data in corpus():
            with self.subTest(input=name):
                CHK.check(data)
            n += 1
        self.assertGreater(n, 0)

    @settings(max_examples=400, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(idl_files())
    def test_generated_files_keep_the_property(self, data):
        CHK.check(data)


if __name__ == "__main__":
    CHK = tern_gen_check.Checker()
    try:
        sys.exit(unittest_main.run(__name__))
    finally:
        CHK.close()
