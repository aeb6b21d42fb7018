"""The one training loop, shared by plain Python, the CLI and the GUI's worker thread.

Why it is shaped like this: the GUI must stay responsive and in control (pause, resume, stop
within one batch, show every batch), the CLI wants a progress bar and Ctrl-C that still saves, and
a script wants a single call. So training is a generator of plain dataclass events; the callers
only differ in what they do with them, and there is no second loop to drift out of step.

    from engine.data import load_folder
    from engine.training import Trainer, TrainConfig, BatchEnd, EpochEnd, Finished

    data = load_folder("digits/", spec.input_shape)           # engine.data: decoded uint8 images
    trainer = Trainer(spec, data, val=None, config=TrainConfig(epochs=3, val_split=0.1))
    for event in trainer.events():          # or: result = trainer.run(callback)
        if isinstance(event, BatchEnd): ...  # epoch, batch, batches, loss, accuracy, images/s, ETA
        if isinstance(event, EpochEnd): ...  # train/val loss and accuracy, seconds, images/s,
                                             # per-layer health figures and warnings (engine.health)
        if isinstance(event, Finished): ...  # status "finished" | "stopped" | "early_stopped" | "failed"
    trainer.trained()                        # engine.trained.TrainedModel: the result, for files, export, GUI
    trainer.save("digits.cnnd")              # architecture, classes, preprocessing, config, history, weights

Control, from any thread: `trainer.pause()`, `trainer.resume()`, `trainer.stop()`; each takes
effect before the next batch starts (stop also interrupts validation). They use threading.Event, so
a GUI thread may call them while the worker thread iterates `events()`.

Between two events the model is idle, so the code consuming `events()` may read it in that same
thread (`trainer.model.activations(x)` for live feature maps, `state_dict()` for a snapshot); other
threads should only use copies. By default each batch is shared by two processes (the engine's
data parallelism, `TrainConfig.workers`); the helper process ends with the run.

Guarantees: the same seed, data and config give the same weights (model init, split, shuffle,
augmentation and dropout all derive from `config.seed`). A NaN or infinite loss stops the run with
"loss became NaN at epoch 2 batch 130; lower the learning rate (try 0.0001)" and the weights of the last step
with a finite loss. Any other error (out of memory, a bug) ends the run as a Finished event with
status "failed" and a one-line message rather than an exception escaping the worker thread; errors
in the inputs (class count, channels, config) raise TrainingError from the constructor instead,
before any time is spent.

To continue training a saved model: `Trainer.continuing(modelfile.load("digits.cnnd"), data)`. To
start an edited design from a trained model's compatible layers: `initial_state=engine.transfer.transfer(
spec, tm.spec, tm.state, seed).state`; `frozen=[0, 3]` keeps those layers fixed (engine.transfer explains
both rules).
"""

from __future__ import annotations

import math
import os
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from engine.allocator import give_back
from engine.data import Augment, ImageSet, Preprocessing, augment_batch, iter_batches, split_stratified
from engine.errors import EngineError
from engine.health import HealthMonitor, HealthWarning, nice
from engine.model import Model
from engine.spec import Spec
from engine.trained import TrainedModel
from engine.transfer import frozen_slices, layer_of, weighted_layers

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("none", "step", "cosine")


