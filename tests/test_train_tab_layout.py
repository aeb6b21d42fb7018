"""The Train tab fits a laptop screen: with a folder loaded, the data, every training setting and
Start are in sight at 1280x800 and 1366x768 without scrolling, before a run, after it and after
the design was edited, and the pages on the right (curves, feature maps) keep most of the width."""

from __future__ import annotations

import pytest
from PySide6.QtCore import QPoint, QRect
from PySide6.QtWidgets import QApplication, QLabel, QPushButton, QWidget
from test_window_fixes import app_window, photo_folder  # noqa: F401 - fixture


@pytest.fixture
def train_tab(qtbot, app_window):  # noqa: F811
    """The full window at a given size on its Train tab, with the built-in sample folder loaded."""

    def make(width: int, height: int):
        w = app_window()
        w.resize(width, height)
        ws = w.training_workspace
        w.tabs.setCurrentWidget(ws)
        qtbot.waitUntil(lambda: ws.session.data is not None and not ws.data_panel.loading, timeout=30_000)
        settle(qtbot)
        assert (w.width(), w.height()) == (width, height)
        return w, ws

    return make


def settle(qtbot) -> None:
    for _ in range(3):  # layouts that depend on wrapped text take a few rounds
        QApplication.processEvents()
        qtbot.wait(30)


def needed(ws) -> dict[str, QWidget]:
    """What a person needs to start a run: the data, every setting, Start."""
    p, d = ws.panel, ws.data_panel
    widgets = {"choose folder": d.choose_button, "reload": d.reload_button, "data summary": d.status,
               "class table": d.table, "start": p.start_button, "can it learn": p.check_button,
               "continue": ws.keep_weights.continue_box, "freeze": ws.keep_weights.freeze}
    for name in ("epochs", "batch_size", "optimizer", "lr", "find_lr_button", "schedule", "augment", "hflip",
                 "val_split", "early_stopping", "keep_best", "seed"):
        widgets[name] = getattr(p, name)
    return widgets


def out_of_sight(window, ws) -> list[str]:
    """Names of the needed widgets not wholly inside the window and, in the scrolling column, its viewport."""
    viewport = ws.left_scroll.viewport()
    bad = []
    for name, w in needed(ws).items():
        in_window = window.rect().contains(QRect(w.mapTo(window, QPoint(0, 0)), w.size()))
        in_view = not viewport.isAncestorOf(w) or viewport.rect().contains(QRect(w.mapTo(viewport, QPoint(0, 0)),
                                                                                 w.size()))
        if not (w.isVisible() and in_window and in_view and not w.visibleRegion().isEmpty()):
            bad.append(name)
    return bad


@pytest.mark.parametrize("size", [(1280, 800), (1366, 768)])
def test_data_settings_and_start_in_sight_on_a_laptop_screen(train_tab, qtbot, size):
    w, ws = train_tab(*size)
    assert out_of_sight(w, ws) == []
    assert ws.left_scroll.verticalScrollBar().maximum() == 0  # nothing to scroll to
    table = ws.data_panel.table
    assert table.viewport().height() >= 3 * table.rowHeight(0)  # a few classes with their examples
    assert ws.tabs.width() >= 0.6 * w.width()  # the curves and maps keep most of the width
    assert not ws.panel.message.text() and ws.panel.message.isHidden()  # no blank line under Start
    folder = ws.data_panel.folder_label  # beside its buttons, one line, the folder's name kept
    assert folder.toolTip() == str(ws.data_panel.folder) and "sample_mnist</b>" in folder.text()
    assert folder.height() < 2 * folder.fontMetrics().lineSpacing()

    ws.panel.epochs.setValue(1)  # after a run: its message under Start, Continue enabled
    with qtbot.waitSignal(ws.training_changed, timeout=5_000, check_params_cb=lambda on: on):
        ws.start_training()
    with qtbot.waitSignal(ws.training_changed, timeout=60_000, check_params_cb=lambda on: not on):
        pass
    settle(qtbot)
    assert ws.panel.message.text() and ws.continue_box.isEnabled() and ws.panel.message.isVisible()
    assert out_of_sight(w, ws) == []

    from designer.commands import SetFieldCommand  # an edited design: which layers keep their weights

    w.undo_stack.push(SetFieldCommand(w.document, 3, "filters", 20))
    qtbot.waitUntil(lambda: ws.keep_weights.note.isVisible(), timeout=5_000)
    settle(qtbot)
    assert "keep their weights" in ws.keep_weights.note.text()
    assert out_of_sight(w, ws) == []


