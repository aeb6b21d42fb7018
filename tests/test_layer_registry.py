"""A layer type defined in one place (this file) reaches every part of the app through the registry.

`ChannelScale` multiplies each channel by a learned factor. Nothing outside this file knows it:
registered for the duration of each test, it must show up in shape inference, train (gradients
checked in float64), export to ONNX (checked, and equal under onnxruntime) and PyTorch (the
generated model.py parses, and with torch reproduces the engine), and appear in the palette and
the explanation panel.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import sys

import numpy as np
import pytest

from engine.layers import LAYER_CLASSES, registered
from engine.layers.base import Layer, Op, Shape
from engine.spec import Spec


class ChannelScaleOp(Op):
    def init_params(self, rng):
        self.params["weight"][...] = rng.uniform(0.5, 1.5, self.params["weight"].shape)

    def _w(self, x):
        w = self.params["weight"]
        return w.reshape(-1, 1, 1, 1) if x.ndim == 4 else w  # CNHW inside the engine

    def forward(self, x, training):
        if training:
            self.cache = x
        return x * self._w(x)

    def backward(self, dy, need_dx=True):
        x, self.cache = self.cache, None
        axes = (1, 2, 3) if x.ndim == 4 else (0,)
        self.grads["weight"][...] = np.sum(dy * x, axis=axes)
        return dy * self._w(dy)


class ChannelScale(Layer):
    type = "ChannelScale"
    category = "Regularization"
    description = "Multiplies each channel by its own learned factor."
    op = ChannelScaleOp
    elementwise = True
    icon = ("<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 32 32'>"
            "<circle cx='16' cy='16' r='12' fill='{color}'/></svg>")
    torch_helpers = '''class ChannelScale(nn.Module):
    """Each channel times a learned factor."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.view(1, -1, *([1] * (x.dim() - 2)))'''

    def param_shapes(self, input_shape: Shape) -> dict[str, Shape]:
        return {"weight": (input_shape[0],)}

    def to_onnx(self, g, x, in_shape, name):
        w = g.state[f"{name}.weight"].reshape(-1, *([1] * (len(in_shape) - 1)))
        return g.node("Mul", [x, g.constant(f"{name}.weight", w)], name, self.onnx_out(name))

    def torch_module(self, in_shape):
        return f"ChannelScale({in_shape[0]})"

    def explain(self, info, spec, index):
        return [f"Each of the {info.input_shape[0]} channels is multiplied by its own learned factor."]


ARCH = {
    "format": "cnn-designer/1", "name": "toy", "input": {"channels": 1, "height": 8, "width": 8},
    "layers": [
        {"type": "Conv2D", "filters": 3, "kernel_size": 3},
        {"type": "ChannelScale"},
        {"type": "ReLU"},
        {"type": "Flatten"},
        {"type": "Dense", "units": 4},
        {"type": "ChannelScale"},
    ],
}


@pytest.fixture
def toy():
    assert "ChannelScale" not in LAYER_CLASSES
    with registered(ChannelScale):
        yield Spec.from_dict(ARCH)
    assert "ChannelScale" not in LAYER_CLASSES


def test_shapes_and_params(toy):
    from engine.shapes import infer, summary_table

    inf = infer(toy)
    assert inf.valid
    assert [i.output_shape for i in inf.layers] == [(3, 6, 6), (3, 6, 6), (3, 6, 6), (108,), (4,), (4,)]
    assert inf.layers[1].trainable == 3 and inf.layers[5].trainable == 4
    assert "layers.1 (ChannelScale)" in summary_table(toy, inf)
    assert Spec.from_dict(json.loads(toy.to_json())).to_dict() == toy.to_dict()


def test_gradients_and_a_train_step(toy):
    from test_gradients import check_model_gradients

    from engine.model import Model
    from engine.optimizers import make_optimizer

    check_model_gradients(toy)
    m = Model(toy, seed=0)
    before = m.parameters()["layers.1.weight"].copy()
    x = np.random.default_rng(0).normal(size=(8, 1, 8, 8)).astype(np.float32)
    y = np.arange(8) % 4
    opt = make_optimizer("sgd", m, lr=0.5)
    losses = [m.train_step(x, y, opt)[0] for _ in range(30)]
    assert not np.array_equal(before, m.parameters()["layers.1.weight"])
    assert losses[-1] < losses[0] * 0.5


