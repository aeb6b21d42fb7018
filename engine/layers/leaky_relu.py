"""LeakyReLU: x for positives, alpha * x for negatives."""

from __future__ import annotations

from engine.layers.activation_base import Activation
from engine.layers.base import Field
from engine.layers.relu import ReLUOp


class LeakyReLUOp(ReLUOp):
    """ReLU's op with alpha as the slope for negatives (its kernels, its fused steps)."""

    @property
    def leak(self) -> float:
        return float(self.cfg["alpha"])


class LeakyReLU(Activation):
    type = "LeakyReLU"
    description = "Like ReLU, but lets a small slope (alpha * x) through for negatives."
    fields = (Field("alpha", "float", 0.01, help="Slope for negative inputs.", minimum=0.0),)
    op = LeakyReLUOp
    onnx_op = "LeakyRelu"
    icon = "leakyrelu"

    @classmethod
    def from_onnx(cls, c, node):
        return [({"type": cls.type, "alpha": float(c.attr(node, "alpha", 0.01))}, {})]

    def summary(self) -> str:
        return f"LeakyReLU {self.config['alpha']:g}"

    def onnx_attrs(self):
        return {"alpha": float(self.config["alpha"])}

    def torch_module(self, in_shape):
        return f"nn.LeakyReLU({float(self.config['alpha'])!r})"

    def explain(self, info, spec, index):
        return [f"<tt>y = x if x &gt; 0, else {self.config['alpha']} · x</tt>, applied to each value; "
                "the shape does not change."]
