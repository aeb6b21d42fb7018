"""Shape inference that explains itself: per-layer shapes, parameters, MACs and fix-it messages.

Inference never raises on a bad layer: it marks that layer with a one-line message and every
layer after it as depending on it, so the GUI can paint them red while the user keeps editing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.errors import LayerShapeError
from engine.layers import Layer, Shape, fmt_shape
from engine.layers.base import count
from engine.spec import Spec

BYTES_PER_VALUE = 4  # float32


@dataclass
class LayerInfo:
    index: int
    type: str
    summary: str
    input_shape: Shape | None
    output_shape: Shape | None
    trainable: int = 0
    non_trainable: int = 0
    macs: int = 0
    #: values per image in this layer's output
    activation_size: int = 0
    #: receptive field (h, w) in input pixels of one output value, None once flattened
    receptive_field: tuple[int, int] | None = None
    #: distance in input pixels between neighbouring outputs ("jump"), None once flattened
    jump: tuple[int, int] | None = None
    error: str | None = None
    param_shapes: dict[str, Shape] = field(default_factory=dict)
    buffer_shapes: dict[str, Shape] = field(default_factory=dict)
    #: a block's inner layers (index = position inside the block), each with its own figures
    inner: list[LayerInfo] = field(default_factory=list)
    #: layers beside a block's chain by weight prefix (the projection "shortcut"), if any
    side: dict[str, LayerInfo] = field(default_factory=dict)

    @property
    def params(self) -> int:
        return self.trainable + self.non_trainable

    @property
    def valid(self) -> bool:
        return self.error is None


@dataclass
class Inference:
    input_shape: Shape
    layers: list[LayerInfo]

    @property
    def valid(self) -> bool:
        return all(info.valid for info in self.layers) and bool(self.layers)

    @property
    def first_error(self) -> LayerInfo | None:
        return next((info for info in self.layers if not info.valid), None)

    @property
    def error_message(self) -> str | None:
        """The first problem as a sentence for status bars and disabled-button tooltips."""
        if not self.layers:
            return "the design has no layers: add some from the palette"
        bad = self.first_error
        if bad is None:
            return None
        return f"layer {bad.index} ({bad.type}): {bad.error}"

    @property
    def output_shape(self) -> Shape | None:
        return self.layers[-1].output_shape if self.layers else self.input_shape

    @property
    def binary(self) -> bool:
        """A final Sigmoid on one value: two classes, the value being the probability of the second.
        The one place this rule lives (the model's loss, model files, export and the trainer ask here)."""
        from engine.layers import LAYER_CLASSES

        return (self.valid and self.output_shape == (1,)
                and LAYER_CLASSES[self.layers[-1].type].output_head == "binary")

    @property
    def num_classes(self) -> int | None:
        """How many classes the output tells apart (2 when `binary`); None unless the design is valid
        and ends in one flat vector of scores."""
        out = self.output_shape
        if not self.valid or out is None or len(out) != 1:
            return None
        return 2 if self.binary else int(out[0])

    def weight_shapes(self) -> dict[str, Shape]:
        """Every array a model of this design holds (parameters and running statistics), by its
        state_dict name `layers.{i}.{name}`, in PyTorch's shapes."""
        return {f"layers.{info.index}.{name}": tuple(int(d) for d in shape)
                for info in self.layers for name, shape in {**info.param_shapes, **info.buffer_shapes}.items()}

    @property
    def trainable_params(self) -> int:
        return sum(i.trainable for i in self.layers)

    @property
    def non_trainable_params(self) -> int:
        return sum(i.non_trainable for i in self.layers)

    @property
    def total_params(self) -> int:
        return self.trainable_params + self.non_trainable_params

    @property
    def macs(self) -> int:
        return sum(i.macs for i in self.layers)

    @property
    def weights_bytes(self) -> int:
        return self.total_params * BYTES_PER_VALUE

    @property
    def activation_values(self) -> int:
        """Values per image across the input and every layer output (forward memory)."""
        return math.prod(self.input_shape) + sum(i.activation_size for i in self.layers)

    @property
    def activation_bytes(self) -> int:
        return self.activation_values * BYTES_PER_VALUE

    def workspace_values(self, training: bool = True) -> int:
        """Values per image of the layers' work buffers: the convolutions' unfolded input windows
        forward (MACs / output channels) and, when training, their gradients (MACs / input
        channels); in training also the outputs' worth of buffers a layer type keeps from step to
        step (its registry entry's training_buffers: three for BatchNorm). The engine keeps one set
        per layer, so they add up."""
        from engine.layers import LAYER_CLASSES

        total = 0
        for i in self.layers:
            if i.macs and i.input_shape and i.output_shape and len(i.input_shape) == 3 and len(i.output_shape) == 3:
                total += i.macs // max(1, i.output_shape[0])
                if training:
                    total += i.macs // max(1, i.input_shape[0])
            if training:
                for b in (i, *i.inner):  # a residual block's inner layers too
                    if b.output_shape:
                        total += LAYER_CLASSES[b.type].training_buffers * math.prod(b.output_shape)
        return total

    def training_batch_bytes(self, batch_size: int) -> int:
        """Rough memory of one training step: activations and their gradients for the batch,
        plus weights, gradients and two Adam moments."""
        return 2 * self.activation_bytes * batch_size + 4 * self.weights_bytes

    def to_json(self) -> dict:
        """The `summary --json` document."""
        return {
            "input_shape": list(self.input_shape),
            "layers": [
                {
                    "index": i.index,
                    "type": i.type,
                    "output_shape": list(i.output_shape) if i.output_shape is not None else None,
                    "params": i.params,
                    "trainable": i.trainable,
                    "non_trainable": i.non_trainable,
                    "macs": i.macs,
                    "error": i.error,
                    **_block_json(i),
                }
                for i in self.layers
            ],
            "total_params": self.total_params,
            "trainable_params": self.trainable_params,
            "non_trainable_params": self.non_trainable_params,
            "macs": self.macs,
            "weights_bytes": self.weights_bytes,
            "valid": self.valid,
        }


def _block_json(i: LayerInfo) -> dict:
    """A block's inner rows (only for blocks, so plain designs' documents are unchanged)."""
    if not i.inner and not i.side:
        return {}
    row = lambda j: {"index": j.index, "type": j.type,  # noqa: E731
                     "output_shape": list(j.output_shape) if j.output_shape is not None else None,
                     "params": j.params, "trainable": j.trainable, "non_trainable": j.non_trainable,
                     "macs": j.macs, "error": j.error}
    return {"layers": [row(j) for j in i.inner], **{k: row(v) for k, v in i.side.items()}}


def infer_layer(layer: Layer, index: int, input_shape: Shape, is_last: bool) -> LayerInfo:
    """Infer one layer; shape problems become the info's `error`, never an exception."""
    info = LayerInfo(index, layer.type, layer.summary(), input_shape, None)
    info.inner = _infer_chain(layer.children(), input_shape)
    try:
        if layer.last_only and not is_last:
            raise LayerShapeError(f"{layer.type} is only allowed as the last layer: move it to the end or remove it")
        out = layer.compute_output_shape(input_shape)
    except LayerShapeError as e:
        info.error = str(e)
        return info
    info.output_shape = tuple(int(d) for d in out)
    info.param_shapes = layer.param_shapes(input_shape)
    info.buffer_shapes = layer.buffer_shapes(input_shape)
    info.trainable = count(info.param_shapes)
    info.non_trainable = count(info.buffer_shapes)
    info.macs = layer.macs(input_shape, info.output_shape)
    info.activation_size = math.prod(info.output_shape)
    info.side = {k: infer_layer(side, -1, input_shape, False)
                 for k, side in layer.side_layers(input_shape, info.output_shape).items()}
    return info


def _infer_chain(layers: list[Layer], shape: Shape) -> list[LayerInfo]:
    """Infos of a block's inner layers; after a broken one the rest depend on it."""
    infos: list[LayerInfo] = []
    broken: int | None = None
    for j, layer in enumerate(layers):
        if broken is not None or shape is None:
            infos.append(LayerInfo(j, layer.type, layer.summary(), None, None,
                                   error=f"cannot be computed until inner layer {broken} is fixed"))
            continue
        info = infer_layer(layer, j, shape, False)
        infos.append(info)
        if info.error is not None:
            broken = j
        shape = info.output_shape
    return infos


def _advance_field(layer: Layer, info: LayerInfo, rf, jump):
    """Receptive field and jump after this layer (through a block's inner chain)."""
    if info.inner:
        for child, ci in zip(layer.children(), info.inner, strict=True):
            rf, jump = _advance_field(child, ci, rf, jump)
            ci.receptive_field, ci.jump = rf, jump
        return rf, jump
    geo = layer.geometry(info.input_shape)
    if geo is not None and rf is not None and jump is not None:
        (kh, kw), (sh, sw), _ = geo
        return (rf[0] + (kh - 1) * jump[0], rf[1] + (kw - 1) * jump[1]), (jump[0] * sh, jump[1] * sw)
    if info.output_shape is not None and len(info.output_shape) != 3:
        return None, None  # flattened or globally pooled: every input pixel counts
    return rf, jump


def infer(spec: Spec) -> Inference:
    shape: Shape = tuple(spec.input_shape)
    rf: tuple[int, int] | None = (1, 1)
    jump: tuple[int, int] | None = (1, 1)
    infos: list[LayerInfo] = []
    broken_at: int | None = None
    n = len(spec.layers)
    for i, layer in enumerate(spec.layers):
        if broken_at is not None:
            infos.append(
                LayerInfo(i, layer.type, layer.summary(), None, None,
                          error=f"cannot be computed until layer {broken_at} is fixed")
            )
            continue
        info = infer_layer(layer, i, shape, i == n - 1)
        if info.error is not None:
            broken_at = i
            infos.append(info)
            continue
        rf, jump = _advance_field(layer, info, rf, jump)
        info.receptive_field, info.jump = rf, jump
        infos.append(info)
        shape = info.output_shape
    return Inference(tuple(spec.input_shape), infos)


def weights_problem(shapes: Mapping[str, Shape], state: Mapping[str, Any], strict: bool = True) -> str | None:
    """Why `state` cannot be the weights of a model whose arrays have `shapes` (see
    Inference.weight_shapes), as one line; None when it fits. Not strict: missing and extra names
    are allowed (the others must still fit). The one weight check of the model, model files and export."""
    missing = [k for k in shapes if k not in state] if strict else []
    extra = sorted(k for k in state if k not in shapes) if strict else []
    bad = [f"{k} {tuple(np.shape(state[k]))} (expected {want})" for k, want in shapes.items()
           if k in state and tuple(np.shape(state[k])) != tuple(want)]
    problems = []
    if missing:
        problems.append("missing: " + ", ".join(f"{k} {shapes[k]}" for k in missing))
    if extra:
        problems.append("unexpected: " + ", ".join(extra))
    if bad:
        problems.append("wrong shape: " + ", ".join(bad))
    if problems:
        return "the weights do not fit the architecture; " + "; ".join(problems)
    for k in shapes:
        if k in state and not np.all(np.isfinite(state[k])):
            return f"the weights contain NaN or infinity ({k}): retrain the model"
    return None


def summary_table(spec: Spec, inference: Inference | None = None) -> str:
    """A text table like Keras' model.summary()."""
    inf = inference or infer(spec)
    rows = [("Layer (type)", "Output Shape", "Param #", "MACs")]
    c, h, w = spec.input_shape
    rows.append(("input (Input)", f"(None, {c}, {h}, {w})", "0", "0"))
    infos: list[LayerInfo | None] = [None]
    for i in inf.layers:
        rows.append((f"layers.{i.index} ({i.type})", _shape_text(i), f"{i.params:,}", f"{i.macs:,}"))
        infos.append(i)
        for name, sub in [*((f"layers.{j.index}", j) for j in i.inner), *i.side.items()]:
            rows.append((f"  └ {name} ({sub.type})", _shape_text(sub), f"{sub.params:,}", f"{sub.macs:,}"))
            infos.append(None)
    widths = [max(len(r[k]) for r in rows) + 3 for k in range(4)]
    widths[0] = max(widths[0], 30)
    widths[1] = max(widths[1], 22)
    widths[2] = max(widths[2], 10)
    widths[3] = max(widths[3], 14)
    line_w = sum(widths)
    out = [f'Model: "{spec.name}"', "━" * line_w]
    def line(r: tuple[str, ...]) -> str:  # names and shapes to the left, figures to the right
        return r[0].ljust(widths[0]) + r[1].ljust(widths[1]) + r[2].rjust(widths[2]) + r[3].rjust(widths[3])

    out.append(line(rows[0]))
    out.append("━" * line_w)
    for r, info in zip(rows[1:], infos, strict=True):
        out.append(line(r))
        if info is not None and info.error:
            out.append(f"    ! {info.error}")
    out.append("━" * line_w)
    out.append(f" Total params: {inf.total_params:,} ({human_bytes(inf.weights_bytes)})")
    out.append(f" Trainable params: {inf.trainable_params:,}")
    out.append(f" Non-trainable params: {inf.non_trainable_params:,}")
    out.append(f" MACs per image: {inf.macs:,}")
    out.append(f" Weights memory: {human_bytes(inf.weights_bytes)}")
    out.append(f" Activation memory per image: {human_bytes(inf.activation_bytes)}")
    return "\n".join(out)


def _shape_text(info: LayerInfo) -> str:
    return "(None, " + ", ".join(map(str, info.output_shape)) + ")" if info.output_shape else "-"


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"  # pragma: no cover


def human_count(n: float) -> str:
    """1234567 -> '1.23M', for compact totals bars."""
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.0f}"


__all__ = ["Inference", "LayerInfo", "fmt_shape", "human_bytes", "human_count", "infer", "summary_table",
           "weights_problem"]
