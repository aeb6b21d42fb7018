"""Heat maps over images in the Predict view and the most-confident-mistakes list.

The computation is engine.saliency's; this module only adapts it to uint8 images as the views hold
them (`Explainer`), runs it in the background so the window never freezes (`HeatMaps`), offers the
choice of method and layer with one sentence on the colours (`SaliencyControls`), and blends the
map over a picture (`overlay_pixmap`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
from PySide6.QtCore import QObject, Qt, Signal, Slot
from PySide6.QtGui import QPixmap
from PySide6.QtWidgets import QCheckBox, QComboBox, QHBoxLayout, QLabel, QVBoxLayout, QWidget

from designer.worker import Job, JobRunner
from engine import saliency as S
from engine.model import Model

METHOD_LABELS = {"occlusion": "Occlusion", "gradcam": "Grad-CAM", "smoothgrad": "SmoothGrad"}
METHOD_HELP = {
    "occlusion": "how much the score falls when a patch is covered",
    "gradcam": "where the chosen layer found evidence for the class",
    "smoothgrad": "how sensitive the score is to each pixel",
}


class Explainer:
    """Heat maps for uint8 images (N, C, H, W) with one trained model and its preprocessing.

    It computes with its own copy of the model, made on first use: the engine's layers keep
    per-call buffers, so the window's model must never run in two threads at once, and a heat map
    (seconds for occlusion on a big colour net) runs in a background `HeatJob` while the window
    keeps predicting with the original. `lock` lets one job at a time use the copy (the Predict
    view and the mistakes list share it)."""

    def __init__(self, model: Any, prep: Any):
        self.source = model
        self.prep = prep
        self.lock = threading.Lock()
        self._copy: Any = None
        names = model.spec.layers
        self.layers = [(i, f"{i}: {names[i].type} {'x'.join(map(str, model.inference.layers[i].output_shape))}")
                       for i in S.spatial_layers(model)]
        #: Grad-CAM's layer unless the user picks another (engine.saliency.default_layer)
        self.default_layer = S.default_layer(model)

    def model(self) -> Any:
        """The private copy (made in the GUI thread: reading weights is safe while the window's
        model evaluates, only its buffers are written)."""
        if self._copy is None:
            src = self.source
            copy = Model(src.spec, dtype=src.dtype)
            copy.load_state_dict(src.state_dict())
            self._copy = copy
        return self._copy

    def heat(self, images: np.ndarray, classes: np.ndarray | list[int], method: str,
             layer: int | None = None, cancel: Callable[[], bool] | None = None) -> np.ndarray:
        """(N, H, W) maps in [0, 1] explaining `classes` (one per image); call `model()` first
        in the GUI thread. Waits for the copy in short slices, so `cancel` is heard at once."""
        model = self._copy if self._copy is not None else self.model()
        while not self.lock.acquire(timeout=0.05):
            if cancel is not None and cancel():
                raise S.SaliencyCancelled("heat map cancelled")
        try:
            x = self.prep.normalize(np.asarray(images))
            maps = S.explain(model, x, method, np.asarray(classes, np.int64), layer, cancel=cancel)
        finally:
            self.lock.release()
        return np.stack([m.heatmap for m in maps])


class HeatJob(Job):
    """One request's heat maps, computed in the job's thread; `serial` names the request."""

    ready = Signal(int, object)
    failed = Signal(int, str)

    def __init__(self, explainer: Explainer, serial: int, images: np.ndarray, classes: np.ndarray,
                 method: str, layer: int | None):
        super().__init__()
        self.explainer, self.serial = explainer, serial
        self.args = (images, classes, method, layer)

    def work(self) -> None:
        try:
            maps = self.explainer.heat(*self.args, cancel=self.cancel_event.is_set)
        except S.SaliencyCancelled:
            return
        except MemoryError:
            self.failed.emit(self.serial, "not enough memory for the heat map")
            return
        except Exception as e:  # one line for the user, never a traceback
            self.failed.emit(self.serial, str(e) or type(e).__name__)
            return
        if not self.cancel_event.is_set():
            self.ready.emit(self.serial, maps)


class HeatMaps(QObject):
    """A view's heat maps in the background: the newest request wins.

    A new request cancels the running job (it stops within one batch of forward passes) and starts
    when that job's thread has ended, so a view never has two threads. The job's signals arrive
    through this object's slots, queued into the GUI thread; `ready`/`failed` then carry only the
    answer to the latest request, so a late result never paints a stale map.
    """

    #: (maps (N, H, W)) for the latest request, in the GUI thread
    ready = Signal(object)
    failed = Signal(str)
    #: True while a request is being computed ("computing..." in the view)
    busy_changed = Signal(bool)

    def __init__(self, name: str, parent: QObject | None = None):
        super().__init__(parent)
        self.name = name
        self.explainer: Explainer | None = None
        self._runner: JobRunner | None = None
        self._serial = 0
        self._pending: tuple | None = None
        self.busy = False

    def set_explainer(self, explainer: Explainer | None) -> None:
        self.cancel()
        self.explainer = explainer

    def request(self, images: np.ndarray, classes: Any, method: str, layer: int | None) -> None:
        """Compute these maps (replacing any request not answered yet)."""
        if self.explainer is None:
            return
        self.explainer.model()  # the copy is made here, in the GUI thread
        self._serial += 1
        self._pending = (self.explainer, self._serial, np.array(images, copy=True),
                         np.asarray(classes, np.int64).copy(), method, layer)
        self._set_busy(True)
        if self._runner is not None and self._runner.running():
            self._runner.job.cancel()  # _ended starts the pending request
        else:
            self._start()

    def cancel(self) -> None:
        """Forget the request: its job stops within a batch and nothing reaches the view."""
        self._forget()
        self._set_busy(False)

    def _forget(self) -> None:
        self._serial += 1
        self._pending = None
        if self._runner is not None:
            self._runner.job.cancel()

    def shutdown(self, timeout_ms: int = 5000) -> bool:
        """Cancel and wait (bounded) for the thread; True when none is left. Emits nothing: the
        view may already be gone when the window closes."""
        self._forget()
        if self._runner is None:
            return True
        return self._runner.shutdown(timeout_ms)

    def _start(self) -> None:
        if self._pending is None:
            return
        explainer, serial, *args = self._pending
        self._pending = None
        job = HeatJob(explainer, serial, *args)
        job.ready.connect(self._job_ready)
        job.failed.connect(self._job_failed)
        self._runner = JobRunner(job, self.name)
        self._runner.finished.connect(self._ended)
        self._runner.start()

    @Slot(int, object)
    def _job_ready(self, serial: int, maps: np.ndarray) -> None:
        if serial == self._serial:
            self._set_busy(False)
            self.ready.emit(maps)

    @Slot(int, str)
    def _job_failed(self, serial: int, message: str) -> None:
        if serial == self._serial:
            self._set_busy(False)
            self.failed.emit(message)

    @Slot()
    def _ended(self) -> None:
        if self.sender() is self._runner:
            self._runner = None
            self._start()

    def _set_busy(self, busy: bool) -> None:
        if busy != self.busy:
            self.busy = busy
            self.busy_changed.emit(busy)


def overlay_pixmap(img: np.ndarray, heat: np.ndarray | None, size: int) -> QPixmap:
    """The image (uint8 (C, H, W)) scaled to about `size`, with the heat map blended over it."""
    from designer.results import to_qimage

    if heat is None:
        pix = QPixmap.fromImage(to_qimage(img))
    else:
        pil = S.overlay(img, heat, alpha=0.55, size=size, color_bar=False)
        pix = QPixmap.fromImage(to_qimage(np.asarray(pil).transpose(2, 0, 1)))
    return pix.scaled(size, size, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.FastTransformation)


class SaliencyControls(QWidget):
    """A "Heat map" toggle, the method, Grad-CAM's layer, and what the colours mean."""

    changed = Signal()

    def __init__(self, parent: QWidget | None = None, compact: bool = False):
        super().__init__(parent)
        self.toggle = QCheckBox("Heat map")
        self.toggle.setToolTip("Colour the pixels by how much they drove the prediction (docs/explain.md)")
        self.method = QComboBox()
        for key in S.METHODS:
            self.method.addItem(METHOD_LABELS[key], key)
        self.method.setToolTip("Occlusion: cover patches and watch the score (slowest, most faithful). "
                               "Grad-CAM: one layer's evidence (fast, coarse). SmoothGrad: pixel sensitivity.")
        self.layer = QComboBox()
        self.layer.setToolTip("Grad-CAM's layer: later layers know more about the class, earlier ones are sharper")
        self.legend = QLabel("")
        self.legend.setWordWrap(True)
        self.legend.setStyleSheet("color: #444;")
        self.legend.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        # room for the longest sentence, so the layout never squeezes it when the text changes
        self.legend.setMinimumHeight(self.legend.fontMetrics().lineSpacing() * (3 if compact else 5))
        self.layer_label = QLabel("Layer:")
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.toggle)
        row.addWidget(self.method, 1)
        layer_row = QHBoxLayout()
        layer_row.setContentsMargins(0, 0, 0, 0)
        layer_row.addWidget(self.layer_label)
        layer_row.addWidget(self.layer, 1)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(row)
        lay.addLayout(layer_row)
        lay.addWidget(self.legend)
        self.compact = compact
        #: a map is being computed in the background
        self.busy = False
        self.toggle.toggled.connect(self._changed)
        self.method.currentIndexChanged.connect(self._changed)
        self.layer.currentIndexChanged.connect(self._changed)
        self.set_layers([])

    def set_layers(self, layers: list[tuple[int, str]], default: int | None = None) -> None:
        """Grad-CAM's choices (index, label); `default` (else the last) is selected."""
        self.layer.blockSignals(True)
        self.layer.clear()
        for index, label in layers:
            self.layer.addItem(label, index)
        at = self.layer.findData(default) if default is not None else -1
        self.layer.setCurrentIndex(at if at >= 0 else len(layers) - 1)
        self.layer.blockSignals(False)
        gradcam = self.method.findData("gradcam")
        item = self.method.model().item(gradcam)
        item.setEnabled(bool(layers))
        if not layers and self.method.currentData() == "gradcam":
            self.method.setCurrentIndex(self.method.findData(S.DEFAULT_METHOD))
        self._sync()

    @property
    def on(self) -> bool:
        return self.toggle.isChecked()

    def choice(self) -> tuple[str, int | None]:
        method = self.method.currentData()
        return method, (self.layer.currentData() if method == "gradcam" else None)

    def set_busy(self, busy: bool) -> None:
        """Say "Computing..." while the view's map is computed in the background."""
        self.busy = busy
        self._sync()

    def _changed(self, *_: Any) -> None:
        self._sync()
        self.changed.emit()

    def _sync(self) -> None:
        method = self.method.currentData()
        self.method.setEnabled(self.on)
        self.layer.setVisible(method == "gradcam")
        self.layer_label.setVisible(method == "gradcam")
        self.layer.setEnabled(self.on)
        if self.on and self.busy:
            self.legend.setText(f"Computing the heat map{'s' if self.compact else ''} "
                                f"({METHOD_LABELS[method]}: {METHOD_HELP[method]})\u2026")
        elif self.on:
            self.legend.setText(f"Yellow: the pixels that drove the prediction most; dark: little or none "
                                f"({METHOD_LABELS[method]}: {METHOD_HELP[method]}).")
        else:
            self.legend.setText("" if self.compact else "Turn on to see which pixels drove the prediction.")
