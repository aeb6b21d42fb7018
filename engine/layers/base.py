"""The layer contract: one class per layer type owns everything the app knows about that type.

Every layer type is one class whose *config* is the dict stored in a `cnn-designer/1` file.
The class validates that dict field by field (so a bad file names the layer and field), knows its
output shape from its input shape alone (like Keras' `compute_output_shape`), and knows which
parameter arrays it owns. Beside that it names its compute (`op`, an `Op` subclass whose NumPy
kernels live in engine.functional), writes its own ONNX nodes and PyTorch module, and carries the
hints the trainer and the window need (plain data: engine/ never imports Qt). So adding a layer type
is one module in engine/layers/ registered in engine.layers, plus its tests; see docs/architecture.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from engine import functional as F
from engine.errors import LayerShapeError, SpecError

Shape = tuple[int, ...]
Pair = tuple[int, int]

_REQUIRED = object()


def fmt_shape(shape: Shape | None) -> str:
    """Shapes print as the GUI shows them: `6x28x28`, `120`."""
    if shape is None:
        return "?"
    return "x".join(str(int(d)) for d in shape)


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class Field:
    """One config field of a layer: its kind drives validation, the GUI's editor and the docs."""

    name: str
    kind: str  # int | pair | conv_padding | pool_padding | float | rate | bool | optional_pair | choice
    default: Any = _REQUIRED
    help: str = ""
    minimum: float | None = None
    maximum: float | None = None
    #: allowed values of a "choice" field (None may be one of them: JSON null)
    choices: tuple[Any, ...] = ()

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED


def pair_of(v: Any) -> Pair:
    """Normalise `int | [h, w]` (already validated) to a tuple."""
    if is_int(v):
        return (v, v)
    return (int(v[0]), int(v[1]))


def compact_pair(p: Pair) -> int | list[int]:
    """Write a pair back the way people write it: `5` when square, `[3, 5]` otherwise."""
    return p[0] if p[0] == p[1] else [p[0], p[1]]


def _validate_value(where: str, f: Field, v: Any) -> Any:
    def bad(expect: str) -> SpecError:
        return SpecError(f'{where}: field "{f.name}" must be {expect}, got {v!r}')

    if f.kind == "int":
        if not is_int(v) or v < (f.minimum if f.minimum is not None else 1):
            lo = int(f.minimum) if f.minimum is not None else 1
            raise bad("a positive integer" if lo == 1 else f"an integer >= {lo}")
        return v
    if f.kind in ("pair", "optional_pair"):
        if f.kind == "optional_pair" and v is None:
            return None
        if is_int(v) and v >= 1:
            return v
        if isinstance(v, (list, tuple)) and len(v) == 2 and all(is_int(x) and x >= 1 for x in v):
            return [int(v[0]), int(v[1])]
        raise bad("a positive integer or [height, width]")
    if f.kind == "conv_padding":
        if v in ("valid", "same"):
            return v
        if is_int(v) and v >= 0:
            return v
        if isinstance(v, (list, tuple)) and len(v) == 2 and all(is_int(x) and x >= 0 for x in v):
            return [int(v[0]), int(v[1])]
        raise bad('"valid", "same", an integer >= 0 or [pad_h, pad_w]')
    if f.kind == "pool_padding":
        if v in ("valid", "same"):
            return v
        raise bad('"valid" or "same"')
    if f.kind == "float":
        if not is_number(v):
            raise bad("a number")
        if f.minimum is not None and v < f.minimum:
            raise bad(f"a number >= {f.minimum}")
        if f.maximum is not None and v > f.maximum:
            raise bad(f"a number <= {f.maximum}")
        return float(v)
    if f.kind == "exclusive_float":  # strictly between minimum and maximum
        if not is_number(v) or not (f.minimum < v < f.maximum):
            raise bad(f"a number greater than {f.minimum} and less than {f.maximum}")
        return float(v)
    if f.kind == "rate":
        if not is_number(v) or not 0 <= v < 1:
            raise bad("a number in [0, 1)")
        return float(v)
    if f.kind == "choice":
        if v not in f.choices or isinstance(v, bool):
            raise bad("one of " + ", ".join("null" if c is None else f'"{c}"' for c in f.choices))
        return v
    if f.kind == "bool":
        if not isinstance(v, bool):
            raise bad("true or false")
        return v
    raise AssertionError(f"unknown field kind {f.kind}")  # pragma: no cover


