"""The Train tab's state without Qt: the data set, the current model and which design it belongs
to, the run's state and the last evaluation, with change notifications.

Like designer/document.py for the Design tab: kept free of Qt so the rules (what belongs to which
model, what is stale, what is unsaved) are tested without a display, and every Train tab widget is
a thin observer of these signals. Each change goes through one method below, which emits once.
Background jobs (loading, training, evaluating) stay with the widgets that own their threads; they
report here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from designer.document import Signal
from engine.data import DataError, Preprocessing, split_stratified
from engine.trained import TrainedModel

#: idle -> running <-> paused -> stopping -> idle (the worker's last signal ends a run).
RUN_STATES = ("idle", "running", "paused", "stopping")


def epoch_counts(history: list[dict[str, Any]]) -> tuple[int, int]:
    """(whole epochs, epochs a Stop cut short) of a history: an epoch cut short is recorded with
    "complete": false (engine.training.EpochEnd), its figures covering the batches that ran."""
    cut = sum(1 for h in history if h.get("complete", True) is False)
    return len(history) - cut, cut


def epochs_text(history: list[dict[str, Any]], short: bool = False) -> str:
    """How much a model trained, the same way wherever the window says it: "8 epochs", or after a
    Stop mid-epoch "7 full epochs + 1 cut short" (the model line, the Runs tab, the file dialogs),
    agreeing with the run's own message ("after 7 complete epoch(s) and part of the next").
    `short`: the number alone for a table cell ("8", "7 + 1 cut short")."""
    full, cut = epoch_counts(history)
    if short:
        return f"{full} + {cut} cut short" if cut else str(full)
    if not cut:
        return f"{full} epoch{'' if full == 1 else 's'}"
    if not full and cut == 1:
        return "part of an epoch"
    return f"{full} full epoch{'' if full == 1 else 's'} + {cut} cut short"


@dataclass
class CurrentModel:
    """The model the Train tab works with: trained here, or opened from a .cnnd.

    Everything about the model itself is the engine's one trained-model type (`trained`: weights,
    classes, preprocessing, history, settings, file); this adds only what the tab needs to know.
    `spec` is the architecture it was trained for, which need not be the design being edited: the
    tab says so (`TrainSession.matches_design`) rather than showing its maps as the design's.
    """

    trained: TrainedModel
    #: False from the end of a run until it is saved (closing asks about it)
    saved: bool = True

    @property
    def model(self) -> Any:
        """The engine Model (engine.model.Model) with these weights."""
        return self.trained.model()

    @property
    def spec(self) -> Any:
        return self.trained.spec

    @property
    def classes(self) -> list[str]:
        return self.trained.classes

    @property
    def prep(self) -> Any:
        return self.trained.preprocessing

    @property
    def history(self) -> list[dict[str, Any]]:
        return self.trained.history

    @property
    def settings(self) -> dict[str, Any]:
        return self.trained.training

    @property
    def path(self) -> Path | None:
        """The .cnnd it was opened from or last saved to."""
        return self.trained.path

    @property
    def data(self) -> str | None:
        """The data folder it was trained on, when known."""
        d = self.trained.training.get("data")
        return d if isinstance(d, str) else None

    @property
    def name(self) -> str:
        if self.path is not None:
            return self.path.name
        return self.spec.name or "model"

    @property
    def trained_for(self) -> str:
        """How much it trained, in words (epochs_text): "8 epochs", "7 full epochs + 1 cut short"."""
        return epochs_text(self.history)

    def describe(self) -> str:
        """One line: which model this is, where it came from, whether it is saved."""
        trained = self.trained_for
        if self.path is not None:
            state = "" if self.saved else ", changed since saved"
            return f"{self.path.name} ({self.spec.name}, {trained}{state})"
        return f"{self.spec.name or 'model'} trained here ({trained}, not saved)"


@dataclass
class Evaluation:
    """Scores of one model on one set of images: what the Results view shows."""

    classes: list[str]
    labels: np.ndarray
    probs: np.ndarray
    images: np.ndarray | None
    loss: float | None
    title: str  # "validation", "folder", ...
    #: the image files, index-aligned with labels (mistakes name them, Predict opens them)
    paths: list[str] | None = None
    accuracy: float | None = None
    seconds: float | None = None
    #: where the images came from, said with the result
    source: str = ""
    #: the CurrentModel that produced it: results are dropped when the model changes
    model: CurrentModel | None = None

    @classmethod
    def from_dict(cls, ev: dict[str, Any], model: CurrentModel | None = None) -> Evaluation:
        labels = np.asarray(ev["labels"])
        probs = np.asarray(ev["probs"])
        acc = ev.get("accuracy")
        if acc is None and len(labels):
            acc = float(np.mean(probs.argmax(axis=1) == labels))
        return cls(list(ev["classes"]), labels, probs, ev.get("images"), ev.get("loss"), ev.get("title", "validation"),
                   ev.get("paths"), acc, ev.get("seconds"), ev.get("source", ""), model)


class TrainSession:
    """The Train tab's model: data, current model, run state, evaluation, and the tab's message."""

    def __init__(self, document: Any) -> None:
        self.document = document
        #: designer.worker.LoadedData of the chosen folder, at the design's input size
        self.data: Any = None
        self.current: CurrentModel | None = None
        self.run_state = "idle"
        self.evaluation: Evaluation | None = None
        #: the folder last evaluated on (the Evaluate dialog starts there)
        self.eval_folder: Path | None = None
        #: (text, error) the tab shows by its buttons; tied to the model and data it was said about
        self.message: tuple[str, bool] = ("", False)
        #: the reason Start is disabled, when that is what the message says (see show_why_not)
        self.why_shown: str | None = None
        self.data_changed = Signal()
        self.model_changed = Signal()
        self.run_changed = Signal()
        self.evaluation_changed = Signal()
        self.message_changed = Signal()

    # --- data -------------------------------------------------------------------------------------
    def set_data(self, data: Any) -> None:
        """The loaded folder (None while loading or after a failure). A message about the old data
        (e.g. "the classes differ") no longer applies."""
        self.data = data
        if self.message[1]:
            self.say("")
        self.data_changed.emit(data)

    def validation_images(self, val_split: float, seed: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(uint8 images, labels) a run validates on: the validation folder, else the seeded,
        stratified share the trainer splits off (engine.data.split_stratified, the same call), else
        the training images when there is no split. None without data."""
        d = self.data
        if d is None:
            return None
        part = d.val
        if part is None and val_split > 0:
            try:
                part = split_stratified(d.train, val_split, seed)[1]
            except DataError:
                part = None
        part = part or d.train
        return part.images, part.labels

    # --- the current model ---------------------------------------------------------------------------
    def set_model(self, current: CurrentModel | None) -> None:
        """Replace the current model. Its predecessor's evaluation and messages go with it, and
        its engine model is closed (a helper process, if it has one)."""
        old = self.current
        if old is not None and current is not None and old.trained is not current.trained:
            old.trained.close()
        self.current = current
        self.set_evaluation(None)
        self.model_changed.emit(current)

    def model_from_run(self, trained: TrainedModel | None) -> CurrentModel | None:
        """A CurrentModel from the model a run produced (None when the run produced none)."""
        if trained is None:
            return None
        if self.data is not None:
            trained.training.setdefault("data", str(self.data.folder))
        return CurrentModel(trained, saved=False)

    def mark_saved(self, path: Path) -> None:
        if self.current is not None:
            self.current.trained.path = Path(path)
            self.current.saved = True
            self.model_changed.emit(self.current)

    @property
    def unsaved_model(self) -> bool:
        return self.current is not None and not self.current.saved

    def matches_design(self) -> bool:
        """The current model has the design's architecture and input (so its maps are the design's)."""
        cur = self.current
        if cur is None:
            return False
        spec = self.document.spec

        def layers(s: Any) -> list[dict[str, Any]]:  # a lock is a training setting, not architecture
            return [{k: v for k, v in c.items() if k != "frozen"} for c in s.to_dict()["layers"]]

        return layers(cur.spec) == layers(spec) and tuple(cur.spec.input_shape) == tuple(spec.input_shape)

    def can_continue(self) -> bool:
        """The current model can be trained further on the current design and data."""
        if self.current is None or not self.matches_design():
            return False
        return self.data is None or self.data.classes == self.current.classes

    # --- the run ------------------------------------------------------------------------------------
    def set_run_state(self, state: str) -> None:
        if state not in RUN_STATES:
            raise ValueError(f"unknown run state {state!r}")
        if state != self.run_state:
            self.run_state = state
            self.run_changed.emit(state)

    @property
    def training(self) -> bool:
        return self.run_state != "idle"

    def can_train(self, fits: tuple[bool, str], training: bool = False,
                  evaluating: bool = False) -> tuple[bool, str]:
        """Whether Start may be pressed, and the one-line reason why not. `fits` is the data
        panel's verdict on the folder; one still loading does not block (Start waits for it).
        `training` / `evaluating` are the jobs' (they outlast the run state by a signal)."""
        inf = self.document.inference
        if not inf.valid:
            return False, f"The design is invalid: {inf.error_message}"
        if training:
            return False, "training is running"
        if evaluating:
            return False, "an evaluation is running"
        ok, why = fits
        if not ok:
            if why == "the folder is still loading":
                return True, ""
            return False, why[:1].upper() + why[1:]
        return True, ""

    def show_why_not(self, ok: bool, why: str) -> None:
        """Say why Start is disabled (it is in the button's tooltip too), without covering a run's
        result or an opened model's summary: only an earlier reason of ours is replaced or cleared."""
        current = self.message[0]
        if not ok and (not current or current == self.why_shown):
            self.say(why)
            self.why_shown = why
        elif self.why_shown and current == self.why_shown:
            self.say("")
            self.why_shown = None

    def run_settings(self, form: dict[str, Any]) -> dict[str, Any]:
        """What a run trains with: the design's training settings, overridden by the form's."""
        settings = dict(self.document.spec.training)
        settings.update(form)
        return settings

    @staticmethod
    def run_preprocessing(spec: Any, start: TrainedModel | None) -> Preprocessing:
        """The preprocessing the trainer will use: a continued model's own, else the input's default
        (the sample's maps during the run are drawn with it)."""
        return start.preprocessing if start is not None else Preprocessing.for_input(spec.input_shape)

    @staticmethod
    def describe_start(plan: Any, frozen: Any) -> str:
        """The message a continued run starts with: which layers kept their weights, which are frozen."""
        if plan is None:
            return ""
        return plan.describe().replace("kept weights of layer(s)", "Continuing: kept the weights of layer(s)") + (
            f"; frozen: {frozen}" if frozen else "")

    def model_text(self, run_spec: Any = None) -> str:
        """Which model the Train tab's right side shows (rich text), and whether it is the design
        being edited; `run_spec` is the design a running run trains (as it was at Start)."""
        spec, cur = self.document.spec, self.current
        warn = "<span style='color:#8a5a00'>{}</span>"
        if run_spec is not None:
            text = f"Training <b>{run_spec.name or 'the design'}</b> as it was at Start."
            if run_spec.to_dict()["layers"] != spec.to_dict()["layers"] \
                    or tuple(run_spec.input_shape) != tuple(spec.input_shape):
                text += " " + warn.format("The design has been edited since: the changes apply to the next run.")
            return text
        if cur is None:
            return "No trained model yet: press <b>Start training</b>, or open a .cnnd."
        text = f"Model: <b>{cur.describe()}</b>"
        if not self.matches_design():
            text += " " + warn.format("(not the design on the Design tab: Predict, Results and Save use this "
                                      "model; train to get one for the new design)")
        return text

    # --- results and messages ---------------------------------------------------------------------------
    def set_evaluation(self, evaluation: Evaluation | None) -> None:
        if evaluation is None and self.evaluation is None:
            return
        self.evaluation = evaluation
        self.evaluation_changed.emit(evaluation)

    def say(self, text: str, error: bool = False) -> None:
        if (text, error) != self.message:
            self.message = (text, error)
            self.message_changed.emit(text, error)
