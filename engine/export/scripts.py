"""Filling the export templates (resources/export_templates) with one model's facts."""

from __future__ import annotations

import ast
import json
import pprint
import re
from pathlib import Path
from typing import Any

from engine.export.common import ExportError
from engine.resources import export_template
from engine.safeio import printable
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


def py_literal(value: Any) -> str:
    """`value` as Python source that evaluates back to exactly `value` (checked, not assumed):
    the only way a model's data (class names, preprocessing) enters generated code."""
    text = pprint.pformat(value, width=100, sort_dicts=False)
    try:
        ok = ast.literal_eval(text) == value
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        ok = False
    if not ok:
        raise ExportError(f"cannot write {printable(str(value), 80)} into the generated code")
    return text


def docstring_text(text: str) -> str:
    """`text` escaped for the inside of a plain triple-quoted string: quotes and backslashes
    escaped, control and invisible characters as \\x/\\u escapes, so it can neither close the
    string nor change what the code does (and reads back as the original text)."""
    return printable(json.dumps(text, ensure_ascii=False)[1:-1])


def fill(template: str, src: TrainedModel, **extra: str) -> str:
    """The template's text with __TOKENS__ replaced in one pass (a value that looks like a token
    is never replaced again); any token left over is a bug, so it raises.

    In Python templates every value from the model is a Python literal (`py_literal`) or, inside a
    docstring, escaped text (`docstring_text`); in Markdown it is text with control characters
    escaped. `extra` values are code or literals prepared by the caller."""
    c, h, w = (int(d) for d in src.input_shape)
    python = template.endswith(".py.in")
    text_of = docstring_text if python else printable
    values = {
        "__NAME__": text_of(src.name),
        "__CLASSES__": py_literal([str(k) for k in src.classes]),
        "__CLASS_LIST__": text_of(", ".join(src.classes)),
        "__NCLASSES__": str(len(src.classes)),
        "__INPUT_SHAPE__": py_literal((c, h, w)),
        "__C__": str(c),
        "__H__": str(h),
        "__W__": str(w),
        "__INPUT_FORMAT__": text_of(input_format(src)),
        "__PREPROCESSING__": py_literal(src.preprocessing.to_dict()),
    }
    values.update(extra)
    raw = export_template(template)
    left = sorted(set(re.findall(r"__[A-Z][A-Z_]*__", raw)) - set(values))
    if left:  # pragma: no cover - a template and this function disagree
        raise AssertionError(f"template {template} has unfilled tokens {left}")
    return re.sub(r"__[A-Z][A-Z_]*__", lambda m: values[m.group(0)], raw)


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
