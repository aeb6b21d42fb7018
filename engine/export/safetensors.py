"""The safetensors file format, written and read with NumPy alone.

PyTorch users load weights with `safetensors` (or the few lines in the exported model.py); the
format is a documented, pickle-free layout: an 8-byte little-endian header length, a JSON header
mapping each name to dtype, shape and byte offsets, then the raw little-endian bytes. Writing it
here keeps torch and the `safetensors` package out of the app's dependencies.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping

import numpy as np

from engine.errors import EngineError

_DTYPES = {"F32": np.dtype("<f4"), "F64": np.dtype("<f8"), "I64": np.dtype("<i8"), "I32": np.dtype("<i4")}
_NAMES = {v: k for k, v in _DTYPES.items()}
MAX_HEADER = 16 * 1024 * 1024


def to_bytes(arrays: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> bytes:
    """Serialise arrays in name order (deterministic output for identical weights)."""
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    chunks: list[bytes] = []
    offset = 0
    for name in sorted(arrays):
        a = np.asarray(arrays[name])
        if a.dtype.kind == "f":
            dt = np.dtype("<f8") if a.dtype.itemsize > 4 else np.dtype("<f4")
        elif a.dtype.kind in "iub":
            dt = np.dtype("<i8")
        else:
            raise EngineError(f"cannot store {name!r} of dtype {a.dtype} in safetensors")
        raw = np.ascontiguousarray(a, dtype=dt).tobytes()
        header[name] = {"dtype": _NAMES[dt], "shape": list(a.shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the format pads the header so the data is 8-byte aligned
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def from_bytes(data: bytes) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Parse a safetensors blob; EngineError on anything malformed (never trusts the offsets)."""
    if len(data) < 8:
        raise EngineError("not a safetensors file: too short")
    (n,) = struct.unpack("<Q", data[:8])
    if n > MAX_HEADER or 8 + n > len(data):
        raise EngineError("not a safetensors file: bad header length")
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise EngineError("not a safetensors file: header is not JSON") from None
    if not isinstance(header, dict):
        raise EngineError("not a safetensors file: header is not an object")
    meta = header.pop("__metadata__", {}) or {}
    body = memoryview(data)[8 + n :]
    out: dict[str, np.ndarray] = {}
    for name, info in header.items():
        try:
            dt = _DTYPES[info["dtype"]]
            shape = tuple(int(d) for d in info["shape"])
            begin, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise EngineError(f"safetensors entry {name!r} is malformed or has an unsupported dtype") from None
        count = int(np.prod(shape, dtype=np.int64))
        if not 0 <= begin <= end <= len(body) or end - begin != count * dt.itemsize:
            raise EngineError(f"safetensors entry {name!r} has inconsistent offsets")
        out[name] = np.frombuffer(body[begin:end], dtype=dt).reshape(shape).copy()
    return out, {str(k): str(v) for k, v in meta.items()}