def _source(spec: Spec):
    from engine.data import Preprocessing
    from engine.model import Model
    from engine.trained import TrainedModel

    m = Model(spec, seed=3)
    return TrainedModel.from_model(m, ["a", "b", "c", "d"], Preprocessing.for_input(spec.input_shape)), m


def test_onnx_export(toy):
    ort = pytest.importorskip("onnxruntime")
    from engine.export.onnx_export import build_onnx

    src, m = _source(toy)
    proto = build_onnx(src)  # runs onnx.checker (full check)
    assert [n.op_type for n in proto.graph.node].count("Mul") == 2
    x = np.random.default_rng(1).normal(size=(5, 1, 8, 8)).astype(np.float32)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(["probabilities"], {"input": x})[0]
    assert np.max(np.abs(got - m.predict_proba(x))) < 1e-5


def test_pytorch_export(toy, tmp_path):
    from engine.export.pytorch_export import model_source

    src, m = _source(toy)
    text = model_source(src)
    tree = ast.parse(text)
    assert [n.name for n in tree.body if isinstance(n, ast.ClassDef)].count("ChannelScale") == 1
    assert "        ChannelScale(3),  # 1: ChannelScale" in text
    try:
        import torch
    except ImportError:
        return
    path = tmp_path / "model.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("toy_model", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["toy_model"] = mod
    try:
        spec.loader.exec_module(mod)
        net = mod.Net()
        net.load_state_dict({k: torch.from_numpy(v) for k, v in src.state.items()}, strict=True)
        x = np.random.default_rng(2).normal(size=(5, 1, 8, 8)).astype(np.float32)
        with torch.no_grad():
            got = net.eval().predict_proba(torch.from_numpy(x)).numpy()
    finally:
        sys.modules.pop("toy_model", None)
    assert np.max(np.abs(got - m.predict_proba(x))) < 1e-5


def test_palette_and_explanation_panel(toy, qtbot):
    from designer.document import Document, new_layer
    from designer.explain import ExplainPanel
    from designer.icons import layer_icon
    from designer.palette import Palette

    palette = Palette()
    qtbot.addWidget(palette)
    item = palette.item_for("ChannelScale")
    assert item.parent().text(0) == "Regularization"
    assert "learned factor" in item.toolTip(0)
    image = layer_icon("ChannelScale", "Regularization").pixmap(32, 32).toImage()
    assert image.pixelColor(16, 16).name() == "#a6761d"  # the SVG, in its category's colour
    assert new_layer("ChannelScale").to_config() == {"type": "ChannelScale"}

    doc = Document(toy)
    panel = ExplainPanel(doc)
    qtbot.addWidget(panel)
    panel.set_index(1)
    text = panel.toPlainText()
    assert "Each of the 3 channels is multiplied by its own learned factor." in text
    assert "Parameters: 3" in text


def test_output_and_health_hints_come_from_the_entry():
    """The final-layer rules (binary output, folded softmax), the dead-unit report and the ONNX
    import rule are hints of the registry entry: a toy activation declaring them gets them."""
    from engine.health import HealthMonitor
    from engine.layers.activation_base import Activation
    from engine.layers.sigmoid import SigmoidOp
    from engine.model import Model
    from engine.model_import import _rules
    from engine.shapes import infer

    class Squash(Activation):
        type = "Squash"
        description = "A sigmoid under another name."
        op = SigmoidOp
        onnx_op = "SquashOp"
        output_head = "binary"
        reports_dead_units = True

    arch = {"format": "cnn-designer/1", "name": "toy", "input": {"channels": 1, "height": 6, "width": 6},
            "layers": [{"type": "Conv2D", "filters": 2, "kernel_size": 3}, {"type": "Squash"}, {"type": "Flatten"},
                       {"type": "Dense", "units": 1}, {"type": "Squash"}]}
    with registered(Squash):
        spec = Spec.from_dict(arch)
        assert infer(spec).binary and infer(spec).num_classes == 2
        model = Model(spec)
        assert model.loss_kind == "binary_ce" and model._head == len(model.ops) - 1
        health = HealthMonitor(model, np.zeros((2, 1, 6, 6), np.float32), [1, 1], "adam", 1e-3, 4)
        assert [lay.dead_units for lay in health.layers] == [False, True, False, False, True]
        assert _rules()["SquashOp"].__self__ is Squash
