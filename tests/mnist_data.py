"""Real MNIST for tests, read from ../shared/data/mnist (IDX, gzipped); never committed."""

from __future__ import annotations

import gzip
import os
from functools import cache
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FILES = {
    "train": ("train-images.idx3-ubyte.gz", "train-labels.idx1-ubyte.gz"),
    "test": ("t10k-images.idx3-ubyte.gz", "t10k-labels.idx1-ubyte.gz"),
}


def data_dir() -> Path:
    candidates = [os.environ.get("MNIST_DIR"), ROOT.parent / "shared" / "data" / "mnist"]
    for c in candidates:
        if c and (Path(c) / FILES["train"][0]).is_file():
            return Path(c)
    raise FileNotFoundError(f"real MNIST not found (set MNIST_DIR); tried {candidates}")


def _read_idx(path: Path) -> np.ndarray:
    raw = gzip.open(path, "rb").read()
    ndim = raw[3]
    dims = np.frombuffer(raw[4 : 4 + 4 * ndim], dtype=">u4").astype(int)
    return np.frombuffer(raw[4 + 4 * ndim :], dtype=np.uint8).reshape(dims)


@cache
def load(split: str) -> tuple[np.ndarray, np.ndarray]:
    d = data_dir()
    x = _read_idx(d / FILES[split][0])
    y = _read_idx(d / FILES[split][1])
    return x, y


def load_all():
    return (*load("train"), *load("test"))


def pick(split: str, per_class: int, seed: int) -> np.ndarray:
    """Indices of `per_class` images of each digit, seeded random."""
    _, y = load(split)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    return np.concatenate([order[y[order] == c][:per_class] for c in range(10)])


def write_folder(root: Path, split: str, per_class: int, seed: int = 0) -> Path:
    """root/<digit>/<index>.png for a seeded subset of real MNIST."""
    from PIL import Image

    x, y = load(split)
    for i in pick(split, per_class, seed):
        d = Path(root) / str(int(y[i]))
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(x[i]).save(d / f"{int(i):05d}.png")
    return Path(root)
