"""A training run as the Train tab shows and steers it: curves, progress, the Health tab's figures,
the status line, the run state, its last word (the model, the message, the evaluation), and the
user's say over it (pause, resume, stop; the Model menu's actions).

Why a class of its own: the workspace decides *when* a run starts and what happens after it (the
design caught up, the data unlocked); this follows the run's reports. It listens to
designer.jobs.TrainTabJobs, whose signals are already in the GUI thread, through its own slots.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QObject, Signal, Slot
from PySide6.QtGui import QAction

from designer.health_panel import HealthPanel
from designer.jobs import TrainTabJobs
from designer.live_view import LiveView
from designer.session import Evaluation, TrainSession
from designer.training_panel import TrainingPanel, fmt_duration
from designer.worker import RunResult


class RunDisplay(QObject):
    """Shows the run's reports in the panel, the live view and the Health tab, and in the session."""

    #: A line for the window's status bar.
    status_message = Signal(str)

    def __init__(self, session: TrainSession, jobs: TrainTabJobs, panel: TrainingPanel, live: LiveView,
                 health: HealthPanel, parent: QObject | None = None):
        super().__init__(parent)
        self.session, self.jobs, self.panel, self.live, self.health = session, jobs, panel, live, health
        self.plots = live.plots
        #: the last run's failure message (None when it did not fail)
        self.last_error: str | None = None
        #: the model the last run produced (its read-out stays on screen while it is the current one)
        self.run_model: Any = None
        jobs.batches.connect(self._batches)
        jobs.epoch_done.connect(self._epoch)
        jobs.maps_ready.connect(live.show_maps)
        jobs.paused_changed.connect(self._paused)
        jobs.warnings.connect(self._warnings)
        jobs.run_finished.connect(self._finished)
        # the window puts these in its Model menu
        self.pause_action = QAction("Pause / resume training", self)
        self.pause_action.triggered.connect(self.toggle_pause)
        self.stop_action = QAction("Stop training", self)
        self.stop_action.triggered.connect(self.stop)
        self.set_running(False)

    def set_running(self, running: bool) -> None:
        self.pause_action.setEnabled(running)
        self.stop_action.setEnabled(running)

    def pause(self) -> None:
        if self.jobs.training:
            self.jobs.pause()

    def resume(self) -> None:
        if self.jobs.training:
            self.jobs.resume()

    def toggle_pause(self) -> None:
        self.resume() if self.session.run_state == "paused" else self.pause()

    def stop(self) -> None:
        if self.jobs.training:
            self.jobs.stop()
            self.session.set_run_state("stopping")
            self.status_message.emit("Stopping after the current batch...")

    def begin(self, history: list[dict[str, Any]], continued: bool, epochs: int) -> None:
        """A run starts: curves (continuing a model's when it continues) and Health from its history."""
        self.plots.clear()
        self.health.load_history(history)
        if continued:
            self.plots.load_history(history)
        self.plots.set_epochs(0, len(history) + epochs)
        self.live.clear_maps()
        self.last_error = None

    def started(self) -> None:
        """The job runs: progress from zero, the tab's message cleared, the old evaluation gone."""
        self.panel.reset_progress()
        self.session.why_shown = None
        self.session.say("")
        self.session.set_evaluation(None)
        self.session.set_run_state("running")

    def follow_model(self, current: Any) -> None:
        """The current model changed outside a run (a .cnnd opened): the last run's figures
        (epoch, loss, accuracy, "finished") are not about it, so they go."""
        if current is not self.run_model and not self.jobs.training:
            self.run_model = None
            self.panel.reset_progress(message=False)

    @Slot(object, object)
    def _batches(self, points: list, progress: dict) -> None:
        for pos, loss in points:
            self.plots.add_batch(pos, loss)
        if self.session.run_state == "paused":  # the batch that ran on after Pause: no countdown
            self.panel.show_progress({k: v for k, v in progress.items() if k != "eta"})
            return
        self.panel.show_progress(progress)
        if progress.get("epoch") is not None:
            eta = fmt_duration(progress.get("eta"))
            self.status_message.emit(
                f"Epoch {progress['epoch']}/{progress.get('epochs')}, batch {progress.get('batch')}/"
                f"{progress.get('batches')}, loss {progress.get('loss', float('nan')):.4f}, "
                f"{progress.get('images_per_second', 0):,.0f} images/s, ETA {eta}")

    @Slot(object)
    def _epoch(self, m: dict) -> None:
        self.plots.add_epoch(m["epoch"], m.get("train_loss"), m.get("train_accuracy"),
                             m.get("val_loss"), m.get("val_accuracy"))
        if m.get("complete", True) or m.get("val_accuracy") is not None:
            # the part of an epoch a Stop cut short is not validated: the last full epoch's figure stays
            self.panel.show_validation(m.get("val_loss"), m.get("val_accuracy"))
        self.health.add_epoch(m)

    @Slot(bool)
    def _paused(self, paused: bool) -> None:
        if self.jobs.training and self.session.run_state != "stopping":
            self.session.set_run_state("paused" if paused else "running")
            if paused:  # nothing counts down while paused; the next batch after Resume says it again
                self.panel.values["eta"].setText("paused")
            self.status_message.emit("Training paused" if paused else "Training resumed")

    @Slot(object)
    def _warnings(self, warnings: list) -> None:
        self.session.say("Note: " + "; ".join(warnings))

    @Slot(object)
    def _finished(self, result: RunResult) -> None:
        """The job's last word: the model (kept even when stopped or failed), history, evaluation."""
        self.plots.flush()
        trained = self.session.model_from_run(result.trained)
        self.run_model = trained
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
        self.status_message.emit(message)
        ev = result.evaluation
        if ev is not None and trained is not None:
            source = f"{ev.get('title', 'validation')} images of {self.session.data.folder}" \
                if self.session.data is not None else ""
            self.session.set_evaluation(Evaluation.from_dict({**ev, "source": source}, trained))
        if trained is not None:
            self.live.refresh()
