"""Background work for the training workspace: loading image folders and running the trainer.

Why it is shaped like this:

* Each job is a QObject moved to its own QThread and talks to the GUI **only through signals**
  (queued across threads); it never touches a widget. Control goes the other way through the
  engine's thread-safe calls (`threading.Event`s, the trainer's pause/resume/stop), not through
  queued slots, because the worker thread is busy in its loop and runs no event loop.
* The trainer yields an event per batch (hundreds per second for LeNet-5). Emitting each one would
  flood the GUI's event queue, so batch losses are collected and sent at most every
  `EMIT_INTERVAL` s, and feature maps (a forward pass of one sample) at most every `MAPS_INTERVAL` s.
  What the live views still cost (GUI-thread CPU and GIL on a 2-core machine: about 10 % of the
  trainer's images/s) and the event loop's worst stall are measured by benchmarks/gui_responsiveness.py.
* Stopping is cooperative (after the current batch); closing the window calls `shutdown`, which
  stops the job and joins its thread, so no thread outlives the window.
"""

from __future__ import annotations

import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QObject, Qt, QThread, QTimer, Signal, Slot

from engine.data import DataError, EmptyClassError, ImageSet, LoadCancelled, LoadOptions, load_folder
from engine.errors import EngineError
from engine.folders import data_folders
from engine.trained import TrainedModel

#: Seconds between two batch-progress signals.
EMIT_INTERVAL = 0.25
#: Seconds between two feature-map computations while training.
MAPS_INTERVAL = 0.5
#: Longest the GUI thread blocks at once on a job's thread that has said it is finishing.
FINISH_WAIT_MS = 50


