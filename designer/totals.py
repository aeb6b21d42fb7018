"""The totals bar: parameters, MACs, memory, and an epoch-time estimate measured on this machine.

Parameters, MACs and memory are the engine's Inference totals. The epoch estimate times a few
real training steps of engine.model.Model on random data of the design's shape in a background
thread (never in the GUI thread), debounced after edits, so a too-slow design is visible before
anyone presses Train.
"""

from __future__ import annotations

import math
import os
import threading
import time
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Qt, QTimer, Signal
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QSizePolicy, QVBoxLayout, QWidget

from designer.document import Change, Document
from engine.preprocess import IMAGE_EXTENSIONS
from engine.shapes import human_bytes, human_count
from engine.spec import Spec

DEFAULT_BATCH = 64
ESTIMATE_DELAY_MS = 700
#: Stop timing after this long (a slow design still gets an estimate from one step).
ESTIMATE_BUDGET_S = 1.0

_count_cache: dict[str, tuple[float, int]] = {}


def count_images(folder: Path | None) -> int:
    """Image files under `folder` (what one epoch will read), cached by the folder's mtime."""
    if folder is None or not folder.is_dir():
        return 0
    try:
        mtime = folder.stat().st_mtime
    except OSError:
        return 0
    key = str(folder)
    hit = _count_cache.get(key)
    if hit and hit[0] == mtime:
        return hit[1]
    n = 0
    for _root, _dirs, files in os.walk(folder):
        n += sum(1 for f in files if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS)
    _count_cache[key] = (mtime, n)
    return n


def batch_size_of(spec: Spec) -> int:
    bs = spec.training.get("batch_size", DEFAULT_BATCH)
    return bs if isinstance(bs, int) and not isinstance(bs, bool) and bs > 0 else DEFAULT_BATCH


