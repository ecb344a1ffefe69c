#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Install tern into a temporary prefix and build a user project against it.

usage: test_userproj.py TERN_SOURCE_DIR

What a user does: configure tern with --prefix and nothing else (the whole
tree, tests included, must build with the defaults), `meson install`, then build
examples/calc as their own meson project (tests/gen/userproj/meson.build),
which finds tern through pkg-config (`dependency('tern')`) and runs the
installed tern-gen named by tern.pc.  The binaries are then started: with
no RDMA device they must fail cleanly, saying so; with one, the pair must
talk.  Runs on the host (suite unit).  Standard library only.
"""
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run_example  # noqa: E402
import unittest_main  # noqa: E402

SRC = None


def run(argv, env=None, cwd=None):
    p = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd, timeout=900)
    if p.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({p.returncode}):\n"
                             f"{p.stdout[-3000:]}{p.stderr[-3000:]}")
    return p.stdout


class UserProject(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="tern-userproj.")
        cls.prefix = os.path.join(cls.tmp, "prefix")
        build = os.path.join(cls.tmp, "tern-build")
        # Exactly what a user types: the defaults, the whole tree (tests
        # included), no sanitizer, no -Werror.  What the compiler said is
        # kept for the test that no default build warns.
        run(["meson", "setup", build, SRC, f"--prefix={cls.prefix}"])
        cls.compile_log = run(["ninja", "-C", build])
        run(["meson", "install", "-C", build, "--quiet"])
        pcs = glob.glob(os.path.join(cls.prefix, "lib*", "**", "tern.pc"), recursive=True)
        cls.pc = pcs[0] if pcs else None
        cls.libdir = os.path.dirname(os.path.dirname(cls.pc)) if cls.pc else None
        cls.env = dict(os.environ, PKG_CONFIG_PATH=os.path.dirname(cls.pc) if cls.pc else "")
        cls.run_env = dict(cls.env, LD_LIBRARY_PATH=cls.libdir or "")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_a_default_build_of_the_whole_tree_warns_about_nothing(self):
        warnings = [line for line in self.compile_log.splitlines() if "warning:" in line]
        self.assertEqual(warnings, [])

    def test_install_has_the_library_headers_tern_gen_and_pc(self):
        self.assertIsNotNone(self.pc, "tern.pc was not installed")
        for rel in ("include/tern.h", "include/tern/gen.h", "include/tern/rnr.h",
                    "include/tern/transport.h"):
            self.assertTrue(os.path.isfile(os.path.join(self.prefix, rel)), rel)
        gen = os.path.join(self.prefix, "bin", "tern-gen")
        self.assertTrue(os.access(gen, os.X_OK), "tern-gen is not installed executable")
        self.assertTrue(glob.glob(os.path.join(self.libdir, "libtern.so*")))

    def test_pkg_config_names_the_installed_tern_gen(self):
        gen = run(["pkg-config", "--variable=tern_gen", "tern"], env=self.env).strip()
        self.assertEqual(gen, os.path.join(self.prefix, "bin", "tern-gen"))
        self.assertEqual(run([gen, "--version"]).strip(), "tern-gen 0.1.0")
        cflags = run(["pkg-config", "--cflags", "tern"], env=self.env)
        self.assertIn(f"-I{self.prefix}/include", cflags)
        libs = run(["pkg-config", "--libs", "tern"], env=self.env)
        self.assertIn("-ltern", libs)
        self.assertIn("-luv", libs)  # tern.h includes uv.h: a public requirement

    def test_user_project_builds_and_starts(self):
        user = os.path.join(self.tmp, "user")
        os.makedirs(user)
        for f in ("calc.tern", "server.c", "client.c"):
            shutil.copy(os.path.join(SRC, "examples", "calc", f), user)
        shutil.copy(os.path.join(SRC, "tests", "gen", "userproj", "meson.build"), user)
        build = os.path.join(user, "build")
        run(["meson", "setup", build, user], env=self.env)
        run(["meson", "compile", "-C", build], env=self.env)
        # The installed tern-gen made the code, not the one in the tree.
        with open(os.path.join(build, "build.ninja")) as f:
            self.assertIn(os.path.join(self.prefix, "bin", "tern-gen"), f.read())
        server = os.path.join(build, "calc_server")
        client = os.path.join(build, "calc_client")
        addr = run_example.find_rdma_addr()
        if addr:
            self.assertEqual(run_example.run_pair(server, client, f"rdma://{addr}:0",
                                                  [r"calc_client: all answers right"],
                                                  env=self.run_env), [])
            return
        # No RDMA here: both start, and fail saying why.
        for argv in ([server, "rdma://127.0.0.1:0"], [client, "rdma://127.0.0.1:7000"]):
            p = subprocess.run(argv, capture_output=True, text=True, env=self.run_env,
                               timeout=60)
            self.assertEqual(p.returncode, 1, p.stderr)
            self.assertIn("No such device", p.stderr)
        p = subprocess.run([server], capture_output=True, text=True, env=self.run_env)
        self.assertEqual(p.returncode, 2)
        self.assertIn("usage: calc_server", p.stderr)


def main():
    global SRC
    if len(sys.argv) < 2 or not os.path.isdir(sys.argv[1]):
        print(__doc__, file=sys.stderr)
        return 2
    SRC = os.path.abspath(sys.argv.pop(1))
    return unittest_main.run(__name__)


if __name__ == "__main__":
    sys.exit(main())
