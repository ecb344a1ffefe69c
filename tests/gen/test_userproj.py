#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Install tern into a temporary prefix and use it the way a user does.

usage: test_userproj.py TERN_SOURCE_DIR

What a user does: configure tern with --prefix and nothing else (the whole
tree, tests included, must build with the defaults), `meson install`, then
build examples/calc as their own meson project (tests/gen/userproj/) under
strict C11 (-std=c11 -Wpedantic, no feature macro of ours), finding tern
through pkg-config (`dependency('tern')`) and running the installed
tern-gen named by tern.pc.  The pair is run over tcp:// (and rdma:// when
there is a device).  The installed programs (tern-rnr, tern-gen,
tern-rnr-watch) and the Python package are run with a clean environment
(env -i PATH=/usr/bin:/bin): no LD_LIBRARY_PATH, so they must find libtern
through their own run path.  A program is also linked against the static
libtern.a with what `pkg-config --static` lists.  Runs on the host (suite
unit).  Standard library only.
"""
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run_example  # noqa: E402
import unittest_main  # noqa: E402

SRC = None
CLEAN_ENV = {"PATH": "/usr/bin:/bin"}


def run(argv, env=None, cwd=None):
    p = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd, timeout=900)
    if p.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({p.returncode}):\n"
                             f"{p.stdout[-3000:]}{p.stderr[-3000:]}")
    return p.stdout


def clean(argv, **kw):
    """Run an installed program as a user's shell would, with nothing of ours set."""
    return subprocess.run(argv, capture_output=True, text=True, env=dict(CLEAN_ENV, **kw),
                          timeout=120)


