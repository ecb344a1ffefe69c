#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""bench/idle_table.py < idle.jsonl - the Markdown table of bench/idle's JSON lines.

One row per run and side: bytes per idle session as tern_ctx_mem() counts
them (slots reserved, slots backed by pages, the providers' and the
engine's heap) and as the kernel sees the process (RSS, its anonymous and
shared-memory parts).  Lines without "bench": "idle" (the meta line) are
skipped.
"""
import sys

from jsonl import records


def kib(v):
    return "-" if v is None else f"{v / 1024:,.1f}"


def main():
    rows = []
    for d in records(sys.stdin, "idle"):
        m = d.get("mem_per_session") or {}
        reserved = (m.get("slots_registered", 0) + m.get("slots_shared", 0) +
                    m.get("slots_heap", 0)) if m else None
        backed = (m.get("slots_registered", 0) + m.get("slots_shared_resident", 0) +
                  m.get("slots_heap_resident", 0)) if m else None
        rows.append("| {} | {} | {} | {:,} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
            d["label"], d["transport"], d["side"], d["sessions"], d["calls"],
            kib(reserved), kib(backed), kib(m.get("conn_heap") if m else None),
            kib(m.get("session_heap") if m else None), kib(d["rss_per_session"]),
            kib(d["anon_per_session"]), kib(d["shmem_per_session"])))
    print("| run | transport | side | sessions | calls each | slots reserved KiB | "
          "slots backed KiB | conn heap KiB | session heap KiB | RSS KiB | anon KiB | "
          "shmem KiB |")
    print("|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for r in rows:
        print(r)


if __name__ == "__main__":
    main()
