"""engine.trained.TrainedModel: the one trained-model type, from the trainer through the model file,
export and the CLI, and the single places that decide "binary" and "do these weights fit"."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

from engine import modelfile
from engine.cli import main as cli_main
from engine.data import Preprocessing, load_folder, load_image
from engine.errors import EngineError
from engine.export import ExportError, export_model
from engine.model import Model
from engine.modelfile import ModelFileError
from engine.shapes import Inference, infer
from engine.spec import Spec
from engine.trained import TrainedModel
from engine.training import TrainConfig, Trainer, class_fit_problem

SMALL = {
    "format": "cnn-designer/1", "name": "round trip", "input": {"channels": 1, "height": 28, "width": 28},
    "layers": [
        {"type": "Conv2D", "filters": 4, "kernel_size": 5, "stride": 2},
        {"type": "BatchNorm2D"},
        {"type": "ReLU"},
        {"type": "MaxPool2D", "pool_size": 2},
        {"type": "Flatten"},
        {"type": "Dropout", "rate": 0.2},
        {"type": "Dense", "units": 3},
        {"type": "Softmax"},
    ],
}
BINARY = {**SMALL, "layers": [*SMALL["layers"][:6], {"type": "Dense", "units": 1}, {"type": "Sigmoid"}]}


@pytest.fixture(scope="module")
def trained(mnist_folder, tmp_path_factory):
    """A TrainedModel straight from the trainer: 3 digit classes, 2 epochs, mean/std preprocessing."""
    import os

    os.environ["CNN_DESIGNER_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    root = tmp_path_factory.mktemp("three")
    for c in ("0", "1", "7"):
        (root / c).symlink_to(mnist_folder / "train" / c)
    prep = Preprocessing("grayscale", 28, 28, mean=[0.1307], std=[0.3081])
    data = load_folder(root, prep=prep)
    trainer = Trainer(Spec.from_dict(SMALL), data, config=TrainConfig(epochs=2, batch_size=32, lr=3e-3), prep=prep)
    finished = trainer.run()
    assert finished.status == "finished"
    return trainer, trainer.trained(), sorted((mnist_folder / "test" / "7").iterdir())[:3] + \
        sorted((mnist_folder / "test" / "0").iterdir())[:2]


def test_the_trainer_produces_one_complete_trained_model(trained):
    trainer, tm, _ = trained
    assert tm.problem() is None
    assert tm.classes == ["0", "1", "7"] and tm.preprocessing.mean == [0.1307]
    assert tm.history == trainer.history and len(tm.history) == 2
    assert tm.training["epochs"] == 2 and tm.training["status"] == "finished"
    assert tm.model() is trainer.model  # the live model, not a rebuilt copy
    live = {**trainer.model.parameters(), **trainer.model.buffers()}
    assert tm.state.keys() == live.keys()
    assert not any(np.shares_memory(tm.state[k], live[k]) for k in live)  # a snapshot, not views
    assert tm.history[-1]["val_accuracy"] > 0.9  # it learned: the probabilities below mean something


def test_trainer_to_file_to_export_to_cli_gives_the_same_probabilities(trained, tmp_path, capsys):
    _, tm, images = trained
    want = np.concatenate([tm.predict_files([p]) for p in images])  # one image per batch, as the CLI

    path = tmp_path / "three.cnnd"
    modelfile.save(path, tm)
    assert tm.path == path
    loaded = modelfile.load(path)
    assert (loaded.spec, loaded.classes, loaded.preprocessing, loaded.history) == \
        (tm.spec, tm.classes, tm.preprocessing, tm.history)
    for k, v in tm.state.items():
        np.testing.assert_array_equal(loaded.state[k], v)
    np.testing.assert_array_equal(np.concatenate([loaded.predict_files([p]) for p in images]), want)
    # the file is byte-stable: saving what was loaded writes the same bytes
    assert modelfile.to_bytes(loaded) == path.read_bytes()

    # export: from the trainer's object and from the file, the same ONNX numbers
    for source, name in ((tm, "mem"), (path, "file")):
        written = export_model(source, "onnx", tmp_path / f"{name}.onnx")
        sess = ort.InferenceSession(str(written.written[0]), providers=["CPUExecutionProvider"])
        x = np.concatenate([load_image(p, tm.preprocessing) for p in images])
        np.testing.assert_allclose(sess.run(None, {"input": x})[0], want, atol=1e-5)
        expected = json.loads((tmp_path / f"{name}_predict" / "expected.json").read_text())
        assert expected["classes"] == tm.classes and expected["preprocessing"] == tm.preprocessing.to_dict()

    # the CLI reads the same file and prints the same probabilities
    assert cli_main(["predict", str(path), *map(str, images), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    got = np.array([[r["probabilities"][c] for c in tm.classes] for r in res])
    np.testing.assert_array_equal(got, want.astype(np.float64))


def test_continuing_training_carries_everything_on(trained, mnist_folder):
    trainer, tm, _ = trained
    more = Trainer.continuing(tm, trainer.train_data, trainer.val_data, TrainConfig(epochs=1, batch_size=32))
    np.testing.assert_array_equal(more.model.state_dict()["layers.6.weight"], tm.state["layers.6.weight"])
    assert more.run().status == "finished"
    tm2 = more.trained()
    assert [h["epoch"] for h in tm2.history] == [1, 2, 3]
    assert tm2.classes == tm.classes and tm2.preprocessing == tm.preprocessing


def test_one_binary_rule_everywhere(monkeypatch):
    spec = Spec.from_dict(BINARY)
    tm = TrainedModel(spec, Model(spec).state_dict(), ["no", "yes"], Preprocessing.for_input(spec.input_shape),
                      history=[{}])
    assert infer(spec).binary and infer(spec).num_classes == 2
    assert tm.binary and tm.problem() is None and Model(spec).loss_kind == "binary_ce"
    assert class_fit_problem(spec, 2) is None
    p = tm.predict_proba(np.zeros((2, 1, 28, 28), np.float32))
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-6)
    # change the one rule and every user of it follows: there is no second copy
    monkeypatch.setattr(Inference, "binary", property(lambda self: False))
    assert Model(spec).loss_kind == "softmax_ce" and Model(spec).num_classes == 1
    assert "2 class names but the architecture outputs 1" in tm.problem()
    assert class_fit_problem(spec, 2) is not None
    with pytest.raises(ModelFileError, match="outputs 1 classes"):
        modelfile.to_bytes(tm)
    with pytest.raises(ExportError, match="outputs 1 classes"):
        export_model(tm, "json", "unused.json")


def test_one_weight_check_everywhere(tmp_path):
    spec = Spec.from_dict(SMALL)
    state = Model(spec).state_dict()
    del state["layers.1.running_var"]
    tm = TrainedModel(spec, state, ["a", "b", "c"], Preprocessing.for_input(spec.input_shape), history=[{}])
    why = "the weights do not fit the architecture; missing: layers.1.running_var (4,)"
    assert tm.problem() == why
    with pytest.raises(EngineError) as model_error:
        Model(spec).load_state_dict(state)
    with pytest.raises(ModelFileError) as file_error:
        modelfile.save(tmp_path / "m.cnnd", tm)
    with pytest.raises(ExportError) as export_error:
        export_model(tm, "npz", tmp_path / "w.npz")
    for e in (model_error, file_error, export_error):
        assert why in str(e.value)
    assert not (tmp_path / "m.cnnd").exists() and not (tmp_path / "w.npz").exists()


def test_preprocessing_must_fit_the_input():
    spec = Spec.from_dict(SMALL)
    tm = TrainedModel(spec, Model(spec).state_dict(), ["a", "b", "c"], Preprocessing("rgb", 28, 28))
    assert tm.problem() == "preprocessing makes 3x28x28 images but the architecture's input is 1x28x28"