class Layer:
    """Base of all layer types. Subclasses set the class attributes and the shape methods."""

    type: ClassVar[str] = ""
    category: ClassVar[str] = ""  # Convolution | Pooling | Activation | Dense | Regularization | Reshape
    description: ClassVar[str] = ""  # one line for the palette
    fields: ClassVar[tuple[Field, ...]] = ()
    #: True when the layer works on (C, H, W) maps, False for flat vectors, None for any shape.
    needs_spatial: ClassVar[bool | None] = None
    #: Only allowed as the design's last layer (Softmax).
    last_only: ClassVar[bool] = False
    #: The compute: an Op subclass (set by every registered type).
    op: ClassVar[type[Op]]

    # --- hints for the trainer ------------------------------------------------------------------
    #: The config field that sets how many scores this layer outputs ("units", "filters"), if any:
    #: the trainer's class-count check offers to edit it.
    score_field: ClassVar[str | None] = None
    #: Passes a score vector (or per-channel maps) on without changing how many there are.
    keeps_scores: ClassVar[bool] = False
    #: Works value by value, keeping the shape (activations, Dropout, BatchNorm; not Softmax).
    elementwise: ClassVar[bool] = False
    #: What its output means as the design's last layer: "softmax" (class probabilities: the loss
    #: folds it into cross-entropy, the exports keep it), "binary" (on one value: the probability of
    #: the second of two classes, folded into binary cross-entropy) or None (raw scores, which the
    #: app turns into probabilities with a softmax).
    output_head: ClassVar[str | None] = None
    #: An output stuck at zero passes no gradient (ReLU): training health reports the share of
    #: channels that never turned positive on its sample ("dead").
    reports_dead_units: ClassVar[bool] = False
    #: Exports to ONNX as an Identity node (Dropout at inference): a graph read back has no layer for it.
    onnx_identity: ClassVar[bool] = False
    #: Holds its own list of layers (`children()`), shown as indented rows in the stack.
    is_block: ClassVar[bool] = False
    #: Turns C x H x W maps into C' x H' x W' maps (so it may go inside a Residual block).
    keeps_maps: ClassVar[bool] = False
    #: Arrays of its output's size that its training step keeps from one step to the next (reused
    #: buffers: BatchNorm's deviations, masked gradient and ReLU mask): the memory estimate counts them.
    training_buffers: ClassVar[int] = 0

    # --- hints for the window (plain data) ------------------------------------------------------
    #: Pictogram drawn by designer.icons (a name it knows) or an SVG document; "{color}" in the SVG
    #: becomes the category colour.
    icon: ClassVar[str] = ""
    #: Starting values for a new layer dropped from the palette (required fields default to 1).
    palette_defaults: ClassVar[dict[str, Any]] = {}
    #: What its sliding window is called in messages ("kernel" for convolutions, "pool" for pooling).
    window_word: ClassVar[str] = "pool"
    #: Its outputs are shown as feature-map images while training.
    shows_feature_maps: ClassVar[bool] = False
    #: Its weight is a bank of 2-D filters the window draws (the first such layer's, while training).
    shows_filters: ClassVar[bool] = False

    def __init__(self, config: dict[str, Any]):
        self.config: dict[str, Any] = dict(config)
        #: Locked by the user: its weights stay fixed when a run starts from trained weights (a
        #: setting of the design, not of the layer's computation, so it is not in `config`).
        self.frozen = False

    # --- config --------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: dict[str, Any], index: int | None = None) -> Layer:
        """Validate a config dict (with or without "type") and fill in the defaults."""
        where = f"layer {index} ({cls.type})" if index is not None else cls.type
        if not isinstance(config, dict):
            raise SpecError(f"{where}: a layer must be a JSON object, got {config!r}")
        known = {f.name for f in cls.fields} | {"type", "frozen"}
        unknown = sorted(set(config) - known)
        if unknown:
            allowed = ", ".join(f.name for f in cls.fields) or "no fields"
            raise SpecError(f'{where}: unknown field "{unknown[0]}" (allowed: {allowed})')
        clean: dict[str, Any] = {}
        for f in cls.fields:
            if f.name in config:
                clean[f.name] = _validate_value(where, f, config[f.name])
            elif f.required:
                raise SpecError(f'{where}: missing required field "{f.name}"')
            else:
                clean[f.name] = f.default
        frozen = config.get("frozen", False)
        if not isinstance(frozen, bool):
            raise SpecError(f'{where}: field "frozen" must be true or false, got {frozen!r}')
        layer = cls(clean)
        layer.frozen = frozen
        return layer

    def to_config(self) -> dict[str, Any]:
        """The dict a file stores; `from_config(to_config())` gives an equal layer. `frozen` only when
        set, so a design without locks is written exactly as before the lock existed."""
        out: dict[str, Any] = {"type": self.type}
        for f in self.fields:
            v = self.config[f.name]
            out[f.name] = list(v) if isinstance(v, tuple) else v
        if self.frozen:
            out["frozen"] = True
        return out

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Layer) and self.to_config() == other.to_config()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.to_config()!r})"

    # --- shapes ---------------------------------------------------------------------------
    def check_input(self, input_shape: Shape) -> None:
        """Raise LayerShapeError with a fix-it message when the input's rank is wrong."""
        if self.needs_spatial is True and len(input_shape) != 3:
            raise LayerShapeError(
                f"{self.type} needs channels x height x width maps but receives a flat vector of "
                f"{fmt_shape(input_shape)}: move it before Flatten"
            )
        if self.needs_spatial is False and len(input_shape) != 1:
            raise LayerShapeError(
                f"{self.type} needs a flat input but receives {fmt_shape(input_shape)}: "
                f"add Flatten before it"
            )

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        self.check_input(input_shape)
        return tuple(input_shape)

    def param_shapes(self, input_shape: Shape) -> dict[str, Shape]:
        """Trainable arrays by short name (`weight`, `bias`), shapes as PyTorch's."""
        return {}

    def buffer_shapes(self, input_shape: Shape) -> dict[str, Shape]:
        """Non-trainable state (BatchNorm running statistics), shapes as PyTorch's."""
        return {}

    def macs(self, input_shape: Shape, output_shape: Shape) -> int:
        """Multiply-accumulates per image for the forward pass (Conv2D and Dense only)."""
        return 0

    def summary(self) -> str:
        """Short text for the layer list, e.g. `Conv2D 6@5x5, same`."""
        return self.type

    def geometry(self, input_shape: Shape) -> tuple[Pair, Pair, tuple[int, int, int, int]] | None:
        """(kernel, stride, (top, bottom, left, right) padding) for layers that slide a window."""
        return None

    def children(self) -> list[Layer]:
        """Layers inside this one (a block's inner list); plain layers have none."""
        return []

    def same_as_imported(self, other: Layer, input_shape: Shape) -> bool:
        """Whether `other`, read back from an ONNX graph with this input shape, is this layer (the
        importer then keeps the known architecture). Floats compare at float32 precision, as ONNX
        stores attributes; windows (convolutions, pooling) by their geometry, since padding written
        two ways gives one graph; a block's inner layers are compared by the importer one by one."""
        if type(other) is not type(self):
            return False
        if self.geometry(input_shape) is not None:
            return (self.geometry(input_shape) == other.geometry(input_shape)
                    and self.config.get("use_bias", True) == other.config.get("use_bias", True))
        a, b = self.to_config(), other.to_config()
        if a.keys() != b.keys():
            return False
        for k, x in a.items():
            y = b[k]
            if isinstance(x, float) or isinstance(y, float):
                if not (is_number(x) and is_number(y) and math.isclose(x, y, rel_tol=1e-6)):
                    return False
            elif x != y:
                return False
        return True

    def side_layers(self, input_shape: Shape, output_shape: Shape) -> dict[str, Layer]:
        """Layers beside the inner chain, by weight prefix (a block's projection "shortcut")."""
        return {}

    # --- compute ----------------------------------------------------------------------------------
    def make_op(self, name: str, in_shape: Shape, out_shape: Shape, dtype: np.dtype) -> Op:
        """This layer's compute object; `name` prefixes its weights ("layers.3")."""
        return self.op(self, name, in_shape, out_shape, dtype)

    # --- exporters --------------------------------------------------------------------------------
    def to_onnx(self, g: Any, x: str, in_shape: Shape, name: str) -> str:
        """Add this layer's ONNX node(s) to builder `g` (engine.export.onnx_export.OnnxGraph) reading
        tensor `x`; weights are `g.weight(f"{name}.weight")`. Returns the output tensor's name."""
        raise NotImplementedError(f"{self.type} has no ONNX export")

    def torch_module(self, in_shape: Shape) -> str:
        """A Python expression constructing this layer's torch.nn module in the exported model.py
        (names: `nn`, `F`, `torch`, the template's helper classes and `torch_helpers`)."""
        raise NotImplementedError(f"{self.type} has no PyTorch export")

    #: Python source of helper classes `torch_module` needs beyond the model.py template's own;
    #: written once into an exported model.py that uses this type.
    torch_helpers: ClassVar[str] = ""

    def onnx_out(self, name: str) -> str:
        """The conventional name of this layer's output tensor."""
        return f"{name}.{self.type.lower()}"

    # --- explanation panel (HTML text, numbers from engine.shapes.LayerInfo) ------------------------
    def explain(self, info: Any, spec: Any, index: int) -> list[str]:
        """Type-specific lines of the explanation (after the shape line, before the parameters)."""
        return []

    def explain_after(self, info: Any, spec: Any, index: int) -> list[str]:
        """Lines after the parameter count (comparisons, costs)."""
        return []

    def explain_params(self, info: Any) -> str | None:
        """The parameter-count line with its formula, or None for the generic line."""
        return None


