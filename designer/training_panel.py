"""The training form and controls: hyperparameters, Start / Pause-Resume / Stop, and progress.

The form edits the `training` settings saved with the design (so reopening a design restores how it
was trained); it knows nothing about threads. The workspace connects its request signals to the
worker and feeds `show_progress` with the trainer's events.
"""

from __future__ import annotations

import math
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

OPTIMIZERS = (("adam", "Adam"), ("adamw", "AdamW"), ("sgd", "SGD (momentum 0.9)"))
SCHEDULES = (("none", "Constant"), ("step", "Step: halve every 5 epochs"), ("cosine", "Cosine: down to 0"))

DEFAULTS: dict[str, Any] = {
    "epochs": 3,
    "batch_size": 64,
    "optimizer": "adam",
    "lr": 1e-3,
    "seed": 0,
    "augment": False,
    "aug_shift": 0.1,
    "aug_rotate": 10.0,
    "aug_hflip": False,
    "val_split": 0.1,
    "schedule": "none",
    "early_stopping": 0,
    "keep_best": False,
}
#: the engine's shift and rotation when "shifts and rotations" is ticked
SHIFT, ROTATE = 0.1, 10.0


def _positive(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and v > 0


def _hbox(*widgets: QWidget, grow: int | None = None) -> QWidget:
    """Widgets side by side in one form cell: widget `grow` takes the spare width, else the end does."""
    box = QWidget()
    lay = QHBoxLayout(box)
    lay.setContentsMargins(0, 0, 0, 0)
    for i, w in enumerate(widgets):
        lay.addWidget(w, 1 if i == grow else 0)
    if grow is None:
        lay.addStretch(1)
    return box


def fmt_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "-"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s}s"


