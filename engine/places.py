"""Where the tool keeps its own files: the run store and the decode cache.

A leaf module (nothing from engine imported) so that engine.safeio can refuse to let a command's
output replace them without importing their owners (engine.runs, engine.decode_cache).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

#: the run store's database file, inside store_dir() (SQLite adds -wal and -shm beside it)
STORE_FILE = "runs.sqlite"


def store_dir() -> Path:
    """Where runs are kept: $CNN_DESIGNER_RUNS, else the user data folder (XDG rule on Linux).
    The window uses this too, so the CLI and the window always share one store."""
    env = os.environ.get("CNN_DESIGNER_RUNS")
    if env:
        return Path(env).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        xdg = os.environ.get("XDG_DATA_HOME")
        base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "share"
    return base / "cnn-designer" / "runs"


def cache_dir() -> Path:
    """Where decoded folders are cached: $CNN_DESIGNER_CACHE, else $XDG_CACHE_HOME/cnn-designer,
    else ~/.cache/cnn-designer."""
    env = os.environ.get("CNN_DESIGNER_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "cnn-designer"
