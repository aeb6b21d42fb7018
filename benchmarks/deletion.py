"""Faithfulness of the saliency maps: the deletion test, per method, on data with known answers.

    python benchmarks/deletion.py --data shapes     # grey shapes among distractors, 32x32
    python benchmarks/deletion.py --data colour     # the same in colour (muted noisy backgrounds)
    python benchmarks/deletion.py --data mnist      # LeNet-5 after one epoch on 10,000 images

Trains the model of tests/test_saliency.py with its recipe, explains 100 unseen test images with
each method (the predicted class) and prints, per method, the mean fall of that class's
probability when the 10 % most salient pixels are blanked to the image's median, the same for a
random 10 %, and their ratio. For the shapes it also prints the fall when exactly the shape's own
pixels are blanked (the known answer): a map cannot do much better than that. docs/explain.md
quotes the figures.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent.parent / "tests")]

from engine import saliency as S  # noqa: E402
from engine.data import Preprocessing  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", choices=("shapes", "colour", "mnist"), default="shapes")
    ap.add_argument("--train", type=int, default=3000, help="training images of the shapes (default 3000)")
    args = ap.parse_args()

    import shapes_data
    from test_saliency import SHAPES_NET, _shape_drop, _train

    boxes = None
    if args.data == "mnist":
        import mnist_data

        from designer.document import load_template

        xtr, ytr = mnist_data.load("train")
        xte, yte = mnist_data.load("test")
        model = _train(load_template("lenet5").to_dict(), xtr[:10000, None].astype(np.float32) / 255,
                       ytr[:10000].astype(np.int64), epochs=1, lr=1e-3, batch=64)
        x, y = xte[:100, None].astype(np.float32) / 255, yte[:100].astype(np.int64)
    else:
        colour = args.data == "colour"
        spec = dict(SHAPES_NET, input={"channels": 3 if colour else 1, "height": 32, "width": 32})
        # as the tests do: grey pixels / 255, colour with the app's preprocessing
        norm = Preprocessing.for_input((3, 32, 32)).normalize if colour else (lambda a: a.astype(np.float32) / 255)
        xs, ys, _ = shapes_data.make(args.train, seed=0, colour=colour)
        model = _train(spec, norm(xs), ys, epochs=4 if colour else 3, lr=3e-3)
        xt, y, boxes = shapes_data.make(100, seed=7, colour=colour)
        x = norm(xt)
    pred = model.predict_proba(x).argmax(1)
    print(f"{args.data}: test accuracy {100 * (pred == y).mean():.0f} % on {len(y)} unseen images")
    for method in S.METHODS:
        heat = np.stack([m.heatmap for m in S.explain(model, x, method, pred)])
        salient, random = S.deletion_test(model, x, heat, pred, fraction=0.1)
        print(f"  {method:10s} salient 10 %: -{salient.mean():.3f}   random 10 %: -{random.mean():.3f}   "
              f"ratio {salient.mean() / random.mean():.1f}x")
    if boxes is not None:
        print(f"  blanking exactly the shape's pixels: -{_shape_drop(model, x, y, boxes):.3f}")


if __name__ == "__main__":
    main()
