"""Flatten: configuration and shape."""

from __future__ import annotations

import math

from engine.layers.base import Layer, Shape


class Flatten(Layer):
    type = "Flatten"
    category = "Reshape"
    description = "Unrolls the C x H x W maps into one vector (channel-major, as torch.flatten)."

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        return (math.prod(input_shape),)
