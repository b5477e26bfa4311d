"""Resident memory does not grow with the epoch count (runtime.memory.release_free_heap).

An epoch allocates tensors whose sizes change every epoch and keeps a few small results. With
glibc's dynamic mmap threshold (raised once a large block is freed) those tensors come from the
brk heap, which the small survivors pin: freed pages stay resident, and resident memory grows
epoch after epoch. Each case runs in a fresh interpreter, whose heap is its own.
"""

from __future__ import annotations

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
