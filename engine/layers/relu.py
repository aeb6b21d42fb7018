"""ReLU: max(0, x). Its op is also LeakyReLU's (engine.layers.leaky_relu), with a slope for negatives."""

from __future__ import annotations

import numpy as np

from engine import functional as F
from engine.layers.activation_base import Activation
from engine.layers.output_grad_op import OutputGradOp


class ReLUOp(OutputGradOp):
    """ReLU, or LeakyReLU with `leak` (alpha) as the slope for negatives: one op, so the fused steps
    BatchNorm -> ReLU (-> MaxPool2D) and Conv2D -> ReLU take both (engine.layers.batchnorm, conv2d)."""

    #: slope for negative inputs: 0 for ReLU
    leak = 0.0

    def fn(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        return F.leaky_relu_forward(x, self.leak, out)

    def dfn(self, dy: np.ndarray, y: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        return F.leaky_relu_backward(dy, y, self.leak, out)


class ReLU(Activation):
    type = "ReLU"
    description = "max(0, x): keeps positive values, zeroes the rest."
    op = ReLUOp
    reports_dead_units = True
    onnx_op = "Relu"
    formula = "y = max(0, x)"
    icon = "relu"
