"""Time from one edit to refreshed shapes, totals and layer list, for a 100-layer design.

The edit is what a person does in the properties form: change the filters of the first Conv2D,
which changes every shape and parameter count below it. Measured through the real window
(offscreen, with the training workspace installed): undo command -> Document -> engine.shapes.infer ->
list model dataChanged -> properties, explanation, totals bar, status and workspace refresh, all
synchronous in the GUI thread. A second figure adds a forced repaint of the visible stack.
Target: under 16 ms (one frame at 60 Hz).

    QT_QPA_PLATFORM=offscreen .venv/bin/python benchmarks/shapes_bench.py [--layers 100] [--edits 200]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def build_spec(n_layers: int):
    from engine.spec import Spec

    block = [
        {"type": "Conv2D", "filters": 8, "kernel_size": 3, "padding": "same"},
        {"type": "BatchNorm2D"},
        {"type": "ReLU"},
    ]
    layers = []
    while len(layers) < n_layers - 4:
        layers += block
    layers = layers[: n_layers - 4] + [
        {"type": "GlobalAvgPool2D"}, {"type": "Dense", "units": 32}, {"type": "Dense", "units": 10},
        {"type": "Softmax"},
    ]
    return Spec.from_dict({"format": "cnn-designer/1", "name": f"{n_layers} layers",
                           "input": {"channels": 3, "height": 32, "width": 32}, "layers": layers})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=100)
    ap.add_argument("--edits", type=int, default=200)
    args = ap.parse_args()
    os.environ.setdefault("CNN_DESIGNER_CONFIG_DIR", tempfile.mkdtemp(prefix="cnnd-bench-"))

    from PySide6.QtWidgets import QApplication

    from designer.app import build_window, create_app
    from designer.commands import SetFieldCommand
    from engine.shapes import infer

    create_app()
    spec = build_spec(args.layers)
    # The window as the app builds it (with the training workspace, which also listens to edits).
    window = build_window(estimate=False)
    window.set_design(spec, None)
    window.resize(1280, 800)
    window.show()
    window.select_layer(0)
    QApplication.processEvents()
    doc = window.document
    assert len(doc) == args.layers

    def edit(i: int) -> None:
        window.undo_stack.push(SetFieldCommand(doc, 0, "filters", 8 + (i % 2)))
        # Whatever the list model's paint would read: make sure the inference was recomputed.
        window.model.index(args.layers, 0).data()

    sync, painted, infer_only = [], [], []
    for i in range(args.edits):
        t0 = time.perf_counter()
        edit(i)
        t1 = time.perf_counter()
        window.view.viewport().repaint()
        window.totals.repaint()
        t2 = time.perf_counter()
        sync.append((t1 - t0) * 1e3)
        painted.append((t2 - t0) * 1e3)
        QApplication.processEvents()
    for _ in range(args.edits):
        t0 = time.perf_counter()
        infer(doc.spec)
        infer_only.append((time.perf_counter() - t0) * 1e3)

    def stats(xs: list[float]) -> dict[str, float]:
        xs = sorted(xs)
        return {"median": round(statistics.median(xs), 3), "p95": round(xs[int(0.95 * (len(xs) - 1))], 3)}

    result = {
        "layers": args.layers,
        "edits": args.edits,
        "edit_to_refreshed_ms": stats(sync),
        "edit_to_repainted_ms": stats(painted),
        "engine_infer_ms": stats(infer_only),
        "target_ms": 16,
        "ok": statistics.median(sync) < 16,
    }
    print(f"{args.layers}-layer design, {args.edits} edits of the first Conv2D's filters:")
    print(f"  edit -> shapes, totals, list model refreshed: median {result['edit_to_refreshed_ms']['median']:.2f} ms,"
          f" p95 {result['edit_to_refreshed_ms']['p95']:.2f} ms (target < 16 ms)")
    print(f"  ... plus repaint of the visible stack:        median {result['edit_to_repainted_ms']['median']:.2f} ms")
    print(f"  engine.shapes.infer alone:                    median {result['engine_infer_ms']['median']:.2f} ms")
    print(json.dumps(result))
    window.undo_stack.setClean()
    window.close()
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
