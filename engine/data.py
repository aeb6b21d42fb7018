"""Image folders in, uint8 arrays out: the one loader the CLI, the trainer and the GUI share.

Unlike torchvision's ImageFolder, every image is decoded fully up front (`load_folder`), so a
truncated or corrupt file is found before training starts instead of crashing epoch 3; bad files
are skipped and *listed* (path and reason), never silently dropped. Then: splits, augmentation and
float32 batches.

The parts, one module each: engine.preprocess (what the model sees of one image),
engine.folders (what a folder holds, which subfolders train and validate), engine.decode_cache
(decoded folders kept on disk), engine.decoding (many files at once, in helper processes). The
names other modules import from here are re-exported below.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.decode_cache import cache_dir, cache_path, read_cache, write_cache
from engine.decoding import PARALLEL_THRESHOLD, Decoding, LoadCancelled, ProgressFn
from engine.folders import EmptyClassError, FolderScan, SkippedFile, folder_warnings, scan_folder
from engine.preprocess import (
    IMAGE_EXTENSIONS,
    MAX_PIXELS,
    PIL_FORMATS,
    DataError,
    ImageError,
    Preprocessing,
    decode_image,
    load_image,
    open_image_bytes,
)

__all__ = [
    "IMAGE_EXTENSIONS", "MAX_PIXELS", "PIL_FORMATS", "PARALLEL_THRESHOLD", "DataError", "ImageError", "LoadCancelled",
    "Preprocessing", "decode_image", "load_image", "open_image_bytes", "FolderScan", "SkippedFile", "scan_folder",
    "EmptyClassError",
    "cache_dir",
    "LoadReport", "ImageSet", "LoadOptions", "load_folder", "split_stratified", "Augment", "augment_batch",
    "iter_batches",
]


@dataclass
class LoadReport:
    """What happened while loading: shown by the CLI and the GUI's data panel."""

    root: str
    classes: list[str]
    counts: list[int]
    skipped: list[SkippedFile] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    decoded: int = 0
    from_cache: int = 0
    seconds: float = 0.0

    def lines(self, max_skipped: int = 20) -> list[str]:
        """Human-readable report, one item per line."""
        out = [f"{self.root}: {sum(self.counts)} images in {len(self.classes)} classes "
               f"({self.decoded} decoded, {self.from_cache} from cache, {self.seconds:.1f} s)"]
        if self.skipped:
            out.append(f"skipped {len(self.skipped)} file(s):")
            for s in self.skipped[:max_skipped]:
                out.append(f"  {s.path}: {s.reason.removeprefix(s.path + ': ')}")
            if len(self.skipped) > max_skipped:
                out.append(f"  ... and {len(self.skipped) - max_skipped} more")
        out += [f"warning: {w}" for w in self.warnings]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": self.root, "classes": list(self.classes), "counts": list(self.counts),
            "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped],
            "warnings": list(self.warnings), "decoded": self.decoded, "from_cache": self.from_cache,
            "seconds": self.seconds,
        }


@dataclass
class ImageSet:
    """Decoded images of one folder (or a split of it), ready for batching."""

    images: np.ndarray  # uint8 (N, C, H, W)
    labels: np.ndarray  # int64 (N,)
    classes: list[str]
    paths: list[str]
    report: LoadReport | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def counts(self) -> list[int]:
        return np.bincount(self.labels, minlength=len(self.classes)).tolist()

    def subset(self, index: np.ndarray) -> ImageSet:
        index = np.asarray(index, dtype=np.int64)
        return ImageSet(self.images[index], self.labels[index], list(self.classes),
                        [self.paths[i] for i in index], self.report)



