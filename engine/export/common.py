"""What every export needs: the model to export, its checks, its proof samples, atomic folders.

An export must predict exactly what the app predicts. So each one is made from a single
engine.trained.TrainedModel (architecture, weights, classes, preprocessing), is refused with one
clear sentence when the model is invalid or untrained, and carries sample images together with the
app's own probabilities for them, computed through the app's own image preprocessing.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from engine import safeio
from engine.data import Preprocessing
from engine.errors import EngineError
from engine.preprocess import IMAGE_EXTENSIONS
from engine.resources import sample_data_dir
from engine.shapes import infer
from engine.trained import TrainedModel

MAX_SAMPLES = 10
#: Larger sample images are shrunk to this side before they are stored (and their probabilities computed).
MAX_SAMPLE_SIDE = 512
#: The probability agreement predict.py --check demands (float32 arithmetic in another runtime).
CHECK_TOLERANCE = 1e-4


class ExportError(EngineError):
    """An export that cannot be made; the message is one sentence for the user."""


def metadata(tm: TrainedModel) -> dict[str, Any]:
    """The facts a user of an exported file needs to feed it (stored in every format)."""
    from engine import __version__

    return {
        "name": tm.name,
        "classes": list(tm.classes),
        "preprocessing": tm.preprocessing.to_dict(),
        "input_shape": list(tm.input_shape),
        "output": "probabilities" + (" ([1 - p, p] of a final one-unit Sigmoid)" if tm.binary else ""),
        "engine_version": __version__,
    }


def load_source(obj: TrainedModel | str | os.PathLike, allow_untrained: bool = False) -> TrainedModel:
    """The trained model to export: given, or read from a .cnnd path; checked (check_source)."""
    if isinstance(obj, TrainedModel):
        tm = obj
    elif isinstance(obj, (str, os.PathLike)):
        path = Path(obj)
        if path.suffix.lower() != ".cnnd":
            raise ExportError(f"{path} is not a model file: export needs a trained .cnnd model")
        from engine import modelfile

        tm = modelfile.load(path)
    else:
        raise ExportError(f"cannot export a {type(obj).__name__}: give a .cnnd path or a trained model")
    check_source(tm, allow_untrained)
    return tm


def check_source(tm: TrainedModel, allow_untrained: bool = False) -> None:
    """Refuse, with the reason and the fix, anything that would export a model that cannot work."""
    inf = infer(tm.spec)
    if not inf.valid:
        raise ExportError(f"cannot export an invalid architecture: {inf.error_message}")
    if not tm.state:
        raise ExportError("the model has no weights: train it (or load a trained .cnnd) before exporting")
    if not allow_untrained and not tm.trained:
        raise ExportError("the model has not been trained yet (no training history): train it before exporting")
    problem = tm.problem()
    if problem is not None:
        raise ExportError(f"cannot export: {problem}")


# --- images -------------------------------------------------------------------------------------
def default_sample_paths(folder: str | os.PathLike | None = None, pre: Preprocessing | None = None,
                         limit: int = MAX_SAMPLES) -> list[Path]:
    """A few real images: one per class from `folder` (a folder the user chose on this machine:
    the window's data folder), else the built-in digits.

    Never a path stored in a model file: a model may come from anyone, and must not choose which
    local files an export copies. Only images training would use are picked (decodable, not too
    large), so a skipped file never becomes a sample."""
    roots = [Path(folder)] if folder else []
    roots.append(sample_data_dir())
    for root in roots:
        picks = _one_per_class(root, limit, pre)
        if picks:
            return picks
    return []


def usable_image_problem(path: str | os.PathLike, pre: Preprocessing | None) -> str | None:
    """Why training would skip this file (the reason), or None when it is a usable image."""
    from engine.data import ImageError, decode_image

    pre = pre or Preprocessing("grayscale", 28, 28)
    try:
        decode_image(path, pre.color, pre.height, pre.width)
    except ImageError as e:
        return str(e).removeprefix(os.fspath(path) + ": ")
    return None


def _one_per_class(root: Path, limit: int, pre: Preprocessing | None = None) -> list[Path]:
    if not root.is_dir():
        return []
    try:
        classes = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    except OSError:
        return []
    picks: list[Path] = []
    for d in classes:
        try:
            files = sorted(
                f for f in d.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS and not f.name.startswith(".")
            )
        except OSError:
            continue
        pick = next((f for f in files[:50] if usable_image_problem(f, pre) is None), None)
        if pick is not None:
            picks.append(pick)
        if len(picks) >= limit:
            break
    return picks


def write_samples(folder: Path, src: TrainedModel, sample_paths: list[Path] | None) -> dict[str, Any]:
    """Copy sample images into folder/samples as PNG and record the app's probabilities for them.

    The probabilities are computed from the written PNGs, so predict.py --check compares against
    exactly the pixels it reads."""

    from PIL import Image, ImageOps

    from engine.data import MAX_PIXELS, load_image, open_image_bytes

    paths = list(sample_paths) if sample_paths else default_sample_paths(None, src.preprocessing)
    sdir = folder / "samples"
    sdir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for i, p in enumerate(paths):
        p = Path(p)
        problem = usable_image_problem(p, src.preprocessing)  # the rules training applies to its images
        if problem is not None:
            raise ExportError(f"cannot use {p} as a sample image: {problem}")
        try:
            with open_image_bytes(safeio.read_bytes(p, "image")) as im:
                if im.size[0] * im.size[1] > MAX_PIXELS:
                    raise ExportError(f"sample image {p} is too large ({im.size[0]}x{im.size[1]} pixels)")
                im.load()
                im = ImageOps.exif_transpose(im)
                if im.mode not in ("1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"):
                    im = im.convert("RGB")
                if max(im.size) > MAX_SAMPLE_SIDE:  # keep the export small; still resized by the model
                    im = im.convert("RGBA" if "A" in im.mode or "transparency" in im.info else "RGB")
                    im.thumbnail((MAX_SAMPLE_SIDE, MAX_SAMPLE_SIDE), Image.Resampling.LANCZOS)
                target = sdir / f"{i:02d}_{_safe(p.stem)}.png"
                im.save(target, format="PNG")
        except (OSError, ValueError, safeio.SafeIOError) as e:
            raise ExportError(f"cannot use {p} as a sample image: {e}") from None
        written.append(target)
    if not written:  # no images anywhere: deterministic noise still proves the arithmetic
        rng = np.random.default_rng(0)
        c, h, w = src.input_shape
        for i in range(3):
            arr = rng.integers(0, 256, size=(h, w) if c == 1 else (h, w, 3), dtype=np.uint8)
            target = sdir / f"{i:02d}_noise.png"
            Image.fromarray(arr).save(target, format="PNG")
            written.append(target)
    x = np.concatenate([load_image(t, src.preprocessing) for t in written])
    probs = np.asarray(src.predict_proba(x), dtype=np.float64)
    bad = [t.name for t, pr in zip(written, probs, strict=True) if not np.all(np.isfinite(pr))]
    if bad:  # an export whose own proof is NaN proves nothing (and expected.json would not be JSON)
        raise ExportError(f"the model's output is not a number for {len(bad)} of the {len(written)} sample images "
                          f"(e.g. {bad[0]}): its weights overflow; retrain it with a lower learning rate")
    record = {
        "about": "The app's own probabilities for these images; predict.py --check must reproduce them.",
        "tolerance": CHECK_TOLERANCE,
        "classes": list(src.classes),
        "preprocessing": src.preprocessing.to_dict(),
        "samples": [
            {
                "file": f"samples/{t.name}",
                "class": src.classes[int(np.argmax(pr))],
                "probabilities": [float(v) for v in pr],
            }
            for t, pr in zip(written, probs, strict=True)
        ],
    }
    (folder / "expected.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return record


def _safe(stem: str) -> str:
    keep = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in stem)
    return keep[:40] or "image"


# --- files ---------------------------------------------------------------------------------------
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_file(path: Path, data: bytes) -> None:
    """engine.safeio's write: regular files only, atomic, a replaced file keeps its mode and a new
    one gets the usual permissions (exports are meant to be shared)."""
    safeio.write_bytes(path, data, "export")


# --- folders ------------------------------------------------------------------------------------
class AtomicFolder:
    """Build a folder under a temporary name beside the target, then swap it in.

    A crash or an error leaves the previous folder (or nothing) in place, never half an export.
    An existing target is replaced only when it is empty or a previous CNN Designer export holding
    nothing but what that export wrote, unchanged: the marker lists every file with its size and
    time, so weights trained later in the folder (train.py's trained.safetensors), notes or an
    edited script are never deleted by exporting again."""

    MARKER = ".cnn-designer-export"
    HEADER = "written by CNN Designer's export; safe to delete\n"
    #: files the marker may list (more is not an export this tool wrote)
    MAX_FILES = 10_000

    def __init__(self, target: Path):
        self.target = Path(target)
        self.tmp: Path | None = None

    def __enter__(self) -> Path:
        t = self.target
        if t.exists() and not t.is_dir():
            raise ExportError(f"{t} exists and is not a folder")
        if t.is_dir() and any(t.iterdir()):
            self._check_replaceable(t)
        if not t.parent.is_dir():
            raise ExportError(f"folder {t.parent} does not exist")
        if not os.access(t.parent, os.W_OK):
            raise ExportError(f"cannot write {t}: folder {t.parent} is not writable")
        self.tmp = Path(tempfile.mkdtemp(dir=t.parent, prefix=f".{t.name}.", suffix=".tmp"))
        os.chmod(self.tmp, 0o777 & ~_umask())  # mkdtemp makes it private; an export is for sharing
        return self.tmp

    @classmethod
    def _files(cls, folder: Path) -> dict[str, list[int]]:
        """{relative path: [size, mtime_ns]} of every file below `folder` except the marker."""
        out: dict[str, list[int]] = {}
        for dirpath, dirs, names in os.walk(folder):
            dirs[:] = [d for d in dirs if d != "__pycache__"]  # Python's own, made by running predict.py
            for name in names:
                p = Path(dirpath) / name
                rel = p.relative_to(folder).as_posix()
                if rel == cls.MARKER:
                    continue
                st = os.lstat(p)
                out[rel] = [st.st_size, st.st_mtime_ns]
                if len(out) > cls.MAX_FILES:
                    return out
        return out

    def _check_replaceable(self, t: Path) -> None:
        if not (t / self.MARKER).is_file():
            raise ExportError(f"{t} is a folder with other files in it: choose a new or empty folder")
        try:
            text = safeio.read_bytes(t / self.MARKER, "json").decode("utf-8", "replace")
            listed = safeio.parse_json(text.split("\n", 1)[1], "export marker") if "\n" in text else None
        except safeio.SafeIOError:
            listed = None
        if not isinstance(listed, dict):  # an export made before the marker listed its files
            raise ExportError(f"{t} holds an earlier export whose files are not listed: move it away or choose "
                              "a new folder (nothing was changed)")
        for rel, facts in self._files(t).items():
            if listed.get(rel) != facts:
                raise ExportError(f"{t} holds {safeio.printable(rel)}, which the last export did not write (or which "
                                  "changed since): move it away or choose a new folder (nothing was changed)")

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self.tmp is not None
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        # the list of what this export wrote, for the next export's check (renaming keeps the times)
        (self.tmp / self.MARKER).write_text(self.HEADER + json.dumps(self._files(self.tmp), sort_keys=True) + "\n",
                                            encoding="utf-8")
        old = None
        if self.target.exists():
            old = Path(tempfile.mkdtemp(dir=self.target.parent, prefix=f".{self.target.name}.old."))
            os.rmdir(old)
            os.replace(self.target, old)
        try:
            os.replace(self.tmp, self.target)
        except BaseException:
            if old is not None:
                os.replace(old, self.target)
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
