"""The engine and PyTorch from the same initial weights and the same batches: do they stay together?

accuracy_vs_torch.py compares the two over seeds, each side drawing its own initial weights and
batch order, so a net whose accuracy swings with the seed can come out apart on three seeds. This
removes that spread: the engine's initial weights are loaded into PyTorch's model of the design
(benchmarks/make_residual_reference.py) and both train on the same batches.

    python benchmarks/same_start_vs_torch.py --arch wide_vgg32 --optimizer sgd --steps 20 [--workers 2]
    python benchmarks/same_start_vs_torch.py --arch wide_vgg32 --shapes --seeds 0 1 2 3

Without `--shapes`: `--steps` steps on random images and labels, the loss of both every few steps,
then the largest difference per parameter and running statistic relative to its largest value,
and the largest difference of the inference outputs. With SGD both should agree to float32
rounding; with Adam the first step already moves the weights whose gradient is near rounding by
about lr in either direction, so the trajectories part (as two PyTorch runs on different hardware
would). With `--shapes`: Adam lr 1e-3, batch 64, 3 epochs on shapes drawn by accuracy_vs_torch.py's
generator (2,000 training images, 1,000 test; draws of their own, not that script's), test accuracy
of both per seed.

Run with a Python that has torch and the engine's dependencies (PYTHONPATH=. PATH/TO/TORCH-VENV/bin/python).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent)]

from accuracy_vs_torch import shapes_set  # noqa: E402
from engine_bench import ROOT, arch_path  # noqa: E402
from make_residual_reference import arrays, build, nets  # noqa: E402

from engine.model import Model  # noqa: E402
from engine.optimizers import make_optimizer  # noqa: E402
from engine.spec import Spec  # noqa: E402


def pair(path: Path, seed: int, optimizer: str, lr: float, workers: int):
    """(engine model, its optimizer, torch training net, torch full net, torch optimizer, torch
    state by the app's names), the torch side holding the engine's initial weights."""
    arch = json.loads(path.read_text())
    m = Model(Spec.load(path), seed=seed)
    if workers > 1:
        from engine.parallel import enable_workers

        enable_workers(m, workers)
    mods = build(arch)
    state = arrays(mods)
    with torch.no_grad():
        for k, v in m.state_dict().items():
            state[k].copy_(torch.from_numpy(np.ascontiguousarray(v)))
    net, full = nets(arch, mods)
    opt = make_optimizer(optimizer, m, lr=lr)
    topt = (torch.optim.SGD if optimizer == "sgd" else torch.optim.Adam)(net.parameters(), lr=lr)
    return m, opt, net, full, topt, state


def step_both(m, opt, net, topt, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    loss_e, _ = m.train_step(x, y, opt)
    net.train()
    loss = torch.nn.functional.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(y))
    topt.zero_grad()
    loss.backward()
    topt.step()
    return float(loss_e), float(loss.item())


def steps_run(path: Path, a: argparse.Namespace) -> None:
    m, opt, net, full, topt, state = pair(path, a.seed, a.optimizer, a.lr, a.workers)
    try:
        shape = m.spec.input_shape
        rng = np.random.default_rng(a.seed)
        for s in range(a.steps):
            x = rng.random((a.batch_size, *shape), dtype=np.float32)
            y = rng.integers(0, m.num_classes, a.batch_size)
            le, lt = step_both(m, opt, net, topt, x, y)
            if s % max(1, a.steps // 10) == 0 or s == a.steps - 1:
                print(f"step {s:4d}  loss engine {le:.6f}  torch {lt:.6f}")
        print("largest difference / largest value, per array:")
        for k, v in m.state_dict().items():
            t = state[k].detach().numpy()
            print(f"  {k:32s} {np.abs(v - t).max() / (np.abs(t).max() + 1e-12):.2e}")
        x = rng.random((a.batch_size, *shape), dtype=np.float32)
        full.eval()
        with torch.no_grad():
            pt = full(torch.from_numpy(x)).numpy()
        print(f"inference outputs: largest difference {np.abs(m.forward(x) - pt).max():.2e}")
    finally:
        m.close()


def shapes_run(path: Path, a: argparse.Namespace) -> None:
    size = json.loads(path.read_text())["input"]
    h, w = size["height"], size["width"]
    xtr, ytr = shapes_set(2000, 1234, h, w)
    xte, yte = shapes_set(1000, 4321, h, w)
    for seed in a.seeds:
        m, opt, net, full, topt, _ = pair(path, seed, "adam", 1e-3, a.workers)
        try:
            rng = np.random.default_rng(seed)
            for _ in range(3):
                perm = rng.permutation(len(xtr))
                for i in range(0, len(xtr), 64):
                    b = perm[i:i + 64]
                    step_both(m, opt, net, topt, xtr[b], ytr[b])
            acc_e = sum(m.evaluate_batch(xte[i:i + 250], yte[i:i + 250])[1] for i in range(0, len(xte), 250)) / len(xte)
        finally:
            m.close()
        full.eval()
        with torch.no_grad():
            acc_t = float((full(torch.from_numpy(xte)).argmax(1).numpy() == yte).mean())
        print(f"seed {seed}: test accuracy engine {acc_e:.3f}  torch {acc_t:.3f}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="wide_vgg32", help="a name as engine_bench.py takes it, or a file")
    ap.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd")
    ap.add_argument("--lr", type=float, default=None, help="default 0.01 for SGD, 1e-3 for Adam")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=1, help="the engine's processes (2: synchronised BatchNorm)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shapes", action="store_true", help="train on the generated shapes set, report test accuracy")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--bench-dir", type=Path, help="the harness directory (its archs/), as for engine_bench.py",
                    default=Path(os.environ.get("CNND_BENCH_DIR", ROOT.parent / "shared" / "bench")))
    a = ap.parse_args(argv)
    if a.lr is None:
        a.lr = 0.01 if a.optimizer == "sgd" else 1e-3
    path = arch_path(a.arch, a.bench_dir)
    if not path.is_file():
        ap.error(f"no architecture {a.arch!r}")
    torch.set_num_threads(1)
    (shapes_run if a.shapes else steps_run)(path, a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
