"""`cnn-designer import`: ONNX chains (the app's own export round-trips exactly; PyTorch's export of an
nn.Sequential predicts as PyTorch does), weights for a known design, and clean refusals."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from engine import modelfile
from engine.data import Preprocessing
from engine.model import Model
from engine.spec import Spec
from engine.trained import TrainedModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_cli import cli, one_line_error  # noqa: E402

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

#: every layer type the format has, in one chain the exporter and the importer both handle
EVERYTHING = {
    "format": "cnn-designer/1", "name": "everything", "input": {"channels": 3, "height": 20, "width": 20},
    "layers": [
        {"type": "Conv2D", "filters": 4, "kernel_size": 3, "padding": "same"}, {"type": "BatchNorm2D"},
        {"type": "LeakyReLU", "alpha": 0.2}, {"type": "MaxPool2D", "pool_size": 2},
        {"type": "Conv2D", "filters": 6, "kernel_size": [3, 2], "stride": 2, "padding": [1, 0], "use_bias": False},
        {"type": "Tanh"}, {"type": "AvgPool2D", "pool_size": 3, "stride": 1, "padding": "same"},
        {"type": "Dropout", "rate": 0.3}, {"type": "Flatten"}, {"type": "Dense", "units": 12},
        {"type": "BatchNorm1D", "momentum": 0.2}, {"type": "Sigmoid"}, {"type": "Dense", "units": 3},
        {"type": "ReLU"}, {"type": "Softmax"},
    ],
}
GAP = {
    "format": "cnn-designer/1", "name": "gap", "input": {"channels": 1, "height": 12, "width": 12},
    "layers": [{"type": "Conv2D", "filters": 5, "kernel_size": 3}, {"type": "ReLU"}, {"type": "GlobalAvgPool2D"},
               {"type": "Dense", "units": 1}, {"type": "Sigmoid"}],
}

#: Residual blocks: identity, projection with stride 2, an explicit projection keeping the shape, Dropout
#: inside (exports as Identity), no activation, an odd size
RESIDUAL = {
    "format": "cnn-designer/1", "name": "residual", "input": {"channels": 3, "height": 15, "width": 15},
    "layers": [
        {"type": "Conv2D", "filters": 6, "kernel_size": 3, "padding": "same"}, {"type": "ReLU"},
        {"type": "Residual", "layers": [
            {"type": "Conv2D", "filters": 6, "kernel_size": 3, "padding": "same"}, {"type": "BatchNorm2D"},
            {"type": "ReLU"}, {"type": "Dropout", "rate": 0.2},
            {"type": "Conv2D", "filters": 6, "kernel_size": 3, "padding": "same"}, {"type": "BatchNorm2D"}]},
        {"type": "Residual", "activation": "LeakyReLU", "layers": [
            {"type": "Conv2D", "filters": 8, "kernel_size": 3, "stride": 2, "padding": "same"}, {"type": "Tanh"},
            {"type": "MaxPool2D", "pool_size": 3, "stride": 1, "padding": "same"}]},
        {"type": "Residual", "shortcut": "projection", "activation": None, "layers": [
            {"type": "Conv2D", "filters": 8, "kernel_size": [3, 1], "padding": [1, 0], "use_bias": False}]},
        {"type": "Residual", "shortcut": "identity", "activation": "Sigmoid", "layers": [
            {"type": "AvgPool2D", "pool_size": 3, "stride": 1, "padding": "same"}]},
        {"type": "GlobalAvgPool2D"}, {"type": "Dense", "units": 3}, {"type": "Softmax"},
    ],
}


def _model_file(tmp_path: Path, arch: dict, classes: list[str], seed: int = 3) -> Path:
    spec = Spec.from_dict(arch)
    model = Model(spec, seed=seed)
    rng = np.random.default_rng(seed)
    state = {k: v + rng.normal(0, 0.1, v.shape).astype(np.float32) if "running_var" not in k
             else np.abs(v + rng.normal(0, 0.3, v.shape)).astype(np.float32) + 0.1
             for k, v in model.state_dict().items()}
    prep = Preprocessing.for_input(spec.input_shape)
    prep.mean = [0.5] * spec.input_shape[0]
    prep.std = [0.25] * spec.input_shape[0]
    path = tmp_path / f"{arch['name']}.cnnd"
    modelfile.save(path, TrainedModel(spec, state, classes, prep, {"epochs": 1}, [{"epoch": 1, "train_loss": 1.0}]))
    return path


@pytest.mark.parametrize("arch,classes", [(EVERYTHING, ["a", "b", "c"]), (GAP, ["no", "yes"]),
                                          (RESIDUAL, ["x", "y", "z"])])
def test_app_onnx_export_round_trips_exactly(capsys, tmp_path, arch, classes):
    src = _model_file(tmp_path, arch, classes)
    rc, _, err = cli(capsys, "export", src, "--out", tmp_path / "m.onnx")
    assert rc == 0, err
    rc, out, err = cli(capsys, "import", tmp_path / "m.onnx", "--out", tmp_path / "back.cnnd")
    assert rc == 0, err
    assert "architecture from its CNN Designer metadata" in err and "saved" in err
    a, b = modelfile.load(src), modelfile.load(tmp_path / "back.cnnd")
    assert b.spec == a.spec and b.classes == a.classes and b.preprocessing == a.preprocessing
    assert a.state.keys() == b.state.keys()
    for k in a.state:
        assert np.array_equal(a.state[k], b.state[k]), k
    assert b.training["imported_from"] == str((tmp_path / "m.onnx").resolve())


def test_graph_without_metadata_imports_from_its_nodes(capsys, tmp_path):
    """A hand-built graph (Pad before Conv, Reshape, MatMul + Add, Constant shape) with no app metadata:
    predictions equal onnxruntime's, default preprocessing and --classes used."""
    ort = pytest.importorskip("onnxruntime")
    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 0.3, (3, 1, 3, 3)).astype(np.float32)
    b1 = rng.normal(0, 0.1, 3).astype(np.float32)
    w2 = rng.normal(0, 0.1, (3 * 5 * 5, 4)).astype(np.float32)
    b2 = rng.normal(0, 0.1, 4).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))]
    inits.append(numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads"))
    nodes = [
        helper.make_node("Pad", ["x", "pads"], ["p"], name="pad"),
        helper.make_node("Conv", ["p", "w1", "b1"], ["c"], name="conv", kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("MaxPool", ["r"], ["m"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Constant", [], ["shape"], name="shape",
                         value=numpy_helper.from_array(np.array([0, -1], np.int64))),
        helper.make_node("Reshape", ["m", "shape"], ["f"], name="flat"),
        helper.make_node("MatMul", ["f", "w2"], ["mm"], name="mm"),
        helper.make_node("Add", ["mm", "b2"], ["y"], name="add"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 10, 10])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = tmp_path / "plain.onnx"
    path.write_bytes(model.SerializeToString())
    rc, out, err = cli(capsys, "import", path, "--out", tmp_path / "plain.cnnd", "--classes", "w,x,y,z")
    assert rc == 0, err
    assert "preprocessing: the default (pixels / 255" in err
    mf = modelfile.load(tmp_path / "plain.cnnd")
    assert [layer.type for layer in mf.spec.layers] == ["Conv2D", "ReLU", "MaxPool2D", "Flatten", "Dense"]
    assert mf.spec.layers[0].config["padding"] == 1 and mf.classes == ["w", "x", "y", "z"]
    x = rng.random((5, 1, 10, 10), dtype=np.float32)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = mf.build_model().forward(x)
    assert np.abs(got - want).max() < 1e-5
    rc, _, err = cli(capsys, "import", path, "--out", tmp_path / "p2.cnnd")
    assert rc == 0 and modelfile.load(tmp_path / "p2.cnnd").classes == ["class_0", "class_1", "class_2", "class_3"]


def test_residual_graph_without_metadata_becomes_residual_rows(capsys, tmp_path):
    """The app's export of residual blocks, its metadata removed: the Add patterns become Residual rows
    (mode and activation read from the graph) predicting as the original does."""
    src = _model_file(tmp_path, RESIDUAL, ["x", "y", "z"])
    rc, _, err = cli(capsys, "export", src, "--out", tmp_path / "m.onnx")
    assert rc == 0, err
    model = onnx.load(str(tmp_path / "m.onnx"))
    del model.metadata_props[:]
    (tmp_path / "bare.onnx").write_bytes(model.SerializeToString())
    rc, _, err = cli(capsys, "import", tmp_path / "bare.onnx", "--out", tmp_path / "bare.cnnd")
    assert rc == 0, err
    a, b = modelfile.load(src), modelfile.load(tmp_path / "bare.cnnd")
    blocks = [layer.to_config() for layer in b.spec.layers if layer.type == "Residual"]
    assert [(x["shortcut"], x["activation"], [y["type"] for y in x["layers"]]) for x in blocks] == [
        ("auto", "ReLU", ["Conv2D", "BatchNorm2D", "ReLU", "Conv2D", "BatchNorm2D"]),
        ("auto", "LeakyReLU", ["Conv2D", "Tanh", "MaxPool2D"]),
        ("projection", None, ["Conv2D"]),
        ("auto", "Sigmoid", ["AvgPool2D"])]
    assert {"layers.3.shortcut.weight", "layers.4.shortcut.weight", "layers.2.layers.3.weight"} <= b.state.keys()
    x = np.random.default_rng(1).random((4, 3, 15, 15), dtype=np.float32)
    assert np.abs(a.build_model().forward(x) - b.build_model().forward(x)).max() < 1e-6


def test_pytorch_residual_block_predicts_as_pytorch(capsys, tmp_path):
    """torch.onnx.export of a ResNet-style module (an identity block, a stride-2 block with a 1x1
    projection, BatchNorm folded by the exporter) imports as Residual rows and predicts as PyTorch."""
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                                      nn.ReLU(), nn.Conv2d(cout, cout, 3, 1, 1), nn.BatchNorm2d(cout))
            self.proj = nn.Conv2d(cin, cout, 1, stride) if (cin, stride) != (cout, 1) else None

        def forward(self, x):
            return torch.relu(self.body(x) + (x if self.proj is None else self.proj(x)))

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), Block(8, 8, 1), Block(8, 16, 2),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5))
    mf, diff = _through_onnx(capsys, tmp_path, torch, net, torch.rand(4, 3, 17, 17), "res")
    assert diff < 1e-4, diff
    assert [layer.type for layer in mf.spec.layers] == ["Conv2D", "ReLU", "Residual", "Residual",
                                                        "GlobalAvgPool2D", "Dense"]
    assert [layer.config["activation"] for layer in mf.spec.layers[2:4]] == ["ReLU", "ReLU"]
    assert "layers.3.shortcut.weight" in mf.state and "layers.2.shortcut.weight" not in mf.state


