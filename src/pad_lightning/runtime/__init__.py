"""Process plumbing: the error hierarchy, interrupts, atomic files, file locks,
collectives, non-finite checks.

Lowest layer: imports nothing of pad_lightning above it (torch and the standard library only).
"""
