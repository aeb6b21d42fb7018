"""Residual blocks in the window: palette row, indented rows with live shapes, drops into, out of and
inside a block (undoable), collapse/expand, editing an inner layer, the explanation, save/reopen."""

from __future__ import annotations

import pytest
from PySide6.QtCore import QModelIndex, QPointF, Qt
from PySide6.QtGui import QDropEvent
from test_designer_window import dialogs, window  # noqa: F401 - fixtures

from designer.document import load_template
from designer.explain import explain_html
from designer.layer_list_model import END, AddressRole, CollapsedRole, ParamsRole, ShapeRole, SummaryRole
from engine.spec import Spec

MOVE, COPY = Qt.DropAction.MoveAction, Qt.DropAction.CopyAction


def rows(w) -> list:
    return [w.model.index(r, 0).data(AddressRole) for r in range(w.model.rowCount())]


def row(w, addr) -> int:
    return w.model.row_of(addr)


@pytest.fixture
def resnet(window):  # noqa: F811
    """LeNet-5's first layers with a Residual block from the palette after the first ReLU."""
    window.select_layer(1)  # ReLU
    window.palette.setCurrentItem(window.palette.item_for("Residual"))
    window.insert_layer("Residual")
    assert [layer.type for layer in window.document.layers][:3] == ["Conv2D", "ReLU", "Residual"]
    return window


def test_palette_row_and_indented_rows_with_live_shapes(resnet):
    w = resnet
    item = w.palette.item_for("Residual")
    assert item.parent().text(0) == "Blocks" and "skip connection" in item.toolTip(0)
    assert rows(w)[3:10] == [(2, None), (2, 0), (2, 1), (2, 2), (2, 3), (2, 4), (2, END)]
    assert w.model.index(row(w, (2, None)), 0).data(CollapsedRole) is False
    inner = w.model.index(row(w, (2, 0)), 0)
    assert inner.data(SummaryRole) == "Conv2D 16@3x3, same" and inner.data(ShapeRole) == "16x28x28"
    end = w.model.index(row(w, (2, END)), 0)
    assert end.data(SummaryRole) == "+ 1x1 conv shortcut, then ReLU"  # 6 -> 16 channels
    assert "a 1x1 convolution (with bias) maps the input 6x28x28 onto 16x28x28: 112 parameters" in \
        end.data(Qt.ItemDataRole.ToolTipRole)
    assert end.data(ShapeRole) == "16x28x28"
    assert w.document.inference.valid
    # the selection landed on the new block; its explanation says what a skip connection does
    assert w.current_layer() == 2
    text = explain_html(w.document, 2)
    assert "passes the gradient straight back" in text and "1x1 convolution" in text
    assert "16 x 6 + 16 = 112" in text  # what the projection costs
    # live shapes: widen the first convolution, the projection disappears (identity shortcut)
    w.select_layer(0)
    w.properties.editor("filters").setValue(16)
    assert w.model.index(row(w, (2, END)), 0).data(SummaryRole) == "+ input (identity shortcut), then ReLU"


def test_drop_into_out_of_and_inside_a_block_with_undo(resnet):
    w, model = resnet, resnet.model
    before = w.document.spec.to_json()
    # a palette layer dropped on the block's end row goes in at the end of the block
    view = w.view
    mime = w.palette.mimeData([w.palette.item_for("Dropout")])
    rect = view.visualRect(model.index(row(w, (2, END)), 0))
    event = QDropEvent(QPointF(rect.center().x(), rect.top() + 2), COPY, mime, Qt.MouseButton.LeftButton,
                       Qt.KeyboardModifier.NoModifier)
    view.dropEvent(event)
    assert event.isAccepted()
    assert [x.type for x in w.document.layers[2].inner][-1] == "Dropout"
    assert "Insert Dropout into block 2" in w.undo_action.text()
    assert w.view.currentIndex().data(AddressRole) == (2, 5)  # the new inner row is selected
    # a top-level layer (the ReLU above the block) dragged into the block, before its first layer
    mime = model.mimeData([model.index(row(w, (1, None)), 0)])
    assert model.dropMimeData(mime, MOVE, row(w, (2, 0)), 0, QModelIndex())
    assert [x.type for x in w.document.layers[:2]] == ["Conv2D", "Residual"]
    assert w.document.layers[1].inner[0].type == "ReLU"
    # an inner layer dragged out of the block, after it
    mime = model.mimeData([model.index(row(w, (1, 4)), 0)])  # the second Conv2D inside
    assert model.dropMimeData(mime, MOVE, row(w, (2, None)), 0, QModelIndex())
    assert [x.type for x in w.document.layers[:3]] == ["Conv2D", "Residual", "Conv2D"]
    # reorder inside: the last inner layer (Dropout) to the front
    n = len(w.document.layers[1].inner)
    mime = model.mimeData([model.index(row(w, (1, n - 1)), 0)])
    assert model.dropMimeData(mime, MOVE, row(w, (1, 0)), 0, QModelIndex())
    assert [x.type for x in w.document.layers[1].inner] == ["Dropout", "ReLU", "Conv2D", "BatchNorm2D", "ReLU",
                                                            "BatchNorm2D"]
    # undo everything, step by step, back to the design as it was
    for _ in range(4):
        w.undo_stack.undo()
    assert w.document.spec.to_json() == before
    w.undo_stack.redo()
    assert [x.type for x in w.document.layers[2].inner][-1] == "Dropout"


