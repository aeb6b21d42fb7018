"""The window's "why" tools as a user drives them: heat maps in Predict and on the mistakes, the
Health tab's warnings with one-click fixes, "Find learning rate" and "Can it learn?"."""

from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import Qt  # noqa: E402
from test_training_gui import make_workspace as workspace_maker  # noqa: E402, F401 - the fixture
from test_training_gui import train  # noqa: E402

#: set to a folder to (re)write the README's screenshots from these tests
SHOTS = os.environ.get("CNN_DESIGNER_SHOTS")


def _grab(widget, name: str) -> None:
    if SHOTS:
        widget.grab().save(os.path.join(SHOTS, name))


def _image(pixmap) -> np.ndarray:
    q = pixmap.toImage().convertToFormat(pixmap.toImage().Format.Format_RGB888)
    return np.frombuffer(q.constBits(), np.uint8, q.sizeInBytes()).copy()


def test_heat_map_in_predict_and_on_the_mistakes(qtbot, workspace_maker):  # noqa: F811 - the imported fixture
    ws, doc, _, win = workspace_maker(epochs=3, lr=3e-3)
    train(qtbot, ws)
    pv = ws.predict
    assert pv.explainer is not None and [i for i, _ in pv.explainer.layers] == [0, 1, 2, 3, 4, 5]
    ws.tabs.setCurrentWidget(pv)
    pv.predict_example(0)
    plain = _image(pv.preview.pixmap())
    assert pv.heat_map is None and not pv.heat.method.isEnabled()
    pv.heat.toggle.setChecked(True)
    heat = pv.heat_map
    assert heat is not None and heat.shape == (28, 28) and heat.max() == pytest.approx(1.0) and heat.min() >= 0
    img, _ = pv.shown
    assert heat[img[0] > 128].mean() > heat[img[0] == 0].mean()  # on the digit's strokes, not the paper
    assert not np.array_equal(_image(pv.preview.pixmap()), plain)
    assert "Yellow" in pv.heat.legend.text() and "Occlusion" in pv.heat.legend.text()
    assert pv.heat.layer.isHidden()  # Grad-CAM's layer choice only for Grad-CAM
    _grab(ws.tabs, "screenshot-heatmap.png")
    pv.heat.method.setCurrentIndex(pv.heat.method.findData("gradcam"))
    assert not pv.heat.layer.isHidden() and pv.heat.layer.currentData() == 5  # the last map layer
    coarse = pv.heat_map.copy()
    pv.heat.layer.setCurrentIndex(pv.heat.layer.findData(2))
    assert not np.array_equal(coarse, pv.heat_map) and "Grad-CAM" in pv.heat.legend.text()
    pv.heat.method.setCurrentIndex(pv.heat.method.findData("occlusion"))

    rv = ws.results
    assert rv.mistakes.count() > 0
    before = _image(rv.mistakes.item(0).icon().pixmap(48, 48))
    rv.mistake_heat.toggle.setChecked(True)
    after = _image(rv.mistakes.item(0).icon().pixmap(48, 48))
    assert not np.array_equal(before, after)
    rv.mistake_heat.toggle.setChecked(False)
    assert np.array_equal(before, _image(rv.mistakes.item(0).icon().pixmap(48, 48)))


def test_health_tab_names_the_learning_rate_and_fixes_it_in_one_click(qtbot, workspace_maker):  # noqa: F811 - the imported fixture
    ws, doc, _, win = workspace_maker(epochs=2, lr=0.5)
    train(qtbot, ws)
    texts = ws.health.warning_texts()
    assert any("learning rate 0.5 is too high" in t for t in texts), texts
    assert ws.health.table.rowCount() >= 5  # conv, relu, conv, relu, dense...
    assert "\u2581" in ws.health.table.item(0, 1).text() or "\u2588" in ws.health.table.item(0, 1).text()
    ws.tabs.setCurrentWidget(ws.health)
    _grab(ws.tabs, "screenshot-health.png")
    buttons = ws.health.fix_buttons()
    assert [b.text() for b in buttons] == ["Set learning rate to 0.001"]  # one button per fix
    qtbot.mouseClick(buttons[0], Qt.MouseButton.LeftButton)
    assert ws.panel.lr.value() == pytest.approx(0.001)
    assert doc.spec.training["lr"] == pytest.approx(0.001)  # stored with the design like any edit
    ws.health.clear()
    train(qtbot, ws)
    assert ws.health.warning_texts() == [] and "healthy" in ws.health.no_warnings.text()


def test_find_learning_rate_and_can_it_learn(qtbot, workspace_maker):  # noqa: F811 - the imported fixture
    ws, doc, *_ = workspace_maker()
    assert ws.panel.find_lr_button.isEnabled() and ws.panel.check_button.isEnabled()
    qtbot.mouseClick(ws.panel.find_lr_button, Qt.MouseButton.LeftButton)
    assert ws.tabs.currentWidget() is ws.health
    qtbot.waitUntil(lambda: ws.panel.find_lr_button.isEnabled(), timeout=60_000)
    xs, ys = ws.health.lr_curve.getData()
    assert len(xs) > 20 and ws.health.lr_mark.isVisible()
    suggested = 10 ** ws.health.lr_mark.value()
    assert ws.panel.lr.value() == pytest.approx(float(f"{suggested:.2g}"), rel=1e-3)
    assert doc.spec.training["lr"] == pytest.approx(ws.panel.lr.value())
    assert "Suggested learning rate" in ws.health.lr_text.text()
    qtbot.mouseClick(ws.panel.check_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: ws.panel.check_button.isEnabled(), timeout=60_000)
    assert ws.health.check_text.text().startswith("yes"), ws.health.check_text.text()