def count(shapes: dict[str, Shape]) -> int:
    return sum(math.prod(s) for s in shapes.values())


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """Keras/TF "same": out = ceil(size / stride), the odd padding pixel goes after (bottom/right)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def window_output(
    layer: Layer, input_shape: Shape, kernel: Pair, stride: Pair, pads: tuple[int, int, int, int]
) -> tuple[int, int]:
    """Output height and width of a sliding window, with the fix-it messages users need."""
    _, h, w = input_shape
    ph, pw = pads[0] + pads[1], pads[2] + pads[3]
    if kernel[0] > h + ph or kernel[1] > w + pw:
        what = layer.window_word
        padded = " (with padding)" if ph or pw else ""
        raise LayerShapeError(
            f"{what} {kernel[0]}x{kernel[1]} is larger than its {h + ph}x{w + pw} input{padded}: "
            f"use a smaller {what}, add padding, or remove a pooling layer before it"
        )
    oh = (h + ph - kernel[0]) // stride[0] + 1
    ow = (w + pw - kernel[1]) // stride[1] + 1
    if oh < 1 or ow < 1:  # pragma: no cover - unreachable when the kernel fits
        raise LayerShapeError(f"output would be {oh}x{ow}: reduce stride or add padding")
    return oh, ow


# ----------------------------------------------------------------------------------------------
# Compute: one Op per layer in a model, holding parameters (views into the model's flat buffer)
# ----------------------------------------------------------------------------------------------
class Op:
    """One layer's compute. Spatial inputs arrive CNHW, flat ones (N, F) (see engine.functional)."""

    monotone = False  # activations that commute with max-pooling

    def __init__(self, layer: Layer, name: str, in_shape: Shape, out_shape: Shape, dtype: np.dtype):
        self.layer = layer
        self.name = name
        self.in_shape = in_shape
        self.out_shape = out_shape
        self.dtype = dtype
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.buffers: dict[str, np.ndarray] = {}
        self.cache: Any = None
        self.ws = {"t": F.Workspace(), "i": F.Workspace()}

    @property
    def cfg(self) -> dict[str, Any]:
        return self.layer.config

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        raise NotImplementedError

    def backward(self, dy: np.ndarray, need_dx: bool = True) -> np.ndarray | None:
        raise NotImplementedError

    def init_params(self, rng: np.random.Generator) -> None:
        """PyTorch's defaults: kaiming_uniform(a=sqrt(5)) weights, i.e. U(+-1/sqrt(fan_in)), same
        bound for biases."""

    def forward_inference_grad(self, x: np.ndarray) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
        """The output as inference computes it, and a function taking d(output) to d(input)
        through that same computation (for saliency maps). Layers that behave alike in training
        and inference just run forward and backward."""
        y = self.forward(x, True)
        return y, lambda d: self.backward(d, need_dx=True)

    def fuse(self, following: list[Op]) -> tuple[Any, int] | None:
        """A fused step replacing this op and the first n-1 of `following`, as (step, n), or None.
        The step has forward/backward like an Op and computes exactly the same function."""
        return None

    def setup(self, fuse: bool) -> None:
        """Called once the model has put this op's arrays in place (blocks hand them to inner ops)."""

    def walk(self) -> list[Op]:
        """This op and every op inside it (blocks hold inner layers)."""
        return [self]


