"""Keep freed memory in the process (glibc malloc settings), so that a CPU step stops paying page faults.

A training step on a CPU allocates and frees the same few-MB tensors every step (activations, gradients,
matrix products). glibc serves blocks above its mmap threshold with fresh pages from the kernel and gives
them back when freed, so every step touches new pages: page faults, each zeroed by the kernel (in this
project's virtual machines an expensive exit). ``keep_freed_memory()`` raises the mmap threshold to its
maximum (32 MiB on 64-bit), stops trimming the heap and pads it, the settings Intel's PyTorch CPU guides
give for the same reason (there as ``MALLOC_*`` environment variables, or jemalloc / tcmalloc). The
arithmetic is unchanged; the process keeps its peak memory instead of returning it to the system.
``python -m p2bot_utils bench alloc`` measures one training step with and without it.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # <malloc.h>
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit
TOP_PAD = 512 * 1024 * 1024
_applied: bool | None = None


def is_applied() -> bool:
    """True once ``keep_freed_memory`` put the settings in force in this process (the manifest records it)."""
    return bool(_applied)


def keep_freed_memory() -> bool:
    """Apply the settings once per process (glibc on Linux; elsewhere nothing). True when they are in force."""
    global _applied
    if _applied is None:
        _applied = False
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                mallopt = libc.mallopt
            except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
                return False
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            _applied = all(mallopt(k, v) == 1 for k, v in ((M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX),
                                                           (M_TRIM_THRESHOLD, 2 ** 31 - 1),
                                                           (M_TOP_PAD, TOP_PAD)))
    return _applied
