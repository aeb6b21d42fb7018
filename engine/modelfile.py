"""Trained model files (`.cnnd`): a zip of `model.json` and `weights.npz`, written atomically and
read as untrusted input.

    model.json = {"format": "cnn-designer-model/1", "architecture": <cnn-designer/1 spec>,
                  "classes": [...], "preprocessing": {"color", "height", "width", "scale", "mean", "std"},
                  "training": {...}, "history": [per-epoch metrics], "created": ISO time,
                  "engine_version": "..."}
    weights.npz = one float32 array per name "layers.{i}.weight|bias|running_mean|running_var"

Why it is read the way it is: a model file may come from anyone, so loading never extracts
anything, opens only the two known members, caps every size before reading (a zip or npz bomb
cannot fill memory), parses arrays with `allow_pickle=False` after checking each array header's
dtype and shape against the architecture, and turns every problem into one ModelFileError line.
Saving builds the whole file in memory and replaces the target with `os.replace`, so a crash
mid-save leaves the previous file intact.

What is stored is an engine.trained.TrainedModel; this module only reads and writes it:

    tm = modelfile.load("digits.cnnd")      # ModelFileError with a clear message on any problem
    tm.spec, tm.classes, tm.preprocessing, tm.training, tm.history, tm.state
    probs = tm.predict_files(["a.png"])     # the app's own preprocessing + predict_proba
    modelfile.save("out.cnnd", tm)          # e.g. tm = trainer.trained()
"""

from __future__ import annotations

import io
import json
import math
import os
import zipfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from engine import safeio
from engine.data import DataError, Preprocessing
from engine.errors import EngineError, SpecError
from engine.memory import MemoryBudgetError, load_estimate
from engine.shapes import infer
from engine.spec import Spec
from engine.trained import TrainedModel

FORMAT = "cnn-designer-model/1"
FORMAT_PREFIX = "cnn-designer-model/"
MEMBERS = ("model.json", "weights.npz")
MAX_FILE_BYTES = 4 * 1024**3  # the .cnnd itself
MAX_JSON_BYTES = 16 * 1024 * 1024
MAX_MEMBERS = 16  # more entries than this is not a model file, whatever they are
MAX_ARRAYS = 10_000
NPY_HEADER_SLACK = 4096  # bytes allowed per array beyond its data (the .npy header)
TOP_LEVEL_KEYS = ("format", "architecture", "classes", "preprocessing", "training", "history", "created",
                  "engine_version")


class ModelFileError(EngineError):
    """A model file that cannot be read or written; the message names the file and the problem."""


def to_json_dict(tm: TrainedModel) -> dict[str, Any]:
    """model.json's content."""
    return {
        "format": FORMAT,
        "architecture": tm.spec.to_dict(),
        "classes": list(tm.classes),
        "preprocessing": tm.preprocessing.to_dict(),
        "training": safeio.to_jsonable(tm.training),
        "history": safeio.to_jsonable(tm.history),
        "created": tm.created or datetime.now(UTC).isoformat(timespec="seconds"),
        "engine_version": tm.engine_version,
    }


def to_bytes(tm: TrainedModel) -> bytes:
    """The whole .cnnd in memory; ModelFileError if the parts do not fit each other."""
    problem = tm.problem()
    if problem is not None:
        raise ModelFileError(f"cannot save the model: {problem}")
    doc = json.dumps(to_json_dict(tm), indent=1, allow_nan=False).encode("utf-8")
    wbuf = io.BytesIO()
    np.savez(wbuf, **{k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tm.state.items()})
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr(zipfile.ZipInfo("model.json", date_time=(1980, 1, 1, 0, 0, 0)), doc,
                   compress_type=zipfile.ZIP_DEFLATED)
        z.writestr(zipfile.ZipInfo("weights.npz", date_time=(1980, 1, 1, 0, 0, 0)), wbuf.getvalue(),
                   compress_type=zipfile.ZIP_STORED)
    return out.getvalue()


def save(path: str | os.PathLike, tm: TrainedModel) -> TrainedModel:
    """Write a `.cnnd` atomically (see module docstring); `tm.path` becomes `path`."""
    p = Path(path)
    if p.is_dir():
        raise ModelFileError(f"{p} is a folder: give a file name such as {p / 'model.cnnd'}")
    data = to_bytes(tm)
    try:
        safeio.write_bytes(p, data, "model")
    except safeio.SafeIOError as e:
        raise ModelFileError(str(e)) from None
    tm.path = p
    return tm


