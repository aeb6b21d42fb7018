"""Engine speed against PyTorch CPU, measured in the same run (the machine is shared and noisy).

Trains LeNet-5 and the MNIST CNN on real MNIST held in memory (batch 64, Adam lr 1e-3, pixels / 255),
the way ../shared/bench/torch_ref.py does: train images/s = images / wall time of forward + loss +
backward + update per epoch, the shuffle outside the timer, median over epochs; forward images/s in
inference mode at batch 256 over the 10,000 test images, median of repeats; peak resident memory.
Each measurement runs in a fresh subprocess, engine and torch alternate round by round, and the
ratios are per round (engine / torch of the same round), reported as medians; `*_ratio_best` divides
the best epoch (or forward repeat) of each side over all rounds, i.e. compares each at its least
disturbed moment on a shared machine. One JSON line on stdout.

    .venv/bin/python benchmarks/engine_bench.py                       # both nets, 3 rounds
    .venv/bin/python benchmarks/engine_bench.py --arch lenet5 --rounds 5 --limit 10000 --workers 2
    .venv/bin/python benchmarks/engine_bench.py --no-torch            # engine figures only
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT.parent / "shared" / "bench"
ARCHS = {"lenet5": BENCH / "archs" / "lenet5.json", "mnist_cnn": BENCH / "archs" / "mnist_cnn.json"}
TORCH_PY = Path(os.environ.get("TORCH_REF_PYTHON", "/work/venv-ref/bin/python"))
FILES = {"train": ("train-images.idx3-ubyte.gz", "train-labels.idx1-ubyte.gz"),
         "test": ("t10k-images.idx3-ubyte.gz", "t10k-labels.idx1-ubyte.gz")}


def load_mnist(split: str, limit: int | None):
    import numpy as np

    d = Path(os.environ.get("MNIST_DIR", ROOT.parent / "shared" / "data" / "mnist"))

    def read(name):
        raw = gzip.open(d / name, "rb").read()
        ndim = raw[3]
        dims = np.frombuffer(raw[4:4 + 4 * ndim], ">u4").astype(int)
        return np.frombuffer(raw[4 + 4 * ndim:], np.uint8).reshape(dims)

    x, y = read(FILES[split][0]), read(FILES[split][1])
    if limit:
        x, y = x[:limit], y[:limit]
    return (x[:, None] / np.float32(255)).astype(np.float32), y.astype(np.int64)


def run_engine(arch: str, epochs: int, batch: int, limit: int | None, workers: int, fwd_repeats: int,
               seed: int) -> dict:
    """One measurement, in this (fresh) process."""
    import resource

    import numpy as np

    from engine.model import Model
    from engine.optimizers import make_optimizer
    from engine.parallel import enable_workers
    from engine.spec import Spec

    spec = Spec.load(ARCHS.get(arch, arch))
    model = Model(spec, seed=seed)
    if workers > 1:
        enable_workers(model, workers)
    xtr, ytr = load_mnist("train", limit)
    xte, yte = load_mnist("test", None)
    opt = make_optimizer("adam", model, lr=1e-3)
    rng = np.random.default_rng(seed)
    n = len(xtr)
    rates, accs = [], []
    try:
        for _ in range(epochs):
            perm = rng.permutation(n)
            xp, yp = xtr[perm], ytr[perm]  # "data loading": outside the timer, as in torch_ref
            t0 = time.perf_counter()
            for i in range(0, n, batch):
                model.train_step(xp[i:i + batch], yp[i:i + batch], opt)
            rates.append(n / (time.perf_counter() - t0))
            correct = sum(model.evaluate_batch(xte[i:i + 256], yte[i:i + 256])[1] for i in range(0, len(xte), 256))
            accs.append(correct / len(xte))
        fwd = []
        for r in range(fwd_repeats + 1):
            t0 = time.perf_counter()
            for i in range(0, len(xte), 256):
                model.forward(xte[i:i + 256])
            if r:
                fwd.append(len(xte) / (time.perf_counter() - t0))
    finally:
        model.close()
    return {"train_images_per_sec": round(statistics.median(rates), 1), "train_epochs": [round(r) for r in rates],
            "fwd_images_per_sec": round(statistics.median(fwd), 1), "fwd_repeats": [round(r) for r in fwd],
            "test_accuracy": [round(a, 4) for a in accs],
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def subprocess_json(cmd: list[str], env: dict) -> dict:
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {out.stderr.strip()[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", nargs="+", default=list(ARCHS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=2, help="epochs per measurement (median over them)")
    ap.add_argument("--limit", type=int, default=10000, help="training images")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2, help="BLAS threads (engine) and torch threads")
    ap.add_argument("--workers", type=int, default=2, help="engine processes (2: batches split over two)")
    ap.add_argument("--fwd-repeats", type=int, default=3)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one arch in this process
    a = ap.parse_args(argv)

    if a.one:
        print(json.dumps(run_engine(a.one, a.epochs, a.batch_size, a.limit, a.workers, a.fwd_repeats, a.seed)))
        return 0

    env = dict(os.environ)
    threads = str(a.threads if a.workers <= 1 else 1)
    for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[k] = threads
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    torch_env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    load0 = os.getloadavg()[0]
    result: dict = {"bench": "engine_bench", "batch_size": a.batch_size, "limit": a.limit, "epochs": a.epochs,
                    "threads": a.threads, "workers": a.workers, "rounds": a.rounds, "archs": {}}
    for arch in a.arch:
        rounds = []
        for r in range(a.rounds):
            cmd = [sys.executable, __file__, "--one", arch, "--epochs", str(a.epochs), "--limit", str(a.limit),
                   "--batch-size", str(a.batch_size), "--workers", str(a.workers),
                   "--fwd-repeats", str(a.fwd_repeats), "--seed", str(a.seed + r)]
            eng = subprocess_json(cmd, env)
            row = {"engine": eng}
            if not a.no_torch:
                tcmd = [str(TORCH_PY), str(BENCH / "torch_ref.py"), "--arch", str(ARCHS.get(arch, arch)),
                        "--epochs", str(a.epochs), "--limit", str(a.limit), "--batch-size", str(a.batch_size),
                        "--threads", str(a.threads), "--fwd-repeats", str(a.fwd_repeats), "--seed", str(a.seed + r)]
                tr = subprocess_json(tcmd, torch_env)
                row["torch"] = {k: tr[k] for k in ("train_images_per_sec", "fwd_images_per_sec", "test_accuracy")}
                row["torch"]["train_epochs"] = [round(r) for r in tr["train_images_per_sec_epochs"]]
                row["torch"]["fwd_repeats"] = [round(r) for r in tr["fwd_images_per_sec_repeats"]]
                row["train_ratio"] = round(eng["train_images_per_sec"] / tr["train_images_per_sec"], 3)
                row["fwd_ratio"] = round(eng["fwd_images_per_sec"] / tr["fwd_images_per_sec"], 3)
            print(f"[engine_bench] {arch} round {r + 1}/{a.rounds}: {json.dumps(row)}", file=sys.stderr, flush=True)
            rounds.append(row)

        def med(key, side="engine", rounds=rounds):
            return round(statistics.median(x[side][key] for x in rounds), 1)

        summary = {"train_images_per_sec": med("train_images_per_sec"),
                   "fwd_images_per_sec": med("fwd_images_per_sec"),
                   "peak_rss_mb": max(x["engine"]["peak_rss_mb"] for x in rounds),
                   "test_accuracy_last": rounds[-1]["engine"]["test_accuracy"][-1]}
        if not a.no_torch:
            summary.update({
                "torch_train_images_per_sec": med("train_images_per_sec", "torch"),
                "torch_fwd_images_per_sec": med("fwd_images_per_sec", "torch"),
                "torch_test_accuracy_last": rounds[-1]["torch"]["test_accuracy"][-1],
                "train_ratio_median": round(statistics.median(x["train_ratio"] for x in rounds), 3),
                "fwd_ratio_median": round(statistics.median(x["fwd_ratio"] for x in rounds), 3),
                "train_ratios": [x["train_ratio"] for x in rounds],
                "fwd_ratios": [x["fwd_ratio"] for x in rounds],
                # best epoch / repeat of each side over all rounds: each at its least disturbed moment
                "train_ratio_best": round(max(e for x in rounds for e in x["engine"]["train_epochs"])
                                          / max(e for x in rounds for e in x["torch"]["train_epochs"]), 3),
                "fwd_ratio_best": round(max(e for x in rounds for e in x["engine"]["fwd_repeats"])
                                        / max(e for x in rounds for e in x["torch"]["fwd_repeats"]), 3),
            })
        result["archs"][arch] = summary
    result["loadavg_1min_start_end"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
