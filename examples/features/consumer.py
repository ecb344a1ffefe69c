#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""features consumer.py - the features consumer, in Python with numpy.

    PYTHONPATH=build/python python3 examples/features/consumer.py LISTEN_URI [FRAMES]

Serves Features.push (features.tern), the one-way method tern gathers into
batches of up to 256 frames, exactly as features_consumer does in C: each
batch is copied once, frame by frame straight out of its receive slot, into
a preallocated 256 x 256 float32 array (Batch.gather: one memcpy per frame,
in C, no Python per frame), every value of every frame is checked against
(float)k + (float)i * 0.001f in order, and the batch is multiplied by 256 x
16 weights.  Prints its URI first, for features_producer; after FRAMES
frames (default 500000, or $TERN_FEATURES_FRAMES) and once the producer has
closed, prints frames/s as a JSON line and exits 0 if every frame was right.
"""
import json
import os
import sys
import time

import numpy as np

import tern

DIM, OUT, BATCH = 256, 16, 256
SLOT_SIZE, SLOT_COUNT = 1088, 512  # common.h: FEATURES_SLOT_SIZE, _COUNT

idl = tern.load_idl(os.path.join(os.path.dirname(os.path.abspath(__file__)), "features.tern"))


class Consumer(idl.Features):
    def __init__(self, target):
        self.target = target
        self.next = 0  # the frame expected next
        self.got = self.bad = self.batches = 0
        self.t0 = self.t1 = None
        self.checksum = 0.0
        self.x = np.zeros((BATCH, DIM), dtype=np.float32)  # the batch, one row a frame
        i = np.arange(DIM * OUT, dtype=np.uint64)
        self.w = ((i * 2654435761 % 2001).astype(np.float32) / np.float32(1000)
                  - np.float32(1)).reshape(DIM, OUT)
        # (float)i * 0.001f, in float32 as the producer computes it
        self.step = np.arange(DIM, dtype=np.float32) * np.float32(0.001)

    @tern.method
    def push(self, batch):
        if self.t0 is None:
            self.t0 = time.monotonic()
        n = batch.gather(self.x)  # the one copy out of the receive slots
        x = self.x[:n]
        k = np.arange(self.next, self.next + n, dtype=np.float32)[:, None]
        ok = (x == k + self.step).all(axis=1)
        if not ok.all():
            self.bad += int(n - ok.sum())
            x[~ok] = 0
        self.checksum += float((x @ self.w).sum())
        self.next += n
        self.got += n
        self.batches += 1
        if self.got >= self.target and self.t1 is None:
            self.t1 = time.monotonic()


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    frames = int(argv[2]) if len(argv) > 2 else int(os.environ.get("TERN_FEATURES_FRAMES", 0))
    c = Consumer(frames or 500000)
    with tern.Server(argv[1], c, progress="busy", slot_size=SLOT_SIZE,
                     slot_count=SLOT_COUNT) as srv:
        print(srv.uri, flush=True)
        try:
            while c.t1 is None:
                srv.poll(0.1)
            # stay until the producer has its credits back and closes
            end = time.monotonic() + 60
            while srv.peers_closed == 0 and time.monotonic() < end:
                srv.poll(0.05)
        except KeyboardInterrupt:
            pass
    secs = c.t1 - c.t0 if c.t1 is not None else 0
    print(json.dumps({"bench": "features", "side": "consumer", "lang": "python",
                      "frames": c.got, "bad": c.bad, "batches": c.batches,
                      "seconds": round(secs, 3),
                      "frames_per_s": round(c.got / secs) if secs > 0 else 0,
                      "gb_per_s": round(c.got * 1024 / secs / 1e9, 3) if secs > 0 else 0,
                      "checksum": float(f"{c.checksum:.6g}")}, separators=(",", ":")))
    if c.t1 is not None and not c.bad:
        print(f"features consumer.py: all {c.target} frames checked")
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
