"""AvgPool2D: the mean of each window, padded cells left out of the mean."""

from __future__ import annotations

from engine import functional as F
from engine.layers.pooling_base import Pool2D, PoolOp


class AvgPoolOp(PoolOp):
    def forward(self, x, training):
        return F.avgpool_forward(x, self.kernel, self.stride, self.pads)

    def backward(self, dy, need_dx=True):
        return F.avgpool_backward(dy, self.in_shape[1:], self.kernel, self.stride, self.pads, self.ws["t"])


class AvgPool2D(Pool2D):
    type = "AvgPool2D"
    description = "Averages each window (padded cells excluded): smaller, smoother maps."
    op = AvgPoolOp
    icon = "avgpool"

    def to_onnx(self, g, x, in_shape, name):
        # the app averages over real cells only
        return g.node("AveragePool", [x], name, self.onnx_out(name), count_include_pad=0,
                      **self.onnx_attrs(in_shape))

    def torch_module(self, in_shape):
        return self.torch_pool(in_shape, "nn.AvgPool2d", "AvgPool2dSame")
