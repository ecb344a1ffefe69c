# SPDX-License-Identifier: MIT
"""Run a test module's unittest cases and print the count line.

tools/lib/test_summary.py reads "N passed, M failed, K skipped" (pytest's
wording) from a test's output; plain unittest does not print it.
"""
import sys
import unittest


def run(module_name):
    """Run every test in the module; return the exit status."""
    suite = unittest.defaultTestLoader.loadTestsFromModule(sys.modules[module_name])
    result = unittest.TextTestRunner(verbosity=2, stream=sys.stdout).run(suite)
    failed = len(result.failures) + len(result.errors)
    # A failed setUpClass is an error without a test run: never count below 0.
    passed = max(0, result.testsRun - failed - len(result.skipped))
    print(f"{passed} passed, {failed} failed, {len(result.skipped)} skipped")
    return 0 if result.wasSuccessful() else 1
