"""Giving freed heap memory back to the operating system.

CPython and the C allocator keep memory that large temporary objects (a big SQL result, a big
service answer) used: the process stays at its peak resident size. On glibc ``malloc_trim(0)``
returns the free pages; elsewhere (musl, macOS) :func:`release_free_memory` does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util


def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc: nothing to call
        return None


_MALLOC_TRIM = _malloc_trim()


def can_release() -> bool:
    """Whether this platform's allocator can be asked to give memory back (glibc)."""
    return _MALLOC_TRIM is not None


def release_free_memory() -> None:
    """Hand freed heap memory back to the OS (glibc ``malloc_trim``); a no-op elsewhere."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
