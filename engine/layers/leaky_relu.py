"""LeakyReLU: x for positives, alpha * x for negatives."""

from __future__ import annotations

import numpy as np

from engine import functional as F
from engine.layers.activation_base import Activation
from engine.layers.base import Field, Op


class LeakyReLUOp(Op):
    monotone = True

    def forward(self, x, training):
        if training:
            self.cache = x
        return F.leaky_relu_forward(x, self.cfg["alpha"])

    def backward(self, dy, need_dx=True):
        x, self.cache = self.cache, None
        return F.leaky_relu_backward(dy, x, self.cfg["alpha"])

    def apply_(self, z):
        return F.leaky_relu_forward(z, self.cfg["alpha"])

    def grad_(self, dy, y):
        return np.where(y > 0, dy, dy * dy.dtype.type(self.cfg["alpha"]))


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