@pytest.mark.parametrize("size", [(1280, 800), (1366, 768)])
def test_a_folder_that_does_not_fit_the_design_leaves_the_form_in_sight(train_tab, qtbot, tmp_path, size):
    """Colour 64x64 photos in 4 classes for LeNet-5 (1x28x28, 10 classes): three problems, each one
    line beside its fix, and still every setting and Start (disabled, saying why) in sight."""
    w, ws = train_tab(*size)
    d = ws.data_panel
    d.set_folder(photo_folder(tmp_path / "photos", classes=("forest", "sea", "sunset", "snow"), size=(64, 64)))
    qtbot.waitUntil(lambda: ws.session.data is not None and not d.loading, timeout=30_000)
    settle(qtbot)
    assert [p.fix[0] for p in d.problems] == ["input_channels", "input_size", "field"]
    assert out_of_sight(w, ws) == []
    assert ws.left_scroll.verticalScrollBar().maximum() == 0
    viewport = ws.left_scroll.viewport()
    labels = [lab for lab in d.problem_box.findChildren(QLabel) if lab.text()]
    buttons = d.problem_box.findChildren(QPushButton)
    assert len(labels) == 3 and len(buttons) == 3
    for widget in labels + buttons:
        assert widget.isVisible() and viewport.rect().contains(QRect(widget.mapTo(viewport, QPoint(0, 0)),
                                                                     widget.size())), widget.text()
    for lab in labels:
        assert lab.height() >= lab.heightForWidth(lab.width()), lab.text()  # wrapped, never cut
        assert lab.heightForWidth(lab.width()) < 2 * lab.fontMetrics().lineSpacing(), lab.text()  # one line
        assert len(lab.toolTip()) > len(lab.text()) and "The fix sets" in lab.toolTip()  # the whole story
    p = ws.panel
    assert not p.start_button.isEnabled() and p.message.text() == d.problems[2].message
    assert "4 classes" in p.message.text()
    assert d.table.viewport().height() >= d.table.rowHeight(0)  # the classes scroll in their table


def test_spare_height_shows_every_class_with_larger_examples(train_tab):
    """At 1920x1080 the table shows every class, and the height left over makes the examples larger
    instead of leaving a blank band under the table (about 120 px of it before)."""
    from designer.data_panel import THUMB

    w, ws = train_tab(1920, 1080)
    assert out_of_sight(w, ws) == []
    table = ws.data_panel.table
    assert table.rowCount() == 10 and table.viewport().height() >= 10 * table.rowHeight(0)
    assert table.verticalScrollBar().maximum() == 0
    row = table.rowHeight(0)
    assert row >= THUMB + 4 + 8 and all(table.rowHeight(i) == row for i in range(10))
    strip = table.cellWidget(0, 2).pixmap()
    assert strip.height() == row - 4 and strip.width() >= 5 * (row - 4)  # larger, and as many as fit
    assert strip.width() <= table.columnWidth(2)
    under = ws.panel.form_box.mapTo(w, QPoint(0, 0)).y() - table.mapTo(w, QPoint(0, table.height())).y()
    assert under < row, under  # no band of blank space below the last class


