"""All layer types of the `cnn-designer/1` format, by their `type` name."""

from __future__ import annotations

from typing import Any

from engine.errors import SpecError
from engine.layers.activations import LeakyReLU, ReLU, Sigmoid, Softmax, Tanh
from engine.layers.base import Field, Layer, Shape, fmt_shape
from engine.layers.conv import Conv2D
from engine.layers.dense import Dense
from engine.layers.pooling import AvgPool2D, GlobalAvgPool2D, MaxPool2D
from engine.layers.regularization import BatchNorm1D, BatchNorm2D, Dropout
from engine.layers.reshape import Flatten

LAYER_CLASSES: dict[str, type[Layer]] = {
    cls.type: cls
    for cls in (
        Conv2D, MaxPool2D, AvgPool2D, GlobalAvgPool2D, Flatten, Dense, ReLU, LeakyReLU, Sigmoid,
        Tanh, Softmax, Dropout, BatchNorm2D, BatchNorm1D,
    )
}

CATEGORIES = ("Convolution", "Pooling", "Activation", "Dense", "Regularization", "Reshape")


def layer_from_config(config: Any, index: int | None = None) -> Layer:
    """Build and validate one layer from its dict; SpecError names the layer index and field."""
    where = f"layer {index}" if index is not None else "layer"
    if not isinstance(config, dict):
        raise SpecError(f"{where}: a layer must be a JSON object, got {config!r}")
    t = config.get("type")
    if t is None:
        raise SpecError(f'{where}: missing required field "type"')
    cls = LAYER_CLASSES.get(t)
    if cls is None:
        raise SpecError(f"{where}: unknown layer type {t!r} (known: {', '.join(LAYER_CLASSES)})")
    return cls.from_config(config, index)


__all__ = [
    "CATEGORIES", "LAYER_CLASSES", "Field", "Layer", "Shape", "fmt_shape", "layer_from_config",
    *LAYER_CLASSES,
]
