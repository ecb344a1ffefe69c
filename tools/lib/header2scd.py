#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""header2scd - a C header's kernel-doc comments as an scdoc man page.

usage: header2scd.py HEADER PAGE SECTION DESCRIPTION [--include NAME] > PAGE.SECTION.scd

The page is the header itself, top to bottom: the file comment is the
description; each banner comment (/* Name */ between two rule lines)
starts a section; each kernel-doc comment ("name - what it does", with
@param lines) becomes prose and the declaration after it a literal block.
Declarations with no comment of their own (handle typedefs, enums with
inline comments) are shown as they are.  So the page says what the
header says, and cannot drift from it.  Standard library only.
"""
import re
import sys


def esc(text):
    """Prose for scdoc: its markup characters taken literally."""
    return re.sub(r"([\\*_])", r"\\\1", text)


def comment_lines(block):
    """The text lines of a /* ... */ or /** ... */ block."""
    body = re.sub(r"^/\*\*?", "", block.strip())
    body = re.sub(r"\*/$", "", body)
    out = []
    for line in body.split("\n"):
        line = re.sub(r"^\s*\* ?", "", line) if line.strip().startswith("*") else line.strip()
        out.append(line.rstrip())
    while out and not out[0].strip():
        out.pop(0)
    while out and not out[-1].strip():
        out.pop()
    return out


def prose(lines):
    """kernel-doc lines -> scdoc paragraphs: @param: lines become a list."""
    paras, cur, params = [], [], []
    for line in lines:
        m = re.match(r"@(\w+): ?(.*)", line)
        if m:
            params.append([m.group(1), m.group(2)])
            continue
        if params and line.startswith(("\t", "  ")) and line.strip() and not cur:
            params[-1][1] += " " + line.strip()
            continue
        if not line.strip():
            if cur:
                paras.append(" ".join(cur))
                cur = []
            continue
        if re.match(r"\s*- ", line) and cur:
            paras.append(" ".join(cur))
            cur = []
        cur.append(line.strip())
    if cur:
        paras.append(" ".join(cur))
    out = []
    if params:
        out += [f"- _{esc(p)}_: {esc(t)}" for p, t in params]
        out.append("")
    for p in paras:
        if p.startswith("- "):
            out += [f"- {esc(p[2:])}", ""]
        else:
            out += [esc(p), ""]
    return out


def literal(decl):
    return ["```", decl.replace("\t", "        ").rstrip("\n").replace("TERN_EXPORT ", ""),
            "```", ""]


def main(argv):
    if len(argv) < 5:
        print(__doc__, file=sys.stderr)
        return 2
    header, page, section, desc = argv[1:5]
    include = argv[argv.index("--include") + 1] if "--include" in argv else page
    with open(header) as f:
        src = f.read()
    # Tokens at top level: comments, preprocessor lines, declarations.
    tok = re.compile(r"/\*.*?\*/|^#[^\n]*(?:\\\n[^\n]*)*|[^/#\s][^;{]*(?:\{.*?\}[^;]*)?;",
                     re.S | re.M)
    items = [(m.group(0), m.start()) for m in tok.finditer(src)]
    out = [f"{page}({section})", "", "# NAME", "", f"{esc(page)} - {esc(desc)}", "",
           "# SYNOPSIS", "", f"*#include <{esc(include)}>*", ""]
    first = True
    pending = None
    rule = re.compile(r"^/\* -{8,} \*/$")
    i = 0
    while i < len(items):
        text, _ = items[i]
        if text.startswith("/*"):
            if rule.match(text):
                # a banner: rule, /* Name */, rule? (tern.h: rule then name)
                if i + 1 < len(items) and items[i + 1][0].startswith("/*"):
                    name = " ".join(comment_lines(items[i + 1][0])).strip()
                    out += [f"# {esc(name).upper()}", ""]
                    i += 2
                    continue
                i += 1
                continue
            lines = comment_lines(text)
            if lines and lines[0].startswith("SPDX-License-Identifier"):
                i += 1
                continue
            if first:
                out += ["# DESCRIPTION", ""] + prose(lines)
                first = False
            elif lines and re.match(r"(struct |enum )?\w+ - ", lines[0]):
                pending = lines
            else:
                out += prose(lines)
            i += 1
            continue
        if text.startswith("#"):
            m = re.match(r"#define (TERN_[A-Z_]+)\s+(.*)", text)
            if m and not m.group(1).endswith("_H") and m.group(1) != "TERN_EXPORT":
                out += literal(text)
            i += 1
            continue
        if text.startswith("extern") or "__cplusplus" in text:
            i += 1
            continue
        if pending:
            name, _, summary = pending[0].partition(" - ")
            out += [f"*{esc(name)}* - {esc(summary)}", ""]
            out += literal(text)
            out += prose(pending[1:])
            pending = None
        else:
            out += literal(text)
        i += 1
    out += ["# SEE ALSO", "", "*tern*(7)", ""]
    sys.stdout.write("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
