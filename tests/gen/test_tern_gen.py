#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""tern-gen: the parser, its error messages, the hashes, the command line.

usage: test_tern_gen.py PATH/TO/tern-gen TERN_SOURCE_DIR

Imports tern-gen as a module (as the Python bindings will), pins every
error message to its exact file:line:col, the method ids and schema hashes
to golden values and to their definitions in docs/idl.md, and checks that
adding a method changes no other id or service.  Generated code is also
compiled strictly (C11 and C2x with -Wpedantic -Wconversion, and the header
as C++11) when a compiler is at hand.  Standard library only.
"""
import importlib.machinery
import importlib.util
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import unittest_main  # noqa: E402

TERN_GEN = SRC = None
tg = None  # the module

ISSUE_CALC = """\
service Calc {
  rpc add(AddReq) returns (AddResp);     // typed, fixed layout
  rpc echo(bytes) returns (bytes) inplace;
  rpc stats(bytes) returns (bytes) deferred;
}
message AddReq { i64 a; i64 b; }
message AddResp { i64 sum; }
"""


def load(path):
    loader = importlib.machinery.SourceFileLoader("tern_gen", path)
    spec = importlib.util.spec_from_loader("tern_gen", loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


def error_of(text, filename="t.tern", prefix=None):
    """The one-line error tern-gen gives for @text (parse and C names)."""
    try:
        schema = tg.parse(text, filename)
        tg.generate(schema, prefix)
    except tg.IdlError as e:
        return str(e)
    return None


class Parsing(unittest.TestCase):
    def test_the_issue_example_parses(self):
        s = tg.parse(ISSUE_CALC, "calc.tern")
        self.assertEqual([svc.name for svc in s.services], ["Calc"])
        calc = s.service("Calc")
        self.assertEqual([(m.name, m.req, m.resp, m.kind) for m in calc.methods], [
            ("add", "AddReq", "AddResp", "raw"),
            ("echo", "bytes", "bytes", "inplace"),
            ("stats", "bytes", "bytes", "deferred"),
        ])
        self.assertEqual(list(s.messages), ["AddReq", "AddResp"])
        self.assertEqual(s.messages["AddReq"].size, 16)
        self.assertEqual([(f.name, f.type, f.offset) for f in s.messages["AddReq"].fields],
                         [("a", "i64", 0), ("b", "i64", 8)])

    def test_kinds_can_be_written_out(self):
        s = tg.parse("service S { rpc a(bytes) returns (bytes) raw; "
                     "rpc b(bytes) returns (bytes); }")
        self.assertEqual([m.kind for m in s.service("S").methods], ["raw", "raw"])

    def test_layout_is_packed_little_endian_in_declaration_order(self):
        s = tg.parse("message M { u8 a; u64 b; i16 c; f32 d[3]; f64 e; i8 g; }")
        m = s.messages["M"]
        self.assertEqual([(f.name, f.offset, f.size) for f in m.fields],
                         [("a", 0, 1), ("b", 1, 8), ("c", 9, 2), ("d", 11, 12), ("e", 23, 8),
                          ("g", 31, 1)])
        self.assertEqual(m.size, 32)
        self.assertIsNone(m.tail)

    def test_every_scalar_has_its_size(self):
        s = tg.parse("message M { u8 a; u16 b; u32 c; u64 d; i8 e; i16 f; i32 g; i64 h; "
                     "f32 i; f64 j; }")
        self.assertEqual([f.size for f in s.messages["M"].fields],
                         [1, 2, 4, 8, 1, 2, 4, 8, 4, 8])

    def test_arrays_have_a_count(self):
        f = tg.parse("message M { u16 v[7]; }").messages["M"].fields[0]
        self.assertEqual((f.count, f.size), (7, 14))

    def test_trailing_bytes_is_the_rest_of_the_message(self):
        m = tg.parse("message Blob { u32 id; u16 kind; bytes data; }").messages["Blob"]
        self.assertEqual(m.size, 6)
        self.assertEqual(m.tail.name, "data")
        self.assertEqual(m.tail.offset, 6)
        self.assertEqual(m.tail.size, 0)

    def test_a_message_may_be_only_bytes_or_empty(self):
        s = tg.parse("message B { bytes all; } message E { }")
        self.assertEqual((s.messages["B"].size, s.messages["B"].tail.name), (0, "all"))
        self.assertEqual((s.messages["E"].size, s.messages["E"].fields), (0, []))

    def test_types_may_be_used_before_they_are_declared(self):
        s = tg.parse("service S { rpc f(Later) returns (Later); } message Later { u8 x; }")
        self.assertEqual(s.service("S").methods[0].req, "Later")

    def test_comments_and_positions(self):
        text = "/* a\n   block */ // line\n\tmessage\n  M { u8 x; } /* end */\n"
        self.assertIsNotNone(tg.parse(text).messages["M"])
        self.assertEqual(error_of("/* a\n b */ message M { u8 x }"),
                         "t.tern:2:24: expected ';', found '}'")

    def test_non_ascii_in_comments_is_fine(self):
        self.assertIsNotNone(tg.parse("// café ☕\nmessage M { u8 x; }"))

    def test_an_empty_file_declares_nothing(self):
        s = tg.parse("// nothing here\n")
        self.assertEqual((s.services, s.messages), ([], {}))

    def test_names_at_the_length_limit(self):
        name = "M" + "x" * 62
        self.assertIn(name, tg.parse(f"message {name} {{ u8 a; }}").messages)


class OnewayAndBatch(unittest.TestCase):
    TEXT = """\
