"""PyTorch export: a folder a PyTorch user can run, check and keep training, on many machines.

DIR/model.py is generated from resources/export_templates/model.py.in: one module per layer of
the design in an nn.ModuleList named `layers`, so `state_dict()` keys are the app's weight names.
Weights go to weights.safetensors (written here with NumPy; no torch needed to export). train.py
trains the module on an image folder, under `torchrun` with DistributedDataParallel when asked.
samples/ + expected.json + predict.py --check prove that the module reproduces the app.
"""

from __future__ import annotations

import json
from pathlib import Path

from engine.export import safetensors
from engine.export.common import AtomicFolder, ExportError, ExportSource, write_file, write_samples
from engine.export.scripts import fill, write_predict_scripts
from engine.shapes import infer


def layer_lines(src: ExportSource) -> list[str]:
    """Python expressions, one per layer, each constructing that layer's module."""
    inf = infer(src.spec)
    lines = []
    for i, layer in enumerate(src.spec.layers):
        info = inf.layers[i]
        t, cfg = layer.type, layer.config
        in_shape = info.input_shape
        if t == "Conv2D":
            top, bottom, left, right = layer.pads(in_shape)
            args = f"{in_shape[0]}, {cfg['filters']}, {layer.kernel}, stride={layer.stride}, bias={cfg['use_bias']}"
            if top == bottom and left == right:
                code = f"nn.Conv2d({args}, padding={(top, left)})"
            else:
                code = f"PadConv2d({args}, pads={(top, bottom, left, right)})"
        elif t in ("MaxPool2D", "AvgPool2D"):
            pads = layer.pads(in_shape)
            if not any(pads):
                cls = "nn.MaxPool2d" if t == "MaxPool2D" else "nn.AvgPool2d"
                code = f"{cls}({layer.kernel}, stride={layer.stride})"
            else:
                cls = "MaxPool2dSame" if t == "MaxPool2D" else "AvgPool2dSame"
                code = f"{cls}({layer.kernel}, {layer.stride}, pads={pads})"
        elif t == "GlobalAvgPool2D":
            code = "GlobalAvgPool2d()"
        elif t == "Flatten":
            code = "nn.Flatten()"
        elif t == "Dense":
            code = f"nn.Linear({in_shape[0]}, {cfg['units']}, bias={cfg['use_bias']})"
        elif t in ("ReLU", "Sigmoid", "Tanh"):
            code = f"nn.{t}()"
        elif t == "LeakyReLU":
            code = f"nn.LeakyReLU({float(cfg['alpha'])!r})"
        elif t == "Softmax":
            code = "nn.Softmax(dim=1)"
        elif t == "Dropout":
            code = f"nn.Dropout({float(cfg['rate'])!r})"
        elif t in ("BatchNorm2D", "BatchNorm1D"):
            cls = "BatchNorm2d" if t == "BatchNorm2D" else "BatchNorm1d"
            code = f"{cls}({in_shape[0]}, eps={float(cfg['eps'])!r}, momentum={float(cfg['momentum'])!r})"
        else:  # pragma: no cover - every layer type of the format is handled above
            raise ExportError(f"layer {i} ({t}) cannot be exported to PyTorch")
        lines.append(f"        {code},  # {i}: {layer.summary()}")
    return lines


def output_kind(src: ExportSource) -> str:
    if src.binary():
        return "binary"
    return "softmax" if src.spec.layers[-1].type == "Softmax" else "scores"


def model_source(src: ExportSource) -> str:
    """The text of model.py for this model."""
    return fill(
        "model.py.in", src,
        __LAYERS__="\n".join(layer_lines(src)),
        __OUTPUT__=repr(output_kind(src)),
    )


def export_pytorch(src: ExportSource, out: Path, samples: list[Path] | None = None) -> list[Path]:
    """Write the folder DIR (atomically: built beside it, then renamed); returns DIR."""
    out = Path(out)
    meta = {"format": "cnn-designer-pytorch/1", "classes": json.dumps(src.classes)}
    with AtomicFolder(out) as tmp:
        (tmp / "model.py").write_text(model_source(src), encoding="utf-8")
        write_file(tmp / "weights.safetensors", safetensors.to_bytes(src.state, meta))
        (tmp / "classes.json").write_text(json.dumps(src.classes, indent=1) + "\n", encoding="utf-8")
        (tmp / "architecture.json").write_text(src.spec.to_json(), encoding="utf-8")
        write_predict_scripts(tmp, src, backend="torch", model_file="weights.safetensors")
        (tmp / "train.py").write_text(fill("train.py.in", src), encoding="utf-8")
        (tmp / "README.md").write_text(fill("README_pytorch.md.in", src), encoding="utf-8")
        write_samples(tmp, src, samples)
    return [out]