# --------------------------------------------------------------------------------------------
# Loading (untrusted input)
# --------------------------------------------------------------------------------------------
def load(path: str | os.PathLike) -> TrainedModel:
    """Read and fully validate a `.cnnd`; ModelFileError (one line) on any problem."""
    p = Path(path)
    try:
        with safeio.open_regular(p, "model", MAX_FILE_BYTES) as f:
            return _load_from(f, p)
    except safeio.SafeIOError as e:
        raise ModelFileError(str(e)) from None
    except ModelFileError:
        raise
    except OSError as e:
        raise ModelFileError(f"cannot read {p}: {e.strerror or e}") from None
    except Exception as e:  # a bug or an exotic zip defect must still be one line for the user
        raise ModelFileError(f"{p}: not a valid model file ({type(e).__name__}: {e})") from None


def loads(data: bytes, name: str = "<bytes>") -> TrainedModel:
    """Like load() for bytes already in memory (drag and drop, tests)."""
    try:
        return _load_from(io.BytesIO(data), Path(name))
    except ModelFileError:
        raise
    except Exception as e:
        raise ModelFileError(f"{name}: not a valid model file ({type(e).__name__}: {e})") from None


def _read_member(z: zipfile.ZipFile, info: zipfile.ZipInfo, cap: int, where: str) -> bytes:
    """Read at most `cap` bytes, not trusting the size the zip declares."""
    if info.file_size > cap:
        raise ModelFileError(f"{where}: member {info.filename} is {info.file_size:,} bytes, more than the "
                             f"{cap:,} this model can need")
    if info.flag_bits & 0x1:
        raise ModelFileError(f"{where}: member {info.filename} is encrypted")
    try:
        with z.open(info) as f:
            data = f.read(cap + 1)
    except (zipfile.BadZipFile, EOFError, zlib_error()) as e:
        raise ModelFileError(f"{where}: member {info.filename} is damaged ({e})") from None
    if len(data) > cap:
        raise ModelFileError(f"{where}: member {info.filename} is larger than it declares")
    return data


def zlib_error() -> type[Exception]:
    import zlib

    return zlib.error


