"""What the element-wise activations share: shape kept, one ONNX node, one torch module, a formula."""

from __future__ import annotations

from typing import ClassVar

from engine.layers.base import Layer


class Activation(Layer):
    category = "Activation"
    elementwise = True
    keeps_scores = True
    keeps_maps = True
    #: the ONNX operator and the torch.nn module it maps to, and the formula the panel shows (HTML)
    onnx_op: ClassVar[str] = ""
    formula: ClassVar[str] = ""

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if "onnx_op" in cls.__dict__:  # the importer reads this operator back with from_onnx
            cls.onnx_import_ops = (cls.onnx_op,)

    @classmethod
    def from_onnx(cls, c, node) -> list:
        """The importer's rule (engine.model_import) for this type's ONNX operator."""
        return [({"type": cls.type}, {})]

    def onnx_attrs(self) -> dict:
        return {}

    def to_onnx(self, g, x, in_shape, name):
        return g.node(self.onnx_op, [x], name, self.onnx_out(name), **self.onnx_attrs())

    def torch_module(self, in_shape):
        return f"nn.{self.type}()"

    def explain(self, info, spec, index):
        return [f"<tt>{self.formula}</tt>, applied to each value; the shape does not change."]
