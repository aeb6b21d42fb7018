"""ONNX export: checker-valid, every layer type, onnxruntime == the engine within 1e-4 on real
MNIST, metadata a user can feed the model with, and a sidecar predict.py whose --check works."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from export_helpers import CASES, export_cases, mnist_inputs

from engine import modelfile
from engine.cli import main as cli_main
from engine.data import Preprocessing
from engine.export.onnx_export import OPSET
from engine.layers import LAYER_CLASSES
from engine.shapes import infer


def test_the_test_models_cover_every_layer_type():
    used = {layer["type"] for arch, _, _ in CASES.values() for layer in arch["layers"]}
    assert used == set(LAYER_CLASSES)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """name -> (cnnd path, export path)."""
    return export_cases(tmp_path_factory.mktemp("onnx"), "onnx", ".onnx")


@pytest.mark.parametrize("name", list(CASES))
def test_onnx_matches_engine_on_real_mnist(exported, name):
    cnnd, path = exported[name]
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == OPSET
    mf = modelfile.load(cnnd)
    engine_model = mf.build_model()
    x, y = mnist_inputs(mf.preprocessing, n=300, seed=7, split="test")
    want = engine_model.predict_proba(x)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input"]
    assert [o.name for o in sess.get_outputs()] == ["probabilities"]
    got = sess.run(["probabilities"], {"input": x})[0]
    assert got.shape == want.shape == (300, len(mf.classes))
    assert np.max(np.abs(got - want)) < 1e-4
    # the comparison means something: the model tells images apart
    assert np.ptp(want.max(axis=1)) > 0.05 or len(set(want.argmax(1))) > 1
    if name != "binary_rgb":
        assert (want.argmax(1) == y).mean() > 0.5
    # dynamic batch dimension
    for n in (1, 7):
        assert np.max(np.abs(sess.run(None, {"input": x[:n]})[0] - want[:n])) < 1e-4


def test_onnx_structure_names_and_metadata(exported):
    cnnd, path = exported["all_layers"]
    model = onnx.load(str(path))
    mf = modelfile.load(cnnd)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    for k, v in mf.state.items():  # the app's names, the app's values (BN statistics included)
        np.testing.assert_array_equal(inits[k], v)
    assert any(k.endswith("running_var") and not np.allclose(v, 1) for k, v in mf.state.items())
    inp = model.graph.input[0].type.tensor_type
    assert inp.elem_type == onnx.TensorProto.FLOAT
    assert inp.shape.dim[0].dim_param == "N" and [d.dim_value for d in inp.shape.dim[1:]] == [1, 28, 28]
    ops = [n.op_type for n in model.graph.node]
    for op in ("Conv", "BatchNormalization", "LeakyRelu", "MaxPool", "Tanh", "AveragePool", "Relu",
               "Identity", "Flatten", "Gemm", "Sigmoid", "Softmax"):
        assert op in ops
    conv0 = next(n for n in model.graph.node if n.op_type == "Conv")
    assert list(onnx.helper.get_attribute_value(a) for a in conv0.attribute if a.name == "pads") == [[1, 1, 2, 2]]
    avg = next(n for n in model.graph.node if n.op_type == "AveragePool")
    assert {a.name: onnx.helper.get_attribute_value(a) for a in avg.attribute}["count_include_pad"] == 0
    # onnx's own shape inference agrees with the app's, layer by layer (paddings, strides, pools)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim[1:]] for v in model.graph.value_info}
    for info in infer(mf.spec).layers[:-1]:
        assert shapes[f"layers.{info.index}.{info.type.lower()}"] == list(info.output_shape), info
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["classes"]) == mf.classes
    pre = json.loads(meta["preprocessing"])
    assert Preprocessing.from_dict(pre) == mf.preprocessing
    assert "(uint8 pixel * " in meta["input_format"]
    assert json.loads(meta["architecture"]) == mf.spec.to_dict()


def test_sidecar_predict_check_passes_and_detects_a_mismatch(exported, tmp_path):
    cnnd, path = exported["binary_rgb"]
    side = path.parent / "binary_rgb_predict"
    for f in ("predict.py", "preprocess.py", "expected.json", "README.md", "classes.json", "preprocessing.json"):
        assert (side / f).is_file(), f
    samples = sorted((side / "samples").glob("*.png"))
    assert 2 <= len(samples) <= 10
    r = subprocess.run([sys.executable, str(side / "predict.py"), "--check"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "check passed" in r.stdout
    # predict.py on a sample gives the app's own probabilities for that file
    r = subprocess.run([sys.executable, str(side / "predict.py"), "--json", str(samples[0])],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    row = json.loads(r.stdout)[0]
    want = modelfile.load(cnnd).predict_files([samples[0]])[0]
    assert abs(row["probabilities"]["dog"] - float(want[1])) < 1e-5
    # a wrong expectation must fail the check
    exp = json.loads((side / "expected.json").read_text())
    exp["samples"][0]["probabilities"][0] += 0.01
    exp["samples"][0]["probabilities"][1] -= 0.01
    (side / "expected.json").write_text(json.dumps(exp))
    r = subprocess.run([sys.executable, str(side / "predict.py"), "--check"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 1 and "FAILED" in r.stderr


def test_cli_export_onnx(exported, tmp_path, capsys):
    cnnd, _ = exported["scores"]
    out = tmp_path / "cli.onnx"
    assert cli_main(["export", str(cnnd), "--format", "onnx", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert str(out) in text and "predict.py --check" in text
    onnx.checker.check_model(onnx.load(str(out)))
    assert (tmp_path / "cli_predict" / "predict.py").is_file()
    # the format follows from the extension when --format is left out
    assert cli_main(["export", str(cnnd), "--out", str(tmp_path / "again.onnx")]) == 0
    assert (tmp_path / "again.onnx").is_file()
    # an older opset for older runtimes, with the matching (older) IR version
    assert cli_main(["export", str(cnnd), "--out", str(tmp_path / "o17.onnx"), "--opset", "17"]) == 0
    m17 = onnx.load(str(tmp_path / "o17.onnx"))
    assert m17.opset_import[0].version == 17 and m17.ir_version == 8
    x = np.zeros((2, 1, 16, 16), np.float32)
    sess = ort.InferenceSession(str(tmp_path / "o17.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"input": x})[0], modelfile.load(cnnd).build_model().predict_proba(x),
                               atol=1e-5)
    capsys.readouterr()
    assert cli_main(["export", str(cnnd), "--out", str(tmp_path / "o5.onnx"), "--opset", "5"]) == 2
    assert "opset 5 is not supported" in capsys.readouterr().err
