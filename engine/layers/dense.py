"""Dense (fully connected): config, shapes, compute, exporters, hints."""

from __future__ import annotations

import math

from engine import functional as F
from engine.layers.base import Field, Layer, Op, Shape, uniform_fan_in


class DenseOp(Op):
    def init_params(self, rng):
        uniform_fan_in(self, self.in_shape[0], rng)

    def forward(self, x, training):
        if training:
            self.cache = x
        return F.dense_forward(x, self.params["weight"], self.params.get("bias"))

    def backward(self, dy, need_dx=True):
        x, self.cache = self.cache, None
        return F.dense_backward(dy, x, self.params["weight"], self.grads["weight"], self.grads.get("bias"), need_dx)


class Dense(Layer):
    type = "Dense"
    category = "Dense"
    description = "Connects every input to every output: a learned weighted sum per unit."
    needs_spatial = False
    fields = (
        Field("units", "int", help="How many outputs (the class count for the last layer)."),
        Field("use_bias", "bool", True, help="Add a learned bias to each unit."),
    )
    op = DenseOp
    score_field = "units"
    icon = "dense"
    palette_defaults = {"units": 64}

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        self.check_input(input_shape)
        return (self.config["units"],)

    def param_shapes(self, input_shape: Shape) -> dict[str, Shape]:
        shapes: dict[str, Shape] = {"weight": (self.config["units"], input_shape[0])}
        if self.config["use_bias"]:
            shapes["bias"] = (self.config["units"],)
        return shapes

    def macs(self, input_shape: Shape, output_shape: Shape) -> int:
        return input_shape[0] * output_shape[0]

    def summary(self) -> str:
        return f"Dense {self.config['units']}"

    def to_onnx(self, g, x, in_shape, name):
        inputs = [x, g.weight(f"{name}.weight")]
        if self.config["use_bias"]:
            inputs.append(g.weight(f"{name}.bias"))
        return g.node("Gemm", inputs, name, self.onnx_out(name), transB=1)

    def torch_module(self, in_shape):
        return f"nn.Linear({in_shape[0]}, {self.config['units']}, bias={self.config['use_bias']})"

    def explain_params(self, info):
        shapes = info.param_shapes
        u, n = shapes["weight"]
        text = f"{u} x {n}" + (f" + {u}" if "bias" in shapes else "")
        return f"<b>Parameters</b> = units x inputs + bias: <tt>{text} = {info.trainable:,}</tt>"

    def explain_after(self, info, spec, index):
        raw = _raw_input_comparison(spec, index, info)
        return [raw] if raw else []


def _raw_input_comparison(spec, index: int, info) -> str | None:
    """For the first Dense after a Flatten: what the same layer would cost on the raw pixels."""
    j = index - 1
    while j >= 0 and spec.layers[j].elementwise:
        j -= 1
    if j < 0 or spec.layers[j].type != "Flatten" or "weight" not in info.param_shapes:
        return None
    units, n = info.param_shapes["weight"]
    raw = math.prod(spec.input_shape)
    bias = units if "bias" in info.param_shapes else 0
    raw_params = units * raw + bias
    c, h, w = spec.input_shape
    if raw == n:
        return (f"<b>Raw pixels:</b> this Dense sees the {c}x{h}x{w} input directly, so each of its {units} units "
                f"has its own weight for every one of the {raw:,} pixels ({info.trainable:,} parameters). "
                "Convolution and pooling before it would shrink that input and share weights across positions.")
    ratio = raw_params / max(info.trainable, 1)
    cmp = f"{ratio:.1f}x as many" if ratio >= 1 else f"{1 / ratio:.1f}x fewer"
    return (f"<b>Why convolution and pooling:</b> on the raw {c}x{h}x{w} input ({raw:,} values) the same "
            f"Dense {units} would need <tt>{units} x {raw}{f' + {units}' if bias else ''} = {raw_params:,}</tt> "
            f"parameters; after the layers above it sees {n:,} values and needs {info.trainable:,} "
            f"({cmp}).")
