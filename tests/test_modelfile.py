"""`.cnnd` model files: round trip, atomic save, and every kind of tampering fails cleanly."""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from engine import modelfile
from engine.data import Preprocessing
from engine.model import Model
from engine.modelfile import ModelFileError
from engine.spec import Spec
from engine.trained import TrainedModel

ARCH = {
    "format": "cnn-designer/1", "name": "tiny", "input": {"channels": 1, "height": 12, "width": 12},
    "layers": [
        {"type": "Conv2D", "filters": 4, "kernel_size": 3},
        {"type": "BatchNorm2D"},
        {"type": "ReLU"},
        {"type": "MaxPool2D", "pool_size": 2},
        {"type": "Flatten"},
        {"type": "Dense", "units": 3},
        {"type": "Softmax"},
    ],
}
CLASSES = ["cat", "dog", "emu"]


@pytest.fixture
def saved(tmp_path):
    spec = Spec.from_dict(ARCH)
    model = Model(spec, seed=3)
    state = model.state_dict()
    state["layers.1.running_mean"][:] = [0.1, 0.2, 0.3, 0.4]
    path = tmp_path / "m.cnnd"
    history = [{"epoch": 1, "train_loss": 0.5, "val_loss": float("nan")}]
    mf = modelfile.save(path, TrainedModel(spec, state, CLASSES, Preprocessing("grayscale", 12, 12, mean=[0.5],
                                                                               std=[0.25]),
                                           {"optimizer": "adam", "lr": 0.001}, history))
    return path, mf, state


def members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        return {i.filename: z.read(i) for i in z.infolist()}


def write_zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return path


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def test_round_trip(saved):
    path, mf, state = saved
    assert sorted(members(path)) == ["model.json", "weights.npz"]
    doc = json.loads(members(path)["model.json"])
    assert doc["format"] == "cnn-designer-model/1" and doc["classes"] == CLASSES
    assert doc["preprocessing"] == {"color": "grayscale", "height": 12, "width": 12,
                                    "scale": 0.00392156862745098, "mean": [0.5], "std": [0.25]}
    assert doc["history"][0]["val_loss"] is None  # NaN never reaches JSON
    assert doc["created"] and doc["engine_version"]
    loaded = modelfile.load(path)
    assert loaded.spec == mf.spec and loaded.classes == CLASSES and loaded.training["lr"] == 0.001
    assert set(loaded.state) == set(state)
    for k, v in state.items():
        assert loaded.state[k].dtype == np.float32
        np.testing.assert_array_equal(loaded.state[k], v)
    x = np.random.default_rng(0).random((5, 1, 12, 12), dtype=np.float32)
    ref = Model(mf.spec, seed=3)
    ref.load_state_dict(state)
    np.testing.assert_array_equal(loaded.build_model().predict_proba(x), ref.predict_proba(x))
    assert modelfile.loads(path.read_bytes()).classes == CLASSES


def test_save_is_atomic(saved, monkeypatch):
    path, mf, _ = saved
    before = path.read_bytes()

    def boom(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(ModelFileError, match="No space left"):
        modelfile.save(path, mf)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir() if p.name != "m.cnnd"] == []  # no temp file left behind


def test_save_checks_its_input(tmp_path, saved):
    _, mf, state = saved
    def made(state=state, classes=CLASSES):
        return TrainedModel(mf.spec, state, classes, mf.preprocessing)

    with pytest.raises(ModelFileError, match="does not exist"):
        modelfile.save(tmp_path / "no" / "m.cnnd", made())
    with pytest.raises(ModelFileError, match="is a folder"):
        modelfile.save(tmp_path, made())
    with pytest.raises(ModelFileError, match="2 class names but the architecture outputs 3"):
        modelfile.save(tmp_path / "x.cnnd", made(classes=["a", "b"]))
    bad = dict(state)
    bad.pop("layers.5.bias")
    with pytest.raises(ModelFileError, match=r"missing: layers.5.bias \(3,\)"):
        modelfile.save(tmp_path / "x.cnnd", made(state=bad))
    assert not (tmp_path / "x.cnnd").exists()


def tampered(path: Path, tmp: Path, *, doc=None, arrays=None, extra=None, drop=None, raw_json=None) -> Path:
    m = members(path)
    d = json.loads(m["model.json"])
    if doc:
        doc(d)
    m["model.json"] = raw_json if raw_json is not None else json.dumps(d).encode()
    if arrays:
        with np.load(io.BytesIO(m["weights.npz"])) as z:
            a = {k: z[k] for k in z.files}
        arrays(a)
        m["weights.npz"] = npz_bytes(a)
    if extra:
        m.update(extra)
    if drop:
        m.pop(drop)
    return write_zip(tmp / "t.cnnd", m)


def _set(key, value):
    def f(d):
        d[key] = value
    return f


