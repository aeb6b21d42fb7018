"""PyTorch export: a folder with model.py (state_dict names = the app's), weights.safetensors,
predict.py --check and a train.py for torchrun. Tests needing torch skip only when it is missing
(the project's venv has none; run them with a python that has torch, see docs/export.md)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
from export_helpers import ALL_LAYERS, CASES, export_cases, mnist_inputs
from safetensors.numpy import load_file

from engine import modelfile
from engine.model import Model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """name -> (cnnd path, export path)."""
    return export_cases(tmp_path_factory.mktemp("pytorch"), "pytorch", "_pt")


#: skip (only) when torch is missing; decided before any fixture is built
needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")


def import_model_py(folder: Path):
    spec = importlib.util.spec_from_file_location(f"exported_model_{uuid.uuid4().hex}", folder / "model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# --- without torch -------------------------------------------------------------------------------
def test_folder_contents_and_weights(exported):
    cnnd, folder = exported["all_layers"]
    mf = modelfile.load(cnnd)
    names = {p.name for p in folder.iterdir()}
    for f in ("model.py", "weights.safetensors", "classes.json", "train.py", "predict.py", "preprocess.py",
              "README.md", "expected.json", "samples", "architecture.json", "preprocessing.json"):
        assert f in names, f
    arrays = load_file(folder / "weights.safetensors")  # metadata and dtypes: test_export_misc
    assert set(arrays) == set(mf.state)
    for k, v in mf.state.items():
        np.testing.assert_array_equal(arrays[k], v)
    assert json.loads((folder / "classes.json").read_text()) == mf.classes
    for script in ("model.py", "train.py", "predict.py", "preprocess.py"):
        compile((folder / script).read_text(), script, "exec")  # valid Python
    text = (folder / "model.py").read_text()
    for i in range(len(ALL_LAYERS["layers"])):
        assert f"  # {i}: " in text  # one module per layer, by index
    assert "PadConv2d(1, 4, (4, 4), stride=(1, 1), bias=True, pads=(1, 2, 1, 2))" in text
    assert "MaxPool2dSame((3, 3), (2, 2), pads=(0, 1, 0, 1))" in text
    assert "BatchNorm2d(4, eps=0.001, momentum=0.1)" in text
    readme = (folder / "README.md").read_text()
    assert "torchrun --nproc_per_node" in readme and "nccl" in readme and "gloo" in readme


# --- with torch ----------------------------------------------------------------------------------
@needs_torch
@pytest.mark.parametrize("name", list(CASES))
def test_module_matches_engine_on_real_mnist(exported, name):
    import torch

    cnnd, folder = exported[name]
    mf = modelfile.load(cnnd)
    mod = import_model_py(folder)
    assert set(mod.Net().state_dict()) == set(mf.state)  # exactly the app's names, nothing more
    net = mod.load_model(folder / "weights.safetensors")
    if name == "all_layers":  # torch's own safetensors loader reads the file into the same module too
        from safetensors.torch import load_file as torch_load_file

        ref = mod.Net()
        ref.load_state_dict(torch_load_file(folder / "weights.safetensors"), strict=True)
        for k, v in ref.state_dict().items():
            assert torch.equal(v, net.state_dict()[k]), k
    x, _ = mnist_inputs(mf.preprocessing, n=300, seed=7, split="test")
    want = mf.build_model().predict_proba(x)
    with torch.no_grad():
        got = net.predict_proba(torch.from_numpy(x)).numpy()
    assert got.shape == want.shape
    assert np.max(np.abs(got - want)) < 1e-4
    assert np.ptp(want.max(axis=1)) > 0.05 or len(set(want.argmax(1))) > 1


@needs_torch
def test_predict_check_passes(exported):
    _, folder = exported["binary_rgb"]
    r = subprocess.run([sys.executable, str(folder / "predict.py"), "--check"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "check passed" in r.stdout


@needs_torch
@pytest.mark.parametrize("name", ["all_layers", "residual"])
def test_train_py_one_epoch_under_torchrun_2_processes(exported, mnist_folder, name):
    """The script is the same for every design; a residual one (BatchNorm inside blocks, a
    projection shortcut) trains under DDP and comes back into the app with the block's weight names."""
    import torch

    cnnd, folder = exported[name]
    out = folder / "trained.safetensors"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(folder / "train.py"), "--data", str(mnist_folder / "train"), "--val", str(mnist_folder / "test"),
           "--epochs", "1", "--limit", "320", "--batch-size", "32", "--workers", "0", "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=folder)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "2 processes (gloo)" in r.stdout
    assert "epoch 1/1: loss" in r.stdout and "val accuracy" in r.stdout
    trained = load_file(out)
    start = load_file(folder / "weights.safetensors")
    assert set(trained) == set(start)
    assert any(not np.array_equal(trained[k], start[k]) for k in start)  # it trained
    # the weights trained by PyTorch go straight back into the app and predict identically there
    mf = modelfile.load(cnnd)
    app = Model(mf.spec)
    app.load_state_dict(trained)
    mod = import_model_py(folder)
    net = mod.load_model(out)
    x, _ = mnist_inputs(mf.preprocessing, n=64, seed=3, split="test")
    with torch.no_grad():
        got = net.predict_proba(torch.from_numpy(x)).numpy()
    assert np.max(np.abs(got - app.predict_proba(x))) < 1e-4


@needs_torch
@pytest.mark.parametrize("name", ["all_layers", "residual"])
def test_weights_trained_by_train_py_import_with_like(capsys, exported, mnist_folder, tmp_path, name):
    """The way back for a model trained at scale: the exported train.py's own weights file (written by
    PyTorch, BatchNorm counters included) goes through `cnn-designer import --like` into a .cnnd
    that predicts as the PyTorch module does."""
    import torch
    from test_cli import cli

    cnnd, folder = exported[name]
    out = tmp_path / "trained.safetensors"
    cmd = [sys.executable, str(folder / "train.py"), "--data", str(mnist_folder / "train"), "--epochs", "1",
           "--limit", "96", "--batch-size", "32", "--workers", "0", "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rc, _, err = cli(capsys, "import", out, "--like", cnnd, "--out", tmp_path / "back.cnnd")
    assert rc == 0, err
    back = modelfile.load(tmp_path / "back.cnnd")
    like = modelfile.load(cnnd)
    assert back.spec == like.spec and back.classes == like.classes
    assert any(not np.array_equal(back.state[k], like.state[k]) for k in like.state)  # the trained weights
    net = import_model_py(folder).load_model(out)
    x, _ = mnist_inputs(back.preprocessing, n=64, seed=5, split="test")
    with torch.no_grad():
        want = net.predict_proba(torch.from_numpy(x)).numpy()
    got = back.model().predict_proba(x)
    assert np.max(np.abs(got - want)) < 1e-4
