"""Image folders in, uint8 arrays out: the one loader the CLI, the trainer and the GUI share.

Layout as torchvision's ImageFolder / Keras' `image_dataset_from_directory`: one subfolder per
class (sorted names), images anywhere below it. Unlike those, every image is decoded fully up front
(`load()`), so a truncated or corrupt file is found before training starts instead of crashing
epoch 3; bad files are skipped and *listed* (path and reason), never silently dropped.

Why the shapes and types are what they are:

* Images are converted once to the model's input (grayscale or RGB, resized to H x W) and kept as
  uint8 (N, C, H, W): 60,000 MNIST digits are 47 MB, not 188 MB of float32. Float32 exists only per
  batch (`iter_batches`), normalised as `(uint8 * scale - mean) / std`, the same formula a model
  file stores, so training, prediction and export cannot drift apart (`load_image` is the one
  preprocessing function for single files).
* Decoding small files is dominated by Python overhead and threads fight over the GIL, so large
  folders are decoded by a pool of processes (spawned, never forked: the GUI has threads).
* The decoded set is cached on disk (`$CNN_DESIGNER_CACHE`, else `$XDG_CACHE_HOME/cnn-designer`, else
  `~/.cache/cnn-designer`) per folder and target shape, one entry per file keyed on relative path,
  size and ctime (which also moves when permissions change): a changed, added or removed file is
  decoded again, the rest are reused. The cache is a plain `.npz` (no pickle); a damaged cache is
  ignored and rebuilt.
* Long loads report progress through a callback and can be cancelled (`cancel` is an Event or a
  callable), because the GUI runs them in a worker thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import EngineError

#: Extensions (lower case) that are read as images; everything else in a class folder is reported.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
#: The only decoders Pillow may use: a file is never handed to an exotic or risky plugin.
PIL_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP")
_FORMATS = list(PIL_FORMATS)
_EXIF_FORMATS = ("JPEG", "TIFF", "WEBP")
#: Images above this many pixels are refused before decoding (decompression bombs).
MAX_PIXELS = 50_000_000
#: Largest model input a stored preprocessing may produce from a pixel (real ones give about +-3).
MAX_INPUT_MAGNITUDE = 1e6
#: Ignored folder names besides hidden ones (macOS zip leftovers).
IGNORED_DIRS = {"__MACOSX"}
#: Bump when the decoding changes, so old cache entries are not reused.
CACHE_VERSION = 2
#: Folders at least this large are decoded by worker processes; smaller ones in the calling thread.
PARALLEL_THRESHOLD = 4000
#: A class with fewer images than this gets a warning.
TINY_CLASS = 10
#: A largest/smallest class ratio at or above this gets a warning.
UNBALANCED_RATIO = 5.0

ProgressFn = Callable[[int, int], None]


class DataError(EngineError):
    """A folder that cannot be used as a data set; the message names the folder."""


class ImageError(EngineError):
    """One image that cannot be used; the message names the file and the reason."""


class LoadCancelled(EngineError):
    """Loading was cancelled by the caller (the GUI's Cancel button)."""


# --------------------------------------------------------------------------------------------
# Preprocessing: the one definition of "what the model sees"
# --------------------------------------------------------------------------------------------
@dataclass
class Preprocessing:
    """How pixels become model input: colour, size, and `(uint8 * scale - mean) / std` per channel."""

    color: str  # "grayscale" | "rgb"
    height: int
    width: int
    scale: float = 1.0 / 255.0
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        c = self.channels
        if not self.mean:
            self.mean = [0.0] * c
        if not self.std:
            self.std = [1.0] * c

    @property
    def channels(self) -> int:
        return 1 if self.color == "grayscale" else 3

    @classmethod
    def for_input(cls, input_shape: Sequence[int]) -> Preprocessing:
        """Default preprocessing for an input (C, H, W): pixels / 255, no mean or std."""
        c, h, w = (int(d) for d in input_shape)
        if c not in (1, 3):
            raise DataError(
                f"the input has {c} channels but images load as 1 (grayscale) or 3 (RGB): "
                "set the input's channels to 1 or 3"
            )
        return cls("grayscale" if c == 1 else "rgb", h, w)

    def to_dict(self) -> dict[str, Any]:
        return {
            "color": self.color, "height": self.height, "width": self.width, "scale": self.scale,
            "mean": [float(m) for m in self.mean], "std": [float(s) for s in self.std],
        }

    @classmethod
    def from_dict(cls, raw: Any) -> Preprocessing:
        """Validate a stored preprocessing dict; DataError says which field is wrong."""
        if not isinstance(raw, dict):
            raise DataError('"preprocessing" must be an object')
        unknown = sorted(set(raw) - {"color", "height", "width", "scale", "mean", "std"})
        if unknown:
            raise DataError(f'preprocessing: unknown field "{unknown[0]}"')
        color = raw.get("color")
        if color not in ("grayscale", "rgb"):
            raise DataError(f'preprocessing: "color" must be "grayscale" or "rgb", got {color!r}')
        dims = []
        for key in ("height", "width"):
            v = raw.get(key)
            if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 65536:
                raise DataError(f'preprocessing: "{key}" must be a positive integer, got {v!r}')
            dims.append(v)
        scale = raw.get("scale", 1.0 / 255.0)
        if not _finite_number(scale) or scale <= 0:
            raise DataError(f'preprocessing: "scale" must be a positive number, got {scale!r}')
        c = 1 if color == "grayscale" else 3
        lists = {}
        for key, default, positive in (("mean", 0.0, False), ("std", 1.0, True)):
            v = raw.get(key, [default] * c)
            if not isinstance(v, list) or len(v) != c or not all(_finite_number(x) for x in v):
                raise DataError(f'preprocessing: "{key}" must be a list of {c} numbers, got {v!r}')
            if positive and any(x <= 0 for x in v):
                raise DataError(f'preprocessing: "{key}" values must be positive, got {v!r}')
            lists[key] = [float(x) for x in v]
        # what pixels 0 and 255 become: values that overflow (or are absurdly large) would make
        # every prediction NaN, so they are refused here rather than discovered as garbage output
        for i, (m, sd) in enumerate(zip(lists["mean"], lists["std"], strict=True)):
            for px in (0, 255):
                out = (px * float(scale) - m) / sd
                if not math.isfinite(out) or abs(out) > MAX_INPUT_MAGNITUDE:
                    raise DataError(
                        f'preprocessing: "scale" {scale!r}, "mean" {m!r} and "std" {sd!r} turn pixel value {px} '
                        f"into {out:g} (channel {i}); inputs must stay within +-{MAX_INPUT_MAGNITUDE:g}, e.g. "
                        "scale 1/255 with mean 0 and std 1")
        return cls(color, dims[0], dims[1], float(scale), lists["mean"], lists["std"])

    def normalize(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, C, H, W) -> float32 model input, in one fused multiply-add per channel."""
        c = self.channels
        std = np.asarray(self.std, np.float64)
        a = (self.scale / std).astype(np.float32).reshape(1, c, 1, 1)
        b = (-np.asarray(self.mean, np.float64) / std).astype(np.float32).reshape(1, c, 1, 1)
        out = images.astype(np.float32)
        out *= a
        out += b
        return out


def _finite_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# --------------------------------------------------------------------------------------------
# Decoding one image
# --------------------------------------------------------------------------------------------
def decode_image(
    path: str | os.PathLike, color: str, height: int, width: int, max_pixels: int = MAX_PIXELS
) -> np.ndarray:
    """Decode a file to uint8 (C, H, W) in the target colour and size; ImageError on bad content.

    Odd modes are mapped explicitly because Pillow's plain convert() gets them wrong for this
    purpose: transparency is composited on white (a transparent background is "paper", not black),
    16-bit and 32-bit integer images are scaled rather than clipped, palette images go through RGBA
    so a transparent palette entry is handled too.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    from engine import safeio

    p = os.fspath(path)
    try:  # a regular file under the image size cap, or a reason that says what is wrong
        raw = safeio.read_bytes(p, "image")
    except safeio.SafeIOError as e:
        raise ImageError(f"{p}: {e.reason}") from None
    if not raw:
        raise ImageError(f"{p}: empty file (0 bytes)")
    try:
        with open_image_bytes(raw) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise ImageError(f"{p}: image too large ({w}x{h} = {w * h:,} pixels; the limit is {max_pixels:,})")
            if im.format == "JPEG":  # decode at reduced scale when the target is small
                side = max(height, width)
                im.draft("L" if color == "grayscale" else "RGB", (side, side))
            im.load()
            if im.format in _EXIF_FORMATS or "exif" in im.info:  # parsing EXIF costs; most PNGs have none
                ImageOps.exif_transpose(im, in_place=True)
            im = _to_mode(im, color)
            if im.size != (width, height):
                im = im.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=3.0)
            arr = np.asarray(im, dtype=np.uint8)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{p}: not a readable image (expected PNG, JPEG, BMP, GIF, TIFF or WebP)") from None
    except Image.DecompressionBombError as e:  # Pillow's own check fired first (> 2x its limit)
        import re

        m = re.search(r"\((\d+) pixels\)", str(e))
        size_text = f"{int(m.group(1)):,} pixels" if m else "too many pixels"
        raise ImageError(f"{p}: image too large ({size_text}; the limit is {max_pixels:,})") from None
    except MemoryError:
        raise ImageError(f"{p}: image too large to decode (out of memory)") from None
    except Exception as e:  # Pillow raises many types (OSError, SyntaxError, ValueError, zlib.error)
        msg = str(e) or type(e).__name__
        if "truncated" in msg.lower() or isinstance(e, EOFError):
            raise ImageError(f"{p}: truncated or incomplete image data") from None
        raise ImageError(f"{p}: corrupt image ({msg})") from None
    if arr.ndim == 2:
        return arr[None, :, :].copy()
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def open_image_bytes(raw: bytes) -> Any:
    """Image.open on bytes, with only the app's decoders and without Pillow's
    DecompressionBombWarning on stderr: the pixel limit is the caller's check (MAX_PIXELS), which
    reports an oversized image as a reason, once."""
    import io
    import warnings

    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(io.BytesIO(raw), formats=_FORMATS)


