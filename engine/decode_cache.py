"""The decode cache: decoded folders kept on disk so the second load of a folder is instant.

Where: `$CNN_DESIGNER_CACHE`, else `$XDG_CACHE_HOME/cnn-designer`, else `~/.cache/cnn-designer`; one
entry per folder and target shape, one row per file keyed on relative path, size and ctime (which
also moves when permissions change): a changed, added or removed file is decoded again, the rest
are reused. The cache is a plain `.npz`
(no pickle); a damaged cache is ignored and rebuilt.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.places import cache_dir

#: Bump when the decoding changes, so old cache entries are not reused.
CACHE_VERSION = 2


def cache_path(root: Path, color: str, height: int, width: int, max_pixels: int) -> Path:
    key = f"{CACHE_VERSION}|{root}|{color}|{height}|{width}|{max_pixels}"
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return cache_dir() / "decoded" / f"{digest}.npz"


@dataclass
class CacheEntries:
    names: list[str]
    rel: dict[str, int]
    size: np.ndarray
    mtime: np.ndarray
    ok: np.ndarray
    reason: np.ndarray
    images: np.ndarray


def read_cache(path: Path, c: int, h: int, w: int) -> CacheEntries | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            rel = z["rel"]
            size, mtime, ok, reason = z["size"], z["mtime"], z["ok"], z["reason"]
            images = z["images"]
    except (OSError, ValueError, KeyError, EOFError):
        return None
    except Exception:  # zipfile.BadZipFile and friends: a damaged cache is just rebuilt
        return None
    n = len(rel)
    if not (len(size) == len(mtime) == len(ok) == len(reason) == n and images.shape == (n, c, h, w)
            and images.dtype == np.uint8):
        return None
    names = [str(r) for r in rel]
    return CacheEntries(names, {r: i for i, r in enumerate(names)}, size, mtime, ok, reason, images)


def write_cache(path: Path, rel: list[str], size: np.ndarray, mtime: np.ndarray, ok: np.ndarray,
                 reason: list[str], images: np.ndarray) -> None:
    """Atomic: a crash or a second app writing the same cache never leaves a half file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".cache.", suffix=".npz.tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, rel=np.array(rel, dtype=str), size=size, mtime=mtime, ok=ok,
                         reason=np.array(reason, dtype=str), images=images)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError:
        pass  # a read-only or full cache location only costs speed next time