def _through_onnx(capsys, tmp_path, torch, net, x, name, *args):
    """`net` (BatchNorm statistics made non-trivial) through torch.onnx.export and `import ARGS`:
    the imported model and its largest difference from PyTorch's outputs."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    net.eval()
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(net, (x,), str(path), input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "N"}},
                      dynamo=False)
    rc, _, err = cli(capsys, "import", path, "--out", tmp_path / f"{name}.cnnd", *args)
    assert rc == 0, err
    mf = modelfile.load(tmp_path / f"{name}.cnnd")
    with torch.no_grad():
        want = net(x).numpy()
    diff = float(np.abs(mf.build_model().forward(x.numpy()) - want).max())
    with capsys.disabled():
        print(f" max |app - torch| = {diff:.2e}", end=" ")
    return mf, diff


def _graph(nodes, inits, out_shape=("N", 4)):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))],
                              initializer=[numpy_helper.from_array(a, n) for n, a in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return model.SerializeToString()


def _dynamo_style_graph(batch, axes_as_input=True, keepdims=1, axes=(-1, -2)):
    """What torch.onnx.export's default (dynamo) exporter of torch 2.x writes for a ResNet-style net:
    opset 18+, AdaptiveAvgPool2d(1) as ReduceMean over the last two axes (axes an input), x.flatten(1)
    as a Reshape to (batch, features) where the batch is -1, or the export's own batch when it is fixed."""
    rng = np.random.default_rng(0)
    w1, w2 = (rng.normal(0, 0.3, (3, 3, 3, 3)).astype(np.float32) for _ in range(2))
    ws, bs = rng.normal(0, 0.3, (5, 3, 1, 1)).astype(np.float32), rng.normal(0, 0.1, 5).astype(np.float32)
    fc = rng.normal(0, 0.3, (4, 5)).astype(np.float32)
    mean = {"axes": list(axes)} if not axes_as_input else {}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c2", "x"], ["a1"]),  # identity shortcut
             helper.make_node("Relu", ["a1"], ["r2"]),
             helper.make_node("Conv", ["r2", "w3"], ["c3"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Conv", ["r2", "ws", "bs"], ["s"], strides=[2, 2]),  # projection
             helper.make_node("Conv", ["c3", "wp"], ["c4"], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c4", "s"], ["a2"]),
             helper.make_node("Relu", ["a2"], ["r3"]),
             helper.make_node("ReduceMean", ["r3", "axes"] if axes_as_input else ["r3"], ["m"], keepdims=keepdims,
                              **mean),
             *([helper.make_node("Reshape", ["m", "shape"], ["f"], allowzero=1)] if keepdims else []),
             helper.make_node("Gemm", ["f" if keepdims else "m", "fc"], ["y"], transB=1)]
    inits = {"w1": w1, "w2": w2, "ws": ws, "bs": bs, "w3": rng.normal(0, 0.3, (5, 3, 3, 3)).astype(np.float32),
             "wp": rng.normal(0, 0.3, (5, 5, 3, 3)).astype(np.float32), "fc": fc,
             "shape": np.array([batch, 5], np.int64)}
    if axes_as_input:
        inits["axes"] = np.array(axes, np.int64)
    graph = helper.make_graph(
        nodes, "torch_jit", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch if batch > 0 else "N",
                                                                                     3, 9, 11])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch if batch > 0 else "N", 4])],
        initializer=[numpy_helper.from_array(a, n) for n, a in inits.items()])
    opset = 20 if axes_as_input else 17
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]).SerializeToString()