def _to_mode(im: Any, color: str) -> Any:
    """Any Pillow mode -> "L" or "RGB" (see decode_image for why each case is explicit)."""
    from PIL import Image

    mode = im.mode
    if mode == "P" or mode == "PA":
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        a = np.asarray(im, dtype=np.float64) if mode != "I" else np.asarray(im).astype(np.float64)
        top = 65535.0 if mode != "I" or a.max(initial=0) > 255 else 255.0
        if mode == "I" and a.max(initial=0) > 65535:
            top = float(a.max())
        im = Image.fromarray(np.clip(np.rint(a * (255.0 / top)), 0, 255).astype(np.uint8), "L")
        mode = "L"
    elif mode == "F":
        a = np.asarray(im, dtype=np.float64)
        a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
        if a.size and a.max() <= 1.0 and a.min() >= 0.0:
            a = a * 255.0
        im = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
        mode = "L"
    if mode in ("RGBA", "LA", "La", "RGBa") or (mode in ("L", "RGB") and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, rgba).convert("RGB")
        mode = "RGB"
    target = "L" if color == "grayscale" else "RGB"
    if mode != target:
        if mode not in ("L", "RGB", "1"):
            im = im.convert("RGB")  # CMYK, YCbCr, LAB, HSV, ...
        im = im.convert(target)
    return im


