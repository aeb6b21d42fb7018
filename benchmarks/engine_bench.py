"""Engine speed against PyTorch CPU, measured in the same run (the machine is shared and noisy).

One command measures every architecture and prints one JSON line on stdout (progress on stderr):

- MNIST nets (`lenet5`, `mnist_cnn`): trained on real MNIST held in memory (batch 64, Adam lr 1e-3,
  pixels / 255) the way the harness's torch_ref.py does: train images/s = images / wall time of
  forward + loss + backward + update per epoch, the shuffle outside the timer, median over epochs;
  forward images/s in inference mode at batch 256 over the 10,000 test images; peak resident memory.
- Colour nets (`small_cifar`, `cifar_vgg` from the harness; from benchmarks/archs/ `photo64`,
  `photo96`, `vgg64` (the app's VGG template on a 64x64 RGB input), `lenet_colour32` (5x5
  convolutions), `resnet_stem64` (7x7/2 stem, 3x3/2 pool), and ten designs people carry over from
  tutorials (PyTorch's and TensorFlow's CIFAR nets, the Keras example, a Tanh + average-pooling
  LeNet, a wide VGG, ReLU before BatchNorm, 1x1 bottlenecks, LeakyReLU with strided downsampling, a
  48x64 and a 128x128 photo net; each file's description says which), and five added later to try
  the engine on designs it had not been tuned on (an AlexNet-like 64x64 net, Sigmoid activations,
  average pooling after BatchNorm, a VGG with a 2M-parameter Dense head, LeNet with BatchNorm) and
  six more later (a Dense-only net, a deep narrow 3x3 stack, 7x7 stride-1 kernels, valid 3x3
  convolutions with BatchNorm, a greyscale 64x64 net, a 224x224 photo net)), and the app's own colour
  template `small_resnet` (resources/templates: residual blocks on 64x64 RGB; PyTorch's model of it
  comes from benchmarks/make_residual_reference.py, since the harness's builder knows no Residual
  blocks (nor BatchNorm1D: designs with it are built there too), and is trained with colour_ref.py's recipe and timing):
  images / wall time of `--seconds` of training steps on random inputs of the architecture's shape
  (batch 64, Adam lr 1e-3, cross-entropy on the logits) against the harness's colour_ref.py; forward
  images/s in inference mode at batch 256 on random inputs, median of repeats, PyTorch's measured by
  this script under PyTorch's Python with the harness's model builder and forward timer.

A net whose measurement fails (its process exits with an error) is reported as {"error": ...}
with the process's last line, the other nets are measured, and the exit code is 1.

Each measurement runs in a fresh subprocess, engine and torch alternate round by round, and the
ratios are per round (engine / torch of the same round), reported as medians; `*_ratio_best`
divides the best epoch (or repeat) of each side over all rounds. The 1-minute load average is
recorded at the start and end of every round: figures from a busy machine say more about the
neighbours than about either engine.

PyTorch's Python: `--torch-python` or the environment variable CNND_TORCH_PYTHON (a venv with
torch 2.13.0, numpy, pillow). The harness directory (torch_ref.py, colour_ref.py, archs/):
`--bench-dir` or CNND_BENCH_DIR, default ../shared/bench next to the repository. MNIST: MNIST_DIR,
default ../shared/data/mnist.

BLAS: some machines set OPENBLAS_CORETYPE (and OPENBLAS_L2_SIZE) for older OpenBLAS builds, which
puts a current NumPy on an older processor's kernels (Haswell's AVX2 on an AVX-512 processor: half
the GEMM speed). By default (`--blas native`) the engine's processes run without those two, as on a
user's machine, and the JSON records what the shell set and which kernel the engine ran
(`blas`); `--blas inherit` keeps them. PyTorch does not use OpenBLAS.

    .venv/bin/python benchmarks/engine_bench.py --torch-python ../venv-ref/bin/python   # everything
    .venv/bin/python benchmarks/engine_bench.py --arch lenet5 small_cifar --rounds 5
    .venv/bin/python benchmarks/engine_bench.py --no-torch --workers 1                  # engine only
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
OWN_ARCHS = Path(__file__).resolve().parent / "archs"
MNIST_ARCHS = ("lenet5", "mnist_cnn")
COLOUR_ARCHS = ("small_cifar", "cifar_vgg", "photo64", "photo96", "vgg64", "lenet_colour32", "resnet_stem64",
                # designs people carry over from tutorials and papers (benchmarks/archs/*.json)
                "torch_tutorial", "tf_cifar", "keras_cifar", "avgpool_tanh32", "wide_vgg32", "relu_bn32",
                "bottleneck32", "strided_leaky48", "rect48x64", "photo128",
                # added after the fact, to test the engine on designs it was not tuned on
                "alex64", "sigmoid32", "avg_bn32", "vgg_head32", "lenet_bn32",
                # and six more, added in a later session for the same reason
                "mlp_colour32", "deep_narrow32", "bigkernel32", "valid_bn32", "gray64", "photo224",
                # the app's own colour template (resources/templates): residual blocks at 64x64
                "small_resnet")
FILES = {"train": ("train-images.idx3-ubyte.gz", "train-labels.idx1-ubyte.gz"),
         "test": ("t10k-images.idx3-ubyte.gz", "t10k-labels.idx1-ubyte.gz")}


#: the app's templates, measured under their own names
TEMPLATES = ROOT / "resources" / "templates"


def arch_path(name: str, bench: Path) -> Path:
    """A short name (harness, benchmarks/archs or the app's templates) or a path to an architecture file."""
    for p in (bench / "archs" / f"{name}.json", OWN_ARCHS / f"{name}.json", TEMPLATES / f"{name}.json"):
        if p.is_file():
            return p
    return Path(name)


def is_mnist(path: Path) -> bool:
    spec = json.loads(path.read_text())
    return spec["input"] == {"channels": 1, "height": 28, "width": 28}


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


def _forward_rates(forward, x, batch: int, repeats: int) -> list[float]:
    rates = []
    for r in range(repeats + 1):  # pass 0 warms up
        t0 = time.perf_counter()
        for i in range(0, len(x), batch):
            forward(x[i:i + batch])
        if r:
            rates.append(len(x) / (time.perf_counter() - t0))
    return rates


def run_engine(path: Path, a: argparse.Namespace, seed: int) -> dict:
    """One measurement, in this (fresh) process."""
    import resource

    import numpy as np

    from engine.blas import blas_kernel
    from engine.model import Model
    from engine.optimizers import make_optimizer
    from engine.parallel import enable_workers
    from engine.spec import Spec

    model = Model(Spec.load(path), seed=seed)
    if a.workers > 1:
        enable_workers(model, a.workers)
    workers = model.workers
    opt = make_optimizer("adam", model, lr=1e-3)
    rng = np.random.default_rng(seed)
    out: dict = {}
    try:
        if is_mnist(path):
            xtr, ytr = load_mnist("train", a.limit)
            xte, yte = load_mnist("test", None)
            n = len(xtr)
            rates, accs = [], []
            for _ in range(a.epochs):
                perm = rng.permutation(n)
                xp, yp = xtr[perm], ytr[perm]  # "data loading": outside the timer, as in torch_ref
                t0 = time.perf_counter()
                for i in range(0, n, a.batch_size):
                    model.train_step(xp[i:i + a.batch_size], yp[i:i + a.batch_size], opt)
                rates.append(n / (time.perf_counter() - t0))
                correct = sum(model.evaluate_batch(xte[i:i + 256], yte[i:i + 256])[1] for i in range(0, len(xte), 256))
                accs.append(correct / len(xte))
            out["test_accuracy"] = [round(x, 4) for x in accs]
        else:  # random inputs of the architecture's shape, timed for a.seconds (as colour_ref.py)
            shape = tuple(model.spec.input_shape)
            x = rng.random((a.batch_size, *shape), np.float32)
            y = rng.integers(0, model.num_classes, a.batch_size)
            for _ in range(3):
                model.train_step(x, y, opt)
            t0, k = time.perf_counter(), 0
            while time.perf_counter() - t0 < a.seconds:
                model.train_step(x, y, opt)
                k += 1
            rates = [a.batch_size * k / (time.perf_counter() - t0)]  # as colour_ref.py counts
            xte = rng.random((a.fwd_images, *shape), np.float32)
        fwd = _forward_rates(model.forward, xte, 256, a.fwd_repeats)
    finally:
        model.close()
    out.update({"blas_kernel": blas_kernel(),
                "train_images_per_sec": round(statistics.median(rates), 1), "train_epochs": [round(r) for r in rates],
                "fwd_images_per_sec": round(statistics.median(fwd), 1), "fwd_repeats": [round(r) for r in fwd],
                "workers": workers,
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)})
    return out