@pytest.mark.parametrize("batch, axes_as_input, keepdims, axes", [
    (-1, True, 1, (-1, -2)),  # dynamic batch, opset 18+
    (3, True, 1, (2, 3)),  # the batch fixed at export: Reshape to (3, features)
    (-1, False, 0, (2, 3)),  # opset 17 attribute, no Reshape needed
])
def test_torch_default_exporter_resnet_graph_imports(capsys, tmp_path, batch, axes_as_input, keepdims, axes):
    """The graph torch.onnx.export (dynamo, torch 2.13's default) writes for a ResNet-style module
    (blocks with identity and 1x1 projection shortcuts, AdaptiveAvgPool2d(1), flatten, Linear) becomes
    Residual rows and GlobalAvgPool2D, and predicts as onnxruntime does."""
    ort = pytest.importorskip("onnxruntime")
    data = _dynamo_style_graph(batch, axes_as_input, keepdims, axes)
    p = tmp_path / "dyn.onnx"
    p.write_bytes(data)
    rc, _, err = cli(capsys, "import", p, "--out", tmp_path / "dyn.cnnd")
    assert rc == 0, err
    mf = modelfile.load(tmp_path / "dyn.cnnd")
    assert [la.type for la in mf.spec.layers] == ["Residual", "Residual", "GlobalAvgPool2D", "Dense"]
    assert "layers.1.shortcut.weight" in mf.state and "layers.0.shortcut.weight" not in mf.state
    x = np.random.default_rng(1).normal(size=(3, 3, 9, 11)).astype(np.float32)
    want = ort.InferenceSession(data).run(None, {"x": x})[0]
    assert np.abs(mf.build_model().forward(x) - want).max() < 1e-4


