"""JSON/NPZ exports, safetensors, the exported preprocessing vs the app's, clear refusals,
atomic writes, sample selection and the export dialog."""

from __future__ import annotations

import importlib.util
import json
import uuid
from pathlib import Path

import numpy as np
import pytest
from export_helpers import ALL_LAYERS, SCORES, make_cnnd

from engine import modelfile
from engine.cli import main as cli_main
from engine.data import Preprocessing, load_image
from engine.export import ExportError, export_model
from engine.spec import Spec
from engine.trained import TrainedModel


@pytest.fixture(scope="module")
def cnnd(tmp_path_factory):
    return make_cnnd(tmp_path_factory.mktemp("misc") / "scores.cnnd", SCORES)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# --- json / npz / safetensors ------------------------------------------------------------------------
def test_json_export_is_the_architecture(cnnd, tmp_path):
    out = tmp_path / "arch.json"
    res = export_model(cnnd, "json", out)
    assert res.written == [out]
    assert Spec.load(out) == modelfile.load(cnnd).spec


def test_npz_export_has_the_app_names(cnnd, tmp_path):
    out = tmp_path / "w.npz"
    assert cli_main(["export", str(cnnd), "--out", str(out)]) == 0
    state = modelfile.load(cnnd).state
    with np.load(out, allow_pickle=False) as z:
        assert sorted(z.files) == sorted(state)
        for k in state:
            np.testing.assert_array_equal(z[k], state[k])
    assert leftovers(tmp_path) == []


# --- the exported preprocessing is the app's ------------------------------------------------------
def odd_images(d: Path) -> list[Path]:
    """Files that exercise every branch of the app's decoding."""
    from PIL import Image, ImageFilter

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (37, 45, 3), dtype=np.uint8)
    paths = []

    def save(name, im, **kw):
        p = d / name
        im.save(p, **kw)
        paths.append(p)

    save("rgb.png", Image.fromarray(rgb))
    rgba = np.dstack([rgb, rng.integers(0, 256, (37, 45), dtype=np.uint8)])
    save("rgba.png", Image.fromarray(rgba, "RGBA"))
    save("la.png", Image.fromarray(rgba[..., 1:3].copy(), "LA"))
    pal = Image.fromarray(rgb).quantize(16)
    pal.info["transparency"] = 3
    save("palette.png", pal, transparency=3)
    save("gray16.png", Image.fromarray((rng.integers(0, 65536, (30, 31))).astype(np.uint16)))
    save("cmyk.jpg", Image.fromarray(rgb).convert("CMYK"), quality=90)
    big = Image.fromarray(rng.integers(0, 256, (400, 300, 3), dtype=np.uint8)).filter(ImageFilter.GaussianBlur(3))
    save("big.jpg", big, quality=85)  # JPEG draft mode
    save("big.png", big)  # a large downscale (Pillow's reducing_gap)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees
    save("exif.jpg", Image.fromarray(rgb), exif=exif.tobytes())
    save("gray.bmp", Image.fromarray(rgb[..., 0].copy()))
    save("small.gif", Image.fromarray(rgb).convert("P"))
    return paths


@pytest.mark.parametrize("pre", [
    {"color": "grayscale", "height": 28, "width": 28, "scale": 1 / 255, "mean": [0.1307], "std": [0.3081]},
    {"color": "rgb", "height": 24, "width": 32, "scale": 1 / 255, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.3, 0.4]},
])
def test_exported_preprocess_equals_the_app_bit_for_bit(tmp_path, pre):
    images = odd_images(tmp_path)
    spec = Spec.from_dict({**SCORES, "input": {"channels": 1 if pre["color"] == "grayscale" else 3,
                                               "height": pre["height"], "width": pre["width"]}})
    src = TrainedModel(spec, {}, [str(i) for i in range(10)], Preprocessing.from_dict(pre))
    from engine.export.scripts import fill

    (tmp_path / "preprocess.py").write_text(fill("preprocess.py.in", src))
    mspec = importlib.util.spec_from_file_location(f"pre_{uuid.uuid4().hex}", tmp_path / "preprocess.py")
    mod = importlib.util.module_from_spec(mspec)
    mspec.loader.exec_module(mod)
    prep = Preprocessing.from_dict(pre)
    for p in images:
        want = load_image(p, prep)[0]
        got = mod.load_image(p)
        assert got.dtype == np.float32 and got.shape == want.shape, p.name
        np.testing.assert_array_equal(got, want, err_msg=p.name)


