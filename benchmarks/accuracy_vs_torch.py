"""Same recipe, same accuracy? The engine and PyTorch trained alike on the same data, seeds 0-2.

Speed means nothing if the fast paths (Winograd, fused blocks, two processes with synchronised
BatchNorm) learn worse, so this trains one net per data set with the same recipe in both and
prints one JSON line with every test accuracy (progress on stderr):

- **MNIST**: `lenet5` (harness archs/) on the first `--limit` real training images (pixels / 255),
  `--epochs` epochs, tested on the 10,000 test images.
- **Colour**: `small_cifar` (harness, 3x32x32, BatchNorm) on a generated photo-like set with known
  answers: 10 classes = 5 shapes (disc, square, ring, plus, triangle) x 2 colour families (reddish,
  bluish), each drawn at a random place and size over a random colour gradient with pixel noise;
  `--colour-train` training and `--colour-test` test images, `--colour-epochs` epochs; drawn at
  the colour net's input size (`--colour-arch photo64`: 64x64, the 32x32 set scaled).

Recipe on both sides: batch 64, Adam lr 1e-3, cross-entropy on the logits, a fresh shuffle per
epoch; the engine in two processes (synchronised BatchNorm), PyTorch with the harness's model
builder (torch_ref.build_model). The data are generated once here and handed to PyTorch as a
.npz file, so both see the same images. Each seed seeds both sides' initialisation and shuffle;
the two cannot draw the same random numbers, so agreement means "within the spread over seeds".

PyTorch's Python and the harness are found as by engine_bench.py (`--torch-python` or
CNND_TORCH_PYTHON; `--bench-dir` or CNND_BENCH_DIR, default ../shared/bench; MNIST_DIR).

    .venv/bin/python benchmarks/accuracy_vs_torch.py --torch-python PATH/TO/TORCH-VENV/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine_bench import ROOT, arch_path, load_mnist  # noqa: E402


def shapes_set(n: int, seed: int, height: int = 32, width: int = 32):
    """n 3 x height x width images of 10 classes (5 shapes x 2 colour families), float32 in [0, 1]:
    the 32x32 set scaled to the colour net's input (the same random draws, so 32x32 is unchanged)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    shape, family = y % 5, y // 5
    # pixel coordinates in 32x32 units
    yy, xx = (np.mgrid[0:height, 0:width].astype(np.float32) + 0.5) * np.array(
        [32 / height, 32 / width], np.float32)[:, None, None] - 0.5
    cx, cy = rng.uniform(10, 22, (2, n, 1, 1)).astype(np.float32)
    r = rng.uniform(5, 10, (n, 1, 1)).astype(np.float32)
    dx, dy = xx - cx, yy - cy
    d = np.sqrt(dx * dx + dy * dy)
    masks = [d < r,  # disc
             np.maximum(np.abs(dx), np.abs(dy)) < 0.8 * r,  # square
             (d < r) & (d > 0.55 * r),  # ring
             ((np.abs(dx) < 0.3 * r) | (np.abs(dy) < 0.3 * r)) & (np.maximum(np.abs(dx), np.abs(dy)) < r),  # plus
             (dy < 0.7 * r) & (np.abs(dx) < 0.5 * (dy + 0.9 * r))]  # triangle, apex up
    mask = np.choose(shape[:, None, None], masks)
    # background: a random colour with a random linear gradient; the shape: reddish or bluish
    base = rng.uniform(0.1, 0.7, (n, 3, 1, 1))
    slope = rng.uniform(-0.01, 0.01, (n, 3, 2, 1, 1))
    img = base + slope[:, :, 0] * (xx - 16) + slope[:, :, 1] * (yy - 16)
    hot = rng.uniform(0.65, 1.0, n)
    cold = rng.uniform(0.0, 0.45, (n, 2))
    colour = np.where(family[:, None] == 0, np.c_[hot, cold], np.c_[cold[:, :1], cold[:, 1:], hot])
    img = np.where(mask[:, None], colour[:, :, None, None], img)
    img += rng.normal(0, 0.08, img.shape)
    return np.clip(img, 0, 1).astype(np.float32), y.astype(np.int64)


def train_engine(arch: Path, data: dict, seed: int, epochs: int) -> float:
    import numpy as np

    from engine.model import Model
    from engine.optimizers import make_optimizer
    from engine.parallel import enable_workers
    from engine.spec import Spec

    model = Model(Spec.load(arch), seed=seed)
    enable_workers(model, 2)
    try:
        opt = make_optimizer("adam", model, lr=1e-3)
        rng = np.random.default_rng(seed)
        xtr, ytr = data["xtr"], data["ytr"]
        for _ in range(epochs):
            perm = rng.permutation(len(xtr))
            for i in range(0, len(xtr), 64):
                b = perm[i:i + 64]
                model.train_step(xtr[b], ytr[b], opt)
        xte, yte = data["xte"], data["yte"]
        correct = sum(model.evaluate_batch(xte[i:i + 256], yte[i:i + 256])[1] for i in range(0, len(xte), 256))
    finally:
        model.close()
    return correct / len(xte)


