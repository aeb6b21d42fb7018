"""The Train tab's background jobs: one training run and one evaluation at a time.

Why a controller of its own: every signal of a job is emitted in the job's thread, and whatever
touches a widget must run in the GUI thread. Qt queues a signal into the receiver's thread only
when the receiver is a QObject; a lambda or a functools.partial has no thread, so Qt calls it
directly in the job's thread. Here each job signal is connected to a signal or a bound slot of this
object (which lives in the GUI thread), once, so the tab only ever hears from its jobs in the GUI
thread, and the order of what it hears is fixed: a job's results come before its end.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Signal, Slot

from designer.session import CurrentModel
from designer.worker import EvalJob, JobRunner, TrainJob, TrainRequest

#: Longest closing the window waits for a job's thread (a training batch, a chunk of decoding).
SHUTDOWN_MS = 30000


class TrainTabJobs(QObject):
    """Starts, steers and joins the tab's training run and evaluation; reports in the GUI thread."""

    # --- the run (TrainJob's signals, forwarded) ---
    batches = Signal(object, object)
    epoch_done = Signal(object)
    maps_ready = Signal(object)
    paused_changed = Signal(bool)
    warnings = Signal(object)
    #: the run's last word (designer.worker.RunResult), before `run_ended`
    run_finished = Signal(object)
    #: the run's thread has ended: a new run may start
    run_ended = Signal()
    # --- the evaluation ---
    #: (result dict or None when it failed or was cancelled, the CurrentModel evaluated), emitted
    #: once its thread has ended, so a new evaluation may start from the handler
    evaluation_ended = Signal(object, object)
    eval_failed = Signal(str)

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self.run_job: TrainJob | None = None
        self.run_runner: JobRunner | None = None
        self.eval_runner: JobRunner | None = None
        self._eval_model: CurrentModel | None = None
        self._eval_result: dict[str, Any] | None = None

    @property
    def training(self) -> bool:
        """From start_run until the run's thread has ended and `run_ended` has been handled."""
        return self.run_runner is not None

    @property
    def evaluating(self) -> bool:
        return self.eval_runner is not None

    # --- training ------------------------------------------------------------------------------------
    def start_run(self, request: TrainRequest) -> TrainJob:
        job = TrainJob(request)
        for name in ("batches", "epoch_done", "maps_ready", "paused_changed", "warnings"):
            getattr(job, name).connect(getattr(self, name))  # signal to signal: queued to this object
        job.finished_run.connect(self.run_finished)
        self.run_job = job
        self.run_runner = JobRunner(job, "cnn-designer-train")
        self.run_runner.finished.connect(self._run_thread_ended)
        self.run_runner.start()
        return job

    def pause(self) -> None:
        if self.run_job is not None:
            self.run_job.pause()

    def resume(self) -> None:
        if self.run_job is not None:
            self.run_job.resume()

    def stop(self) -> None:
        if self.run_job is not None:
            self.run_job.stop()

    @Slot()
    def _run_thread_ended(self) -> None:
        self.run_runner = None
        self.run_job = None
        self.run_ended.emit()

    # --- evaluating -----------------------------------------------------------------------------------
    def evaluate(self, current: CurrentModel, folder: str | Path) -> None:
        """Score `current` on a folder of class subfolders in the background (designer.worker.EvalJob)."""
        job = EvalJob(current.trained, Path(folder))
        job.result.connect(self._eval_result_arrived)
        job.failed.connect(self.eval_failed)
        self._eval_model, self._eval_result = current, None
        self.eval_runner = JobRunner(job, "cnn-designer-evaluate")
        self.eval_runner.finished.connect(self._eval_thread_ended)
        self.eval_runner.start()

    @Slot(object)
    def _eval_result_arrived(self, result: dict) -> None:
        # kept until the thread has ended: a handler of `evaluation_ended` may start the next one
        self._eval_result = result

    @Slot()
    def _eval_thread_ended(self) -> None:
        result, model = self._eval_result, self._eval_model
        self.eval_runner, self._eval_result, self._eval_model = None, None, None
        self.evaluation_ended.emit(result, model)

    # --- closing --------------------------------------------------------------------------------------
    def shutdown(self, timeout_ms: int = SHUTDOWN_MS) -> None:
        """Cancel both jobs and wait for their threads, each at most `timeout_ms`."""
        for runner in (self.run_runner, self.eval_runner):
            if runner is not None:
                runner.shutdown(timeout_ms)
