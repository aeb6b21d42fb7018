"""The Train tab's Qt-free session: what belongs to which model, what is stale, what is unsaved."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from designer.document import Document, load_template
from designer.session import CurrentModel, Evaluation, TrainSession
from engine.data import Preprocessing
from engine.model import Model
from engine.trained import TrainedModel

ROOT = Path(__file__).resolve().parent.parent


def model_for(spec, saved=False, path=None) -> CurrentModel:
    """A CurrentModel whose engine model counts its close() calls."""
    model = Model(spec.copy())
    model.closed = 0
    close = model.close

    def counting_close() -> None:
        model.closed += 1
        close()

    model.close = counting_close
    tm = TrainedModel.from_model(model, [str(i) for i in range(10)], Preprocessing.for_input(spec.input_shape),
                                 history=[{"epoch": 1}])
    tm.path = path
    return CurrentModel(tm, saved=saved)


def recorder(signal):
    got = []
    signal.connect(lambda *a: got.append(a))
    return got


def test_session_imports_no_qt():
    code = "import sys, designer.session; print(any(m.startswith('PySide6') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_new_model_drops_the_old_ones_results_and_closes_it():
    s = TrainSession(Document(load_template("lenet5")))
    first = model_for(s.document.spec)
    s.set_model(first)
    s.set_evaluation(Evaluation(["a", "b"], np.array([0, 1]), np.eye(2), None, 0.1, "validation", model=first))
    models, evals = recorder(s.model_changed), recorder(s.evaluation_changed)
    second = model_for(s.document.spec)
    s.set_model(second)
    assert s.evaluation is None and evals == [(None,)] and models == [(second,)]
    assert first.model.closed == 1 and second.model.closed == 0


def test_which_design_the_model_belongs_to():
    s = TrainSession(Document(load_template("lenet5")))
    s.set_model(model_for(s.document.spec))
    assert s.matches_design() and s.can_continue()
    s.document.set_spec(load_template("mlp"))  # another template: the model is LeNet's, not this design's
    assert not s.matches_design() and not s.can_continue()
    assert "LeNet" in s.current.describe() and "not saved" in s.current.describe()
    s.document.set_spec(load_template("lenet5"))
    s.data = SimpleNamespace(classes=["x", "y"])  # same design, other classes: no continuing
    assert s.matches_design() and not s.can_continue()


def test_unsaved_until_saved(tmp_path):
    s = TrainSession(Document(load_template("lenet5")))
    assert not s.unsaved_model
    s.set_model(model_for(s.document.spec))
    assert s.unsaved_model
    s.mark_saved(tmp_path / "m.cnnd")
    assert not s.unsaved_model and s.current.describe().startswith("m.cnnd (")


def test_an_error_about_old_data_goes_with_it():
    s = TrainSession(Document(load_template("lenet5")))
    s.say("The folder's classes differ from the model's", error=True)
    s.set_data(SimpleNamespace(classes=["0"]))
    assert s.message == ("", False)
    s.say("Opened m.cnnd")  # information stays
    s.set_data(None)
    assert s.message == ("Opened m.cnnd", False)


def test_run_states():
    s = TrainSession(Document())
    states = recorder(s.run_changed)
    for state in ("running", "paused", "running", "stopping", "idle"):
        s.set_run_state(state)
    assert [a[0] for a in states] == ["running", "paused", "running", "stopping", "idle"] and not s.training
    with pytest.raises(ValueError):
        s.set_run_state("exploded")


def test_validation_images_are_the_ones_the_trainer_validates_on():
    """The sample picker and Predict's examples show the run's validation images: the validation
    folder, else the trainer's own seeded stratified split, else (no split) the training images."""
    from engine.data import ImageSet, split_stratified
    from engine.training import TrainConfig, Trainer

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 8)
    train = ImageSet(rng.integers(0, 256, (80, 1, 28, 28), dtype=np.uint8), labels,
                     [str(i) for i in range(10)], [f"{i}.png" for i in range(80)])
    s = TrainSession(Document(load_template("lenet5")))
    assert s.validation_images(0.25, 3) is None  # no data yet
    s.set_data(SimpleNamespace(train=train, val=None, classes=train.classes, folder=Path("x")))
    images, got = s.validation_images(0.25, 3)
    trainer = Trainer(load_template("lenet5"), train, None, TrainConfig(val_split=0.25, seed=3, epochs=1))
    assert np.array_equal(images, trainer.val_data.images) and np.array_equal(got, trainer.val_data.labels)
    assert np.array_equal(images, split_stratified(train, 0.25, 3)[1].images)
    assert s.validation_images(0.0, 3)[0] is train.images  # no split: the training images
    val = train.subset(np.arange(10))
    s.set_data(SimpleNamespace(train=train, val=val, classes=train.classes, folder=Path("x")))
    assert s.validation_images(0.25, 3)[0] is val.images  # a validation folder wins


