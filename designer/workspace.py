"""The training workspace: data on the left, the network learning on the right.

It assembles the data panel, the training form, live curves, feature maps and filters, results
and Predict, and owns the background jobs. Training itself is the engine's trainer (the same one
the CLI uses) running in a TrainJob; this module only starts, steers and displays it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QEvent, QObject, Qt, QTimer, Signal
from PySide6.QtGui import QUndoStack
from PySide6.QtWidgets import (
    QCheckBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QMessageBox,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QSplitter,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from designer.data_panel import DataPanel
from designer.feature_maps import FeatureMapsView, FiltersView, LayerMaps
from designer.plots import LivePlots
from designer.results import PredictView, ResultsView, thumbnail
from designer.training_panel import TrainingPanel, fmt_duration
from designer.worker import EvalJob, JobRunner, LoadedData, TrainJob, TrainRequest, feature_maps
from engine.data import DataError, Preprocessing, load_image, split_stratified
from engine.errors import EngineError

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_DATA = ROOT / "resources" / "sample_mnist"
#: Quiet time after the last design edit before the workspace follows it.
SYNC_DELAY_MS = 120


class _FitLayout(QVBoxLayout):
    """The left column's layout. Its word-wrapped labels would make QScrollArea size the column by
    height-for-width, i.e. at its *preferred* height (scrolling the buttons out of sight at
    1280x800); without height-for-width it is fitted to the viewport and scrolls only below its
    minimum size."""

    def hasHeightForWidth(self) -> bool:  # noqa: N802 - Qt naming
        return False


class TrainingWorkspace(QWidget):
    """The Train tab. `document` is the designer's Document; `undo_stack` receives one-click fixes."""

    #: A line for the window's status bar.
    status_message = Signal(str)
    #: Training started (True) or ended (False).
    training_changed = Signal(bool)
    #: A trained model is available (after training or opening a .cnnd).
    model_ready = Signal()
    #: An evaluation finished (dict: classes, labels, probs, images, loss, accuracy, title).
    evaluated = Signal(object)

    def __init__(self, document: Any, undo_stack: QUndoStack | None = None, parent: QWidget | None = None):
        super().__init__(parent)
        self.document = document
        self.undo_stack = undo_stack
        self.model: Any = None
        self.model_classes: list[str] = []
        self.model_prep: Preprocessing | None = None
        self.model_spec: Any = None
        self.history: list[dict[str, Any]] = []
        self.train_settings: dict[str, Any] = {}
        self.model_path: Path | None = None
        self._runner: JobRunner | None = None
        self._job: TrainJob | None = None
        self._start_when_loaded = False
        self._sample: np.ndarray | None = None  # uint8 (C, H, W)
        self._sample_source: Any = None
        self._run_prep: Preprocessing | None = None
        self._eval: dict[str, Any] | None = None
        self.last_error: str | None = None
        self.setAcceptDrops(True)

        # --- left column: data and training ---
        self.data_panel = DataPanel(document, undo_stack)
        self.panel = TrainingPanel()
        self.continue_box = QCheckBox("Continue from the current weights")
        self.continue_box.setToolTip("Start from the trained (or opened) model's weights instead of new random ones")
        self.continue_box.setEnabled(False)
        self.save_button = QPushButton("Save model...")
        self.save_button.setToolTip("Save the trained model (architecture, weights, classes, preprocessing) as .cnnd")
        self.open_button = QPushButton("Open model...")
        self.open_button.setToolTip("Open a .cnnd to look inside it, evaluate it on the folder, or continue training")
        self.eval_button = QPushButton("Evaluate on folder")
        self.eval_button.setToolTip("Run the model on the loaded folder's validation images and show the results")
        self.save_button.clicked.connect(lambda: self.save_model_dialog())
        self.open_button.clicked.connect(lambda: self.open_model_dialog())
        self.eval_button.clicked.connect(self.evaluate_current)
        mrow = QHBoxLayout()
        mrow.addWidget(self.save_button)
        mrow.addWidget(self.open_button)
        mrow.addWidget(self.eval_button)
        left = QWidget()
        ll = _FitLayout(left)
        ll.setContentsMargins(6, 6, 6, 6)
        ll.addWidget(self.data_panel, 1)
        ll.addWidget(self.panel)
        ll.addWidget(self.continue_box)
        ll.addLayout(mrow)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(left)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setMinimumWidth(360)

        # --- right: live view, results, predict ---
        self.plots = LivePlots()
        self.maps = FeatureMapsView()
        self.filters = FiltersView()
        self.sample_spin = QSpinBox(minimum=0, maximum=0)
        self.sample_spin.setToolTip("Which validation image the feature maps show")
        self.sample_spin.valueChanged.connect(self._sample_changed)
        self.sample_thumb = QLabel()
        self.sample_thumb.setFixedSize(32, 32)
        self.sample_info = QLabel("")
        srow = QHBoxLayout()
        srow.addWidget(QLabel("Feature maps of sample"))
        srow.addWidget(self.sample_spin)
        srow.addWidget(self.sample_thumb)
        srow.addWidget(self.sample_info, 1)
        srow.addWidget(QLabel("Click a layer to see its maps large."))
        maps_box = QWidget()
        ml = QVBoxLayout(maps_box)
        ml.setContentsMargins(0, 0, 0, 0)
        ml.addLayout(srow)
        # overview | (clicked layer large over the first conv's filters)
        side = QSplitter(Qt.Orientation.Vertical)
        side.addWidget(self.maps.large)
        side.addWidget(self.filters)
        side.setStretchFactor(0, 3)
        side.setStretchFactor(1, 2)
        inner = QSplitter(Qt.Orientation.Horizontal)
        inner.addWidget(self.maps)
        inner.addWidget(side)
        inner.setStretchFactor(0, 3)
        inner.setStretchFactor(1, 2)
        ml.addWidget(inner, 1)
        vsplit = QSplitter(Qt.Orientation.Vertical)
        vsplit.addWidget(self.plots)
        vsplit.addWidget(maps_box)
        vsplit.setStretchFactor(0, 2)
        vsplit.setStretchFactor(1, 3)
        live = QWidget()
        lv = QVBoxLayout(live)
        lv.setContentsMargins(4, 4, 4, 0)
        lv.addWidget(self.panel.progress_box)
        lv.addWidget(vsplit, 1)
        self.results = ResultsView()
        self.predict = PredictView()
        self.tabs = QTabWidget()
        self.tabs.addTab(live, "Live training")
        self.tabs.addTab(self.results, "Results")
        self.tabs.addTab(self.predict, "Predict")

        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(scroll)
        split.addWidget(self.tabs)
        split.setStretchFactor(0, 0)
        split.setStretchFactor(1, 1)
        split.setSizes([380, 900])
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(split)

        # --- wiring ---
        self.panel.start_requested.connect(self.start_training)
        self.panel.pause_requested.connect(self.pause)
        self.panel.resume_requested.connect(self.resume)
        self.panel.stop_requested.connect(self.stop)
        self.panel.settings_changed.connect(self._settings_changed)
        self.data_panel.data_ready.connect(self._data_ready)
        self.data_panel.load_failed.connect(self._load_failed)
        self.data_panel.busy_changed.connect(self._busy_changed)
        self.data_panel.problems_changed.connect(lambda _p: self.refresh_state())
        self._last_input = tuple(document.spec.input_shape)
        self._reset_pending = False
        self._maps_stale = True
        self._sync_timer = QTimer(self)
        self._sync_timer.setSingleShot(True)
        self._sync_timer.setInterval(SYNC_DELAY_MS)
        self._sync_timer.timeout.connect(self._sync_design)
        document.spec_changed.connect(self._spec_changed)
        self.panel.set_settings(document.spec.training)
        self.data_panel.val_split = self.panel.settings()["val_split"]
        self.refresh_state()

    # --- document ------------------------------------------------------------------------------------
    def load_default_folder(self) -> None:
        """Load the document's folder (the built-in sample when it has none), once, on first show."""
        if self.data_panel.folder is None:
            folder = getattr(self.document, "data_dir", None) or SAMPLE_DATA
            self.data_panel.set_folder(folder, remember=False)

    def showEvent(self, e):  # noqa: N802 - Qt naming
        super().showEvent(e)
        if self._sync_timer.isActive():
            self.sync_now()
        elif self._maps_stale:
            self._maps_stale = False
            self.prepare_maps()
        self.load_default_folder()

    def _spec_changed(self, change: Any = None) -> None:
        """Follow the design. Every edit in the Design tab lands here, so the work is coalesced
        into one `_sync_design` shortly after the last edit (typing "128" is one sync, and an edit
        never waits for the workspace)."""
        kind = getattr(change, "kind", "reset")
        if kind == "meta":
            # the form itself, or the folder: pick up a folder chosen elsewhere (File > Open data)
            d = getattr(self.document, "data_dir", None)
            if not self.training and d is not None and self.data_panel.folder is not None \
                    and Path(d) != self.data_panel.folder:
                self.data_panel.set_folder(d, remember=False)
            return
        if kind == "reset":
            self._reset_pending = True
            mf = getattr(self.document, "model_file", None)
            if not self.training and mf is not None and mf is not getattr(self, "_adopted", None):
                # a .cnnd opened with File > Open: its weights come with it (rare, so at once)
                self.adopt_model_file(mf, getattr(self.document, "model_path", None))
        if not self._sync_timer.isActive():
            self._sync_timer.start()

    def sync_now(self) -> None:
        """Apply pending design changes at once (tests, and before starting a run)."""
        self._sync_timer.stop()
        self._sync_design()

    def _sync_design(self) -> None:
        if self.training:
            return  # caught up in _on_done
        reset, self._reset_pending = self._reset_pending, False
        mf = getattr(self.document, "model_file", None)
        if reset and mf is not None and mf is not getattr(self, "_adopted", None):
            self.adopt_model_file(mf, getattr(self.document, "model_path", None))  # opened during a run
        shape = tuple(self.document.spec.input_shape)
        if shape != self._last_input:
            self._last_input = shape
            if self.data_panel.folder is not None:
                self.data_panel.reload()  # images must be decoded at the new size / channels
        if reset:
            self.panel.set_settings(self.document.spec.training)
            self.data_panel.set_val_split(self.panel.settings()["val_split"])
        self.data_panel.update_problems()
        self.refresh_state()
        if self.isVisible():
            self.prepare_maps()
        else:
            self._maps_stale = True

    def prepare_maps(self) -> None:
        """Lay out the feature-map views for the current design ahead of training (see prepare)."""
        from designer.worker import first_conv, map_layers

        inf = self.document.inference
        if not inf.valid:
            return
        spec = self.document.spec
        shapes = [(i, f"{i} {spec.layers[i].summary()}", tuple(inf.layers[i].output_shape)) for i in map_layers(spec)]
        if any(len(s) != 3 for _, _, s in shapes):
            return
        self.maps.prepare(tuple(spec.input_shape), shapes)
        k = first_conv(spec)
        if k is not None:
            self.filters.prepare(tuple(inf.layers[k].param_shapes["weight"]))

    def _settings_changed(self, settings: dict) -> None:
        self.data_panel.set_val_split(float(settings["val_split"]))
        merged = dict(self.document.spec.training)
        merged.update(settings)
        if merged != self.document.spec.training:
            self.document.set_training(merged)

    # --- state ------------------------------------------------------------------------------------------
    @property
    def training(self) -> bool:
        """From Start until the run's last signal has been handled here (results shown, state reset)."""
        return self._runner is not None

    def can_train(self) -> tuple[bool, str]:
        inf = self.document.inference
        if not inf.valid:
            return False, f"The design is invalid: {inf.error_message}"
        if self.training:
            return False, "training is running"
        if self.evaluating:
            return False, "an evaluation is running"
        ok, why = self.data_panel.fits()
        if not ok:
            if why == "the folder is still loading":
                return True, ""  # Start waits for the folder
            return False, why[:1].upper() + why[1:]
        return True, ""

    def compatible_model(self) -> bool:
        """The current model can be trained further on the current design and data."""
        if self.model is None or self.model_spec is None:
            return False
        if self.model_spec.to_dict()["layers"] != self.document.spec.to_dict()["layers"]:
            return False
        if tuple(self.model_spec.input_shape) != tuple(self.document.spec.input_shape):
            return False
        d = self.data_panel.data
        return d is None or d.classes == self.model_classes

    def refresh_state(self) -> None:
        ok, why = self.can_train()
        self.panel.set_can_start(ok, why)
        if not self.training:
            # Show why Start is disabled (it is always in the button's tooltip too), without covering
            # a run's result or an opened model's summary; clear only our own earlier reason.
            current = self.panel.message.text()
            if not ok and (not current or current == getattr(self, "_why_shown", None)):
                self.panel.show_message(why)
                self._why_shown = why
            elif getattr(self, "_why_shown", None) and self.panel.message.text() == self._why_shown:
                self.panel.show_message("")
                self._why_shown = None
        has_model = self.model is not None
        self.save_button.setEnabled(has_model and not self.training)
        self.eval_button.setEnabled(has_model and not self.training and not self.evaluating
                                    and self.data_panel.data is not None)
        self.open_button.setEnabled(not self.training)
        compat = self.compatible_model() and not self.training
        self.continue_box.setEnabled(compat)
        if not compat:
            self.continue_box.setChecked(False)

    def _status(self, text: str) -> None:
        self.status_message.emit(text)
        w = self.window()
        if isinstance(w, QMainWindow) and w.statusBar() is not None:
            w.statusBar().showMessage(text, 10000)

    # --- data ------------------------------------------------------------------------------------------
    def _data_ready(self, data: LoadedData) -> None:
        self.panel.set_split_used(data.val is None, f"Not used: validation images come from {data.val_folder}"
                                  if data.val_folder is not None else "")
        self._status(f"Loaded {len(data.train):,} images in {len(data.classes)} classes from {data.folder}")
        self._choose_sample_source()
        self.refresh_state()
        if self.model is None:
            self.prepare_maps()

    def _busy_changed(self, busy: bool) -> None:
        if not busy and self._start_when_loaded:  # Start was pressed while the folder was loading
            self._start_when_loaded = False
            if self.data_panel.data is not None:
                self.start_training()
        self.refresh_state()

    def _load_failed(self, message: str) -> None:
        self._start_when_loaded = False
        self._status(message)
        self.refresh_state()

    def val_images(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(uint8 images, labels) the results and the sample picker use: validation, else training."""
        d = self.data_panel.data
        if d is None:
            return None
        s = self._split()[1] or d.train
        return s.images, s.labels

    def _split(self):
        """(train, val) ImageSets from the loaded folder and the form's split (seeded, stratified)."""
        d = self.data_panel.data
        if d is None:
            return None, None
        if d.val is not None:
            return d.train, d.val
        settings = self.panel.settings()
        frac = float(settings["val_split"])
        if frac <= 0:
            return d.train, None
        try:
            return split_stratified(d.train, frac, int(settings["seed"]))
        except DataError:
            return d.train, None

    def _choose_sample_source(self, refresh: bool = True) -> None:
        pair = self.val_images()
        if pair is None:
            return
        self._sample_source = pair
        self.sample_spin.blockSignals(True)
        self.sample_spin.setMaximum(max(0, len(pair[1]) - 1))
        self.sample_spin.blockSignals(False)
        self._sample_changed(min(self.sample_spin.value(), len(pair[1]) - 1), refresh)

    def _sample_changed(self, k: int, refresh: bool = True) -> None:
        if self._sample_source is None or k < 0:
            return
        images, labels = self._sample_source
        self._sample = images[k]
        self.sample_thumb.setPixmap(thumbnail(self._sample, 32))
        names = self.data_panel.data.classes if self.data_panel.data else self.model_classes
        label = int(labels[k])
        self.sample_info.setText(f"class {names[label]}" if label < len(names) else "")
        if self._job is not None and self.training:
            self._job.set_sample(self._sample_input(self._run_prep), self._sample)
        elif refresh:
            self.refresh_maps()

    def _sample_input(self, prep: Preprocessing | None = None) -> np.ndarray | None:
        """The chosen sample as model input, preprocessed like the model in question: the current
        model's preprocessing by default, the run's own during training."""
        if self._sample is None:
            return None
        prep = prep or self.model_prep or Preprocessing.for_input(self.document.spec.input_shape)
        if self._sample.shape[0] != prep.channels:
            return None
        return prep.normalize(self._sample[None])

    def _model_free(self) -> None:
        """Wait for a background evaluation: the model's layers keep per-call buffers, so the GUI
        thread must not run it while the evaluation thread does (evaluations take about a second)."""
        if self.evaluating:
            self._eval_runner.thread.wait()

    def refresh_maps(self) -> None:
        """Feature maps and filters of the current model for the chosen sample, on demand."""
        if self.model is None or self._sample is None:
            return
        self._model_free()
        x = self._sample_input()
        if x is None or tuple(x.shape[1:]) != tuple(self.model.spec.input_shape):
            return
        try:
            maps, weight = feature_maps(self.model, x)
        except EngineError as e:
            self._status(str(e))
            return
        self._show_maps({"sample": self._sample, "maps": maps, "weight": weight})

    def _show_maps(self, payload: dict) -> None:
        self.maps.set_maps(payload["sample"], [LayerMaps(i, t, m) for i, t, m in payload["maps"]])
        w = payload["weight"]
        title = ""
        if w is not None:
            f, c, kh, kw = w.shape
            kind = "colour (RGB)" if c == 3 else ("grey" if c == 1 else f"mean of {c} channels")
            title = f"First convolution's {f} filters, {kh}x{kw}, {kind}"
        self.filters.set_weights(w, title)

    # --- training -----------------------------------------------------------------------------------------
    def start_training(self) -> None:
        if self.training:
            return
        if self._sync_timer.isActive():
            self.sync_now()
        ok, why = self.can_train()
        if not ok:
            self.panel.show_message(why, error=True)
            return
        if self.data_panel.loading or self.data_panel.data is None:
            self._start_when_loaded = True
            self.panel.show_message("Waiting for the folder to finish loading...")
            return
        d = self.data_panel.data
        # A validation folder is used as is; otherwise the trainer splits off val_split itself (the
        # same seeded split `_split` shows the samples from).
        train, val = d.train, d.val
        settings = dict(self.document.spec.training)
        settings.update(self.panel.settings())
        initial = None
        classes = prep = None
        if self.continue_box.isChecked() and self.compatible_model():
            initial = {k: np.array(v, copy=True) for k, v in self.model.state_dict().items()}
            classes, prep = self.model_classes, self.model_prep
        spec = self.document.spec.copy()
        self._run_prep = prep or Preprocessing.for_input(spec.input_shape)  # what the trainer will use
        self._choose_sample_source(refresh=False)  # the run draws the maps; the old model's would be stale
        req = TrainRequest(spec=spec, train=train, val=val, settings=settings, initial_state=initial,
                           sample=self._sample_input(self._run_prep), sample_image=self._sample,
                           history=list(self.history) if initial is not None else [], classes=classes, prep=prep)
        job = TrainJob(req)
        job.batches.connect(self._on_batches)
        job.epoch_done.connect(self._on_epoch)
        job.maps_ready.connect(self._show_maps)
        job.finished_run.connect(self._on_finished)
        job.paused_changed.connect(self._on_paused)
        job.warnings.connect(self._on_warnings)
        self._job = job
        self._runner = JobRunner(job, "cnn-designer-train")
        self._runner.finished.connect(self._on_done)
        self.plots.clear()
        if initial is not None:
            self.plots.load_history(self.history)
        done = len(self.history) if initial is not None else 0
        self.plots.set_epochs(0, done + int(settings.get("epochs", 1)))
        self.prepare_maps()
        self.panel.reset_progress()
        self.panel.set_state("running")
        self.last_error = None
        self._eval = None
        self.results.clear()
        self.tabs.setCurrentIndex(0)
        self._runner.start()
        self.data_panel.set_locked(True)
        self.training_changed.emit(True)
        self.refresh_state()
        self._status(f"Training {spec.name} on {len(train):,} images from {d.folder}...")

    def pause(self) -> None:
        if self._job is not None and self.training:
            self._job.pause()

    def resume(self) -> None:
        if self._job is not None and self.training:
            self._job.resume()

    def stop(self) -> None:
        if self._job is not None and self.training:
            self._job.stop()
            self.panel.set_state("stopping")
            self._status("Stopping after the current batch...")

    def _on_paused(self, paused: bool) -> None:
        if self.training:
            self.panel.set_state("paused" if paused else "running")
            self._status("Training paused" if paused else "Training resumed")

    def _on_warnings(self, warnings: list) -> None:
        self.panel.show_message("Note: " + "; ".join(warnings))

    def _on_batches(self, points: list, progress: dict) -> None:
        for pos, loss in points:
            self.plots.add_batch(pos, loss)
        self.panel.show_progress(progress)
        if progress.get("epoch") is not None:
            eta = fmt_duration(progress.get("eta"))
            self._status(
                f"Epoch {progress['epoch']}/{progress.get('epochs')}, batch {progress.get('batch')}/"
                f"{progress.get('batches')}, loss {progress.get('loss', float('nan')):.4f}, "
                f"{progress.get('images_per_second', 0):,.0f} images/s, ETA {eta}")

    def _on_epoch(self, m: dict) -> None:
        self.plots.add_epoch(m["epoch"], m.get("train_loss"), m.get("train_accuracy"),
                             m.get("val_loss"), m.get("val_accuracy"))
        self.panel.show_validation(m.get("val_loss"), m.get("val_accuracy"))

    def _on_finished(self, result: dict) -> None:
        """The job's last word: the model (kept even when stopped or failed), history, evaluation."""
        self.plots.flush()
        if result.get("model") is not None and self.model is not None and self.model is not result["model"]:
            self.model.close()  # the previous run's model (releases a helper process, if it has one)
        self.model = result.get("model") or self.model
        if result.get("model") is not None:
            self.model_spec = result["spec"]
            self.model_classes = list(result["classes"])
            self.model_prep = result["preprocessing"]
            self.history = list(result.get("history") or [])
            self.train_settings = dict(result.get("settings") or {})
            self.model_path = None
        status, message = result.get("status"), result.get("message") or ""
        if status == "failed":
            self.last_error = message
            self.panel.show_message(message + ("\nThe design and the last good weights are kept."
                                               if self.model is not None else ""), error=True)
            self._status(message)
        else:
            self.panel.show_message(message)
            self._status(message)
        if result.get("evaluation") is not None:
            self._show_evaluation(result["evaluation"])
        self._set_predictor()
        self.refresh_maps()

    def _on_done(self) -> None:
        self._runner = None
        self._job = None
        self.panel.set_state("idle")
        self.data_panel.set_locked(False)
        self.training_changed.emit(False)
        self._reset_pending = True
        self.sync_now()  # catch up with edits made in the Design tab while training ran
        if self.model is not None:
            self.model_ready.emit()

    # --- results and prediction ---------------------------------------------------------------------------
    def _show_evaluation(self, ev: dict) -> None:
        self._eval = ev
        self.results.set_results(ev["classes"], ev["labels"], ev["probs"], ev.get("images"), ev.get("loss"),
                                 title=ev.get("title", "validation"))

    def evaluate_current(self) -> bool:
        """Evaluate the model on the loaded folder in the background (results arrive via `evaluated`):
        the validation images of this run's split, or the whole folder for an opened model, which
        never saw this folder's split."""
        if self.model is None or self.data_panel.data is None or self.evaluating or self.training:
            return False
        d = self.data_panel.data
        if d.classes != self.model_classes:
            self.panel.show_message(f"The folder's classes ({', '.join(d.classes[:6])}) differ from the model's "
                                    f"({', '.join(self.model_classes[:6])}): choose a folder with the same classes",
                                    error=True)
            return False
        if tuple(d.train.images.shape[1:]) != tuple(self.model.spec.input_shape):
            self.panel.show_message("The design's input changed since this model was trained: undo the change "
                                    "or train again", error=True)
            return False
        train, val = self._split()
        s, title = (val, "validation") if val is not None else (train, "training-folder")
        if self.model_path is not None:
            s, title = (d.val, "validation-folder") if d.val is not None else (d.train, "folder")
        prep = self.model_prep or Preprocessing.for_input(self.model.spec.input_shape)
        job = EvalJob(self.model, s, prep, title)
        job.result.connect(self._on_evaluated)
        job.failed.connect(lambda m: self.panel.show_message(m, error=True))
        self._eval_runner = JobRunner(job, "cnn-designer-evaluate")
        self._eval_runner.finished.connect(self._eval_done)
        self._status(f"Evaluating on {len(s):,} images...")
        self._eval_runner.start()
        self.refresh_state()
        return True

    @property
    def evaluating(self) -> bool:
        return getattr(self, "_eval_runner", None) is not None

    def _on_evaluated(self, ev: dict) -> None:
        self._show_evaluation(ev)
        self.tabs.setCurrentWidget(self.results)
        self._status(f"Evaluated on {len(ev['labels']):,} images: accuracy {100 * ev['accuracy']:.2f} %, "
                     f"loss {ev['loss']:.4f} ({ev['seconds']:.1f} s)")
        self.evaluated.emit(ev)

    def _eval_done(self) -> None:
        self._eval_runner = None
        self.refresh_state()

    def _set_predictor(self) -> None:
        if self.model is None:
            self.predict.set_predictor(None, [])
            self.predict.set_examples(None, None)
            return
        model = self.model
        prep = self.model_prep or Preprocessing.for_input(model.spec.input_shape)

        def predictor(path: str) -> tuple[np.ndarray, np.ndarray]:
            x = load_image(path, prep)
            self._model_free()
            img = np.clip(np.rint((x[0] * np.asarray(prep.std, np.float32).reshape(-1, 1, 1)
                                   + np.asarray(prep.mean, np.float32).reshape(-1, 1, 1)) / prep.scale),
                          0, 255).astype(np.uint8)
            return img, model.predict_proba(x)[0]

        self.predict.set_predictor(predictor, self.model_classes)
        def probs_of(images: np.ndarray) -> np.ndarray:
            self._model_free()
            return model.predict_proba(prep.normalize(images))

        self.predict.probs_of = probs_of
        pair = self.val_images()
        d = self.data_panel.data
        same = d is not None and d.classes == self.model_classes and pair is not None \
            and pair[0].shape[1:] == tuple(model.spec.input_shape)
        self.predict.set_examples(pair[0] if same else None, pair[1] if same else None)

    def dragEnterEvent(self, e):  # noqa: N802 - Qt naming
        if e.mimeData().hasUrls():
            e.acceptProposedAction()

    def dropEvent(self, e):  # noqa: N802 - Qt naming
        """A folder dropped anywhere on the workspace becomes the data; a .cnnd opens; an image is predicted."""
        paths = [Path(u.toLocalFile()) for u in e.mimeData().urls() if u.isLocalFile()]
        if not paths:
            return
        p = paths[0]
        e.acceptProposedAction()
        if p.is_dir():
            if not self.training:
                self.data_panel.set_folder(p)
        elif p.suffix.lower() == ".cnnd":
            self.open_model(p)
        else:
            self.tabs.setCurrentWidget(self.predict)
            self.predict.predict_file(str(p))

    # --- model files ----------------------------------------------------------------------------------------
    def save_model(self, path: str | Path) -> Path:
        """Write the trained model as .cnnd (atomic); EngineError with a clear message on failure."""
        from engine import modelfile

        if self.model is None:
            raise EngineError("there is no trained model to save yet: train first")
        training = dict(self.train_settings)
        d = self.data_panel.data
        if d is not None:
            training.setdefault("data", str(d.folder))
        modelfile.save(path, self.model_spec, self.model.state_dict(), self.model_classes, self.model_prep,
                       training, self.history)
        self.model_path = Path(path)
        self._status(f"Saved the trained model to {path}")
        return Path(path)

    def save_model_dialog(self) -> Path | None:
        if self.model is None:
            return None
        start = str(self.model_path or Path.cwd() / f"{(self.model_spec.name or 'model').replace(' ', '_')}.cnnd")
        path, _ = QFileDialog.getSaveFileName(self, "Save trained model", start, "CNN Designer model (*.cnnd)")
        if not path:
            return None
        if not path.lower().endswith(".cnnd"):
            path += ".cnnd"
        try:
            return self.save_model(path)
        except EngineError as e:
            QMessageBox.warning(self, "Cannot save the model", str(e))
            return None

    def open_model(self, path: str | Path, set_design: bool = True) -> bool:
        """Open a .cnnd: its weights become the current model, its architecture the design (undoable)."""
        from engine import modelfile

        if self.training:
            return False
        try:
            mf = modelfile.load(path)
        except EngineError as e:
            self.last_error = str(e)
            QMessageBox.warning(self, "Cannot open the model", str(e))
            return False
        if set_design:
            self._apply_spec(mf.spec, f"Open model {Path(path).name}")
        return self.adopt_model_file(mf, Path(path))

    def adopt_model_file(self, mf: Any, path: Path | None = None) -> bool:
        """Make a loaded ModelFile the current model: look inside it, evaluate it, continue training it."""
        try:
            model = mf.build_model()
        except EngineError as e:
            self.last_error = str(e)
            self.panel.show_message(f"Cannot use the model: {e}", error=True)
            return False
        if self.model is not None and self.model is not model:
            self.model.close()
        self._adopted = mf
        path = path or getattr(mf, "path", None)
        self.model, self.model_spec, self.model_classes = model, mf.spec, list(mf.classes)
        self.model_prep, self.history = mf.preprocessing, list(mf.history)
        self.model_path = Path(path) if path is not None else Path("model.cnnd")
        self.train_settings = dict(mf.training)
        if mf.training:
            self.panel.set_settings(mf.training)
        self.plots.load_history(self.history)
        self._set_predictor()
        self.refresh_maps()
        self.refresh_state()
        acc = next((h.get("val_accuracy") for h in reversed(self.history) if h.get("val_accuracy") is not None), None)
        extra = f"; last validation accuracy {100 * acc:.2f} %" if acc is not None else ""
        name = Path(path).name if path is not None else "the model"
        n = len(self.history)
        self.panel.show_message(f"Opened {name}: {len(self.model_classes)} classes, {n} epoch{'' if n == 1 else 's'} "
                                f"trained{extra}. Evaluate it on a folder, predict images, or continue training.")
        self._status(f"Opened model {name}")
        self.model_ready.emit()
        return True

    def _apply_spec(self, spec: Any, text: str) -> None:
        if self.document.spec == spec:
            return
        if self.undo_stack is not None:
            from designer.commands import ReplaceSpecCommand

            self.undo_stack.push(ReplaceSpecCommand(self.document, spec, text))
        else:
            self.document.set_spec(spec)

    def open_model_dialog(self) -> bool:
        path, _ = QFileDialog.getOpenFileName(self, "Open trained model", str(Path.cwd()),
                                              "CNN Designer model (*.cnnd);;All files (*)")
        return self.open_model(path) if path else False

    # --- closing ----------------------------------------------------------------------------------------------
    def confirm_close(self, parent: QWidget | None = None) -> bool:
        """Ask before closing while training; on yes, stop and join the worker. False = stay open."""
        if not self.training:
            self.shutdown()
            return True
        answer = QMessageBox.question(
            parent or self, "Training is running",
            "Training is still running. Stop it and close? (Weights trained so far are not saved.)",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, QMessageBox.StandardButton.No)
        if answer != QMessageBox.StandardButton.Yes:
            return False
        self.shutdown()
        return True

    def shutdown(self) -> None:
        """Stop training and loading and join their threads (no orphan thread after the window)."""
        self._start_when_loaded = False
        if self._runner is not None:
            self._runner.shutdown()
        if self.evaluating:
            self._eval_runner.shutdown()
        self.data_panel.shutdown()
        # Deliver the job's last queued signals now, while the widgets still exist.
        from PySide6.QtCore import QCoreApplication

        QCoreApplication.sendPostedEvents()
        if self._runner is not None and not self._runner.running():
            self._runner = None
            self._job = None




class _WindowDrops(QObject):
    """Drops anywhere on the main window: a folder becomes the training data, a .cnnd or .json
    opens (through the window, so unsaved changes are asked about), an image is predicted."""

    IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")

    def __init__(self, window: Any, ws: TrainingWorkspace, index: int):
        super().__init__(window)
        self.window, self.ws, self.index = window, ws, index

    def _path(self, event: Any) -> Path | None:
        md = event.mimeData()
        urls = [u for u in md.urls() if u.isLocalFile()] if md is not None and md.hasUrls() else []
        if not urls:
            return None
        p = Path(urls[0].toLocalFile())
        if p.is_dir() or p.suffix.lower() in (".cnnd", ".json") + self.IMAGE_SUFFIXES:
            return p
        return None

    def eventFilter(self, obj: Any, event: Any) -> bool:  # noqa: N802 - Qt naming
        t = event.type()
        if t in (QEvent.Type.DragEnter, QEvent.Type.DragMove) and self._path(event) is not None:
            event.acceptProposedAction()
            return True
        if t == QEvent.Type.Drop:
            p = self._path(event)
            if p is None:
                return False
            event.acceptProposedAction()
            if p.suffix.lower() in (".cnnd", ".json") and p.is_file():
                self.window.open_file(p)
            else:
                self.window.tabs.setCurrentIndex(self.index)
                if p.is_dir():
                    if not self.ws.training:
                        self.ws.data_panel.set_folder(p)
                else:
                    self.ws.tabs.setCurrentWidget(self.ws.predict)
                    self.ws.predict.predict_file(str(p))
            return True
        return False


def install(window: Any) -> TrainingWorkspace:
    """Add the workspace to the designer's main window (called by designer.app.build_window).

    Uses only the window's documented hooks: a "Train" tab, the Train action, a close guard that
    asks while training runs, `about_to_close` to join threads, and entries in the Model menu.
    """
    from PySide6.QtGui import QAction

    ws = TrainingWorkspace(window.document, window.undo_stack)
    index = window.add_workspace_tab(ws, "Train")
    window.training_workspace = ws

    def train() -> None:
        window.tabs.setCurrentIndex(index)
        ws.load_default_folder()
        ws.start_training()

    window.set_train_handler(train)
    window.add_close_guard(lambda: ws.confirm_close(window))
    window.setAcceptDrops(True)
    window._workspace_drops = _WindowDrops(window, ws, index)
    window.installEventFilter(window._workspace_drops)
    window.about_to_close.connect(ws.shutdown)

    model_menu = next((a.menu() for a in window.menuBar().actions() if a.text().replace("&", "") == "Model"), None)
    save = QAction("Save trained model…", window)
    save.setStatusTip("Save the trained model (architecture, weights, classes, preprocessing) as .cnnd")
    save.triggered.connect(lambda _=False: ws.save_model_dialog())
    openm = QAction("Open trained model…", window)
    openm.setStatusTip("Open a .cnnd to inspect it, evaluate it on a folder, or continue training")
    openm.triggered.connect(lambda _=False: (window.tabs.setCurrentIndex(index), ws.open_model_dialog()))
    pause = QAction("Pause / resume training", window)
    pause.triggered.connect(lambda _=False: ws.resume() if ws.panel.state == "paused" else ws.pause())
    stop = QAction("Stop training", window)
    stop.triggered.connect(lambda _=False: ws.stop())
    window.save_model_action, window.open_model_action = save, openm

    def update() -> None:
        save.setEnabled(ws.model is not None and not ws.training)
        openm.setEnabled(not ws.training)
        pause.setEnabled(ws.training)
        stop.setEnabled(ws.training)

    ws.training_changed.connect(lambda _on: update())
    ws.model_ready.connect(update)
    update()
    if model_menu is not None:
        for act in (pause, stop, None, save, openm):
            if act is None:
                model_menu.addSeparator()
            else:
                model_menu.addAction(act)
    return ws
