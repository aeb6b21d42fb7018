"""The training workspace: data on the left, the network learning on the right.

Its state (data, current model and the design it belongs to, run state, results) lives in a
Qt-free designer.session.TrainSession; the widgets here observe it and own the background jobs
(designer.worker), which report into the session. Training itself is the engine's trainer (the same
one the CLI uses) running in a TrainJob; this module only starts, steers and displays it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QCoreApplication, Qt, QTimer, Signal, Slot
from PySide6.QtGui import QAction, QUndoStack
from PySide6.QtWidgets import (
    QCheckBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
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
from designer.drops import DropRouter
from designer.feature_maps import FeatureMapsView, FiltersView, LayerMaps
from designer.health_panel import HealthPanel, PreflightJob
from designer.keep_weights import KeepWeightsPanel
from designer.plots import LivePlots
from designer.results import PredictView, ResultsView, thumbnail
from designer.saliency_view import Explainer
from designer.session import CurrentModel, Evaluation, TrainSession
from designer.training_panel import TrainingPanel, fmt_duration
from designer.worker import EvalJob, JobRunner, LoadedData, RunResult, TrainJob, TrainRequest, feature_maps
from engine.data import DataError, Preprocessing, load_image, split_stratified
from engine.errors import EngineError
from engine.resources import sample_data_dir
from engine.trained import TrainedModel

#: Quiet time after the last design edit before the workspace follows it.
SYNC_DELAY_MS = 120


class TrainingWorkspace(QWidget):
    """The Train tab. `document` is the designer's Document; `undo_stack` receives one-click fixes."""

    #: A line for the window's status bar.
    status_message = Signal(str)
    #: Training started (True) or ended (False).
    training_changed = Signal(bool)
    #: A trained model is available (after training or opening a .cnnd).
    model_ready = Signal()
    #: An evaluation finished (designer.session.Evaluation).
    evaluated = Signal(object)

    def __init__(self, document: Any, undo_stack: QUndoStack | None = None, parent: QWidget | None = None):
        super().__init__(parent)
        self.document = document
        self.undo_stack = undo_stack
        self.session = TrainSession(document)
        self._runner: JobRunner | None = None
        self._job: TrainJob | None = None
        self._eval_runner: JobRunner | None = None
        self._run_spec: Any = None
        self._start_when_loaded = False
        self._sample: np.ndarray | None = None  # uint8 (C, H, W)
        self._sample_source: Any = None
        self._run_prep: Preprocessing | None = None
        self._adopted: Any = None
        self._why_shown: str | None = None
        #: the feature-map views show a model's maps (not just the design's empty layout)
        self._maps_drawn = False
        #: the main window's drop handler, when installed there
        self.drops: DropRouter | None = None
        self.last_error: str | None = None

        # --- left column: data and training ---
        self.data_panel = DataPanel(self.session, undo_stack)
        self.panel = TrainingPanel()
        self.continue_box = QCheckBox("Continue from the current weights")
        self.continue_box.setToolTip("Start from the trained (or opened) model's weights instead of new random ones")
        self.continue_box.setEnabled(False)
        self.keep_weights = KeepWeightsPanel()  # what continuing keeps after an edit; frozen layers
        self.continue_box.toggled.connect(lambda _on: self.refresh_state())
        self.save_button = QPushButton("Save model...")
        self.save_button.setToolTip("Save the trained model (architecture, weights, classes, preprocessing) as .cnnd")
        self.open_button = QPushButton("Open model...")
        self.open_button.setToolTip("Open a .cnnd to look inside it, evaluate it on a folder, or continue training")
        self.eval_button = QPushButton("Evaluate on folder...")
        self.eval_button.setToolTip("Choose a folder of class subfolders and score the current model on it")
        self.save_button.clicked.connect(lambda: self.save_model_dialog())
        self.open_button.clicked.connect(lambda: self.open_model_dialog())
        self.eval_button.clicked.connect(lambda: self.evaluate_dialog())
        mrow = QHBoxLayout()
        mrow.addWidget(self.save_button)
        mrow.addWidget(self.open_button)
        mrow.addWidget(self.eval_button)
        # The data and the form scroll at their natural height (so warnings wrap instead of being
        # cut and the class table keeps its rows); the run's controls stay in sight below them.
        form = QWidget()
        fl = QVBoxLayout(form)
        fl.setContentsMargins(6, 6, 6, 6)
        fl.addWidget(self.data_panel)
        fl.addWidget(self.panel)
        fl.addStretch(1)
        self.left_scroll = QScrollArea()
        self.left_scroll.setWidgetResizable(True)
        self.left_scroll.setWidget(form)
        self.left_scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.left_scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        scroll = QWidget()
        sl = QVBoxLayout(scroll)
        sl.setContentsMargins(0, 0, 6, 6)
        sl.addWidget(self.left_scroll, 1)
        controls = QVBoxLayout()
        controls.setContentsMargins(6, 0, 0, 0)
        controls.addWidget(self.panel.controls)
        controls.addWidget(self.continue_box)
        controls.addWidget(self.keep_weights)
        controls.addLayout(mrow)
        sl.addLayout(controls)
        scroll.setMinimumWidth(380)

        # --- right: which model, then live view, results, predict ---
        self.model_label = QLabel()
        self.model_label.setWordWrap(True)
        self.model_label.setContentsMargins(6, 4, 6, 2)
        self.model_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
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
        self.health = HealthPanel()
        self.tabs.addTab(self.health, "Health")
        self._preflight: JobRunner | None = None
        self._preflight_kind = ""
        right = QWidget()
        rl = QVBoxLayout(right)
        rl.setContentsMargins(0, 0, 0, 0)
        rl.setSpacing(0)
        rl.addWidget(self.model_label)
        rl.addWidget(self.tabs, 1)

        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(scroll)
        split.addWidget(right)
        split.setStretchFactor(0, 0)
        split.setStretchFactor(1, 1)
        split.setSizes([400, 880])
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(split)

        # --- actions (the window puts them in its Model menu) ---
        self.save_model_action = QAction("Save trained model…", self)
        self.save_model_action.setStatusTip("Save the trained model (architecture, weights, classes, "
                                            "preprocessing) as .cnnd")
        self.save_model_action.triggered.connect(lambda _=False: self.save_model_dialog())
        self.open_model_action = QAction("Open trained model…", self)
        self.open_model_action.setStatusTip("Open a .cnnd to inspect it, evaluate it on a folder, or continue "
                                            "training")
        self.open_model_action.triggered.connect(lambda _=False: self.open_model_dialog())
        self.pause_action = QAction("Pause / resume training", self)
        self.pause_action.triggered.connect(
            lambda _=False: self.resume() if self.session.run_state == "paused" else self.pause())
        self.stop_action = QAction("Stop training", self)
        self.stop_action.triggered.connect(lambda _=False: self.stop())

        # --- wiring: the panels ask, the session tells ---
        s = self.session
        s.model_changed.connect(self._model_changed)
        s.evaluation_changed.connect(self._evaluation_changed)
        s.run_changed.connect(self._run_changed)
        s.message_changed.connect(self.panel.show_message)
        s.data_changed.connect(self._data_changed)
        self.panel.start_requested.connect(self.start_training)
        self.panel.pause_requested.connect(self.pause)
        self.panel.resume_requested.connect(self.resume)
        self.panel.stop_requested.connect(self.stop)
        self.panel.settings_changed.connect(self._settings_changed)
        self.panel.find_lr_requested.connect(lambda: self.run_preflight("lr"))
        self.panel.check_requested.connect(lambda: self.run_preflight("check"))
        self.health.fix_requested.connect(self.panel.apply_fix)
        self.data_panel.load_failed.connect(self._load_failed)
        self.data_panel.busy_changed.connect(self._busy_changed)
        self.data_panel.problems_changed.connect(lambda _p: self.refresh_state())
        self.results.open_requested.connect(self.predict_path)
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
        self._show_model_label()
        self.refresh_state()

    # --- document ------------------------------------------------------------------------------------
    def load_default_folder(self) -> None:
        """Load the document's folder (the built-in sample when it has none), once, on first show."""
        if self.data_panel.folder is None:
            folder = self.document.data_dir or sample_data_dir()
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
            d = self.document.data_dir
            if not self.training and d is not None and self.data_panel.folder is not None \
                    and Path(d) != self.data_panel.folder:
                self.data_panel.set_folder(d, remember=False)
            return
        if kind == "reset":
            self._reset_pending = True
            mf = self.document.model_file
            if not self.training and mf is not None and mf is not self._adopted:
                # a .cnnd opened with File > Open: its weights come with it (rare, so at once)
                self.adopt_model_file(mf, self.document.model_path)
        if self.training:
            self._show_model_label()  # says that the run trains the design as it was at Start
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
        mf = self.document.model_file
        if reset and mf is not None and mf is not self._adopted:
            self.adopt_model_file(mf, self.document.model_path)  # opened during a run
        shape = tuple(self.document.spec.input_shape)
        if shape != self._last_input:
            self._last_input = shape
            if self.data_panel.folder is not None:
                self.data_panel.reload()  # images must be decoded at the new size / channels
        if reset:
            self.panel.set_settings(self.document.spec.training)
            self.data_panel.set_val_split(self.panel.settings()["val_split"])
        self.data_panel.update_problems()
        self._show_model_label()
        self.refresh_state()
        if self._maps_drawn and not self.session.matches_design():
            self._clear_maps()  # the model's maps are not this design's
        if self.isVisible():
            self.prepare_maps()
            if self.session.matches_design():
                self.refresh_maps()
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
            if not self.training and not self.session.matches_design():
                self.filters.title.setText("First convolution's filters: shown once this design is trained")

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

    @property
    def evaluating(self) -> bool:
        return self._eval_runner is not None

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

    def refresh_state(self) -> None:
        ok, why = self.can_train()
        self.panel.set_can_start(ok, why)
        if not self.training:
            # Show why Start is disabled (it is always in the button's tooltip too), without covering
            # a run's result or an opened model's summary; clear only our own earlier reason.
            current = self.session.message[0]
            if not ok and (not current or current == self._why_shown):
                self.session.say(why)
                self._why_shown = why
            elif self._why_shown and current == self._why_shown:
                self.session.say("")
                self._why_shown = None
        has_model = self.session.current is not None
        self.save_button.setEnabled(has_model and not self.training)
        self.eval_button.setEnabled(has_model and not self.training and not self.evaluating)
        self.open_button.setEnabled(not self.training)
        seed = int(self.panel.settings().get("seed", 0) or 0)
        compat = self.keep_weights.update_for(self.document.spec, self.session, self.continue_box.isChecked(),
                                              seed) and not self.training
        self.continue_box.setEnabled(compat)
        if not compat:
            self.continue_box.setChecked(False)
        self.save_model_action.setEnabled(has_model and not self.training)
        self.open_model_action.setEnabled(not self.training)
        self.pause_action.setEnabled(self.training)
        self.stop_action.setEnabled(self.training)

    def _show_model_label(self) -> None:
        """Say which model the right side shows, and whether it is the design being edited."""
        s, cur = self.session, self.session.current
        if self.training and self._run_spec is not None:
            text = f"Training <b>{self._run_spec.name or 'the design'}</b> as it was at Start."
            if self._run_spec.to_dict()["layers"] != self.document.spec.to_dict()["layers"] \
                    or tuple(self._run_spec.input_shape) != tuple(self.document.spec.input_shape):
                text += (" <span style='color:#8a5a00'>The design has been edited since: the changes apply "
                         "to the next run.</span>")
        elif cur is None:
            text = "No trained model yet: press <b>Start training</b>, or open a .cnnd."
        else:
            text = f"Model: <b>{cur.describe()}</b>"
            if not s.matches_design():
                text += (" <span style='color:#8a5a00'>(not the design on the Design tab: Predict, Results and "
                         "Save use this model; train to get one for the new design)</span>")
        self.model_label.setText(text)

    def _status(self, text: str) -> None:
        self.status_message.emit(text)
        w = self.window()
        sb = getattr(w, "statusBar", None)
        if w is not self and sb is not None:
            sb().showMessage(text, 10000)

    # --- data ------------------------------------------------------------------------------------------
    def _data_changed(self, data: LoadedData | None) -> None:
        if data is None:
            self.refresh_state()
            return
        self.panel.set_split_used(data.val is None, f"Not used: validation images come from {data.val_folder}"
                                  if data.val_folder is not None else "")
        self._status(f"Loaded {len(data.train):,} images in {len(data.classes)} classes from {data.folder}")
        self._choose_sample_source()
        self._set_predictor()
        self.refresh_state()
        if self.session.current is None:
            self.prepare_maps()

    def _busy_changed(self, busy: bool) -> None:
        if not busy and self._start_when_loaded:  # Start was pressed while the folder was loading
            self._start_when_loaded = False
            if self.session.data is not None:
                self.start_training()
        self.refresh_state()

    def _load_failed(self, message: str) -> None:
        self._start_when_loaded = False
        self._status(message)
        self.refresh_state()

    def val_images(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(uint8 images, labels) the results and the sample picker use: validation, else training."""
        d = self.session.data
        if d is None:
            return None
        s = self._split()[1] or d.train
        return s.images, s.labels

    def _split(self):
        """(train, val) ImageSets from the loaded folder and the form's split (seeded, stratified)."""
        d = self.session.data
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
        d, cur = self.session.data, self.session.current
        names = d.classes if d is not None else (cur.classes if cur is not None else [])
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
        cur = self.session.current
        prep = prep or (cur.prep if cur is not None else None) \
            or Preprocessing.for_input(self.document.spec.input_shape)
        if self._sample.shape[0] != prep.channels:
            return None
        return prep.normalize(self._sample[None])

    def _model_free(self) -> None:
        """Wait for a background evaluation: the model's layers keep per-call buffers, so the GUI
        thread must not run it while the evaluation thread does (evaluations take about a second)."""
        if self._eval_runner is not None:
            self._eval_runner.thread.wait()

    def refresh_maps(self) -> None:
        """Feature maps and filters of the current model for the chosen sample, on demand. Only a
        model of the design being shown: another design's maps would be taken for this one's."""
        cur = self.session.current
        if cur is None or self._sample is None or not self.session.matches_design():
            return
        self._model_free()
        x = self._sample_input()
        if x is None or tuple(x.shape[1:]) != tuple(cur.model.spec.input_shape):
            return
        try:
            maps, weight = feature_maps(cur.model, x)
        except EngineError as e:
            self._status(str(e))
            return
        self._show_maps({"sample": self._sample, "maps": maps, "weight": weight})

    def _clear_maps(self) -> None:
        self.maps.clear()
        self.filters.clear()
        self._maps_drawn = False

    def _show_maps(self, payload: dict) -> None:
        self._maps_drawn = True
        self.maps.set_maps(payload["sample"], [LayerMaps(i, t, m) for i, t, m in payload["maps"]])
        w = payload["weight"]
        title = ""
        if w is not None:
            f, c, kh, kw = w.shape
            kind = "colour (RGB)" if c == 3 else ("grey" if c == 1 else f"mean of {c} channels")
            title = f"First convolution's {f} filters, {kh}x{kw}, {kind}"
        self.filters.set_weights(w, title)

    # --- the current model --------------------------------------------------------------------------------
    def _model_changed(self, cur: CurrentModel | None) -> None:
        """Everything on the right belongs to the current model: follow it, and clear what was
        another model's."""
        self._clear_maps()
        self._maps_stale = True
        if self.isVisible():
            self._maps_stale = False
            self.prepare_maps()
            self.refresh_maps()
        self._set_predictor()
        if cur is not None and not self.training:
            self.health.load_history(cur.history)
        self._show_model_label()
        self.refresh_state()

    def _set_predictor(self) -> None:
        cur = self.session.current
        if cur is None:
            self.predict.set_predictor(None, [])
            self.predict.set_examples(None, None)
            self.predict.set_explainer(None)
            self.results.set_explainer(None)
            return
        model = cur.model
        prep = cur.prep or Preprocessing.for_input(model.spec.input_shape)
        explainer = Explainer(model, prep, before=self._model_free)
        self.predict.set_explainer(explainer)
        self.results.set_explainer(explainer)

        def predictor(path: str) -> tuple[np.ndarray, np.ndarray]:
            x = load_image(path, prep)
            self._model_free()
            img = np.clip(np.rint((x[0] * np.asarray(prep.std, np.float32).reshape(-1, 1, 1)
                                   + np.asarray(prep.mean, np.float32).reshape(-1, 1, 1)) / prep.scale),
                          0, 255).astype(np.uint8)
            return img, model.predict_proba(x)[0]

        self.predict.set_predictor(predictor, cur.classes)

        def probs_of(images: np.ndarray) -> np.ndarray:
            self._model_free()
            return model.predict_proba(prep.normalize(images))

        self.predict.probs_of = probs_of
        pair = self.val_images()
        d = self.session.data
        same = d is not None and d.classes == cur.classes and pair is not None \
            and pair[0].shape[1:] == tuple(model.spec.input_shape)
        self.predict.set_examples(pair[0] if same else None, pair[1] if same else None)

    # --- before a run: "Find learning rate", "Can it learn?" ---------------------------------------------
    def run_preflight(self, kind: str) -> bool:
        """Run engine.preflight's lr_find ("lr") or can_it_learn ("check") on the design and the
        training images in a background thread; the answer goes to the Health tab."""
        from engine.preflight import can_it_learn, lr_find

        if self._preflight is not None and self._preflight.running():
            return False
        ok, why = self.can_train()
        d = self.session.data
        if not ok or d is None:
            self.session.say(why or "Choose a folder of training images first", error=True)
            return False
        spec = self.document.spec.copy()
        settings = self.panel.settings()
        prep = Preprocessing.for_input(spec.input_shape)
        if kind == "lr":
            def fn(cancel):
                return lr_find(spec, d.train, prep, optimizer=settings["optimizer"],
                               batch_size=settings["batch_size"], cancel=cancel)
        else:
            def fn(cancel):
                return can_it_learn(spec, d.train, prep, optimizer=settings["optimizer"], lr=settings["lr"],
                                    cancel=cancel)
        job = PreflightJob(fn)
        # bound methods of this widget: Qt queues them into the GUI thread (a lambda would run in the job's)
        self._preflight_kind = kind
        job.result.connect(self._preflight_done)
        job.failed.connect(self._preflight_failed)
        self._preflight = JobRunner(job, "cnn-designer-preflight")
        self.health.show_busy(kind)
        self.tabs.setCurrentWidget(self.health)
        self.panel.find_lr_button.setEnabled(False)
        self.panel.check_button.setEnabled(False)
        self._preflight.finished.connect(self._preflight_ended)
        self._preflight.start()
        return True

    def _preflight_failed(self, message: str) -> None:
        self.session.say(message, error=True)
        self.health.show_busy("")

    def _preflight_done(self, result: Any) -> None:
        if self._preflight_kind == "lr":
            self.health.show_lr_find(result)
            self.panel.apply_fix({"lr": float(f"{result.suggested_lr:.2g}")})
            self.session.say(f"Suggested learning rate: {result.suggested_lr:.2g} (set in the form)")
        else:
            self.health.show_check(result)
            self.session.say(result.message, error=not result.ok)

    def _preflight_ended(self) -> None:
        running = self.training
        self.panel.find_lr_button.setEnabled(not running)
        self.panel.check_button.setEnabled(not running)

    def predict_path(self, path: str | Path) -> np.ndarray | None:
        """Show the Predict tab with this image file's prediction."""
        self.tabs.setCurrentWidget(self.predict)
        return self.predict.predict_file(str(path))

    def open_path(self, path: Path, kind: str) -> None:
        """A path dropped on the tab: a folder becomes the data, a .cnnd opens, an image is predicted."""
        if kind == "folder":
            if not self.training:
                self.data_panel.set_folder(path)
        elif kind == "model":
            self.open_model(path)
        elif kind == "image":
            self.predict_path(path)

    # --- training -----------------------------------------------------------------------------------------
    def start_training(self) -> None:
        if self.training:
            return
        if self._sync_timer.isActive():
            self.sync_now()
        ok, why = self.can_train()
        if not ok:
            self.session.say(why, error=True)
            return
        if self.data_panel.loading or self.session.data is None:
            self._start_when_loaded = True
            self.session.say("Waiting for the folder to finish loading...")
            return
        d = self.session.data
        # A validation folder is used as is; otherwise the trainer splits off val_split itself (the
        # same seeded split `_split` shows the samples from).
        train, val = d.train, d.val
        settings = dict(self.document.spec.training)
        settings.update(self.panel.settings())
        cur = self.session.current
        same = self.continue_box.isChecked() and self.session.can_continue() and cur is not None
        start = cur.trained if same else None
        initial, init_from, plan = None, None, None
        if self.continue_box.isChecked() and cur is not None and start is None:
            # an edited design: the compatible layers keep their weights (engine.transfer's rule)
            plan = self.keep_weights.plans.plan(self.document.spec, cur, int(settings.get("seed", 0) or 0))
            if plan is not None:
                initial = plan.state
                init_from = f"the window's model ({cur.describe()})"
        try:
            frozen = self.keep_weights.frozen(self.document.spec) if start is not None or plan is not None else []
        except EngineError as e:
            self.session.say(str(e).replace("--freeze", "Freeze layers"), error=True)
            return
        history = list(start.history) if start is not None else []
        spec = self.document.spec.copy()
        self._run_spec = spec
        # what the trainer will use
        self._run_prep = start.preprocessing if start is not None else Preprocessing.for_input(spec.input_shape)
        self._choose_sample_source(refresh=False)  # the run draws the maps; the old model's would be stale
        req = TrainRequest(spec=spec, train=train, val=val, settings=settings, start=start,
                           initial_state=initial, sample=self._sample_input(self._run_prep),
                           sample_image=self._sample, frozen=frozen, init_from=init_from)
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
        self.health.load_history(history)
        if start is not None:
            self.plots.load_history(history)
        done = len(history)
        self.plots.set_epochs(0, done + int(settings.get("epochs", 1)))
        self._clear_maps()
        self.prepare_maps()
        self.panel.reset_progress()
        self.last_error = None
        self._why_shown = None
        self.session.say("")
        self.session.set_evaluation(None)
        self.tabs.setCurrentIndex(0)
        self._runner.start()
        self.session.set_run_state("running")
        self.data_panel.set_locked(True)
        self.training_changed.emit(True)
        self._show_model_label()
        self.refresh_state()
        self._status(f"Training {spec.name} on {len(train):,} images from {d.folder}...")
        if plan is not None:
            self.session.say(plan.describe().replace("kept weights of layer(s)", "Continuing: kept the weights of "
                                                     "layer(s)") + (f"; frozen: {frozen}" if frozen else ""))

    def pause(self) -> None:
        if self._job is not None and self.training:
            self._job.pause()

    def resume(self) -> None:
        if self._job is not None and self.training:
            self._job.resume()

    def stop(self) -> None:
        if self._job is not None and self.training:
            self._job.stop()
            self.session.set_run_state("stopping")
            self._status("Stopping after the current batch...")

    def _run_changed(self, state: str) -> None:
        self.panel.set_state(state)

    def _on_paused(self, paused: bool) -> None:
        if self.training and self.session.run_state != "stopping":
            self.session.set_run_state("paused" if paused else "running")
            self._status("Training paused" if paused else "Training resumed")

    def _on_warnings(self, warnings: list) -> None:
        self.session.say("Note: " + "; ".join(warnings))

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
        self.health.add_epoch(m)

    def _on_finished(self, result: RunResult) -> None:
        """The job's last word: the model (kept even when stopped or failed), history, evaluation."""
        self.plots.flush()
        trained = self.session.model_from_run(result.trained)
        if trained is not None:
            self.session.set_model(trained)
        status, message = result.status, result.message
        self.panel.show_finished(status)
        if status == "failed":
            self.last_error = message
            self.session.say(message + ("\nThe design and the last good weights are kept."
                                        if self.session.current is not None else ""), error=True)
        else:
            self.session.say(message)
        self._status(message)
        ev = result.evaluation
        if ev is not None and trained is not None:
            source = f"{ev.get('title', 'validation')} images of {self.session.data.folder}" \
                if self.session.data is not None else ""
            self.session.set_evaluation(Evaluation.from_dict({**ev, "source": source}, trained))
        if trained is not None:
            self.refresh_maps()

    def _on_done(self) -> None:
        self._runner = None
        self._job = None
        self._run_spec = None
        self.session.set_run_state("idle")
        self.data_panel.set_locked(False)
        self.training_changed.emit(False)
        self._reset_pending = True
        self.sync_now()  # catch up with edits made in the Design tab while training ran
        if self.session.current is not None:
            self.model_ready.emit()

    # --- results ---------------------------------------------------------------------------------------------
    def _evaluation_changed(self, ev: Evaluation | None) -> None:
        if ev is None:
            self.results.clear()
            return
        about = f"{ev.model.name}" if ev.model is not None else ""
        self.results.set_results(ev.classes, ev.labels, ev.probs, ev.images, ev.loss, title=ev.title,
                                 paths=ev.paths, about=about, source=ev.source)

    def evaluate_dialog(self) -> bool:
        """Ask for a folder (starting at the last one evaluated) and evaluate the model on it."""
        if self.session.current is None:
            return False
        d = self.session.data
        start = self.session.eval_folder or (d.folder if d is not None else None) or Path.cwd()
        path = QFileDialog.getExistingDirectory(self, "Evaluate the model on a folder (one subfolder per class)",
                                                str(start))
        return self.evaluate_folder(path) if path else False

    def evaluate_folder(self, folder: str | Path) -> bool:
        """Score the current model on a folder of class subfolders (its val/ or test/ part when it
        has train/ and val/), in the background; the result arrives via `evaluated`."""
        cur = self.session.current
        if cur is None or self.evaluating or self.training:
            return False
        self.session.eval_folder = Path(folder)
        job = EvalJob(cur.model, None, cur.prep, "folder", folder=Path(folder), classes=cur.classes)
        job.result.connect(lambda ev, c=cur: self._on_evaluated(ev, c))
        # a bound slot of this widget, not a lambda: a lambda ran in the job's thread and touched
        # widgets from there (a segfault seen in CI); a QObject's slot is queued to the GUI thread
        job.failed.connect(self._on_eval_failed)
        self._eval_runner = JobRunner(job, "cnn-designer-evaluate")
        self._eval_runner.finished.connect(self._eval_done)
        self._status(f"Evaluating {cur.name} on {folder}...")
        self._eval_runner.start()
        self.refresh_state()
        return True

    @Slot(str)
    def _on_eval_failed(self, message: str) -> None:
        self.session.say(message, error=True)

    def _on_evaluated(self, ev: dict, cur: CurrentModel) -> None:
        if cur is not self.session.current:
            return  # the model changed meanwhile: these are another model's results
        evaluation = Evaluation.from_dict(ev, cur)
        self.session.set_evaluation(evaluation)
        self.tabs.setCurrentWidget(self.results)
        msg = (f"Evaluated {cur.name} on {evaluation.source}: {len(evaluation.labels):,} images, accuracy "
               f"{100 * (evaluation.accuracy or 0):.2f} %, loss {evaluation.loss:.4f}")
        self.session.say(msg)
        self._status(msg + f" ({ev.get('seconds', 0):.1f} s)")
        self.evaluated.emit(evaluation)

    def _eval_done(self) -> None:
        self._eval_runner = None
        self.refresh_state()

    # --- model files ----------------------------------------------------------------------------------------
    def save_model(self, path: str | Path) -> Path:
        """Write the current model as .cnnd (atomic); EngineError with a clear message on failure."""
        from engine import modelfile

        cur = self.session.current
        if cur is None:
            raise EngineError("there is no trained model to save yet: train first")
        modelfile.save(path, cur.trained)
        self.session.mark_saved(Path(path))
        self._status(f"Saved the trained model {cur.spec.name} to {path}")
        return Path(path)

    def save_model_dialog(self) -> Path | None:
        cur = self.session.current
        if cur is None:
            return None
        start = str(cur.path or Path.cwd() / f"{(cur.spec.name or 'model').replace(' ', '_')}.cnnd")
        path, _ = QFileDialog.getSaveFileName(self, f"Save trained model ({cur.describe()})", start,
                                              "CNN Designer model (*.cnnd)")
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

    def adopt_model_file(self, mf: TrainedModel, path: Path | None = None) -> bool:
        """Make a loaded model file the current model: look inside it, evaluate it, continue training it."""
        try:
            mf.model()
        except EngineError as e:
            self.last_error = str(e)
            self.session.say(f"Cannot use the model: {e}", error=True)
            return False
        self._adopted = mf
        if path is not None:
            mf.path = Path(path)
        cur = CurrentModel(mf, saved=True)
        if mf.training:
            self.panel.set_settings(mf.training)
        self.session.set_model(cur)
        self.plots.clear()
        self.plots.load_history(cur.history)
        history = cur.history
        acc = next((h.get("val_accuracy") for h in reversed(history) if h.get("val_accuracy") is not None), None)
        extra = f"; last validation accuracy {100 * acc:.2f} %" if acc is not None else ""
        n = len(history)
        self.session.say(f"Opened {cur.name}: {len(cur.classes)} classes, {n} epoch{'' if n == 1 else 's'} "
                         f"trained{extra}. Evaluate it on a folder, predict images, or continue training.")
        self._status(f"Opened model {cur.name}")
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
        """Ask before closing while training, or with a trained model not saved; False = stay open."""
        if self.training:
            answer = QMessageBox.question(
                parent or self, "Training is running",
                "Training is still running. Stop it and close? (Weights trained so far are not saved.)",
                QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, QMessageBox.StandardButton.No)
            if answer != QMessageBox.StandardButton.Yes:
                return False
        elif self.session.unsaved_model:
            cur = self.session.current
            answer = QMessageBox.warning(
                parent or self, "Trained model not saved",
                f"The trained model {cur.describe()} has not been saved. Save it before closing?",
                QMessageBox.StandardButton.Save | QMessageBox.StandardButton.Discard
                | QMessageBox.StandardButton.Cancel, QMessageBox.StandardButton.Save)
            if answer == QMessageBox.StandardButton.Cancel:
                return False
            if answer == QMessageBox.StandardButton.Save and self.save_model_dialog() is None:
                return False
        self.shutdown()
        return True

    def shutdown(self) -> None:
        """Stop training and loading and join their threads (no orphan thread after the window)."""
        self._start_when_loaded = False
        if self._runner is not None:
            self._runner.shutdown()
        if self._eval_runner is not None:
            self._eval_runner.shutdown()
        if self._preflight is not None:
            self._preflight.shutdown()
        self.data_panel.shutdown()
        # Deliver the job's last queued signals now, while the widgets still exist.
        QCoreApplication.sendPostedEvents()
        if self._runner is not None and not self._runner.running():
            self._runner = None
            self._job = None


def install(window: Any) -> TrainingWorkspace:
    """Add the workspace to the designer's main window (called by designer.app.build_window),
    through the window's hooks: the Train tab, the Train action, a close guard, `about_to_close`
    to join threads, the Model menu, and the window's one drop handler."""
    ws = TrainingWorkspace(window.document, window.undo_stack)
    index = window.set_training_workspace(ws, "Train")

    def train() -> None:
        window.tabs.setCurrentIndex(index)
        ws.load_default_folder()
        ws.start_training()

    def dropped(path: Path, kind: str) -> None:
        if kind in ("design", "model") and path.is_file():
            window.open_file(path)  # through the window, so unsaved changes are asked about
            return
        window.tabs.setCurrentIndex(index)
        ws.open_path(path, kind)

    window.set_train_handler(train)
    window.add_close_guard(lambda: ws.confirm_close(window))
    window.about_to_close.connect(ws.shutdown)
    ws.training_changed.connect(window.totals.hold_estimate)  # no benchmark beside a run
    ws.training_changed.connect(lambda on: window.set_design_note(
        "Training is running on the design as it was at Start: edits made here apply to the next run." if on
        else ""))
    ws.open_model_action.triggered.connect(lambda _=False: window.tabs.setCurrentIndex(index))
    ws.drops = DropRouter(window, dropped)
    menu = window.model_menu
    menu.addAction(ws.pause_action)
    menu.addAction(ws.stop_action)
    menu.addSeparator()
    menu.addAction(ws.save_model_action)
    menu.addAction(ws.open_model_action)
    return ws
