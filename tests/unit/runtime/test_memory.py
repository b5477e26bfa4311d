"""Resident memory does not grow with the epoch count (runtime.memory.release_free_heap).

An epoch allocates tensors whose sizes change every epoch and keeps a few small results. With
glibc's dynamic mmap threshold (raised once a large block is freed) those tensors come from the
brk heap, which the small survivors pin: freed pages stay resident, and resident memory grows
epoch after epoch. Each case runs in a fresh interpreter, whose heap is its own.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CODE = """
import random, sys, torch
from pad_lightning.runtime.memory import release_free_heap
def rss():
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) / 1024
torch.empty(64 << 20, dtype=torch.uint8).fill_(1)  # freed: glibc raises its mmap threshold
rng, keep, start = random.Random(0), [], rss()
for epoch in range(int(sys.argv[1])):
    batch = [torch.ones(rng.randint(1 << 18, 4 << 20) // 4) for _ in range(8)]
    keep.append(batch[-1][:64].clone())
    del batch
    if sys.argv[2] == "release":
        release_free_heap()
print(rss() - start)
"""


def _retained_mb(epochs: int, mode: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", CODE, str(epochs), mode],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return float(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc (Linux)")
def test_retained_memory_does_not_grow_with_the_epoch_count():
    kept = _retained_mb(40, "keep")  # the creep this guards against: freed pages stay resident
    short, long = _retained_mb(10, "release"), _retained_mb(40, "release")
    assert kept > 20, kept
    assert long < 8, long
    assert long - short < 4, (short, long)


PEAK_CODE = """
import sys
from pad_lightning.runtime.memory import interval_peak_mb, process_peak_mb, resident_mb
big = bytearray(200 << 20)  # 200 MB touched, then freed
big[::4096] = b"x" * len(big[::4096])
del big
first = interval_peak_mb()  # the peak since the start: holds the 200 MB
second = interval_peak_mb()  # since the reset: only what is resident now
print(first, second, resident_mb(), process_peak_mb())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_interval_peak_resets_and_the_process_peak_survives_the_reset():
    out = subprocess.run(
        [sys.executable, "-c", PEAK_CODE], capture_output=True, text=True, check=True
    )
    first, second, now, process = map(float, out.stdout.split())
    assert first > now + 150  # the 200 MB block is in the first interval's peak
    assert second < first - 150 and second < now + 20  # the reset starts from the level now
    assert process >= first  # the process's own peak keeps the block


def test_compute_caches_are_bounded_unless_set(monkeypatch):
    from pad_lightning.runtime.memory import CACHE_CAPACITY, CACHES, bound_compute_cache

    monkeypatch.delenv(CACHES[0], raising=False)
    monkeypatch.setenv(CACHES[1], "7")  # the user's choice is kept
    bound_compute_cache()
    assert os.environ[CACHES[0]] == str(CACHE_CAPACITY)
    assert os.environ[CACHES[1]] == "7"


def test_no_interval_peaks_once_the_peak_cannot_be_reset(monkeypatch, tmp_path):
    """Where /proc/self/clear_refs cannot be written (a sandbox), a later 'interval' peak would
    be the peak since the start: none is reported once a reset has failed."""
    from pad_lightning.runtime import memory

    monkeypatch.setattr(memory, "_resettable", True)
    monkeypatch.setattr(memory, "_CLEAR_REFS", str(tmp_path / "missing" / "clear_refs"))
    if memory.interval_peak_mb(reset=False) is None:
        pytest.skip("no /proc/self/status here")
    assert memory.interval_peak_mb() is None  # the reset fails
    assert memory.interval_peak_mb(reset=False) is None
    assert memory.process_peak_mb() > 0