def test_may_start_and_why_not():
    s = TrainSession(Document(load_template("lenet5")))
    fits = (True, "")
    assert s.can_train(fits) == (True, "")
    assert s.can_train(fits, training=True) == (False, "training is running")
    assert s.can_train(fits, evaluating=True) == (False, "an evaluation is running")
    assert s.can_train((False, "choose an image folder first")) == (False, "Choose an image folder first")
    assert s.can_train((False, "the folder is still loading")) == (True, "")  # Start waits for it
    s.document.set_input((1, 4, 4))  # LeNet-5's 5x5 convolutions no longer fit
    ok, why = s.can_train(fits)
    assert not ok and why.startswith("The design is invalid: ")


def test_what_a_run_trains_with_and_says():
    s = TrainSession(Document(load_template("lenet5")))
    spec = s.document.spec
    s.document.set_training({**spec.training, "epochs": 7, "seed": 5})
    assert s.run_settings({"epochs": 3}) == {**s.document.spec.training, "epochs": 3}  # the form wins
    assert s.run_settings({})["seed"] == 5
    assert s.run_preprocessing(spec, None) == Preprocessing.for_input(spec.input_shape)
    start = model_for(spec).trained
    assert s.run_preprocessing(spec, start) is start.preprocessing
    plan = SimpleNamespace(describe=lambda: "kept weights of layer(s) 0, 3")
    assert s.describe_start(plan, [0]) == "Continuing: kept the weights of layer(s) 0, 3; frozen: [0]"
    assert s.describe_start(plan, []) == "Continuing: kept the weights of layer(s) 0, 3"
    assert s.describe_start(None, [0]) == ""


def test_which_model_the_tab_says_it_shows():
    s = TrainSession(Document(load_template("lenet5")))
    assert s.model_text().startswith("No trained model yet")
    s.set_model(model_for(s.document.spec))
    assert "trained here" in s.model_text() and "not the design" not in s.model_text()
    run_spec = s.document.spec.copy()
    assert "as it was at Start" in s.model_text(run_spec) and "edited since" not in s.model_text(run_spec)
    s.document.remove_layers(len(s.document.layers) - 1)
    assert "edited since" in s.model_text(run_spec) and "next run" in s.model_text(run_spec)
    assert "not the design on the Design tab" in s.model_text()


def test_why_start_is_disabled_never_covers_another_message():
    s = TrainSession(Document(load_template("lenet5")))
    s.show_why_not(False, "Choose an image folder first")
    assert s.message == ("Choose an image folder first", False)
    s.show_why_not(False, "The design is invalid: x")  # our own reason is replaced
    assert s.message[0] == "The design is invalid: x"
    s.show_why_not(True, "")  # and cleared once Start may be pressed
    assert s.message == ("", False)
    s.say("Model: lenet.cnnd opened")
    s.show_why_not(False, "Choose an image folder first")  # an opened model's summary stays
    s.show_why_not(True, "")
    assert s.message[0] == "Model: lenet.cnnd opened"
