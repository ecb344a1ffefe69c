#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""fuzz_tern_gen - fuzz tern-gen's parser with a mutator of our own.

usage: fuzz_tern_gen.py [--seconds N] [--timeout S] [--corpus DIR]
                        [--artifacts DIR] [--seed N] [DIR...]

Starts from the inputs in DIR... (and --corpus), mutates them the ways
that break a hand-written parser (bytes flipped, inserted, deleted and
duplicated; the IDL's own tokens, names, numbers and punctuation dropped
in; UTF-8 cut in half; lines spliced from another input; numbers grown
long), and checks each against tern_gen_check.py's property.  It keeps,
in --corpus, every input that makes tern-gen answer in a way it has not
answered before (a new error check, or a new shape of accepted file): a
cheap stand-in for coverage that follows the parser's own branches.

An input that breaks the property, or takes longer than --timeout seconds,
is written to --artifacts and the run fails.  The last line is the summary
tools/fuzz prints: executions, executions per second, outcomes seen, corpus.
"""
import argparse
import hashlib
import os
import random
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tern_gen_check  # noqa: E402

TOKENS = [b"service", b"message", b"rpc", b"returns", b"bytes", b"batch", b"raw", b"inplace",
          b"deferred", b"oneway", b"u8", b"u16", b"u32", b"u64", b"i8", b"i16", b"i32", b"i64",
          b"f32", b"f64", b"max", b"wait_us", b"{", b"}", b"(", b")", b"[", b"]", b";", b"=",
          b",", b"//", b"/*", b"*/", b"\n", b" ", b"\t", b"\r", b"0", b"1", b"65536",
          b"4294967296", b"18446744073709551616", b"tern_", b"_x", b"x_", b"int", b"class",
          b"None", b"errno", b"\xc3\xa9", b"\xff", b"\x00", b"\xe2\x80", b"Calc", b"Req"]


class Hang(Exception):
    pass


def on_alarm(signum, frame):
    raise Hang()


def mutate(rng, data, corpus):
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(10)
        at = rng.randint(0, len(b))
        if op == 0 and b:  # flip a byte
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1:  # insert a token
            b[at:at] = rng.choice(TOKENS)
        elif op == 2 and b:  # delete a span
            n = rng.randint(1, min(16, len(b)))
            del b[at:at + n]
        elif op == 3 and b:  # duplicate a span
            i = rng.randrange(len(b))
            n = rng.randint(1, min(64, len(b) - i))
            b[at:at] = b[i:i + n]
        elif op == 4:  # a random byte
            b[at:at] = bytes([rng.randrange(256)])
        elif op == 5 and corpus:  # splice a line from another input
            other = rng.choice(corpus).split(b"\n")
            b[at:at] = rng.choice(other) + b"\n"
        elif op == 6 and b:  # cut short
            del b[rng.randint(0, len(b)):]
        elif op == 7:  # a long number
            b[at:at] = str(rng.choice([9, 10, 99])).encode() * rng.choice([1, 3, 30, 500, 2200])
        elif op == 8:  # a long name
            b[at:at] = b"n" * rng.choice([62, 63, 64, 65, 200])
        else:  # replace a token with another
            b[at:at + rng.randint(0, 8)] = rng.choice(TOKENS)
    return bytes(b[:1 << 16])


def load_dir(d):
    out = []
    if d and os.path.isdir(d):
        for name in sorted(os.listdir(d)):
            p = os.path.join(d, name)
            if os.path.isfile(p) and not name.startswith(".") and name != "README":
                with open(p, "rb") as f:
                    out.append(f.read())
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dirs", nargs="*")
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--timeout", type=float, default=10)
    ap.add_argument("--corpus")
    ap.add_argument("--artifacts", default=".")
    ap.add_argument("--seed", type=int, default=None)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    chk = tern_gen_check.Checker()
    corpus = []
    for d in a.dirs + [a.corpus]:
        corpus += load_dir(d)
    if not corpus:
        corpus = [b""]
    if a.corpus:
        os.makedirs(a.corpus, exist_ok=True)
    os.makedirs(a.artifacts, exist_ok=True)
    signal.signal(signal.SIGALRM, on_alarm)
    seen = set()
    runs = 0
    status = 0

    def run(data, generate):
        nonlocal runs
        runs += 1
        signal.setitimer(signal.ITIMER_REAL, a.timeout)
        try:
            outcome = chk.check(data, generate=False)
            # Generating C is most of an accepted file's time: do it for
            # every new shape of file and one in 16 of the rest.
            if outcome.startswith("ok") and (generate or outcome not in seen or
                                             rng.randrange(16) == 0):
                outcome = chk.check(data)
            return outcome
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)

    start = time.monotonic()
    try:
        for data in list(corpus):
            seen.add(run(data, True))
        while time.monotonic() - start < a.seconds:
            data = mutate(rng, rng.choice(corpus), corpus)
            outcome = run(data, False)
            if outcome not in seen:
                seen.add(outcome)
                corpus.append(data)
                if a.corpus:
                    name = hashlib.sha1(data).hexdigest()
                    with open(os.path.join(a.corpus, name), "wb") as f:
                        f.write(data)
    except (tern_gen_check.Violation, Hang) as e:
        kind = "timeout" if isinstance(e, Hang) else "crash"
        path = os.path.join(a.artifacts, f"{kind}-{hashlib.sha1(data).hexdigest()}")
        with open(path, "wb") as f:
            f.write(data)
        print(f"ERROR: tern-gen {kind}: {e}", file=sys.stderr)
        print(f"Test unit written to {path}", file=sys.stderr)
        status = 1
    finally:
        chk.close()
    took = max(time.monotonic() - start, 1e-9)
    print(f"{runs} execs, {int(runs / took)} exec/s, cov -, ft {len(seen)} outcomes, "
          f"corpus {len(corpus)}")
    return status


if __name__ == "__main__":
    sys.exit(main())
