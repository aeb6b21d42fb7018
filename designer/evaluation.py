"""The Results and Predict pages: they follow the current model, and a model is evaluated on a
folder from here.

Why a controller of its own: which model Predict and Results explain, which examples Predict
offers (only images of the model's classes and input size), and that an evaluation's result is
shown only while its model is still the current one are rules of their own, apart from training.
The evaluation itself runs in designer.jobs.TrainTabJobs, whose signals reach this object's slots
in the GUI thread.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PySide6.QtCore import QObject, Signal, Slot
from PySide6.QtWidgets import QFileDialog, QTabWidget, QWidget

from designer.jobs import TrainTabJobs
from designer.results import PredictView, ResultsView
from designer.saliency_view import Explainer
from designer.session import CurrentModel, Evaluation, TrainSession
from engine.data import Preprocessing, load_image


class EvaluationPages(QObject):
    """Keeps Results and Predict on the session's current model; evaluates it on a folder.
    `val_images()` gives the (images, labels) Predict's examples come from."""

    #: A line for the window's status bar.
    status_message = Signal(str)
    #: An evaluation started or ended (what may be pressed changed).
    state_changed = Signal()
    #: An evaluation finished (designer.session.Evaluation); another may be started from here on.
    evaluated = Signal(object)

    def __init__(self, session: TrainSession, jobs: TrainTabJobs, results: ResultsView, predict: PredictView,
                 tabs: QTabWidget, val_images: Callable[[], tuple[np.ndarray, np.ndarray] | None],
                 parent: QWidget | None = None):
        super().__init__(parent)
        self.session, self.jobs, self.results, self.predict, self.tabs = session, jobs, results, predict, tabs
        self._val_images = val_images
        session.evaluation_changed.connect(self._evaluation_changed)
        jobs.evaluation_ended.connect(self._ended)
        jobs.eval_failed.connect(self._failed)
        #: the model Predict and Results were last set up for
        self._shown: CurrentModel | None = None

    def show_model(self) -> None:
        """Predict and the explanations use the current model (or nothing when there is none)."""
        cur = self.session.current
        changed, self._shown = cur is not self._shown, cur
        if changed and self.session.evaluation is None:
            self._evaluation_changed(None)  # what Results says depends on the model (none yet: how to get them)
        if cur is None:
            self.predict.set_predictor(None, [])
            self.predict.set_examples(None, None)
            self.predict.set_explainer(None)
            self.results.set_explainer(None)
            if changed:
                self.predict.model_changed()
            return
        model = cur.model  # used in this thread only (an evaluation builds its own)
        prep = cur.prep or Preprocessing.for_input(model.spec.input_shape)
        explainer = Explainer(model, prep)
        self.predict.set_explainer(explainer)
        self.results.set_explainer(explainer)

        def predictor(path: str) -> tuple[np.ndarray, np.ndarray]:
            x = load_image(path, prep)
            img = np.clip(np.rint((x[0] * np.asarray(prep.std, np.float32).reshape(-1, 1, 1)
                                   + np.asarray(prep.mean, np.float32).reshape(-1, 1, 1)) / prep.scale),
                          0, 255).astype(np.uint8)
            return img, model.predict_proba(x)[0]

        self.predict.set_predictor(predictor, cur.classes)

        def probs_of(images: np.ndarray) -> np.ndarray:
            return model.predict_proba(prep.normalize(images))

        self.predict.probs_of = probs_of
        pair = self._val_images()
        d = self.session.data
        same = d is not None and d.classes == cur.classes and pair is not None \
            and pair[0].shape[1:] == tuple(model.spec.input_shape)
        self.predict.set_examples(pair[0] if same else None, pair[1] if same else None)
        if changed:
            self.predict.model_changed()  # nothing on show is the previous model's answer

    def predict_path(self, path: str | Path) -> np.ndarray | None:
        """Show the Predict tab with this image file's prediction."""
        self.tabs.setCurrentWidget(self.predict)
        return self.predict.predict_file(str(path))

    @Slot(object)
    def _evaluation_changed(self, ev: Evaluation | None) -> None:
        if ev is None:
            cur = self.session.current
            self.results.clear("" if cur is None or self.jobs.training else
                               f"No results for {cur.name} yet: \"Evaluate on folder...\" scores it on a folder of "
                               "class subfolders and fills this page.")
            return
        about = f"{ev.model.name}" if ev.model is not None else ""
        self.results.set_results(ev.classes, ev.labels, ev.probs, ev.images, ev.loss, title=ev.title,
                                 paths=ev.paths, about=about, source=ev.source)

    # --- evaluating on a folder ----------------------------------------------------------------------
    def evaluate_dialog(self) -> bool:
        """Ask for a folder (starting at the last one evaluated) and evaluate the model on it."""
        if self.session.current is None:
            return False
        d = self.session.data
        start = self.session.eval_folder or (d.folder if d is not None else None) or Path.cwd()
        path = QFileDialog.getExistingDirectory(self.parent(), "Evaluate the model on a folder (one subfolder per "
                                                "class)", str(start))
        return self.evaluate_folder(path) if path else False

    def evaluate_folder(self, folder: str | Path) -> bool:
        """Score the current model on a folder of class subfolders (its val/ or test/ part when it
        has train/ and val/), in the background; the result arrives via `evaluated`."""
        cur = self.session.current
        if cur is None or self.jobs.evaluating or self.jobs.training:
            return False
        self.session.eval_folder = Path(folder)
        self.jobs.evaluate(cur, folder)
        self.status_message.emit(f"Evaluating {cur.name} on {folder}...")
        self.state_changed.emit()
        return True

    @Slot(str)
    def _failed(self, message: str) -> None:
        self.session.say(message, error=True)

    @Slot(object, object)
    def _ended(self, ev: dict | None, cur: CurrentModel) -> None:
        """The evaluation's thread has ended (so another may start): show its result, if any and
        if it is still about the current model."""
        self.state_changed.emit()
        if ev is None or cur is not self.session.current:
            return  # failed (said already), cancelled, or another model's results
        evaluation = Evaluation.from_dict(ev, cur)
        self.session.set_evaluation(evaluation)
        self.tabs.setCurrentWidget(self.results)
        msg = (f"Evaluated {cur.name} on {evaluation.source}: {len(evaluation.labels):,} images, accuracy "
               f"{100 * (evaluation.accuracy or 0):.2f} %, loss {evaluation.loss:.4f}"
               + "".join(f"; {note}" for note in ev.get("notes", [])))
        self.session.say(msg)
        self.status_message.emit(msg + f" ({ev.get('seconds', 0):.1f} s)")
        self.evaluated.emit(evaluation)
