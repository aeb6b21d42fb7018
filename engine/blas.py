"""How many threads the BLAS library behind NumPy uses, changed at run time (threadpoolctl).

Why: the engine runs many small GEMMs, and a multi-threaded BLAS spends more time waking its
threads than computing (see engine.model's `_one_blas_thread`); both cores are used by splitting
batches over processes instead (engine.parallel). The environment variables only act at import,
so the count is set through threadpoolctl, which finds the loaded OpenBLAS/MKL/BLIS itself.
"""

from __future__ import annotations

import functools
from typing import Any


@functools.cache
def _controller() -> Any:
    """One scan of the loaded libraries: NumPy's BLAS is loaded with NumPy, before any call here."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def blas_threads(n: int) -> Any:
    """Compute on n BLAS threads from now on. As a context manager (`with blas_threads(1): ...`) the
    previous count comes back on exit; otherwise the handle's `restore_original_limits()` restores it."""
    return _controller().limit(limits=max(1, int(n)), user_api="blas")