def test_what_cannot_go_inside_is_refused_with_a_reason(resnet):
    w, model = resnet, resnet.model
    before = w.document.spec.to_json()
    messages = []
    model.refused.connect(messages.append)
    mime = w.palette.mimeData([w.palette.item_for("Dense")])
    assert not model.dropMimeData(mime, COPY, row(w, (2, 1)), 0, QModelIndex())
    mime = model.mimeData([model.index(row(w, (2, None)), 0)])  # the block into itself
    assert not model.dropMimeData(mime, MOVE, row(w, (2, 2)), 0, QModelIndex())
    assert w.document.spec.to_json() == before
    assert "Dense cannot go inside a Residual block" in messages[0]
    assert "cannot hold another Residual block" in messages[1]
    assert "cannot hold another Residual block" in w.statusBar().currentMessage()


def test_collapse_expand_and_delete_inner(resnet, qtbot):
    w = resnet
    n = w.model.rowCount()
    w.select_layer(2)
    w.view.setFocus()
    qtbot.keyClick(w.view, Qt.Key.Key_Left)
    assert w.model.rowCount() == n - 6 and w.view.currentIndex().data(CollapsedRole) is True
    # a collapsed block stays collapsed while its fields are edited
    w.properties.editor("activation").setCurrentIndex(w.properties.editor("activation").findData("Tanh"))
    assert w.document.layers[2].config["activation"] == "Tanh" and w.model.rowCount() == n - 6
    qtbot.keyClick(w.view, Qt.Key.Key_Right)
    assert w.model.rowCount() == n
    # Delete on an inner row removes just that layer (one undo step)
    w.select_layer(2, 2)
    assert w.current_layer() == 2 and w.properties.inner_target() == 2
    qtbot.keyClick(w.view, Qt.Key.Key_Delete)
    assert [x.type for x in w.document.layers[2].inner] == ["Conv2D", "BatchNorm2D", "Conv2D", "BatchNorm2D"]
    # the row now in its place is selected, as after deleting a top-level layer: Delete again works
    assert w.view.currentIndex().data(AddressRole) == (2, 2) and w.view.selected_addresses() == [(2, 2)]
    assert w.delete_action.isEnabled()
    w.undo_stack.undo()
    assert len(w.document.layers[2].inner) == 5
    # deleting the last inner row selects the one before it; the block's only layer, the block
    w.select_layer(2, 4)
    qtbot.keyClick(w.view, Qt.Key.Key_Delete)
    assert w.view.currentIndex().data(AddressRole) == (2, 3)
    for _ in range(4):
        w.select_layer(2, 0)
        qtbot.keyClick(w.view, Qt.Key.Key_Delete)
    assert len(w.document.layers[2].inner) == 0 and w.view.currentIndex().data(AddressRole) == (2, None)


def test_edit_an_inner_layer_and_its_explanation(resnet):
    w = resnet
    w.select_layer(2, 0)
    assert "inside block 2" in w.properties.title.text()
    w.properties.editor("filters").setValue(24)
    assert w.document.layers[2].inner[0].config["filters"] == 24
    assert "Change filters of layer 2.0 (Conv2D)" in w.undo_action.text()
    assert w.model.index(row(w, (2, 0)), 0).data(ShapeRole) == "24x28x28"
    # BatchNorm after it now sees 24 channels but has 16 (a shape problem, named inside the block)
    text = w.explain.toPlainText()
    assert "inside block 2" in text and "Output size" in text
    w.undo_stack.undo()
    assert w.document.layers[2].inner[0].config["filters"] == 16


