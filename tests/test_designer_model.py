"""The designer's document, undo commands and layer list model (drag and drop through mime data)."""

from __future__ import annotations

import json

import pytest
from PySide6.QtCore import QByteArray, QMimeData, QModelIndex, Qt
from PySide6.QtGui import QBrush, QUndoStack

from designer.commands import RemoveLayersCommand, SetFieldCommand, SetInputCommand, make_move_command, move_order
from designer.document import TEMPLATES, Document, load_template, new_layer
from designer.explain import explain_html
from designer.layer_list_model import (
    MIME_LAYERS,
    MIME_ROWS,
    ErrorRole,
    LayerListModel,
    ShapeRole,
    palette_mime,
)
from engine.errors import SpecError
from engine.layers import LAYER_CLASSES
from engine.shapes import infer

MOVE = Qt.DropAction.MoveAction
COPY = Qt.DropAction.CopyAction


@pytest.fixture
def setup(qapp):
    doc = Document(load_template("lenet5"))
    stack = QUndoStack()
    model = LayerListModel(doc, stack)
    return doc, stack, model


def types(doc: Document) -> list[str]:
    return [layer.type for layer in doc.layers]


LENET = ["Conv2D", "ReLU", "MaxPool2D", "Conv2D", "ReLU", "MaxPool2D", "Flatten", "Dense", "ReLU", "Dense",
         "ReLU", "Dense", "Softmax"]


def test_templates_load_and_are_valid():
    counts = {}
    for stem, _title in TEMPLATES:
        spec = load_template(stem)
        inf = infer(spec)
        assert inf.valid, (stem, inf.error_message)
        assert inf.output_shape == (10,)
        counts[stem] = inf.total_params
    assert counts["lenet5"] == 61_706  # the engine issue's figure for LeNet-5
    assert counts["mlp"] > counts["lenet5"]  # the point of the MLP baseline


def test_model_passes_qtmodeltester_through_edits(setup, qtmodeltester):
    doc, stack, model = setup
    qtmodeltester.check(model)
    # The C++ tester stays connected: every edit below is checked as it happens.
    model.dropMimeData(palette_mime("Dropout"), COPY, 3, 0, QModelIndex())
    model.dropMimeData(model.mimeData([model.index(1, 0), model.index(2, 0)]), MOVE, 6, 0, QModelIndex())
    conv = types(doc).index("Conv2D")
    stack.push(SetFieldCommand(doc, conv, "filters", 7))
    stack.push(SetInputCommand(doc, (3, 32, 32)))
    stack.push(RemoveLayersCommand(doc, [0, 4]))
    while stack.canUndo():
        stack.undo()
    doc.set_spec(load_template("vgg_small"))
    qtmodeltester.check(model)
    assert model.rowCount() == len(doc) + 1


def test_rows_show_engine_shapes_and_input_row(setup):
    doc, _stack, model = setup
    assert model.rowCount() == 14
    assert model.index(0, 0).data(ShapeRole) == "1x28x28"
    assert "Input" in model.index(0, 0).data()
    assert not model.flags(model.index(0, 0)) & Qt.ItemFlag.ItemIsDragEnabled
    inf = infer(doc.spec)
    for i, info in enumerate(inf.layers):
        ix = model.index(i + 1, 0)
        assert ix.data(ShapeRole) == "x".join(map(str, info.output_shape))
        assert ix.data() == info.summary
    assert model.index(1, 0).data() == "Conv2D 6@5x5, same"


def test_drag_move_rows_through_mime(setup):
    doc, stack, model = setup
    mime = model.mimeData([model.index(1, 0)])  # Conv2D 6@5x5
    assert mime.hasFormat(MIME_ROWS)
    assert model.canDropMimeData(mime, MOVE, 3, 0, QModelIndex())
    # Drop before row 3 (the MaxPool2D): the conv lands after the ReLU.
    assert model.dropMimeData(mime, MOVE, 3, 0, QModelIndex())
    assert types(doc)[:3] == ["ReLU", "Conv2D", "MaxPool2D"]
    assert len(doc) == 13  # moved, not copied
    assert stack.undoText() == "Move Conv2D"
    stack.undo()
    assert types(doc) == LENET
    # Several rows to the end (row -1), then dropping in place changes nothing.
    mime = model.mimeData([model.index(1, 0), model.index(2, 0)])
    assert model.dropMimeData(mime, MOVE, -1, 0, QModelIndex())
    assert types(doc)[-2:] == ["Conv2D", "ReLU"]
    n = stack.count()
    mime = model.mimeData([model.index(1, 0)])
    assert model.dropMimeData(mime, MOVE, 2, 0, QModelIndex())
    assert stack.count() == n


def test_drop_layer_mime_inserts_new_layer(setup):
    doc, stack, model = setup
    assert model.dropMimeData(palette_mime("Dropout"), COPY, 2, 0, QModelIndex())
    assert types(doc)[1] == "Dropout"
    assert stack.undoText() == "Insert Dropout"
    # Dropping onto an item inserts after it.
    assert model.dropMimeData(palette_mime("BatchNorm2D"), COPY, -1, 0, model.index(1, 0))
    assert types(doc)[:3] == ["Conv2D", "BatchNorm2D", "Dropout"]
    # Before the Input row means first.
    assert model.dropMimeData(palette_mime("Flatten"), COPY, 0, 0, QModelIndex())
    assert types(doc)[0] == "Flatten"
    stack.undo()
    stack.undo()
    stack.undo()
    assert types(doc) == LENET


