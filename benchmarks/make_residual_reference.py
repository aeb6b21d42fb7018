"""Produce the PyTorch figures stored in tests/test_residual.py (shapes, parameters, forward numbers).

Run with a Python that has torch (torch is never a project dependency):
    python benchmarks/make_residual_reference.py > residual_numbers.json
Each design is rebuilt from its cnn-designer/1 dict with torch modules written here, independently of
the app's exporter: a block is a module with an nn.Sequential `layers`, a 1x1 nn.Conv2d `shortcut` (with
bias, stride ceil(H/H') x ceil(W/W')) when the inner layers change the shape or a projection is asked
for, and the activation after the addition.
"""

from __future__ import annotations

import json
import math
import sys

import torch
import torch.nn.functional as TF
from make_torch_reference import SamePool, conv_geometry, numeric_case, pair, same_pad
from torch import nn


class PadConv(nn.Conv2d):
    def __init__(self, cin, cout, k, s, pads, bias):
        super().__init__(cin, cout, k, s, bias=bias)
        self.pads = pads

    def forward(self, x):
        t, b, l, r = self.pads
        return super().forward(TF.pad(x, (l, r, t, b)))


class Block(nn.Module):
    def __init__(self, layers, shortcut, act):
        super().__init__()
        self.layers = nn.Sequential(*layers)
        self.shortcut = shortcut
        self.act = act

    def forward(self, x):
        y = self.layers(x) + (x if self.shortcut is None else self.shortcut(x))
        return y if self.act is None else self.act(y)


def module(L, shape):
    t = L["type"]
    if t == "Conv2D":
        k, s, pads = conv_geometry(L, shape)
        return PadConv(shape[0], L["filters"], k, s, pads, L.get("use_bias", True))
    if t in ("MaxPool2D", "AvgPool2D"):
        k = pair(L["pool_size"])
        s = pair(L["stride"]) if L.get("stride") is not None else k
        if L.get("padding", "valid") == "same":
            return SamePool(t, k, s, (*same_pad(shape[1], k[0], s[0]), *same_pad(shape[2], k[1], s[1])))
        return nn.MaxPool2d(k, s) if t == "MaxPool2D" else nn.AvgPool2d(k, s)
    if t == "Residual":
        inner, x = [], shape
        for c in L["layers"]:
            m = module(c, x)
            inner.append(m)
            x = out_shape(m, x)
        shortcut = None
        if x != shape or L.get("shortcut", "auto") == "projection":
            stride = (math.ceil(shape[1] / x[1]), math.ceil(shape[2] / x[2]))
            shortcut = nn.Conv2d(shape[0], x[0], 1, stride, bias=True)
        act = L.get("activation", "ReLU")
        return Block(inner, shortcut, None if act is None else module({"type": act}, x))
    simple = {
        "GlobalAvgPool2D": lambda: nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()),
        "Flatten": nn.Flatten, "Dense": lambda: nn.Linear(shape[0], L["units"], bias=L.get("use_bias", True)),
        "ReLU": nn.ReLU, "LeakyReLU": lambda: nn.LeakyReLU(L.get("alpha", 0.01)), "Sigmoid": nn.Sigmoid,
        "Tanh": nn.Tanh, "Softmax": lambda: nn.Softmax(dim=1), "Dropout": lambda: nn.Dropout(L.get("rate", 0.5)),
        "BatchNorm2D": lambda: nn.BatchNorm2d(shape[0], eps=L.get("eps", 1e-5), momentum=L.get("momentum", 0.1)),
        "BatchNorm1D": lambda: nn.BatchNorm1d(shape[0], eps=L.get("eps", 1e-5), momentum=L.get("momentum", 0.1)),
    }
    return simple[t]()


def out_shape(m, shape):
    with torch.no_grad():
        m.eval()
        return tuple(m(torch.zeros(2, *shape)).shape[1:])


def build(arch):
    shape = (arch["input"]["channels"], arch["input"]["height"], arch["input"]["width"])
    mods = nn.ModuleList()
    for L in arch["layers"]:
        m = module(L, shape)
        mods.append(m)
        shape = out_shape(m, shape)
    return mods


def nets(arch, mods):
    """(training net ending in the logits, full net) over the modules `build(arch)` made: the
    training net leaves out a final Softmax / Sigmoid, which the loss folds in."""
    mods = list(mods)
    head = mods[:-1] if arch["layers"][-1]["type"] in ("Softmax", "Sigmoid") else mods
    return nn.Sequential(*head), nn.Sequential(*mods)


KEEP = ("weight", "bias", "running_mean", "running_var")


def arrays(mods):
    """The app's weight names (layers.{i}[.layers.{j}|.shortcut].weight ...) -> tensors."""
    return {f"layers.{k}": v for k, v in mods.state_dict(keep_vars=True).items() if k.split(".")[-1] in KEEP}


def shapes_and_params(arch):
    mods = build(arch)
    x = torch.zeros(2, arch["input"]["channels"], arch["input"]["height"], arch["input"]["width"])
    shapes, inner = [], {}
    with torch.no_grad():
        for i, m in enumerate(mods.eval()):
            if isinstance(m, Block):
                h, rows = x, []
                for sub in m.layers:
                    h = sub(h)
                    rows.append(list(h.shape[1:]))
                inner[str(i)] = {"shapes": rows, "shortcut": m.shortcut is not None}
            x = m(x)
            shapes.append(list(x.shape[1:]))
    names = arrays(mods)
    count = lambda i, kinds: sum(t.numel() for k, t in names.items()  # noqa: E731
                                 if k.split(".")[1] == str(i) and k.split(".")[-1] in kinds)
    return {"shapes": shapes, "inner": inner,
            "trainable": [count(i, ("weight", "bias")) for i in range(len(mods))],
            "non_trainable": [count(i, ("running_mean", "running_var")) for i in range(len(mods))],
            "names": sorted(names)}


if __name__ == "__main__":
    sys.path[:0] = ["tests", "."]  # run from the project folder
    from test_residual import ARCHS, NUMERIC_ARCH  # the designs live with the test

    print(json.dumps({"archs": {name: shapes_and_params(a) for name, a in ARCHS.items()},
                      "numeric": numeric_case(NUMERIC_ARCH, 3, build, arrays), "torch": torch.__version__}))
