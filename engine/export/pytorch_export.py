"""PyTorch export: a folder a PyTorch user can run, check and keep training, on many machines.

DIR/model.py is generated from resources/export_templates/model.py.in: one module per layer of
the design in an nn.ModuleList named `layers`, so `state_dict()` keys are the app's weight names.
Weights go to weights.safetensors (the safetensors package's NumPy API; no torch needed to export). train.py
trains the module on an image folder, under `torchrun` with DistributedDataParallel when asked.
samples/ + expected.json + predict.py --check prove that the module reproduces the app.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save as safetensors_bytes

from engine.export.common import AtomicFolder, ExportError, write_file, write_samples
from engine.export.scripts import fill, write_predict_scripts
from engine.safeio import printable
from engine.shapes import infer
from engine.trained import TrainedModel


def layer_lines(src: TrainedModel) -> list[str]:
    """Python expressions, one per layer, each constructing that layer's module."""
    inf = infer(src.spec)
    lines = []
    for i, layer in enumerate(src.spec.layers):
        try:
            code = layer.torch_module(inf.layers[i].input_shape)
        except NotImplementedError as e:
            raise ExportError(f"layer {i}: {e}") from None
        code = code.replace("\n", "\n        ")  # a multi-line module keeps the list's indentation
        lines.append(f"        {code},  # {i}: {printable(layer.summary())}")
    return lines


def helper_source(src: TrainedModel) -> str:
    """The helper classes of the layer types this design uses, beyond the template's own, once each."""
    seen: dict[str, None] = {}
    for layer in _walk(src.spec.layers):
        for cls in type(layer).__mro__:
            code = cls.__dict__.get("torch_helpers", "")
            if code:
                seen.setdefault(code.strip("\n"), None)
    return "".join(f"\n\n{code}\n" for code in seen)


def _walk(layers: list) -> list:
    return [x for layer in layers for x in (layer, *_walk(layer.children()))]


def output_kind(src: TrainedModel) -> str:
    if src.binary:
        return "binary"
    return "softmax" if src.spec.layers[-1].output_head == "softmax" else "scores"


def model_source(src: TrainedModel) -> str:
    """The text of model.py for this model."""
    return fill(
        "model.py.in", src,
        __LAYERS__="\n".join(layer_lines(src)),
        __HELPERS__=helper_source(src),
        __OUTPUT__=repr(output_kind(src)),
    )


def export_pytorch(src: TrainedModel, out: Path, samples: list[Path] | None = None) -> list[Path]:
    """Write the folder DIR (atomically: built beside it, then renamed); returns DIR."""
    out = Path(out)
    # one metadata entry: the package writes metadata in hash order, and an export should be the same
    # bytes for the same model (the tensors themselves are written sorted by name)
    meta = {"classes": json.dumps(src.classes)}
    with AtomicFolder(out) as tmp:
        (tmp / "model.py").write_text(model_source(src), encoding="utf-8")
        arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in src.state.items()}
        write_file(tmp / "weights.safetensors", safetensors_bytes(arrays, metadata=meta))
        (tmp / "classes.json").write_text(json.dumps(src.classes, indent=1) + "\n", encoding="utf-8")
        (tmp / "architecture.json").write_text(src.spec.to_json(), encoding="utf-8")
        write_predict_scripts(tmp, src, backend="torch", model_file="weights.safetensors")
        (tmp / "train.py").write_text(fill("train.py.in", src), encoding="utf-8")
        (tmp / "README.md").write_text(fill("README_pytorch.md.in", src), encoding="utf-8")
        write_samples(tmp, src, samples)
    return [out]
