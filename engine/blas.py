"""How many threads the BLAS library behind NumPy uses, changed at run time (threadpoolctl).

Why: the engine runs many small GEMMs, and a multi-threaded BLAS spends more time waking its
threads than computing (see engine.model's `_one_blas_thread`); both cores are used by splitting
batches over processes instead (engine.parallel). The environment variables only act at import,
so the count is set through threadpoolctl, which finds the loaded OpenBLAS/MKL/BLIS itself.

Setting the count costs ~25 us (threadpoolctl asks and sets every loaded library and builds its
bookkeeping), and a training step asks for one thread at least twice (`train_step`, then
`loss_and_grad` inside it; engine.parallel's processes hold one thread for good): a LeNet-5 step of
32 images is ~3 ms. Asking the libraries for their current count costs ~2.5 us, so a request for
the count already in force does nothing. What is in force is asked every time, never remembered:
with several threads computing (a training run, heat maps, a preflight check), another thread may
have set a different count since.
"""

from __future__ import annotations

import functools
from typing import Any


@functools.cache
def _controller() -> Any:
    """One scan of the loaded libraries: NumPy's BLAS is loaded with NumPy, before any call here."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


@functools.cache
def _blas_libraries() -> list:
    return [lib for lib in _controller().lib_controllers if lib.user_api == "blas"]


def blas_kernel() -> str | None:
    """The kernel family NumPy's BLAS runs (OpenBLAS's "Haswell", "SkylakeX", ...; None when the
    library does not say): OPENBLAS_CORETYPE can force an older one than the processor's."""
    libs = _blas_libraries()
    return getattr(libs[0], "architecture", None) if libs else None


class _Unchanged:
    """What blas_threads returns when the count is already in force: nothing to set or restore."""

    def __enter__(self) -> _Unchanged:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def restore_original_limits(self) -> None:
        pass


_UNCHANGED = _Unchanged()


def blas_threads(n: int) -> Any:
    """Compute on n BLAS threads from now on. As a context manager (`with blas_threads(1): ...`) the
    previous count comes back on exit; otherwise the handle's `restore_original_limits()` restores it.
    When every BLAS library already runs n threads nothing is set (and nothing restored)."""
    n = max(1, int(n))
    if all(lib.get_num_threads() == n for lib in _blas_libraries()):
        return _UNCHANGED
    return _controller().limit(limits=n, user_api="blas")