service Features {
  rpc push(Frame) returns (bytes) oneway batch(max=256, wait_us=2000);
  rpc note(Frame) oneway;
  rpc score(Frame) returns (Score) batch(max=64, wait_us=500);
}
message Frame { f32 v[256]; }
message Score { f32 s; }
"""

    def test_kinds_and_batch_parameters(self):
        svc = tg.parse(self.TEXT).service("Features")
        m = {x.name: x for x in svc.methods}
        self.assertEqual((m["push"].kind, m["push"].batch, m["push"].resp),
                         ("oneway", (256, 2000), None))
        self.assertEqual((m["note"].kind, m["note"].batch), ("oneway", None))
        self.assertEqual((m["score"].kind, m["score"].batch, m["score"].resp),
                         ("batch", (64, 500), "Score"))

    def test_the_schema_text_names_what_changes_the_wire(self):
        text = tg.schema_text(tg.parse(self.TEXT), "Features")
        self.assertIn("method push oneway-batch Frame -\n", text)
        self.assertIn("method note oneway Frame -\n", text)
        self.assertIn("method score batch Frame Score\n", text)
        # batch sizes are the server's tuning, not the schema's
        other = self.TEXT.replace("max=256, wait_us=2000", "max=8, wait_us=1")
        self.assertEqual(tg.schema_hash(tg.parse(other), "Features"),
                         tg.schema_hash(tg.parse(self.TEXT), "Features"))
        # but one-way versus a call does
        called = self.TEXT.replace("rpc note(Frame) oneway;", "rpc note(Frame) returns (bytes);")
        self.assertNotEqual(tg.schema_hash(tg.parse(called), "Features"),
                            tg.schema_hash(tg.parse(self.TEXT), "Features"))

    def test_ids_do_not_depend_on_kind(self):
        svc = tg.parse(self.TEXT).service("Features")
        self.assertEqual({m.name: m.id for m in svc.methods},
                         {n: tg.method_id("Features", n) for n in ("push", "note", "score")})

    def test_generated_api(self):
        h, c = tg.generate(tg.parse(self.TEXT, "stream.tern"))[:2]
        for name in ("features_push_send", "features_push_send_wait",
                     "features_push_send_acquire", "features_push_send_commit",
                     "features_note_send", "features_score", "features_score_sync",
                     "typedef void (*features_push_handler)(struct tern_batch_item *items"):
            self.assertIn(name, h)
        self.assertIn("tern_register_batch(ctx, FEATURES_PUSH_ID, &features_push_batch_", c)
        self.assertIn("{sizeof(struct tern_batch_opts), 256u, 2000u, 1}", c)
        self.assertIn("tern_register_oneway(ctx, FEATURES_NOTE_ID", c)
        self.assertIn("{sizeof(struct tern_batch_opts), 64u, 500u, 0}", c)


class Errors(unittest.TestCase):
    def check(self, text, expected, **kw):
        self.assertEqual(error_of(text, **kw), expected)

    # ---- syntax
    def test_syntax_missing_paren(self):
        self.check("service S {\n  rpc f(bytes returns (bytes);\n}",
                   "t.tern:2:15: expected ')', found 'returns'")

    def test_syntax_missing_semicolon_after_method(self):
        self.check("service S {\n  rpc f(bytes) returns (bytes)\n}",
                   "t.tern:3:1: expected 'raw', 'inplace', 'deferred', 'oneway', "
                   "'batch(...)' or ';', found '}'")

    def test_syntax_misspelled_kind_gets_a_hint(self):
        self.check("service S { rpc f(bytes) returns (bytes) inplce; }",
                   "t.tern:1:42: expected 'raw', 'inplace', 'deferred', 'oneway', "
                   "'batch(...)' or ';', found name 'inplce' (did you mean 'inplace'?)")

    def test_syntax_unknown_top_level_word(self):
        self.check("servce S {}", "t.tern:1:1: expected 'service' or 'message', found name "
                   "'servce'")

    def test_syntax_end_of_file_inside_a_service(self):
        self.check("service S {\n  rpc f(bytes) returns (bytes);\n",
                   "t.tern:3:1: expected 'rpc' or '}', found end of file")

    def test_syntax_field_without_name(self):
        self.check("message M { u32; }", "t.tern:1:16: expected a field name, found ';'")

    def test_syntax_number_where_a_name_goes(self):
        self.check("message 7up { }", "t.tern:1:9: expected a message name, found number 7")

    def test_syntax_array_without_length(self):
        self.check("message M { u8 v[]; }",
                   "t.tern:1:18: expected an array length, found ']'")

    def test_syntax_returns_is_required(self):
        self.check("service S { rpc f(bytes) (bytes); }",
                   "t.tern:1:26: expected 'raw', 'inplace', 'deferred', 'oneway', "
                   "'batch(...)' or ';', found '('")
        self.check("service S { rpc f(bytes); }",
                   "t.tern:1:25: expected 'returns', found ';' (only one-way methods have "
                   "no reply)")

    # ---- one-way and batch methods
    def test_oneway_has_no_typed_reply(self):
        self.check("service S { rpc f(bytes) returns (R) oneway; }\nmessage R { u8 x; }",
                   "t.tern:1:35: one-way method 'f' has no reply: drop 'returns (...)'")

    def test_only_raw_and_oneway_methods_batch(self):
        self.check("service S { rpc f(bytes) returns (bytes) inplace batch(max=4, wait_us=1); }",
                   "t.tern:1:50: a inplace method cannot be batched (batch methods are raw "
                   "or oneway)")
        self.check("service S { rpc f(bytes) returns (bytes) deferred batch(max=4, wait_us=1); }",
                   "t.tern:1:51: a deferred method cannot be batched (batch methods are raw "
                   "or oneway)")

    def test_batch_parameters_are_checked(self):
        self.check("service S { rpc f(bytes) oneway batch(max=0, wait_us=1); }",
                   "t.tern:1:43: batch max must be 1..65536")
        self.check("service S { rpc f(bytes) oneway batch(max=65537, wait_us=1); }",
                   "t.tern:1:43: batch max must be 1..65536")
        self.check("service S { rpc f(bytes) oneway batch(wait_us=1, max=2); }",
                   "t.tern:1:39: expected 'max', found name 'wait_us'")
        self.check("service S { rpc f(bytes) oneway batch(max=2 wait_us=1); }",
                   "t.tern:1:45: expected ',', found name 'wait_us'")
        self.check("service S { rpc f(bytes) oneway batch(max=2, wait_us=x); }",
                   "t.tern:1:54: expected a number for wait_us, found name 'x'")

    def test_lexical_unexpected_character(self):
        self.check("message M { u8 $x; }", "t.tern:1:16: unexpected character '$'")
        self.check("message Mé { }", "t.tern:1:10: unexpected character 'é' (U+00E9)")

    def test_lexical_unterminated_comment(self):
        self.check("message M { }\n  /* never closed\n", "t.tern:2:3: unterminated comment")

    def test_lexical_bad_utf8(self):
        with tempfile.NamedTemporaryFile("wb", suffix=".tern", delete=False) as f:
            f.write(b"message M {\n  u8 a; \xff\xfe }\n")
        try:
            with self.assertRaises(tg.IdlError) as cm:
                tg.parse_file(f.name)
            self.assertEqual(str(cm.exception), f"{f.name}:2:9: not valid UTF-8")
        finally:
            os.unlink(f.name)

    # ---- types
    def test_unknown_request_type_suggests_a_message(self):
        self.check("service Calc {\n  rpc add(AddRq) returns (AddResp);\n}\n"
                   "message AddReq { i64 a; }\nmessage AddResp { i64 s; }",
                   "t.tern:2:11: unknown type 'AddRq' (did you mean 'AddReq'?)")

    def test_unknown_reply_type(self):
        self.check("service S { rpc f(bytes) returns (Nope); }",
                   "t.tern:1:35: unknown type 'Nope'")

    def test_unknown_field_type_with_a_c_spelling(self):
        self.check("message M {\n  double x;\n}",
                   "t.tern:2:3: unknown type 'double' (tern calls it 'f64')")
        self.check("message M { uint32_t x; }",
                   "t.tern:1:13: unknown type 'uint32_t' (tern calls it 'u32')")
        self.check("message M { string s; }",
                   "t.tern:1:13: unknown type 'string' (tern calls it 'bytes')")

    def test_unknown_field_type_with_a_typo(self):
        self.check("message M { i46 x; }",
                   "t.tern:1:13: unknown type 'i46' (did you mean 'i64'?)")

    def test_a_message_is_not_a_field_type(self):
        self.check("message A { u8 x; }\nmessage B { A inner; }",
                   "t.tern:2:13: message 'A' cannot be a field type: fields are scalars, "
                   "arrays of scalars, or one trailing bytes")

    def test_keywords_are_not_types(self):
        self.check("service S { rpc f(rpc) returns (bytes); }",
                   "t.tern:1:19: expected a message name or 'bytes', found 'rpc'")
        self.check("service S { rpc f(u32) returns (bytes); }",
                   "t.tern:1:19: expected a message name or 'bytes', found 'u32'")

    def test_the_first_problem_in_the_file_is_reported(self):
        self.check("message M { dbl x; }\nservice S { rpc f(Nope) returns (bytes); }",
                   "t.tern:1:13: unknown type 'dbl'")

    # ---- duplicates
    def test_duplicate_method(self):
        self.check("service Calc {\n  rpc add(bytes) returns (bytes);\n"
                   "  rpc add(bytes) returns (bytes) inplace;\n}",
                   "t.tern:3:7: duplicate method 'add' in service Calc (first declared at 2:7)")

    def test_duplicate_message(self):
        self.check("message AddReq { i64 a; }\n\nmessage AddReq { i64 b; }",
                   "t.tern:3:9: duplicate message 'AddReq' (first declared at 1:9)")

    def test_duplicate_service(self):
        self.check("service S { rpc f(bytes) returns (bytes); }\n"
                   "service S { rpc g(bytes) returns (bytes); }",
                   "t.tern:2:9: duplicate service 'S' (first declared at 1:9)")

    def test_duplicate_field(self):
        self.check("message M { u8 a; u16 a; }",
                   "t.tern:1:23: duplicate field 'a' in message M (first declared at 1:16)")

    # ---- reserved names
    def test_reserved_c_keyword(self):
        self.check("message M { u8 int; }", "t.tern:1:16: 'int' is reserved: a C keyword")
        self.check("message M { u8 bool; }", "t.tern:1:16: 'bool' is reserved: a C keyword")
        self.check("service switch { rpc f(bytes) returns (bytes); }",
                   "t.tern:1:9: 'switch' is reserved: a C keyword")

    def test_reserved_cxx_and_python_keywords(self):
        self.check("message M { u8 class; }", "t.tern:1:16: 'class' is reserved: a C++ keyword")
        self.check("service S { rpc from(bytes) returns (bytes); }",
                   "t.tern:1:17: 'from' is reserved: a Python keyword")

    def test_reserved_idl_keyword(self):
        self.check("service S { rpc bytes(bytes) returns (bytes); }",
                   "t.tern:1:17: 'bytes' is reserved: an IDL keyword")
        self.check("message M { u8 deferred; }",
                   "t.tern:1:16: 'deferred' is reserved: an IDL keyword")

    def test_reserved_tern_prefix_in_any_case(self):
        why = "names starting with tern_ belong to tern"
        self.check("service tern_stats { rpc f(bytes) returns (bytes); }",
                   f"t.tern:1:9: 'tern_stats' is reserved: {why}")
        self.check("message TERN_Msg { u8 a; }", f"t.tern:1:9: 'TERN_Msg' is reserved: {why}")
        self.check("service Tern { rpc f(bytes) returns (bytes); }",
                   f"t.tern:1:9: 'Tern' is reserved: {why}")
        self.assertIsNone(error_of("message Ternary { u8 a; }"))

    def test_reserved_underscores(self):
        why = "names may not start or end with '_' (generated code uses those)"
        self.check("message M { u8 _x; }", f"t.tern:1:16: '_x' is reserved: {why}")
        self.check("message M { u8 user_; }", f"t.tern:1:16: 'user_' is reserved: {why}")

    def test_reserved_macros(self):
        self.check("message M { i32 errno; }",
                   "t.tern:1:17: 'errno' is reserved: a macro in the C headers generated code "
                   "includes")

    def test_names_longer_than_63(self):
        self.check("message M" + "x" * 63 + " { }",
                   "t.tern:1:9: name 'Mxxxxxxxxxxxxxxxxxxx...' is longer than 63 characters")

    def test_names_that_generate_the_same_c_identifier(self):
        self.check("service Calc {\n  rpc add(bytes) returns (bytes);\n"
                   "  rpc add_sync(bytes) returns (bytes);\n}",
                   "t.tern:3:7: method 'add_sync' of service Calc would generate the C name "
                   "calc_add_sync, which method 'add' of service Calc (2:7) already generates; "
                   "rename one of them")
        self.check("service S {\n  rpc Add(bytes) returns (bytes);\n"
                   "  rpc add(bytes) returns (bytes);\n}",
                   "t.tern:3:7: method 'add' of service S would generate the C name S_ADD_ID, "
                   "which method 'Add' of service S (2:7) already generates; rename one of them")
        self.check("service Calc { rpc f(bytes) returns (bytes); }\n"
                   "service calc { rpc g(bytes) returns (bytes); }",
                   "t.tern:2:9: service 'calc' would generate the C name CALC_SERVICE_NAME, "
                   "which service 'Calc' (1:9) already generates; rename one of them")

    def test_message_names_collide_through_the_file_prefix(self):
        text = "service Calc { rpc add(bytes) returns (bytes); }\nmessage add { u8 x; }"
        self.check(text, "calc.tern:2:9: message 'add' would generate the C name calc_add, "
                   "which method 'add' of service Calc (1:20) already generates; rename one "
                   "of them", filename="calc.tern")
        self.assertIsNone(error_of(text, filename="calc.tern", prefix="calcmsg"))

    # ---- trailing bytes, arrays, sizes
    def test_bytes_must_be_last(self):
        self.check("message Blob {\n  bytes data;\n  u32 id;\n}",
                   "t.tern:2:9: bytes field 'data' must be the last field of message Blob")

    def test_at_most_one_bytes(self):
        self.check("message Blob { bytes a; bytes b; }",
                   "t.tern:1:31: message Blob already has a bytes field 'a' (1:22); a message "
                   "has at most one, as its last field")

    def test_bytes_is_not_an_array(self):
        self.check("message M { bytes x[4]; }",
                   "t.tern:1:20: bytes field 'x' cannot be an array (a fixed array of bytes is "
                   "u8 x[N])")

    def test_array_length_zero(self):
        self.check("message M { u8 x[0]; }", "t.tern:1:18: an array length must be at least 1")

    def test_a_number_longer_than_any_the_idl_takes_is_a_positioned_error(self):
        # More than 4300 digits used to escape as Python's ValueError.
        self.check("message M { u8 x[" + "9" * 5000 + "]; }",
                   "t.tern:1:18: number 999999999999... has 5000 digits; numbers here have at "
                   "most 20")
        self.check("message M { u8 x[" + "1" * 21 + "]; }",
                   "t.tern:1:18: number 111111111111... has 21 digits; numbers here have at "
                   "most 20")
        # 20 digits is still a number: too large a message, said where it is
        self.check("message M { u8 x[" + "9" * 20 + "]; }",
                   "t.tern:1:9: message M is 99999999999999999999 bytes; a message can be at "
                   "most 1048544")

    def test_message_too_large(self):
        self.check("message Big { u8 a[1048544]; }", None)
        self.check("message Big { u8 a[1048544]; u8 b; }",
                   "t.tern:1:9: message Big is 1048545 bytes; a message can be at most 1048544")

    # ---- services and ids
    def test_a_service_needs_a_method(self):
        self.check("service Calc { }", "t.tern:1:9: service 'Calc' declares no methods")

    def test_colliding_method_ids_are_refused(self):
        # Found by search: FNV-1a 32 maps both names to 0xfe56bf88.
        self.assertEqual(tg.method_id("S", "macoetix"), tg.method_id("S", "mszfaegw"))
        self.check("service S {\n  rpc macoetix(bytes) returns (bytes);\n"
                   "  rpc mszfaegw(bytes) returns (bytes);\n}",
                   "t.tern:3:7: method id 0xfe56bf88 of S.mszfaegw collides with S.macoetix "
                   "(2:7); rename one of them")


class Hashes(unittest.TestCase):
    def test_fnv1a_test_vectors(self):
        for data, h32, h64 in [(b"", 0x811C9DC5, 0xCBF29CE484222325),
                               (b"a", 0xE40C292C, 0xAF63DC4C8601EC8C),
                               (b"foobar", 0xBF9CF968, 0x85944171F73967E8)]:
            self.assertEqual(tg.fnv1a_32(data), h32)
            self.assertEqual(tg.fnv1a_64(data), h64)

    def test_method_id_is_fnv1a_32_of_service_dot_method(self):
        self.assertEqual(tg.method_id("Calc", "add"), 0xBDAF910D)
        self.assertEqual(tg.method_id("Calc", "add"), tg.fnv1a_32(b"Calc.add"))
        self.assertEqual(tg.method_id("Calc", "stats"), 0x9B0C8355)

    def test_method_ids_in_tern_range_are_moved_by_the_top_bit(self):
        # Found by search: "Calc.m15210094" hashes to 0xffffff97.
        self.assertEqual(tg.fnv1a_32(b"Calc.m15210094"), 0xFFFFFF97)
        self.assertEqual(tg.method_id("Calc", "m15210094"), 0x7FFFFF97)

    def test_schema_text_of_the_issue_example(self):
        s = tg.parse(ISSUE_CALC)
        self.assertEqual(tg.schema_text(s, "Calc"),
                         "tern-schema 1\n"
                         "service Calc\n"
                         "method add raw AddReq AddResp\n"
                         "method echo inplace bytes bytes\n"
                         "method stats deferred bytes bytes\n"
                         "message AddReq 16\n"
                         "field a i64 0 0\n"
                         "field b i64 0 8\n"
                         "message AddResp 8\n"
                         "field sum i64 0 0\n")
        self.assertEqual(tg.schema_hash(s, "Calc"),
                         tg.fnv1a_64(tg.schema_text(s, "Calc").encode()))
        self.assertEqual(tg.schema_hash(s, "Calc"), 0x1CDA670D390A9378)

    def test_schema_text_sorts_by_bytes_and_writes_arrays_and_tails(self):
        s = tg.parse("service S {\n"
                     "  rpc b(Z) returns (bytes) deferred;\n"
                     "  rpc B(a) returns (Z);\n}\n"
                     "message a { u8 x[3]; bytes rest; }\nmessage Z { f32 v; }\n"
                     "message Unused { u8 q; }")
        self.assertEqual(tg.schema_text(s, "S"),
                         "tern-schema 1\nservice S\n"
                         "method B raw a Z\nmethod b deferred Z bytes\n"
                         "message Z 4\nfield v f32 0 0\n"
                         "message a 3\nfield x u8 3 0\nfield rest bytes 0 3\n")

    def test_the_example_in_idl_md_is_what_tern_gen_computes(self):
        with open(os.path.join(SRC, "docs", "idl.md")) as f:
            doc = f.read()
        s = tg.parse_file(os.path.join(SRC, "examples", "calc", "calc.tern"))
        text = tg.schema_text(s, "Calc")
        self.assertIn("```\n" + text + "```", doc)
        self.assertIn(f"`CALC_SCHEMA_HASH` is `0x{tg.schema_hash(s, 'Calc'):016x}`", doc)
        self.assertIn(f"`Calc.add` is `0x{tg.method_id('Calc', 'add'):08x}`", doc)


class Layout(unittest.TestCase):
    """schema_layout(): what the service check compares (src/wire.h, docs/idl.md)."""

    def test_the_layout_of_the_issue_example_byte_by_byte(self):
        s = tg.parse(ISSUE_CALC)
        add, echo, stats = (tg.method_id("Calc", m) for m in ("add", "echo", "stats"))
        want = bytes([1]) + struct.pack("<H", 2)
        want += b"\x06AddReq" + struct.pack("<H", 2)
        want += b"\x01a" + struct.pack("<BI", 8, 0) + b"\x01b" + struct.pack("<BI", 8, 0)
        want += b"\x07AddResp" + struct.pack("<H", 1) + b"\x03sum" + struct.pack("<BI", 8, 0)
        methods = sorted([(add, b"\x03add", 1, 0, 1), (echo, b"\x04echo", 2, 0xFFFF, 0xFFFF),
                          (stats, b"\x05stats", 3, 0xFFFF, 0xFFFF)])
        want += struct.pack("<H", 3)
        for mid, name, kind, req, resp in methods:
            want += struct.pack("<I", mid) + name + struct.pack("<BHH", kind, req, resp)
        self.assertEqual(tg.schema_layout(s, "Calc"), want)

    def test_kinds_tails_arrays_and_one_way_replies(self):
        s = tg.parse("service S {\n"
                     "  rpc f(M) oneway;\n"
                     "  rpc g(M) oneway batch(max=2, wait_us=1);\n"
                     "  rpc h(bytes) returns (M) batch(max=2, wait_us=1);\n"
                     "}\nmessage M { u16 x[3]; bytes rest; }\n")
        lay = tg.schema_layout(s, "S")
        self.assertEqual(lay[:7], b"\x01\x01\x00\x01M\x02\x00")  # format, 1 message M, 2 fields
        m = lay.index(b"\x01x")
        self.assertEqual(lay[m + 2:m + 7], struct.pack("<BI", 2, 3))  # u16[3]
        r = lay.index(b"\x04rest")
        self.assertEqual(lay[r + 5:r + 10], struct.pack("<BI", 11, 0))  # bytes
        kinds = {}
        for name in ("f", "g", "h"):
            i = lay.index(b"\x01" + name.encode(), r + 10)
            kinds[name] = struct.unpack_from("<BHH", lay, i + 2)
        self.assertEqual(kinds, {"f": (4, 0, 0xFFFE), "g": (6, 0, 0xFFFE),
                                 "h": (5, 0xFFFF, 0)})

    def test_methods_ascend_by_id_and_only_used_messages_count(self):
        s = tg.parse(ISSUE_CALC + "message Unused { u8 q; }\n")
        lay = tg.schema_layout(s, "Calc")
        self.assertNotIn(b"Unused", lay)
        at = sorted(lay.index(n) for n in (b"\x03add", b"\x04echo", b"\x05stats"))
        ids = [struct.unpack_from("<I", lay, i - 4)[0] for i in at]
        self.assertEqual(ids, sorted(ids))
        self.assertEqual(ids, sorted(tg.method_id("Calc", m) for m in ("add", "echo", "stats")))

    def test_the_generated_header_carries_it(self):
        s = tg.parse(ISSUE_CALC, "calc.tern")
        h = tg.generate(s)[0]
        lay = tg.schema_layout(s, "Calc")
        self.assertIn(f"static const unsigned char calc_layout_[{len(lay)}] = {{", h)
        self.assertIn("CALC_SCHEMA_HASH, calc_layout_, sizeof(calc_layout_)}", h)
        body = h[h.index("calc_layout_["):h.index("};", h.index("calc_layout_["))]
        self.assertEqual(bytes(int(x, 16) for x in re.findall(r"0x([0-9a-f]{2}),", body)), lay)

    def test_limits_are_positioned_errors(self):
        many = "service S {\n" + "".join(f"  rpc m{i}(M{i}) returns (bytes);\n"
                                          for i in range(257)) + "}\n"
        many += "".join(f"message M{i} {{ u8 x; }}\n" for i in range(257))
        with self.assertRaises(tg.IdlError) as e:
            tg.parse(many, "many.tern")
        self.assertEqual(str(e.exception), "many.tern:1:9: service S uses 257 messages; "
                         "a service can use at most 256")
        wide = "message W {\n" + "".join(f"  u8 v{i};\n" for i in range(65536)) + "}\n"
        with self.assertRaises(tg.IdlError) as e:
            tg.parse(wide, "wide.tern")
        self.assertEqual(str(e.exception), "wide.tern:1:9: message W has 65536 fields; "
                         "a message can have at most 65535")

    def test_describe_prints_it(self):
        d = tg.describe(tg.parse(ISSUE_CALC))
        self.assertEqual(bytes.fromhex(d["services"][0]["layout"]),
                         tg.schema_layout(tg.parse(ISSUE_CALC), "Calc"))


class Stability(unittest.TestCase):
    BASE = ISSUE_CALC + """
