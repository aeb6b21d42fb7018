"""Keeping what a model learned across an edit of its design, and freezing layers while training.

The rule for which layers keep their weights (`cnn-designer train --init-from`, the window's
"Continue from the current weights"): only layers that own arrays (weights, biases, BatchNorm
statistics) take part. Each has a signature: its type and the shape of every array it owns. The
new design's weighted layers and the trained model's are aligned in order, like lines in a text
diff (the longest common subsequence of signatures), and every aligned pair keeps the trained
arrays; every other weighted layer of the new design starts fresh, initialised as a new model with
the run's seed would be. So a changed head (Dense 84 -> 64) renews that Dense and the one after it
(its input size changed), an added class renews the last Dense, and an inserted layer renews only
itself and what its output shape touches, while every convolution keeps its filters.

Freezing (`--freeze 0-3,7`, or the design's own locks, `"frozen": true` on a layer, when a run starts
from trained weights): the chosen layers' weights, biases and BatchNorm statistics stay
bit-identical while the rest trains; the optimizer never touches their slice of the parameters,
so their optimizer state stays empty too. A frozen BatchNorm still normalises each training batch
with that batch's statistics (as PyTorch's train mode does); only its stored values stay fixed.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.errors import EngineError
from engine.spec import Spec


class TransferError(EngineError):
    """Frozen layers or an init-from model that cannot be used: one line for the user."""


def weighted_layers(spec: Spec) -> list[tuple[int, str, tuple]]:
    """(layer index, type, ((array name, shape), ...)) of every layer that owns arrays."""
    from engine.shapes import infer

    inf = infer(spec)
    if not inf.valid:
        raise TransferError(f"the design is invalid: {inf.error_message}")
    out = []
    for info, layer in zip(inf.layers, spec.layers, strict=True):
        arrays = {**info.param_shapes, **info.buffer_shapes}
        if arrays:
            out.append((info.index, layer.type, tuple(sorted((k, tuple(v)) for k, v in arrays.items()))))
    return out


@dataclass
class Transfer:
    """Which layers of the new design keep trained weights, and the full starting state."""

    state: dict[str, np.ndarray]
    #: new layer index -> layer index in the trained model
    kept: dict[int, int] = field(default_factory=dict)
    #: weighted layers of the new design that start fresh
    new: list[int] = field(default_factory=list)
    spec: Spec | None = None

    def describe(self) -> str:
        """One line for the terminal: 'kept layers 0 Conv2D, 3 Conv2D; new: 9 Dense, 11 Dense'."""
        def name(i: int) -> str:
            return f"{i} {self.spec.layers[i].type}" if self.spec is not None else str(i)

        kept = ", ".join(name(i) + (f" (was {j})" if i != j else "") for i, j in self.kept.items()) or "none"
        new = ", ".join(name(i) for i in self.new) or "none"
        return f"kept weights of layer(s) {kept}; new (fresh weights): {new}"


def align(new_spec: Spec, old_spec: Spec) -> tuple[dict[int, int], list[int]]:
    """(kept: new layer index -> trained layer index, new: weighted layers that start fresh) by the rule
    in the module docstring; cheap (shapes only), so the window marks its stack rows with it."""
    new_w, old_w = weighted_layers(new_spec), weighted_layers(old_spec)
    sm = difflib.SequenceMatcher(a=[(t, s) for _, t, s in old_w], b=[(t, s) for _, t, s in new_w], autojunk=False)
    kept: dict[int, int] = {}
    for block in sm.get_matching_blocks():
        for k in range(block.size):
            kept[new_w[block.b + k][0]] = old_w[block.a + k][0]
    return dict(sorted(kept.items())), [i for i, _, _ in new_w if i not in kept]


def locked_layers(spec: Spec) -> list[int]:
    """The layers with weights that the design locks (`"frozen": true`, the window's row lock)."""
    return [i for i, _, _ in weighted_layers(spec) if spec.layers[i].frozen]


def transfer(new_spec: Spec, old_spec: Spec, old_state: dict[str, np.ndarray], seed: int = 0) -> Transfer:
    """The starting state of `new_spec`: trained arrays for compatible layers (the rule in the module
    docstring), a fresh seeded initialisation for the rest."""
    from engine.model import Model

    kept, new = align(new_spec, old_spec)
    state = Model(new_spec, seed=seed).state_dict()
    for i, j in kept.items():
        for key in [k for k in state if k.startswith(f"layers.{i}.")]:
            src = old_state.get(f"layers.{j}.{key.split('.', 2)[2]}")
            if src is None or tuple(src.shape) != state[key].shape:  # signatures matched, so never
                raise TransferError(f"the trained model has no array for {key}")
            state[key] = np.array(src, dtype=state[key].dtype, copy=True)
    return Transfer(state, kept, new, new_spec)


def parse_layers(text: str, spec: Spec) -> list[int]:
    """`0-3,7` -> [0, 1, 2, 3, 7] (layer indices of the design); TransferError names what is wrong.
    Layers without weights inside a range are fine (nothing to freeze there), but the selection must
    hold at least one layer with weights."""
    n = len(spec.layers)
    chosen: set[int] = set()
    for part in str(text).replace(" ", "").split(","):
        if not part:
            continue
        lo_s, sep, hi_s = part.partition("-")
        try:
            lo = int(lo_s)
            hi = int(hi_s) if sep else lo
        except ValueError:
            raise TransferError(f"--freeze: {part!r} is not a layer index or a range such as 0-3") from None
        if lo < 0 or hi < lo:
            raise TransferError(f"--freeze: {part!r} is not a valid range (write LOW-HIGH, e.g. 0-3)")
        if hi >= n:
            raise TransferError(f"--freeze: layer {hi} does not exist (the design has layers 0 to {n - 1})")
        chosen.update(range(lo, hi + 1))
    weighted = {i for i, _, _ in weighted_layers(spec)}
    if not chosen & weighted:
        raise TransferError(f"--freeze {text}: none of these layers has weights to freeze "
                            f"(layers with weights: {', '.join(map(str, sorted(weighted))) or 'none'})")
    return sorted(chosen & weighted)


def layer_of(name: str) -> int:
    """The layer index in an array name such as `layers.3.weight`."""
    return int(name.split(".")[1])


def frozen_slices(model: Any, layers: list[int]) -> list[tuple[int, int]]:
    """[start, stop) ranges of `model.flat_params` that belong to the given layers."""
    base = model.flat_params
    start0 = base.__array_interface__["data"][0]
    out = []
    for name, arr in model.parameters().items():
        if layer_of(name) in layers:
            a = (arr.__array_interface__["data"][0] - start0) // base.itemsize
            out.append((a, a + arr.size))
    return sorted(out)


def trainable_ranges(size: int, frozen: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The complement of `frozen` in [0, size)."""
    out, pos = [], 0
    for a, b in sorted(frozen):
        if a > pos:
            out.append((pos, a))
        pos = max(pos, b)
    if pos < size:
        out.append((pos, size))
    return out


def fresh_frozen_warning(frozen: list[int], fresh: list[int]) -> str | None:
    """A warning when a frozen layer starts with fresh weights: it would stay random all run."""
    bad = [i for i in frozen if i in fresh]
    if bad:
        return (f"frozen layer(s) {', '.join(map(str, bad))} start with fresh random weights and stay random: "
                f"freeze layers that kept trained weights")
    return None


def describe_layers(spec: Spec, layers: list[int]) -> str:
    return ", ".join(f"{i} {spec.layers[i].type}" for i in layers)


__all__ = [
    "Transfer", "TransferError", "align", "describe_layers", "fresh_frozen_warning", "frozen_slices", "locked_layers",
    "parse_layers", "trainable_ranges", "transfer", "weighted_layers",
]
