"""Before a long run (engine.preflight): the learning-rate finder's suggestion trains well on real
MNIST, and the "can it learn?" check tells a network that can fit from one that cannot."""

from __future__ import annotations

import json

import mnist_data
import numpy as np
import pytest

from designer.document import load_template, template_path
from engine.cli import main
from engine.data import ImageSet
from engine.model import Model
from engine.optimizers import make_optimizer
from engine.preflight import can_it_learn, lr_find, suggest
from engine.spec import Spec


def _mnist(n: int, seed: int = 0, only_max_255: bool = False) -> ImageSet:
    x, y = mnist_data.load("train")
    idx = np.random.default_rng(seed).permutation(len(y))
    if only_max_255:
        idx = idx[x[idx].reshape(len(idx), -1).max(axis=1) == 255]
    idx = idx[:n]
    return ImageSet(x[idx, None].copy(), y[idx].astype(np.int64), [str(i) for i in range(10)], [""] * len(idx))


@pytest.mark.slow
def test_lr_find_suggestion_trains_lenet5_to_92_percent_in_one_epoch():
    """The issue's bar: LeNet-5 + Adam, one epoch of 10,000 MNIST images at batch 64: lr 0.001
    reaches about 90 %, the suggestion must reach at least 92 % (measured 93.7-95.5 % over
    seeds 0-3, suggestions 0.0035-0.0061)."""
    spec = load_template("lenet5")
    data = _mnist(10000)
    r = lr_find(spec, data, optimizer="adam", batch_size=64)
    assert 1e-3 < r.suggested_lr < 3e-2, r.suggested_lr
    assert len(r.lrs) == len(r.losses) and r.lrs == sorted(r.lrs)
    model = Model(spec, seed=0)
    opt = make_optimizer("adam", model, lr=r.suggested_lr)
    x = data.images.astype(np.float32) / 255
    perm = np.random.default_rng(0).permutation(len(x))
    for i in range(0, len(x), 64):
        b = perm[i:i + 64]
        model.train_step(x[b], data.labels[b], opt)
    xt, yt = mnist_data.load("test")
    _, correct, _ = model.evaluate_batch(xt[:, None].astype(np.float32) / 255, yt.astype(np.int64))
    assert correct / len(yt) >= 0.92, (r.suggested_lr, correct / len(yt))


def test_suggestion_is_the_steepest_fall_before_the_minimum():
    lrs = list(np.logspace(-6, 0, 61))
    losses = [2.3 - 2.0 / (1 + np.exp(-(np.log10(lr) + 3) * 4)) for lr in lrs]  # falls fastest at 1e-3
    losses[50:] = [losses[49] + 0.5 * k for k in range(11)]  # then diverges
    assert suggest(lrs, losses) == pytest.approx(1e-3, rel=0.3)


def test_check_passes_on_lenet5():
    r = can_it_learn(load_template("lenet5"), _mnist(2000))
    assert r.ok and r.final_loss < 0.05 and r.final_accuracy == 1.0 and r.problems == [], r
    assert r.batch_size == 20 and r.steps <= 200
    assert r.message.startswith("yes")


def test_check_fails_on_a_network_that_cannot_see_the_digit():
    """MaxPool2D(28) first: the network sees only the brightest pixel of each image, and that is
    255 in every image of this batch, so it must give all 20 images the same scores; with 10
    classes in the batch the best it can do is the chance loss ln 10. No step budget fixes that."""
    blind = Spec.from_dict({
        "format": "cnn-designer/1", "name": "blind", "input": {"channels": 1, "height": 28, "width": 28},
        "layers": [{"type": "MaxPool2D", "pool_size": 28}, {"type": "Flatten"}, {"type": "Dense", "units": 32},
                   {"type": "ReLU"}, {"type": "Dense", "units": 10}, {"type": "Softmax"}]})
    data = _mnist(500, only_max_255=True)
    assert (data.images.reshape(len(data), -1).max(axis=1) == 255).all()
    r = can_it_learn(blind, data, max_steps=60)
    assert not r.ok and r.message.startswith("no")
    assert r.final_loss > 2.0  # ln 10 = 2.30
    assert any("the same scores to every image" in p for p in r.problems), r.problems


def test_cli_lr_find_and_check(mnist_folder, capsys):
    arch = str(template_path("lenet5"))
    data = str(mnist_folder / "train")
    assert main(["lr-find", "--arch", arch, "--data", data, "--steps", "60", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) == {"suggested_lr", "lrs", "losses"} and len(doc["lrs"]) == len(doc["losses"]) > 10
    assert main(["lr-find", "--arch", arch, "--data", data, "--steps", "60"]) == 0
    assert "suggested learning rate:" in capsys.readouterr().out
    assert main(["check", "--arch", arch, "--data", data]) == 0
    assert capsys.readouterr().out.startswith("yes")
    assert main(["check", "--arch", str(template_path("mlp")), "--data", data, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    assert main(["check", "--arch", arch, "--data", str(mnist_folder / "nope")]) == 2
