"""MaxPool2D: the largest value of each window."""

from __future__ import annotations

from engine import functional as F
from engine.layers.pooling_base import Pool2D, PoolOp


class MaxPoolOp(PoolOp):
    def forward(self, x, training):
        y, idx = F.maxpool_forward(x, self.kernel, self.stride, self.pads, with_index=training)
        if training:
            self.cache = idx
        return y

    def backward(self, dy, need_dx=True):
        idx, self.cache = self.cache, None
        return F.maxpool_backward(dy, idx, self.in_shape[1:], self.kernel, self.stride, self.pads)


class MaxPool2D(Pool2D):
    type = "MaxPool2D"
    description = "Keeps the largest value in each window: smaller maps, some shift tolerance."
    op = MaxPoolOp
    icon = "maxpool"

    def to_onnx(self, g, x, in_shape, name):
        # ONNX MaxPool never picks a padded cell (-inf padding)
        return g.node("MaxPool", [x], name, self.onnx_out(name), **self.onnx_attrs(in_shape))

    def torch_module(self, in_shape):
        return self.torch_pool(in_shape, "nn.MaxPool2d", "MaxPool2dSame")