def test_reduce_mean_over_other_axes_refused(capsys, tmp_path):
    data = _dynamo_style_graph(-1, True, 1, (1, 2))
    p = tmp_path / "mean.onnx"
    p.write_bytes(data)
    rc, _, err = cli(capsys, "import", p, "--out", tmp_path / "mean.cnnd")
    assert rc == 2 and "ReduceMean node" in err and "only a mean over height and width" in one_line_error(err)
    assert not (tmp_path / "mean.cnnd").exists()


def test_unsupported_graphs_refused_naming_the_node(capsys, tmp_path):
    w = np.ones((2, 1, 3, 3), np.float32)
    cases = {
        "resize": (_graph([helper.make_node("Conv", ["x", "w"], ["c"], name="c1", kernel_shape=[3, 3]),
                           helper.make_node("Elu", ["c"], ["y"], name="fancy")], {"w": w}),
                   "Elu node 'fancy': operator Elu is not supported"),
        "branch": (_graph([helper.make_node("Relu", ["x"], ["r"], name="r"),
                           helper.make_node("Sigmoid", ["r"], ["s"], name="left"),
                           helper.make_node("Tanh", ["r"], ["t"], name="right"),
                           helper.make_node("Add", ["t", "s"], ["y"], name="join")], {}),
                   "branches into"),  # two chains joined: not a residual block (that adds r itself)
        "grouped": (_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="g", kernel_shape=[3, 3], group=2)],
                           {"w": w}), "Conv node 'g': group=2 is not supported"),
    }
    for name, (data, msg) in cases.items():
        p = tmp_path / f"{name}.onnx"
        p.write_bytes(data)
        rc, _, err = cli(capsys, "import", p, "--out", tmp_path / f"{name}.cnnd")
        assert rc == 2 and msg in one_line_error(err), (name, err)
        assert not (tmp_path / f"{name}.cnnd").exists()
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\x01 not protobuf" * 50)
    rc, _, err = cli(capsys, "import", junk, "--out", tmp_path / "j.cnnd")
    assert rc == 2 and "junk.onnx" in one_line_error(err)
    rc, _, err = cli(capsys, "import", tmp_path / "nothing.onnx", "--out", tmp_path / "n.cnnd")
    assert rc == 2 and "not found" in one_line_error(err)
    rc, _, err = cli(capsys, "import", junk, "--out", junk)
    assert rc == 2 and "same file" in one_line_error(err)


