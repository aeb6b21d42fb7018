"""Export a trained model to ONNX, PyTorch, JSON (architecture) or NPZ (weights).

    from engine.export import export_model
    result = export_model("digits.cnnd", "onnx", "digits.onnx")
    print(result.message)          # what was written, for the CLI and the GUI alike

ONNX and PyTorch exports carry the model's preprocessing and prove themselves: sample images,
the app's probabilities for them, and a predict.py whose --check reproduces those.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.export.common import ExportError, ExportSource, check_source, load_source

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
    model: Any,
    fmt: str,
    out: str | Path,
    samples: list[str | Path] | None = None,
    allow_untrained: bool = False,
    opset: int | None = None,
) -> ExportResult:
    """Export `model` (a .cnnd path, a loaded model file or an ExportSource) as `fmt` to `out`."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r} (choose {', '.join(FORMATS)})")
    out = Path(out)
    if not out.parent.is_dir():
        raise ExportError(f"folder {out.parent} does not exist")
    if fmt != "pytorch" and out.is_dir():
        raise ExportError(f"{out} is a folder: give a file name such as {out / ('model' + SUFFIXES[fmt])}")
    # the architecture alone does not depend on training
    src = load_source(model, allow_untrained=allow_untrained or fmt == "json")
    sample_paths = [Path(s) for s in samples] if samples else None
    for s in sample_paths or []:
        if not s.is_file():
            raise ExportError(f"sample image not found: {s}")
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
    "FORMATS", "SUFFIXES", "ExportError", "ExportResult", "ExportSource", "check_source", "export_model",
    "guess_format", "load_source",
]