CASES = [
    ("not json", {"raw_json": b"{nope"}, "model.json is not valid JSON"),
    ("newer version", {"doc": _set("format", "cnn-designer-model/2")}, "newer CNN Designer .*cnn-designer-model/2"),
    ("wrong format", {"doc": _set("format", "something")}, "not a CNN Designer model file"),
    ("unknown field", {"doc": _set("owner", "me")}, 'unknown field "owner"'),
    ("bad architecture", {"doc": lambda d: d["architecture"]["layers"][0].update(filters=-1)},
     r"architecture: layer 0 \(Conv2D\): field \"filters\""),
    ("classes count", {"doc": _set("classes", ["a", "b"])}, "2 class names but the architecture outputs 3"),
    ("duplicate classes", {"doc": _set("classes", ["a", "a", "b"])}, "duplicate"),
    ("prep size", {"doc": lambda d: d["preprocessing"].update(height=28)}, "preprocessing makes 1x28x12"),
    ("prep color", {"doc": lambda d: d["preprocessing"].update(color="rgb", mean=[0, 0, 0], std=[1, 1, 1])},
     "preprocessing makes 3x12x12"),
    ("history", {"doc": _set("history", {"a": 1})}, '"history" must be a list'),
    ("missing array", {"arrays": lambda a: a.pop("layers.1.running_var")}, r"missing: layers.1.running_var \(4,\)"),
    ("extra array", {"arrays": lambda a: a.update(evil=np.zeros(3, np.float32))}, "unexpected array 'evil'"),
    ("wrong shape", {"arrays": lambda a: a.update({"layers.5.weight": np.zeros((3, 99), np.float32)})},
     r"layers.5.weight has shape \(3, 99\) but the architecture needs \(3, 100\)"),
    ("int dtype", {"arrays": lambda a: a.update({"layers.5.bias": np.zeros(3, np.int64)})}, "dtype int64"),
    ("object array", {"arrays": lambda a: a.update({"layers.5.bias": np.array([1, "x", None], dtype=object)})},
     "dtype object"),
    ("nan", {"arrays": lambda a: a.update({"layers.5.bias": np.array([0, np.nan, 0], np.float32)})}, "NaN"),
    ("extra member", {"extra": {"run.sh": b"rm -rf /"}}, "unexpected entry 'run.sh'"),
    ("escaping member", {"extra": {"../../etc/passwd": b"x"}}, r"unsafe entry name '../../etc/passwd'"),
    ("absolute member", {"extra": {"/tmp/x": b"x"}}, "unsafe entry name"),
    ("missing weights", {"drop": "weights.npz"}, "weights.npz is missing"),
    ("missing json", {"drop": "model.json"}, "model.json is missing"),
]


@pytest.mark.parametrize("name,change,message", CASES, ids=[c[0] for c in CASES])
def test_tampering_fails_with_one_clear_line(saved, tmp_path, name, change, message):
    path, _, _ = saved
    bad = tampered(path, tmp_path, **change)
    with pytest.raises(ModelFileError, match=message) as info:
        modelfile.load(bad)
    assert "\n" not in str(info.value) and str(bad) in str(info.value)


def test_float64_weights_are_accepted_as_float32(saved, tmp_path):
    path, _, state = saved
    bad = tampered(path, tmp_path, arrays=lambda a: a.update({k: v.astype(np.float64) for k, v in a.items()}))
    mf = modelfile.load(bad)
    assert all(v.dtype == np.float32 for v in mf.state.values())
    np.testing.assert_array_equal(mf.state["layers.0.weight"], state["layers.0.weight"])


def test_not_a_model_file(tmp_path, saved):
    with pytest.raises(ModelFileError, match="model file not found"):
        modelfile.load(tmp_path / "missing.cnnd")
    with pytest.raises(ModelFileError, match="is a folder"):
        modelfile.load(tmp_path)
    (tmp_path / "img.cnnd").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    with pytest.raises(ModelFileError, match="not a zip archive"):
        modelfile.load(tmp_path / "img.cnnd")
    path, _, _ = saved
    raw = path.read_bytes()
    (tmp_path / "trunc.cnnd").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ModelFileError, match="trunc.cnnd"):
        modelfile.load(tmp_path / "trunc.cnnd")


def test_size_caps_stop_zip_bombs(saved, tmp_path):
    path, _, _ = saved
    m = members(path)
    # a weights.npz that inflates to 200 MB of zeros: refused from the declared size, never inflated
    bomb = tmp_path / "bomb.cnnd"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("model.json", m["model.json"])
        with z.open("weights.npz", "w", force_zip64=True) as f:
            chunk = b"\0" * (1 << 20)
            for _ in range(200):
                f.write(chunk)
    assert bomb.stat().st_size < 1_000_000
    with pytest.raises(ModelFileError, match="more than the .* this model can need"):
        modelfile.load(bomb)
    # a model.json over the cap
    big = write_zip(tmp_path / "bigjson.cnnd", {"model.json": b" " * (modelfile.MAX_JSON_BYTES + 1),
                                                 "weights.npz": m["weights.npz"]})
    with pytest.raises(ModelFileError, match="model.json"):
        modelfile.load(big)
    # a zip that lies about its sizes: the read is capped, not the declaration trusted
    liar = tmp_path / "liar.cnnd"
    write_zip(liar, m)
    data = bytearray(liar.read_bytes())
    with zipfile.ZipFile(liar) as z:
        info = z.getinfo("weights.npz")
    # patch the declared uncompressed size in the central directory to a small number
    cd = data.rfind(b"PK\x01\x02", 0, len(data))
    while cd != -1:
        name_len = int.from_bytes(data[cd + 28:cd + 30], "little")
        if bytes(data[cd + 46:cd + 46 + name_len]) == b"weights.npz":
            data[cd + 24:cd + 28] = (10).to_bytes(4, "little")
            break
        cd = data.rfind(b"PK\x01\x02", 0, cd)
    liar.write_bytes(bytes(data))
    assert info.file_size > 10
    with pytest.raises(ModelFileError, match="liar.cnnd: member weights.npz is damaged"):
        modelfile.load(liar)


def test_summary_cli_reads_model_files(saved, capsys):
    from engine.cli import main

    path, _, _ = saved
    assert main(["summary", str(path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["total_params"] == 40 + 16 + 303  # conv, BatchNorm (8 trainable + 8 running stats), dense
    bad = tampered(path, path.parent, doc=_set("format", "cnn-designer-model/9"))
    assert main(["summary", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "newer CNN Designer" in err[0]
