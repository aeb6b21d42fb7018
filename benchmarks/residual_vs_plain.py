"""Residual blocks against the plain stack of the same layers, trained with the same recipe.

    python benchmarks/residual_vs_plain.py --data mnist --train 5000 --epochs 2
    python benchmarks/residual_vs_plain.py --data shapes --train 2000 --epochs 4

`mnist` is real MNIST (MNIST_DIR or ../shared/data/mnist; 28x28, the full 10,000 test images);
`shapes` generates 32x32 colour photos with known answers (ellipse, rectangle, triangle or cross in
random colours, sizes and places on a noisy background; 1,000 test images). Both designs are a 3x3
stem and blocks of [Conv-BN-ReLU-Conv-BN] (halving the size and doubling the channels twice); the
residual one wraps each block in a Residual (ReLU after the addition), the plain one puts a ReLU after
it. Adam 1e-3, the same seed and batch order for both (`--seed` changes both). Test accuracy is the
app's prediction (BatchNorm on its running statistics); `--schedule cosine` lowers the learning rate per
epoch as the app's trainer does. Prints one line per epoch and a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent.parent / "tests")]

from engine.model import Model  # noqa: E402
from engine.optimizers import make_optimizer  # noqa: E402
from engine.spec import Spec  # noqa: E402
from engine.training import TrainConfig  # noqa: E402


def shapes(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for k in range(n):
        c = k % 4
        im = Image.new("RGB", (32, 32), tuple(int(v) for v in rng.integers(0, 120, 3)))
        d = ImageDraw.Draw(im)
        fg = tuple(int(v) for v in rng.integers(120, 256, 3))
        s = int(rng.integers(8, 14))
        x0, y0 = (int(v) for v in rng.integers(1, 39 - 2 * s, 2))
        box = [x0, y0, x0 + s + 6, y0 + s + 6]
        if c == 0:
            d.ellipse(box, fill=fg)
        elif c == 1:
            d.rectangle(box, fill=fg)
        elif c == 2:
            d.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])], fill=fg)
        else:
            d.line(box, fill=fg, width=3)
            d.line([box[0], box[3], box[2], box[1]], fill=fg, width=3)
        xs.append((np.asarray(im, np.float32) + rng.normal(0, 12, (32, 32, 3))).transpose(2, 0, 1))
        ys.append(c)
    return ((np.stack(xs) / 255 - 0.5) / 0.25).astype(np.float32), np.array(ys, np.int64)


def mnist(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    import mnist_data

    def prep(x):
        return ((x[:, None].astype(np.float32) / 255 - 0.1307) / 0.3081).astype(np.float32)

    xtr, ytr = mnist_data.load("train")
    xte, yte = mnist_data.load("test")
    return prep(xtr[:n]), ytr[:n].astype(np.int64), prep(xte), yte.astype(np.int64)


def design(residual: bool, c: int, size: int, classes: int, widths: list[tuple[int, int]]) -> Spec:
    def conv(f: int, s: int = 1) -> dict:
        return {"type": "Conv2D", "filters": f, "kernel_size": 3, "stride": s, "padding": "same"}

    bn, relu = {"type": "BatchNorm2D"}, {"type": "ReLU"}
    layers = [conv(widths[0][0]), bn, relu]
    for f, s in widths:
        block = [conv(f, s), bn, relu, conv(f), bn]
        layers += [{"type": "Residual", "layers": block}] if residual else [*block, relu]
    layers += [{"type": "GlobalAvgPool2D"}, {"type": "Dense", "units": classes}, {"type": "Softmax"}]
    return Spec.from_dict({"format": "cnn-designer/1", "name": "residual" if residual else "plain",
                           "input": {"channels": c, "height": size, "width": size}, "layers": layers})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", choices=["mnist", "shapes"], default="mnist")
    ap.add_argument("--train", type=int, default=5000, help="training images")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0, help="initial weights and batch order (the same for both)")
    ap.add_argument("--schedule", choices=["none", "cosine"], default="none", help="learning rate per epoch")
    args = ap.parse_args()
    if args.data == "mnist":
        xtr, ytr, xte, yte = mnist(args.train)
        widths = [(16, 1), (16, 1), (32, 2), (32, 1), (64, 2), (64, 1)]
    else:
        (xtr, ytr), (xte, yte) = shapes(args.train, 0), shapes(1000, 1)
        widths = [(16, 1), (32, 2), (32, 1), (64, 2)]
    out = {}
    for residual in (True, False):
        spec = design(residual, xtr.shape[1], xtr.shape[2], int(ytr.max()) + 1, widths)
        m = Model(spec, seed=args.seed)
        opt = make_optimizer("adam", m, lr=1e-3)
        recipe = TrainConfig(lr=1e-3, epochs=args.epochs, schedule=args.schedule)
        rng = np.random.default_rng(args.seed)
        t0, hist = time.time(), []
        for ep in range(args.epochs):
            opt.lr = recipe.lr_at(ep + 1)
            idx = rng.permutation(len(xtr))
            losses = [m.train_step(xtr[b], ytr[b], opt)[0]
                      for b in (idx[i:i + args.batch_size] for i in range(0, len(xtr), args.batch_size))]
            acc = float((m.predict_proba(xte).argmax(1) == yte).mean())
            hist.append({"epoch": ep + 1, "train_loss": round(float(np.mean(losses)), 4), "test_accuracy": acc})
            print(f"{spec.name}: {hist[-1]} ({time.time() - t0:.0f} s)", flush=True)
        out[spec.name] = {"params": m.num_parameters, "history": hist}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
