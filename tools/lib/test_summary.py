#!/usr/bin/env python3
"""Summarise one meson test suite from its JSON test log.

usage: test_summary.py SUITE LOG.json [--require-run]

Prints the program and test-case counts and exits 1 when anything failed.

Every program must report its own case count, in one of two forms:
  - cmocka's:  "[  PASSED  ] N test(s)." and, when there are any,
               "[  FAILED  ] N test(s), listed below:",
               "[  SKIPPED ] N test(s), listed below:";
  - pytest's:  a line of "N passed", "N failed", "N skipped", "N error(s)"...
               joined by ", " (optionally " in 1.23s", optionally framed by
               "="), as pytest prints it and as tests/gen/unittest_main.py
               and tests/gen/run_example.py print it for their own cases.
A program that passed but reports no count fails the summary: a count that
cannot be read cannot be trusted (it used to be taken as one passed case);
a failed program without one counts as one failed case.  A program skipped whole (exit 77)
is one skipped program.

With --require-run (the rdma lane, which exists to run on a device) the
suite also fails when it ran nothing, when any program was skipped, and
when any test case was skipped, also inside a program that exited 0: a lane
that silently skips is worse than none.
"""
import json
import re
import sys

CMOCKA = {
    "passed": re.compile(r"^\[  PASSED  \] (\d+) test\(s\)\.", re.M),
    "failed": re.compile(r"^\[  FAILED  \] (\d+) test\(s\), listed below:", re.M),
    "skipped": re.compile(r"^\[  SKIPPED \] (\d+) test\(s\), listed below:", re.M),
}
PYTEST_ITEM = r"\d+ (?:passed|failed|skipped|errors?|xfailed|xpassed|deselected|warnings?)"
PYTEST_LINE = re.compile(
    rf"^=*\s*((?:{PYTEST_ITEM})(?:, {PYTEST_ITEM})*)(?: in [\d.]+s(?: \([^)]*\))?)?\s*=*\s*$",
    re.M)
PYTEST_KEYS = {"passed": "passed", "failed": "failed", "error": "failed", "errors": "failed",
               "skipped": "skipped", "xfailed": "passed", "xpassed": "failed"}


def case_counts(out):
    """The cases a program's output reports: {"passed", "failed", "skipped"}, or None."""
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    found = False
    for key, pat in CMOCKA.items():
        for n in pat.findall(out):
            counts[key] += int(n)
            found |= key == "passed"
    for line in PYTEST_LINE.findall(out):
        found = True
        for item in line.split(", "):
            n, word = item.split(" ", 1)
            if word in PYTEST_KEYS:
                counts[PYTEST_KEYS[word]] += int(n)
    return counts if found else None


def summarise(suite, lines, require_run):
    """Print the summary of @lines (meson's JSON records); return the exit status."""
    progs = {"ok": 0, "failed": 0, "skipped": 0}
    cases = {"passed": 0, "failed": 0, "skipped": 0}
    failed_names, uncounted, skipping = [], [], []
    for t in lines:
        name, res = t.get("name", "?"), t.get("result", "")
        out = (t.get("stdout") or "") + "\n" + (t.get("stderr") or "")
        c = case_counts(out)
        if res == "SKIP":
            progs["skipped"] += 1
            cases["skipped"] += max(c["skipped"], 1) if c else 1
            skipping.append(f"{name} (skipped whole)")
            continue
        if c is None:
            if res in ("OK", "EXPECTEDFAIL"):
                uncounted.append(name)  # a failed one is reported as failed
            c = {"passed": 0, "failed": 0, "skipped": 0}
        if res in ("OK", "EXPECTEDFAIL"):
            progs["ok"] += 1
        else:
            progs["failed"] += 1
            failed_names.append(f"{name} ({res})")
            c["failed"] = max(c["failed"], 1)
        for k in cases:
            cases[k] += c[k]
        if c["skipped"]:
            skipping.append(f"{name} ({c['skipped']} cases skipped)")
    total = sum(progs.values())
    print(f"{suite}: {total} programs ({progs['ok']} ok, {progs['failed']} failed, "
          f"{progs['skipped']} skipped); {cases['passed']} test cases passed, "
          f"{cases['failed']} failed, {cases['skipped']} skipped")
    rc = 0
    if failed_names:
        print(f"{suite}: FAILED: " + ", ".join(failed_names))
        rc = 1
    if uncounted:
        print(f"{suite}: FAILED: no test-case count in the output of " + ", ".join(uncounted)
              + " (print one in a form tools/lib/test_summary.py reads)")
        rc = 1
    if require_run and (total == 0 or cases["passed"] == 0):
        print(f"{suite}: FAILED: the suite must run here, but it ran nothing")
        rc = 1
    if require_run and skipping:
        print(f"{suite}: FAILED: the suite must run here, but it skipped: " + ", ".join(skipping))
        rc = 1
    return rc


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    suite, path = argv[1], argv[2]
    try:
        lines = [json.loads(line) for line in open(path) if line.strip()]
    except FileNotFoundError:
        print(f"{suite}: no test log at {path}: the suite did not run")
        return 1
    return summarise(suite, lines, "--require-run" in argv[3:])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