def train_torch(arch: Path, npz: Path, seed: int, epochs: int, bench_dir: Path) -> float:
    """Runs under PyTorch's Python."""
    import numpy as np
    import torch
    import torch.nn.functional as TF

    sys.path.insert(0, str(bench_dir))
    from torch_ref import build_model, evaluate

    torch.set_num_threads(2)
    torch.manual_seed(seed)
    model, full = build_model(str(arch))
    with np.load(npz, allow_pickle=False) as f:
        xtr, ytr, xte, yte = (torch.from_numpy(f[k]) for k in ("xtr", "ytr", "xte", "yte"))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(xtr), generator=gen)
        for i in range(0, len(xtr), 64):
            b = perm[i:i + 64]
            opt.zero_grad(set_to_none=True)
            TF.cross_entropy(model(xtr[b]), ytr[b]).backward()
            opt.step()
    return evaluate(full, xte, yte)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--mnist-arch", default="lenet5")
    ap.add_argument("--limit", type=int, default=10000, help="MNIST training images")
    ap.add_argument("--epochs", type=int, default=2, help="MNIST epochs")
    ap.add_argument("--colour-arch", default="small_cifar")
    ap.add_argument("--colour-train", type=int, default=2000)
    ap.add_argument("--colour-test", type=int, default=1000)
    ap.add_argument("--colour-epochs", type=int, default=3)
    ap.add_argument("--torch-python", default=os.environ.get("CNND_TORCH_PYTHON"),
                    help="Python with torch 2.13.0 (default: $CNND_TORCH_PYTHON)")
    ap.add_argument("--bench-dir", type=Path,
                    default=Path(os.environ.get("CNND_BENCH_DIR", ROOT.parent / "shared" / "bench")),
                    help="the reference harness (default: $CNND_BENCH_DIR or ../shared/bench)")
    ap.add_argument("--torch-side", nargs=4, metavar=("ARCH", "NPZ", "SEED", "EPOCHS"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    a.bench_dir = a.bench_dir.resolve()
    if a.torch_side:
        arch, npz, seed, epochs = a.torch_side
        print(json.dumps({"accuracy": train_torch(Path(arch), Path(npz), int(seed), int(epochs), a.bench_dir)}))
        return 0
    if not a.torch_python:
        ap.error("PyTorch's Python is needed: pass --torch-python PATH or set CNND_TORCH_PYTHON")
    import numpy as np

    from engine.shapes import infer
    from engine.spec import Spec

    for name in (a.mnist_arch, a.colour_arch):
        if not arch_path(name, a.bench_dir).is_file():
            ap.error(f"no architecture {name!r} (looked in {a.bench_dir / 'archs'}; set --bench-dir)")
        # both data sets have 10 classes: refuse a net with another output before anything loads or trains
        classes = infer(Spec.load(arch_path(name, a.bench_dir))).num_classes
        if classes != 10:
            ap.error(f"{name!r} tells {classes} classes apart; both data sets here have 10")
    sets = {}
    xtr, ytr = load_mnist("train", a.limit)
    xte, yte = load_mnist("test", None)
    sets["mnist"] = (arch_path(a.mnist_arch, a.bench_dir), {"xtr": xtr, "ytr": ytr, "xte": xte, "yte": yte},
                     a.epochs)
    _, h, w = Spec.load(arch_path(a.colour_arch, a.bench_dir)).input_shape
    xtr, ytr = shapes_set(a.colour_train, 1000, h, w)
    xte, yte = shapes_set(a.colour_test, 2000, h, w)
    sets["shapes"] = (arch_path(a.colour_arch, a.bench_dir), {"xtr": xtr, "ytr": ytr, "xte": xte, "yte": yte},
                      a.colour_epochs)
    result: dict = {"bench": "accuracy_vs_torch", "started_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
                    "recipe": "batch 64, Adam lr 1e-3, cross-entropy on the logits", "sets": {}}
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    with tempfile.TemporaryDirectory(prefix="cnnd-acc-") as tmp:
        for name, (arch, data, epochs) in sets.items():
            npz = Path(tmp) / f"{name}.npz"
            np.savez(npz, **data)
            row: dict = {"arch": arch.stem, "train_images": len(data["xtr"]), "test_images": len(data["xte"]),
                         "epochs": epochs, "engine": [], "torch": []}
            for seed in a.seeds:
                row["engine"].append(round(train_engine(arch, data, seed, epochs), 4))
                out = subprocess.run([a.torch_python, __file__, "--bench-dir", str(a.bench_dir), "--torch-side",
                                      str(arch), str(npz), str(seed), str(epochs)],
                                     capture_output=True, text=True, env=env, check=False, timeout=3600)
                if out.returncode != 0:
                    raise SystemExit(f"PyTorch side failed: {out.stderr.strip()[-2000:]}")
                row["torch"].append(round(json.loads(out.stdout.strip().splitlines()[-1])["accuracy"], 4))
                print(f"[accuracy_vs_torch] {name} seed {seed}: engine {row['engine'][-1]}, "
                      f"torch {row['torch'][-1]}", file=sys.stderr, flush=True)
            for side in ("engine", "torch"):
                row[f"{side}_mean"] = round(statistics.mean(row[side]), 4)
            result["sets"][name] = row
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