class IdentityOp(Op):
    """Shape-keeping layers that compute nothing at inference (and the toy layers of tests)."""

    def forward(self, x, training):
        return x

    def backward(self, dy, need_dx=True):
        return dy


def uniform_fan_in(op: Op, fan_in: int, rng: np.random.Generator) -> None:
    """PyTorch's default init of a weight and bias: U(+-1/sqrt(fan_in)) for both."""
    bound = 1.0 / math.sqrt(fan_in)
    for k in ("weight", "bias"):
        if k in op.params:
            op.params[k][...] = rng.uniform(-bound, bound, op.params[k].shape)


def plan(ops: list[Op], fuse: bool) -> list[Any]:
    """The steps that run `ops` in order: each op, or a fused step standing for several."""
    return [step for step, _ in plan_spans(ops, fuse)]


def plan_spans(ops: list[Op], fuse: bool) -> list[tuple[Any, list[Op]]]:
    """plan()'s steps, each with the ops it stands for."""
    steps: list[tuple[Any, list[Op]]] = []
    i = 0
    while i < len(ops):
        fused = ops[i].fuse(ops[i + 1:]) if fuse else None
        if fused is not None:
            steps.append((fused[0], ops[i:i + fused[1]]))
            i += fused[1]
            continue
        steps.append((ops[i], ops[i:i + 1]))
        i += 1
    return steps
