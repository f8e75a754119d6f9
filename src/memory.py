"""How a mailjobs process uses glibc's malloc: large buffers in mappings of their own, and free
memory given back after a large request. Elsewhere than glibc both are no-ops.

glibc serves an allocation over its mmap threshold (128 KiB) with a mapping of its own, returned
to the system when freed, but it raises that threshold to the size of each such block freed (up
to 32 MiB). After the first large enqueue, a request body, a chunk's INSERT text and its packet
(megabytes each) came from the heap instead, where what is left around them keeps the pages:
the API's RSS climbed from 62 MB to 199 MB over bench/enqueue.py's run and stayed there. With
the threshold fixed it ends at ~90 MB (bench/README.md, issue 17).
"""
from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any

M_MMAP_THRESHOLD = -3          # malloc.h
MMAP_THRESHOLD = 128 * 1024    # glibc's own starting value, kept


def _libc() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt  # noqa: B018 - glibc only
        libc.malloc_trim  # noqa: B018
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _libc()


def fix_mmap_threshold() -> bool:
    """Keep large allocations in their own mappings for the life of the process (setting the
    threshold turns glibc's dynamic raising of it off). True when it was set."""
    return bool(_LIBC is not None and _LIBC.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))


def release_free_memory() -> None:
    """malloc_trim(0): give back what the arenas hold free (after a large enqueue; ~1 ms)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
