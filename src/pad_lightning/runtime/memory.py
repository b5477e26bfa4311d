"""Process memory: the heap's free pages given back between epochs (glibc's malloc), PyTorch's
kernel caches bounded, and each epoch's own peak measured.

Every rollout allocates activation, logit and MCQ tensors whose shapes change from epoch to
epoch. glibc raises its mmap threshold each time a large mapped block is freed, so after the
first epoch these tensors come from the brk heap, where the small objects that outlive an epoch
pin the pages around them: freed memory stays resident, and the process's resident memory (and
its peak) creeps up epoch after epoch. `release_free_heap` asks glibc (`malloc_trim(0)`) to
return every whole free page of the heap to the system; called once an epoch it costs
milliseconds and keeps the resident level from creeping. The other half of the creep, PyTorch's
oneDNN kernel caches, is bounded by `bound_compute_cache`; each epoch's own peak
(`interval_peak_mb`) and the resident level after it (`resident_mb`) are logged, so growth is
seen (docs/performance.md, "Memory over a long run"). Fixing glibc's thresholds instead
(`MALLOC_MMAP_THRESHOLD_`) also limits it, but makes each large tensor its own mapping and the
epochs about twice as slow. Elsewhere (macOS, musl, Windows) the release is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys

CACHE_CAPACITY = 64
"""Entries of each of PyTorch's two oneDNN caches of compiled kernels: ideep's computations
(`LRU_CACHE_CAPACITY`) and oneDNN's primitives (`ONEDNN_PRIMITIVE_CACHE_CAPACITY`), 1024 each by
default. Both are keyed by shape, and a rollout's shapes change every epoch (batch sizes,
sequence lengths, MCQ lengths), so at 1024 they keep growing for hundreds of epochs: 1.5 MB an
epoch of resident memory on the default toy world with calibration. At 64 each, the level stays
flat after the first epochs and the epochs are no slower (docs/performance.md, "Memory over a
long run"; `experiments/bench_memory.py`)."""
CACHES = ("LRU_CACHE_CAPACITY", "ONEDNN_PRIMITIVE_CACHE_CAPACITY")


def bound_compute_cache() -> None:
    """Bound PyTorch's oneDNN kernel caches at `CACHE_CAPACITY` entries each, unless the user set
    them. PyTorch reads them once, at its first oneDNN computation: call this before any (the
    run's entry point does, before it imports torch)."""
    for name in CACHES:
        os.environ.setdefault(name, str(CACHE_CAPACITY))


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


_STATUS = "/proc/self/status"
_CLEAR_REFS = "/proc/self/clear_refs"
_process_peak_kb = 0  # the highest resident peak seen before a reset (resets lower VmHWM)
_resettable = True  # False once a reset failed: no interval peaks from then on


def _status_kb(field: str) -> int | None:
    """A `VmXXX:` field of /proc/self/status in kB (None where there is no procfs)."""
    try:
        with open(_STATUS) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def resident_mb() -> float | None:
    """The process's resident memory now, in MB (None off Linux)."""
    kb = _status_kb("VmRSS")
    return None if kb is None else kb / 1024


def interval_peak_mb(reset: bool = True) -> float | None:
    """The resident peak since the last reset (or the process start), in MB; then, with `reset`,
    the peak starts again from the resident memory now (Linux: `5` to /proc/self/clear_refs).

    The process's own peak (`ru_maxrss`) is a running maximum: over many epochs of rollouts whose
    sizes vary it creeps up even when no epoch needs more than the one before, as the maximum of
    more draws. The peak of each interval tells the two apart: it has a trend only if something
    accumulates. None where the kernel does not keep or cannot reset the peak.
    """
    global _process_peak_kb, _resettable
    kb = _status_kb("VmHWM") if _resettable else None
    if kb is None:
        return None
    _process_peak_kb = max(_process_peak_kb, kb)
    if reset:
        try:
            with open(_CLEAR_REFS, "w") as f:
                f.write("5")
        except OSError:  # not resettable (a sandbox): a peak since the start is no interval's
            _resettable = False
            return None
    return kb / 1024


def process_peak_mb() -> float:
    """The process's resident peak since its start, in MB, also across `interval_peak_mb` resets
    (which lower what the kernel reports as the peak)."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux
    now = _status_kb("VmHWM") or 0
    return max(own, now, _process_peak_kb) / 1024