#: layer types the app has and the harness's model builder (archspec.py) does not know
OWN_BUILDER_TYPES = {"Residual", "BatchNorm1D"}


def needs_own_builder(path: Path) -> bool:
    """Whether a design needs this script's PyTorch builder: it has a layer type the harness's
    model builder does not know (Residual blocks, BatchNorm1D), which would stop the run there."""
    return any(layer.get("type") in OWN_BUILDER_TYPES for layer in json.loads(path.read_text())["layers"])


def _torch_nets(path: Path, a: argparse.Namespace):
    """(training net ending in logits, inference net) in PyTorch: the harness's builder, or for a
    design with a layer type it does not know (needs_own_builder) the modules of
    benchmarks/make_residual_reference.py (written independently of the app's exporter; the tests
    check its residual blocks against the engine number by number)."""
    sys.path.insert(0, str(a.bench_dir))
    if not needs_own_builder(path):
        from torch_ref import build_model

        return build_model(str(path))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from make_residual_reference import build, nets

    arch = json.loads(path.read_text())
    return nets(arch, build(arch))


def run_torch_train(path: Path, a: argparse.Namespace, seed: int) -> dict:
    """PyTorch's training images/s for a design the harness cannot build (needs_own_builder), in this
    process (under PyTorch's Python), with colour_ref.py's recipe and timing: random inputs, Adam
    lr 1e-3, cross-entropy on the logits, 3 warm-up steps, then steps for `--seconds`."""
    import torch

    torch.set_num_threads(a.threads)
    torch.manual_seed(seed)
    net, _ = _torch_nets(path, a)
    i = json.loads(path.read_text())["input"]
    x = torch.rand(a.batch_size, i["channels"], i["height"], i["width"])
    with torch.no_grad():
        n_out = net(x[:2]).shape[1]
    y = torch.randint(0, n_out, (a.batch_size,))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net.train()

    def step():
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    t, k = time.perf_counter(), 0
    while time.perf_counter() - t < a.seconds:
        step()
        k += 1
    return {"train_images_per_sec": round(a.batch_size * k / (time.perf_counter() - t), 1), "steps": k}


