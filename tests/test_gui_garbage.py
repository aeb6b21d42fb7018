"""Reference cycles holding Qt objects are collected in the GUI thread, never in a job's thread
(designer.app.collect_garbage_in_gui_thread says why: a widget destroyed by the collector in a
training thread deadlocked the window)."""

from __future__ import annotations

import gc
import threading
import weakref

import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import QObject  # noqa: E402


def test_a_cycle_with_a_qt_object_dies_in_the_gui_thread(qtbot):
    assert not gc.isenabled()  # the app's (and conftest's qapp's) setting
    died_in = []
    obj = QObject()
    obj.me = obj  # a reference cycle: only the collector can free it
    weakref.finalize(obj, lambda: died_in.append(threading.current_thread()))
    del obj

    kept = []

    def busy() -> None:  # allocates enough to trigger automatic collections if they were on
        kept.append([[i] for i in range(20_000)])

    t = threading.Thread(target=busy, name="job")
    t.start()
    t.join(30)
    assert died_in == []
    qtbot.waitUntil(lambda: bool(died_in), timeout=5_000)  # the 1 s timer collected it
    assert died_in == [threading.main_thread()]