service Other { rpc ping(AddReq) returns (bytes); }
"""

    def ids(self, schema):
        return {(m.service, m.name): m.id for svc in schema.services for m in svc.methods}

    def hashes(self, schema):
        return {svc.name: tg.schema_hash(schema, svc) for svc in schema.services}

    def test_adding_a_method_keeps_every_other_id_and_service(self):
        a = tg.parse(self.BASE)
        b = tg.parse(self.BASE.replace(
            "  rpc add(AddReq)", "  rpc mul(AddReq) returns (AddResp);\n  rpc add(AddReq)"))
        ida, idb = self.ids(a), self.ids(b)
        self.assertEqual(len(idb), len(ida) + 1)
        for k, v in ida.items():
            self.assertEqual(idb[k], v, k)
        ha, hb = self.hashes(a), self.hashes(b)
        self.assertNotEqual(ha["Calc"], hb["Calc"])
        self.assertEqual(ha["Other"], hb["Other"])

    def test_the_generated_ids_of_existing_methods_do_not_move(self):
        a = tg.generate(tg.parse(self.BASE, "calc.tern"))[0]
        b = tg.generate(tg.parse(self.BASE.replace(
            "service Calc {", "service Calc {\n  rpc aaa(bytes) returns (bytes);"),
            "calc.tern"))[0]
        for name in ("CALC_ADD_ID", "CALC_ECHO_ID", "CALC_STATS_ID", "OTHER_PING_ID"):
            line = re.search(rf"#define {name} .*", a).group()
            self.assertIn(line, b)

    def test_what_does_not_change_the_schema_hash(self):
        h = self.hashes(tg.parse(self.BASE))
        reordered = """
