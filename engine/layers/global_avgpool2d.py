"""GlobalAvgPool2D: each feature map averaged to one number."""

from __future__ import annotations

import numpy as np

from engine.layers.base import Layer, Op, Shape


class GlobalAvgPoolOp(Op):
    def forward(self, x, training):
        return np.ascontiguousarray(x.mean(axis=(2, 3)).T)

    def backward(self, dy, need_dx=True):
        c, h, w = self.in_shape
        g = dy.T * dy.dtype.type(1.0 / (h * w))
        return np.ascontiguousarray(np.broadcast_to(g[:, :, None, None], (c, dy.shape[0], h, w)))


class GlobalAvgPool2D(Layer):
    type = "GlobalAvgPool2D"
    category = "Pooling"
    description = "Averages each whole feature map to one number: C maps become C features."
    needs_spatial = True
    op = GlobalAvgPoolOp
    keeps_scores = True
    icon = "globalpool"

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        self.check_input(input_shape)
        return (input_shape[0],)

    def to_onnx(self, g, x, in_shape, name):
        out = self.onnx_out(name)
        g.node("GlobalAveragePool", [x], name, out + ".4d")
        return g.node("Flatten", [out + ".4d"], name + ".flatten", out, axis=1)

    def torch_module(self, in_shape):
        return "GlobalAvgPool2d()"

    def explain(self, info, spec, index):
        c, h, w = info.input_shape
        return [f"Each of the {c} maps ({h}x{w}) is averaged to one number. A Flatten here would pass "
                f"{c * h * w:,} values to the next layer instead of {c}."]
