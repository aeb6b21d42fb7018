"""engine.allocator: a training step's large arrays reuse freed memory instead of faulting fresh
pages in every step. Each case runs in a fresh interpreter: the malloc settings are per process."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="the setting is glibc's")

PROBE = r"""
import json, resource, sys
import numpy as np
from engine.allocator import give_back, keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else None

def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

def step():  # a step's arrays: several at once, of several sizes, all freed at its end
    kept_alive = [np.ones(mb << 20, np.uint8) for mb in (3, 9, 5, 12, 2, 7)]
    del kept_alive

for _ in range(3):
    step()
before = faults()
for _ in range(10):
    step()
steady = faults() - before
give_back()
print(json.dumps({"kept": kept, "faults": steady}))
"""


def _env(**env: str) -> dict:
    """This environment without glibc's malloc settings (plus `env`), the repository importable."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    e.update(env)
    e["PYTHONPATH"] = str(ROOT)
    return e


def _probe(mode: str, **env: str) -> dict:
    e = _env(**env)
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, env=e,
                         timeout=120, check=True)
    return json.loads(out.stdout)


def test_freed_arrays_are_reused_without_page_faults():
    pages = 10 * (38 << 20) // 4096
    plain = _probe("plain")
    kept = _probe("keep")
    assert kept["kept"] is True
    assert plain["faults"] > pages // 10  # glibc's default: some arrays mapped (or the heap trimmed) and faulted anew
    assert kept["faults"] < pages // 100, (plain, kept)


def test_the_users_own_malloc_settings_win():
    out = _probe("keep", MALLOC_TRIM_THRESHOLD_="131072")
    assert out["kept"] is False
    out = _probe("keep", GLIBC_TUNABLES="glibc.malloc.mmap_threshold=131072")
    assert out["kept"] is False


def test_a_model_asks_for_it():
    code = ("from engine.allocator import keep_freed_memory\n"
            "from engine.model import Model\nfrom engine.spec import Spec\n"
            "assert keep_freed_memory.cache_info().currsize == 0\n"
            "Model(Spec.from_dict({'format': 'cnn-designer/1', 'input': {'channels': 1, 'height': 8, 'width': 8},"
            " 'layers': [{'type': 'Flatten'}, {'type': 'Dense', 'units': 2}]}))\n"
            "print(keep_freed_memory.cache_info().currsize)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=120,
                         check=True)
    assert out.stdout.strip() == "1"
