#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""service_layouts.py TERN_GEN OUT.h - the layouts test_service_check.c feeds
the service check: one service, Kv, in a base version, in versions that
differ from it compatibly, and in one version per kind of incompatible
change, each with the refusal it must get (docs/idl.md, "Compatible
changes").  The layouts are tern-gen's own (schema_layout()), so the test
checks the engine against what the generator writes.
"""
import importlib.machinery
import importlib.util
import sys

BASE = """
service Kv {
  rpc put(Item) returns (Ack);
  rpc get(Key) returns (Rec) inplace;
  rpc scan(Range) returns (bytes) deferred;
  rpc note(Note) oneway;
  rpc tag(Blob) returns (Blob);
  rpc sum(Pair) returns (Total) batch(max=2, wait_us=1);
}
message Item { u64 key; i64 value; u16 flags[2]; }
message Ack { u64 version; }
message Key { u64 key; }
message Rec { u64 key; f64 score; }
message Range { u64 first; u64 last; }
message Note { u32 code; }
message Blob { u32 id; bytes data; }
message Pair { i32 a; i32 b; }
message Total { i64 sum; }
"""

# name: (edits to BASE, as (old, new) pairs), compatible with BASE
COMPATIBLE = {
    # every compatible change at once, the way a newer version grows
    "grown": [("rpc sum(", "rpc drop(Key) returns (Ack);\n  rpc sum("),
              ("i64 value; u16 flags[2]; }", "i64 value; u16 flags[2]; u32 ttl; }"),
              ("message Ack { u64 version; }", "message Ack { u64 version; i64 old; }"),
              ("message Note { u32 code; }", "message Note { u32 code; u8 level[2]; }"),
              ("message Pair", "service Other { rpc f(bytes) returns (bytes); }\nmessage Pair")],
    # an older version: fields at the end not yet there, a method neither
    "older": [("i64 value; u16 flags[2]; }", "i64 value; }"),
              ("  rpc scan(Range) returns (bytes) deferred;\n", ""),
              ("message Range { u64 first; u64 last; }\n", "")],
    # trailing bytes appended to a message, and taken from one; a message
    # renamed: the wire is the same
    "tails": [("message Ack { u64 version; }", "message Ack { u64 version; bytes note; }"),
              ("message Blob { u32 id; bytes data; }", "message Blob { u32 id; }"),
              ("returns (Rec) inplace", "returns (Record) inplace"),
              ("message Rec {", "message Record {")],
}

# name: (edits, what the refusal says), each incompatible with BASE
INCOMPATIBLE = {
    "retyped": ([("i64 value; u16", "u64 value; u16")],
                "service Kv, method put: request Item, field 2 at offset 8: "
                "value u64 at the client, value i64 at the server"),
    "reordered": ([("{ u64 key; i64 value; u16", "{ i64 value; u64 key; u16")],
                  "service Kv, method put: request Item, field 1 at offset 0: "
                  "value i64 at the client, key u64 at the server"),
    "inserted": ([("{ u64 key; i64 value; u16", "{ u64 key; u32 ttl; i64 value; u16")],
                 "service Kv, method put: request Item, field 2 at offset 8: "
                 "ttl u32 at the client, value i64 at the server"),
    "removed": ([("{ u64 key; i64 value; u16", "{ u64 key; u16")],
                "service Kv, method put: request Item, field 2 at offset 8: "
                "flags u16[2] at the client, value i64 at the server"),
    "resized": ([("u16 flags[2]", "u16 flags[3]")],
                "service Kv, method put: request Item, field 3 at offset 16: "
                "flags u16[3] at the client, flags u16[2] at the server"),
    "renamed_field": ([("f64 score;", "f64 rank;")],
                      "service Kv, method get: reply Rec, field 2 at offset 8: "
                      "rank f64 at the client, score f64 at the server"),
    "reply_retyped": ([("message Total { i64 sum; }", "message Total { f64 sum; }")],
                      "service Kv, method sum: reply Total, field 1 at offset 0: "
                      "sum f64 at the client, sum i64 at the server"),
    "before_tail": ([("message Blob { u32 id; bytes data; }",
                      "message Blob { u32 id; u16 kind; bytes data; }")],
                    "service Kv, method tag: request Blob, field 2 at offset 4: "
                    "kind u16 at the client, data bytes at the server"),
    "raw_to_inplace": ([("returns (Ack);", "returns (Ack) inplace;")],
                       "service Kv, method put: inplace at the client, raw at the server"),
    "oneway_to_call": ([("rpc note(Note) oneway;", "rpc note(Note) returns (bytes);")],
                       "service Kv, method note: raw at the client, oneway at the server"),
    "unbatched": ([(" batch(max=2, wait_us=1)", "")],
                  "service Kv, method sum: raw at the client, batch at the server"),
    "deferred_to_raw": ([("returns (bytes) deferred;", "returns (bytes);")],
                        "service Kv, method scan: raw at the client, deferred at the server"),
    "request_bytes": ([("rpc scan(Range)", "rpc scan(bytes)")],
                      "service Kv, method scan: request bytes at the client, "
                      "Range at the server"),
    "reply_bytes": ([("returns (Rec) inplace", "returns (bytes) inplace")],
                    "service Kv, method get: reply bytes at the client, Rec at the server"),
}


def load_tern_gen(path):
    loader = importlib.machinery.SourceFileLoader("tern_gen", path)
    spec = importlib.util.spec_from_loader("tern_gen", loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


def edit(text, edits):
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new)
    return text


def c_bytes(b):
    return ", ".join(f"0x{x:02x}" for x in b)


def main(tern_gen_path, out):
    tg = load_tern_gen(tern_gen_path)
    variants = [("base", BASE, None)]
    variants += [(n, edit(BASE, e), None) for n, e in COMPATIBLE.items()]
    variants += [(n, edit(BASE, e), why) for n, (e, why) in INCOMPATIBLE.items()]
    lines = ["/* Generated by tests/unit/service_layouts.py.  Do not edit. */",
             "#include <stddef.h>", "#include <stdint.h>", "",
             "struct kv_variant {", "\tconst char *name;", "\tconst uint8_t *layout;",
             "\tsize_t len;", "\tuint64_t hash;",
             "\tconst uint32_t *ids; /* its methods, in the layout's order */",
             "\tsize_t nids;",
             "\tconst char *refusal; /* NULL: compatible with base */", "};", ""]
    entries = []
    for name, text, why in variants:
        schema = tg.parse(text, f"{name}.tern")
        svc = schema.service("Kv")
        layout = tg.schema_layout(schema, svc)
        ids = sorted(m.id for m in svc.methods)
        lines.append(f"static const uint8_t kv_{name}_layout[] = {{{c_bytes(layout)}}};")
        lines.append(f"static const uint32_t kv_{name}_ids[] = "
                     f"{{{', '.join(f'0x{i:08x}u' for i in ids)}}};")
        refusal = f'"{why}"' if why else "NULL"
        entries.append(f'\t{{"{name}", kv_{name}_layout, sizeof(kv_{name}_layout), '
                       f"0x{tg.schema_hash(schema, svc):016x}ull, kv_{name}_ids, "
                       f"{len(ids)}, {refusal}}},")
    lines += ["", "static const struct kv_variant kv_variants[] = {"] + entries + ["};", ""]
    # the service "grown" adds, which base's server does not serve
    grown = tg.parse(edit(BASE, COMPATIBLE["grown"]), "grown.tern")
    other = grown.service("Other")
    lines.append(f"static const uint8_t other_layout[] = "
                 f"{{{c_bytes(tg.schema_layout(grown, other))}}};")
    lines.append(f"#define OTHER_HASH 0x{tg.schema_hash(grown, other):016x}ull")
    lines.append(f"#define OTHER_F_ID 0x{other.methods[0].id:08x}u")
    base = tg.parse(BASE, "base.tern")
    for m in base.service("Kv").methods:
        lines.append(f"#define KV_{m.name.upper()}_ID 0x{m.id:08x}u")
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:])
