"""The design being edited, without Qt: a Spec plus where it lives, with change notifications.

Kept free of Qt (like napari's layer list) so the editing logic can be tested and benchmarked
without a display, and so every Qt view (the layer list model, the properties form, the totals bar,
the training workspace) is a thin adapter that listens to the same two signals. Every mutation
goes through one of the methods below, which emit `about_to_change` (so a Qt model can call its
begin* methods) and then `changed`; undo commands call these methods and nothing else.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.layers import LAYER_CLASSES, Layer, layer_from_config
from engine.resources import sample_data_dir, templates_dir
from engine.shapes import Inference, infer
from engine.spec import Spec

SAMPLE_DATA_DIR = sample_data_dir()

#: (file stem, menu title) of the built-in templates, in menu order.
TEMPLATES: tuple[tuple[str, str], ...] = (
    ("lenet5", "LeNet-5"),
    ("vgg_small", "Small VGG-style CNN"),
    ("allconv_gap", "All-convolutional net (GlobalAvgPool)"),
    ("small_resnet", "Small ResNet (colour photos)"),
    ("mlp", "MLP baseline (no convolution)"),
)
DEFAULT_TEMPLATE = "lenet5"


class Signal:
    """A minimal callback list (the Qt-free stand-in for a Qt signal)."""

    def __init__(self) -> None:
        self._slots: list[Callable[..., Any]] = []

    def connect(self, slot: Callable[..., Any]) -> None:
        self._slots.append(slot)

    def disconnect(self, slot: Callable[..., Any]) -> None:
        self._slots.remove(slot)

    def emit(self, *args: Any) -> None:
        for slot in list(self._slots):
            slot(*args)


@dataclass(frozen=True)
class Change:
    """What changed, precisely enough for a list model to emit the right row signals.

    kind: "reset" (whole spec replaced), "insert"/"remove" (`count` layers at `index`),
    "reorder" (`order[i]` = old index of the layer now at i), "layer" (config of layer `index`),
    "input" (input shape), "meta" (name, description, training settings, data folder),
    "layers" (the layer list rebuilt: a move into, out of or inside a block), "frozen" (which
    layers are locked: no row moves, every row may repaint).
    """

    kind: str
    index: int = 0
    count: int = 0
    order: tuple[int, ...] = ()
    #: an "insert" that adds a block (whose inner layers get rows of their own in the stack)
    blocks: bool = False


def template_path(stem: str) -> Path:
    return templates_dir() / f"{stem}.json"


def load_template(stem: str) -> Spec:
    return Spec.load(template_path(stem))


def blank_spec() -> Spec:
    return Spec((1, 28, 28), [], name="Untitled")


class Document:
    """The open design: spec, file path, dataset folder, and a lazily recomputed Inference."""

    def __init__(self, spec: Spec | None = None, path: str | os.PathLike | None = None,
                 data_dir: str | os.PathLike | None = None) -> None:
        self._spec = spec if spec is not None else blank_spec()
        self.path: Path | None = Path(path) if path is not None else None
        #: Image folder the training workspace uses (the built-in sample by default).
        self.data_dir: Path | None = Path(data_dir) if data_dir is not None else None
        #: The .cnnd model file this design came from, if any (its weights are the trainer's business).
        self.model_path: Path | None = None
        #: The engine.trained.TrainedModel opened with it (classes, weights, history), if any.
        self.model_file: Any = None
        self._inference: Inference | None = None
        self._max_activation: int | None = None
        self.about_to_change = Signal()
        #: Emitted with a Change after every edit; listeners read `spec` / `inference` from here.
        self.spec_changed = Signal()

    # --- reading ---------------------------------------------------------------------------
    @property
    def spec(self) -> Spec:
        return self._spec

    @property
    def layers(self) -> list[Layer]:
        return self._spec.layers

    def __len__(self) -> int:
        return len(self._spec.layers)

    @property
    def inference(self) -> Inference:
        """engine.shapes.infer of the current spec, recomputed once per edit on first use."""
        if self._inference is None:
            self._inference = infer(self._spec)
        return self._inference

    @property
    def max_activation(self) -> int:
        """Largest activation (values per image) among input and layers, for the size bars."""
        if self._max_activation is None:
            inf = self.inference
            sizes = [math.prod(inf.input_shape)] + [i.activation_size for i in inf.layers]
            self._max_activation = max(sizes)
        return max(self._max_activation, 1)

    @property
    def display_name(self) -> str:
        if self.path is not None:
            return self.path.name
        if self.model_path is not None:  # a trained model opened for a look: named after its file
            return self.model_path.name
        return self._spec.name or "Untitled"

    # --- editing -----------------------------------------------------------------------------
    def _edit(self, change: Change, apply: Callable[[], None]) -> None:
        self.about_to_change.emit(change)
        apply()
        self._inference = None
        self._max_activation = None
        self.spec_changed.emit(change)

    def set_spec(self, spec: Spec) -> None:
        self._edit(Change("reset"), lambda: setattr(self, "_spec", spec))

    def insert_layers(self, index: int, layers: Sequence[Layer]) -> None:
        if not 0 <= index <= len(self):
            raise IndexError(f"insert position {index} out of range")
        if not layers:
            return

        def apply() -> None:
            self._spec.layers[index:index] = list(layers)

        self._edit(Change("insert", index, len(layers), blocks=any(x.is_block for x in layers)), apply)

    def remove_layers(self, index: int, count: int = 1) -> list[Layer]:
        if count < 1 or index < 0 or index + count > len(self):
            raise IndexError(f"cannot remove {count} layer(s) at {index}")
        removed = self._spec.layers[index:index + count]

        def apply() -> None:
            del self._spec.layers[index:index + count]

        self._edit(Change("remove", index, count), apply)
        return removed

    def reorder(self, order: Sequence[int]) -> None:
        """Put the layer that was at `order[i]` at position i (a permutation)."""
        order = tuple(order)
        if sorted(order) != list(range(len(self))):
            raise ValueError("reorder needs a permutation of the layer indices")
        if order == tuple(range(len(self))):
            return

        def apply() -> None:
            old = self._spec.layers
            self._spec.layers = [old[i] for i in order]

        self._edit(Change("reorder", order=order), apply)

    def replace_layers(self, layers: Sequence[Layer]) -> None:
        """Replace the whole layer list (structure edits of blocks go through here)."""
        def apply() -> None:
            self._spec.layers = list(layers)

        self._edit(Change("layers"), apply)

    def set_layer(self, index: int, layer: Layer) -> None:
        def apply() -> None:
            self._spec.layers[index] = layer

        self._edit(Change("layer", index, 1), apply)

    def set_layer_config(self, index: int, config: dict[str, Any]) -> None:
        """Replace layer `index` by one built (and validated: SpecError) from `config`."""
        cfg = dict(config)
        cfg.setdefault("type", self.layers[index].type)
        self.set_layer(index, layer_from_config(cfg, index))

    @property
    def locked(self) -> list[int]:
        """Indices of the layers locked (`frozen`) in the design, with or without weights."""
        return [i for i, layer in enumerate(self.layers) if layer.frozen]

    def set_locked(self, indices: Sequence[int]) -> None:
        """Lock exactly these layers (their weights stay fixed when a run continues from trained
        weights) and unlock the others. Changed layers are replaced by copies, never mutated: a
        Spec's layers may be shared with another Spec (a model's own architecture)."""
        want = set(indices)
        if any(not 0 <= i < len(self) for i in want):
            raise IndexError(f"cannot lock layers {sorted(want)}: the design has {len(self)}")
        if want == set(self.locked):
            return

        def apply() -> None:
            self._spec.layers = [layer if layer.frozen == (i in want)
                                 else layer_from_config({**layer.to_config(), "frozen": i in want}, i)
                                 for i, layer in enumerate(self._spec.layers)]

        self._edit(Change("frozen"), apply)

    def set_input(self, shape: Sequence[int]) -> None:
        c, h, w = (int(v) for v in shape)
        if min(c, h, w) < 1:
            raise ValueError("input sizes must be positive")
        self._edit(Change("input"), lambda: setattr(self._spec, "input_shape", (c, h, w)))

    def set_training(self, settings: dict[str, Any]) -> None:
        """Training settings stored with the design (the training workspace's form)."""
        self._edit(Change("meta"), lambda: setattr(self._spec, "training", dict(settings)))

    def set_data_dir(self, path: str | os.PathLike | None) -> None:
        self._edit(Change("meta"), lambda: setattr(self, "data_dir", Path(path) if path else None))

    def set_name(self, name: str) -> None:
        self._edit(Change("meta"), lambda: setattr(self._spec, "name", name))


def new_layer(type_name: str) -> Layer:
    """A layer of this type with its registry entry's starting values (other required fields: 1)."""
    cls = LAYER_CLASSES[type_name]
    cfg: dict[str, Any] = {"type": type_name}
    for f in cls.fields:
        if f.required:
            cfg[f.name] = 1
    cfg.update(cls.palette_defaults)
    return layer_from_config(cfg)
