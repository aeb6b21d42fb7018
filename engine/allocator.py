"""Keep the memory of freed arrays in the process while a model trains, instead of handing it back
to the system after every array.

Why: a training step allocates and frees the same large arrays every step (im2col columns,
activations, their gradients). glibc serves a request above its mmap threshold (128 KiB at start,
raised on the fly only up to the largest block freed so far) with a fresh mapping and unmaps it
on free, and trims the top of the heap once 128 KiB lie free there, so the next step faults every
page in again and the kernel zeroes each one. Measured here on one core, batch 32, one process:
alex64 ~800 page faults per step and 15 % of the step in the kernel (11.0 -> 9.3 ms per step
without them), resnet_stem64 45.5 -> 41-43 ms. PyTorch keeps such memory in its own allocator; NumPy
has none for large arrays, so the engine asks glibc to keep it: mappings only from 256 MiB, and
the heap trimmed only when 1 GiB lies free at its top. A training run gives the kept memory back
when it ends (`give_back`).

Only glibc is touched (other C libraries, macOS and Windows keep their own behaviour), and not at
all when the user has set glibc's malloc variables themselves (MALLOC_MMAP_THRESHOLD_,
MALLOC_TRIM_THRESHOLD_, GLIBC_TUNABLES=glibc.malloc...).
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 256 << 20
TRIM_THRESHOLD = 1 << 30


@functools.cache
def _libc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError):
        return None
    return libc


def _user_chose() -> bool:
    return any(k.startswith("MALLOC_") and k.endswith("_") for k in os.environ) or \
        "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", "")


@functools.cache
def keep_freed_memory() -> bool:
    """From now on, in this process, large freed arrays stay mapped for the next step's arrays.
    Once per process; True when glibc took the setting."""
    libc = _libc()
    if libc is None or _user_chose():
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and \
        bool(libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def give_back() -> None:
    """Return the free memory kept at the top of the heap to the system (the end of a training run:
    the app goes on, and what it kept for the steps is not needed until the next run)."""
    libc = _libc()
    if libc is not None and keep_freed_memory.cache_info().currsize:
        libc.malloc_trim(0)
