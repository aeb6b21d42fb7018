"""Flatten: C x H x W maps unrolled into one vector, channel-major as torch.flatten."""

from __future__ import annotations

import math

import numpy as np

from engine.layers.base import Layer, Op, Shape


class FlattenOp(Op):
    def forward(self, x, training):
        if x.ndim == 2:
            return x
        return np.ascontiguousarray(x.transpose(1, 0, 2, 3)).reshape(x.shape[1], -1)

    def backward(self, dy, need_dx=True):
        if len(self.in_shape) == 1:
            return dy
        c, h, w = self.in_shape
        return np.ascontiguousarray(dy.reshape(dy.shape[0], c, h, w).transpose(1, 0, 2, 3))


class Flatten(Layer):
    type = "Flatten"
    category = "Reshape"
    description = "Unrolls the C x H x W maps into one vector (channel-major, as torch.flatten)."
    op = FlattenOp
    keeps_scores = True
    icon = "flatten"

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        return (math.prod(input_shape),)

    def to_onnx(self, g, x, in_shape, name):
        return g.node("Flatten", [x], name, self.onnx_out(name), axis=1)

    def torch_module(self, in_shape):
        return "nn.Flatten()"

    def explain(self, info, spec, index):
        return [f"<tt>{' x '.join(map(str, info.input_shape))} = {info.output_shape[0]:,}</tt> values in one "
                "vector (channel by channel, row by row)."]
