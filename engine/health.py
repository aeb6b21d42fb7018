"""Training health: per-layer figures measured while training, and rules that turn them into
warnings a learner understands (each naming the likely cause and the fix).

Why this exists: a run with a learning rate 500 times too high prints a huge loss, then sits at
chance, and "finishes". The figures that show why are cheap to collect inside the trainer:

* per layer, at ~16 sampled steps of each epoch: the weight gradient's norm and the update-to-
  weight ratio ||dW|| / ||W|| of the optimizer's step (one copy of the weights before the step);
* per layer, once per epoch, on a fixed sample of 128 training images in inference mode: the
  output's mean and standard deviation, and for ReLU layers the fraction of units (channels of a
  map, or features) that are zero for every sample image ("dead": they pass no gradient).

    mon = HealthMonitor(model, sample_images, class_counts, config)
    measured = mon.before_step(step)        # True on sampled steps (weights copied)
    model.train_step(...)
    if measured: mon.after_step()
    layers, warnings = mon.epoch_end(row)   # row: train/val loss and accuracy of the epoch

`layers` is what `--log` rows carry as "layers"; `warnings` are HealthWarning (message + an
optional one-click fix such as {"lr": 0.001}).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.blas import blas_threads

#: the learning rate each optimizer usually starts well with (Adam's and AdamW's defaults; SGD
#: with momentum on small CNNs)
TYPICAL_LR = {"adam": 1e-3, "adamw": 1e-3, "sgd": 1e-2}
#: optimizer steps measured per epoch
SAMPLES_PER_EPOCH = 16
DEAD_FRACTION = 0.6  # "most ReLUs dead" (a healthy LeNet-5 has up to ~30 %, a good run at a high lr ~50 %)
#: "at chance": a loss of at least 0.9 ln K and an accuracy at most CHANCE_MARGIN above always
#: guessing the largest class. (1.5/K, the first rule, called a 3-class colour net learning at 48 %
#: "at chance": 1.5/K is 50 % there; a margin over the largest class's share means the same for any K
#: and for unbalanced sets.)
CHANCE_FRACTION = 0.9
CHANCE_MARGIN = 0.05
#: A layer whose weights grew to this many times their starting norm is being thrown around by the
#: learning rate. This is the lr signal that survives BatchNorm: a layer followed by BatchNorm
#: computes the same function at any scale of its weights, so a too-high lr does not blow up the
#: loss; it inflates those weights instead (Conv-BN-ReLU at Adam lr 0.5 on colour shapes: 30-100x
#: in two epochs, which also shrinks its update ratio below 0.1 and hides it from that rule). Healthy
#: runs stay far below: within 1.1x for Conv-BN at lr 1e-3, 1.1-1.6x for LeNet-5 in 3 epochs on MNIST.
WEIGHT_GROWTH = 10.0
#: An overfitting gap (points of accuracy) only counts once the training set is nearly memorized,
#: or validation, having learned something, gets worse: with BatchNorm, validation runs on running
#: statistics that lag the weights, so in the first epochs of a healthy run validation trails
#: training by 20-40 points (Conv-BN-ReLU on colour shapes: 72 % vs 33 % in epoch 2, 87 % vs 78 %
#: in epoch 4) while both improve.
OVERFIT_GAP = 0.15
MEMORIZED = 0.9


@dataclass
class HealthWarning:
    kind: str  # exploded | chance | dead_relu | vanishing | update_ratio | weight_growth | overfitting |
    # underfitting | imbalance
    message: str
    #: a one-click fix: training settings to change, e.g. {"lr": 0.001}; None when none is certain
    fix: dict[str, Any] | None = None

    def fix_label(self) -> str | None:
        if not self.fix:
            return None
        if "lr" in self.fix:
            return f"Set learning rate to {nice(self.fix['lr'])}"
        if self.fix.get("augment"):
            return "Turn on augmentation"
        return None


def nice(v: float) -> str:
    """0.001 rather than 1e-03; two significant digits."""
    return f"{float(f'{v:.2g}'):g}" if v >= 1e-4 else f"{v:.1e}"


def _round(v: float | None) -> float | None:
    if v is None or not math.isfinite(v):
        return None if v is None else float(v) if not math.isnan(v) else None
    return float(f"{v:.4g}")


@dataclass
class _Layer:
    index: int
    type: str
    weight: np.ndarray | None  # live view of the weight (None for layers without one)
    grad: np.ndarray | None
    #: its registry entry's reports_dead_units (ReLU)
    dead_units: bool = False
    grad_norms: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)


class HealthMonitor:
    def __init__(self, model: Any, sample: np.ndarray, class_counts: list[int], optimizer: str, lr: float,
                 batches: int, classes: list[str] | None = None):
        self.model = model
        self.sample = sample
        self.counts = list(class_counts)
        self.classes = list(classes) if classes is not None else [str(i) for i in range(len(self.counts))]
        self.k = max(2, len(self.counts))
        self.optimizer = optimizer
        self.lr = lr
        self.every = max(1, batches // SAMPLES_PER_EPOCH)
        params, grads = model.parameters(), model.gradients()
        self.layers = [
            _Layer(i, layer.type, params.get(f"layers.{i}.weight"), grads.get(f"layers.{i}.weight"),
                   layer.reports_dead_units)
            for i, layer in enumerate(model.spec.layers)]
        self._before = {lay.index: np.empty_like(lay.weight) for lay in self.layers if lay.weight is not None}
        #: each weighted layer's norm before training (WEIGHT_GROWTH)
        self._start_norm = {lay.index: float(np.linalg.norm(lay.weight.astype(np.float64, copy=False)))
                            for lay in self.layers if lay.weight is not None}
        #: the nearest weighted layer before / after each layer (BatchNorm changes the advice)
        self._fed_by: dict[int, str] = {}
        self._feeds: dict[int, str] = {}
        last = ""
        for lay in self.layers:
            self._fed_by[lay.index] = last
            if lay.weight is not None:
                last = lay.type
        last = ""
        for lay in reversed(self.layers):
            self._feeds[lay.index] = last
            if lay.weight is not None:
                last = lay.type
        self.rows: list[dict[str, Any]] = []
        self.exploded = False
        self._at_chance = 0  # epochs in a row at chance

    # --- during the epoch ------------------------------------------------------------------------
    def before_step(self, step: int) -> bool:
        if step % self.every:
            return False
        for lay in self.layers:
            if lay.weight is not None:
                np.copyto(self._before[lay.index], lay.weight)
        return True

    def after_step(self) -> None:
        # one BLAS thread, as the model computes: a float64 norm on NumPy's default thread pool
        # took 5 ms instead of 0.05 ms on a busy 2-core machine (threads waking for a 50k-value
        # dot), which made a measured LeNet-5 step 10x its cost
        with blas_threads(1):
            self._measure_step()

    def _measure_step(self) -> None:
        for lay in self.layers:
            if lay.weight is None:
                continue
            w = lay.weight.astype(np.float64, copy=False)
            wn = float(np.linalg.norm(w))
            lay.grad_norms.append(float(np.linalg.norm(lay.grad)))
            dn = float(np.linalg.norm(w - self._before[lay.index]))
            lay.ratios.append(dn / wn if wn > 0 else (math.inf if dn > 0 else 0.0))

    # --- at the end of an epoch ----------------------------------------------------------------
    def epoch_end(self, row: dict[str, Any], lr: float | None = None) -> tuple[list[dict[str, Any]],
                                                                             list[HealthWarning]]:
        """Per-layer figures of the epoch and the warnings they raise; `row` is the epoch's
        train/val loss and accuracy (EpochEnd.to_dict())."""
        if lr is not None:
            self.lr = lr
        layers = self.layer_figures()
        self.rows.append(row)
        return layers, self.diagnose(row, layers)

    def layer_figures(self) -> list[dict[str, Any]]:
        with np.errstate(all="ignore"):
            acts = self.model.activations(self.sample) if len(self.sample) else [None] * len(self.layers)
        out = []
        for lay, a in zip(self.layers, acts, strict=True):
            d: dict[str, Any] = {"index": lay.index, "type": lay.type}
            if lay.weight is not None:
                d["grad_norm"] = _round(float(np.mean(lay.grad_norms))) if lay.grad_norms else None
                d["update_ratio"] = _round(float(np.mean(lay.ratios))) if lay.ratios else None
                d["weight_norm"] = _round(float(np.linalg.norm(lay.weight.astype(np.float64, copy=False))))
            if a is not None:
                a64 = a.astype(np.float64, copy=False)
                d["act_mean"] = _round(float(a64.mean()))
                d["act_std"] = _round(float(a64.std()))
                if lay.dead_units:
                    axes = (0, 2, 3) if a.ndim == 4 else (0,)
                    d["dead_fraction"] = _round(float(np.mean(a64.max(axis=axes) <= 0)))
            lay.grad_norms.clear()
            lay.ratios.clear()
            out.append(d)
        return out

    # --- rules ---------------------------------------------------------------------------------
    def better_lr(self, higher: bool = False) -> float:
        typical = TYPICAL_LR.get(self.optimizer, 1e-3)
        return max(self.lr * 10, typical) if higher else min(self.lr / 10, typical)

    def _growth(self, layers: list[dict[str, Any]]) -> tuple[float, dict[str, Any] | None]:
        """(largest weight norm / starting norm, that layer's figures)."""
        best: tuple[float, dict[str, Any] | None] = (0.0, None)
        for d in layers:
            start, now = self._start_norm.get(d["index"]), d.get("weight_norm")
            if start and now is not None and now / start > best[0]:
                best = (now / start, d)
        return best

    def diagnose(self, row: dict[str, Any], layers: list[dict[str, Any]]) -> list[HealthWarning]:
        out: list[HealthWarning] = []
        chance = math.log(self.k)
        loss, acc = row.get("train_loss"), row.get("train_accuracy")
        vacc, vloss = row.get("val_accuracy"), row.get("val_loss")
        epoch_no = len(self.rows)
        lr_text = f"the learning rate {nice(self.lr)}"
        ratios = [d["update_ratio"] for d in layers if d.get("update_ratio") is not None]
        top_ratio = max(ratios) if ratios else None
        growth, grown = self._growth(layers)
        too_fast = (top_ratio is not None and top_ratio > 0.1) or growth > WEIGHT_GROWTH
        lower = {"lr": self.better_lr()}
        majority = max(self.counts) / sum(self.counts) if self.counts and sum(self.counts) else 1 / self.k
        if loss is None or not math.isfinite(loss) or loss > 3 * chance:
            self.exploded = True
            shown = "NaN" if loss is None or not math.isfinite(loss) else f"{loss:.1f}"
            out.append(HealthWarning(
                "exploded", f"the loss exploded ({shown}; guessing gives ln {self.k} = {chance:.2f}): {lr_text} "
                f"is too high, try {nice(lower['lr'])}", lower))
        stuck = (loss is not None and math.isfinite(loss) and CHANCE_FRACTION * chance <= loss <= 3 * chance
                 and acc is not None and acc <= majority + CHANCE_MARGIN)
        self._at_chance = self._at_chance + 1 if stuck else 0
        lr_cause = self.exploded or too_fast or self.lr > 10 * TYPICAL_LR.get(self.optimizer, 1e-3)
        if stuck:
            if lr_cause:
                out.append(HealthWarning(
                    "chance", f"the loss is stuck at chance level ({loss:.2f}; guessing gives ln {self.k} = "
                    f"{chance:.2f}, accuracy {100 * acc:.0f}%): {lr_text} is too high (the first steps threw the "
                    f"weights where the network outputs the same for every image); try {nice(lower['lr'])}", lower))
            elif top_ratio is not None and top_ratio < 1e-5:
                higher = {"lr": self.better_lr(higher=True)}
                out.append(HealthWarning(
                    "chance", f"the loss is stuck at chance level (ln {self.k} = {chance:.2f}): {lr_text} is "
                    f"too low to move the weights; try {nice(higher['lr'])}", higher))
            elif self._at_chance >= 2:  # an epoch's mean includes the steps before learning began
                out.append(HealthWarning(
                    "chance", f"the loss is stuck at chance level (ln {self.k} = {chance:.2f}): the network "
                    "predicts no better than guessing; check that the images match their labels and run "
                    "\"Can it learn?\" (cnn-designer check)", None))
        dead = [d for d in layers if (d.get("dead_fraction") or 0) >= DEAD_FRACTION]
        if dead:
            d = max(dead, key=lambda d: d["dead_fraction"])
            # at chance with a sane lr, nothing says the lr killed them (a dead first layer alone
            # keeps the loss at chance)
            if lr_cause:
                cause = f"{lr_text} is probably too high, try {nice(lower['lr'])}"
            elif self._fed_by.get(d["index"], "").startswith("BatchNorm"):  # BatchNorm is there already
                cause = "try a lower learning rate or LeakyReLU"
            else:
                cause = "try a lower learning rate, LeakyReLU, or BatchNorm before the ReLU"
            out.append(HealthWarning(
                "dead_relu", f"most ReLUs of layer {d['index']} are dead ({100 * d['dead_fraction']:.0f}% of its "
                f"units output 0 for every sample image, so they pass no gradient): {cause}",
                lower if lr_cause else None))
        rel = [(d["index"], d["grad_norm"] / d["weight_norm"]) for d in layers
               if d.get("grad_norm") is not None and d.get("weight_norm")]
        if len(rel) >= 3 and rel[-1][1] > 0 and not dead:  # dead ReLUs pass no gradient: said above
            first, last = rel[0][1], rel[-1][1]
            if first < 1e-3 * last:
                out.append(HealthWarning(
                    "vanishing", f"gradients vanish toward the input (layer {rel[0][0]} gets {first / last:.1e} of "
                    f"the last layer's relative gradient, so it barely learns): use ReLU instead of "
                    "Sigmoid/Tanh, add BatchNorm, or use fewer layers", None))
        if growth > WEIGHT_GROWTH and grown is not None and not any(w.kind in ("exploded", "chance") for w in out):
            hides = (" (BatchNorm after the layer hides it from the loss by rescaling, but the steps are wasted)"
                     if self._feeds.get(grown["index"], "").startswith("BatchNorm") else "")
            out.append(HealthWarning(
                "weight_growth", f"the weights of layer {grown['index']} ({grown['type']}) grew to {growth:.0f}x "
                f"their starting size: {lr_text} is too high{hides}; try {nice(lower['lr'])}", lower))
        elif top_ratio is not None and not any(w.kind in ("exploded", "chance") for w in out):
            if top_ratio > 0.1:
                out.append(HealthWarning(
                    "update_ratio", f"each step changes some weights by {100 * top_ratio:.0f}% of their size "
                    f"(healthy: about 0.1%): {lr_text} is too high, try {nice(lower['lr'])}", lower))
            elif top_ratio < 1e-5:
                higher = {"lr": self.better_lr(higher=True)}
                out.append(HealthWarning(
                    "update_ratio", f"each step changes the weights by less than 0.001% of their size "
                    f"(healthy: about 0.1%): {lr_text} is too low, try {nice(higher['lr'])}", higher))
        earlier = [r.get("val_loss") for r in self.rows[:-1] if r.get("val_loss") is not None]
        # validation got worse after it had learned something (at chance it is BatchNorm's lag)
        worse = (vloss is not None and bool(earlier) and vloss > min(earlier)
                 and vacc is not None and vacc > majority + CHANCE_MARGIN)
        if (acc is not None and vacc is not None and acc - vacc > OVERFIT_GAP and acc > 0.5
                and (acc >= MEMORIZED or worse)):
            out.append(HealthWarning(
                "overfitting", f"overfitting: training accuracy {100 * acc:.0f}% but validation {100 * vacc:.0f}%; "
                "the network memorizes the training images: turn on augmentation, add Dropout, get more data, "
                "or stop earlier", {"augment": True}))
        if (epoch_no >= 3 and acc is not None and acc < 0.6 and not stuck and not self.exploded
                and (vacc is None or vacc < 0.6)):
            out.append(HealthWarning(
                "underfitting", f"underfitting: after {epoch_no} epochs training accuracy is only {100 * acc:.0f}%"
                + (f" and validation {100 * vacc:.0f}%" if vacc is not None else "")
                + ": use a bigger network, train longer, or a higher learning rate", None))
        if self.counts and min(self.counts) > 0 and max(self.counts) >= 5 * min(self.counts):
            big = int(np.argmax(self.counts))
            small = int(np.argmin(self.counts))
            out.append(HealthWarning(
                "imbalance", f"classes are unbalanced ({self.classes[big]!r}: {self.counts[big]} images, "
                f"{self.classes[small]!r}: {self.counts[small]}): accuracy can look good while small classes are "
                "ignored; check per-class accuracy, or collect more images of the small classes", None))
        return out