def test_small_resnet_template_and_save_reopen_identical(window, qtbot, tmp_path):  # noqa: F811
    from designer.main_window import MainWindow

    assert window.new_design("small_resnet")
    spec = window.document.spec
    assert spec.input_shape == (3, 64, 64) and window.document.inference.valid
    # the strided block's end row fits its column and says what the shortcut is; the tooltip the rest
    end = window.model.index(window.model.row_of((5, END)), 0)
    assert end.data(SummaryRole) == "+ 1x1 conv shortcut, stride 2, then ReLU"
    assert "stride 2" in end.data(Qt.ItemDataRole.ToolTipRole) and "544 parameters" in \
        end.data(Qt.ItemDataRole.ToolTipRole)
    # the block's parameters in the explanation add up to its row's figure, as BatchNorm's do
    window.select_layer(5)
    assert "14,496 learned + 128 running statistics" in window.explain.toPlainText()
    assert window.model.index(window.model.row_of((5, None)), 0).data(ParamsRole) == "14,624"
    assert [x.type for x in spec.layers].count("Residual") == 3
    assert Spec.from_dict(load_template("small_resnet").to_dict()) == spec
    out = tmp_path / "resnet.json"
    assert window.save_to(out)
    other = MainWindow(estimate=False)
    qtbot.addWidget(other)
    assert other.open_file(out)
    assert other.document.spec.to_json() == out.read_text() == spec.to_json()


def test_keyboard_moves_inside_and_out_of_a_block(resnet, qtbot):
    w = resnet
    w.select_layer(2, 1)  # BatchNorm2D, second inside
    w.view.setFocus()
    qtbot.keyClick(w.view, Qt.Key.Key_Up, Qt.KeyboardModifier.AltModifier)
    assert [x.type for x in w.document.layers[2].inner][:2] == ["BatchNorm2D", "Conv2D"]
    assert w.view.currentIndex().data(AddressRole) == (2, 0)  # the selection followed it
    qtbot.keyClick(w.view, Qt.Key.Key_Up, Qt.KeyboardModifier.AltModifier)  # out, before the block
    assert [x.type for x in w.document.layers[:4]] == ["Conv2D", "ReLU", "BatchNorm2D", "Residual"]
    assert len(w.document.layers[3].inner) == 4
    w.undo_stack.undo()
    w.undo_stack.undo()
    assert [x.type for x in w.document.layers[2].inner][:2] == ["Conv2D", "BatchNorm2D"]


def test_a_blocks_end_row_wraps_instead_of_being_cut(window):  # noqa: F811
    """"+ 1x1 conv shortcut, stride 2, then LeakyReLU" is wider than the name column at 1280x800 and
    1024x700: the row grows a line and shows all of it (it was cut to "then Lea...")."""
    from PySide6.QtCore import QRect
    from PySide6.QtGui import QFontMetrics

    from designer.commands import SetFieldCommand
    from designer.stack_view import INDENT, PAD, columns, summary_lines

    spec = load_template("small_resnet")
    window.document.set_spec(spec)
    for k, layer in enumerate(window.document.layers):
        if layer.type == "Residual":
            window.undo_stack.push(SetFieldCommand(window.document, k, "activation", "LeakyReLU"))
    end = window.model.index(row(window, (5, END)), 0)
    text = end.data(SummaryRole)
    assert text == "+ 1x1 conv shortcut, stride 2, then LeakyReLU"
    view, fm = window.view, window.view.fontMetrics()
    for size in ((1280, 800), (1024, 700)):
        window.resize(*size)
        view.doItemsLayout()
        rect = view.visualRect(end)
        room = columns(QRect(0, 0, rect.width() - INDENT, 10), fm)["summary"].width()
        needed = fm.boundingRect(QRect(0, 0, room, 1000), int(Qt.TextFlag.TextWordWrap), text).height()
        assert needed > fm.height(), size  # more than one line's worth at this width
        bar = 3 + 8  # the activation bar's line under the name
        assert rect.height() >= 2 * PAD + needed + bar, (size, rect.height(), needed)  # room for every line
        assert " ".join(summary_lines(text, QFontMetrics(fm), room)) == text  # nothing elided
