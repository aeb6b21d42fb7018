"""Starting the engine's helper processes (parallel image decoding, data-parallel training)."""

from __future__ import annotations

import os
import subprocess
import sys


def start_helper(module: str, function: str = "_worker_main") -> subprocess.Popen:
    """Run `module.function()` in a fresh interpreter, talking over its stdin/stdout pipes.

    A plain subprocess rather than multiprocessing: nothing re-imports the caller's __main__ (the
    GUI, a script without a main guard), nothing is forked from a process that has threads, and
    the helper sees end-of-file on stdin the moment the caller goes away, so no orphans remain.
    Each helper gets one BLAS thread: the helpers themselves are the parallelism.
    """
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[k] = "1"
    return subprocess.Popen(
        [sys.executable, "-c", f"from {module} import {function}; {function}()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, close_fds=True,
    )
