#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""install_script - a Python script of tern's, as it is installed.

usage: install_script.py IN OUT INTERPRETER PYTHONDIR

Writes IN to OUT with its #! line naming INTERPRETER (the one the tern
package's extensions were built for) and its `TERN_PYTHONDIR = None` line
naming PYTHONDIR (where the package is installed), so the installed script
imports the package from any --prefix, with no PYTHONPATH.
"""
import os
import sys


def main(argv):
    if len(argv) != 5:
        print(__doc__, file=sys.stderr)
        return 2
    src, dst, interpreter, pythondir = argv[1:]
    with open(src) as f:
        lines = f.read().split("\n")
    if not lines[0].startswith("#!"):
        print(f"{src}: no #! line", file=sys.stderr)
        return 1
    lines[0] = f"#!{interpreter}"
    marks = [i for i, line in enumerate(lines) if line == "TERN_PYTHONDIR = None"]
    if len(marks) != 1:
        print(f"{src}: expected one line 'TERN_PYTHONDIR = None'", file=sys.stderr)
        return 1
    lines[marks[0]] = f"TERN_PYTHONDIR = {pythondir!r}"
    with open(dst, "w") as f:
        f.write("\n".join(lines))
    os.chmod(dst, 0o755)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
