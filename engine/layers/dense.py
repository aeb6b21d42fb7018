"""Dense (fully connected) layer: configuration and shapes."""

from __future__ import annotations

from engine.layers.base import Field, Layer, Shape


class Dense(Layer):
    type = "Dense"
    category = "Dense"
    description = "Connects every input to every output: a learned weighted sum per unit."
    needs_spatial = False
    fields = (
        Field("units", "int", help="How many outputs (the class count for the last layer)."),
        Field("use_bias", "bool", True, help="Add a learned bias to each unit."),
    )

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        self.check_input(input_shape)
        return (self.config["units"],)

    def param_shapes(self, input_shape: Shape) -> dict[str, Shape]:
        shapes: dict[str, Shape] = {"weight": (self.config["units"], input_shape[0])}
        if self.config["use_bias"]:
            shapes["bias"] = (self.config["units"],)
        return shapes

    def macs(self, input_shape: Shape, output_shape: Shape) -> int:
        return input_shape[0] * output_shape[0]

    def summary(self) -> str:
        return f"Dense {self.config['units']}"
