#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""tools/lib/test_summary.py: which outputs count, and when a lane fails.

usage: test_test_summary.py SOURCE_ROOT
"""
import io
import os
import sys
import unittest
from contextlib import redirect_stdout

ROOT = sys.argv.pop(1) if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "..")
sys.path.insert(0, os.path.join(ROOT, "tools", "lib"))
sys.path.insert(0, os.path.join(ROOT, "tests", "gen"))
import test_summary  # noqa: E402
import unittest_main  # noqa: E402

CMOCKA_OK = "[==========] 3 test(s) run.\n[  PASSED  ] 3 test(s).\n"
CMOCKA_SKIP = ("[  PASSED  ] 2 test(s).\n[  SKIPPED ] 1 test(s), listed below:\n"
               "[  SKIPPED ] b\n\n 1 SKIPPED TEST(S)\n")
CMOCKA_FAIL = ("[  PASSED  ] 1 test(s).\n[  FAILED  ] 2 test(s), listed below:\n"
               "[  FAILED  ] c\n[  FAILED  ] d\n\n 2 FAILED TEST(S)\n")
PYTEST = "........  [100%]\n56 passed, 2 skipped in 15.86s\n"
PYTEST_FAIL = "==== 3 failed, 1 error, 4 passed in 2.01s ====\n"
UNITTEST = "Ran 3 tests in 0.1s\n\nOK\n3 passed, 0 failed, 0 skipped\n"


def prog(name, result, stdout="", stderr=""):
    return {"name": name, "result": result, "stdout": stdout, "stderr": stderr}


def summarise(lines, require_run):
    out = io.StringIO()
    with redirect_stdout(out):
        rc = test_summary.summarise("lane", lines, require_run)
    return rc, out.getvalue()


class Counts(unittest.TestCase):
    def test_cmocka_counts_passed_failed_and_skipped(self):
        self.assertEqual(test_summary.case_counts(CMOCKA_OK),
                         {"passed": 3, "failed": 0, "skipped": 0})
        self.assertEqual(test_summary.case_counts(CMOCKA_SKIP),
                         {"passed": 2, "failed": 0, "skipped": 1})
        self.assertEqual(test_summary.case_counts(CMOCKA_FAIL),
                         {"passed": 1, "failed": 2, "skipped": 0})

    def test_pytest_and_unittest_main_lines_count(self):
        self.assertEqual(test_summary.case_counts(PYTEST),
                         {"passed": 56, "failed": 0, "skipped": 2})
        self.assertEqual(test_summary.case_counts(PYTEST_FAIL),
                         {"passed": 4, "failed": 4, "skipped": 0})
        self.assertEqual(test_summary.case_counts(UNITTEST),
                         {"passed": 3, "failed": 0, "skipped": 0})

    def test_words_in_passing_prose_are_no_count(self):
        self.assertIsNone(test_summary.case_counts("round 1: 20000 frames passed\n"))
        self.assertIsNone(test_summary.case_counts("all 5 passed the check, 1 failed later\n"))
        self.assertIsNone(test_summary.case_counts(""))


class Lanes(unittest.TestCase):
    def test_a_clean_suite_passes_both_lanes(self):
        lines = [prog("a", "OK", CMOCKA_OK), prog("c", "OK", UNITTEST)]
        self.assertEqual(summarise(lines, False)[0], 0)
        rc, out = summarise(lines, True)
        self.assertEqual(rc, 0)
        self.assertIn("6 test cases passed, 0 failed, 0 skipped", out)

    def test_a_program_that_passed_without_a_count_fails_either_lane(self):
        lines = [prog("a", "OK", CMOCKA_OK), prog("x", "OK", "all good\n")]
        for require_run in (False, True):
            rc, out = summarise(lines, require_run)
            self.assertEqual(rc, 1)
            self.assertIn("no test-case count in the output of x", out)
            self.assertIn("3 test cases passed", out)  # x is not one passed case

    def test_skipped_cases_inside_a_passing_program(self):
        lines = [prog("a", "OK", "", CMOCKA_SKIP), prog("b", "OK", PYTEST)]
        self.assertEqual(summarise(lines, False)[0], 0)
        rc, out = summarise(lines, True)
        self.assertEqual(rc, 1)
        self.assertIn("a (1 cases skipped)", out)
        self.assertIn("b (2 cases skipped)", out)

    def test_a_program_skipped_whole(self):
        lines = [prog("a", "OK", CMOCKA_OK), prog("s", "SKIP", "SKIP: no device\n")]
        self.assertEqual(summarise(lines, False)[0], 0)
        rc, out = summarise(lines, True)
        self.assertEqual(rc, 1)
        self.assertIn("s (skipped whole)", out)

    def test_failures_fail_and_count(self):
        rc, out = summarise([prog("a", "FAIL", "", CMOCKA_FAIL), prog("b", "FAIL", "segv")],
                            False)
        self.assertEqual(rc, 1)
        self.assertIn("1 test cases passed, 3 failed", out)
        self.assertIn("FAILED: a (FAIL), b (FAIL)", out)
        self.assertNotIn("no test-case count", out)  # b is reported as failed

    def test_the_rdma_lane_must_run_something(self):
        self.assertEqual(summarise([], True)[0], 1)
        self.assertEqual(summarise([], False)[0], 0)


if __name__ == "__main__":
    sys.exit(unittest_main.run(__name__))
