"""Where a training step's time goes: CPU time per layer (forward and backward) and per step.

The engine in one process on one BLAS thread, random inputs of the architecture's shape, Adam,
cross-entropy on the logits; each fused step (e.g. Conv2D -> ReLU -> MaxPool2D) is one row. CPU
time (time.process_time), not wall time: on a shared machine it moves much less with the
neighbours' load, so old and new code can be compared run against run. Medians over the steps
after two warm-up steps, in milliseconds.

    .venv/bin/python benchmarks/layer_profile.py photo64 cifar_vgg --batch-size 64 --steps 10

Architecture names are looked up as in engine_bench.py (the harness's archs/, then
benchmarks/archs/), or give a path to an architecture file.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine_bench import arch_path  # noqa: E402

from engine.blas import blas_threads  # noqa: E402
from engine.model import Model  # noqa: E402
from engine.optimizers import make_optimizer  # noqa: E402
from engine.spec import Spec  # noqa: E402


def step_name(step) -> str:
    ops = getattr(step, "ops", None) or ([step.conv, step.act, step.pool] if hasattr(step, "pool") else [step])
    return " + ".join(op.layer.summary() if hasattr(op.layer, "summary") else op.layer.type for op in ops)


def profile(path: Path, batch: int, steps: int, seed: int) -> dict:
    model = Model(Spec.load(path), seed=seed)
    opt = make_optimizer("adam", model, lr=1e-3)
    rng = np.random.default_rng(seed)
    x = rng.random((batch, *model.spec.input_shape), dtype=np.float32)
    y = rng.integers(0, model.num_classes, batch)
    plan = model._plan_train
    fw: list[list[float]] = [[] for _ in plan]
    bw: list[list[float]] = [[] for _ in plan]
    total, opt_t = [], []
    clock = time.process_time
    with blas_threads(1):
        for i in range(steps + 2):
            t_step = clock()
            h = model._to_internal(x)
            times_f, times_b = [], []
            for s in plan:
                t = clock()
                h = s.forward(h, True)
                times_f.append(clock() - t)
            _, grad, _ = model._loss(h, model._check_y(y, batch))
            for k in range(len(plan) - 1, -1, -1):
                t = clock()
                grad = plan[k].backward(grad, need_dx=k > 0)
                times_b.append(clock() - t)
            t = clock()
            opt.step()
            t_end = clock()
            if i >= 2:
                for k, v in enumerate(times_f):
                    fw[k].append(v)
                for k, v in enumerate(reversed(times_b)):
                    bw[k].append(v)
                opt_t.append(t_end - t)
                total.append(t_end - t_step)

    def ms(v: list[float]) -> float:
        return round(statistics.median(v) * 1e3, 2)

    return {"arch": path.stem, "batch_size": batch, "step_ms": ms(total), "optimizer_ms": ms(opt_t),
            "layers": [{"layer": step_name(s), "forward_ms": ms(fw[k]), "backward_ms": ms(bw[k])}
                       for k, s in enumerate(plan)]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("arch", nargs="+", help="architecture names or files")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="one JSON line per architecture instead of a table")
    ap.add_argument("--bench-dir", type=Path,
                    default=Path(os.environ.get("CNND_BENCH_DIR", ROOT.parent / "shared" / "bench")),
                    help="the reference harness (default: $CNND_BENCH_DIR or ../shared/bench)")
    a = ap.parse_args()
    for name in a.arch:
        path = arch_path(name, a.bench_dir.resolve())
        if not path.is_file():
            print(f"no architecture {name!r} (not a file, not in archs/)", file=sys.stderr)
            return 2
        r = profile(path, a.batch_size, a.steps, a.seed)
        if a.json:
            print(json.dumps(r))
            continue
        print(f"{r['arch']}, batch {r['batch_size']}: {r['step_ms']} ms CPU per step "
              f"(optimizer {r['optimizer_ms']} ms)")
        for row in r["layers"]:
            print(f"  {row['layer'][:64]:64s} forward {row['forward_ms']:7.2f}  backward {row['backward_ms']:7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
