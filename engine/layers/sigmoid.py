"""Sigmoid: 1 / (1 + e^-x); with Dense(1) last, a two-class output."""

from __future__ import annotations

from engine import functional as F
from engine.layers.activation_base import Activation
from engine.layers.output_grad_op import OutputGradOp


class SigmoidOp(OutputGradOp):
    fn = staticmethod(F.sigmoid)
    dfn = staticmethod(F.sigmoid_backward)


class Sigmoid(Activation):
    type = "Sigmoid"
    description = "Squashes values into (0, 1); with Dense(1) last, a two-class output."
    op = SigmoidOp
    training_buffers = 1  # the input gradient (OutputGradOp)
    output_head = "binary"
    onnx_op = "Sigmoid"
    formula = "y = 1 / (1 + e<sup>−x</sup>)"
    icon = "sigmoid"
