"""Freed heap memory goes back to the system after a client's training."""

from __future__ import annotations

import os
import sys

import pytest

from fedlora.engine.heap import release_freed_memory

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads /proc and needs glibc's malloc_trim"
)


def _resident_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_freed_heap_blocks_between_live_ones_go_back_to_the_system() -> None:
    """Blocks below glibc's mmap threshold come from the heap; small live blocks between them
    keep the heap from shrinking at its top, so freeing them alone returns nothing."""
    kept, freed = [], []
    for _ in range(3000):
        freed.append(bytearray(64 * 1024))  # 192 MB in all, every page written
        kept.append(bytearray(1024))
    del freed
    before = _resident_bytes()
    assert release_freed_memory()
    returned = before - _resident_bytes()
    assert returned > 150 * 2**20, f"only {returned / 2**20:.0f} MB returned"
    assert len(kept) == 3000
