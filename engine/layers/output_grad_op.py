"""The compute shared by activations whose gradient is a function of their output (ReLU, sigmoid,
tanh, softmax)."""

from __future__ import annotations

from typing import Any

from engine.layers.base import Op


class OutputGradOp(Op):
    """Caches y = fn(x); the gradient is dfn(dy, y). A layer declaring an output-sized training
    buffer (training_buffers: Tanh, Sigmoid) gets its input gradient in one reused from step to
    step, dfn(dy, y, out), instead of a fresh array whose pages fault in at every step."""

    monotone = True
    fn: Any
    dfn: Any

    def forward(self, x, training):
        y = self.fn(x)
        if training:
            self.cache = y
        return y

    def backward(self, dy, need_dx=True):
        y, self.cache = self.cache, None
        if self.layer.training_buffers:
            return self.dfn(dy, y, self.ws["t"].get("dx", y.shape, y.dtype))
        return self.dfn(dy, y)

    # in-place variants for the fused conv blocks (element-wise activations: fn and dfn take `out`)
    def apply_(self, z):
        return self.fn(z, out=z)

    def grad_(self, dy, y):
        return self.dfn(dy, y, dy)
