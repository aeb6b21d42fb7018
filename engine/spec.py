"""The `cnn-designer/1` architecture format: reading, validating and writing it.

One contract for the GUI, the CLI, the model files and the tests (see docs/format.md). Field
errors (unknown type or key, wrong type, sizes below 1, missing fields) raise SpecError naming the
layer index and the field. Shape problems (a Dense on maps, a kernel larger than its input) are
*not* errors here: a design in progress may have them, and engine.shapes reports them per layer.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from engine import safeio
from engine.errors import SpecError
from engine.layers import Layer, layer_from_config
from engine.layers.base import is_int

FORMAT = "cnn-designer/1"
TOP_LEVEL_KEYS = ("format", "name", "description", "input", "layers", "training")
MAX_SPEC_BYTES = safeio.MAX_BYTES["architecture"]
#: The largest input a design (or a model file) may declare: a side of 8192 pixels and 3 x 4096 x
#: 4096 values per image (200 MB as float32). Larger inputs are not images this tool can train on,
#: and a tiny file must not make the tool allocate gigabytes.
MAX_INPUT_SIDE = 8192
MAX_INPUT_VALUES = 3 * 4096 * 4096
#: Layers a design may have, counting those inside blocks. The deepest published CNNs have about a
#: thousand rows in this format; a 16 MB file of a million ReLUs would take minutes to check and run.
MAX_LAYERS = 10_000


def _count_layers(layers_raw: list[Any]) -> int:
    """Layers in a raw "layers" list, blocks' inner lists included (no recursion: the depth is the
    file's)."""
    n, todo = 0, [layers_raw]
    while todo:
        lst = todo.pop()
        n += len(lst)
        todo.extend(c["layers"] for c in lst if isinstance(c, dict) and isinstance(c.get("layers"), list))
    return n


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
        n_layers = _count_layers(layers_raw)
        if n_layers > MAX_LAYERS:
            raise SpecError(f"{n_layers:,} layers is more than the {MAX_LAYERS:,} a design may have")
        layers = []
        for i, cfg in enumerate(layers_raw):
            try:
                layers.append(layer_from_config(cfg, i))
            except SpecError:
                raise
            except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as e:
                # a value of an unexpected JSON type (e.g. "type": ["ReLU"]): still one line
                raise SpecError(f"layer {i}: malformed layer ({type(e).__name__}: {e})") from None
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
    c, h, w = dims
    if max(h, w) > MAX_INPUT_SIDE or c > MAX_INPUT_SIDE or c * h * w > MAX_INPUT_VALUES:
        raise SpecError(f"input: {c}x{h}x{w} is too large (at most {MAX_INPUT_SIDE} per side and "
                        f"{MAX_INPUT_VALUES:,} values per image): use a smaller input size")
    return (c, h, w)


def read_json(path: str | os.PathLike, what: str) -> Any:
    """Read a JSON file under engine.safeio's rules (regular file, size cap, bounded nesting)."""
    try:
        return safeio.read_json(path, what)
    except safeio.SafeIOError as e:
        raise SpecError(str(e)) from None


# Saving goes through engine.safeio (regular files only, atomic, mode kept); the old names stay.
atomic_write_bytes = safeio.write_bytes
atomic_write_text = safeio.write_text