def test_few_classes_show_more_examples_in_the_spare_height(train_tab, qtbot, tmp_path):
    """Four classes at 1920x1080: the rows take two lines of examples each (all twelve kept per
    class) rather than leaving the height under the table blank."""
    from designer.data_panel import THUMB, THUMBS_PER_CLASS

    w, ws = train_tab(1920, 1080)
    d = ws.data_panel
    d.set_folder(photo_folder(tmp_path / "photos", classes=("forest", "sea", "sunset", "snow"), size=(64, 64)))
    qtbot.waitUntil(lambda: ws.session.data is not None and not d.loading, timeout=30_000)
    settle(qtbot)
    table = d.table
    row = table.rowHeight(0)
    strip = table.cellWidget(0, 2).pixmap()
    assert strip.height() > 2 * THUMB and strip.height() <= row  # two lines of examples
    per_line = strip.width() // (strip.height() // 2)
    assert 2 * per_line >= THUMBS_PER_CLASS and strip.width() <= table.columnWidth(2)
    under = ws.panel.form_box.mapTo(w, QPoint(0, 0)).y() - table.mapTo(w, QPoint(0, table.height())).y()
    assert under < 2 * THUMB, under


def test_tab_goes_through_the_form_as_it_reads(train_tab, qtbot):
    """Keyboard order follows the grid row by row, pairs left to right (the order the rows are laid out)."""
    from PySide6.QtCore import Qt

    w, ws = train_tab(1280, 800)
    p = ws.panel
    order = [p.epochs, p.batch_size, p.optimizer, p.lr, p.find_lr_button, p.schedule, p.augment, p.hflip,
             p.val_split, p.seed, p.early_stopping, p.keep_best, p.start_button]
    p.epochs.setFocus()
    qtbot.waitUntil(lambda: p.epochs.isAncestorOf(QApplication.focusWidget()) or QApplication.focusWidget() is p.epochs)
    for want in order[1:]:
        qtbot.keyClick(QApplication.focusWidget(), Qt.Key.Key_Tab)
        now = QApplication.focusWidget()
        assert now is want or want.isAncestorOf(now), (want.accessibleName() or type(want).__name__, now)


def test_a_long_folder_path_keeps_its_folder_name_in_one_line(qapp):
    from PySide6.QtGui import QFontMetrics

    from designer.data_panel import short_path

    fm = QFontMetrics(qapp.font())
    path = "/home/someone/datasets/photos/holidays/2024/summer/beach_and_sea"
    assert short_path(path, fm, 10_000) == path
    shown = short_path(path, fm, fm.horizontalAdvance("/home/someone/\u2026/beach_and_sea") + 2)
    assert shown == "/home/someone/\u2026/beach_and_sea"
    tiny = short_path(path, fm, fm.horizontalAdvance("\u2026_sea") + 2)
    assert tiny.endswith("_sea") and fm.horizontalAdvance(tiny) <= fm.horizontalAdvance("\u2026_sea") + 2


def test_resizing_the_class_table_redraws_its_examples_only_when_their_layout_changes(qtbot, monkeypatch):
    """A thousand classes must not be redrawn on every step of a window resize."""
    import numpy as np

    import designer.data_panel as dp

    table = dp.ClassTable(200, 3)
    qtbot.addWidget(table)
    table.horizontalHeader().setSectionResizeMode(2, dp.QHeaderView.ResizeMode.Stretch)
    drawn = []
    real = dp.class_strip
    monkeypatch.setattr(dp, "class_strip", lambda *a, **k: drawn.append(1) or real(*a, **k))
    table.set_examples([np.zeros((12, 1, 28, 28), np.uint8)] * 200)
    table.fit_rows()
    table.resize(400, 300)
    table.show()
    qtbot.waitExposed(table)
    QApplication.processEvents()
    drawn.clear()
    for width in range(401, 411):  # ten steps of a pixel: one more example fits at most once
        table.resize(width, 300)
        QApplication.processEvents()
    assert len(drawn) <= 200  # every row redrawn on every step before: 2000
    table.resize(700, 300)  # room for more examples: one redraw of every row
    QApplication.processEvents()
    assert len(drawn) == 200