class TrainingPanel(QWidget):
    """Hyperparameter form, run controls and a progress read-out."""

    start_requested = Signal()
    pause_requested = Signal()
    resume_requested = Signal()
    stop_requested = Signal()
    #: The form changed; carries settings() so the design can store them.
    settings_changed = Signal(dict)
    #: "Find learning rate" / "Can it learn?" (engine.preflight, run by the workspace)
    find_lr_requested = Signal()
    check_requested = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self._loading = False
        self._split_used = True
        self.state = "idle"
        #: "lr" or "check" while that one runs (its button reads Cancel), else ""
        self._preflight = ""
        self.form_box = form_box = QGroupBox("Hyperparameters")

        self.epochs = QSpinBox(minimum=1, maximum=1000)
        self.epochs.setToolTip("Passes over the training images.")
        self.batch_size = QSpinBox(minimum=1, maximum=4096)
        self.batch_size.setToolTip("Images per weight update; larger is faster per image but needs more memory.")
        self.optimizer = QComboBox()
        for key, label in OPTIMIZERS:
            self.optimizer.addItem(label, key)
        self.lr = QDoubleSpinBox(decimals=5, minimum=1e-5, maximum=10.0, singleStep=1e-4)
        self.lr.setToolTip("Step size. Adam works well at 0.001; if the loss becomes NaN, lower it.")
        self.seed = QSpinBox(minimum=0, maximum=2**31 - 1)
        self.seed.setToolTip("Same seed, data and settings give the same weights.")
        self.schedule = QComboBox()
        for key, label in SCHEDULES:
            self.schedule.addItem(label, key)
        self.schedule.setToolTip("How the learning rate changes over the run. A falling rate often gains the last "
                                 "points of accuracy.")
        self.augment = QCheckBox("Shifts and rotations")
        self.augment.setToolTip("Training images only: each epoch sees them moved by up to 10 % and turned by "
                                "up to 10 degrees.")
        self.hflip = QCheckBox("Horizontal flips")
        self.hflip.setToolTip("Training images only: half are mirrored left-right. The most useful augmentation "
                              "for photos; never for digits or text, which must not be mirrored.")
        self.early_stopping = QSpinBox(minimum=0, maximum=1000)
        self.early_stopping.setSpecialValueText("off")
        self.early_stopping.setPrefix("after ")
        self.early_stopping.setSuffix(" epochs without progress")
        self.early_stopping.setToolTip("Stop when the validation loss has not improved for this many epochs "
                                       "(needs validation images).")
        self.keep_best = QCheckBox("Keep the best epoch's weights")
        self.keep_best.setToolTip("At the end, go back to the weights of the epoch with the lowest validation loss.")
        self.val_split = QDoubleSpinBox(decimals=0, minimum=0, maximum=50, singleStep=5, suffix=" %")
        self._split_tip = ("Share of each class held out for validation (stratified, seeded), unless the "
                           "folder has its own validation folder.")
        self.val_split.setToolTip(self._split_tip)
        self.find_lr_button = QPushButton("Find learning rate")
        self.find_lr_button.setToolTip("Train briefly with a growing learning rate, plot the loss (Health tab) "
                                       "and put the suggested rate in this field")
        self.find_lr_button.clicked.connect(self.find_lr_requested)
        # Two short fields share a row where they fit, so the whole form stays in sight under the data
        # at 1366x768 (one field a row took 11 rows and pushed all but Epochs below the fold).
        self._grid = QGridLayout(form_box)
        self._grid.setContentsMargins(9, 6, 9, 6)
        self._grid.setVerticalSpacing(4)
        self._rows = 0
        self._grid.setColumnStretch(1, 1)
        self._grid.setColumnStretch(3, 1)
        self._row("Epochs", self.epochs, ("Batch size", self.batch_size))
        self._row("Optimizer", self.optimizer)
        self._row("Learning rate", _hbox(self.lr, self.find_lr_button, grow=0), buddy=self.lr)
        self._row("LR schedule", self.schedule)
        self._row("Augmentation", _hbox(self.augment, self.hflip), buddy=self.augment)
        self._row("Validation split", self.val_split, ("Seed", self.seed))
        self._row("Stop early", self.early_stopping)
        self._row("", self.keep_best)
        self._inputs = (self.epochs, self.batch_size, self.optimizer, self.lr, self.schedule, self.seed,
                        self.augment, self.hflip, self.early_stopping, self.keep_best)

        for w in (self.epochs, self.batch_size, self.seed, self.early_stopping):
            w.valueChanged.connect(self._changed)
        self.lr.valueChanged.connect(self._changed)
        self.val_split.valueChanged.connect(self._changed)
        self.optimizer.currentIndexChanged.connect(self._changed)
        self.schedule.currentIndexChanged.connect(self._changed)
        for box in (self.augment, self.hflip, self.keep_best):
            box.toggled.connect(self._changed)

        self.start_button = QPushButton("Start training")
        self.start_button.setDefault(True)
        self.pause_button = QPushButton("Pause")
        self.stop_button = QPushButton("Stop")
        self.start_button.clicked.connect(self.start_requested)
        self.pause_button.clicked.connect(self._pause_clicked)
        self.stop_button.clicked.connect(self.stop_requested)
        self.check_button = QPushButton("Can it learn?")
        self.check_button.setToolTip("Train on 20 images until it knows them by heart: a network that cannot "
                                     "will not learn the whole set (answer in the Health tab)")
        self.check_button.clicked.connect(self.check_requested)
        buttons = QHBoxLayout()
        buttons.addWidget(self.start_button, 2)
        buttons.addWidget(self.check_button, 1)
        buttons.addWidget(self.pause_button, 1)
        buttons.addWidget(self.stop_button, 1)

        # The progress read-out is a separate widget so the workspace can put it above the plots,
        # where the eye is during a run; the message (errors, results) stays by the buttons.
        self.progress_box = QWidget()
        grid = QGridLayout(self.progress_box)
        grid.setContentsMargins(4, 2, 4, 2)
        grid.setVerticalSpacing(2)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        self.progress.setTextVisible(True)
        self.progress.setFormat("idle")
        self.values: dict[str, QLabel] = {}
        names = (("epoch", "Epoch"), ("batch", "Batch"), ("loss", "Loss"), ("accuracy", "Accuracy"),
                 ("speed", "Images/s"), ("elapsed", "Elapsed"), ("eta", "ETA"), ("val", "Validation"))
        grid.addWidget(self.progress, 0, 0, 1, 2 * len(names) // 2)
        for k, (key, label) in enumerate(names):
            r, c = divmod(k, 4)
            name = QLabel(label + ":")
            name.setStyleSheet("color: #555;")
            name.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            value = QLabel("-")
            value.setMinimumWidth(70)
            value.setWordWrap(True)  # "26.2 %, loss 2.257" breaks in a narrow window rather than being cut
            value.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            grid.addWidget(name, r + 1, 2 * c)
            grid.addWidget(value, r + 1, 2 * c + 1)
            self.values[key] = value
        for c in range(4):
            grid.setColumnStretch(2 * c + 1, 1)
        self.message = QLabel("")
        self.message.setWordWrap(True)
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        # Start / Pause / Stop and the message are a separate widget too: the workspace keeps them in
        # sight below the scrolling form.
        self.controls = QWidget()
        cl = QVBoxLayout(self.controls)
        cl.setContentsMargins(0, 0, 0, 0)
        cl.addLayout(buttons)
        cl.addWidget(self.message)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(form_box)
        self.set_settings(DEFAULTS)
        self.set_state("idle")

    def _row(self, label: str, field: QWidget, pair: tuple[str, QWidget] | None = None,
             buddy: QWidget | None = None) -> None:
        """One row of the form: a labelled field across the row, or two labelled fields side by side."""
        r = self._rows
        self._rows += 1
        if label:
            lab = QLabel(label)
            lab.setBuddy(buddy or field)
            self._grid.addWidget(lab, r, 0)
        if pair is None:
            self._grid.addWidget(field, r, 1, 1, 3)
            return
        self._grid.addWidget(field, r, 1)
        lab = QLabel(pair[0])
        lab.setBuddy(pair[1])
        self._grid.addWidget(lab, r, 2)
        self._grid.addWidget(pair[1], r, 3)

    # --- settings ------------------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        return {
            "epochs": self.epochs.value(),
            "batch_size": self.batch_size.value(),
            "optimizer": self.optimizer.currentData(),
            "lr": float(f"{self.lr.value():.6g}"),
            "seed": self.seed.value(),
            "augment": self.augment.isChecked() or self.hflip.isChecked(),
            "aug_shift": SHIFT if self.augment.isChecked() else 0.0,
            "aug_rotate": ROTATE if self.augment.isChecked() else 0.0,
            "aug_hflip": self.hflip.isChecked(),
            "val_split": round(self.val_split.value() / 100.0, 4),
            "schedule": self.schedule.currentData(),
            "early_stopping": self.early_stopping.value(),
            "keep_best": self.keep_best.isChecked(),
        }

    def set_settings(self, settings: dict[str, Any]) -> None:
        """Fill the form from saved settings; unknown keys are kept by the caller, bad values ignored."""
        s = dict(DEFAULTS)
        s.update({k: v for k, v in (settings or {}).items() if k in DEFAULTS})
        self._loading = True
        try:
            for widget, key, conv in ((self.epochs, "epochs", int), (self.batch_size, "batch_size", int),
                                      (self.seed, "seed", int), (self.lr, "lr", float),
                                      (self.early_stopping, "early_stopping", int)):
                try:
                    widget.setValue(conv(s[key]))
                except (TypeError, ValueError):
                    widget.setValue(conv(DEFAULTS[key]))
            i = self.optimizer.findData(str(s["optimizer"]).lower())
            self.optimizer.setCurrentIndex(max(i, 0))
            self.schedule.setCurrentIndex(max(self.schedule.findData(str(s["schedule"]).lower()), 0))
            on = bool(s["augment"])
            moves = _positive(s["aug_shift"]) or _positive(s["aug_rotate"])
            self.augment.setChecked(on and moves)
            self.hflip.setChecked(on and bool(s["aug_hflip"]))
            self.keep_best.setChecked(bool(s["keep_best"]))
            try:
                self.val_split.setValue(float(s["val_split"]) * 100.0)
            except (TypeError, ValueError):
                self.val_split.setValue(DEFAULTS["val_split"] * 100.0)
        finally:
            self._loading = False

    def apply_fix(self, fix: dict[str, Any]) -> None:
        """A one-click fix from the Health tab, e.g. {"lr": 0.001}: through the form, so the design
        stores it like any edit."""
        if "lr" in fix:
            self.lr.setValue(float(fix["lr"]))
        if "augment" in fix:
            self.augment.setChecked(bool(fix["augment"]))

    def _changed(self, *_: Any) -> None:
        if not self._loading:
            self.settings_changed.emit(self.settings())

    # --- before a run ---------------------------------------------------------------------------
    def set_preflight(self, kind: str, running_training: bool = False) -> None:
        """"lr" or "check" is running: its button becomes Cancel and the other waits; "" = idle.
        The Cancel stays usable while a training run starts and ends meanwhile (set_state)."""
        self._preflight = kind
        self._sync_preflight(running_training)

    def _sync_preflight(self, running_training: bool) -> None:
        kind = self._preflight
        self.find_lr_button.setText("Cancel" if kind == "lr" else "Find learning rate")
        self.check_button.setText("Cancel" if kind == "check" else "Can it learn?")
        self.find_lr_button.setEnabled(kind == "lr" or (not kind and not running_training))
        self.check_button.setEnabled(kind == "check" or (not kind and not running_training))
        self.check_button.setVisible(kind == "check" or not running_training)

    # --- run state ------------------------------------------------------------------------------
    def set_state(self, state: str) -> None:
        """idle | running | paused | stopping: which controls make sense right now."""
        self.state = state
        running = state in ("running", "paused", "stopping")
        for w in self._inputs:
            w.setEnabled(not running)
        self._sync_preflight(running)
        self.val_split.setEnabled(not running and self._split_used)
        self.start_button.setVisible(not running)
        self.pause_button.setEnabled(state in ("running", "paused"))
        self.pause_button.setText("Resume" if state == "paused" else "Pause")
        self.stop_button.setEnabled(state in ("running", "paused"))
        if state == "paused":
            self.progress.setFormat("paused at %p%")
        elif state == "stopping":
            self.progress.setFormat("stopping...")
        elif state == "running":
            self.progress.setFormat("%p%")

    def set_split_used(self, used: bool, why_not: str = "") -> None:
        """Grey out the split when the folder brings its own validation images (it would be ignored)."""
        self._split_used = used
        self.val_split.setEnabled(used and self.state not in ("running", "paused", "stopping"))
        self.val_split.setToolTip(self._split_tip if used else why_not)

    def set_can_start(self, ok: bool, reason: str = "") -> None:
        self.start_button.setEnabled(ok)
        self.start_button.setToolTip("" if ok else reason)

    def _pause_clicked(self) -> None:
        if self.state == "paused":
            self.resume_requested.emit()
        else:
            self.pause_requested.emit()

    # --- progress ---------------------------------------------------------------------------------
    def reset_progress(self, message: bool = True) -> None:
        """Back to "idle" with no figures; `message=False` keeps the message (it may be about the
        model that replaced the run's, e.g. "Opened ...")."""
        self.progress.setValue(0)
        self.progress.setFormat("idle")
        for v in self.values.values():
            v.setText("-")
        if message:
            self.show_message("")

    def show_progress(self, p: dict[str, Any]) -> None:
        """p: epoch, epochs, batch, batches, loss, accuracy, images_per_second, elapsed, eta (any subset)."""
        epoch, epochs = p.get("epoch"), p.get("epochs")
        batch, batches = p.get("batch"), p.get("batches")
        if epoch is not None and epochs:
            self.values["epoch"].setText(f"{epoch} / {epochs}")
        if batch is not None and batches:
            self.values["batch"].setText(f"{batch} / {batches}")
        if epoch is not None and epochs and batch is not None and batches:
            done = ((epoch - 1) + batch / batches) / epochs
            self.progress.setValue(int(round(1000 * min(max(done, 0.0), 1.0))))
        if p.get("loss") is not None:
            self.values["loss"].setText(f"{p['loss']:.4f}")
        if p.get("accuracy") is not None:
            self.values["accuracy"].setText(f"{100 * p['accuracy']:.1f} %")
        if p.get("images_per_second"):
            self.values["speed"].setText(f"{p['images_per_second']:,.0f}")
        if p.get("elapsed") is not None:
            self.values["elapsed"].setText(fmt_duration(p["elapsed"]))
        if "eta" in p:
            self.values["eta"].setText("estimating..." if p["eta"] is None else fmt_duration(p["eta"]))

    def show_finished(self, status: str | None) -> None:
        """The run is over: the bar says how it ended and nothing is left counting down."""
        text = {"finished": "finished", "early_stopped": "stopped early at %p%", "stopped": "stopped at %p%",
                "failed": "failed at %p%"}.get(status or "", "ended at %p%")
        self.progress.setFormat(text)
        self.values["eta"].setText("-")

    def show_validation(self, val_loss: float | None, val_acc: float | None) -> None:
        if val_acc is None:
            self.values["val"].setText("-")
        else:
            loss = f", loss {val_loss:.3f}" if val_loss is not None else ""
            self.values["val"].setText(f"{100 * val_acc:.1f} %{loss}")

    def show_message(self, text: str, error: bool = False) -> None:
        self.message.setText(text)
        self.message.setVisible(bool(text))  # no blank line under the buttons (the column is short)
        self.message.setStyleSheet("color: #b00020; font-weight: bold;" if error else "color: #333;")
