"""Softmax: the last layer's scores as class probabilities."""

from __future__ import annotations

from engine import functional as F
from engine.layers.activation_base import Activation
from engine.layers.output_grad_op import OutputGradOp


class SoftmaxOp(OutputGradOp):
    monotone = False  # across a vector: never fused with pooling
    fn = staticmethod(F.softmax)
    dfn = staticmethod(F.softmax_backward)


class Softmax(Activation):
    type = "Softmax"
    description = "Turns the last layer's scores into class probabilities that sum to 1."
    needs_spatial = False
    last_only = True
    output_head = "softmax"
    elementwise = False
    keeps_maps = False
    op = SoftmaxOp
    onnx_op = "Softmax"
    formula = "p<sub>i</sub> = e<sup>x<sub>i</sub></sup> / Σ<sub>j</sub> e<sup>x<sub>j</sub></sup>"
    icon = "softmax"

    @classmethod
    def from_onnx(cls, c, node):
        axis = c.attr(node, "axis", -1)  # over the class axis of a flat vector
        if len(c.shape) != 1 or axis not in (1, -1):
            raise c.error(node, f"softmax over axis {axis} of a {len(c.shape) + 1}-D tensor is not supported")
        return super().from_onnx(c, node)

    def onnx_attrs(self):
        return {"axis": 1}

    def torch_module(self, in_shape):
        return "nn.Softmax(dim=1)"

    def explain(self, info, spec, index):
        return [*super().explain(info, spec, index),
                "The outputs are positive and sum to 1: class probabilities. For training, it is "
                "folded into the cross-entropy loss."]
