"""Generated images whose answer is known: one small shape at a random place among distractors.

The class is given by the shape alone (hollow square, plus, X); the distractors (short bars and
dots, the same for every class) sit anywhere else. A faithful saliency map must therefore point at
the shape, and the tests know exactly where it is.
"""

from __future__ import annotations

import numpy as np

SHAPES = {
    "square": np.array([[1, 1, 1, 1, 1, 1, 1],
                        [1, 0, 0, 0, 0, 0, 1],
                        [1, 0, 0, 0, 0, 0, 1],
                        [1, 0, 0, 0, 0, 0, 1],
                        [1, 0, 0, 0, 0, 0, 1],
                        [1, 0, 0, 0, 0, 0, 1],
                        [1, 1, 1, 1, 1, 1, 1]], bool),
    "plus": np.zeros((7, 7), bool),
    "x": np.eye(7, dtype=bool) | np.eye(7, dtype=bool)[::-1],
}
SHAPES["plus"][3, :] = True
SHAPES["plus"][:, 3] = True
CLASSES = sorted(SHAPES)


def make(n: int, size: int = 32, distractors: int = 3, seed: int = 0, colour: bool = False):
    """(images uint8 (n, 1, size, size), labels (n,), boxes (n, 4) as y0, x0, y1, x1 of the shape).

    `colour` gives (n, 3, size, size) images closer to photographs: a random muted background with
    noise, and the shape and distractors each in a random bright colour, so colour says nothing
    about the class and the network must find the shape."""
    if colour:
        return _colour(n, size, distractors, seed)
    rng = np.random.default_rng(seed)
    x = np.zeros((n, 1, size, size), np.uint8)
    y = np.arange(n) % len(CLASSES)
    rng.shuffle(y)
    boxes = np.zeros((n, 4), int)
    for i in range(n):
        img = x[i, 0]
        a, b = rng.integers(0, size - 7, 2)
        boxes[i] = a, b, a + 7, b + 7
        for _ in range(distractors):  # bars and dots away from the shape
            for _try in range(20):
                length = int(rng.integers(1, 5))
                vertical = rng.random() < 0.5
                hh, ww = (length, 1) if vertical else (1, length)
                p, q = rng.integers(0, size - hh), rng.integers(0, size - ww)
                if p + hh < a - 1 or p > a + 8 or q + ww < b - 1 or q > b + 8:
                    img[p:p + hh, q:q + ww] = rng.integers(160, 256)
                    break
        img[a:a + 7, b:b + 7][SHAPES[CLASSES[y[i]]]] = rng.integers(180, 256)
    return x, y, boxes


def _colour(n: int, size: int, distractors: int, seed: int):
    grey, y, boxes = make(n, size, distractors, seed)
    rng = np.random.default_rng(seed + 1)
    out = np.empty((n, 3, size, size), np.uint8)
    for i in range(n):
        back = rng.integers(30, 110, 3).reshape(3, 1, 1) + rng.normal(0, 8, (3, size, size))
        ink = grey[i, 0] > 0
        a, b, c, d = boxes[i]
        on_shape = np.zeros_like(ink)
        on_shape[a:c, b:d] = ink[a:c, b:d]
        img = back
        for mask in (on_shape, ink & ~on_shape):  # the shape, then the distractors, each its own colour
            paint = rng.integers(150, 256, 3).astype(float)
            paint[rng.integers(0, 3)] = rng.integers(0, 80)  # saturated: one channel low
            img = np.where(mask[None], paint.reshape(3, 1, 1), img)
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
    return out, y, boxes


def write_folder(root, n: int, seed: int = 0):
    from pathlib import Path

    from PIL import Image

    x, y, _ = make(n, seed=seed)
    for i in range(n):
        d = Path(root) / CLASSES[y[i]]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(x[i, 0]).save(d / f"{i:05d}.png")
    return Path(root)
