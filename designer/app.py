"""Starting the GUI: `cnn-designer [FILE]` and `cnn-designer --screenshot OUT.png [FILE]`."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

SCREEN_SIZE = (1280, 800)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and the usage, never a traceback (run_app prints it)
        from engine.safeio import printable

        raise SystemExit(f"cnn-designer: {printable(message)}\n{self.format_usage().rstrip()}")


def _parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="cnn-designer", add_help=False,
                 description="Open the window (the subcommands are the command line: cnn-designer --help).")
    ap.add_argument("file", nargs="?", metavar="FILE.json|FILE.cnnd", help="a design or a trained model to open")
    ap.add_argument("--screenshot", metavar="OUT.png", help="render the window at 1280x800 to a PNG and exit")
    return ap


def _parse(args: list[str]) -> tuple[str | None, str | None]:
    """(file to open, screenshot path); SystemExit with one line and the usage on anything else."""
    ns = _parser().parse_args(args)
    return ns.file, ns.screenshot


def no_display() -> bool:
    """True on a Linux/BSD machine with no screen to open a window on (Qt would abort with a
    message about platform plugins that tells a user nothing)."""
    if sys.platform.startswith(("win", "darwin")) or os.environ.get("QT_QPA_PLATFORM"):
        return False
    return not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


_collector = None


def collect_garbage_in_gui_thread() -> None:
    """Turn off Python's automatic cycle collection and run it on a 1 s timer of the GUI thread
    (pyqtgraph's GarbageCollector); call once a QApplication exists.

    Why: automatic collection runs in whichever thread happens to allocate. When a background job
    (training, a heat map) triggered it while a reference cycle held a widget's Python wrapper, the
    widget's C++ destructor ran in the job's thread, took a Qt lock and waited for the GIL, while the
    GUI thread held the GIL and waited for that lock: the window froze for good (seen as a test
    run hanging until CI killed it, py-spy showing ~QObject in both threads)."""
    global _collector
    if _collector is None:
        from pyqtgraph.util.garbage_collector import GarbageCollector

        _collector = GarbageCollector(interval=1.0)


def create_app():
    """The QApplication with the names QSettings and the recovery file use."""
    from PySide6.QtWidgets import QApplication

    from designer import settings
    from designer.icons import app_icon

    app = QApplication.instance() or QApplication([sys.argv[0] if sys.argv else "cnn-designer"])
    app.setOrganizationName(settings.ORGANIZATION)
    app.setApplicationName(settings.APPLICATION)
    app.setApplicationDisplayName(settings.APPLICATION)
    app.setWindowIcon(app_icon())
    collect_garbage_in_gui_thread()
    return app


def build_window(path: str | None = None, estimate: bool = True):
    """The main window (with the training workspace when it is installed), optionally opening a file."""
    from designer.main_window import MainWindow

    window = MainWindow(estimate=estimate)
    from designer import workspace

    workspace.install(window)
    from designer.export_dialog import export_dialog

    # File > Export exports the Train tab's model (trained or opened from a .cnnd).
    def export() -> None:
        ws = window.training_workspace
        export_dialog(window, ws.session if ws is not None else None)

    window.set_export_handler(export)
    from designer import runs_view

    runs_view.install(window)  # the Runs tab and File > Import
    if path is not None:
        window.open_file(path, ask=False)
    return window


def take_screenshot(window, out: str, settle_s: float = 4.0) -> None:
    """Render the window at 1280x800 (after the epoch estimate arrives, when it does) to a PNG."""
    from PySide6.QtCore import QCoreApplication

    window.resize(*SCREEN_SIZE)
    window.show()
    window.select_layer(next((i for i, layer in enumerate(window.document.layers) if layer.shows_filters), 0))
    deadline = time.monotonic() + settle_s
    while time.monotonic() < deadline:
        QCoreApplication.processEvents()
        text = window.totals.epoch.value.text()
        if "measuring" not in text and time.monotonic() > deadline - settle_s + 1.0:
            break
        time.sleep(0.02)
    QCoreApplication.processEvents()
    pixmap = window.grab()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    if not pixmap.save(out):
        raise OSError(f"cannot write {out}")


def run_app(args: list[str]) -> int:
    try:
        path, screenshot = _parse(args)
    except SystemExit as e:
        print(e, file=sys.stderr)
        return 2
    if path is not None and not Path(path).exists():
        from engine.safeio import printable

        print(f"cnn-designer: {printable(path)}: no such file", file=sys.stderr)
        return 2
    if screenshot is not None:
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # a screenshot needs no screen
    elif no_display():
        print("cnn-designer: no display found (DISPLAY and WAYLAND_DISPLAY are unset): run it in a desktop "
              "session, or use the command line (cnn-designer --help)", file=sys.stderr)
        return 2
    app = create_app()
    if screenshot is not None:
        if path is not None:  # no window yet, so no dialog: a broken file is a one-line error
            from designer.main_window import load_design
            from engine.errors import EngineError

            try:
                load_design(path)
            except (EngineError, OSError, ValueError) as e:
                print(f"cnn-designer: {e}", file=sys.stderr)
                return 2
        window = build_window(path)
        window.undo_stack.setClean()
        try:
            take_screenshot(window, screenshot)
        except OSError as e:
            print(f"cnn-designer: {e}", file=sys.stderr)
            return 2
        finally:
            window.totals.shutdown()
        print(f"saved {screenshot}")
        return 0
    window = build_window(None)
    if path is not None:
        window.open_file(path, ask=False)
    else:
        window.offer_recovery()
    window.show()
    return app.exec()