class TrainingError(EngineError):
    """Training cannot start: a config value, or data that does not fit the design."""


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    """Hyperparameters; `to_dict()` is what the GUI stores in the spec's "training" object."""

    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9  # SGD only
    weight_decay: float = 0.0
    seed: int = 0
    #: fraction of each class held out for validation when no validation folder is given (0 = none)
    val_split: float = 0.1
    augment: bool = False
    aug_shift: float = 0.1
    aug_rotate: float = 10.0
    aug_hflip: bool = False
    schedule: str = "none"  # none | step | cosine
    step_size: int = 5  # step schedule: multiply lr by gamma every step_size epochs
    gamma: float = 0.5
    min_lr: float = 0.0  # cosine schedule's final lr
    #: stop after this many epochs without a lower validation loss (0 = never)
    early_stopping: int = 0
    #: at the end, restore the weights of the epoch with the lowest validation loss
    keep_best: bool = False
    #: train on at most this many images (stratified, seeded; None = all)
    limit: int | None = None
    #: processes sharing each batch (engine data parallelism): 1 = this process only, 0 = automatic
    #: (2 on a machine with at least 2 cores)
    workers: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Any) -> TrainConfig:
        """Validated config from a dict; unknown keys are ignored (other tools may add their own)."""
        if not isinstance(raw, dict):
            raise TrainingError("training settings must be an object")
        known = {f.name: f for f in fields(cls)}
        kwargs = {k: v for k, v in raw.items() if k in known}
        cfg = cls(**kwargs)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        def bad(name: str, expect: str) -> TrainingError:
            return TrainingError(f"training setting {name!r} must be {expect}, got {getattr(self, name)!r}")

        for name in ("epochs", "batch_size", "step_size"):
            v = getattr(self, name)
            if not _is_int(v) or v < 1:
                raise bad(name, "a positive integer")
        for name in ("seed", "early_stopping", "workers"):
            v = getattr(self, name)
            if not _is_int(v) or v < 0:
                raise bad(name, "an integer >= 0")
        if self.limit is not None and (not _is_int(self.limit) or self.limit < 2):
            raise bad("limit", "an integer >= 2 or null")
        if self.optimizer not in OPTIMIZERS:
            raise bad("optimizer", " | ".join(OPTIMIZERS))
        if self.schedule not in SCHEDULES:
            raise bad("schedule", " | ".join(SCHEDULES))
        for name in ("lr",):
            if not _is_num(getattr(self, name)) or getattr(self, name) <= 0:
                raise bad(name, "a positive number")
        for name in ("momentum", "weight_decay", "min_lr", "aug_shift", "aug_rotate"):
            if not _is_num(getattr(self, name)) or getattr(self, name) < 0:
                raise bad(name, "a number >= 0")
        if self.aug_shift > 1:  # a shift of more than the image's size leaves no image
            raise bad("aug_shift", "a fraction of the image size, 0 to 1")
        if self.aug_rotate > 360:
            raise bad("aug_rotate", "degrees, 0 to 360")
        if not _is_num(self.gamma) or not 0 < self.gamma <= 1:
            raise bad("gamma", "a number in (0, 1]")
        if not _is_num(self.val_split) or not 0 <= self.val_split < 1:
            raise bad("val_split", "a number in [0, 1), e.g. 0.1")
        for name in ("augment", "aug_hflip", "keep_best"):
            if not isinstance(getattr(self, name), bool):
                raise bad(name, "true or false")

    def resolved_workers(self) -> int:
        if self.workers:
            return self.workers
        import os

        return min(2, os.cpu_count() or 1)

    def augmentation(self) -> Augment | None:
        return Augment(self.aug_shift, self.aug_rotate, self.aug_hflip) if self.augment else None

    def lr_at(self, epoch: int) -> float:
        """Learning rate for a 1-based epoch of this run."""
        if self.schedule == "step":
            return self.lr * self.gamma ** ((epoch - 1) // self.step_size)
        if self.schedule == "cosine":
            t = (epoch - 1) / max(1, self.epochs)
            return self.min_lr + (self.lr - self.min_lr) * 0.5 * (1 + math.cos(math.pi * t))
        return self.lr


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# --------------------------------------------------------------------------------------------
# Events (plain dataclasses: easy to send through Qt signals, print, or log as JSON)
# --------------------------------------------------------------------------------------------
@dataclass
class Started:
    epochs: int
    batches: int  # per epoch
    train_images: int
    val_images: int
    classes: list[str]
    warnings: list[str] = field(default_factory=list)


@dataclass
class BatchEnd:
    epoch: int  # 1-based, counting epochs of earlier runs when continuing
    epochs: int
    batch: int  # 1-based within the epoch
    batches: int
    loss: float  # this batch
    accuracy: float  # this batch
    epoch_loss: float  # running mean over the epoch so far
    epoch_accuracy: float
    images_per_second: float  # this epoch so far, training time only
    elapsed: float  # seconds of this run, pauses excluded
    eta_seconds: float  # rest of the run, validation included
    lr: float


@dataclass
class EpochEnd:
    epoch: int
    epochs: int
    train_loss: float
    train_accuracy: float
    val_loss: float | None
    val_accuracy: float | None
    seconds: float  # wall time of the epoch (training + validation), pauses excluded
    images_per_second: float  # training images / training time
    lr: float
    best: bool = False  # lowest validation loss so far
    #: False when a stop request cut the epoch short (its figures cover the batches that ran)
    complete: bool = True
    #: per-layer health figures of the epoch (engine.health), and the warnings they raise
    layers: list[dict[str, Any]] | None = None
    health: list[HealthWarning] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """One line of `--log` / one entry of a model file's history."""
        d: dict[str, Any] = {
            "epoch": self.epoch, "train_loss": self.train_loss, "train_accuracy": self.train_accuracy,
            "val_loss": self.val_loss, "val_accuracy": self.val_accuracy, "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images_per_second, 1), "lr": self.lr,
        }
        if not self.complete:
            d["complete"] = False
        if self.layers is not None:
            d["layers"] = self.layers
            d["warnings"] = [w.message for w in self.health]
        return d


@dataclass
class Finished:
    status: str  # "finished" | "stopped" | "early_stopped" | "failed"
    message: str
    epochs_completed: int
    best_epoch: int | None
    history: list[dict[str, Any]]
    details: str = ""  # traceback text for unexpected failures (for a "details" box, never the headline)

    @property
    def ok(self) -> bool:
        return self.status != "failed"


Event = Started | BatchEnd | EpochEnd | Finished


# --------------------------------------------------------------------------------------------
# Checks before training
# --------------------------------------------------------------------------------------------
def score_layer(spec: Spec) -> tuple[int, str] | None:
    """(index, field) of the layer whose size sets the class count: the last layer with a
    `score_field` (Dense "units", or in an all-convolutional net the last Conv2D "filters") when
    only layers that keep the score count follow it and the design ends in exactly that many
    values; None if unclear."""
    for k in range(len(spec.layers) - 1, -1, -1):
        layer = spec.layers[k]
        if layer.score_field is None:
            continue
        tail = spec.layers[k + 1:]
        if not all(x.keeps_scores for x in tail):
            return None
        if tail:
            from engine.shapes import infer

            out = infer(spec).output_shape
            if out is None or tuple(out) != (layer.config[layer.score_field],):
                return None
        return (k, layer.score_field)
    return None


@dataclass
class FitProblem:
    """Why a valid design cannot output one score per class, and the field edit that fixes it."""

    message: str
    #: (layer index, field, value) that makes the design fit, or None when no single edit does
    fix: tuple[int, str, int] | None


def class_fit_problem(spec: Spec, num_classes: int, inference: Any = None) -> FitProblem | None:
    """The CLI, the trainer and the GUI's one-click fix all decide "does it fit" here. The design
    must be valid (see engine.shapes); returns None when its output fits `num_classes`."""
    from engine.shapes import infer

    n = num_classes
    inf = inference or infer(spec)
    out = tuple(inf.output_shape)
    if len(out) != 1:
        return FitProblem(f"the design ends in {'x'.join(map(str, out))} maps, not one score per class: "
                          f"end it with Flatten and Dense({n})", None)
    binary = inf.binary
    if inf.num_classes == n:
        return None
    head = score_layer(spec)
    fix = (head[0], head[1], n) if head is not None else None
    if binary:
        msg = (f"the last Dense(1) + Sigmoid separates 2 classes but the folder has {n} classes: "
               f"set the last Dense to {n} units and end with Softmax")
    elif head is not None:
        k, name = head
        layer = "last Dense" if name == "units" else "last Conv2D (before GlobalAvgPool2D)"
        msg = (f"the {layer} has {spec.layers[k].config[name]} {name} but the folder has {n} classes: "
               f"set its {name} to {n}")
    else:
        msg = f"the design outputs {out[0]} scores but the folder has {n} classes: end it with Dense({n})"
    return FitProblem(msg, fix)


def check_fit(spec: Spec, num_classes: int, image_shape: tuple[int, ...] | None = None) -> None:
    """TrainingError when the design cannot learn these data (input shape, class count)."""
    from engine.shapes import infer

    inf = infer(spec)
    if not inf.valid:
        raise TrainingError(f"the design is invalid: {inf.error_message}")
    if image_shape is not None and tuple(image_shape) != tuple(spec.input_shape):
        raise TrainingError(
            f"the images are {'x'.join(map(str, image_shape))} but the design's input is "
            f"{'x'.join(map(str, spec.input_shape))}")
    problem = class_fit_problem(spec, num_classes, inf)
    if problem is not None:
        raise TrainingError(problem.message)


# --------------------------------------------------------------------------------------------
# The trainer
# --------------------------------------------------------------------------------------------
class Trainer:
    """Trains one Model on an ImageSet; see the module docstring for the event API."""

    def __init__(
        self,
        spec: Spec,
        train: ImageSet,
        val: ImageSet | None = None,
        config: TrainConfig | None = None,
        *,
        prep: Preprocessing | None = None,
        initial_state: dict[str, np.ndarray] | None = None,
        history: list[dict[str, Any]] | None = None,
        classes: list[str] | None = None,
        frozen: list[int] | tuple[int, ...] = (),
        init_from: str | None = None,
    ):
        self.config = config or TrainConfig()
        self.config.validate()
        self.spec = spec
        self.prep = prep or Preprocessing.for_input(spec.input_shape)
        self.classes = list(classes) if classes is not None else list(train.classes)
        if list(train.classes) != self.classes:
            raise TrainingError(
                f"the folder's classes ({', '.join(train.classes)}) differ from the model's "
                f"({', '.join(self.classes)})")
        check_fit(spec, len(self.classes), tuple(train.images.shape[1:]))
        if val is not None:
            from engine.folders import shared_files

            shared = shared_files(train.paths, val.paths)
            if shared:
                raise TrainingError(
                    f"{len(shared)} of the {len(val)} validation images are training images (e.g. {shared[0]}, the "
                    "same file through a link): validating on them measures nothing; give a separate validation "
                    "folder or hold out a share of the training images")
        self.warnings: list[str] = []
        if self.config.limit is not None and self.config.limit < len(train):
            from engine.data import _stratified_pick

            train = train.subset(_stratified_pick(train.labels, self.config.limit, self.config.seed))
        if val is None and self.config.val_split > 0:
            train, val = split_stratified(train, self.config.val_split, self.config.seed)
            if len(val) == 0:
                val = None
                self.warnings.append("too few images for a validation split: training without validation")
        if val is not None and list(val.classes) != self.classes:
            raise TrainingError("the validation folder's class list differs from the training folder's")
        if val is not None and tuple(val.images.shape[1:]) != tuple(train.images.shape[1:]):
            raise TrainingError("validation images have a different shape from the training images")
        if len(train) == 0:
            raise TrainingError("no training images left")
        if val is None and (self.config.early_stopping or self.config.keep_best):
            self.warnings.append("early stopping and keep-best need validation data: they are off for this run")
        self.train_data = train
        self.val_data = val
        weighted = {i for i, _, _ in weighted_layers(spec)}
        bad = [i for i in frozen if i not in weighted]
        if bad:
            raise TrainingError(f"cannot freeze layer {bad[0]}: it has no weights "
                                f"(layers with weights: {', '.join(map(str, sorted(weighted)))})")
        #: layers whose weights (and BatchNorm statistics) stay fixed in this run (engine.transfer)
        self.frozen = sorted(set(frozen))
        #: where the starting weights came from (recorded with the run and the model)
        self.init_from = init_from
        from engine.memory import training_estimate
        from engine.shapes import infer

        # the run's memory (weights, optimizer, snapshots, batch activations, the images), checked
        # before the model allocates: a clear refusal instead of an out-of-memory kill
        training_estimate(infer(spec), self.config.batch_size, len(train) + (len(val) if val is not None else 0),
                          self.config.optimizer, self.config.keep_best).check()
        self.model = Model(spec, seed=self.config.seed)
        if initial_state is not None:
            self.model.load_state_dict(initial_state, strict=True)
        self.history: list[dict[str, Any]] = list(history or [])
        self.best_epoch: int | None = None
        self.best_val_loss = math.inf
        self._best_state: dict[str, np.ndarray] | None = None
        self._stop = threading.Event()
        self._running = threading.Event()
        self._running.set()
        self.result: Finished | None = None
        self.status = "ready"  # ready | running | paused | done
        self._paused_seconds = 0.0

    @classmethod
    def continuing(cls, tm: TrainedModel, train: ImageSet, val: ImageSet | None = None,
                   config: TrainConfig | None = None) -> Trainer:
        """Train a trained model further: its weights, classes, preprocessing and history go on."""
        return cls(tm.spec, train, val, config, prep=tm.preprocessing, initial_state=tm.state,
                   history=tm.history, classes=tm.classes)

    # --- control (thread-safe) ---------------------------------------------------------------
    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def stop(self) -> None:
        self._stop.set()
        self._running.set()  # wake a paused loop so it can stop

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    # --- running -------------------------------------------------------------------------------
    def run(self, callback: Callable[[Event], None] | None = None) -> Finished:
        """Run to the end, calling `callback(event)` for each event; returns the Finished event."""
        last = None
        for ev in self.events():
            if callback is not None:
                callback(ev)
            last = ev
        assert isinstance(last, Finished)
        return last

    def _wait_if_paused(self) -> float:
        """Block while paused; returns the seconds spent paused (excluded from timings)."""
        if self._running.is_set():
            return 0.0
        self.status = "paused"
        t = time.perf_counter()
        self._running.wait()
        self.status = "running"
        waited = time.perf_counter() - t
        self._paused_seconds += waited
        return waited

    def events(self) -> Iterator[Event]:
        """The training loop as a generator; see the module docstring."""
        from engine.optimizers import make_optimizer

        cfg, model = self.config, self.model
        train, val = self.train_data, self.val_data
        n = len(train)
        batches = math.ceil(n / cfg.batch_size)
        offset = len(self.history)
        total_epochs = offset + cfg.epochs
        self.status = "running"
        workers = cfg.resolved_workers()
        if workers > 1:
            from engine.parallel import enable_workers

            note = enable_workers(model, workers)
            if note:
                self.warnings.append(note)
        yield Started(total_epochs, batches, n, len(val) if val is not None else 0, list(self.classes),
                      list(self.warnings))

        kw: dict[str, Any] = {}
        if cfg.optimizer == "sgd":
            kw["momentum"] = cfg.momentum
        if cfg.weight_decay:
            kw["weight_decay"] = cfg.weight_decay
        try:
            opt = make_optimizer(cfg.optimizer, model, lr=cfg.lr, **kw)
            if self.frozen:
                opt.freeze(frozen_slices(model, self.frozen))
        except EngineError as e:
            model.close()
            yield self._finish("failed", str(e), offset)
            return

        try:
            yield from self._loop(opt, offset, total_epochs, batches)
        finally:
            model.close()  # the helper process goes, if any; the model keeps working in this one
            give_back()  # what the steps kept allocated (engine.allocator)

    def _loop(self, opt: Any, offset: int, total_epochs: int, batches: int) -> Iterator[Event]:
        cfg, model = self.config, self.model
        train, val = self.train_data, self.val_data
        shuffle_seq, aug_seq = np.random.SeedSequence(cfg.seed).spawn(2)
        shuffle_rng = np.random.default_rng(shuffle_seq)
        aug_rng = np.random.default_rng(aug_seq)
        augment = cfg.augmentation()
        # the last two pre-step weight snapshots: restoring the older one after a NaN gives the
        # weights that produced the last finite loss (see _restore_last_good)
        snaps = [self._snapshot(), self._snapshot()]
        # frozen BatchNorm statistics: put back after every step (the optimizer guards the weights)
        live_buffers = model.buffers()
        frozen_buffers = {k: v.copy() for k, v in live_buffers.items() if layer_of(k) in self.frozen}
        snap_steps = [-1, -1]
        step = 0
        run_time = 0.0  # seconds of this run, pauses excluded
        val_seconds = 0.0
        patience_left = cfg.early_stopping
        epoch = offset
        sample = np.random.default_rng(cfg.seed).permutation(len(train))[:128]  # health's fixed sample
        health = HealthMonitor(model, self.prep.normalize(train.images[sample]), train.counts(), cfg.optimizer,
                               cfg.lr, batches, self.classes)
        try:
            for e in range(1, cfg.epochs + 1):
                epoch = offset + e
                lr = cfg.lr_at(e)
                opt.lr = lr
                t_epoch = time.perf_counter()
                paused_before = self._paused_seconds
                train_time = 0.0
                loss_sum = 0.0
                correct = 0
                seen = 0
                stopped = False
                # augmentation draws from its own stream, so turning it on does not change the shuffle
                it = iter_batches(train.images, train.labels, cfg.batch_size, self.prep, shuffle_rng, None)
                for b in range(1, batches + 1):
                    self._wait_if_paused()
                    if self._stop.is_set():
                        stopped = True
                        break
                    t0 = time.perf_counter()
                    x, y = next(it)
                    if augment is not None:
                        x = augment_batch(x, aug_rng, augment)
                    k = step % 2
                    self._snapshot(into=snaps[k])
                    snap_steps[k] = step
                    measured = health.before_step(step)
                    with np.errstate(all="ignore"):  # the NaN guard below reports it, once, in words
                        loss, nc = model.train_step(x, y, opt)
                        if measured and math.isfinite(loss):
                            health.after_step()
                    for name, saved in frozen_buffers.items():
                        np.copyto(live_buffers[name], saved)
                    dt = time.perf_counter() - t0
                    step += 1
                    # the update itself may overflow (a huge learning rate on the very first step):
                    # then the weights before it, which gave this finite loss, are the last good ones
                    broken = math.isfinite(loss) and not self._weights_finite()
                    if broken or not math.isfinite(loss):
                        if broken:
                            self._restore(snaps[k])
                            what, where = "weights", "became NaN or infinite"
                        else:
                            self._restore(snaps[1 - k] if snap_steps[1 - k] >= 0 else snaps[k])
                            what, where = "loss", "became NaN" if math.isnan(loss) else "became infinite"
                        msg = (f"{what} {where} at epoch {epoch} batch {b}; lower the learning rate "
                               f"(try {nice(health.better_lr())})")
                        kept = self._maybe_keep_best()
                        yield self._finish("failed", msg + ("" if not kept else f" (kept epoch {kept}'s weights)")
                                           , epoch - 1)
                        return
                    train_time += dt
                    m = len(y)
                    loss_sum += loss * m
                    correct += nc
                    seen += m
                    elapsed = run_time + train_time
                    per_batch = train_time / b
                    remaining = (batches - b) * per_batch + (cfg.epochs - e) * (batches * per_batch + val_seconds)
                    if val is not None and val_seconds == 0.0:
                        remaining += (cfg.epochs - e + 1) * per_batch * len(val) / max(cfg.batch_size, 1) / 3
                    yield BatchEnd(epoch, total_epochs, b, batches, float(loss), nc / m, loss_sum / seen,
                                   correct / seen, seen / train_time if train_time else 0.0, elapsed,
                                   remaining, lr)
                if stopped and seen == 0:
                    run_time += train_time
                    break
                t_val = time.perf_counter()
                vloss = vacc = None
                if val is not None and not stopped:
                    res = self._validate(val)
                    if res is not None:
                        vloss, vacc = res
                val_seconds = time.perf_counter() - t_val
                seconds = time.perf_counter() - t_epoch - (self._paused_seconds - paused_before)
                run_time += seconds
                best = False
                if vloss is not None and vloss < self.best_val_loss:
                    self.best_val_loss = vloss
                    self.best_epoch = epoch
                    best = True
                    if cfg.keep_best:
                        self._best_state = model.state_dict()
                    patience_left = cfg.early_stopping
                elif vloss is not None:
                    patience_left -= 1
                ev = EpochEnd(epoch, total_epochs, loss_sum / seen, correct / seen, vloss, vacc, seconds,
                              seen / train_time if train_time else 0.0, lr, best, complete=not stopped)
                ev.layers, ev.health = health.epoch_end(ev.to_dict(), lr)
                self.history.append(ev.to_dict())
                yield ev
                if stopped or self._stop.is_set():
                    stopped = True
                    break
                if cfg.early_stopping and val is not None and patience_left <= 0 and e < cfg.epochs:
                    kept = self._maybe_keep_best()
                    msg = (f"stopped early at epoch {epoch}: validation loss has not improved for "
                           f"{cfg.early_stopping} epoch(s)")
                    yield self._finish("early_stopped", msg + (f"; kept epoch {kept}'s weights" if kept else ""),
                                       epoch)
                    return
            kept = self._maybe_keep_best()
            done = len(self.history) - offset
            if self._stop.is_set():
                full = sum(1 for h in self.history[offset:] if h.get("complete", True))
                part = " and part of the next" if full < done else ""
                msg = f"stopped by request after {full} complete epoch(s){part}"
                status = "stopped"
            else:
                msg = f"finished {done} epoch(s)"
                status = "finished"
            if self.history and self.history[-1].get("val_accuracy") is not None:
                msg += f"; validation accuracy {100 * self.history[-1]['val_accuracy']:.2f}%"
            if kept:
                msg += f"; kept epoch {kept}'s weights (lowest validation loss)"
            yield self._finish(status, msg, offset + done)
        except MemoryError:
            yield self._finish("failed", f"out of memory at epoch {epoch}: lower the batch size or the image size",
                               len(self.history))
        except EngineError as e:
            yield self._finish("failed", str(e), len(self.history))
        except Exception as e:  # the GUI worker must get an event, never a dead thread
            yield self._finish("failed", f"training failed: {type(e).__name__}: {e}", len(self.history),
                               traceback.format_exc())

    def _finish(self, status: str, message: str, epochs: int, details: str = "") -> Finished:
        self.status = "done"
        note = self.model.workers_note  # the second process was lost on the way: say so, once
        if note:
            message = f"{message} ({note})"
        self.result = Finished(status, message, epochs, self.best_epoch, list(self.history), details)
        return self.result

    def _maybe_keep_best(self) -> int | None:
        if self.config.keep_best and self._best_state is not None:
            self.model.load_state_dict(self._best_state)
            return self.best_epoch
        return None

    def _snapshot(self, into: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        live = {**self.model.parameters(), **self.model.buffers()}
        if into is None:
            return {k: v.copy() for k, v in live.items()}
        for k, v in live.items():
            np.copyto(into[k], v)
        return into

    def _weights_finite(self) -> bool:
        """All weights finite? One float64 sum (float32 values cannot overflow it), so the check
        costs a fraction of a step."""
        flat = getattr(self.model, "flat_params", None)
        arrays = [flat] if flat is not None else list(self.model.parameters().values())
        with np.errstate(all="ignore"):
            return all(math.isfinite(float(np.sum(a, dtype=np.float64))) for a in arrays)

    def _restore(self, snap: dict[str, np.ndarray]) -> None:
        if all(np.all(np.isfinite(v)) for v in snap.values()):
            self.model.load_state_dict(snap)

    def _validate(self, val: ImageSet, batch_size: int = 256) -> tuple[float, float] | None:
        loss_sum, correct = 0.0, 0
        for x, y in iter_batches(val.images, val.labels, batch_size, self.prep):
            if self._stop.is_set():
                return None
            self._wait_if_paused()
            with np.errstate(all="ignore"):  # an overflowing model shows as a NaN loss, not warnings
                ls, nc, _ = self.model.evaluate_batch(x, y)
            loss_sum += ls
            correct += nc
        return loss_sum / len(val), correct / len(val)

    # --- results -------------------------------------------------------------------------------
    def training_info(self) -> dict[str, Any]:
        """What a model file records under "training"."""
        info = self.config.to_dict()
        info["train_images"] = len(self.train_data)
        report = self.train_data.report
        if report is not None and report.root and "data" not in info:
            # Where the images came from: exports pick their proof samples there.
            info["data"] = os.path.abspath(str(report.root))
        info["val_images"] = len(self.val_data) if self.val_data is not None else 0
        if self.result is not None:
            info["status"] = self.result.status
            info["message"] = self.result.message
        if self.best_epoch is not None:
            info["best_epoch"] = self.best_epoch
        if self.frozen:
            info["freeze"] = list(self.frozen)
        if self.init_from:
            info["init_from"] = self.init_from
        return info

    def trained(self) -> TrainedModel:
        """The result: this trainer's Model (not to be trained further) with its classes,
        preprocessing, settings and history, as model files, export, the CLI and the GUI take it."""
        return TrainedModel.from_model(self.model, self.classes, self.prep, self.training_info(), self.history)

    def save(self, path: Any) -> TrainedModel:
        """Write the trained model as `.cnnd` (engine.modelfile); returns what was written."""
        from engine import modelfile

        return modelfile.save(path, self.trained())


# --------------------------------------------------------------------------------------------
# Evaluation (CLI `evaluate`, the GUI's confusion matrix)
# --------------------------------------------------------------------------------------------
@dataclass
class Evaluation:
    classes: list[str]
    count: int
    loss: float
    accuracy: float
    per_class_accuracy: list[float | None]  # None for a class with no images
    per_class_count: list[int]
    confusion: np.ndarray  # (true, predicted) counts
    predictions: np.ndarray  # (N,) predicted class per image
    probabilities: np.ndarray  # (N, classes)
    labels: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count, "loss": self.loss, "accuracy": self.accuracy, "classes": list(self.classes),
            "per_class_accuracy": {c: a for c, a in zip(self.classes, self.per_class_accuracy, strict=True)},
            "per_class_count": {c: k for c, k in zip(self.classes, self.per_class_count, strict=True)},
            "confusion_matrix": self.confusion.tolist(),
        }


def evaluate(model: Any, data: ImageSet, prep: Preprocessing, batch_size: int = 256,
             cancel: Callable[[], bool] | None = None) -> Evaluation:
    """Loss, accuracy, per-class accuracy and confusion matrix of a model on labelled images."""
    k = len(data.classes)
    loss_sum = 0.0
    probs = []
    for x, y in iter_batches(data.images, data.labels, batch_size, prep):
        if cancel is not None and cancel():
            raise EngineError("evaluation cancelled")
        with np.errstate(all="ignore"):  # reported below as one sentence, not as warnings
            ls, _, p = model.evaluate_batch(x, y)
        loss_sum += ls
        probs.append(p.astype(np.float32, copy=False))
    prob = np.concatenate(probs) if probs else np.zeros((0, k), np.float32)
    bad = int((~np.isfinite(prob).all(axis=1)).sum()) if len(prob) else 0
    if bad:
        raise EngineError(f"the model's output is not a number for {bad} of {len(prob)} images: its weights "
                          "overflow on these inputs; retrain it with a lower learning rate")
    pred = prob.argmax(axis=1) if len(prob) else np.zeros(0, np.int64)
    conf = np.zeros((k, k), np.int64)
    np.add.at(conf, (data.labels, pred), 1)
    per_count = conf.sum(axis=1)
    per_acc = [float(conf[i, i] / per_count[i]) if per_count[i] else None for i in range(k)]
    n = len(data)
    return Evaluation(list(data.classes), n, loss_sum / n if n else float("nan"),
                      float(np.trace(conf) / n) if n else float("nan"), per_acc, per_count.tolist(), conf, pred,
                      prob, data.labels)
