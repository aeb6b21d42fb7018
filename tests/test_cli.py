"""`cnn-designer train | evaluate | predict` on real MNIST folders, end to end, plus every user error."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from engine import modelfile
from engine.cli import main

LENET = {
    "format": "cnn-designer/1", "name": "LeNet-5", "input": {"channels": 1, "height": 28, "width": 28},
    "layers": [
        {"type": "Conv2D", "filters": 6, "kernel_size": 5, "padding": "same"}, {"type": "ReLU"},
        {"type": "MaxPool2D", "pool_size": 2},
        {"type": "Conv2D", "filters": 16, "kernel_size": 5}, {"type": "ReLU"}, {"type": "MaxPool2D", "pool_size": 2},
        {"type": "Flatten"}, {"type": "Dense", "units": 120}, {"type": "ReLU"}, {"type": "Dense", "units": 84},
        {"type": "ReLU"}, {"type": "Dense", "units": 10}, {"type": "Softmax"},
    ],
}


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CNN_DESIGNER_CACHE", str(tmp_path / "cache"))


def write_arch(path: Path, arch: dict) -> Path:
    path.write_text(json.dumps(arch))
    return path


def cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("cnn-designer:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def trained(mnist_folder, tmp_path_factory):
    """LeNet-5 trained by the CLI on 1,000 real digits, validated on 300 others."""
    tmp = tmp_path_factory.mktemp("cli")
    arch = write_arch(tmp / "lenet.json", LENET)
    out, log = tmp / "digits.cnnd", tmp / "run.jsonl"
    os.environ["CNN_DESIGNER_CACHE"] = str(tmp / "cache")
    proc_out, proc_err = io.StringIO(), io.StringIO()
    old = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = proc_out, proc_err
    try:
        rc = main(["train", "--arch", str(arch), "--data", str(mnist_folder / "train"), "--val",
                   str(mnist_folder / "test"), "--epochs", "3", "--batch-size", "32", "--seed", "1", "--out", str(out),
                   "--log", str(log)])
    finally:
        sys.stdout, sys.stderr = old
    return rc, out, log, proc_err.getvalue()


def test_train_saves_model_and_log(trained, mnist_folder):
    rc, out, log, err = trained
    assert rc == 0, err
    assert "training on 1000 images in 10 classes, validating on 300" in err
    assert "epoch 3/3" in err and "saved" in err
    lines = [json.loads(ln) for ln in log.read_text().splitlines()]
    assert [ln["epoch"] for ln in lines] == [1, 2, 3]
    for ln in lines:
        assert {"epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "seconds",
                "images_per_second"} <= set(ln)
    assert lines[-1]["val_accuracy"] > 0.75  # real digits, 1,000 training images
    mf = modelfile.load(out)
    assert mf.classes == [str(d) for d in range(10)] and mf.history == lines
    assert mf.training["batch_size"] == 32 and mf.training["seed"] == 1
    assert mf.training["data"] == os.path.abspath(mnist_folder / "train")  # exports take proof samples there


def test_evaluate_matches_training_validation(trained, mnist_folder, capsys):
    _, out, log, _ = trained
    rc, stdout, _ = cli(capsys, "evaluate", out, "--data", mnist_folder / "test", "--json")
    assert rc == 0
    doc = json.loads(stdout)
    last = json.loads(log.read_text().splitlines()[-1])
    assert doc["count"] == 300
    assert doc["accuracy"] == pytest.approx(last["val_accuracy"])
    assert doc["loss"] == pytest.approx(last["val_loss"], rel=1e-5)
    conf = np.array(doc["confusion_matrix"])
    assert conf.shape == (10, 10) and conf.sum() == 300 and np.trace(conf) / 300 == pytest.approx(doc["accuracy"])
    assert set(doc["per_class_accuracy"]) == {str(d) for d in range(10)}
    rc, stdout, _ = cli(capsys, "evaluate", out, "--data", mnist_folder / "test")
    assert rc == 0 and stdout.startswith(f"accuracy {100 * doc['accuracy']:.2f}%")
    assert "confusion matrix" in stdout and "per-class accuracy" in stdout


def test_predict_round_trip_identical(trained, mnist_folder, capsys):
    _, out, _, _ = trained
    test = mnist_folder / "test"
    imgs = sorted((test / "7").glob("*.png"))[:3] + sorted((test / "2").glob("*.png"))[:2]
    rc, stdout, _ = cli(capsys, "predict", out, *imgs, "--json")
    assert rc == 0
    res = json.loads(stdout)
    assert [r["path"] for r in res] == [str(p) for p in imgs]
    for r in res:
        assert list(r["probabilities"]) == [str(d) for d in range(10)]
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert r["class"] == max(r["probabilities"], key=r["probabilities"].get)
    assert sum(r["class"] == p.parent.name for r, p in zip(res, imgs, strict=True)) >= 4
    # the same numbers from the library (load, preprocess, predict): the file round-trips exactly
    loaded = modelfile.load(out)
    probs = np.concatenate([loaded.predict_files([p]) for p in imgs])  # one image per batch, as the CLI
    got = np.array([[r["probabilities"][c] for c in r["probabilities"]] for r in res])
    np.testing.assert_array_equal(got, probs.astype(np.float64))
    # saving the loaded model again gives identical predictions
    again = out.parent / "again.cnnd"
    mf = modelfile.load(out)
    modelfile.save(again, mf)
    np.testing.assert_array_equal(modelfile.load(again).predict_files(imgs), loaded.predict_files(imgs))
    rc, stdout, _ = cli(capsys, "predict", out, imgs[0], "--top", "3")
    lines = stdout.splitlines()
    assert rc == 0 and lines[0].startswith(f"{imgs[0]}: ") and len(lines) == 4


def test_predict_bad_images_reported_others_still_predicted(trained, mnist_folder, tmp_path, capsys):
    _, out, _, _ = trained
    bad = tmp_path / "fake.png"
    bad.write_text("not an image")
    good = next((mnist_folder / "test" / "3").glob("*.png"))
    rc, stdout, err = cli(capsys, "predict", out, bad, good, tmp_path / "missing.png", "--json")
    assert rc == 2
    assert [r["path"] for r in json.loads(stdout)] == [str(good)]
    errs = err.strip().splitlines()
    assert len(errs) == 2 and "fake.png: not a readable image" in errs[0] and "missing.png: file not found" in errs[1]


def test_bad_files_reported_and_training_goes_on(mnist_folder, tmp_path, capsys):
    data = tmp_path / "data"
    for d in ("3", "8"):
        shutil.copytree(mnist_folder / "test" / d, data / d)
    (data / "3" / "empty.png").write_bytes(b"")
    (data / "8" / "fake.jpg").write_text("<html>not a picture</html>")
    arch = {**LENET, "layers": [dict(x) for x in LENET["layers"]]}
    arch["layers"][-2]["units"] = 2
    rc, _, err = cli(capsys, "train", "--arch", write_arch(tmp_path / "a.json", arch), "--data", data, "--epochs", "1",
                     "--out", tmp_path / "m.cnnd")
    assert rc == 0, err
    assert "60 images in 2 classes" in err and "skipped 2 file(s):" in err
    assert "empty.png: empty file (0 bytes)" in err and "fake.jpg: not a readable image" in err
    assert modelfile.load(tmp_path / "m.cnnd").classes == ["3", "8"]


def test_binary_sigmoid_model(mnist_folder, tmp_path, capsys):
    data = tmp_path / "zeros_ones"
    for d in ("0", "1"):
        shutil.copytree(mnist_folder / "train" / d, data / d)
    arch = {**LENET, "layers": LENET["layers"][:-2] + [{"type": "Dense", "units": 1}, {"type": "Sigmoid"}]}
    out = tmp_path / "bin.cnnd"
    rc, _, err = cli(capsys, "train", "--arch", write_arch(tmp_path / "a.json", arch), "--data", data, "--epochs", "4",
                     "--batch-size", "16", "--lr", "0.003", "--out", out)
    assert rc == 0, err
    one = next((mnist_folder / "test" / "1").glob("*.png"))
    rc, stdout, _ = cli(capsys, "predict", out, one, "--json")
    (r,) = json.loads(stdout)
    assert r["class"] == "1" and r["probabilities"]["1"] > 0.5
    assert r["probabilities"]["0"] == pytest.approx(1 - r["probabilities"]["1"], abs=1e-6)


def test_progress_bar_on_a_terminal(mnist_folder, tmp_path, capsys, monkeypatch):
    class TTY(io.StringIO):
        def isatty(self):
            return True

    fake = TTY()
    monkeypatch.setattr(sys, "stderr", fake)
    arch = write_arch(tmp_path / "a.json", LENET)
    rc = main(["train", "--arch", str(arch), "--data", str(mnist_folder / "test"), "--epochs", "1", "--out",
               str(tmp_path / "m.cnnd")])
    text = fake.getvalue()
    assert rc == 0
    assert "\r" in text and "decoding [" in text
    bar = [seg for seg in text.split("\r") if seg.startswith("epoch 1/1 [")]
    assert bar and "img/s" in bar[-1] and "ETA" in bar[-1] and "acc" in bar[-1] and "loss" in bar[-1]


def test_nan_loss_saves_last_good_weights_and_exits_2(mnist_folder, tmp_path, capsys):
    arch = write_arch(tmp_path / "a.json", LENET)
    out = tmp_path / "m.cnnd"
    rc, _, err = cli(capsys, "train", "--arch", arch, "--data", mnist_folder / "test", "--epochs", "2", "--optimizer",
                     "sgd", "--lr", "1e30", "--out", out)
    assert rc == 2
    line = one_line_error(err)
    assert "loss became" in line and "lower the learning rate" in line and str(out) in line
    mf = modelfile.load(out)
    assert all(np.all(np.isfinite(v)) for v in mf.state.values())


@pytest.mark.parametrize("case", ["missing_data", "no_classes", "one_class", "bad_arch", "invalid_arch",
                                  "class_mismatch", "out_folder", "both_vals", "bad_lr"])
def test_train_errors_are_one_line_exit_2(case, mnist_folder, tmp_path, capsys):
    arch = write_arch(tmp_path / "a.json", LENET)
    data = mnist_folder / "test"
    args = {"--arch": arch, "--data": data, "--epochs": 1, "--out": tmp_path / "m.cnnd"}
    extra: list = []
    expect = ""
    if case == "missing_data":
        args["--data"], expect = tmp_path / "nowhere", "data folder not found"
    elif case == "no_classes":
        (tmp_path / "flat").mkdir()
        shutil.copy(next((data / "1").glob("*.png")), tmp_path / "flat" / "x.png")
        args["--data"], expect = tmp_path / "flat", "has no class subfolders"
    elif case == "one_class":
        shutil.copytree(data / "1", tmp_path / "one" / "1")
        args["--data"], expect = tmp_path / "one", "only one class"
    elif case == "bad_arch":
        (tmp_path / "a.json").write_text("{oops")
        expect = "is not valid JSON"
    elif case == "invalid_arch":
        write_arch(arch, {**LENET, "layers": [{"type": "Dense", "units": 10}]})
        expect = "Dense needs a flat input"
    elif case == "class_mismatch":
        arch2 = {**LENET, "layers": [dict(x) for x in LENET["layers"]]}
        arch2["layers"][-2]["units"] = 5
        write_arch(arch, arch2)
        expect = "the last Dense has 5 units but the folder has 10 classes"
    elif case == "out_folder":
        args["--out"], expect = tmp_path / "no" / "m.cnnd", "does not exist"
    elif case == "both_vals":
        extra, expect = ["--val", data, "--val-split", "0.2"], "not allowed with argument"
    elif case == "bad_lr":
        args["--lr"], expect = "-3", "expected a positive number"
    argv = ["train"] + [str(v) for kv in args.items() for v in kv] + [str(e) for e in extra]
    if case in ("both_vals", "bad_lr"):  # argparse's own usage errors: exit 2 as well
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2 and expect in capsys.readouterr().err
        return
    rc, _, err = cli(capsys, *argv)
    assert rc == 2 and expect in one_line_error(err)
    assert not (tmp_path / "m.cnnd").exists()
    if case == "class_mismatch":
        assert "decoded" not in err  # found before any image was decoded


def test_evaluate_and_predict_errors(trained, mnist_folder, tmp_path, capsys):
    _, out, _, _ = trained
    rc, _, err = cli(capsys, "evaluate", tmp_path / "none.cnnd", "--data", mnist_folder / "test")
    assert rc == 2 and "model file not found" in one_line_error(err)
    other = tmp_path / "other"
    shutil.copytree(mnist_folder / "test" / "3", other / "three")
    shutil.copytree(mnist_folder / "test" / "4", other / "4")
    rc, _, err = cli(capsys, "evaluate", out, "--data", other)
    assert rc == 2 and "'three', which is not one of the model's classes" in one_line_error(err)
    broken = tmp_path / "broken.cnnd"
    broken.write_bytes(out.read_bytes()[:100])
    rc, _, err = cli(capsys, "predict", broken, next((mnist_folder / "test" / "3").glob("*.png")))
    assert rc == 2 and "broken.cnnd" in one_line_error(err)


def test_ctrl_c_stops_after_the_batch_and_saves(mnist_folder, tmp_path):
    arch = write_arch(tmp_path / "a.json", LENET)
    out, log = tmp_path / "m.cnnd", tmp_path / "run.jsonl"
    env = {**os.environ, "CNN_DESIGNER_CACHE": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "train", "--arch", str(arch), "--data", str(mnist_folder / "test"),
         "--epochs", "500", "--batch-size", "16", "--out", str(out), "--log", str(log)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=Path(__file__).resolve().parent.parent)
    try:
        # the log is written with the model at the end, so the first epoch line on stderr is the cue
        deadline = time.time() + 60
        seen: list[str] = []
        while time.time() < deadline:
            line = proc.stderr.readline()
            seen.append(line)
            if not line or line.startswith("epoch 1/"):
                break
        assert not log.exists()  # nothing written while training
        proc.send_signal(signal.SIGINT)
        stdout, rest = proc.communicate(timeout=60)
        stderr = "".join(seen) + rest
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert "stopping after this batch" in stderr and "stopped by request" in stderr and "Traceback" not in stderr
    mf = modelfile.load(out)
    assert 1 <= len(mf.history) < 500 and mf.training["status"] == "stopped"
    assert len(log.read_text().splitlines()) == len(mf.history)


def test_settings_from_the_design_and_flags(mnist_folder, tmp_path, capsys):
    arch = {**LENET, "training": {"epochs": 2, "batch_size": 50, "lr": 0.002, "gui_zoom": 3}}
    out = tmp_path / "m.cnnd"
    rc, _, err = cli(capsys, "train", "--arch", write_arch(tmp_path / "a.json", arch), "--data", mnist_folder / "test",
                     "--augment", "--hflip", "--schedule", "cosine", "--early-stopping", "3", "--keep-best",
                     "--val-split", "0.2", "--seed", "7", "--out", out)
    assert rc == 0, err
    mf = modelfile.load(out)
    t = mf.training
    assert (t["epochs"], t["batch_size"], t["lr"], t["seed"]) == (2, 50, 0.002, 7)  # design's settings, then flags
    assert t["augment"] and t["aug_hflip"] and t["schedule"] == "cosine" and t["early_stopping"] == 3
    assert t["keep_best"] and t["val_split"] == 0.2 and t["val_images"] == 60 and t["train_images"] == 240
    assert [h["epoch"] for h in mf.history] == [1, 2] and mf.history[1]["lr"] < mf.history[0]["lr"]


def test_predict_top_lists_the_most_likely_classes_first(trained, mnist_folder, capsys):
    _, out, _, _ = trained
    image = sorted((mnist_folder / "test" / "3").glob("*.png"))[0]
    rc, stdout, _ = cli(capsys, "predict", out, image, "--json")
    probs = json.loads(stdout)[0]["probabilities"]
    expected = sorted(probs, key=probs.get, reverse=True)[:4]
    rc, stdout, _ = cli(capsys, "predict", out, image, "--top", "4")
    listed = [ln.split() for ln in stdout.splitlines()[1:]]
    assert rc == 0 and [row[0] for row in listed] == expected
    assert [float(row[1].rstrip("%")) for row in listed] == pytest.approx([100 * probs[c] for c in expected], abs=0.01)


def test_limit_is_honoured_by_train_and_evaluate(trained, mnist_folder, tmp_path, capsys):
    _, model, _, _ = trained
    arch = write_arch(tmp_path / "lenet.json", LENET)
    rc, _, err = cli(capsys, "train", "--arch", arch, "--data", mnist_folder / "train", "--limit", "200",
                     "--val-split", "0.1", "--epochs", "1", "--out", tmp_path / "m.cnnd")
    assert rc == 0 and "training on 180 images in 10 classes, validating on 20" in err, err
    rc, stdout, _ = cli(capsys, "evaluate", model, "--data", mnist_folder / "test", "--limit", "50", "--json")
    doc = json.loads(stdout)
    assert rc == 0 and doc["count"] == 50 and np.array(doc["confusion_matrix"]).sum() == 50


def test_a_train_val_root_is_split_not_two_classes(mnist_folder, tmp_path, capsys):
    """mnist_folder holds train/ and test/: the CLI trains on one and validates on the other, as the
    Train tab does with the same folder (test_training_gui.test_train_val_root_as_the_cli_reads_it)."""
    arch = write_arch(tmp_path / "lenet.json", LENET)
    out = tmp_path / "m.cnnd"
    rc, _, err = cli(capsys, "train", "--arch", arch, "--data", mnist_folder, "--epochs", "1", "--out", out)
    assert rc == 0, err
    assert "training images from train/, validation images from test/" in err
    assert "training on 1000 images in 10 classes, validating on 300" in err
    assert modelfile.load(out).classes == [str(d) for d in range(10)]
    rc, stdout, err = cli(capsys, "evaluate", out, "--data", mnist_folder, "--json")
    assert rc == 0 and json.loads(stdout)["count"] == 300 and "evaluating on test/" in err
    rc, _, err = cli(capsys, "train", "--arch", arch, "--data", mnist_folder, "--epochs", "1", "--val-split", "0.1",
                     "--limit", "200", "--out", tmp_path / "split.cnnd")
    assert rc == 0 and "test/ not used: --val-split given" in err and "validating on 20" in err, err
