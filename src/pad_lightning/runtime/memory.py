"""The process's heap: large tensors go back to the system when freed (glibc's malloc).

glibc raises its mmap threshold each time a large mmapped block is freed ("dynamic mmap
threshold"), up to 32 MiB on 64-bit systems. After that, the activation and logit tensors of
each rollout (batches whose shapes change from epoch to epoch) come from the brk heap, which
fragments and rarely shrinks: a run's resident memory then creeps up epoch after epoch. Setting
the thresholds explicitly switches the adjustment off, so every block above 128 KiB is its own
mapping, returned to the system when freed. Measured with MCQ calibration on the default toy
world (docs/performance.md). Elsewhere (macOS, musl, Windows) this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
THRESHOLD = 128 * 1024  # glibc's initial value, kept fixed


def limit_heap_growth() -> bool:
    """Fix glibc's mmap and trim thresholds at 128 KiB; True if it applied (glibc only)."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    ok = mallopt(M_MMAP_THRESHOLD, THRESHOLD) == 1
    return bool(mallopt(M_TRIM_THRESHOLD, THRESHOLD) == 1 and ok)