def test_foreign_or_corrupt_drops_are_refused(setup):
    doc, stack, model = setup
    text = QMimeData()
    text.setText("Conv2D")
    assert not model.canDropMimeData(text, COPY, 1, 0, QModelIndex())
    assert not model.dropMimeData(text, COPY, 1, 0, QModelIndex())
    bad = QMimeData()
    bad.setData(MIME_LAYERS, QByteArray(b'[{"type": "Conv2D", "filters": -3, "kernel_size": 3}]'))
    assert not model.dropMimeData(bad, COPY, 1, 0, QModelIndex())
    junk = QMimeData()
    junk.setData(MIME_LAYERS, QByteArray(b"{not json"))
    assert not model.dropMimeData(junk, COPY, 1, 0, QModelIndex())
    rows = QMimeData()
    rows.setData(MIME_ROWS, QByteArray(json.dumps([99]).encode()))
    assert not model.dropMimeData(rows, MOVE, 1, 0, QModelIndex())
    assert types(doc) == LENET and stack.count() == 0


def test_field_edits_merge_into_one_undo_step(setup):
    doc, stack, model = setup
    for v in (1, 12, 128):  # typing "128" in the spin box
        stack.push(SetFieldCommand(doc, 0, "filters", v))
    assert stack.count() == 1
    assert stack.undoText() == "Change filters of layer 0 (Conv2D)"
    assert model.index(1, 0).data(ShapeRole) == "128x28x28"
    stack.push(SetFieldCommand(doc, 0, "kernel_size", 3))  # another field: a new step
    assert stack.count() == 2
    stack.undo()
    stack.undo()
    assert doc.layers[0].config["filters"] == 6
    # Typing back to the original value leaves nothing to undo.
    stack.push(SetFieldCommand(doc, 0, "filters", 9))
    stack.push(SetFieldCommand(doc, 0, "filters", 6))
    assert not stack.canUndo() or stack.undoText() != "Change filters of layer 0 (Conv2D)"
    with pytest.raises(SpecError):
        SetFieldCommand(doc, 0, "filters", 0)


def test_invalid_layer_is_red_with_engine_message(setup):
    doc, stack, model = setup
    stack.push(SetFieldCommand(doc, 3, "kernel_size", 20))  # 20x20 kernel on 14x14 maps
    ix = model.index(4, 0)
    msg = infer(doc.spec).layers[3].error
    assert msg and "larger than" in msg
    assert ix.data(ErrorRole) == msg
    assert msg in ix.data(Qt.ItemDataRole.ToolTipRole)
    assert msg in ix.data(Qt.ItemDataRole.AccessibleTextRole)
    assert isinstance(ix.data(Qt.ItemDataRole.BackgroundRole), QBrush)
    # Layers after it are marked as depending on it.
    assert "layer 3" in model.index(5, 0).data(ErrorRole)
    assert model.index(3, 0).data(ErrorRole) is None


def test_move_order_and_document_guards(setup):
    doc, _stack, _model = setup
    assert move_order(5, [1], 4) == [0, 2, 3, 1, 4]
    assert move_order(5, [3, 4], 0) == [3, 4, 0, 1, 2]
    assert move_order(5, [1, 3], 3) == [0, 2, 1, 3, 4]
    assert make_move_command(doc, [2], 2) is None
    with pytest.raises(ValueError):
        doc.reorder([0, 0, 1])
    with pytest.raises(IndexError):
        doc.remove_layers(20)
    for type_name in LAYER_CLASSES:
        assert new_layer(type_name).type == type_name


def test_explanation_uses_the_users_numbers(setup):
    doc, stack, _model = setup
    text = explain_html(doc, 0)
    assert "(28 + 2*2 - 5) / 1 + 1 = 28" in text
    assert "6 x (1*5*5) + 6 = 156" in text
    assert "5x5 patch" in text
    dense = explain_html(doc, 7)  # Dense 120 after Flatten: the raw-input comparison
    assert "120 x 400 + 120 = 48,120" in dense
    assert "120 x 784 + 120 = 94,200" in dense
    pool = explain_html(doc, 2)
    assert "(28 - 2) / 2 + 1 = 14" in pool
    stack.push(SetFieldCommand(doc, 0, "stride", 2))  # "same" with stride 2 on 28: pads 1 and 2
    assert "(28 + 1 + 2 - 5) / 2 + 1 = 14" in explain_html(doc, 0)
    stack.push(SetFieldCommand(doc, 0, "padding", "valid"))  # 23 / 2 is not whole: floor
    assert "floor((28 - 5) / 2) + 1 = 12" in explain_html(doc, 0)
    stack.push(SetFieldCommand(doc, 3, "kernel_size", 20))
    assert "Problem" in explain_html(doc, 3) and "larger than" in explain_html(doc, 3)
    assert "Input" in explain_html(doc, -1)
