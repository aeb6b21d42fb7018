"""Produce the PyTorch figures stored in tests/test_layers_shapes_vs_torch.py and tests/test_optimizers.py.

Run with the reference venv (torch is never a project dependency):
    /work/venv-ref/bin/python benchmarks/make_torch_reference.py > /tmp/torch_ref_numbers.json
Each architecture is rebuilt layer by layer from its cnn-designer/1 dict with torch modules:
Keras-style "same" padding becomes an explicit (possibly asymmetric) pad, max-pool "same" pads with
-inf, average-pool "same" divides by the number of real cells.
"""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import torch
import torch.nn.functional as TF
from torch import nn


def pair(v):
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def same_pad(n, k, s):
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def conv_geometry(L, shape):
    """(kernel, stride, (top, bottom, left, right) pads) of a Conv2D dict on a C x H x W input."""
    k, s = pair(L["kernel_size"]), pair(L.get("stride", 1))
    p = L.get("padding", "valid")
    if p == "same":
        return k, s, (*same_pad(shape[1], k[0], s[0]), *same_pad(shape[2], k[1], s[1]))
    if p == "valid":
        return k, s, (0, 0, 0, 0)
    ph, pw = pair(p)
    return k, s, (ph, ph, pw, pw)


class SamePool(nn.Module):
    def __init__(self, kind, k, s, pads):
        super().__init__()
        self.kind, self.k, self.s, self.pads = kind, k, s, pads

    def forward(self, x):
        t, b, l, r = self.pads
        if self.kind == "MaxPool2D":
            return TF.max_pool2d(TF.pad(x, (l, r, t, b), value=-math.inf), self.k, self.s)
        s = TF.avg_pool2d(TF.pad(x, (l, r, t, b)), self.k, self.s, divisor_override=1)
        ones = torch.ones_like(x[:1, :1])
        c = TF.avg_pool2d(TF.pad(ones, (l, r, t, b)), self.k, self.s, divisor_override=1)
        return s / c


def build(arch):
    c, h, w = arch["input"]["channels"], arch["input"]["height"], arch["input"]["width"]
    shape = (c, h, w)
    mods = []
    for L in arch["layers"]:
        t = L["type"]
        if t == "Conv2D":
            k, s, pads = conv_geometry(L, shape)
            conv = nn.Conv2d(shape[0], L["filters"], k, s, bias=L.get("use_bias", True))
            m = nn.Sequential(nn.ZeroPad2d((pads[2], pads[3], pads[0], pads[1])), conv)
        elif t in ("MaxPool2D", "AvgPool2D"):
            k = pair(L["pool_size"])
            s = pair(L["stride"]) if L.get("stride") is not None else k
            if L.get("padding", "valid") == "same":
                m = SamePool(t, k, s, (*same_pad(shape[1], k[0], s[0]), *same_pad(shape[2], k[1], s[1])))
            else:
                m = nn.MaxPool2d(k, s) if t == "MaxPool2D" else nn.AvgPool2d(k, s)
        elif t == "GlobalAvgPool2D":
            m = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        elif t == "Flatten":
            m = nn.Flatten()
        elif t == "Dense":
            m = nn.Linear(shape[0], L["units"], bias=L.get("use_bias", True))
        elif t == "ReLU":
            m = nn.ReLU()
        elif t == "LeakyReLU":
            m = nn.LeakyReLU(L.get("alpha", 0.01))
        elif t == "Sigmoid":
            m = nn.Sigmoid()
        elif t == "Tanh":
            m = nn.Tanh()
        elif t == "Softmax":
            m = nn.Softmax(dim=1)
        elif t == "Dropout":
            m = nn.Dropout(L.get("rate", 0.5))
        elif t == "BatchNorm2D":
            m = nn.BatchNorm2d(shape[0], eps=L.get("eps", 1e-5), momentum=L.get("momentum", 0.1))
        elif t == "BatchNorm1D":
            m = nn.BatchNorm1d(shape[0], eps=L.get("eps", 1e-5), momentum=L.get("momentum", 0.1))
        else:
            raise ValueError(t)
        mods.append(m)
        with torch.no_grad():
            m.eval()
            shape = tuple(m(torch.zeros(2, *shape)).shape[1:])
    return mods


def shapes_and_params(arch):
    mods = build(arch)
    x = torch.zeros(2, arch["input"]["channels"], arch["input"]["height"], arch["input"]["width"])
    out = []
    with torch.no_grad():
        for m in mods:
            m.eval()
            x = m(x)
            out.append(list(x.shape[1:]))
    params = [sum(p.numel() for p in m.parameters()) for m in mods]
    bufs = [sum(b.numel() for n, b in m.named_buffers() if "running" in n) for m in mods]
    return {"shapes": out, "trainable": params, "non_trainable": bufs}


def det_weights(shape, k):
    """Deterministic weights both sides can compute: 0.3 * sin(0.7 * i + k)."""
    n = int(np.prod(shape))
    return (0.3 * np.sin(0.7 * np.arange(n) + k)).reshape(shape)


