"""Give the memory a client's training freed back to the operating system (glibc's malloc).

A training step on CPU allocates and frees activations, gradients and logits of many sizes.
glibc keeps freed blocks inside its heap for reuse, so after a client the process's resident
memory stays near its peak.  ``malloc_trim(0)`` returns every wholly free page: after the
80-client SmolLM2 round of ``benchmarks/llm.py`` the resident memory went from 5.56 to 4.87 GB
with it (2.38 GB when glibc maps every block of 64 KiB or more on its own, about what is in
use).  Where the C library has no ``malloc_trim`` (macOS, musl) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


def release_freed_memory() -> bool:
    """Return the heap's free pages to the system; ``True`` if any were returned."""
    trim = _malloc_trim()
    return trim is not None and bool(trim(0))
