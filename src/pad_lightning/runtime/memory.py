"""Giving the heap's free pages back to the system between epochs (glibc's malloc).

Every rollout allocates activation, logit and MCQ tensors whose shapes change from epoch to
epoch. glibc raises its mmap threshold each time a large mapped block is freed, so after the
first epoch these tensors come from the brk heap, where the small objects that outlive an epoch
pin the pages around them: freed memory stays resident, and the process's resident memory (and
its peak) creeps up epoch after epoch. `release_free_heap` asks glibc (`malloc_trim(0)`) to
return every whole free page of the heap to the system; called once an epoch it costs
milliseconds and lowers the resident level and much of its creep (the peak still grows by a few
MB an epoch of native memory outside the heap's free pages: docs/performance.md, "Memory over a
long run"). Fixing the thresholds instead (`MALLOC_MMAP_THRESHOLD_`) also limits it, but makes
each large tensor its own mapping and the epochs about twice as slow. Elsewhere (macOS, musl, Windows) this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys


@functools.cache
def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_free_heap() -> bool:
    """Return the heap's free pages to the system; True if glibc released any."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False
