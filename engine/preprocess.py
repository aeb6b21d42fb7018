"""What the model sees: one image file -> uint8 (C, H, W) -> float32 input, the same way everywhere.

Images are converted once to the model's input (grayscale or RGB, resized to H x W) and kept as
uint8 (N, C, H, W): 60,000 MNIST digits are 47 MB, not 188 MB of float32. Float32 exists only per
batch (`Preprocessing.normalize`), as `(uint8 * scale - mean) / std`, the same formula a model file
stores, so training, prediction and export cannot drift apart (`load_image` is the one
preprocessing function for single files).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.errors import EngineError

#: Extensions (lower case) read as images, everywhere: the loader, the data panel's totals, drops,
#: export samples and the file dialogs. Everything else in a class folder is reported, not read.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
#: The only decoders Pillow may use: a file is never handed to an exotic or risky plugin.
PIL_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP")
_FORMATS = list(PIL_FORMATS)
_EXIF_FORMATS = ("JPEG", "TIFF", "WEBP")
#: Images above this many pixels are refused before decoding (decompression bombs).
MAX_PIXELS = 50_000_000
#: Largest model input a stored preprocessing may produce from a pixel (real ones give about +-3).
MAX_INPUT_MAGNITUDE = 1e6


class DataError(EngineError):
    """A folder that cannot be used as a data set; the message names the folder."""


class ImageError(EngineError):
    """One image that cannot be used; the message names the file and the reason."""


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


def decode_chunk(paths: list[str], color: str, height: int, width: int, max_pixels: int):
    """Decode a list of files; returns (uint8 images, ok flags, reasons)."""
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