class UserProject(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        # "_x_": scdoc markup in the prefix, which the man pages must show as is
        cls.tmp = tempfile.mkdtemp(prefix="tern-userproj._x_")
        cls.prefix = os.path.join(cls.tmp, "prefix")
        cls.build = os.path.join(cls.tmp, "tern-build")
        # Exactly what a user types: the defaults, the whole tree (tests
        # included), no sanitizer, no -Werror.  What the compiler said is
        # kept for the test that no default build warns.
        run(["meson", "setup", cls.build, SRC, f"--prefix={cls.prefix}"])
        cls.compile_log = run(["ninja", "-C", cls.build])
        run(["meson", "install", "-C", cls.build, "--quiet"])
        pcs = glob.glob(os.path.join(cls.prefix, "lib*", "**", "tern.pc"), recursive=True)
        cls.pc = pcs[0] if pcs else None
        cls.libdir = os.path.dirname(os.path.dirname(cls.pc)) if cls.pc else None
        cls.env = dict(os.environ, PKG_CONFIG_PATH=os.path.dirname(cls.pc) if cls.pc else "")
        cls.env.pop("LD_LIBRARY_PATH", None)
        cls.bin = os.path.join(cls.prefix, "bin")
        with open(os.path.join(cls.build, "meson-info", "intro-buildoptions.json")) as f:
            opts = {o["name"]: o["value"] for o in json.load(f)}
        cls.python = opts.get("python") != "disabled" and bool(
            glob.glob(os.path.join(cls.build, "python", "tern", "_tern*.so")))
        sites = glob.glob(os.path.join(cls.prefix, "lib*", "**", "tern", "__init__.py"),
                          recursive=True)
        cls.site = os.path.dirname(os.path.dirname(sites[0])) if sites else None

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_a_default_build_of_the_whole_tree_warns_about_nothing(self):
        warnings = [line for line in self.compile_log.splitlines() if "warning:" in line]
        self.assertEqual(warnings, [])

    def test_install_has_the_libraries_headers_programs_and_pc(self):
        self.assertIsNotNone(self.pc, "tern.pc was not installed")
        for rel in ("include/tern.h", "include/tern/gen.h", "include/tern/rnr.h",
                    "include/tern/transport.h"):
            self.assertTrue(os.path.isfile(os.path.join(self.prefix, rel)), rel)
        for prog in ("tern-gen", "tern-rnr"):
            self.assertTrue(os.access(os.path.join(self.bin, prog), os.X_OK), prog)
        self.assertTrue(glob.glob(os.path.join(self.libdir, "libtern.so*")))
        self.assertTrue(os.path.isfile(os.path.join(self.libdir, "libtern.a")),
                        "no static libtern.a")

    def test_pkg_config_names_the_installed_tern_gen(self):
        gen = run(["pkg-config", "--variable=tern_gen", "tern"], env=self.env).strip()
        self.assertEqual(gen, os.path.join(self.bin, "tern-gen"))
        self.assertEqual(run([gen, "--version"]).strip(), "tern-gen 0.1.0")
        cflags = run(["pkg-config", "--cflags", "tern"], env=self.env)
        self.assertIn(f"-I{self.prefix}/include", cflags)
        libs = run(["pkg-config", "--libs", "tern"], env=self.env).split()
        self.assertIn("-ltern", libs)
        # tern.h does not include uv.h: libuv is libtern's own business,
        # needed only to link it statically.
        self.assertNotIn("-luv", libs)
        static = run(["pkg-config", "--static", "--libs", "tern"], env=self.env).split()
        for lib in ("-ltern", "-libverbs", "-lrdmacm", "-luv"):
            self.assertIn(lib, static)

    def user_project(self):
        user = os.path.join(self.tmp, "user")
        build = os.path.join(user, "build")
        if not os.path.isdir(build):
            os.makedirs(user)
            for f in ("calc.tern", "server.c", "client.c"):
                shutil.copy(os.path.join(SRC, "examples", "calc", f), user)
            shutil.copy(os.path.join(SRC, "tests", "gen", "userproj", "meson.build"), user)
            run(["meson", "setup", build, user], env=self.env)
            run(["meson", "compile", "-C", build], env=self.env)
        return build

    def test_user_project_builds_as_strict_c11(self):
        build = self.user_project()
        with open(os.path.join(build, "compile_commands.json")) as f:
            commands = f.read()
        self.assertIn("-std=c11", commands)
        self.assertIn("-Wpedantic", commands)
        self.assertNotIn("-std=gnu", commands)
        self.assertNotIn("_GNU_SOURCE", commands)
        # The installed tern-gen made the code, not the one in the tree.
        with open(os.path.join(build, "build.ninja")) as f:
            self.assertIn(os.path.join(self.bin, "tern-gen"), f.read())

    def test_user_project_runs_over_tcp(self):
        build = self.user_project()
        server = os.path.join(build, "calc_server")
        client = os.path.join(build, "calc_client")
        self.assertEqual(run_example.run_pair(server, client, "tcp://127.0.0.1:0",
                                              [r"^calc_client: all answers right$"],
                                              env=dict(CLEAN_ENV)), [])

    def test_user_project_runs_over_rdma_or_says_why_not(self):
        build = self.user_project()
        server = os.path.join(build, "calc_server")
        client = os.path.join(build, "calc_client")
        addr = run_example.find_rdma_addr()
        if addr:
            self.assertEqual(run_example.run_pair(server, client, f"rdma://{addr}:0",
                                                  [r"calc_client: all answers right"],
                                                  env=dict(CLEAN_ENV)), [])
            return
        # No RDMA here: both start, and fail saying why.
        for argv in ([server, "rdma://127.0.0.1:0"], [client, "rdma://127.0.0.1:7000"]):
            p = clean(argv)
            self.assertEqual(p.returncode, 1, p.stderr)
            self.assertIn("No such device", p.stderr)
        p = clean([server])
        self.assertEqual(p.returncode, 2)
        self.assertIn("usage: calc_server", p.stderr)

    def test_a_program_links_the_static_library(self):
        src = os.path.join(self.tmp, "static.c")
        exe = os.path.join(self.tmp, "static")
        with open(src, "w") as f:
            f.write("#include <stdio.h>\n#include <tern.h>\n"
                    "int main(void)\n{\n\ttern_ctx *ctx;\n"
                    "\tif (tern_ctx_create(NULL, &ctx) || tern_ctx_destroy(ctx))\n"
                    "\t\treturn 1;\n"
                    "\tprintf(\"tern %s\\n\", tern_version_string());\n\treturn 0;\n}\n")
        cflags = run(["pkg-config", "--cflags", "tern"], env=self.env).split()
        # libtern.a by path, and every library it needs from the .pc file.
        libs = [a for a in run(["pkg-config", "--static", "--libs", "tern"],
                               env=self.env).split() if a != "-ltern"]
        run(["cc", "-std=c11", "-Wall", "-Wextra", "-Wpedantic", "-Werror", *cflags, src,
             os.path.join(self.libdir, "libtern.a"), *libs, "-o", exe])
        needed = run(["readelf", "-d", exe])
        self.assertNotIn("libtern", needed)
        p = clean([exe])
        self.assertEqual((p.returncode, p.stdout, p.stderr), (0, "tern 0.1.0\n", ""))

    def test_installed_tern_rnr_runs_from_a_clean_environment(self):
        tern_rnr = os.path.join(self.bin, "tern-rnr")
        p = clean([tern_rnr, "--help"])
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("usage: tern-rnr", p.stdout)
        empty = os.path.join(self.tmp, "empty-sysfs")
        os.makedirs(os.path.join(empty, "class", "infiniband"), exist_ok=True)
        p = clean([tern_rnr, "--root", empty, "--count", "1"])
        self.assertEqual(p.returncode, 4, p.stderr)
        self.assertIn("no RDMA devices found", p.stderr)

    def test_installed_tern_gen_makes_its_output_directory(self):
        out = os.path.join(self.tmp, "gen-out", "deeper")
        p = clean([os.path.join(self.bin, "tern-gen"), "-o", out,
                   os.path.join(SRC, "examples", "calc", "calc.tern")])
        self.assertEqual((p.returncode, p.stderr), (0, ""))
        self.assertEqual(sorted(os.listdir(out)), ["calc.tern.c", "calc.tern.h"])

    def test_man_pages_are_installed_and_render(self):
        if not shutil.which("scdoc") or not shutil.which("man"):
            self.skipTest("no scdoc or man here (./tools/test installs both)")
        mandir = os.path.join(self.prefix, "share", "man")
        for page in ("tern.7", "tern-gen.1", "tern-rnr.1", "tern-rnr-watch.1", "tern.h.3"):
            path = os.path.join(mandir, "man" + page[-1], page)
            self.assertTrue(os.path.isfile(path), path)
            p = clean(["man", "--warnings", "-l", path], MANWIDTH="100")
            self.assertEqual((p.returncode, p.stderr), (0, ""), page)
            self.assertIn("NAME", p.stdout)
            self.assertIn(f"{page[:-2]} - ", p.stdout)
        # Found by name under the prefix, as `man tern-gen` finds it.
        p = clean(["man", "-w", "tern-gen"], MANPATH=mandir)
        self.assertEqual(p.stdout.strip(), os.path.join(mandir, "man1", "tern-gen.1"))
        # The pages point at the installed documentation, which is there.
        docdir = os.path.join(self.prefix, "share", "doc", "tern")
        for md in ("guide.md", "idl.md", "operations.md", "python.md"):
            self.assertTrue(os.path.isfile(os.path.join(docdir, md)), md)
        page = clean(["man", "-l", os.path.join(mandir, "man1", "tern-gen.1")],
                     MANWIDTH="300").stdout
        self.assertIn(docdir, page)
        # tern.h(3) is the header's own documentation: every function is there.
        with open(os.path.join(SRC, "include", "tern.h")) as f:
            names = re.findall(r"^TERN_EXPORT [^(]*?\b(tern_\w+)\(", f.read(), re.M)
        self.assertGreater(len(names), 40)
        page = clean(["man", "-l", os.path.join(mandir, "man3", "tern.h.3")],
                     MANWIDTH="200").stdout
        self.assertEqual([n for n in names if f"{n} - " not in page], [])

    def test_tern_gen_help_points_to_the_manual(self):
        p = clean([os.path.join(self.bin, "tern-gen"), "--help"])
        self.assertEqual(p.returncode, 0)
        self.assertIn("man tern-gen", p.stdout)
        self.assertNotIn("docs/", p.stdout)
        self.assertNotIn("sources", p.stdout)

    def test_installed_python_package_and_tern_rnr_watch(self):
        if not self.python:
            self.skipTest("built without the Python package (python3-dev missing)")
        self.assertIsNotNone(self.site, "the tern package was not installed")
        # A prefix outside the interpreter's own path needs PYTHONPATH, as
        # any Python package does; the extensions find libtern themselves.
        p = clean(["python3", "-c", "import tern, tern._rnr; print(tern.__version__)"],
                  PYTHONPATH=self.site)
        self.assertEqual((p.returncode, p.stderr), (0, ""))
        self.assertEqual(p.stdout.strip(), "0.1.0")
        watch = os.path.join(self.bin, "tern-rnr-watch")
        p = clean([watch, "--help"])
        self.assertEqual(p.returncode, 0, p.stderr)
        empty = os.path.join(self.tmp, "empty-sysfs-py")
        os.makedirs(os.path.join(empty, "class", "infiniband"), exist_ok=True)
        # No PYTHONPATH: the installed script knows where its package went.
        p = clean([watch, "--root", empty, "--count", "1"])
        self.assertEqual(p.returncode, 4, p.stdout + p.stderr)


def main():
    global SRC
    if len(sys.argv) < 2 or not os.path.isdir(sys.argv[1]):
        print(__doc__, file=sys.stderr)
        return 2
    SRC = os.path.abspath(sys.argv.pop(1))
    return unittest_main.run(__name__)


if __name__ == "__main__":
    sys.exit(main())