def _stratified_pick(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """`n` indices keeping class proportions (at least one per class), seeded, sorted."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    counts = np.array([(labels == c).sum() for c in classes])
    exact = counts * n / len(labels)
    want = np.minimum(counts, np.maximum(1, np.floor(exact).astype(int)))
    while want.sum() > n and (want > 1).any():
        want[np.argmax(want)] -= 1
    while want.sum() < n and (want < counts).any():  # largest remainders first
        room = np.where(want < counts, exact - want, -np.inf)
        want[np.argmax(room)] += 1
    picked = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, want, strict=True)]
    return np.sort(np.concatenate(picked))


@dataclass(frozen=True)
class LoadOptions:
    """How a folder is read, as opposed to what for (the model's input and classes) and who is told
    (progress, cancel): the knobs the CLI's flags and the window's data panel set, one value
    passed through unchanged to load_folder."""

    #: a stratified, seeded subset of at most this many images, picked before decoding
    limit: int | None = None
    seed: int = 0
    #: leave out class folders that hold no image (the report lists them) instead of refusing
    skip_empty: bool = False
    #: decoding helper processes (None: up to 2), and the image count from which they are used
    workers: int | None = None
    parallel_threshold: int = PARALLEL_THRESHOLD
    #: keep decoded images on disk (engine.decode_cache) and reuse them while the files are unchanged
    cache: bool = True
    #: images with more pixels than this are skipped (a decompression bomb must not fill memory)
    max_pixels: int = MAX_PIXELS


def load_folder(
    root: str | os.PathLike,
    input_shape: Sequence[int] | None = None,
    *,
    prep: Preprocessing | None = None,
    classes: Sequence[str] | None = None,
    options: LoadOptions = LoadOptions(),
    progress: ProgressFn | None = None,
    cancel: Any = None,
    what: str = "data folder",
) -> ImageSet:
    """Decode an image folder for an input (C, H, W) or a Preprocessing; see the module docstring.

    `classes`: the class list to label with (a validation folder or `evaluate` must use the model's
    classes); the folder's subfolders must then be among them. `options`: how to read it (subset,
    helper processes, cache; LoadOptions). `progress(done, total)` is called from this thread;
    `cancel` (Event or callable) makes it raise LoadCancelled within one chunk. `what` names the
    folder in messages ("validation folder").
    """
    t0 = time.perf_counter()
    if prep is None:
        if input_shape is None:
            raise TypeError("load_folder needs input_shape or prep")
        prep = Preprocessing.for_input(input_shape)
    color, h, w, c = prep.color, prep.height, prep.width, prep.channels
    opt = options
    max_pixels = opt.max_pixels
    scan = scan_folder(root, what, opt.skip_empty)
    if classes is None:
        class_list = list(scan.classes)
        label_of = {name: i for i, name in enumerate(class_list)}
    else:
        class_list = list(classes)
        label_of = {name: i for i, name in enumerate(class_list)}
        unknown = [name for name in scan.classes if name not in label_of]
        if unknown:
            raise DataError(
                f"{what} {scan.root} has class folder {unknown[0]!r}, which is not one of the model's "
                f"classes ({', '.join(class_list)})"
            )
    paths = [p for f in scan.files for p in f]
    labels = np.array([label_of[name] for name, f in zip(scan.classes, scan.files, strict=True) for _ in f],
                      dtype=np.int64)
    if opt.limit is not None and 0 < opt.limit < len(paths):
        keep = _stratified_pick(labels, opt.limit, opt.seed)
        paths = [paths[i] for i in keep]
        labels = labels[keep]

    # stat every file: the cache key, and the moment we notice files that vanished
    n = len(paths)
    _check_memory(n, c, h, w, scan.root, what)
    sizes = np.zeros(n, np.int64)
    mtimes = np.zeros(n, np.int64)
    skipped = list(scan.skipped)
    ok = np.zeros(n, bool)
    reasons = [""] * n
    images = np.zeros((n, c, h, w), np.uint8)
    size_list, mtime_list = [-1] * n, [0] * n
    stat = os.stat
    for i, p in enumerate(paths):
        try:
            st = stat(p)
            # ctime, not mtime: it also changes when the file's permissions do, so a cached file
            # that became unreadable is read again (and reported), never used silently
            size_list[i], mtime_list[i] = st.st_size, st.st_ctime_ns
        except OSError as e:
            reasons[i] = f"cannot read ({e.strerror or e})"
    sizes[:] = size_list
    mtimes[:] = mtime_list
    cut = len(str(scan.root).rstrip(os.sep)) + 1  # every path was built as root + os.sep + relative path
    rel = [p[cut:] for p in paths]

    cpath = cache_path(scan.root, color, h, w, max_pixels)
    cached = read_cache(cpath, c, h, w) if opt.cache else None
    hit = np.zeros(n, bool)
    if cached is not None and n:
        j = np.array([cached.rel.get(r, -1) for r in rel], np.int64)
        jj = np.maximum(j, 0)
        hit = (j >= 0) & (sizes >= 0) & (cached.size[jj] == sizes) & (cached.mtime[jj] == mtimes)
        hi = np.flatnonzero(hit)
        good = hi[cached.ok[jj[hi]]]
        if len(good) == n == len(cached.rel) and np.array_equal(jj, np.arange(n)):
            images = cached.images  # the usual second run: the cached array as it is, no copy
        else:
            images[good] = cached.images[jj[good]]  # one gather, not 60,000 small copies
        ok[good] = True
        for i in hi[~cached.ok[jj[hi]]]:
            reasons[i] = str(cached.reason[jj[i]])
    from_cache = int(hit.sum())
    todo: list[int] = np.flatnonzero(~hit & (sizes >= 0)).tolist()

    Decoding(paths, images, ok, reasons, prep, max_pixels, progress, cancel, done=from_cache, total=n).run(
        todo, opt.workers, opt.parallel_threshold)

    subset = len(paths) < scan.total
    if opt.cache and (todo or cached is None or (not subset and len(cached.rel) != from_cache)):
        # entries of this run, plus (for a --limit subset) the other entries of the old cache: they
        # are checked against size and mtime whenever they are used, and a full run drops stale ones
        valid = [i for i in range(n) if sizes[i] >= 0]
        extra: list[int] = []
        if cached is not None and subset:
            mine = set(rel)
            extra = [j for r, j in cached.rel.items() if r not in mine]
        e = np.asarray(extra, np.int64)
        all_rel = [rel[i] for i in valid] + [cached.names[j] for j in extra]
        all_size = np.concatenate([sizes[valid], cached.size[e] if extra else np.zeros(0, np.int64)])
        all_mtime = np.concatenate([mtimes[valid], cached.mtime[e] if extra else np.zeros(0, np.int64)])
        all_ok = np.concatenate([ok[valid], cached.ok[e] if extra else np.zeros(0, bool)])
        all_reason = [reasons[i] for i in valid] + [str(cached.reason[j]) for j in extra]
        if len(valid) == n and not extra:
            all_images = images
        else:
            all_images = np.concatenate([images[valid], cached.images[e]]) if extra else images[valid]
        write_cache(cpath, all_rel, all_size, all_mtime, all_ok, all_reason, all_images)
        del all_images
    del cached

    for i in np.flatnonzero(~ok):
        skipped.append(SkippedFile(paths[i], reasons[i] or "unreadable"))
    keep = np.flatnonzero(ok)
    if len(keep) < n:
        images = images[keep]
        labels = labels[keep]
        paths = [paths[i] for i in keep]
    counts = np.bincount(labels, minlength=len(class_list)).tolist()
    for name in scan.classes:
        if counts[label_of[name]] == 0:
            raise DataError(
                f"class folder {scan.root / name} has no usable images (all were skipped: "
                f"{next(s.reason for s in skipped if s.path.startswith(str(scan.root / name) + os.sep))})"
            )
    if classes is None and len(class_list) < 2:
        raise DataError(
            f"{what} {scan.root} has only one class ({class_list[0]!r}): a classifier needs at least two "
            "class subfolders"
        )
    # the report's figures add up to the images loaded: a file that failed to decode (now or in a
    # cached earlier run) is a skipped file, not a decoded or cached image
    report = LoadReport(str(scan.root), class_list, counts, skipped, folder_warnings(class_list, counts, scan),
                        decoded=int(ok[todo].sum()), from_cache=int((ok & hit).sum()),
                        seconds=time.perf_counter() - t0)
    return ImageSet(images, labels, class_list, paths, report)



def _check_memory(n: int, c: int, h: int, w: int, root: Path, what: str) -> None:
    """Refuse up front what cannot fit (engine.memory's budget), instead of being killed by the OS
    halfway through."""
    from engine.memory import budget, human

    need = n * c * h * w
    limit, why = budget()
    if need > limit:
        raise DataError(
            f"{what} {root}: {n:,} images at {c}x{h}x{w} need {human(need)} decoded, more than the "
            f"{human(limit)} budget ({why}): use a smaller input size or fewer images (--limit)")


# --------------------------------------------------------------------------------------------
# Splits, augmentation and batches
# --------------------------------------------------------------------------------------------
def split_stratified(data: ImageSet, fraction: float, seed: int = 0) -> tuple[ImageSet, ImageSet]:
    """(train, validation): `fraction` of every class (at least one image, never all), seeded."""
    if not 0 < fraction < 1:
        raise DataError(f"the validation split must be between 0 and 1 (e.g. 0.1), got {fraction}")
    rng = np.random.default_rng(seed)
    val_idx = []
    for c in range(data.num_classes):
        idx = np.flatnonzero(data.labels == c)
        if len(idx) < 2:
            continue
        k = min(len(idx) - 1, max(1, int(round(len(idx) * fraction))))
        val_idx.append(rng.permutation(idx)[:k])
    val = np.sort(np.concatenate(val_idx)) if val_idx else np.zeros(0, np.int64)
    mask = np.ones(len(data), bool)
    mask[val] = False
    return data.subset(np.flatnonzero(mask)), data.subset(val)


@dataclass
class Augment:
    """Training-only augmentation, random per image: shift (fraction of the size), rotation (degrees),
    optional horizontal flip (off by default: a flipped digit is a different symbol)."""

    shift: float = 0.1
    rotate: float = 10.0
    hflip: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"shift": self.shift, "rotate": self.rotate, "hflip": self.hflip}


def augment_batch(images: np.ndarray, rng: np.random.Generator, aug: Augment) -> np.ndarray:
    """uint8 (B, C, H, W) -> same shape, each image shifted/rotated/flipped at random.

    One affine map per image, sampled with nearest neighbour and edge clamping through a single
    fancy-indexing gather for the whole batch: no Python loop over images or pixels.
    """
    b, c, h, w = images.shape
    ang = np.deg2rad(rng.uniform(-aug.rotate, aug.rotate, b)) if aug.rotate else np.zeros(b)
    tx = rng.uniform(-aug.shift, aug.shift, b) * w if aug.shift else np.zeros(b)
    ty = rng.uniform(-aug.shift, aug.shift, b) * h if aug.shift else np.zeros(b)
    flip = rng.random(b) < 0.5 if aug.hflip else np.zeros(b, bool)
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    xs = (np.arange(w) - cx)[None, None, :] - tx[:, None, None]
    ys = (np.arange(h) - cy)[None, :, None] - ty[:, None, None]
    cos, sin = np.cos(ang)[:, None, None], np.sin(ang)[:, None, None]
    sx = cos * xs + sin * ys + cx
    sy = -sin * xs + cos * ys + cy
    sx = np.where(flip[:, None, None], (w - 1) - sx, sx)
    ix = np.clip(np.rint(sx), 0, w - 1).astype(np.intp)
    iy = np.clip(np.rint(sy), 0, h - 1).astype(np.intp)
    flat = (iy * w + ix).reshape(b, 1, h * w)
    src = images.reshape(b, c, h * w)
    out = src[np.arange(b)[:, None, None], np.arange(c)[None, :, None], flat]
    return out.reshape(b, c, h, w)


def iter_batches(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    prep: Preprocessing,
    rng: np.random.Generator | None = None,
    augment: Augment | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Float32 (x, y) batches; shuffled when `rng` is given, augmented when `augment` is (needs rng)."""
    n = len(labels)
    order = rng.permutation(n) if rng is not None else None
    for start in range(0, n, batch_size):
        if order is not None:
            idx = order[start:start + batch_size]
            xb, yb = images[idx], labels[idx]
        else:
            xb, yb = images[start:start + batch_size], labels[start:start + batch_size]
        if augment is not None and rng is not None:
            xb = augment_batch(xb, rng, augment)
        yield prep.normalize(xb), yb