def run_torch_forward(path: Path, a: argparse.Namespace, seed: int) -> dict:
    """PyTorch's inference images/s for a colour net, in this process (started under PyTorch's
    Python), with the harness's model builder (_torch_nets) and forward timer on random inputs
    (colour_ref.py times training only)."""
    import numpy as np
    import torch

    sys.path.insert(0, str(a.bench_dir))
    from torch_ref import forward_throughput

    torch.set_num_threads(a.threads)
    torch.manual_seed(seed)
    _, infer_net = _torch_nets(path, a)
    spec = json.loads(path.read_text())["input"]
    x = np.random.default_rng(seed).random((a.fwd_images, spec["channels"], spec["height"], spec["width"]), np.float32)
    fwd = forward_throughput(infer_net, torch.from_numpy(x), 256, a.fwd_repeats)
    return {"fwd_images_per_sec": round(statistics.median(fwd), 1), "fwd_repeats": [round(r) for r in fwd]}


class BenchFailure(RuntimeError):
    """One measurement's process failed: its net is reported as failed and the run goes on."""


def subprocess_json(cmd: list[str], env: dict) -> dict:
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        lines = out.stderr.strip().splitlines() or [f"exit code {out.returncode}"]
        raise BenchFailure(f"{Path(cmd[1]).name if len(cmd) > 1 else cmd[0]}: {lines[-1][:300]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def torch_round(path: Path, a: argparse.Namespace, seed: int, env: dict) -> dict:
    if is_mnist(path):
        cmd = [str(a.torch_python), str(a.bench_dir / "torch_ref.py"), "--arch", str(path),
               "--epochs", str(a.epochs), "--limit", str(a.limit), "--batch-size", str(a.batch_size),
               "--threads", str(a.threads), "--fwd-repeats", str(a.fwd_repeats), "--seed", str(seed)]
        tr = subprocess_json(cmd, env)
        return {"train_images_per_sec": tr["train_images_per_sec"], "fwd_images_per_sec": tr["fwd_images_per_sec"],
                "test_accuracy": tr["test_accuracy"],
                "train_epochs": [round(r) for r in tr["train_images_per_sec_epochs"]],
                "fwd_repeats": [round(r) for r in tr["fwd_images_per_sec_repeats"]]}
    if needs_own_builder(path):
        tr = subprocess_json([str(a.torch_python), __file__, "--torch-train", str(path), *_common(a, seed)], env)
    else:
        tr = subprocess_json([str(a.torch_python), str(a.bench_dir / "colour_ref.py"), "--arch", str(path),
                              "--batch-size", str(a.batch_size), "--threads", str(a.threads),
                              "--seconds", str(a.seconds), "--seed", str(seed)], env)
    out = {"train_images_per_sec": tr["train_images_per_sec"], "train_epochs": [round(tr["train_images_per_sec"])]}
    out.update(subprocess_json([str(a.torch_python), __file__, "--torch-fwd", str(path), *_common(a, seed)], env))
    return out


def _common(a: argparse.Namespace, seed: int) -> list[str]:
    return ["--epochs", str(a.epochs), "--limit", str(a.limit), "--batch-size", str(a.batch_size),
            "--workers", str(a.workers), "--threads", str(a.threads), "--fwd-repeats", str(a.fwd_repeats),
            "--seconds", str(a.seconds), "--fwd-images", str(a.fwd_images), "--seed", str(seed),
            "--bench-dir", str(a.bench_dir)]


def summarise(rounds: list[dict], with_torch: bool) -> dict:
    def med(key, side="engine"):
        return round(statistics.median(x[side][key] for x in rounds), 1)

    s = {"train_images_per_sec": med("train_images_per_sec"), "fwd_images_per_sec": med("fwd_images_per_sec"),
         "workers": rounds[-1]["engine"]["workers"], "peak_rss_mb": max(x["engine"]["peak_rss_mb"] for x in rounds)}
    if "test_accuracy" in rounds[-1]["engine"]:
        s["test_accuracy_last"] = rounds[-1]["engine"]["test_accuracy"][-1]
    if with_torch:
        s.update({
            "torch_train_images_per_sec": med("train_images_per_sec", "torch"),
            "torch_fwd_images_per_sec": med("fwd_images_per_sec", "torch"),
            "train_ratio_median": round(statistics.median(x["train_ratio"] for x in rounds), 3),
            "fwd_ratio_median": round(statistics.median(x["fwd_ratio"] for x in rounds), 3),
            "train_ratios": [x["train_ratio"] for x in rounds],
            "fwd_ratios": [x["fwd_ratio"] for x in rounds],
            # best epoch / step / repeat of each side over all rounds: each at its least disturbed moment
            "train_ratio_best": round(max(e for x in rounds for e in x["engine"]["train_epochs"])
                                      / max(e for x in rounds for e in x["torch"]["train_epochs"]), 3),
            "fwd_ratio_best": round(max(e for x in rounds for e in x["engine"]["fwd_repeats"])
                                    / max(e for x in rounds for e in x["torch"]["fwd_repeats"]), 3),
        })
        if "test_accuracy" in rounds[-1]["torch"]:
            s["torch_test_accuracy_last"] = rounds[-1]["torch"]["test_accuracy"][-1]
    return s


#: variables some machines set to put OpenBLAS on older, narrower kernels (see --blas)
BLAS_FORCING = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", nargs="+", default=[*MNIST_ARCHS, *COLOUR_ARCHS],
                    help="short names (harness archs/ or benchmarks/archs/) or architecture files")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=2, help="MNIST: epochs per measurement (median over them)")
    ap.add_argument("--limit", type=int, default=10000, help="MNIST: training images")
    ap.add_argument("--seconds", type=float, default=4.0, help="colour: seconds of training steps per measurement")
    ap.add_argument("--fwd-images", type=int, default=1024, help="colour: random images per forward repeat")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (and BLAS threads with --workers 1)")
    ap.add_argument("--workers", type=int, default=2, help="engine processes (2: batches split over two)")
    ap.add_argument("--fwd-repeats", type=int, default=3)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--torch-python", default=os.environ.get("CNND_TORCH_PYTHON"),
                    help="Python with torch 2.13.0 (default: $CNND_TORCH_PYTHON)")
    ap.add_argument("--bench-dir", type=Path,
                    default=Path(os.environ.get("CNND_BENCH_DIR", ROOT.parent / "shared" / "bench")),
                    help="the reference harness (default: $CNND_BENCH_DIR or ../shared/bench)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--blas", choices=("native", "inherit"), default="native",
                    help="native: the engine's processes run without OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE, "
                         "so NumPy's OpenBLAS picks its kernel for this processor as on a user's machine; "
                         "inherit: with whatever this shell sets")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure the engine on one arch here
    ap.add_argument("--torch-fwd", help=argparse.SUPPRESS)  # internal: torch forward of one colour arch here
    ap.add_argument("--torch-train", help=argparse.SUPPRESS)  # internal: torch training of a residual arch here
    a = ap.parse_args(argv)
    a.bench_dir = a.bench_dir.resolve()

    if a.one:
        print(json.dumps(run_engine(Path(a.one), a, a.seed)))
        return 0
    if a.torch_fwd:
        print(json.dumps(run_torch_forward(Path(a.torch_fwd), a, a.seed)))
        return 0
    if a.torch_train:
        print(json.dumps(run_torch_train(Path(a.torch_train), a, a.seed)))
        return 0
    with_torch = not a.no_torch
    if with_torch and not a.torch_python:
        ap.error("PyTorch's Python is needed for the comparison: pass --torch-python PATH or set "
                 "CNND_TORCH_PYTHON (or --no-torch for engine figures only)")
    paths = {name: arch_path(name, a.bench_dir) for name in a.arch}
    for name, p in paths.items():
        if not p.is_file():
            ap.error(f"no architecture {name!r} (looked in {a.bench_dir / 'archs'}, {OWN_ARCHS} and {TEMPLATES})")

    env = dict(os.environ)
    forced = {k: env[k] for k in BLAS_FORCING if k in env}
    if a.blas == "native":
        for k in BLAS_FORCING:
            env.pop(k, None)
    threads = str(a.threads if a.workers <= 1 else 1)
    for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[k] = threads
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    torch_env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    load0 = os.getloadavg()[0]
    result: dict = {"bench": "engine_bench", "batch_size": a.batch_size, "limit": a.limit, "epochs": a.epochs,
                    "seconds": a.seconds, "threads": a.threads, "workers": a.workers, "rounds": a.rounds,
                    "started_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
                    "blas": {"set_in_shell": forced, "mode": a.blas}, "archs": {}}
    failed = []
    for name, path in paths.items():
        try:
            result["archs"][name] = measure(name, path, a, env, torch_env, with_torch, result["blas"])
        except BenchFailure as e:  # e.g. a layer type PyTorch's builder cannot make: the other nets go on
            print(f"[engine_bench] {name} failed: {e}", file=sys.stderr, flush=True)
            result["archs"][name] = {"error": str(e)}
            failed.append(name)
    result["loadavg_1min_start_end"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
    print(json.dumps(result), flush=True)
    return 1 if failed else 0


def measure(name: str, path: Path, a: argparse.Namespace, env: dict, torch_env: dict, with_torch: bool,
            blas: dict) -> dict:
    """Every round of one net, engine and PyTorch alternating, summarised."""
    rounds = []
    for r in range(a.rounds):
        seed = a.seed + r
        row: dict = {"load_1min": [round(os.getloadavg()[0], 2)]}
        row["engine"] = subprocess_json([sys.executable, __file__, "--one", str(path), *_common(a, seed)], env)
        blas.setdefault("engine_kernel", row["engine"].get("blas_kernel"))
        if with_torch:
            row["torch"] = torch_round(path, a, seed, torch_env)
            row["train_ratio"] = round(row["engine"]["train_images_per_sec"]
                                       / row["torch"]["train_images_per_sec"], 3)
            row["fwd_ratio"] = round(row["engine"]["fwd_images_per_sec"] / row["torch"]["fwd_images_per_sec"], 3)
        row["load_1min"].append(round(os.getloadavg()[0], 2))
        brief = {k: v for k, v in row.items() if k not in ("engine", "torch")}
        brief.update({f"{side}_{k}": row[side][k] for side in ("engine", "torch") if side in row
                      for k in ("train_images_per_sec", "fwd_images_per_sec")})
        print(f"[engine_bench] {name} round {r + 1}/{a.rounds}: {json.dumps(brief)}", file=sys.stderr, flush=True)
        rounds.append(row)
    summary = summarise(rounds, with_torch)
    summary["load_1min"] = [x["load_1min"] for x in rounds]
    return summary


if __name__ == "__main__":
    sys.exit(main())
