"""Element-wise activations and Softmax: configuration and shapes."""

from __future__ import annotations

from engine.layers.base import Field, Layer


class ReLU(Layer):
    type = "ReLU"
    category = "Activation"
    description = "max(0, x): keeps positive values, zeroes the rest."


class LeakyReLU(Layer):
    type = "LeakyReLU"
    category = "Activation"
    description = "Like ReLU, but lets a small slope (alpha * x) through for negatives."
    fields = (Field("alpha", "float", 0.01, help="Slope for negative inputs.", minimum=0.0),)

    def summary(self) -> str:
        return f"LeakyReLU {self.config['alpha']:g}"


class Sigmoid(Layer):
    type = "Sigmoid"
    category = "Activation"
    description = "Squashes values into (0, 1); with Dense(1) last, a two-class output."


class Tanh(Layer):
    type = "Tanh"
    category = "Activation"
    description = "Squashes values into (-1, 1), centred on zero."


class Softmax(Layer):
    type = "Softmax"
    category = "Activation"
    description = "Turns the last layer's scores into class probabilities that sum to 1."
    needs_spatial = False
