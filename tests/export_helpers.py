"""Models for the export tests: every layer type, awkward paddings, random weights and
non-trivial BatchNorm statistics, saved as real .cnnd files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engine import modelfile
from engine.data import Preprocessing
from engine.model import Model
from engine.spec import Spec

HISTORY = [{"epoch": 1, "train_loss": 1.0, "train_accuracy": 0.5}]

#: 1x28x28 digits: every layer type except GlobalAvgPool2D; asymmetric "same" paddings everywhere.
ALL_LAYERS = {
    "format": "cnn-designer/1", "name": "every layer", "input": {"channels": 1, "height": 28, "width": 28},
    "layers": [
        {"type": "Conv2D", "filters": 4, "kernel_size": 4, "padding": "same"},
        {"type": "BatchNorm2D", "eps": 0.001},
        {"type": "LeakyReLU", "alpha": 0.1},
        {"type": "MaxPool2D", "pool_size": 3, "stride": 2, "padding": "same"},
        {"type": "Conv2D", "filters": 6, "kernel_size": [3, 5], "stride": [2, 1], "padding": [1, 2],
         "use_bias": False},
        {"type": "Tanh"},
        {"type": "AvgPool2D", "pool_size": 2, "stride": 1, "padding": "same"},
        {"type": "Conv2D", "filters": 8, "kernel_size": 3, "stride": 2, "padding": "same"},
        {"type": "ReLU"},
        {"type": "Dropout", "rate": 0.3},
        {"type": "Flatten"},
        {"type": "Dense", "units": 16},
        {"type": "BatchNorm1D", "momentum": 0.2},
        {"type": "Sigmoid"},
        {"type": "Dense", "units": 10},
        {"type": "Softmax"},
    ],
}

#: 3x20x20 RGB, two classes through a final one-unit Sigmoid, GlobalAvgPool2D, resizing on input.
BINARY_RGB = {
    "format": "cnn-designer/1", "name": "binary rgb", "input": {"channels": 3, "height": 20, "width": 20},
    "layers": [
        {"type": "Conv2D", "filters": 5, "kernel_size": 3, "stride": 2, "padding": "same"},
        {"type": "BatchNorm2D"},
        {"type": "ReLU"},
        {"type": "AvgPool2D", "pool_size": 3, "stride": 2, "padding": "same"},
        {"type": "MaxPool2D", "pool_size": 2, "stride": 1, "padding": "same"},
        {"type": "GlobalAvgPool2D"},
        {"type": "Dense", "units": 1},
        {"type": "Sigmoid"},
    ],
}

#: Raw scores at the end (no Softmax): the app applies a softmax in predict_proba.
SCORES = {
    "format": "cnn-designer/1", "name": "scores", "input": {"channels": 1, "height": 16, "width": 16},
    "layers": [
        {"type": "Conv2D", "filters": 3, "kernel_size": 3, "padding": 1},
        {"type": "MaxPool2D", "pool_size": 2},
        {"type": "Flatten"},
        {"type": "Dense", "units": 10},
    ],
}


def random_state(spec: Spec, seed: int = 0) -> dict[str, np.ndarray]:
    """Initial weights, with BatchNorm scale/shift and running statistics far from 1/0."""
    rng = np.random.default_rng(seed)
    state = Model(spec, seed=seed).state_dict()
    for k, v in state.items():
        if k.endswith("running_mean"):
            state[k] = rng.normal(0, 0.5, v.shape).astype(np.float32)
        elif k.endswith("running_var"):
            state[k] = rng.uniform(0.3, 2.5, v.shape).astype(np.float32)
        elif k.endswith(".bias"):
            state[k] = rng.normal(0, 0.3, v.shape).astype(np.float32)
        elif ".weight" in k and v.ndim == 1:  # BatchNorm gamma
            state[k] = rng.uniform(0.5, 1.5, v.shape).astype(np.float32)
    return state


def make_cnnd(path: Path, arch: dict, classes: list[str] | None = None, preprocessing: dict | None = None,
              history: list | None = None, training: dict | None = None, seed: int = 0) -> Path:
    spec = Spec.from_dict(arch)
    n = 10 if classes is None else len(classes)
    classes = classes or [str(i) for i in range(n)]
    pre = Preprocessing.from_dict(preprocessing) if preprocessing else Preprocessing.for_input(spec.input_shape)
    modelfile.save(path, spec, random_state(spec, seed), classes, pre, training or {},
                   HISTORY if history is None else history)
    return Path(path)
