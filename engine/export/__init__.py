"""Export a trained model to ONNX, PyTorch, JSON (architecture) or NPZ (weights).

    from engine.export import export_model
    result = export_model("digits.cnnd", "onnx", "digits.onnx")
    print(result.message)          # what was written, for the CLI and the GUI alike

ONNX and PyTorch exports carry the model's preprocessing and prove themselves: sample images,
the app's probabilities for them, and a predict.py whose --check reproduces those.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine import safeio
from engine.export.common import (
    ExportError,
    check_source,
    default_sample_paths,
    load_source,
    usable_image_problem,
)
from engine.trained import TrainedModel

FORMATS: dict[str, str] = {
    "onnx": "ONNX model (.onnx) + a folder with predict.py and samples",
    "pytorch": "PyTorch folder: model.py, weights.safetensors, train.py (torchrun), predict.py",
    "json": "Architecture only (.json, cnn-designer/1)",
    "npz": "Weights only (.npz, the app's names)",
}
#: The suffix a file dialog suggests per format ("" = a folder).
SUFFIXES = {"onnx": ".onnx", "pytorch": "", "json": ".json", "npz": ".npz"}


@dataclass
class ExportResult:
    format: str
    written: list[Path]

    @property
    def message(self) -> str:
        lines = [f"Exported {self.format}:"]
        for p in self.written:
            if p.is_dir():
                lines.append(f"  {p}/")
                lines += [f"    {f.relative_to(p)}" for f in sorted(p.rglob("*")) if f.is_file()
                          and f.name != ".cnn-designer-export" and f.parent.name != "samples"]
                n = len(list((p / "samples").glob("*.png"))) if (p / "samples").is_dir() else 0
                if n:
                    lines.append(f"    samples/ ({n} images)")
            else:
                lines.append(f"  {p}")
        if self.format in ("onnx", "pytorch"):
            check = self.written[-1] / "predict.py"
            lines.append(f"Verify: python {check} --check")
        return "\n".join(lines)


def guess_format(out: str | Path) -> str | None:
    suffix = Path(out).suffix.lower()
    return {".onnx": "onnx", ".json": "json", ".npz": "npz", "": "pytorch"}.get(suffix)


def export_model(
    model: TrainedModel | str | Path,
    fmt: str,
    out: str | Path,
    samples: list[str | Path] | None = None,
    allow_untrained: bool = False,
    opset: int | None = None,
    sample_folder: str | Path | None = None,
) -> ExportResult:
    """Export `model` (a TrainedModel or a .cnnd path) as `fmt` to `out`.

    Proof samples: the `samples` files, else one image per class from `sample_folder` (a folder
    the user chose on this machine), else the built-in digits; never a path from the model file."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r} (choose {', '.join(FORMATS)})")
    out = Path(out)
    if not out.parent.is_dir():
        raise ExportError(f"folder {out.parent} does not exist")
    if fmt != "pytorch" and out.is_dir():
        raise ExportError(f"{out} is a folder: give a file name such as {out / ('model' + SUFFIXES[fmt])}")
    if fmt != "pytorch":
        safeio.check_writable(out, "--out")
    # the export must not overwrite the model it reads, nor a sample it copies
    named: dict[str, Any] = {"the model": model if isinstance(model, (str, os.PathLike)) else None, "--out": out}
    named.update({f"sample {s}": s for s in samples or []})
    safeio.check_distinct(named)
    # the architecture alone does not depend on training
    src = load_source(model, allow_untrained=allow_untrained or fmt == "json")
    sample_paths = [Path(s) for s in samples] if samples else None
    for s in sample_paths or []:
        problem = usable_image_problem(s, src.preprocessing)
        if problem is not None:
            raise ExportError(f"cannot use {s} as a sample image: {problem}")
    if sample_paths is None and fmt in ("onnx", "pytorch"):
        sample_paths = default_sample_paths(sample_folder, src.preprocessing) or None
    if fmt == "onnx":
        from engine.export.onnx_export import export_onnx

        written = export_onnx(src, out, sample_paths, opset=opset)
    elif fmt == "pytorch":
        from engine.export.pytorch_export import export_pytorch

        written = export_pytorch(src, out, sample_paths)
    elif fmt == "json":
        from engine.export.simple_export import export_json

        written = export_json(src, out)
    else:
        from engine.export.simple_export import export_npz

        written = export_npz(src, out)
    return ExportResult(fmt, written)


__all__ = [
    "FORMATS", "SUFFIXES", "ExportError", "ExportResult", "check_source", "export_model",
    "guess_format", "load_source",
]
