"""Before a run: "Find learning rate" and "Can it learn?" (engine.preflight) in a background thread.

Why a controller of its own: one question at a time, its button turning into Cancel while it runs,
and its answer going to the Health tab (and lr-find's to the form) are rules of their own, apart
from starting and showing a training run. The job's signals reach this object's slots, which live
in the GUI thread (Qt queues them there; a lambda would run in the job's thread).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, Slot
from PySide6.QtWidgets import QTabWidget

from designer.health_panel import HealthPanel, PreflightJob
from designer.session import TrainSession
from designer.training_panel import TrainingPanel
from designer.worker import JobRunner
from engine.data import Preprocessing

#: what each kind is called in messages
TITLES = {"lr": "Find learning rate", "check": "Can it learn?"}


class Preflight(QObject):
    """Runs one lr-find or check at a time; `can_train()` says whether the design and data allow it,
    `training()` whether a run is going (the buttons stay hidden until it ends)."""

    def __init__(self, session: TrainSession, panel: TrainingPanel, health: HealthPanel, tabs: QTabWidget,
                 can_train: Callable[[], tuple[bool, str]], training: Callable[[], bool],
                 parent: QObject | None = None):
        super().__init__(parent)
        self.session, self.panel, self.health, self.tabs = session, panel, health, tabs
        self._can_train, self._training = can_train, training
        #: the running (or last) job's thread
        self.runner: JobRunner | None = None
        self.kind = ""

    def running(self) -> bool:
        return self.runner is not None and self.runner.running()

    def run(self, kind: str) -> bool:
        """Start lr_find ("lr") or can_it_learn ("check") on the design and the training images;
        pressed again while it runs (its button reads Cancel), cancel it. True when one started."""
        from engine.preflight import can_it_learn, lr_find

        if self.running():
            if kind == self.kind:
                self.runner.job.cancel()
            return False
        ok, why = self._can_train()
        d = self.session.data
        if not ok or d is None:
            self.session.say(why or "Choose a folder of training images first", error=True)
            return False
        spec = self.session.document.spec.copy()
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
        self.kind = kind
        job.result.connect(self._done)
        job.failed.connect(self._failed)
        job.cancelled.connect(self._cancelled)
        self.runner = JobRunner(job, "cnn-designer-preflight")
        self.health.show_busy(kind)
        self.tabs.setCurrentWidget(self.health)
        self.panel.set_preflight(kind)
        self.runner.finished.connect(self._ended)
        self.runner.start()
        return True

    @Slot(str)
    def _failed(self, message: str) -> None:
        self.session.say(message, error=True)
        self.health.show_busy("")

    @Slot(object)
    def _done(self, result: Any) -> None:
        if self.kind == "lr":
            self.health.show_lr_find(result)
            self.panel.apply_fix({"lr": float(f"{result.suggested_lr:.2g}")})
            self.session.say(f"Suggested learning rate: {result.suggested_lr:.2g} (set in the form)")
        else:
            self.health.show_check(result)
            self.session.say(result.message, error=not result.ok)

    @Slot()
    def _cancelled(self) -> None:
        self.health.show_busy("cancelled")
        self.session.say(TITLES.get(self.kind, self.kind) + " cancelled")

    @Slot()
    def _ended(self) -> None:
        self.panel.set_preflight("", self._training())

    def shutdown(self, timeout_ms: int) -> None:
        """Cancel and join the job's thread, at most `timeout_ms`."""
        if self.runner is not None:
            self.runner.shutdown(timeout_ms)
