"""`cnn-designer summary`: the Keras-style table, its JSON twin, and exit code 2 on bad specs."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.cli import main

LENET = {
    "format": "cnn-designer/1", "name": "LeNet-5", "input": {"channels": 1, "height": 28, "width": 28},
    "layers": [
        {"type": "Conv2D", "filters": 6, "kernel_size": 5, "stride": 1, "padding": "same"}, {"type": "ReLU"},
        {"type": "MaxPool2D", "pool_size": 2}, {"type": "Conv2D", "filters": 16, "kernel_size": 5},
        {"type": "ReLU"}, {"type": "MaxPool2D", "pool_size": 2}, {"type": "Flatten"},
        {"type": "Dense", "units": 120}, {"type": "ReLU"}, {"type": "Dense", "units": 84}, {"type": "ReLU"},
        {"type": "Dense", "units": 10}, {"type": "Softmax"},
    ],
}


def write(tmp_path: Path, obj) -> str:
    p = tmp_path / "arch.json"
    p.write_text(json.dumps(obj) if not isinstance(obj, str) else obj)
    return str(p)


def test_summary_table(tmp_path, capsys):
    assert main(["summary", write(tmp_path, LENET)]) == 0
    out = capsys.readouterr().out
    assert "Total params: 61,706" in out
    assert "layers.0 (Conv2D)" in out and "(None, 6, 28, 28)" in out
    assert "layers.7 (Dense)" in out and "48,120" in out


def test_summary_json(tmp_path, capsys):
    assert main(["summary", "--json", write(tmp_path, LENET)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["total_params"] == 61706 and doc["trainable_params"] == 61706
    assert doc["non_trainable_params"] == 0
    assert doc["macs"] == 416520
    first = doc["layers"][0]
    assert set(first) >= {"index", "type", "output_shape", "params", "trainable", "non_trainable", "macs", "error"}
    assert [layer["output_shape"] for layer in doc["layers"][:3]] == [[6, 28, 28], [6, 28, 28], [6, 14, 14]]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda s: s["layers"].pop(6), "Dense needs a flat input but receives 16x5x5: add Flatten before it"),
        (lambda s: s["layers"][0].update(filters=0), 'layer 0 (Conv2D): field "filters" must be a positive integer'),
        (lambda s: s["layers"][3].update(type="Conv3D"), "layer 3: unknown layer type 'Conv3D'"),
        (lambda s: s["layers"][3].update(dilation=2), 'layer 3 (Conv2D): unknown field "dilation"'),
        (lambda s: s["layers"][7].pop("units"), 'layer 7 (Dense): missing required field "units"'),
        (lambda s: s["input"].update(height=4, width=4), "kernel 5x5 is larger than its 2x2 input"),
        (lambda s: s.update(format="keras"), "unsupported format 'keras'"),
    ],
)
def test_summary_bad_specs_exit_2_with_one_clear_line(tmp_path, capsys, mutate, message):
    spec = json.loads(json.dumps(LENET))
    mutate(spec)
    assert main(["summary", write(tmp_path, spec)]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_summary_not_json_and_missing_file(tmp_path, capsys):
    assert main(["summary", write(tmp_path, "{not json")]) == 2
    assert "is not valid JSON" in capsys.readouterr().err
    assert main(["summary", str(tmp_path / "nope.json")]) == 2
    assert "not found" in capsys.readouterr().err


def test_console_script_runs_without_qt(tmp_path):
    """The summary subcommand works from a plain process and never loads Qt."""
    code = (
        "import sys; from designer.launcher import main; rc = main(['summary', sys.argv[1]]);"
        "assert not [m for m in sys.modules if m.startswith('PySide6')]; sys.exit(rc)"
    )
    r = subprocess.run([sys.executable, "-c", code, write(tmp_path, LENET)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "61,706" in r.stdout
