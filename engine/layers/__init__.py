"""The layer registry: every layer type of the `cnn-designer/1` format, by its `type` name.

Each type is one module here whose Layer subclass owns its config, shape rule, compute, exporters
and hints (see engine.layers.base). The shape inference, the model, the exporters, the trainer and
the window all look types up in LAYER_CLASSES and never switch on a type's name, so a new type is
its module plus one `register` line below (tests may register a type of their own for a while).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from engine.errors import SpecError
from engine.layers.avgpool2d import AvgPool2D
from engine.layers.base import Field, Layer, Op, Shape, fmt_shape
from engine.layers.batchnorm import BatchNorm1D, BatchNorm2D
from engine.layers.conv2d import Conv2D
from engine.layers.dense import Dense
from engine.layers.dropout import Dropout
from engine.layers.flatten import Flatten
from engine.layers.global_avgpool2d import GlobalAvgPool2D
from engine.layers.leaky_relu import LeakyReLU
from engine.layers.maxpool2d import MaxPool2D
from engine.layers.relu import ReLU
from engine.layers.residual import Residual
from engine.layers.sigmoid import Sigmoid
from engine.layers.softmax import Softmax
from engine.layers.tanh import Tanh


@dataclass(frozen=True)
class Category:
    """A palette group: its colour (hex, also the stack's row marker) and its pictogram."""

    color: str
    icon: str


#: Palette groups in display order.
CATEGORIES: dict[str, Category] = {
    "Convolution": Category("#2171b5", "kernel"),
    "Pooling": Category("#238b45", "maxpool"),
    "Activation": Category("#d95f02", "relu"),
    "Dense": Category("#756bb1", "dense"),
    "Regularization": Category("#a6761d", "dropout"),
    "Reshape": Category("#666666", "flatten"),
    "Blocks": Category("#c51b7d", "residual"),
}

#: Every registered layer type by name, in palette order.
LAYER_CLASSES: dict[str, type[Layer]] = {}


def register(cls: type[Layer]) -> type[Layer]:
    """Add a layer type to the registry (usable as a class decorator)."""
    if not cls.type or cls.type in LAYER_CLASSES:
        raise ValueError(f"layer type {cls.type!r} is empty or already registered")
    if cls.category not in CATEGORIES:
        raise ValueError(f"{cls.type}: unknown category {cls.category!r} (known: {', '.join(CATEGORIES)})")
    if not isinstance(getattr(cls, "op", None), type) or not issubclass(cls.op, Op):
        raise ValueError(f"{cls.type}: `op` must be an engine.layers.base.Op subclass")
    LAYER_CLASSES[cls.type] = cls
    return cls


@contextmanager
def registered(cls: type[Layer]) -> Iterator[type[Layer]]:
    """The type is known inside the `with` block only (for tests)."""
    register(cls)
    try:
        yield cls
    finally:
        LAYER_CLASSES.pop(cls.type, None)


for _cls in (
    Conv2D, MaxPool2D, AvgPool2D, GlobalAvgPool2D, Flatten, Dense, ReLU, LeakyReLU, Sigmoid,
    Tanh, Softmax, Dropout, BatchNorm2D, BatchNorm1D, Residual,
):
    register(_cls)


def layer_from_config(config: Any, index: int | None = None) -> Layer:
    """Build and validate one layer from its dict; SpecError names the layer index and field."""
    where = f"layer {index}" if index is not None else "layer"
    if not isinstance(config, dict):
        raise SpecError(f"{where}: a layer must be a JSON object, got {config!r}")
    t = config.get("type")
    if t is None:
        raise SpecError(f'{where}: missing required field "type"')
    cls = LAYER_CLASSES.get(t) if isinstance(t, str) else None
    if cls is None:
        raise SpecError(f"{where}: unknown layer type {t!r} (known: {', '.join(LAYER_CLASSES)})")
    return cls.from_config(config, index)


__all__ = [
    "CATEGORIES", "LAYER_CLASSES", "Category", "Field", "Layer", "Op", "Shape", "fmt_shape", "layer_from_config",
    "register", "registered", *LAYER_CLASSES,
]