def load_image(path: str | os.PathLike, prep: Preprocessing, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """One image file -> float32 (1, C, H, W) exactly as the model saw its training data.

    The app's own preprocessing: the CLI's predict, the GUI's Predict view and the export checks
    all call this, so a model can never be fed differently from how it was trained.
    """
    arr = decode_image(path, prep.color, prep.height, prep.width, max_pixels)
    return prep.normalize(arr[None])


# --------------------------------------------------------------------------------------------
# Scanning a folder
# --------------------------------------------------------------------------------------------
@dataclass
class SkippedFile:
    path: str
    reason: str


@dataclass
class FolderScan:
    """What a folder holds before any decoding: cheap enough for the GUI to show at once."""

    root: Path
    classes: list[str]
    #: per class, the image files (absolute paths), sorted
    files: list[list[str]]
    #: files that will not be read (wrong type, outside class folders), with the reason
    skipped: list[SkippedFile]

    @property
    def counts(self) -> list[int]:
        return [len(f) for f in self.files]

    @property
    def total(self) -> int:
        return sum(self.counts)


def _hidden(name: str) -> bool:
    return name.startswith(".") or name in IGNORED_DIRS


def scan_folder(root: str | os.PathLike, what: str = "data folder") -> FolderScan:
    """List classes and image files; DataError for a missing folder, no classes or an empty class."""
    r = Path(root).expanduser()
    if not r.exists():
        raise DataError(f"{what} not found: {r}")
    if not r.is_dir():
        raise DataError(f"{what} {r} is a file, not a folder of class subfolders")
    r = r.resolve()
    try:
        entries = sorted(os.scandir(r), key=lambda e: e.name)
    except OSError as e:
        raise DataError(f"cannot read {what} {r}: {e.strerror or e}") from None
    classes: list[str] = []
    files: list[list[str]] = []
    skipped: list[SkippedFile] = []
    for entry in entries:
        if _hidden(entry.name):
            continue
        if entry.is_dir():
            found: list[str] = []
            unreadable: list[OSError] = []  # os.walk skips what it cannot list; say so instead
            for dirpath, dirnames, filenames in os.walk(entry.path, onerror=unreadable.append):
                dirnames[:] = sorted(d for d in dirnames if not _hidden(d))
                prefix = dirpath + os.sep
                for name in sorted(filenames):
                    if name[0] == ".":
                        continue
                    dot = name.rfind(".")
                    ext = name[dot:] if dot > 0 else ""
                    if ext.lower() in IMAGE_EXTENSIONS:
                        found.append(prefix + name)
                    else:
                        skipped.append(SkippedFile(prefix + name, f"not an image file type ({ext or 'no extension'})"))
            for err in unreadable:
                if os.path.normpath(err.filename) == os.path.normpath(entry.path):
                    raise DataError(f"cannot read class folder {entry.path}: {err.strerror or err}")
                skipped.append(SkippedFile(err.filename, f"cannot read folder ({err.strerror or err})"))
            classes.append(entry.name)
            files.append(found)
        elif entry.is_file():
            if os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS:
                skipped.append(SkippedFile(entry.path, "not inside a class folder"))
    if not classes:
        raise DataError(
            f"{what} {r} has no class subfolders: put each class's images in a subfolder named after "
            f"the class (e.g. {r / 'cats'}, {r / 'dogs'})"
        )
    for name, f in zip(classes, files, strict=True):
        if not f:
            raise DataError(f"class folder {r / name} has no images (PNG, JPEG, BMP, GIF, TIFF or WebP)")
    return FolderScan(r, classes, files, skipped)


# --------------------------------------------------------------------------------------------
# Loading a folder
# --------------------------------------------------------------------------------------------
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


def cache_dir() -> Path:
    """Where decoded folders are cached (see the module docstring for the order)."""
    env = os.environ.get("CNN_DESIGNER_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "cnn-designer"


def _cache_path(root: Path, color: str, height: int, width: int, max_pixels: int) -> Path:
    key = f"{CACHE_VERSION}|{root}|{color}|{height}|{width}|{max_pixels}"
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return cache_dir() / "decoded" / f"{digest}.npz"


def _is_cancelled(cancel: Any) -> bool:
    if cancel is None:
        return False
    if isinstance(cancel, threading.Event):
        return cancel.is_set()
    return bool(cancel())


def _decode_chunk(paths: list[str], color: str, height: int, width: int, max_pixels: int):
    """Worker: decode a list of files; returns (uint8 images, ok flags, reasons)."""
    c = 1 if color == "grayscale" else 3
    out = np.zeros((len(paths), c, height, width), np.uint8)
    ok = np.zeros(len(paths), bool)
    reasons = [""] * len(paths)
    for i, p in enumerate(paths):
        try:
            out[i] = decode_image(p, color, height, width, max_pixels)
            ok[i] = True
        except ImageError as e:
            reasons[i] = str(e).removeprefix(p + ": ")
    return out, ok, reasons


@dataclass
class _CacheEntries:
    names: list[str]
    rel: dict[str, int]
    size: np.ndarray
    mtime: np.ndarray
    ok: np.ndarray
    reason: np.ndarray
    images: np.ndarray


def _read_cache(path: Path, c: int, h: int, w: int) -> _CacheEntries | None:
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
    return _CacheEntries(names, {r: i for i, r in enumerate(names)}, size, mtime, ok, reason, images)


def _write_cache(path: Path, rel: list[str], size: np.ndarray, mtime: np.ndarray, ok: np.ndarray,
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


def load_folder(
    root: str | os.PathLike,
    input_shape: Sequence[int] | None = None,
    *,
    prep: Preprocessing | None = None,
    classes: Sequence[str] | None = None,
    limit: int | None = None,
    seed: int = 0,
    progress: ProgressFn | None = None,
    cancel: Any = None,
    workers: int | None = None,
    cache: bool = True,
    max_pixels: int = MAX_PIXELS,
    parallel_threshold: int = PARALLEL_THRESHOLD,
    what: str = "data folder",
) -> ImageSet:
    """Decode an image folder for an input (C, H, W) or a Preprocessing; see the module docstring.

    `classes`: the class list to label with (a validation folder or `evaluate` must use the model's
    classes); the folder's subfolders must then be among them. `limit`: a stratified, seeded subset
    of at most that many images, picked before decoding. `progress(done, total)` is called from
    this thread; `cancel` (Event or callable) makes it raise LoadCancelled within one chunk.
    """
    t0 = time.perf_counter()
    if prep is None:
        if input_shape is None:
            raise TypeError("load_folder needs input_shape or prep")
        prep = Preprocessing.for_input(input_shape)
    color, h, w, c = prep.color, prep.height, prep.width, prep.channels
    scan = scan_folder(root, what)
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
    if limit is not None and 0 < limit < len(paths):
        keep = _stratified_pick(labels, limit, seed)
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

    cpath = _cache_path(scan.root, color, h, w, max_pixels)
    cached = _read_cache(cpath, c, h, w) if cache else None
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

    _decode_into(paths, todo, images, ok, reasons, prep, max_pixels, progress, cancel, workers,
                 parallel_threshold, from_cache, n)

    subset = len(paths) < scan.total
    if cache and (todo or cached is None or (not subset and len(cached.rel) != from_cache)):
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
        _write_cache(cpath, all_rel, all_size, all_mtime, all_ok, all_reason, all_images)
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
    report = LoadReport(str(scan.root), class_list, counts, skipped, _warnings(class_list, counts, scan),
                        decoded=len(todo), from_cache=from_cache, seconds=time.perf_counter() - t0)
    return ImageSet(images, labels, class_list, paths, report)


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _check_memory(n: int, c: int, h: int, w: int, root: Path, what: str) -> None:
    """Refuse up front what cannot fit, instead of being killed by the OS halfway through."""
    need = n * c * h * w
    total = _physical_memory()
    if total and need > total // 2:
        gb = 1024**3
        raise DataError(
            f"{what} {root}: {n:,} images at {c}x{h}x{w} need {need / gb:.1f} GB decoded, more than half of "
            f"this machine's {total / gb:.1f} GB: use a smaller input size or fewer images (--limit)")


def _warnings(classes: list[str], counts: list[int], scan: FolderScan) -> list[str]:
    out = []
    present = [(name, cnt) for name, cnt in zip(classes, counts, strict=True) if name in scan.classes]
    missing = [name for name in classes if name not in scan.classes]
    if missing:
        out.append(f"no folder for class(es) {', '.join(missing)} in {scan.root}")
    tiny = [f"{name!r} ({cnt})" for name, cnt in present if cnt < TINY_CLASS]
    if tiny:
        out.append(f"very few images in class {', '.join(tiny)}: aim for dozens per class at least")
    if len(present) >= 2:
        big = max(present, key=lambda t: t[1])
        small = min(present, key=lambda t: t[1])
        if small[1] and big[1] / small[1] >= UNBALANCED_RATIO:
            out.append(
                f"classes are unbalanced: {big[0]!r} has {big[1]} images, {small[0]!r} only {small[1]} "
                f"({big[1] / small[1]:.0f}x); accuracy can look good while {small[0]!r} is mostly wrong"
            )
    return out


def _decode_into(paths, todo, images, ok, reasons, prep, max_pixels, progress, cancel, workers,
                 parallel_threshold, done_before, total) -> None:
    color, h, w = prep.color, prep.height, prep.width
    done = done_before
    if progress:
        progress(done, total)
    if not todo:
        return
    nworkers = workers if workers is not None else min(2, os.cpu_count() or 1)
    if nworkers > 1 and len(todo) >= parallel_threshold:
        _decode_parallel(paths, todo, images, ok, reasons, prep, max_pixels, progress, cancel, nworkers,
                         done, total)
        return
    last = time.perf_counter()
    for k, i in enumerate(todo):
        if _is_cancelled(cancel):
            raise LoadCancelled("loading cancelled")
        try:
            images[i] = decode_image(paths[i], color, h, w, max_pixels)
            ok[i] = True
        except ImageError as e:
            reasons[i] = str(e).removeprefix(paths[i] + ": ")
        if progress and (time.perf_counter() - last > 0.05 or k == len(todo) - 1):
            last = time.perf_counter()
            progress(done + k + 1, total)


class _DecodeWorker:
    """One helper process decoding chunks of files (protocol: _worker_main; why a plain
    subprocess: engine.subproc.start_helper)."""

    def __init__(self) -> None:
        from engine.subproc import caller_pipe, start_helper

        self.proc = start_helper("engine.data")
        self.pipe = caller_pipe(self.proc)
        self.part: list[int] | None = None  # indices of the chunk in flight

    def send(self, part: list[int], paths: list[str], prep: Preprocessing, max_pixels: int) -> None:
        self.pipe.send({"paths": [paths[i] for i in part], "color": prep.color, "height": prep.height,
                        "width": prep.width, "max_pixels": max_pixels})
        self.part = part

    def receive(self, c: int, h: int, w: int) -> tuple[np.ndarray, list[bool], list[str]]:
        head = self.pipe.recv()
        n = head["n"]
        raw = self.pipe.recv_bytes(n * c * h * w)
        return np.frombuffer(raw, np.uint8).reshape(n, c, h, w), head["ok"], head["reasons"]

    def close(self) -> None:
        import subprocess

        # Close both pipes first: a helper blocked writing a chunk nobody will read then gets a
        # broken pipe and exits at once, instead of holding up a cancel or a window close.
        for pipe in (self.proc.stdin, self.proc.stdout):
            try:
                pipe.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _worker_main() -> None:
    """Helper process: for each request (a chunk of paths and the target format) answer with the
    count, ok flags and reasons, followed by the raw uint8 pixels; exit at end of input."""
    from engine.subproc import helper_pipe

    pipe = helper_pipe()
    while True:
        try:
            req = pipe.recv()
        except EOFError:
            return
        imgs, good, why = _decode_chunk(req["paths"], req["color"], req["height"], req["width"], req["max_pixels"])
        pipe.send({"n": len(good), "ok": good.tolist(), "reasons": why}, imgs.tobytes())


def _decode_parallel(paths, todo, images, ok, reasons, prep, max_pixels, progress, cancel, nworkers,
                     done, total) -> None:
    import select

    c, h, w = prep.channels, prep.height, prep.width
    # chunks big enough to amortise the round trip, small enough for steady progress and bounded
    # memory (at most ~16 MB of pixels in flight per helper, whatever the image size)
    chunk = max(4, min(500, max(32, len(todo) // (nworkers * 8)), (16 << 20) // (c * h * w)))
    chunks = [todo[k:k + chunk] for k in range(0, len(todo), chunk)]
    workers: list[_DecodeWorker] = []
    try:
        try:
            workers = [_DecodeWorker() for _ in range(nworkers)]
        except OSError:
            pass
        pos = 0
        for wk in workers:  # one chunk in flight per helper: it is always reading when we write
            if pos < len(chunks):
                wk.send(chunks[pos], paths, prep, max_pixels)
                pos += 1
        busy = [wk for wk in workers if wk.part is not None]
        while busy:
            if _is_cancelled(cancel):
                raise LoadCancelled("loading cancelled")
            ready, _, _ = select.select([wk.proc.stdout for wk in busy], [], [], 0.1)
            for wk in busy:
                if wk.proc.stdout not in ready:
                    continue
                part = wk.part
                try:
                    arr, good, why = wk.receive(c, h, w)
                except (EOFError, OSError, ValueError):  # a dead helper: its chunk is decoded here instead
                    arr, good, why = _decode_chunk([paths[i] for i in part], prep.color, h, w, max_pixels)
                    wk.part = None
                    workers.remove(wk)
                    wk.close()
                else:
                    wk.part = None
                idx = np.asarray(part)
                images[idx] = arr
                ok[idx] = np.asarray(good, bool)
                for i, r in zip(part, why, strict=True):
                    reasons[i] = r
                done += len(part)
                if progress:
                    progress(done, total)
                if wk in workers and pos < len(chunks):
                    wk.send(chunks[pos], paths, prep, max_pixels)
                    pos += 1
            busy = [wk for wk in workers if wk.part is not None]
        rest = [i for part in chunks[pos:] for i in part]  # left over if every helper died
        if rest:
            _decode_into(paths, rest, images, ok, reasons, prep, max_pixels, progress, cancel, 1, len(rest) + 1,
                         done, total)
    finally:
        for wk in workers:
            wk.close()


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
