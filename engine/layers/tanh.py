"""Tanh: squashes into (-1, 1)."""

from __future__ import annotations

import numpy as np

from engine import functional as F
from engine.layers.activation_base import Activation
from engine.layers.output_grad_op import OutputGradOp


class TanhOp(OutputGradOp):
    fn = staticmethod(np.tanh)
    dfn = staticmethod(F.tanh_backward)


class Tanh(Activation):
    type = "Tanh"
    description = "Squashes values into (-1, 1), centred on zero."
    op = TanhOp
    training_buffers = 1  # the input gradient (OutputGradOp)
    onnx_op = "Tanh"
    formula = "y = (e<sup>x</sup> − e<sup>−x</sup>) / (e<sup>x</sup> + e<sup>−x</sup>)"
    icon = "sigmoid"