message AddResp { i64 sum; }   // messages swapped, methods reordered, comments
service Other { rpc ping(AddReq) returns (bytes) raw; }
message AddReq { i64 a; i64 b; }
service Calc {
  rpc stats(bytes) returns (bytes) deferred;
  rpc echo(bytes) returns (bytes) inplace;
  /* the default kind, written out */
  rpc add(AddReq) returns (AddResp) raw;
}
message Unused { u8 nobody_uses_this; }
"""
        self.assertEqual(self.hashes(tg.parse(reordered)), h)

    def test_what_changes_the_schema_hash(self):
        base = self.hashes(tg.parse(self.BASE))["Calc"]
        for old, new in [("i64 sum;", "i64 total;"),            # field renamed
                         ("i64 sum;", "u64 sum;"),              # retyped
                         ("i64 sum;", "i64 sum[2];"),           # made an array
                         ("i64 a; i64 b;", "i64 b; i64 a;"),    # fields moved
                         ("i64 sum;", "i64 sum; bytes more;"),  # a tail added
                         ("(bytes) inplace", "(bytes)"),        # kind changed
                         ("echo(bytes)", "echo(AddReq)"),       # request type
                         ("rpc echo", "rpc echo2"),             # method renamed
                         ("AddResp", "SumResp")]:               # message renamed
            changed = self.hashes(tg.parse(self.BASE.replace(old, new)))["Calc"]
            self.assertNotEqual(changed, base, f"{old!r} -> {new!r}")


class CommandLine(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="tern-gen-test.")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def write(self, name, text):
        p = os.path.join(self.tmp, name)
        with open(p, "w") as f:
            f.write(text)
        return p

    def run_gen(self, *args):
        return subprocess.run([TERN_GEN, *args], capture_output=True, text=True, timeout=60)

    def test_writes_header_and_source_into_the_outdir(self):
        src = self.write("calc.tern", ISSUE_CALC)
        out = os.path.join(self.tmp, "out")
        os.mkdir(out)
        p = self.run_gen("-o", out, src)
        self.assertEqual((p.returncode, p.stderr), (0, ""))
        self.assertEqual(sorted(os.listdir(out)), ["calc.tern.c", "calc.tern.h"])
        with open(os.path.join(out, "calc.tern.c")) as f:
            self.assertIn('#include "calc.tern.h"', f.read())

    def test_a_missing_outdir_is_made(self):
        src = self.write("calc.tern", ISSUE_CALC)
        out = os.path.join(self.tmp, "not", "yet")
        p = self.run_gen("-o", out, src)
        self.assertEqual((p.returncode, p.stderr), (0, ""))
        self.assertEqual(sorted(os.listdir(out)), ["calc.tern.c", "calc.tern.h"])

    def test_header_and_source_paths(self):
        src = self.write("calc.tern", ISSUE_CALC)
        h, c = os.path.join(self.tmp, "x.h"), os.path.join(self.tmp, "y.c")
        self.assertEqual(self.run_gen("--header", h, "--source", c, src).returncode, 0)
        with open(c) as f:
            self.assertIn('#include "x.h"', f.read())

    def test_unchanged_output_is_not_rewritten(self):
        src = self.write("calc.tern", ISSUE_CALC)
        self.run_gen("-o", self.tmp, src)
        h = os.path.join(self.tmp, "calc.tern.h")
        os.utime(h, (1, 1))
        self.run_gen("-o", self.tmp, src)
        self.assertEqual(os.stat(h).st_mtime, 1)

    def test_a_bad_file_exits_1_with_one_line(self):
        src = self.write("bad.tern", "service S {\n  rpc f(Nope) returns (bytes);\n}\n")
        p = self.run_gen("-o", self.tmp, src)
        self.assertEqual(p.returncode, 1)
        self.assertEqual(p.stderr, f"{src}:2:9: unknown type 'Nope'\n")
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "bad.tern.h")))

    def test_usage_errors_and_unreadable_files_exit_2(self):
        src = self.write("calc.tern", ISSUE_CALC)
        self.assertEqual(self.run_gen("--header", "x.h", src).returncode, 2)
        self.assertEqual(self.run_gen().returncode, 2)
        p = self.run_gen(os.path.join(self.tmp, "missing.tern"))
        self.assertEqual(p.returncode, 2)
        self.assertIn("cannot read", p.stderr)

    def test_a_prefix_that_is_no_c_identifier(self):
        src = self.write("9lives.tern", "message M { u8 a; }")
        p = self.run_gen("--check", src)
        self.assertEqual(p.returncode, 1)
        self.assertIn("the C prefix '9lives' is not a lowercase C identifier", p.stderr)
        self.assertEqual(self.run_gen("--check", "--prefix", "lives", src).returncode, 0)
        p = self.run_gen("--check", "--prefix", "tern", src)
        self.assertIn("the C prefix 'tern' is reserved", p.stderr)

    def test_check_and_describe(self):
        src = self.write("calc.tern", ISSUE_CALC)
        p = self.run_gen("--check", src)
        self.assertEqual((p.returncode, p.stdout, p.stderr), (0, "", ""))
        d = json.loads(self.run_gen("--describe", src).stdout)
        calc = d["services"][0]
        self.assertEqual(calc["name"], "Calc")
        self.assertEqual(calc["schema_hash"], "0x1cda670d390a9378")
        self.assertEqual([(m["name"], m["id"], m["kind"]) for m in calc["methods"]],
                         [("add", "0xbdaf910d", "raw"), ("echo", "0xc75860cf", "inplace"),
                          ("stats", "0x9b0c8355", "deferred")])
        self.assertEqual(d["messages"][0]["fields"][1],
                         {"name": "b", "type": "i64", "count": 0, "offset": 8, "size": 8})
        self.assertEqual(d["prefix"], "calc")

    def test_the_header_carries_ids_hash_and_schema_text(self):
        src = self.write("calc.tern", ISSUE_CALC)
        self.run_gen("-o", self.tmp, src)
        with open(os.path.join(self.tmp, "calc.tern.h")) as f:
            h = f.read()
        self.assertIn("#define CALC_ADD_ID UINT32_C(0xbdaf910d)", h)
        self.assertIn("#define CALC_SCHEMA_HASH UINT64_C(0x1cda670d390a9378)", h)
        self.assertIn('\t"method echo inplace bytes bytes\\n" \\\n', h)
        self.assertIn('static_assert(offsetof(calc_AddReq, b) == 8, "calc_AddReq.b at 8");', h)


def compiler(names):
    for n in names:
        path = shutil.which(n)
        if path:
            return path
    return None


class GeneratedCode(unittest.TestCase):
    """The generated C under stricter flags than the build uses, and as a
    user compiles it: no -D_GNU_SOURCE or other feature macro, so nothing a
    public header includes may need one."""

    FLAGS = ["-Wall", "-Wextra", "-Werror", "-Wpedantic", "-Wconversion", "-Wshadow",
             "-Wstrict-prototypes", "-Wmissing-prototypes", "-Wcast-function-type"]

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="tern-gen-cc.")
        for f in ("calc.tern", "compat_v2.tern"):
            subprocess.run([TERN_GEN, "-o", cls.tmp, os.path.join(SRC, "tests", "gen", f)],
                           check=True)
        cls.inc = os.path.join(SRC, "include")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def compile(self, cc, args):
        p = subprocess.run([cc, *args, "-I", self.inc, "-I", self.tmp, "-c", "-o", os.devnull],
                           capture_output=True, text=True, cwd=self.tmp, timeout=300)
        self.assertEqual(p.returncode, 0, p.stderr)

    def test_c11_and_c2x_pedantic(self):
        cc = compiler([os.environ.get("CC", ""), "cc", "gcc", "clang"])
        if not cc:
            self.skipTest("no C compiler")
        for std in ("c11", "c2x"):
            for src in ("calc.tern.c", "compat_v2.tern.c"):
                self.compile(cc, [f"-std={std}", *self.FLAGS, src])

    def test_the_header_is_cxx11(self):
        cxx = compiler(["c++", "g++", "clang++"])
        if not cxx:
            self.skipTest("no C++ compiler")
        with open(os.path.join(self.tmp, "use.cc"), "w") as f:
            f.write('#include "calc.tern.h"\n'
                    "int use(void);\n"
                    "int use(void) { calc_AddReq r; calc_AddReq_set_a(&r, 1);\n"
                    "  return (int)calc_AddReq_get_a(&r); }\n")
        self.compile(cxx, ["-std=c++11", "-Wall", "-Wextra", "-Werror", "-Wpedantic", "use.cc"])

    def test_each_public_header_alone_is_strict_c11(self):
        cc = compiler([os.environ.get("CC", ""), "cc", "gcc", "clang"])
        if not cc:
            self.skipTest("no C compiler")
        for h in ("tern.h", "tern/gen.h", "tern/rnr.h"):
            src = os.path.join(self.tmp, "alone.c")
            with open(src, "w") as f:
                f.write(f"#include <{h}>\nint alone(void);\nint alone(void) {{ return 0; }}\n")
            self.compile(cc, ["-std=c11", *self.FLAGS, "alone.c"])

    def test_the_readme_example_is_strict_c11(self):
        cc = compiler([os.environ.get("CC", ""), "cc", "gcc", "clang"])
        if not cc:
            self.skipTest("no C compiler")
        with open(os.path.join(SRC, "README.md")) as f:
            readme = f.read()
        example = readme[readme.index("## An example"):]
        code = re.search(r"```c\n(.*?)```", example, re.S).group(1)
        with open(os.path.join(self.tmp, "example.c"), "w") as f:
            f.write(code)
        # It is a fragment: serve() and call() are what a user's main calls.
        self.compile(cc, ["-std=c11", *[f for f in self.FLAGS if f != "-Wmissing-prototypes"],
                          "example.c"])


class Docs(unittest.TestCase):
    """Code quoted in examples/README.md is code that exists."""

    def test_readme_excerpts_are_in_their_files(self):
        with open(os.path.join(SRC, "examples", "README.md")) as f:
            readme = f.read()
        blocks = re.findall(r"```\w*\n(.*?)```", readme, re.S)
        checked = 0
        for block in blocks:
            lines = block.split("\n")
            m = re.match(r"(?://|#) ((?:examples|tests)/\S+)", lines[0])
            if not m:
                continue
            with open(os.path.join(SRC, m.group(1))) as f:
                text = f.read().split("\n")
            at = 0
            for line in lines[1:]:
                if not line.strip() or line.strip() == "...":
                    continue
                while at < len(text) and text[at] != line:
                    at += 1
                self.assertLess(at, len(text), f"{m.group(1)}: not found in order: {line!r}")
                at += 1
            checked += 1
        self.assertGreaterEqual(checked, 7)


def main():
    global TERN_GEN, SRC, tg
    if len(sys.argv) < 3 or not os.path.isfile(sys.argv[1]):
        print(__doc__, file=sys.stderr)
        return 2
    TERN_GEN = os.path.abspath(sys.argv.pop(1))
    SRC = os.path.abspath(sys.argv.pop(1))
    tg = load(TERN_GEN)
    return unittest_main.run(__name__)


if __name__ == "__main__":
    sys.exit(main())
