"""Residual blocks in the exports: an Add node per block in ONNX, a block module in PyTorch's model.py
with the app's weight names. Parity with the engine on real digits is in test_export_onnx.py and
test_export_pytorch.py (the "residual" case of export_helpers.CASES)."""

from __future__ import annotations

import ast

import pytest
from export_helpers import RESIDUAL

from engine.export.common import load_source


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    from export_helpers import make_cnnd

    return load_source(make_cnnd(tmp_path_factory.mktemp("res") / "res.cnnd", RESIDUAL))


def test_onnx_has_an_add_per_block_and_the_projection(src):
    from engine.export.onnx_export import build_onnx

    graph = build_onnx(src).graph
    adds = [n for n in graph.node if n.op_type == "Add"]
    assert [n.name for n in adds] == ["layers.3.add", "layers.4.add"]
    assert adds[0].input[1] == "layers.2.maxpool2d"  # identity: the block's own input
    assert adds[1].input[1] == "layers.4.shortcut.conv2d"  # projection: a 1x1 Conv of the input
    shortcut = next(n for n in graph.node if n.name == "layers.4.shortcut")
    assert shortcut.op_type == "Conv" and shortcut.input[0] == "layers.3.activation.relu"
    names = {i.name for i in graph.initializer}
    assert {"layers.3.layers.1.running_var", "layers.4.shortcut.weight", "layers.4.shortcut.bias"} <= names


def test_model_py_has_the_block_as_a_module(src):
    from engine.export.pytorch_export import model_source

    text = model_source(src)
    tree = ast.parse(text)
    assert "Residual" in [n.name for n in tree.body if isinstance(n, ast.ClassDef)]
    assert "        Residual([\n            nn.Conv2d(8, 8, (3, 3)" in text
    assert "shortcut=nn.Conv2d(8, 12, (1, 1), stride=(2, 2), bias=True, padding=(0, 0)), " \
           "activation=nn.LeakyReLU(0.01)),  # 4: Residual block, 3 layers, then LeakyReLU" in text


def test_torch_state_dict_names(src, tmp_path):
    pytest.importorskip("torch")
    from test_export_pytorch import import_model_py

    from engine.export import export_model

    export_model(src.path, "pytorch", tmp_path / "out")
    names = set(import_model_py(tmp_path / "out").Net().state_dict())
    assert {"layers.3.layers.0.weight", "layers.3.layers.1.running_mean", "layers.4.shortcut.weight",
            "layers.4.shortcut.bias", "layers.4.layers.0.bias"} <= names
