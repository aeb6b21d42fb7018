"""Dropout and batch normalisation: configuration and shapes."""

from __future__ import annotations

from engine.layers.base import Field, Layer, Shape


class Dropout(Layer):
    type = "Dropout"
    category = "Regularization"
    description = "While training, zeroes a random fraction of values so units cannot co-adapt."
    fields = (Field("rate", "rate", 0.5, help="Fraction of values dropped while training, in [0, 1)."),)

    def summary(self) -> str:
        return f"Dropout {self.config['rate']:g}"


class _BatchNorm(Layer):
    category = "Regularization"
    fields = (
        Field("momentum", "exclusive_float", 0.1, help="Weight of each batch in the running statistics.",
              minimum=0.0, maximum=1.0),
        Field("eps", "exclusive_float", 1e-5, help="Added to the variance for numerical safety.",
              minimum=0.0, maximum=1.0),
    )

    def param_shapes(self, input_shape: Shape) -> dict[str, Shape]:
        c = input_shape[0]
        return {"weight": (c,), "bias": (c,)}

    def buffer_shapes(self, input_shape: Shape) -> dict[str, Shape]:
        c = input_shape[0]
        return {"running_mean": (c,), "running_var": (c,)}


class BatchNorm2D(_BatchNorm):
    type = "BatchNorm2D"
    description = "Normalises each channel over the batch, then scales and shifts it (learned)."
    needs_spatial = True


class BatchNorm1D(_BatchNorm):
    type = "BatchNorm1D"
    description = "Normalises each feature over the batch, then scales and shifts it (learned)."
    needs_spatial = False
