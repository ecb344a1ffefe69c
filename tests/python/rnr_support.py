# SPDX-License-Identifier: MIT
"""What the Python RNR tests share: the path of rnr-watch.py, fake sysfs trees.

The package itself comes from the build tree: tests/python/meson.build
puts build/python, where meson builds tern, on PYTHONPATH.
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(os.path.dirname(HERE))
RNR_WATCH = os.environ.get("TERN_RNR_WATCH", os.path.join(TOP, "tools", "rnr-watch.py"))

# The fake tree of tern-rnr's own tests (tests/unit/test_rnr_cli.py).
sys.path.insert(0, os.path.join(TOP, "tests", "unit"))
from test_rnr_cli import FakeTree as CliFakeTree  # noqa: E402


class FakeTree(CliFakeTree):
    """A sysfs root under a temporary folder, laid out as the kernel does.

    add_rxe(): port 1 with Soft-RoCE's hw_counters (Linux 6.1), lifespan 12.
    add_mlx5(): port 1 with mlx5's Q counters and the IB PMA counters/
    group (one of them "N/A (no PMA)"), lifespan 10, and device-wide
    hw_counters (port 0).
    """

    def __init__(self, root):
        self.root = str(root)

    def add_mlx5(self, dev="mlx5_0", base=0):
        super().add_mlx5(dev, base)
        self.set_device_wide(dev, "rx_icrc_encapsulated", base)
        self.set_device_wide(dev, "lifespan", 10)

    def set_device_wide(self, dev, name, value):
        d = os.path.join(self.root, "class", "infiniband", dev, "hw_counters")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, name), "w") as f:
            f.write(value if isinstance(value, str) else f"{value}\n")

    def remove(self, dev, name, group="hw_counters", port=1):
        os.unlink(os.path.join(self.root, "class", "infiniband", dev, "ports", str(port), group,
                               name))

    def replug(self, dev):
        """Put back a device that unplug() took away (its counters as they were)."""
        devices = "devices/virtual/infiniband" if dev.startswith("rxe") else \
            "devices/pci0000:00/0000:00:03.0/infiniband"
        os.symlink(os.path.join("..", "..", devices, dev),
                   os.path.join(self.root, "class", "infiniband", dev))
