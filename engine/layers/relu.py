"""ReLU: max(0, x)."""

from __future__ import annotations

import numpy as np

from engine import functional as F
from engine.layers.activation_base import Activation
from engine.layers.output_grad_op import OutputGradOp


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0)


class ReLUOp(OutputGradOp):
    fn = staticmethod(_relu)
    dfn = staticmethod(F.relu_backward)

    # in-place variants for the fused conv block
    def apply_(self, z: np.ndarray) -> np.ndarray:
        return np.maximum(z, 0, out=z)

    def grad_(self, dy: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.multiply(dy, y > 0, out=dy)


class ReLU(Activation):
    type = "ReLU"
    description = "max(0, x): keeps positive values, zeroes the rest."
    op = ReLUOp
    reports_dead_units = True
    onnx_op = "Relu"
    formula = "y = max(0, x)"
    icon = "relu"