# ----------------------------------------------------------------------------------------------
# Running a job in a thread
# ----------------------------------------------------------------------------------------------
class Job(QObject):
    """Base of background jobs: `run` executes in the job's thread, `done` is emitted last."""

    done = Signal()

    def __init__(self) -> None:
        super().__init__()
        self.cancel_event = threading.Event()
        #: set when the window closes: skip work nobody will see (evaluation, final maps)
        self.closing = False

    @Slot()
    def run(self) -> None:
        try:
            self.work()
        finally:
            self.done.emit()

    def work(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def cancel(self) -> None:
        """Ask the job to stop; thread-safe, returns at once."""
        self.cancel_event.set()


class JobRunner(QObject):
    """Owns one job's QThread: start, and a `shutdown` that is safe to call at any time.

    `finished` is re-emitted from this object (which lives in the GUI thread) after the thread has
    fully ended. Because the notice is addressed to the runner, dropping a replaced runner also
    drops its pending notice: a late "finished" of an old load can never end a newer one.
    """

    #: the job's thread has ended (emitted in the GUI thread)
    finished = Signal()

    def __init__(self, job: Job, name: str):
        super().__init__()
        self.job = job
        self.thread = QThread()
        self.thread.setObjectName(name)
        job.moveToThread(self.thread)
        self.thread.started.connect(job.run)
        # Direct: QThread.quit is thread-safe, and a queued quit would wait for the GUI thread,
        # which may itself be waiting for this thread to finish.
        job.done.connect(self.thread.quit, Qt.ConnectionType.DirectConnection)
        self.thread.finished.connect(self._thread_finished)

    @Slot()
    def _thread_finished(self) -> None:
        # QThread.finished is emitted by the thread just before it ends: make "ended" true first,
        # without blocking the GUI thread on it for longer than a moment (come back instead).
        if not self.thread.wait(FINISH_WAIT_MS):
            QTimer.singleShot(FINISH_WAIT_MS, self._thread_finished)
            return
        self.finished.emit()

    def start(self) -> None:
        self.thread.start()

    def running(self) -> bool:
        return self.thread.isRunning()

    def shutdown(self, timeout_ms: int = 30000) -> bool:
        """Cancel the job and wait for its thread, at most `timeout_ms`; True when it has ended.

        A thread that outlives the wait (a job stuck in a call that cannot be cancelled) is kept
        referenced here for good: destroying a running QThread would abort the whole process."""
        self.job.closing = True
        self.job.cancel()
        if not self.thread.isRunning():
            return True
        self.thread.quit()
        if self.thread.wait(timeout_ms):
            return True
        _ABANDONED.append(self)
        return False


#: Runners whose thread did not end within shutdown's wait (see JobRunner.shutdown).
_ABANDONED: list[JobRunner] = []


# ----------------------------------------------------------------------------------------------
# Loading a folder
# ----------------------------------------------------------------------------------------------
@dataclass
class LoadedData:
    """What the data panel loaded: the images at the design's input size, plus what it noticed."""

    folder: Path
    train: ImageSet
    val: ImageSet | None
    val_folder: Path | None
    input_shape: tuple[int, int, int]
    #: share of a sample of the images that carry colour (None when not checked)
    colour_share: float | None = None
    #: median (width, height) of that sample as stored, before resizing
    source_size: tuple[int, int] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        return list(self.train.classes)


def sample_images(paths: list[str], sample: int = 24) -> tuple[float | None, tuple[int, int] | None]:
    """(colour share, median (width, height)) of a spread-out sample of the files.

    The colour share is the fraction whose pixels really differ between R, G and B: the loader
    converts everything to the design's channels, so a colour folder loaded into a 1-channel design
    loads fine but silently loses colour. The size says how much a small input shrinks the images.
    """
    from engine import safeio
    from engine.data import open_image_bytes

    if not paths:
        return None, None
    pick = [paths[int(i)] for i in np.linspace(0, len(paths) - 1, min(sample, len(paths))).round()]
    colourful = seen = 0
    sizes: list[tuple[int, int]] = []
    for p in pick:
        try:
            # the one safe read: a named pipe called x.png must not hang the window's worker
            with open_image_bytes(safeio.read_bytes(p, "image")) as im:
                sizes.append(im.size)
                im.draft("RGB", (64, 64))
                im.thumbnail((64, 64))
                a = np.asarray(im.convert("RGB"), dtype=np.int16)
        except Exception:  # unreadable files are the loader's report's business
            continue
        seen += 1
        if np.abs(a[..., 0] - a[..., 1]).mean() + np.abs(a[..., 1] - a[..., 2]).mean() > 3.0:
            colourful += 1
    if not seen:
        return None, None
    w, h = (int(v) for v in np.median(np.array(sizes), axis=0))
    return colourful / seen, (w, h)


class LoadJob(Job):
    """Decode a folder (and its validation folder) at the design's input size, in the background."""

    progress = Signal(int, int)
    loaded = Signal(object)
    failed = Signal(str)
    #: class folders without images (emitted just before `failed`): the panel offers to skip them
    empty_classes = Signal(list)
    cancelled = Signal()

    def __init__(self, folder: str | Path, input_shape: tuple[int, int, int], options: LoadOptions | None = None):
        super().__init__()
        self.folder = Path(folder)
        #: how the training folder is read (skip empty classes, ...); its validation folder is read whole
        self.options = options or LoadOptions()
        self.input_shape = tuple(int(v) for v in input_shape)

    def work(self) -> None:
        try:
            folders = data_folders(self.folder)
            train_dir, val_dir = folders.train, folders.val
            last = [0.0]

            def progress(done: int, total: int) -> None:
                now = time.monotonic()
                if now - last[0] >= 0.05 or done == total:
                    last[0] = now
                    self.progress.emit(done, total)

            train = load_folder(train_dir, self.input_shape, options=self.options, progress=progress,
                                cancel=self.cancel_event)
            val = None
            if val_dir is not None:
                val = load_folder(val_dir, self.input_shape, classes=train.classes, progress=progress,
                                  cancel=self.cancel_event, what="validation folder")
            share, size = sample_images(train.paths)
            self.loaded.emit(LoadedData(self.folder, train, val, val_dir, self.input_shape, share, size))
        except LoadCancelled:
            self.cancelled.emit()
        except EmptyClassError as e:
            self.empty_classes.emit(list(e.folders))
            self.failed.emit(str(e))
        except (DataError, EngineError) as e:
            self.failed.emit(str(e))
        except OSError as e:
            self.failed.emit(f"cannot read {self.folder}: {e.strerror or e}")
        except MemoryError:
            self.failed.emit(f"not enough memory to load {self.folder}: try a smaller input size")
        except Exception as e:  # a bug, but the window must survive it with a readable message
            traceback.print_exc()
            self.failed.emit(f"loading {self.folder} failed: {type(e).__name__}: {e}")


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------
#: Batches of a run left out of its ETA: the first ones pay one-time costs (allocations, caches,
#: the helper process starting) and would make the first estimate far too long.
ETA_WARMUP = 3


class Eta:
    """Seconds left in a run, from the time per batch measured after the warm-up batches.

    `elapsed` is the trainer's run time (pauses excluded; validation included once an epoch has
    ended, so the rate then carries its share). None until there is a measured batch to go by.
    """

    def __init__(self, warmup: int = ETA_WARMUP) -> None:
        self.warmup = warmup
        self._base: tuple[int, float] | None = None

    def update(self, step: int, total_steps: int, elapsed: float) -> float | None:
        if step <= self.warmup or self._base is None:
            self._base = (step, elapsed)
            return None
        s0, t0 = self._base
        per_step = (elapsed - t0) / (step - s0)
        return max(0.0, per_step * (total_steps - step))


def map_layers(spec: Any) -> list[int]:
    """Layers whose outputs are shown as feature maps (their registry entry says so)."""
    return [i for i, layer in enumerate(spec.layers) if layer.shows_feature_maps]


def first_conv(spec: Any) -> int | None:
    """The first layer whose learned filters the window draws."""
    return next((i for i, layer in enumerate(spec.layers) if layer.shows_filters), None)


def feature_maps(model: Any, x: np.ndarray) -> tuple[list[tuple[int, str, np.ndarray]], np.ndarray | None]:
    """Conv/Pool outputs of one sample (1, C, H, W) and the first conv's weight, as copies."""
    spec = model.spec
    outs = model.activations(x)
    maps = [(i, f"{i} {spec.layers[i].summary()}", np.array(outs[i][0], dtype=np.float32, copy=True))
            for i in map_layers(spec)]
    k = first_conv(spec)
    weight = None
    if k is not None:
        # only this array, not a state_dict() copy of every weight, twice a second
        w = model.parameters().get(f"layers.{k}.weight")
        weight = None if w is None else np.array(w, dtype=np.float32, copy=True)
    return maps, weight



@dataclass
class TrainRequest:
    """Everything a run needs, captured at Start so later edits of the design cannot race it."""

    spec: Any
    train: ImageSet
    #: a validation folder's images, or None to let the trainer split `val_split` off `train`
    val: ImageSet | None
    settings: dict[str, Any]
    #: a trained model to train further (its weights, classes, preprocessing and history go on)
    start: TrainedModel | None = None
    #: starting weights for a fresh run (engine.transfer's, for an edited design); not with `start`
    initial_state: dict[str, np.ndarray] | None = None
    #: one preprocessed sample (1, C, H, W) for the live feature maps, and its uint8 image
    sample: np.ndarray | None = None
    sample_image: np.ndarray | None = None
    #: layers whose weights stay fixed (engine.transfer), and where the starting weights came from
    frozen: list[int] = field(default_factory=list)
    init_from: str | None = None


@dataclass
class RunResult:
    """The training job's last word (TrainJob.finished_run)."""

    status: str  # engine.training.Finished.status, or "failed" when training could not start
    message: str
    #: the model the run produced (kept when stopped or failed after some training); None if it never started
    trained: TrainedModel | None = None
    details: str = ""
    #: the model's results on the validation (else training) images: classes, labels, probs, images, ...
    evaluation: dict[str, Any] | None = None
    run_id: Any = None


class TrainJob(Job):
    """Runs engine.training.Trainer and turns its events into throttled signals for the GUI."""

    #: (points [(epoch position, loss)], progress dict) at most every EMIT_INTERVAL seconds
    batches = Signal(object, object)
    #: per-epoch metrics dict (EpochEnd.to_dict() plus "epochs")
    epoch_done = Signal(object)
    #: {"sample", "maps": [(index, title, (C, H, W))], "weight"} at most every MAPS_INTERVAL seconds
    maps_ready = Signal(object)
    #: the run's last word: a RunResult
    finished_run = Signal(object)
    paused_changed = Signal(bool)
    #: the trainer's notes before the first batch (no room for a validation split, one process only, ...)
    warnings = Signal(object)

    def __init__(self, request: TrainRequest):
        super().__init__()
        self.request = request
        self.trainer: Any = None
        self._lock = threading.Lock()
        self._paused = False
        #: (preprocessed sample, its uint8 image), replaced as one tuple so the pair never mixes
        self._sample = (request.sample, request.sample_image)
        #: counters the tests and the benchmark read
        self.batch_events = 0
        self.emitted = 0

    # --- control from the GUI thread (thread-safe) ----------------------------------------------
    def pause(self) -> None:
        with self._lock:
            self._paused = True
            if self.trainer is not None:
                self.trainer.pause()
        self.paused_changed.emit(True)

    def resume(self) -> None:
        with self._lock:
            self._paused = False
            if self.trainer is not None:
                self.trainer.resume()
        self.paused_changed.emit(False)

    def stop(self) -> None:
        self.cancel()

    def cancel(self) -> None:
        with self._lock:
            self.cancel_event.set()
            if self.trainer is not None:
                self.trainer.stop()

    def set_sample(self, x: np.ndarray | None, image: np.ndarray | None = None) -> None:
        """Show this sample's maps from now on (picked up between two batches)."""
        self._sample = (x, image if image is not None else self._sample[1])

    @property
    def paused(self) -> bool:
        return self._paused

    # --- the run ------------------------------------------------------------------------------------
    def work(self) -> None:
        from engine.training import TrainConfig, Trainer, evaluate

        req, start = self.request, self.request.start
        try:
            config = TrainConfig.from_dict(req.settings)
            trainer = Trainer(req.spec, req.train, req.val, config,
                              initial_state=start.state if start is not None else req.initial_state,
                              history=start.history if start is not None else None,
                              classes=start.classes if start is not None else None,
                              prep=start.preprocessing if start is not None else None,
                              frozen=req.frozen, init_from=req.init_from)
        except MemoryError:
            self.finished_run.emit(RunResult("failed", "out of memory before training: lower the batch or image size"))
            return
        except EngineError as e:
            self.finished_run.emit(RunResult("failed", str(e)))
            return
        except Exception as e:  # a bug must not kill the thread silently
            traceback.print_exc()
            self.finished_run.emit(RunResult("failed", f"training could not start: {type(e).__name__}: {e}"))
            return
        from engine.runs import RunRecorder

        # every run of the window is remembered (engine.runs); the store keeps a copy of the model
        self.recorder = RunRecorder(trainer, "window").start()
        with self._lock:
            self.trainer = trainer
            if self._paused:
                trainer.pause()
            if self.cancel_event.is_set():
                trainer.stop()

        try:
            finished = self._run(trainer)
            crash = ""
        except Exception as e:  # a bug here must still end the run with a message and a usable model
            traceback.print_exc()
            finished, crash = None, f"training stopped: {type(e).__name__}: {e}"
            trainer.stop()
        self.recorder.finish(keep_model=True, status=None if finished else "failed",
                             message=None if finished else crash)
        if self.recorder.warning:
            self.warnings.emit([self.recorder.warning])

        result = RunResult(finished.status if finished else "failed",
                           finished.message if finished else (crash or "training ended without a result"),
                           trainer.trained(), finished.details if finished else "", None, self.recorder.run_id)
        # Results on the validation images (or the training images when there are none), unless the
        # window is closing: then nobody will look at them.
        if not self.closing:
            data = trainer.val_data if trainer.val_data is not None else trainer.train_data
            title = "validation" if trainer.val_data is not None else "training"
            try:
                ev_ = evaluate(trainer.model, data, trainer.prep, cancel=lambda: self.closing)
                result.evaluation = {"classes": ev_.classes, "labels": ev_.labels, "probs": ev_.probabilities,
                                        "images": data.images, "paths": list(data.paths), "loss": ev_.loss,
                                        "accuracy": ev_.accuracy, "title": title}
            except (EngineError, MemoryError):
                pass
            self._emit_maps(trainer.model)
        self.finished_run.emit(result)

    def _run(self, trainer: Any) -> Any:
        """Iterate the trainer's events, forwarding them throttled; returns the Finished event."""
        from engine.training import BatchEnd, EpochEnd, Finished, Started

        points: list[tuple[float, float]] = []
        last_emit = last_maps = 0.0
        progress: dict[str, Any] = {}
        finished = None
        eta = Eta()
        start = self.request.start  # when continuing, the epochs of earlier runs come first
        first_epoch = (len(start.history) if start is not None else 0) + 1
        for ev in trainer.events():
            if isinstance(ev, BatchEnd):
                self.batch_events += 1
                offset = ev.epoch - 1
                points.append((offset + ev.batch / ev.batches, ev.loss))
                step = (ev.epoch - first_epoch) * ev.batches + ev.batch
                left = eta.update(step, (ev.epochs - first_epoch + 1) * ev.batches, ev.elapsed)
                now = time.monotonic()
                # kept for every batch: the read-out a Stop leaves must be the last batch's (epoch 8,
                # batch 3), not the last one sent (epoch 7, batch 12)
                progress = {"epoch": ev.epoch, "epochs": ev.epochs, "batch": ev.batch, "batches": ev.batches,
                            "loss": ev.epoch_loss, "accuracy": ev.epoch_accuracy,
                            "images_per_second": ev.images_per_second, "elapsed": ev.elapsed,
                            "eta": left, "lr": ev.lr}
                if now - last_emit >= EMIT_INTERVAL or ev.batch == ev.batches:
                    self.batches.emit(points, progress)
                    self.emitted += 1
                    points = []
                    last_emit = now
                if now - last_maps >= MAPS_INTERVAL:
                    self._emit_maps(trainer.model)
                    last_maps = time.monotonic()
            elif isinstance(ev, EpochEnd):
                if points:
                    self.batches.emit(points, progress)
                    points = []
                d = ev.to_dict()
                d["epochs"] = ev.epochs
                d["health"] = [asdict(w) for w in ev.health]  # the warnings with their one-click fixes
                d["best"] = ev.best
                self.recorder.epoch()
                self.epoch_done.emit(d)
                self._emit_maps(trainer.model)
                last_maps = time.monotonic()
            elif isinstance(ev, Finished):
                finished = ev
            elif isinstance(ev, Started) and ev.warnings:
                self.warnings.emit(list(ev.warnings))
        if points:
            self.batches.emit(points, progress)
        return finished

    def _emit_maps(self, model: Any) -> None:
        x, image = self._sample
        if x is None:
            return
        try:
            maps, weight = feature_maps(model, x)
        except Exception:  # the maps are a view; a failure there must never stop training
            return
        self.maps_ready.emit({"sample": image, "maps": maps, "weight": weight})


def _load_notes(data: ImageSet) -> list[str]:
    """What the scores leave out, in a few words for a one-line message: the model's classes with no
    image in the folder (an empty or missing class folder) and files that could not be read."""
    counts = np.bincount(data.labels, minlength=len(data.classes))
    absent = [name for name, n in zip(data.classes, counts, strict=True) if n == 0]
    notes = [f"no images of class{'es' if len(absent) > 1 else ''} {', '.join(absent)}"] if absent else []
    n = len(data.report.skipped) if data.report is not None else 0
    return notes + ([f"{n} file{'' if n == 1 else 's'} skipped (not readable images)"] if n else [])


class EvalJob(Job):
    """engine.training.evaluate (the CLI's `evaluate`) in the background, on a folder it loads with
    the model's own preprocessing and class list.

    It evaluates a Model of its own, built here from the weights: a Model keeps per-call buffers, so
    one shared with the window (feature maps, Predict) must never run in two threads at once, and
    the window then never has to wait for this job.
    """

    result = Signal(object)
    failed = Signal(str)

    def __init__(self, trained: TrainedModel, folder: Path):
        super().__init__()
        self.trained, self.folder = trained, Path(folder)

    def _load(self) -> tuple[ImageSet, str, str]:
        """(images, title, what they are) of the folder: its validation part when it has one."""
        folders = data_folders(self.folder)
        train_dir, val_dir = folders.train, folders.val
        target, title = (val_dir, "validation-folder") if val_dir is not None else (train_dir, "folder")
        # An empty class folder holds nothing to score: left out (and said), not a reason to refuse.
        data = load_folder(target, prep=self.trained.preprocessing, classes=self.trained.classes,
                           options=LoadOptions(skip_empty=True), cancel=self.cancel_event, what="evaluation folder")
        return data, title, str(target)

    def work(self) -> None:
        from engine.training import evaluate

        t0 = time.perf_counter()
        try:
            data, title, source = self._load()
            model = self.trained.build_model()
            ev = evaluate(model, data, self.trained.preprocessing, cancel=self.cancel_event.is_set)
        except LoadCancelled:
            return
        except MemoryError:
            self.failed.emit("out of memory while evaluating: try a smaller folder")
            return
        except (EngineError, ValueError) as e:
            if not self.cancel_event.is_set():
                self.failed.emit(str(e))
            return
        except OSError as e:
            self.failed.emit(f"cannot read {self.folder}: {e.strerror or e}")
            return
        self.result.emit({"classes": ev.classes, "labels": ev.labels, "probs": ev.probabilities,
                          "images": data.images, "paths": list(data.paths), "loss": ev.loss,
                          "accuracy": ev.accuracy, "title": title, "source": source,
                          "seconds": time.perf_counter() - t0, "notes": _load_notes(data)})
