"""The two plain exports: the architecture as JSON, the weights as .npz, under the app's names."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from engine.export.common import write_file
from engine.trained import TrainedModel


def export_json(src: TrainedModel, out: Path) -> list[Path]:
    """The `cnn-designer/1` architecture (no weights): loadable by Spec.load and the designer."""
    write_file(out, src.spec.to_json().encode("utf-8"))
    return [Path(out)]


def export_npz(src: TrainedModel, out: Path) -> list[Path]:
    """Weights only, one array per name (`layers.{i}.weight` ...), float32, readable with
    np.load(..., allow_pickle=False) and torch.from_numpy into the exported module's state_dict."""
    buf = io.BytesIO()
    np.savez(buf, **{k: np.ascontiguousarray(v, dtype=np.float32) for k, v in sorted(src.state.items())})
    write_file(out, buf.getvalue())
    return [Path(out)]
