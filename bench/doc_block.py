#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""bench/doc_block.py FILE NAME - replace a generated block of a Markdown file.

The block is everything between the lines "<!-- NAME:begin -->" and
"<!-- NAME:end -->"; its new text comes from stdin.  tools/bench uses it to
put fresh tables into docs/peers.md and docs/cost.md, leaving the prose
around them alone.  Fails (exit 1) when the markers are missing.
"""
import sys


def replace_block(text, name, body):
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    i, j = text.find(begin), text.find(end)
    if i < 0 or j < i:
        raise ValueError(f"no {begin} ... {end} block")
    if body and not body.endswith("\n"):
        body += "\n"
    return text[:i + len(begin)] + "\n" + body + text[j:]


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    path, name = sys.argv[1], sys.argv[2]
    with open(path) as f:
        text = f.read()
    try:
        text = replace_block(text, name, sys.stdin.read())
    except ValueError as e:
        sys.exit(f"doc_block.py: {path}: {e}")
    with open(path, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
