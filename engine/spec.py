"""The `cnn-designer/1` architecture format: reading, validating and writing it.

One contract for the GUI, the CLI, the model files and the tests (see docs/format.md). Field
errors (unknown type or key, wrong type, sizes below 1, missing fields) raise SpecError naming the
layer index and the field. Shape problems (a Dense on maps, a kernel larger than its input) are
*not* errors here: a design in progress may have them, and engine.shapes reports them per layer.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import SpecError
from engine.layers import Layer, layer_from_config
from engine.layers.base import is_int

FORMAT = "cnn-designer/1"
TOP_LEVEL_KEYS = ("format", "name", "description", "input", "layers", "training")
MAX_SPEC_BYTES = 16 * 1024 * 1024


@dataclass
class Spec:
    """A validated architecture: input shape plus an ordered list of layers."""

    input_shape: tuple[int, int, int]
    layers: list[Layer] = field(default_factory=list)
    name: str = "Untitled"
    description: str = ""
    #: Training settings saved with the design (the GUI's form); free-form, read by the trainer.
    training: dict[str, Any] = field(default_factory=dict)

    # --- dicts ---------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, raw: Any) -> Spec:
        if not isinstance(raw, dict):
            raise SpecError("an architecture must be a JSON object")
        fmt = raw.get("format")
        if fmt != FORMAT:
            if fmt is None:
                raise SpecError(f'missing "format": "{FORMAT}" (is this a CNN Designer architecture?)')
            raise SpecError(f'unsupported format {fmt!r}: this version reads "{FORMAT}"')
        unknown = sorted(set(raw) - set(TOP_LEVEL_KEYS))
        if unknown:
            raise SpecError(f'unknown top-level field "{unknown[0]}" (allowed: {", ".join(TOP_LEVEL_KEYS)})')
        name = raw.get("name", "Untitled")
        if not isinstance(name, str):
            raise SpecError(f'"name" must be a string, got {name!r}')
        description = raw.get("description", "")
        if not isinstance(description, str):
            raise SpecError(f'"description" must be a string, got {description!r}')
        input_shape = parse_input(raw.get("input"))
        layers_raw = raw.get("layers")
        if not isinstance(layers_raw, list):
            raise SpecError('"layers" must be a list of layer objects')
        layers = [layer_from_config(cfg, i) for i, cfg in enumerate(layers_raw)]
        training = raw.get("training", {})
        if not isinstance(training, dict):
            raise SpecError('"training" must be an object')
        return cls(input_shape, layers, name, description, dict(training))

    def to_dict(self) -> dict[str, Any]:
        c, h, w = self.input_shape
        out: dict[str, Any] = {"format": FORMAT, "name": self.name}
        if self.description:
            out["description"] = self.description
        out["input"] = {"channels": c, "height": h, "width": w}
        out["layers"] = [layer.to_config() for layer in self.layers]
        if self.training:
            out["training"] = dict(self.training)
        return out

    def copy(self) -> Spec:
        return Spec.from_dict(self.to_dict())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Spec) and self.to_dict() == other.to_dict()

    # --- files ---------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike) -> Spec:
        return cls.from_dict(read_json(path, "architecture"))

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_text(path, self.to_json())

    def to_json(self) -> str:
        """Readable JSON with one layer per line, so diffs of designs stay small."""
        d = self.to_dict()
        lines = []
        for key, value in d.items():
            if key == "layers":
                body = ",\n".join("    " + json.dumps(layer) for layer in value)
                lines.append(f'  "layers": [\n{body}\n  ]' if value else '  "layers": []')
            else:
                lines.append(f"  {json.dumps(key)}: {json.dumps(value)}")
        return "{\n" + ",\n".join(lines) + "\n}\n"


def parse_input(raw: Any) -> tuple[int, int, int]:
    if not isinstance(raw, dict):
        raise SpecError('"input" must be an object like {"channels": 1, "height": 28, "width": 28}')
    unknown = sorted(set(raw) - {"channels", "height", "width"})
    if unknown:
        raise SpecError(f'input: unknown field "{unknown[0]}" (allowed: channels, height, width)')
    dims = []
    for key in ("channels", "height", "width"):
        if key not in raw:
            raise SpecError(f'input: missing required field "{key}"')
        v = raw[key]
        if not is_int(v) or v < 1:
            raise SpecError(f'input: field "{key}" must be a positive integer, got {v!r}')
        dims.append(v)
    return (dims[0], dims[1], dims[2])


def read_json(path: str | os.PathLike, what: str) -> Any:
    """Read a JSON file with the errors a person can act on (missing, too big, not JSON)."""
    p = Path(path)
    if not p.exists():
        raise SpecError(f"{what} file not found: {p}")
    if p.is_dir():
        raise SpecError(f"{p} is a folder, not an {what} file")
    if p.stat().st_size > MAX_SPEC_BYTES:
        raise SpecError(f"{p} is too large to be an {what} file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SpecError(f"{p} is not a text file (is it an {what} file?)") from None
    except OSError as e:
        raise SpecError(f"cannot read {p}: {e.strerror or e}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise SpecError(f"{p} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}") from None


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write via a temp file in the same folder and os.replace, so a crash leaves the old file."""
    p = Path(path)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file private (0600); a saved design should get the permissions any
        # new file gets (umask), or keep those of the file it replaces.
        try:
            mode = p.stat().st_mode & 0o7777
        except OSError:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(tmp, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
