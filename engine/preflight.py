"""Two quick questions before a long run: which learning rate? can this network learn at all?

    from engine.preflight import lr_find, can_it_learn
    r = lr_find(spec, data, optimizer="adam", batch_size=64)   # r.suggested_lr, r.lrs, r.losses
    c = can_it_learn(spec, data)                                # c.ok, c.message, c.problems

`lr_find` is the learning-rate range test (Smith 2017; fastai's `lr_find`): train a fresh network
for a few hundred steps while the learning rate grows exponentially from 1e-7 to 10, smooth the
loss, stop when it diverges, and suggest the rate where the smoothed loss falls fastest (against
log lr) before its minimum: fast, but still well short of where training becomes unstable.

`can_it_learn` overfits one small batch: a network that can learn anything drives the loss on 20
images to almost zero in a few hundred steps. One that cannot has a structural problem (no path
from the input to the scores, a bottleneck, dead units, vanishing gradients) that more data or
more epochs will not fix; the problems met on the way are reported in plain words.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.data import ImageSet, Preprocessing, iter_batches
from engine.errors import EngineError
from engine.health import TYPICAL_LR, HealthMonitor, nice
from engine.spec import Spec


def _optimizer(name: str, model: Any, lr: float) -> Any:
    from engine.optimizers import make_optimizer

    return make_optimizer(name, model, lr=lr, **({"momentum": 0.9} if name == "sgd" else {}))


# --------------------------------------------------------------------------------------------
# Learning-rate range test
# --------------------------------------------------------------------------------------------
@dataclass
class LRFind:
    suggested_lr: float
    lrs: list[float]
    losses: list[float]  # smoothed (exponential moving average, bias-corrected)
    raw_losses: list[float]
    stop_reason: str  # "diverged" | "end"

    def to_dict(self) -> dict[str, Any]:
        return {"suggested_lr": self.suggested_lr, "lrs": self.lrs, "losses": self.losses}


def lr_find(spec: Spec, data: ImageSet, prep: Preprocessing | None = None, optimizer: str = "adam",
            batch_size: int = 64, start_lr: float = 1e-7, end_lr: float = 10.0, steps: int = 200,
            seed: int = 0, beta: float = 0.95, cancel: Callable[[], bool] | None = None,
            progress: Callable[[int, int], None] | None = None) -> LRFind:
    from engine.model import Model
    from engine.training import check_fit

    check_fit(spec, len(data.classes), tuple(data.images.shape[1:]))
    if not 0 < start_lr < end_lr or steps < 10:
        raise EngineError("lr-find needs 0 < start_lr < end_lr and at least 10 steps")
    prep = prep or Preprocessing.for_input(spec.input_shape)
    model = Model(spec, seed=seed)
    opt = _optimizer(optimizer, model, start_lr)
    rng = np.random.default_rng(seed)
    batches = iter(())
    lrs: list[float] = []
    raw: list[float] = []
    smooth: list[float] = []
    avg, best = 0.0, math.inf
    stop = "end"
    for i in range(steps):
        if cancel is not None and cancel():
            raise EngineError("lr-find cancelled")
        lr = start_lr * (end_lr / start_lr) ** (i / (steps - 1))
        try:
            x, y = next(batches)
        except StopIteration:  # a small folder is cycled through, reshuffled
            batches = iter_batches(data.images, data.labels, batch_size, prep, rng)
            x, y = next(batches)
        opt.lr = lr
        with np.errstate(all="ignore"):
            loss, _ = model.train_step(x, y, opt)
        if not math.isfinite(loss):
            stop = "diverged"
            break
        avg = beta * avg + (1 - beta) * loss
        s = avg / (1 - beta ** (i + 1))
        lrs.append(lr)
        raw.append(float(loss))
        smooth.append(float(s))
        best = min(best, s)
        if progress is not None:
            progress(i + 1, steps)
        if i > 10 and s > 4 * best:
            stop = "diverged"
            break
    model.close()
    if len(smooth) < 5:
        last = nice(lrs[-1] if lrs else start_lr)
        raise EngineError(f"the loss diverged within {len(smooth)} steps even at lr {last}: "
                          "check the data and the design (cnn-designer check)")
    return LRFind(suggest(lrs, smooth), lrs, smooth, raw, stop)


def suggest(lrs: list[float], losses: list[float]) -> float:
    """The lr of steepest descent of the smoothed loss against log lr, before its minimum (the
    first few points, where the moving average is still warming up, are left out)."""
    lo = min(len(losses) - 1, max(3, len(losses) // 10))
    stop = int(np.argmin(losses))
    if stop - lo < 2:
        return float(lrs[max(stop, 0)] / 10)
    slope = np.gradient(np.asarray(losses[lo:stop + 1]), np.log(np.asarray(lrs[lo:stop + 1])))
    return float(lrs[lo + int(np.argmin(slope))])


# --------------------------------------------------------------------------------------------
# Can it learn? Overfit one small batch
# --------------------------------------------------------------------------------------------
@dataclass
class CheckResult:
    ok: bool
    message: str
    steps: int
    batch_size: int
    initial_loss: float
    final_loss: float
    final_accuracy: float
    losses: list[float]
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "message": self.message, "steps": self.steps, "batch_size": self.batch_size,
                "initial_loss": self.initial_loss, "final_loss": self.final_loss,
                "final_accuracy": self.final_accuracy, "losses": self.losses, "problems": self.problems}


#: the inference-mode loss on the batch that counts as "fitted"
FIT_LOSS = 0.05


def can_it_learn(spec: Spec, data: ImageSet, prep: Preprocessing | None = None, optimizer: str = "adam",
                 lr: float | None = None, images: int | None = None, max_steps: int = 400, seed: int = 0,
                 cancel: Callable[[], bool] | None = None,
                 progress: Callable[[int, int], None] | None = None) -> CheckResult:
    from engine.data import _stratified_pick
    from engine.model import Model
    from engine.training import check_fit

    k = len(data.classes)
    check_fit(spec, k, tuple(data.images.shape[1:]))
    prep = prep or Preprocessing.for_input(spec.input_shape)
    n = min(len(data), images or min(64, max(20, 2 * k)))
    pick = _stratified_pick(data.labels, n, seed) if n < len(data) else np.arange(len(data))
    x = prep.normalize(data.images[pick])
    y = data.labels[pick].astype(np.int64)
    lr = lr if lr is not None else TYPICAL_LR.get(optimizer, 1e-3)
    model = Model(spec, seed=seed)
    opt = _optimizer(optimizer, model, lr)
    monitor = HealthMonitor(model, x, np.bincount(y, minlength=k).tolist(), optimizer, lr, max_steps,
                            list(data.classes))
    losses: list[float] = []
    problems: list[str] = []
    loss0, _, _ = model.evaluate_batch(x, y)
    loss0 /= n
    fitted = False
    step = 0
    final_loss, final_acc = loss0, 0.0
    for step in range(1, max_steps + 1):
        if cancel is not None and cancel():
            raise EngineError("check cancelled")
        measured = monitor.before_step(step - 1)
        with np.errstate(all="ignore"):
            loss, _ = model.train_step(x, y, opt)
        if not math.isfinite(loss):
            problems.append(f"the loss became NaN at step {step}: the learning rate {nice(lr)} is too high "
                            f"for this network; try {nice(lr / 10)}")
            break
        if measured:
            monitor.after_step()
        losses.append(float(loss))
        if progress is not None:
            progress(step, max_steps)
        if step % 10 == 0 or step == max_steps:
            ls, correct, _ = model.evaluate_batch(x, y)
            final_loss, final_acc = ls / n, correct / n
            if final_loss < FIT_LOSS and correct == n:
                fitted = True
                break
    logits = model.logits(x).astype(np.float64)
    layers = monitor.layer_figures()
    model.close()
    if not fitted:
        scale = max(float(np.abs(logits).max()), 1e-12)
        distinct = len(np.unique(np.round(logits / scale, 4), axis=0))
        present = len(np.unique(y))
        if distinct < present:
            same = "the same scores to every image" if distinct == 1 else f"only {distinct} different sets of scores"
            problems.append(f"the network gives {same} of the {n} (from {present} classes), so it cannot tell the "
                            "classes apart: some layer throws the picture away (e.g. pooling over the whole image "
                            "before any convolution) or all its units are dead")
        zero = [d["index"] for d in layers if d.get("grad_norm") == 0.0]
        if zero:
            problems.append(f"layer(s) {', '.join(map(str, zero))} get no gradient, so they never learn")
        for w in monitor.diagnose({"train_loss": final_loss, "train_accuracy": final_acc}, layers):
            if w.kind in ("dead_relu", "vanishing", "exploded"):
                problems.append(w.message)
        if losses and abs(losses[-1] - losses[0]) < 1e-3 * max(1.0, abs(losses[0])):
            problems.append(f"the loss did not move in {len(losses)} steps (learning rate {nice(lr)})")
    if fitted:
        message = (f"yes: it fits {n} images (loss {loss0:.3f} -> {final_loss:.4f}, all correct) in {step} steps; "
                   "it can learn, so train it on all the data")
    else:
        message = (f"no: after {step} steps the loss on {n} images is still {final_loss:.3f} (from {loss0:.3f}; "
                   f"accuracy {100 * final_acc:.0f}%): a network that cannot fit {n} images will not learn "
                   "the whole set")
    return CheckResult(fitted, message, step, n, float(loss0), float(final_loss), float(final_acc), losses,
                       problems)
