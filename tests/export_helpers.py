"""Models for the export tests: every layer type, awkward paddings, random weights and
non-trivial BatchNorm statistics, saved as real .cnnd files."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np

from engine import modelfile
from engine.data import Preprocessing
from engine.model import Model
from engine.spec import Spec
from engine.trained import TrainedModel

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


#: Residual blocks: an identity shortcut with BatchNorm inside, a strided projection with pooling inside.
RESIDUAL = {
    "format": "cnn-designer/1", "name": "residual", "input": {"channels": 1, "height": 28, "width": 28},
    "layers": [
        {"type": "Conv2D", "filters": 8, "kernel_size": 3, "padding": "same"},
        {"type": "ReLU"},
        {"type": "MaxPool2D", "pool_size": 2},
        {"type": "Residual", "layers": [
            {"type": "Conv2D", "filters": 8, "kernel_size": 3, "padding": "same"}, {"type": "BatchNorm2D"},
            {"type": "ReLU"}, {"type": "Conv2D", "filters": 8, "kernel_size": 3, "padding": "same"},
            {"type": "BatchNorm2D"}]},
        {"type": "Residual", "activation": "LeakyReLU", "layers": [
            {"type": "Conv2D", "filters": 12, "kernel_size": 3, "stride": 2, "padding": "same"},
            {"type": "ReLU"}, {"type": "MaxPool2D", "pool_size": 3, "stride": 1, "padding": "same"}]},
        {"type": "Flatten"},
        {"type": "Dense", "units": 10},
    ],
}

RGB_PRE = {"color": "rgb", "height": 20, "width": 20, "scale": 1 / 255, "mean": [0.5, 0.4, 0.3],
           "std": [0.2, 0.25, 0.3]}
#: name -> (architecture, classes, preprocessing): together every layer type of the format.
CASES = {
    "all_layers": (ALL_LAYERS, None, None),
    "binary_rgb": (BINARY_RGB, ["cat", "dog"], RGB_PRE),
    "scores": (SCORES, None, None),
    "residual": (RESIDUAL, None, None),
}


def mnist_inputs(
    pre: Preprocessing, n: int = 512, seed: int = 0, split: str = "train"
) -> tuple[np.ndarray, np.ndarray]:
    """Real MNIST digits as this preprocessing's model input (resized, grey -> RGB), with labels."""
    import mnist_data
    from PIL import Image

    x, y = mnist_data.load(split)
    idx = np.random.default_rng(seed).choice(len(y), n, replace=False)
    imgs = []
    for i in idx:
        im = Image.fromarray(x[i])
        if im.size != (pre.width, pre.height):
            im = im.resize((pre.width, pre.height), Image.Resampling.BILINEAR)
        a = np.asarray(im.convert("L" if pre.color == "grayscale" else "RGB"), dtype=np.uint8)
        imgs.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
    return pre.normalize(np.stack(imgs)), y[idx].astype(np.int64)


@functools.cache
def _trained_state(spec_json: str, pre_json: str, epochs: int, seed: int) -> dict[str, np.ndarray]:
    spec = Spec.from_dict(json.loads(spec_json))
    pre = Preprocessing.from_dict(json.loads(pre_json))
    from engine.optimizers import make_optimizer

    m = Model(spec, seed=seed)
    x, y = mnist_inputs(pre, n=640, seed=seed)
    if m.loss_kind == "binary_ce":
        y = (y >= 5).astype(np.int64)
    opt = make_optimizer("adam", m, lr=5e-3)
    for _ in range(epochs):
        for i in range(0, len(x), 32):
            m.train_step(x[i:i + 32], y[i:i + 32], opt)
    state = m.state_dict()
    rng = np.random.default_rng(seed)
    for k, v in state.items():
        if k.endswith("running_mean"):
            state[k] = (v + rng.normal(0, 0.1, v.shape)).astype(np.float32)
        elif k.endswith("running_var"):
            state[k] = (v * rng.uniform(0.8, 1.25, v.shape)).astype(np.float32)
    return state


def trained_state(spec: Spec, pre: Preprocessing, epochs: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """Weights from a short real training run (so predictions differ from image to image and a
    comparison of probabilities means something), BatchNorm statistics then perturbed so none is
    near its initial 0/1. Cached per session: several test files export the same models."""
    state = _trained_state(spec.to_json(), json.dumps(pre.to_dict()), epochs, seed)
    return {k: v.copy() for k, v in state.items()}


def make_cnnd(path: Path, arch: dict, classes: list[str] | None = None, preprocessing: dict | None = None,
              history: list | None = None, training: dict | None = None, seed: int = 0) -> Path:
    spec = Spec.from_dict(arch)
    n = 10 if classes is None else len(classes)
    classes = classes or [str(i) for i in range(n)]
    pre = Preprocessing.from_dict(preprocessing) if preprocessing else Preprocessing.for_input(spec.input_shape)
    modelfile.save(path, TrainedModel(spec, trained_state(spec, pre, seed=seed), classes, pre, training or {},
                                      HISTORY if history is None else history))
    return Path(path)


def export_cases(folder: Path, fmt: str, suffix: str) -> dict[str, tuple[Path, Path]]:
    """Every CASES model saved as .cnnd and exported through the public API: name -> (cnnd, out)."""
    from engine.export import export_model

    out = {}
    for name, (arch, classes, pre) in CASES.items():
        cnnd = make_cnnd(folder / f"{name}.cnnd", arch, classes, pre)
        target = folder / f"{name}{suffix}"
        res = export_model(cnnd, fmt, target)
        assert res.written[0] == target
        out[name] = (cnnd, target)
    return out
