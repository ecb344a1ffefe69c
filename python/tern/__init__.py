# SPDX-License-Identifier: MIT
# The tern package.  This branch (the RNR monitor, issue 8) has only the
# monitor; the bindings' own __init__ replaces this file on merge and keeps
# the import below.
from .rnr import RnrMonitor
