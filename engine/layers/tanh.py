"""Tanh: squashes into (-1, 1)."""

from __future__ import annotations

import numpy as np

from engine import functional as F
from engine.layers.activation_base import Activation
from engine.layers.output_grad_op import OutputGradOp


class TanhOp(OutputGradOp):
    fn = staticmethod(np.tanh)
    dfn = staticmethod(F.tanh_backward)

    def apply_(self, z):
        return np.tanh(z, out=z)


class Tanh(Activation):
    type = "Tanh"
    description = "Squashes values into (-1, 1), centred on zero."
    op = TanhOp
    onnx_op = "Tanh"
    formula = "y = (e<sup>x</sup> − e<sup>−x</sup>) / (e<sup>x</sup> + e<sup>−x</sup>)"
    icon = "sigmoid"