def _open_zip(f: Any, where: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(f)
    except zipfile.BadZipFile:
        raise ModelFileError(f"{where}: not a CNN Designer model file (not a zip archive, or damaged)") from None


def _check_members(z: zipfile.ZipFile, where: str, allowed: tuple[str, ...] | None) -> dict[str, zipfile.ZipInfo]:
    infos = z.infolist()
    if len(infos) > (MAX_MEMBERS if allowed else MAX_ARRAYS):
        raise ModelFileError(f"{where}: {len(infos)} entries is too many for a model file")
    seen: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        name = info.filename
        if name.startswith(("/", "\\")) or ".." in name.replace("\\", "/").split("/") or ":" in name:
            raise ModelFileError(f"{where}: unsafe entry name {name!r} (points outside the archive)")
        if name in seen:
            raise ModelFileError(f"{where}: entry {name!r} appears twice")
        if allowed is not None and name not in allowed:
            raise ModelFileError(f"{where}: unexpected entry {name!r} (a model file holds only "
                                 f"{' and '.join(allowed)})")
        seen[name] = info
    if allowed is not None:
        for name in allowed:
            if name not in seen:
                raise ModelFileError(f"{where}: {name} is missing (is this a CNN Designer model file?)")
    return seen


def _load_from(f: Any, p: Path) -> TrainedModel:
    where = str(p)
    with _open_zip(f, where) as z:
        members = _check_members(z, where, MEMBERS)
        raw_json = _read_member(z, members["model.json"], MAX_JSON_BYTES, where)
        doc = _parse_json(raw_json, where)
        spec, classes, prep, training, history = _parse_doc(doc, where)
        inf = infer(spec)
        if not inf.valid:
            raise ModelFileError(f"{where}: the architecture is invalid: {inf.error_message}")
        try:  # before decompressing a byte of weights
            load_estimate(inf).check()
        except MemoryBudgetError as e:
            raise ModelFileError(f"{where}: {e}") from None
        want = inf.weight_shapes()
        cap = sum(4 * math.prod(s) + NPY_HEADER_SLACK for s in want.values()) + 22 + 4096
        cap += len(want) * 2 * (100 + 2 * max((len(k) for k in want), default=0))  # zip headers
        raw_w = _read_member(z, members["weights.npz"], cap, where)
    tm = TrainedModel(spec, _read_weights(raw_w, want, where), classes, prep, training, history,
                      str(doc.get("created", "")), str(doc.get("engine_version", "")), p)
    problem = tm.problem()
    if problem is not None:
        raise ModelFileError(f"{where}: {problem}")
    return tm


def _parse_json(raw: bytes, where: str) -> dict[str, Any]:
    try:
        doc = safeio.parse_json(raw, f"{where}: model.json")
    except safeio.SafeIOError as e:
        raise ModelFileError(str(e)) from None
    if not isinstance(doc, dict):
        raise ModelFileError(f"{where}: model.json must be a JSON object")
    fmt = doc.get("format")
    if fmt != FORMAT:
        if isinstance(fmt, str) and fmt.startswith(FORMAT_PREFIX):
            raise ModelFileError(f"{where}: made by a newer CNN Designer (format {fmt}); this version reads {FORMAT}")
        raise ModelFileError(f"{where}: not a CNN Designer model file (format {fmt!r}, expected {FORMAT!r})")
    unknown = sorted(set(doc) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise ModelFileError(f'{where}: model.json has unknown field "{unknown[0]}"')
    return doc


def _parse_doc(doc: dict[str, Any], where: str):
    if "architecture" not in doc:
        raise ModelFileError(f'{where}: model.json has no "architecture"')
    try:
        spec = Spec.from_dict(doc["architecture"])
    except SpecError as e:
        raise ModelFileError(f"{where}: architecture: {e}") from None
    classes = doc.get("classes")
    if not isinstance(classes, list):
        raise ModelFileError(f'{where}: "classes" must be a list of non-empty class names')
    try:
        prep = Preprocessing.from_dict(doc.get("preprocessing"))
    except DataError as e:
        raise ModelFileError(f"{where}: {e}") from None
    training = doc.get("training", {})
    if not isinstance(training, dict):
        raise ModelFileError(f'{where}: "training" must be an object')
    history = doc.get("history", [])
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        raise ModelFileError(f'{where}: "history" must be a list of objects')
    for key in ("created", "engine_version"):
        if key in doc and not isinstance(doc[key], str):
            raise ModelFileError(f'{where}: "{key}" must be a string')
    return spec, list(classes), prep, training, history


def _read_weights(raw: bytes, want: dict[str, tuple[int, ...]], where: str) -> dict[str, np.ndarray]:
    """Parse weights.npz ourselves: check each .npy header before reading its data."""
    wz = f"{where}: weights.npz"
    try:
        z = zipfile.ZipFile(io.BytesIO(raw))
    except zipfile.BadZipFile:
        raise ModelFileError(f"{wz} is not a valid .npz archive") from None
    state: dict[str, np.ndarray] = {}
    with z:
        infos = _check_members(z, wz, None)
        for name, info in infos.items():
            if not name.endswith(".npy"):
                raise ModelFileError(f"{wz}: unexpected entry {name!r}")
            key = name[:-4]
            if key not in want:
                raise ModelFileError(f"{wz}: unexpected array {key!r}: it is not part of this architecture")
            shape = want[key]
            data = _read_member(z, info, 8 * math.prod(shape) + NPY_HEADER_SLACK, wz)
            state[key] = _parse_npy(data, key, shape, wz)
    return state  # TrainedModel.problem() then says what is missing


def _parse_npy(data: bytes, key: str, shape: tuple[int, ...], wz: str) -> np.ndarray:
    f = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            hshape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            hshape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except ValueError as e:
        raise ModelFileError(f"{wz}: array {key} has a bad header ({e})") from None
    if dtype.hasobject or dtype.kind != "f":
        raise ModelFileError(f"{wz}: array {key} has dtype {dtype}, expected float32")
    if tuple(hshape) != shape:
        raise ModelFileError(f"{wz}: array {key} has shape {tuple(hshape)} but the architecture needs {shape}")
    count = math.prod(shape)
    body = data[f.tell():]
    if len(body) != count * dtype.itemsize:
        raise ModelFileError(f"{wz}: array {key} is truncated or has extra data")
    arr = np.frombuffer(body, dtype=dtype, count=count)
    arr = arr.reshape(shape[::-1]).T if fortran else arr.reshape(shape)
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.all(np.isfinite(arr)):
        raise ModelFileError(f"{wz}: array {key} contains NaN or infinity")
    return arr