# --- refusals ----------------------------------------------------------------------------------------
def test_untrained_model_is_refused_with_a_clear_line(tmp_path, capsys):
    m = make_cnnd(tmp_path / "new.cnnd", SCORES, history=[])
    out = tmp_path / "x.onnx"
    assert cli_main(["export", str(m), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not been trained" in err
    assert not out.exists() and leftovers(tmp_path) == []
    assert cli_main(["export", str(m), "--out", str(out), "--allow-untrained"]) == 0
    assert out.exists()


@pytest.mark.parametrize("argv_tail, message", [
    (["--out", "{tmp}/x.txt"], "cannot tell the format"),
    (["--format", "onnx", "--out", "{tmp}/missing/x.onnx"], "does not exist"),
    (["--format", "onnx", "--out", "{tmp}/x.onnx", "--samples", "{tmp}/nope.png"], "sample image: file not found"),
    (["--format", "npz", "--out", "{tmp}"], "is a folder: give a file name"),
])
def test_cli_errors_are_one_line(cnnd, tmp_path, capsys, argv_tail, message):
    argv = ["export", str(cnnd)] + [a.format(tmp=tmp_path) for a in argv_tail]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.count("\n") == 0


def test_not_a_model_file(tmp_path, capsys):
    arch = tmp_path / "a.json"
    Spec.from_dict(SCORES).save(arch)
    assert cli_main(["export", str(arch), "--out", str(tmp_path / "x.onnx")]) == 2
    assert "export needs a trained .cnnd" in capsys.readouterr().err
    assert cli_main(["export", str(tmp_path / "gone.cnnd"), "--out", str(tmp_path / "x.onnx")]) == 2
    assert "gone.cnnd" in capsys.readouterr().err


def test_invalid_architecture_or_weights_are_refused(cnnd):
    mf = modelfile.load(cnnd)
    bad = Spec.from_dict({**SCORES, "layers": [{"type": "Dense", "units": 3}, *SCORES["layers"]]})
    def made(spec=mf.spec, state=mf.state, classes=mf.classes):
        return TrainedModel(spec, state, classes, mf.preprocessing, history=[{}])

    with pytest.raises(ExportError, match="invalid architecture: layer 0 \\(Dense\\)"):
        export_model(made(spec=bad), "json", "x.json")
    state = dict(mf.state)
    state.pop("layers.3.bias")
    with pytest.raises(ExportError, match=r"missing: layers.3.bias \(10,\)"):
        export_model(made(state=state), "npz", "x.npz")
    state = {**mf.state, "layers.3.bias": np.full(10, np.nan, np.float32)}
    with pytest.raises(ExportError, match="NaN"):
        export_model(made(state=state), "npz", "x.npz")
    with pytest.raises(ExportError, match="3 class names but the architecture outputs 10 classes"):
        export_model(made(classes=["a", "b", "c"]), "npz", "x.npz")
    maps = Spec.from_dict({**SCORES, "layers": SCORES["layers"][:2]})  # ends on feature maps
    with pytest.raises(ExportError, match="flat vector of class scores"):
        export_model(made(spec=maps, state={k: v for k, v in mf.state.items() if k.startswith("layers.0")}),
                     "npz", "x.npz")
    with pytest.raises(ExportError, match="unknown export format"):
        export_model(cnnd, "tflite", "x.tflite")


# --- atomic folders ------------------------------------------------------------------------------------
def test_pytorch_folder_is_atomic_and_never_clobbers_foreign_files(cnnd, tmp_path, monkeypatch):
    out = tmp_path / "export"
    export_model(cnnd, "pytorch", out)
    first = (out / "weights.safetensors").read_bytes()
    # re-exporting over a previous export replaces it
    export_model(cnnd, "pytorch", out)
    assert (out / "weights.safetensors").read_bytes() == first and leftovers(tmp_path) == []
    # a failure half-way leaves the previous export untouched and no temp folders
    import engine.export.pytorch_export as pe

    def boom(*a, **k):
        raise ExportError("disk full (simulated)")

    monkeypatch.setattr(pe, "write_samples", boom)
    with pytest.raises(ExportError, match="simulated"):
        export_model(cnnd, "pytorch", out)
    assert (out / "weights.safetensors").read_bytes() == first and (out / "model.py").exists()
    assert leftovers(tmp_path) == []
    monkeypatch.undo()
    # a folder with someone else's files is refused, untouched
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    with pytest.raises(ExportError, match="other files in it"):
        export_model(cnnd, "pytorch", mine)
    assert [p.name for p in mine.iterdir()] == ["thesis.tex"]


def test_onnx_file_untouched_when_export_fails(cnnd, tmp_path, monkeypatch):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"old")
    import engine.export.onnx_export as oe

    monkeypatch.setattr(oe, "write_samples", lambda *a, **k: (_ for _ in ()).throw(ExportError("simulated")))
    with pytest.raises(ExportError):
        export_model(cnnd, "onnx", out)
    assert out.read_bytes() == b"old" and leftovers(tmp_path) == []


# --- samples -----------------------------------------------------------------------------------------
def test_samples_come_from_the_chosen_folder_or_given_images(tmp_path, mnist_folder):
    # a folder recorded in the model file is data from elsewhere: it never picks what is copied
    m = make_cnnd(tmp_path / "t.cnnd", ALL_LAYERS, training={"data": str(mnist_folder / "train")})
    export_model(m, "onnx", tmp_path / "n.onnx")
    exp = json.loads((tmp_path / "n_predict" / "expected.json").read_text())
    firsts = {sorted((mnist_folder / "train" / str(c)).iterdir())[0].stem for c in range(10)}
    assert not {Path(s["file"]).stem.split("_", 1)[1] for s in exp["samples"]} & firsts
    # the folder the user chose (the window's data folder) does
    export_model(m, "onnx", tmp_path / "t.onnx", sample_folder=mnist_folder / "train")
    exp = json.loads((tmp_path / "t_predict" / "expected.json").read_text())
    assert {Path(s["file"]).stem.split("_", 1)[1] for s in exp["samples"]} == firsts
    assert [s["class"] for s in exp["samples"]] == [str(np.argmax(s["probabilities"])) for s in exp["samples"]]
    given = sorted((mnist_folder / "test" / "3").iterdir())[:2]
    export_model(m, "onnx", tmp_path / "g.onnx", samples=given)
    exp = json.loads((tmp_path / "g_predict" / "expected.json").read_text())
    assert len(exp["samples"]) == 2
    mf = modelfile.load(m)
    want = mf.predict_files(given)
    got = np.array([s["probabilities"] for s in exp["samples"]])
    np.testing.assert_allclose(got, want, atol=1e-6)


# --- the dialog ----------------------------------------------------------------------------------------
def test_export_dialog(request, cnnd, tmp_path, monkeypatch):
    pytest.importorskip("PySide6")
    pytest.importorskip("pytestqt")
    qtbot = request.getfixturevalue("qtbot")
    from designer import export_dialog as ed

    shown = []
    monkeypatch.setattr(ed.QMessageBox, "information", lambda *a: shown.append(("info", a[2])))
    monkeypatch.setattr(ed.QMessageBox, "warning", lambda *a: shown.append(("warn", a[2])))

    empty = ed.ExportDialog(None, None)
    qtbot.addWidget(empty)
    assert not empty.export_button.isEnabled() and "no trained model" in empty.model_label.text()

    dlg = ed.ExportDialog(None, str(cnnd))
    qtbot.addWidget(dlg)
    assert dlg.export_button.isEnabled()
    dlg.set_format("pytorch")
    assert dlg.path_edit.text().endswith("scores_pytorch")
    dlg.set_format("json")
    dlg.set_path(tmp_path / "d.json")
    dlg.accept()
    assert shown[-1][0] == "info" and str(tmp_path / "d.json") in shown[-1][1]
    assert Spec.load(tmp_path / "d.json") == modelfile.load(cnnd).spec
    assert dlg.result_ is not None and dlg.result_.written == [tmp_path / "d.json"]

    # the training workspace's trained model, unsaved
    from designer.document import Document
    from designer.session import CurrentModel, TrainSession

    mf = modelfile.load(cnnd)
    ws = TrainSession(Document(mf.spec))
    mf.path = None  # trained in the window, not opened from a file
    ws.set_model(CurrentModel(mf, saved=False))
    dlg2 = ed.ExportDialog(None, ws)
    qtbot.addWidget(dlg2)
    dlg2.set_format("onnx")
    dlg2.set_path(tmp_path / "ws.onnx")
    assert dlg2.run_export().written == [tmp_path / "ws.onnx", tmp_path / "ws_predict"]
    dlg2.set_path(tmp_path / "missing" / "x.onnx")
    dlg2.accept()
    assert shown[-1][0] == "warn" and "does not exist" in shown[-1][1]
    ws.set_model(None)
    assert "no trained model" in ed.ExportDialog(None, ws).model_label.text()


def test_pytorch_weights_are_safetensors_with_the_app_names(cnnd, tmp_path):
    from safetensors import safe_open

    export_model(cnnd, "pytorch", tmp_path / "pt")
    mf = modelfile.load(cnnd)
    with safe_open(str(tmp_path / "pt" / "weights.safetensors"), framework="numpy") as f:
        assert sorted(f.keys()) == sorted(mf.state)
        assert json.loads(f.metadata()["classes"]) == mf.classes
        for k, v in mf.state.items():
            got = f.get_tensor(k)
            assert got.dtype == np.float32
            np.testing.assert_array_equal(got, v)