def named_torch_arrays(mods):
    """layers.{i}.weight|bias|running_mean|running_var in spec order -> torch tensors."""
    out = {}
    for i, m in enumerate(mods):
        core = m[1] if isinstance(m, nn.Sequential) and isinstance(m[1], nn.Conv2d) else m
        for name in ("weight", "bias", "running_mean", "running_var"):
            t = getattr(core, name, None)
            if isinstance(t, torch.Tensor):
                out[f"layers.{i}.{name}"] = t
    return out


def numeric_case(arch, n, build=build, names=None):
    """Eval output and one training step's figures with deterministic weights (`build` makes the
    modules, `names` maps them to the app's weight names)."""
    torch.set_default_dtype(torch.float64)
    mods = build(arch)
    arrays = (names or named_torch_arrays)(mods)
    with torch.no_grad():
        for k, (name, t) in enumerate(sorted(arrays.items())):
            v = det_weights(tuple(t.shape), k)
            if name.endswith("running_var"):
                v = 1.0 + np.abs(v)
            t.copy_(torch.from_numpy(v))
    c, h, w = arch["input"]["channels"], arch["input"]["height"], arch["input"]["width"]
    x = torch.from_numpy(det_weights((n, c, h, w), 99) * 3)
    seq = nn.Sequential(*mods)
    seq.eval()
    with torch.no_grad():
        y_eval = seq(x).numpy().tolist()
    # one training-mode step: BN batch statistics, running stats update and gradients
    seq.train()
    x.requires_grad_(True)
    logits = nn.Sequential(*mods[:-1])(x) if arch["layers"][-1]["type"] == "Softmax" else seq(x)
    y = torch.arange(n) % logits.shape[1]
    loss = TF.cross_entropy(logits, y)
    loss.backward()
    res = {"eval_output": y_eval, "train_loss": float(loss), "labels": y.tolist(),
           "input_grad_sum_abs": float(x.grad.abs().sum()), "input_grad_first": x.grad.reshape(-1)[:6].tolist(),
           "grads": {k: [float(t.grad.abs().sum()), t.grad.reshape(-1)[:4].tolist()]
                     for k, t in arrays.items() if t.grad is not None},
           "running": {k: t.reshape(-1)[:4].tolist() for k, t in arrays.items() if "running" in k}}
    torch.set_default_dtype(torch.float32)
    return res


def optimizer_runs():
    torch.set_default_dtype(torch.float64)
    cfgs = {
        "sgd": ("sgd", {"lr": 0.1}),
        "sgd_momentum": ("sgd", {"lr": 0.1, "momentum": 0.9}),
        "sgd_nesterov_wd": ("sgd", {"lr": 0.05, "momentum": 0.8, "nesterov": True, "weight_decay": 0.01}),
        "sgd_dampening_wd": ("sgd", {"lr": 0.05, "momentum": 0.9, "dampening": 0.3, "weight_decay": 0.1}),
        "adam": ("adam", {"lr": 0.1}),
        "adam_wd_betas": ("adam", {"lr": 0.05, "weight_decay": 0.1, "betas": (0.8, 0.99), "eps": 1e-6}),
        "adamw": ("adamw", {"lr": 0.1}),
        "adamw_wd": ("adamw", {"lr": 0.05, "weight_decay": 0.3}),
    }
    p0 = np.array([0.5, -1.5, 2.0, 0.0, -0.25, 3.0])
    c = np.array([1.0, 2.0, 0.5, 3.0, 1.5, 0.2])
    d = np.array([0.1, -0.2, 0.3, -0.4, 0.5, -0.6])
    out = {"p0": p0.tolist(), "c": c.tolist(), "d": d.tolist(), "steps": 7, "runs": {}}
    for name, (kind, kw) in cfgs.items():
        p = torch.nn.Parameter(torch.from_numpy(p0.copy()))
        cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[kind]
        opt = cls([p], **kw)
        for _ in range(7):
            opt.zero_grad()
            loss = 0.5 * (torch.from_numpy(c) * p * p).sum() + (torch.from_numpy(d) * p).sum()
            loss.backward()
            opt.step()
        out["runs"][name] = {"kind": kind, "kw": {k: list(v) if isinstance(v, tuple) else v for k, v in kw.items()},
                             "p": p.detach().numpy().tolist()}
    torch.set_default_dtype(torch.float32)
    return out


if __name__ == "__main__":
    sys.path[:0] = ["tests", "."]  # run from the project folder
    from test_layers_shapes_vs_torch import ARCHS, NUMERIC_ARCH  # the architectures live with the test

    result = {"archs": {name: shapes_and_params(a) for name, a in ARCHS.items()},
              "numeric": numeric_case(NUMERIC_ARCH, 3),
              "optim": optimizer_runs(),
              "torch": torch.__version__}
    print(json.dumps(result))
