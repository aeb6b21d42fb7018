"""The training workspace: data on the left, the network learning on the right.

Its state (data, current model and the design it belongs to, run state, results) lives in a
Qt-free designer.session.TrainSession; the parts of the tab observe it, each in one place:

* designer.data_panel.DataPanel - the folder, its loading and whether the design fits it;
* designer.training_panel.TrainingPanel - the form and the run's buttons;
* designer.live_view.LiveView - curves, feature maps and filters of a chosen sample;
* designer.results / designer.health_panel - Results, Predict and Health pages;
* designer.evaluation.EvaluationPages - Results and Predict following the current model, and
  evaluating it on a folder;
* designer.model_files.ModelFiles - Open / Save model and their Model menu actions;
* designer.jobs.TrainTabJobs - the training run and the evaluation in their threads;
* designer.run_display.RunDisplay - what a run shows while it runs and ends, and its Pause / Stop;
* designer.preflight.Preflight - "Find learning rate" and "Can it learn?".

The rules without widgets (may Start be pressed, what a run trains with, which model is shown) are
designer.session.TrainSession's.

This module lays them out, follows the design, and starts runs and evaluations. Training itself
is the engine's trainer (the one the CLI uses).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QCoreApplication, Qt, QTimer, Signal
from PySide6.QtGui import QUndoStack
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QPushButton,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from designer.data_panel import DataPanel
from designer.drops import DropRouter
from designer.evaluation import EvaluationPages
from designer.health_panel import HealthPanel
from designer.jobs import SHUTDOWN_MS, TrainTabJobs
from designer.keep_weights import KeepWeightsPanel, StackMarks
from designer.layout import ColumnScroll, splitter
from designer.live_view import LiveView
from designer.model_files import ModelFiles
from designer.preflight import Preflight
from designer.results import PredictView, ResultsView
from designer.run_display import RunDisplay
from designer.session import CurrentModel, TrainSession
from designer.training_panel import TrainingPanel
from designer.worker import LoadedData, TrainRequest
from engine.data import Preprocessing
from engine.errors import EngineError
from engine.resources import sample_data_dir

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
    #: An evaluation finished (designer.session.Evaluation); another may be started from here on.
    evaluated = Signal(object)

    def __init__(self, document: Any, undo_stack: QUndoStack | None = None, parent: QWidget | None = None):
        super().__init__(parent)
        self.document = document
        self.undo_stack = undo_stack
        self.session = TrainSession(document)
        self.jobs = TrainTabJobs(self)
        self.files = ModelFiles(self.session, undo_stack, self)
        self._run_spec: Any = None
        self._run_prep: Preprocessing | None = None
        self._start_when_loaded = False
        self._closing = False
        #: the main window's drop handler, when installed there
        self.drops: DropRouter | None = None

        # --- left column: data and training ---
        self.data_panel = DataPanel(self.session, undo_stack)
        self.panel = TrainingPanel()
        # Continue from the current weights: what it keeps; the design's frozen layers
        self.keep_weights = KeepWeightsPanel(document, undo_stack)
        self.continue_box = self.keep_weights.continue_box
        self.continue_box.toggled.connect(self.refresh_state)
        self.save_button = QPushButton("Save model...")
        self.save_button.setToolTip("Save the trained model (architecture, weights, classes, preprocessing) as .cnnd")
        self.open_button = QPushButton("Open model...")
        self.open_button.setToolTip("Open a .cnnd to look inside it, evaluate it on a folder, or continue training")
        self.eval_button = QPushButton("Evaluate on folder...")
        self.eval_button.setToolTip("Choose a folder of class subfolders and score the current model on it")
        self.save_button.clicked.connect(self.files.save_dialog)
        self.open_button.clicked.connect(self.files.open_dialog)
        # The data and the form scroll at their natural height (so warnings wrap instead of being
        # cut and the class table keeps its rows); the run's controls stay in sight below them.
        form = QWidget()
        fl = QVBoxLayout(form)
        fl.setContentsMargins(6, 6, 6, 6)
        fl.addWidget(self.data_panel, 1)  # spare height: the class table's
        fl.addWidget(self.panel)
        self.left_scroll = ColumnScroll()
        self.left_scroll.setWidget(form)
        scroll = QWidget()
        sl = QVBoxLayout(scroll)
        sl.setContentsMargins(0, 0, 6, 6)
        sl.addWidget(self.left_scroll, 1)
        controls = QVBoxLayout()
        controls.setContentsMargins(6, 0, 0, 0)
        controls.addWidget(self.panel.controls)
        controls.addWidget(self.keep_weights)
        sl.addLayout(controls)
        scroll.setMinimumWidth(400)

        # --- right: which model, then live view, results, predict, health ---
        self.model_label = QLabel()
        self.model_label.setWordWrap(True)
        self.model_label.setContentsMargins(6, 4, 6, 2)
        self.model_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.live = LiveView(self.session, self.panel.progress_box)
        self.plots, self.maps, self.filters = self.live.plots, self.live.maps, self.live.filters
        self.sample_spin = self.live.sample_spin
        self.results = ResultsView()
        self.predict = PredictView()
        self.health = HealthPanel()
        self.tabs = QTabWidget()
        self.tabs.addTab(self.live, "Live training")
        self.tabs.addTab(self.results, "Results")
        self.tabs.addTab(self.predict, "Predict")
        self.tabs.addTab(self.health, "Health")
        self.run_display = RunDisplay(self.session, self.jobs, self.panel, self.live, self.health, self)
        self.eval_pages = EvaluationPages(self.session, self.jobs, self.results, self.predict, self.tabs,
                                          self.val_images, self)
        self.eval_button.clicked.connect(self.eval_pages.evaluate_dialog)
        self.preflight = Preflight(self.session, self.panel, self.health, self.tabs, self.can_train,
                                   lambda: self.training, self)
        right = QWidget()
        rl = QVBoxLayout(right)
        rl.setContentsMargins(0, 0, 0, 0)
        rl.setSpacing(0)
        # Which model the pages show, and what can be done with it, head the pages (the left column
        # keeps its height for the data and the form)
        header = QHBoxLayout()
        header.setContentsMargins(0, 0, 6, 0)
        header.addWidget(self.model_label, 1)
        for b in (self.open_button, self.save_button, self.eval_button):
            header.addWidget(b, 0, Qt.AlignmentFlag.AlignVCenter)
        rl.addLayout(header)
        rl.addWidget(self.tabs, 1)

        split = splitter(Qt.Orientation.Horizontal, (scroll, 0), (right, 1), sizes=[420, 860])
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(split)

        # --- wiring: the panels ask, the session tells, the jobs report ---
        s = self.session
        s.model_changed.connect(self._model_changed)
        s.run_changed.connect(self.panel.set_state)
        s.message_changed.connect(self.panel.show_message)
        s.data_changed.connect(self._data_changed)
        self.panel.start_requested.connect(self.start_training)
        self.panel.pause_requested.connect(self.run_display.pause)
        self.panel.resume_requested.connect(self.run_display.resume)
        self.panel.stop_requested.connect(self.run_display.stop)
        self.panel.settings_changed.connect(self._settings_changed)
        self.panel.find_lr_requested.connect(lambda: self.preflight.run("lr"))
        self.panel.check_requested.connect(lambda: self.preflight.run("check"))
        self.health.fix_requested.connect(self.panel.apply_fix)
        self.data_panel.load_failed.connect(self._load_failed)
        self.data_panel.busy_changed.connect(self._busy_changed)
        self.data_panel.problems_changed.connect(self.refresh_state)
        self.results.open_requested.connect(self.eval_pages.predict_path)
        self.live.sample_changed.connect(self._sample_changed)
        self.live.status_message.connect(self._status)
        self.files.status_message.connect(self._status)
        self.run_display.status_message.connect(self._status)
        self.eval_pages.status_message.connect(self._status)
        self.eval_pages.state_changed.connect(self.refresh_state)
        self.eval_pages.evaluated.connect(self.evaluated)
        self.files.adopted.connect(self._adopted)
        self.jobs.run_ended.connect(self._on_done)

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

    # --- following the design ---------------------------------------------------------------------------
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
            if not self.training:
                self.files.adopt_document_model()  # a .cnnd opened with File > Open (rare, so at once)
        if self.training:
            self._show_model_label()  # says that the run trains the design as it was at Start
        if not self._sync_timer.isActive():
            self._sync_timer.start()

    def sync_now(self) -> None:
        """Apply pending design changes at once (tests, and before starting a run)."""
        self._sync_timer.stop()
        self._sync_design()

    def _sync_design(self) -> None:
        if self.training or self._closing:
            return  # caught up in _on_done
        reset, self._reset_pending = self._reset_pending, False
        if reset:
            self.files.adopt_document_model()  # opened during a run
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
        if self.live.maps_drawn and not self.session.matches_design():
            self.live.clear_maps()  # the model's maps are not this design's
        if self.isVisible():
            self.prepare_maps()
            if self.session.matches_design():
                self.live.refresh()
        else:
            self._maps_stale = True

    def prepare_maps(self) -> None:
        """Lay out the feature-map views for the current design ahead of training."""
        self.live.prepare(self.training or self.session.matches_design())

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
        return self.jobs.training

    @property
    def evaluating(self) -> bool:
        return self.jobs.evaluating

    def can_train(self) -> tuple[bool, str]:
        """Whether Start may be pressed, and why not (designer.session.TrainSession.can_train)."""
        return self.session.can_train(self.data_panel.fits(), self.training, self.evaluating)

    def refresh_state(self) -> None:
        ok, why = self.can_train()
        self.panel.set_can_start(ok, why)
        if not self.training:
            self.session.show_why_not(ok, why)
        has_model = self.session.current is not None
        self.save_button.setEnabled(has_model and not self.training)
        self.eval_button.setEnabled(has_model and not self.training and not self.evaluating)
        self.open_button.setEnabled(not self.training)
        seed = int(self.panel.settings().get("seed", 0) or 0)
        self.keep_weights.update_for(self.document.spec, self.session, seed, busy=self.training)
        self.files.set_enabled(has_model, self.training)
        self.run_display.set_running(self.training)
        self.health.set_running(self.training)

    def _show_model_label(self) -> None:
        self.model_label.setText(self.session.model_text(self._run_spec if self.training else None))

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
        self.live.set_source(self.val_images())
        self.eval_pages.show_model()
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
        """(uint8 images, labels) the sample picker and Predict's examples use: the run's validation
        images with the form's split, else the training images."""
        settings = self.panel.settings()
        return self.session.validation_images(float(settings["val_split"]), int(settings["seed"]))

    def _sample_changed(self) -> None:
        """Another sample for the maps: the run draws it from its next maps, else it is drawn now."""
        job = self.jobs.run_job
        if job is not None:
            job.set_sample(self.live.sample_input(self._run_prep), self.live.sample)
        else:
            self.live.refresh()

    # --- the current model --------------------------------------------------------------------------------
    def _model_changed(self, cur: CurrentModel | None) -> None:
        """Everything on the right belongs to the current model: follow it, and clear what was
        another model's."""
        self.live.clear_maps()
        self._maps_stale = True
        if self.isVisible():
            self._maps_stale = False
            self.prepare_maps()
            self.live.refresh()
        self.eval_pages.show_model()
        self.run_display.follow_model(cur)
        if cur is not None and not self.training:
            self.health.load_history(cur.history)
        self._show_model_label()
        self.refresh_state()

    def _adopted(self, cur: CurrentModel) -> None:
        """A model file was opened: its settings fill the form, its history the curves."""
        if cur.settings:
            self.panel.set_settings(cur.settings)
        self.plots.clear()
        self.plots.load_history(cur.history)
        self.refresh_state()  # the form's seed is the model's now
        self.model_ready.emit()

    def open_path(self, path: Path, kind: str) -> None:
        """A path dropped on the tab: a folder becomes the data, a .cnnd opens, an image is predicted."""
        if kind == "folder":
            if not self.training:
                self.data_panel.set_folder(path)
        elif kind == "model":
            self.files.open(path)
        elif kind == "image":
            self.eval_pages.predict_path(path)

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
        # same seeded split the samples are shown from: TrainSession.validation_images).
        train, val = d.train, d.val
        settings = self.session.run_settings(self.panel.settings())
        try:
            origin = self.keep_weights.starting_point(self.document.spec, self.session,
                                                      int(settings.get("seed", 0) or 0))
        except EngineError as e:
            self.session.say(str(e).replace("--freeze", "Freeze layers"), error=True)
            return
        start, plan, frozen = origin.start, origin.plan, origin.frozen
        spec = self.document.spec.copy()
        self._run_spec = spec
        self._run_prep = self.session.run_preprocessing(spec, start)
        self.live.set_source(self.val_images(), refresh=False)  # the run draws the maps; the old model's are stale
        req = TrainRequest(spec=spec, train=train, val=val, settings=settings, start=start,
                           initial_state=origin.initial_state, sample=self.live.sample_input(self._run_prep),
                           sample_image=self.live.sample, frozen=frozen, init_from=origin.init_from)
        self.run_display.begin(list(start.history) if start is not None else [], start is not None,
                               int(settings.get("epochs", 1)))
        self.jobs.start_run(req)
        self.prepare_maps()
        self.run_display.started()
        self.tabs.setCurrentIndex(0)
        self.data_panel.set_locked(True)
        self.training_changed.emit(True)
        self._show_model_label()
        self.refresh_state()
        self._status(f"Training {spec.name} on {len(train):,} images from {d.folder}...")
        if plan is not None:
            self.session.say(self.session.describe_start(plan, frozen))

    def _on_done(self) -> None:
        self._run_spec = None
        self.session.set_run_state("idle")
        self.data_panel.set_locked(False)
        self.training_changed.emit(False)
        self._reset_pending = True
        self.sync_now()  # catch up with edits made in the Design tab while training ran
        if self.session.current is not None:
            self.model_ready.emit()

    def evaluate_folder(self, folder: str | Path) -> bool:
        """Score the current model on a folder in the background; the result arrives via `evaluated`."""
        return self.eval_pages.evaluate_folder(folder)

    # --- closing ----------------------------------------------------------------------------------------------
    def confirm_close(self, parent: QWidget | None = None) -> bool:
        """Ask before closing while training, or with a trained model not saved; False = stay open.
        Only asks: the window stops the jobs (`shutdown`, on `about_to_close`) once every question
        was answered, so a Cancel to a later question (the unsaved design) leaves the run going."""
        if self.training:
            answer = QMessageBox.question(
                parent or self, "Training is running",
                "Training is still running. Stop it and close? (Weights trained so far are not saved.)",
                QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, QMessageBox.StandardButton.No)
            if answer != QMessageBox.StandardButton.Yes:
                return False
        elif not self.files.may_discard(parent):
            return False
        return True

    def shutdown(self, timeout_ms: int = SHUTDOWN_MS) -> None:
        """Stop training, evaluating and loading and join their threads, each within `timeout_ms`
        (no orphan thread after the window, and no close that hangs on a stuck job)."""
        self._start_when_loaded = False
        self.jobs.shutdown(timeout_ms)
        self.preflight.shutdown(timeout_ms)
        self.predict.shutdown()
        self.results.shutdown()
        self.data_panel.shutdown()
        # Deliver the jobs' last queued signals now, while the widgets still exist, without letting
        # them start another job (the end of a run catches up with the design, which may reload).
        self._closing = True
        try:
            QCoreApplication.sendPostedEvents()
        finally:
            self._closing = False


def install(window: Any) -> TrainingWorkspace:
    """Add the workspace to the designer's main window (called by designer.app.build_window),
    through the window's hooks: the Train tab, the Train action, a close guard, `about_to_close`
    to join threads, the Model menu, and the window's one drop handler."""
    ws = TrainingWorkspace(window.document, window.undo_stack)
    index = window.set_training_workspace(ws, "Train")
    ws.stack_marks = StackMarks(window.model, window.document, ws.session)  # kept / new on the Design tab's rows

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
    ws.files.open_action.triggered.connect(lambda _=False: window.tabs.setCurrentIndex(index))
    ws.drops = DropRouter(window, dropped)
    menu = window.model_menu
    menu.addAction(ws.run_display.pause_action)
    menu.addAction(ws.run_display.stop_action)
    menu.addSeparator()
    menu.addAction(ws.files.save_action)
    menu.addAction(ws.files.open_action)
    return ws
