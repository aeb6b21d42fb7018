"""Shared fixtures: headless Qt, and small real-MNIST image folders built in temp dirs."""

from __future__ import annotations

import atexit
import gc
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# Tests never touch the user's decode cache, settings, recovery file or run store.
_SCRATCH = tempfile.mkdtemp(prefix="cnn-designer-tests-")
atexit.register(shutil.rmtree, _SCRATCH, ignore_errors=True)
os.environ["CNN_DESIGNER_CACHE"] = os.path.join(_SCRATCH, "cache")
os.environ["CNN_DESIGNER_CONFIG_DIR"] = os.path.join(_SCRATCH, "config")
os.environ["CNN_DESIGNER_RUNS"] = os.path.join(_SCRATCH, "runs")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

import mnist_data  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def qapp(qapp):
    """pytest-qt's application, with cycles collected only in the GUI thread (as the app does:
    designer.app.collect_garbage_in_gui_thread says why)."""
    from designer.app import collect_garbage_in_gui_thread

    collect_garbage_in_gui_thread()
    return qapp


def pytest_collection_finish(session):
    """What exists once the tests are collected (every module, test function and parameter set) lives
    until the run ends: freeze it, so the full collection after each Qt test walks only what the
    tests made since (about half the objects, half the time)."""
    gc.collect()
    gc.freeze()


@pytest.fixture(autouse=True)
def _collect_cycles_between_tests(request):
    """Automatic collection is off once a test used Qt: collect here, in the main thread.

    After a test that used Qt, a full collection, so its windows and jobs are gone before the next
    test starts. After any other test, what Python's automatic collector would have done: with
    collection off, everything the test allocated is still in the youngest generation, so collecting
    it frees every cycle the test left; older generations are collected when their thresholds say so.
    A full collection costs ~0.1 s (it walks every live object, Qt's and the test modules' included);
    after each of the ~1000 engine tests that was a quarter of the suite's time."""
    yield
    if gc.isenabled():
        return
    if "qapp" in request.fixturenames:
        gc.collect()
        return
    _, young, old = gc.get_count()
    _, young_limit, old_limit = gc.get_threshold()
    gc.collect(2 if old > old_limit else 1 if young > young_limit else 0)


@pytest.fixture(scope="session")
def mnist_arrays():
    """(train_images, train_labels, test_images, test_labels) uint8, real MNIST."""
    return mnist_data.load_all()


@pytest.fixture(scope="session")
def mnist_folder(tmp_path_factory):
    """A small real-MNIST PNG folder: root/train/<digit>/*.png (100 per class) and
    root/test/<digit>/*.png (30 per class)."""
    root = tmp_path_factory.mktemp("mnist_folder")
    mnist_data.write_folder(root / "train", "train", per_class=100, seed=0)
    mnist_data.write_folder(root / "test", "test", per_class=30, seed=1)
    return root


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(autouse=True)
def _unanswered_dialogs_fail(monkeypatch):
    """A modal dialog that a test does not answer itself would wait forever for a click that never
    comes (offscreen, nobody clicks) and hold the whole run: make it fail the test at once instead,
    naming the dialog. Tests that expect a dialog patch it themselves, after this fixture."""
    from PySide6.QtWidgets import QDialog, QFileDialog, QInputDialog, QMessageBox

    def refuse(kind: str):
        def dialog(*args, **kwargs):
            words = [a for a in args if isinstance(a, str)][:2]
            raise AssertionError(f"unexpected modal dialog {kind}{tuple(words)}: the test must answer it")
        return staticmethod(dialog)

    for kind in ("warning", "question", "critical", "information", "about"):
        monkeypatch.setattr(QMessageBox, kind, refuse(f"QMessageBox.{kind}"))
    for kind in ("getOpenFileName", "getOpenFileNames", "getSaveFileName", "getExistingDirectory"):
        monkeypatch.setattr(QFileDialog, kind, refuse(f"QFileDialog.{kind}"))
    for kind in ("getText", "getInt", "getDouble", "getItem", "getMultiLineText"):
        monkeypatch.setattr(QInputDialog, kind, refuse(f"QInputDialog.{kind}"))
    # every dialog class inherits QDialog.exec (the bindings define it there only)
    monkeypatch.setattr(QDialog, "exec", lambda self: refuse(f"{type(self).__name__}.exec")(self.windowTitle()))