def time_training_step(spec: Spec, batch_size: int, cancel: threading.Event | None = None) -> float | None:
    """Seconds per training batch of this design (median of a few steps after a warm-up).

    Returns None if the engine cannot train it; raises ImportError if engine.model is absent.
    """
    import numpy as np

    from engine.model import Model
    from engine.optimizers import make_optimizer

    model = Model(spec, seed=0)
    try:
        opt = make_optimizer("adam", model, lr=1e-3)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((batch_size, *spec.input_shape)).astype(np.float32)
        y = rng.integers(0, max(int(model.num_classes), 2), size=batch_size)
        model.train_step(x, y, opt)  # warm-up: allocations, caches
        times: list[float] = []
        start = time.perf_counter()
        while len(times) < 5 and (time.perf_counter() - start) < ESTIMATE_BUDGET_S:
            if cancel is not None and cancel.is_set():
                return None
            t0 = time.perf_counter()
            model.train_step(x, y, opt)
            times.append(time.perf_counter() - t0)
        times.sort()
        return times[len(times) // 2]
    finally:
        close = getattr(model, "close", None)
        if close is not None:
            close()


class EpochEstimator(QObject):
    """Runs time_training_step in one background thread; the newest request wins."""

    #: (generation, seconds per batch or None, message or "")
    finished = Signal(int, object, str)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._thread: threading.Thread | None = None
        self._cancel = threading.Event()
        self._pending: tuple[int, dict[str, Any], int] | None = None
        self._lock = threading.Lock()
        self._closed = False
        #: while training runs nothing is measured: the measurement would compete with the run for
        #: the same cores (slowing it, and skewing its ETA) and measure a busy machine
        self._held = False

    def request(self, generation: int, spec: Spec, batch_size: int) -> None:
        with self._lock:
            if self._closed:
                return
            self._pending = (generation, spec.to_dict(), batch_size)
            if self._thread is not None and self._thread.is_alive():
                return
            self._start_locked()

    def hold(self, on: bool) -> None:
        """Hold measuring (True: the one under way stops after its step) or resume with the newest request."""
        with self._lock:
            self._held = on
            if on:
                self._cancel.set()
            elif not self._closed:
                if self._thread is None or not self._thread.is_alive():
                    self._cancel.clear()
                    self._start_locked()

    @property
    def held(self) -> bool:
        return self._held

    @property
    def measuring(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _start_locked(self) -> None:
        if self._held:
            return
        job, self._pending = self._pending, None
        if job is None:
            return
        self._cancel.clear()
        self._thread = threading.Thread(target=self._run, args=job, name="epoch-estimate", daemon=True)
        self._thread.start()

    def _run(self, generation: int, spec_dict: dict[str, Any], batch_size: int) -> None:
        seconds: float | None = None
        message = ""
        try:
            seconds = time_training_step(Spec.from_dict(spec_dict), batch_size, self._cancel)
        except ImportError:
            message = "unavailable: the training engine is not installed"
        except MemoryError:
            message = "a training batch does not fit in memory"
        except Exception as e:  # the estimate must never take the window down
            message = f"unavailable ({type(e).__name__}: {e})"
        with self._lock:
            if self._closed:
                return
            if self._held and seconds is None and not message:
                self._pending = self._pending or (generation, spec_dict, batch_size)  # measure it later
                return
            self.finished.emit(generation, seconds, message)
            self._start_locked()

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop after the current step and join, so no thread outlives the window."""
        with self._lock:
            self._closed = True
            self._pending = None
            thread = self._thread
        self._cancel.set()
        if thread is not None:
            thread.join(timeout)


class _Stat(QWidget):
    def __init__(self, caption: str, tip: str) -> None:
        super().__init__()
        lay = QVBoxLayout(self)
        lay.setContentsMargins(8, 2, 8, 2)
        lay.setSpacing(0)
        self.caption = QLabel(caption)
        font = self.caption.font()
        font.setPointSizeF(font.pointSizeF() * 0.85)
        self.caption.setFont(font)
        self.caption.setEnabled(False)
        self.value = QLabel("–")
        bold = self.value.font()
        bold.setBold(True)
        self.value.setFont(bold)
        self.value.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        lay.addWidget(self.caption)
        lay.addWidget(self.value)
        self.setToolTip(tip)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Fixed)

    def set(self, text: str, tip: str | None = None) -> None:
        self.value.setText(text)
        if tip is not None:
            self.value.setToolTip(tip)


class TotalsBar(QFrame):
    def __init__(self, doc: Document, parent: QWidget | None = None, estimate: bool = True) -> None:
        super().__init__(parent)
        self.doc = doc
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.setAccessibleName("Totals")
        lay = QHBoxLayout(self)
        lay.setContentsMargins(2, 2, 2, 2)
        lay.setSpacing(0)
        self.trainable = _Stat("Trainable params", "Weights and biases learned by training")
        self.non_trainable = _Stat("Non-trainable", "BatchNorm running statistics (updated, not trained)")
        self.macs = _Stat("MACs / image", "Multiply-accumulate operations for one image's forward pass")
        self.weights = _Stat("Weights memory", "All parameters as float32")
        self.activations = _Stat("Activations / image", "Input plus every layer's output for one image, float32")
        self.batch = _Stat("Training batch", "Rough memory of one training step: activations and their "
                           "gradients for the batch, plus weights, gradients and Adam's two moments")
        self.epoch = _Stat("Epoch time (est.)", "Measured: a few real training steps on random data of "
                           "this shape, times the batches in the dataset folder")
        stats = (self.trainable, self.non_trainable, self.macs, self.weights, self.activations, self.batch,
                 self.epoch)
        for i, s in enumerate(stats):
            if i:
                line = QFrame()
                line.setFrameShape(QFrame.Shape.VLine)
                line.setFrameShadow(QFrame.Shadow.Sunken)
                lay.addWidget(line)
            lay.addWidget(s, 2 if s is self.epoch else 1)
        self._generation = 0
        self._seconds_per_batch: float | None = None
        self._estimate_message = ""
        self.estimator = EpochEstimator(self) if estimate else None
        if self.estimator is not None:
            self.estimator.finished.connect(self._estimate_done)
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(ESTIMATE_DELAY_MS)
        self._timer.timeout.connect(self._request_estimate)
        doc.spec_changed.connect(self._changed)
        self.refresh()
        self._schedule()

    def _changed(self, change: Change) -> None:
        self.refresh()
        self._schedule()

    def _schedule(self) -> None:
        self._generation += 1
        self._seconds_per_batch = None
        self._estimate_message = ""
        self._update_epoch()
        if self.estimator is not None:
            self._timer.start()

    def hold_estimate(self, on: bool) -> None:
        """While training runs (on=True), measure nothing; the figure is measured again afterwards."""
        if self.estimator is None:
            return
        self.estimator.hold(on)
        if not on:
            self._schedule()

    def refresh(self) -> None:
        inf = self.doc.inference
        valid = inf.valid
        # While a layer is invalid the totals cover the layers before it: a lower bound.
        at_least = "" if valid else "≥ "
        self.trainable.set(f"{at_least}{inf.trainable_params:,}", f"{inf.trainable_params:,}")
        self.non_trainable.set(f"{at_least}{inf.non_trainable_params:,}")
        self.macs.set(at_least + human_count(inf.macs), f"{inf.macs:,}")
        self.weights.set(at_least + human_bytes(inf.weights_bytes))
        self.activations.set(at_least + human_bytes(inf.activation_bytes), f"{inf.activation_values:,} values")
        bs = batch_size_of(self.doc.spec)
        self.batch.caption.setText(f"Training batch of {bs}")
        self.batch.set((at_least or "~") + human_bytes(inf.training_batch_bytes(bs)))
        tip = "" if valid else "≥: counts the layers before the problem only: " + (inf.error_message or "")
        self.setToolTip(tip)
        self._update_epoch()

    def _request_estimate(self) -> None:
        inf = self.doc.inference
        if not inf.valid or self.estimator is None:
            self._update_epoch()
            return
        self.epoch.set("measured after training" if self.estimator.held else "measuring…")
        self.estimator.request(self._generation, self.doc.spec, batch_size_of(self.doc.spec))

    def _estimate_done(self, generation: int, seconds: object, message: str) -> None:
        if generation != self._generation:
            return  # an older design's figure
        self._seconds_per_batch = seconds if isinstance(seconds, float) else None
        self._estimate_message = message
        self._update_epoch()

    @property
    def seconds_per_batch(self) -> float | None:
        return self._seconds_per_batch

    def _update_epoch(self) -> None:
        inf = self.doc.inference
        if not inf.valid:
            self.epoch.set("– (invalid design)", inf.error_message)
            return
        if self._estimate_message:
            self.epoch.set(self._estimate_message.split(":")[0], self._estimate_message)
            return
        spb = self._seconds_per_batch
        if spb is None:
            self.epoch.set("measuring…" if self.estimator is not None else "unavailable")
            return
        bs = batch_size_of(self.doc.spec)
        n = count_images(self.doc.data_dir)
        if n == 0:
            self.epoch.set(f"{spb * 1000:.0f} ms / batch", "No dataset folder yet: time for one training batch "
                           f"of {bs} images")
            return
        batches = math.ceil(n / bs)
        total = spb * batches
        text = f"~{total:.1f} s" if total < 90 else f"~{total / 60:.1f} min"
        self.epoch.set(f"{text} ({n:,} images)",
                       f"{batches} batches of {bs} x {spb * 1000:.0f} ms measured on this machine "
                       f"(whole folder, before any validation split)")

    def shutdown(self) -> None:
        self._timer.stop()
        if self.estimator is not None:
            self.estimator.shutdown()
