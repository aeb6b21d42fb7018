"""Filling the export templates (resources/export_templates) with one model's facts."""

from __future__ import annotations

import json
import re
from pathlib import Path

from engine.resources import export_template
from engine.trained import TrainedModel


def input_format(src: TrainedModel) -> str:
    """One sentence saying how to turn an image into the model's input."""
    p = src.preprocessing.to_dict()
    c, h, w = src.input_shape
    return (
        f"float32 NCHW (N, {c}, {h}, {w}): the image converted to {p['color']} (transparency onto white), "
        f"resized to {w}x{h} (width x height, bilinear) if needed, then per channel "
        f"(uint8 pixel * {p['scale']!r} - mean) / std with mean={p['mean']} std={p['std']}"
    )


def fill(template: str, src: TrainedModel, **extra: str) -> str:
    """The template's text with __TOKENS__ replaced; any token left over is a bug, so it raises."""
    c, h, w = src.input_shape
    values = {
        "__NAME__": src.name,
        "__CLASSES__": json.dumps(src.classes),
        "__CLASS_LIST__": ", ".join(src.classes),
        "__NCLASSES__": str(len(src.classes)),
        "__INPUT_SHAPE__": repr((c, h, w)),
        "__C__": str(c),
        "__H__": str(h),
        "__W__": str(w),
        "__INPUT_FORMAT__": input_format(src),
        "__PREPROCESSING__": json.dumps(src.preprocessing.to_dict(), indent=4),  # JSON of numbers and strings is Python
    }
    values.update(extra)
    text = export_template(template)
    for key in sorted(values, key=len, reverse=True):
        text = text.replace(key, values[key])
    left = sorted(set(re.findall(r"__[A-Z][A-Z_]*__", text)))
    if left:  # pragma: no cover - a template and this function disagree
        raise AssertionError(f"template {template} has unfilled tokens {left}")
    return text


def write_predict_scripts(folder: Path, src: TrainedModel, backend: str, model_file: str) -> None:
    """preprocess.py and predict.py (onnxruntime or torch backend) into folder."""
    (folder / "preprocess.py").write_text(fill("preprocess.py.in", src), encoding="utf-8")
    predict = fill(
        "predict.py.in", src,
        __MODEL_FILE__=repr(model_file),
        __BACKEND__=export_template(f"backend_{backend}.py.in").rstrip("\n"),
    )
    (folder / "predict.py").write_text(predict, encoding="utf-8")
    prep = json.dumps(src.preprocessing.to_dict(), indent=1)
    (folder / "preprocessing.json").write_text(prep + "\n", encoding="utf-8")
