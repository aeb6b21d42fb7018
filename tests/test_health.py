"""Training health (engine.health): figures in every epoch row, warnings that fire on broken runs
and stay silent on a healthy one, and the CLI's stderr / --log."""

from __future__ import annotations

import json
import math

import mnist_data
import numpy as np
import pytest

from designer.document import load_template, template_path
from engine.cli import main
from engine.data import ImageSet
from engine.health import HealthMonitor
from engine.model import Model
from engine.spec import Spec
from engine.training import EpochEnd, TrainConfig, Trainer


def _mnist(n: int) -> ImageSet:
    x, y = mnist_data.load("train")
    return ImageSet(x[:n, None].copy(), y[:n].astype(np.int64), [str(i) for i in range(10)], [""] * n)


def _run(spec: Spec, data: ImageSet, **cfg) -> list[EpochEnd]:
    trainer = Trainer(spec, data, config=TrainConfig(val_split=0.1, **cfg))
    return [ev for ev in trainer.events() if isinstance(ev, EpochEnd)]


@pytest.mark.slow
def test_learning_rate_too_high_is_named_with_a_better_value():
    """The issue's run: LeNet-5, Adam at lr 0.5, MNIST: the loss explodes, then sits at chance."""
    epochs = _run(load_template("lenet5"), _mnist(6000), epochs=2, lr=0.5)
    for ev in epochs:
        text = " | ".join(w.message for w in ev.health)
        assert "learning rate 0.5 is too high" in text and "try 0.001" in text, text
        assert any(w.fix == {"lr": 0.001} for w in ev.health)
    assert {w.kind for w in epochs[0].health} >= {"exploded", "dead_relu"}
    assert "chance" in {w.kind for w in epochs[1].health}
    row = epochs[1].to_dict()
    assert row["warnings"] == [w.message for w in epochs[1].health]
    relu = [d for d in row["layers"] if d["type"] == "ReLU"]
    assert relu[0]["dead_fraction"] == 1.0  # every unit of the first ReLU is dead


@pytest.mark.slow
def test_healthy_run_does_not_warn():
    epochs = _run(load_template("lenet5"), _mnist(6000), epochs=2, lr=1e-3)
    assert epochs[-1].val_accuracy > 0.85
    for ev in epochs:
        assert ev.health == [], [w.message for w in ev.health]
        row = ev.to_dict()
        assert row["warnings"] == []
        layers = row["layers"]
        assert [d["index"] for d in layers] == list(range(13))
        conv = layers[0]
        assert conv["grad_norm"] > 0 and 1e-4 < conv["update_ratio"] < 0.05 and conv["weight_norm"] > 0
        assert all(math.isfinite(d["act_mean"]) and d["act_std"] >= 0 for d in layers)
        assert all(0 <= d["dead_fraction"] < 0.6 for d in layers if d["type"] == "ReLU")
        assert "grad_norm" not in layers[1]  # a ReLU has no weights


def test_vanishing_gradients_in_a_deep_sigmoid_stack():
    """Eight Dense + Sigmoid layers: each Sigmoid passes at most 1/4 of the gradient, so the first
    layer gets about a millionth of the last one's."""
    layers = [{"type": "Flatten"}]
    for _ in range(8):
        layers += [{"type": "Dense", "units": 32}, {"type": "Sigmoid"}]
    layers += [{"type": "Dense", "units": 10}, {"type": "Softmax"}]
    spec = Spec.from_dict({"format": "cnn-designer/1", "name": "deep", "input": {"channels": 1, "height": 28,
                                                                                   "width": 28}, "layers": layers})
    (ev,) = _run(spec, _mnist(2000), epochs=1)
    kinds = {w.kind for w in ev.health}
    assert "vanishing" in kinds, [w.message for w in ev.health]
    assert "Sigmoid" in next(w.message for w in ev.health if w.kind == "vanishing")


def _monitor(counts=(100,) * 10, lr=1e-3) -> HealthMonitor:
    model = Model(load_template("lenet5"), seed=0)
    return HealthMonitor(model, np.zeros((0, 1, 28, 28), np.float32), list(counts), "adam", lr, 100)


def _layers(ratio: float) -> list[dict]:
    return [{"index": 0, "type": "Conv2D", "grad_norm": 0.3, "update_ratio": ratio, "weight_norm": 2.0},
            {"index": 3, "type": "Conv2D", "grad_norm": 0.4, "update_ratio": ratio, "weight_norm": 3.0},
            {"index": 7, "type": "Dense", "grad_norm": 1.0, "update_ratio": ratio, "weight_norm": 8.0}]


def _row(loss=0.5, acc=0.9, vloss=0.5, vacc=0.88) -> dict:
    return {"train_loss": loss, "train_accuracy": acc, "val_loss": vloss, "val_accuracy": vacc}


def test_rules_each_fire_on_their_case_only():
    m = _monitor()
    assert m.diagnose(_row(), _layers(2e-3)) == []
    over = m.diagnose(_row(0.01, 0.99, 1.2, 0.7), _layers(2e-3))
    assert [w.kind for w in over] == ["overfitting"] and "augmentation" in over[0].message
    assert over[0].fix_label() == "Turn on augmentation"
    fast = m.diagnose(_row(), _layers(0.3))
    assert [w.kind for w in fast] == ["update_ratio"] and "too high, try 0.0001" in fast[0].message
    slow = _monitor(lr=1e-7).diagnose(_row(), _layers(1e-7))
    assert [w.kind for w in slow] == ["update_ratio"] and "too low, try 0.001" in slow[0].message
    assert slow[0].fix_label() == "Set learning rate to 0.001"
    m3 = _monitor()
    for _ in range(3):
        m3.rows.append({})
    under = m3.diagnose(_row(1.5, 0.45, 1.5, 0.44), _layers(2e-3))
    assert [w.kind for w in under] == ["underfitting"] and "bigger network" in under[0].message
    unbalanced = _monitor(counts=(500, 40, 100)).diagnose(_row(), _layers(2e-3))
    assert [w.kind for w in unbalanced] == ["imbalance"] and "'0': 500 images, '1': 40" in unbalanced[0].message
    nan = m.diagnose(_row(loss=float("nan")), _layers(2e-3))
    assert nan[0].kind == "exploded" and "learning rate" in nan[0].message


@pytest.mark.slow
def test_cli_prints_warnings_and_logs_layers(mnist_folder, tmp_path):
    import subprocess
    import sys

    log = tmp_path / "run.jsonl"
    arch = template_path("lenet5")
    r = subprocess.run([sys.executable, "-m", "engine.cli", "train", "--arch", str(arch), "--data",
                        str(mnist_folder / "train"), "--epochs", "2", "--lr", "0.5", "--out",
                        str(tmp_path / "m.cnnd"), "--log", str(log)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    warnings = [line for line in r.stderr.splitlines() if line.startswith("warning: ")]
    assert any("learning rate 0.5 is too high" in w for w in warnings), r.stderr
    assert len(warnings) == len({w.split(" (")[0] for w in warnings})  # each problem once
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(rows) == 2 and all(row["warnings"] and len(row["layers"]) == 13 for row in rows)
    assert main(["summary", str(tmp_path / "m.cnnd")]) == 0  # the history with health still loads