def test_weights_with_like(capsys, tmp_path):
    like = _model_file(tmp_path, GAP, ["no", "yes"])
    mf = modelfile.load(like)
    new = {k: v * 2 for k, v in mf.state.items()}
    np.savez(tmp_path / "w.npz", **new)
    rc, _, err = cli(capsys, "import", tmp_path / "w.npz", "--like", like, "--out", tmp_path / "n.cnnd")
    assert rc == 0, err
    got = modelfile.load(tmp_path / "n.cnnd")
    assert got.spec == mf.spec and got.classes == mf.classes
    assert all(np.array_equal(got.state[k], new[k]) for k in new)

    from safetensors.numpy import save as to_bytes

    torchish = {k: v.astype(np.float64) for k, v in new.items()}
    torchish["layers.0.num_batches_tracked"] = np.array(3, np.int64)
    (tmp_path / "w.safetensors").write_bytes(to_bytes(torchish))
    rc, _, err = cli(capsys, "import", tmp_path / "w.safetensors", "--like", like, "--out", tmp_path / "s.cnnd")
    assert rc == 0, err
    assert all(np.array_equal(modelfile.load(tmp_path / "s.cnnd").state[k], new[k]) for k in new)

    bad = dict(new)
    bad["layers.3.weight"] = np.zeros((2, 5), np.float32)
    (tmp_path / "bad.safetensors").write_bytes(to_bytes(bad))
    rc, _, err = cli(capsys, "import", tmp_path / "bad.safetensors", "--like", like, "--out", tmp_path / "b.cnnd")
    assert rc == 2 and "wrong shape: layers.3.weight (2, 5) (expected (1, 5))" in one_line_error(err)
    del bad["layers.3.weight"]
    np.savez(tmp_path / "missing.npz", **bad)
    rc, _, err = cli(capsys, "import", tmp_path / "missing.npz", "--like", like, "--out", tmp_path / "b.cnnd")
    assert rc == 2 and "missing: layers.3.weight (1, 5)" in one_line_error(err)
    rc, _, err = cli(capsys, "import", tmp_path / "w.npz", "--out", tmp_path / "b.cnnd")
    assert rc == 2 and "--like" in one_line_error(err)


def test_pytorch_sequential_predicts_as_pytorch(capsys, tmp_path):
    torch = pytest.importorskip("torch")
    nn = torch.nn
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, stride=2), nn.LeakyReLU(0.1), nn.AvgPool2d(2), nn.Flatten(),
        nn.Linear(8 * 3 * 3, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Dropout(0.3), nn.Linear(16, 5), nn.Sigmoid(),
        nn.Linear(5, 4),
    )
    mf, diff = _through_onnx(capsys, tmp_path, torch, net, torch.rand(6, 3, 28, 28), "seq", "--classes", "a,b,c,d")
    assert diff < 1e-4, diff
    assert json.loads(json.dumps(mf.classes)) == ["a", "b", "c", "d"]
    global_pool = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                nn.Linear(3, 2)).eval()
    x = torch.rand(2, 1, 9, 9)
    torch.onnx.export(global_pool, (x,), str(tmp_path / "gap.onnx"), dynamo=False)
    rc, _, err = cli(capsys, "import", tmp_path / "gap.onnx", "--out", tmp_path / "gap.cnnd")
    assert rc == 0, err
    got = modelfile.load(tmp_path / "gap.cnnd").build_model().forward(x.numpy())
    with torch.no_grad():
        assert np.abs(got - global_pool(x).numpy()).max() < 1e-4
