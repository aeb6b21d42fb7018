"""One convolution layer on each of the engine's paths, and PyTorch's, per core: what the path rules
in engine.functional.ConvGeometry (tap shifts / compact gather / kernel-row lowering, "rows"),
engine.winograd.applies (Winograd F(2x2, 3x3) and F(2x2, 5x5)) and engine.spectral.applies (the
frequency domain) are measured by.

CPU time (time.process_time) of forward and of backward (weight and input gradient; no input
gradient with fewer than 4 input channels, as for a network's first layer), batch 32, one BLAS
thread, median of `--repeats`, in milliseconds; "default" names the path the engine picks.
"gather" is the compact gather as the engine runs it: with the batch innermost on output rows of
up to 8 (engine.functional._BATCH_INNER_MAX_OW), plain above. "rows" is the kernel-row lowering
with its input gradient as ConvGeometry.rows_scatter picks it.
PyTorch's figure (nn.Conv2d, one thread, the same shapes) runs under `--torch-python` or
CNND_TORCH_PYTHON when given. Pin to one core on a shared machine:

    taskset -c 0 .venv/bin/python benchmarks/conv_paths.py --torch-python ../venv-ref/bin/python
    taskset -c 0 .venv/bin/python benchmarks/conv_paths.py --shape 32,64,5,16 --shape 64,128,3,7

On a machine that sets OPENBLAS_CORETYPE (see docs/performance.md, item 34), prefix
`env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE` to measure the kernels a user's machine runs.

A shape is IN,OUT,KERNEL,SIZE (stride 1, "same" padding, square maps).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SHAPES = [(3, 32, 3, 32), (3, 32, 5, 32), (16, 32, 3, 32), (32, 32, 3, 32), (32, 32, 5, 32), (16, 32, 5, 16),
          (32, 64, 3, 16), (32, 64, 5, 16), (64, 64, 3, 16), (128, 128, 3, 16), (32, 64, 3, 15), (64, 64, 3, 12),
          (64, 128, 3, 8), (128, 128, 3, 8), (32, 64, 5, 8), (64, 128, 3, 7), (256, 256, 3, 4)]

TORCH_SNIPPET = """
import json, sys, time, torch
torch.set_num_threads(1)
n, repeats = int(sys.argv[1]), int(sys.argv[2])
out = {}
for c, f, k, h in json.loads(sys.argv[3]):
    x = torch.rand(n, c, h, h, requires_grad=c >= 4)
    conv = torch.nn.Conv2d(c, f, k, 1, k // 2)
    fw, bw = [], []
    for i in range(repeats + 2):
        t = time.process_time(); y = conv(x); t1 = time.process_time()
        y.backward(torch.ones_like(y)); t2 = time.process_time()
        if i >= 2:
            fw.append(t1 - t); bw.append(t2 - t1)
    fw.sort(); bw.sort()
    out[f"{c},{f},{k},{h}"] = (fw[len(fw) // 2] * 1e3, bw[len(bw) // 2] * 1e3)
print(json.dumps(out))
"""


def engine_paths(shape: tuple[int, int, int, int], n: int, repeats: int) -> tuple[dict, str]:
    import numpy as np

    from engine import functional as F
    from engine import spectral as S
    from engine import winograd as W

    c, f, k, h = shape
    p = k // 2
    rng = np.random.default_rng(0)
    x = rng.random((c, n, h, h), dtype=np.float32)
    w = rng.random((f, c, k, k), dtype=np.float32)
    need_dx = c >= 4

    def timed(fn) -> float:
        fn()
        fn()
        ts = []
        for _ in range(repeats):
            t = time.process_time()
            fn()
            ts.append(time.process_time() - t)
        return statistics.median(ts) * 1e3

    def one(path: str) -> tuple[float, float]:
        ws, dw = F.Workspace(), np.empty_like(w)
        if path == "spectral":
            g = S.SpectralGeometry((c, n, h, h), f, (k, k), (p, p, p, p))
            z, kept = S.conv_forward(x, w, g, ws, True)
            dz = rng.random(z.shape, dtype=np.float32)
            return (timed(lambda: S.conv_forward(x, w, g, ws, True)),
                    timed(lambda: S.conv_backward(dz, kept, w, g, dw, need_dx, ws)))
        if path == "winograd":
            g = W.WinogradGeometry((c, n, h, h), f, (p, p, p, p), k)
            dz = rng.random(W.conv_forward(x, w, g, ws, True).shape, dtype=np.float32)
            return (timed(lambda: W.conv_forward(x, w, g, ws, True)),
                    timed(lambda: W.conv_backward(dz, w, g, dw, need_dx, ws)))
        g = F.ConvGeometry((c, n, h, h), f, (k, k), (1, 1), (p, p, p, p), gather=path == "gather",
                           rows=path == "rows")
        z, cols = F.conv2d_forward(x, w, g, ws, "t")
        dz = rng.random(z.shape, dtype=np.float32)
        return (timed(lambda: F.conv2d_forward(x, w, g, ws, "t")),
                timed(lambda: F.conv2d_backward(dz, cols, w, g, dw, need_dx, ws, "t")))

    paths = ("shift", "gather", "rows", "winograd", "spectral")
    res = {path: one(path) for path in paths if path != "winograd" or W.has_tiles((k, k))}
    if S.applies((k, k), (1, 1), c, (h, h)):
        default = "spectral"
    elif W.applies((k, k), (1, 1), c, f, out_hw=(h, h)):
        default = "winograd"
    else:
        g = F.ConvGeometry((c, n, h, h), f, (k, k), (1, 1), (p, p, p, p))
        default = "rows" if g.by_rows else "shift" if g.shift else "gather"
    return res, default


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", action="append", help="IN,OUT,KERNEL,SIZE (repeatable; default: a built-in list)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--torch-python", default=os.environ.get("CNND_TORCH_PYTHON"))
    ap.add_argument("--json", action="store_true", help="one JSON line instead of a table")
    a = ap.parse_args()
    shapes = [tuple(int(v) for v in s.split(",")) for s in a.shape] if a.shape else SHAPES
    if any(len(s) != 4 for s in shapes):
        ap.error("a shape is IN,OUT,KERNEL,SIZE")
    torch = {}
    if a.torch_python:
        run = subprocess.run([a.torch_python, "-c", TORCH_SNIPPET, str(a.batch_size), str(a.repeats),
                              json.dumps(shapes)], capture_output=True, text=True, timeout=1800)
        if run.returncode != 0:
            print(f"PyTorch run failed: {run.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            return 1
        torch = json.loads(run.stdout)
    sys.path.insert(0, str(ROOT))
    from engine.allocator import keep_freed_memory
    from engine.blas import blas_threads

    keep_freed_memory()  # as a Model does: freed work arrays are reused, not faulted in anew
    rows = []
    with blas_threads(1):
        for s in shapes:
            res, default = engine_paths(s, a.batch_size, a.repeats)
            tt = torch.get(",".join(map(str, s)))
            rows.append({"shape": s, "default": default, "paths": res, "torch": tt})
            if not a.json:
                c, f, k, h = s
                cells = "  ".join(f"{p} {fw:6.2f}+{bw:6.2f}" for p, (fw, bw) in res.items())
                best = sum(res[default])
                ratio = f"  torch {tt[0]:.2f}+{tt[1]:.2f}, default/torch {best / sum(tt):.2f}x time" if tt else ""
                print(f"{c:>3}->{f:<3} {k}x{k} at {h:>2}x{h:<2}  {cells}  default {default}{ratio}", flush=True)
    if a.json:
        print(json.dumps({"batch_size": a.batch_size, "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
