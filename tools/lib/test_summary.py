#!/usr/bin/env python3
"""Summarise one meson test suite from its JSON test log.

usage: test_summary.py SUITE LOG.json [--require-run]

Prints the program and test-case counts (cmocka and pytest report their own
case counts; any other program counts as one case).  Exits 1 when anything
failed, and with --require-run also when the suite ran nothing or skipped
everything: a lane that silently skips is worse than none.
"""
import json
import re
import sys

CASE_PATTERNS = {
    "passed": [r"\[  PASSED  \] (\d+) test", r"(\d+) passed"],
    "failed": [r"\[  FAILED  \] (\d+) test", r"(\d+) failed", r"(\d+) error"],
    "skipped": [r"\[  SKIPPED \] (\d+) test", r"(\d+) skipped"],
}


def case_counts(out):
    counts = {}
    for key, pats in CASE_PATTERNS.items():
        for pat in pats:
            m = re.findall(pat, out)
            if m:
                counts[key] = sum(int(x) for x in m)
                break
    return counts


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    suite, path = argv[1], argv[2]
    require_run = "--require-run" in argv[3:]
    try:
        lines = [json.loads(line) for line in open(path) if line.strip()]
    except FileNotFoundError:
        print(f"{suite}: no test log at {path}: the suite did not run")
        return 1
    progs = {"ok": 0, "failed": 0, "skipped": 0}
    cases = {"passed": 0, "failed": 0, "skipped": 0}
    failed_names = []
    for t in lines:
        res = t.get("result", "")
        out = (t.get("stdout") or "") + "\n" + (t.get("stderr") or "")
        c = case_counts(out)
        if res in ("OK", "EXPECTEDFAIL"):
            progs["ok"] += 1
            cases["passed"] += c.get("passed", 1)
            cases["skipped"] += c.get("skipped", 0)
        elif res == "SKIP":
            progs["skipped"] += 1
            cases["skipped"] += max(c.get("skipped", 0), 1)
        else:
            progs["failed"] += 1
            failed_names.append(f"{t.get('name')} ({res})")
            cases["passed"] += c.get("passed", 0)
            cases["failed"] += max(c.get("failed", 0), 1)
            cases["skipped"] += c.get("skipped", 0)
    total = sum(progs.values())
    print(f"{suite}: {total} programs ({progs['ok']} ok, {progs['failed']} failed, "
          f"{progs['skipped']} skipped); {cases['passed']} test cases passed, "
          f"{cases['failed']} failed, {cases['skipped']} skipped")
    rc = 0
    if failed_names:
        print(f"{suite}: FAILED: " + ", ".join(failed_names))
        rc = 1
    if require_run and (total == 0 or progs["ok"] == 0 or progs["skipped"] > 0
                        or cases["passed"] == 0):
        print(f"{suite}: FAILED: the suite must run here, but it ran nothing or skipped "
              f"({progs['skipped']} of {total} programs skipped)")
        rc = 1
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv))
