"""The compute shared by activations whose gradient is a function of their output (ReLU, sigmoid,
tanh, softmax)."""

from __future__ import annotations

from typing import Any

from engine.layers.base import Op


class OutputGradOp(Op):
    """Caches y = fn(x); the gradient is dfn(dy, y)."""

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
        return self.dfn(dy, y)

    # in-place variants for the fused conv block
    def apply_(self, z):
        return self.fn(z)

    def grad_(self, dy, y):
        return self.dfn(dy, y)
