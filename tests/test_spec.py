"""Validation of the cnn-designer/1 format: every bad field is a SpecError naming layer and field,
and every shape problem is a one-line fix-it message from shape inference (never an exception)."""

from __future__ import annotations

import json

import pytest

from engine.errors import SpecError
from engine.shapes import infer
from engine.spec import Spec

BASE = {"format": "cnn-designer/1", "name": "t", "input": {"channels": 1, "height": 28, "width": 28}}


def spec(layers, **kw):
    return Spec.from_dict({**BASE, **kw, "layers": layers})


CONV = {"type": "Conv2D", "filters": 4, "kernel_size": 3}

BAD_LAYERS = [
    ([{"type": "Conv3D"}], r"layer 0: unknown layer type 'Conv3D' \(known: Conv2D"),
    ([CONV, {**CONV, "dilation": 2}], r'layer 1 \(Conv2D\): unknown field "dilation" \(allowed: filters'),
    ([{**CONV, "filters": "4"}], r'layer 0 \(Conv2D\): field "filters" must be a positive integer'),
    ([{**CONV, "filters": 0}], r'layer 0 \(Conv2D\): field "filters" must be a positive integer, got 0'),
    ([{**CONV, "filters": -3}], r'field "filters" must be a positive integer, got -3'),
    ([{**CONV, "filters": 2.5}], r'field "filters" must be a positive integer, got 2.5'),
    ([{**CONV, "kernel_size": [3, 0]}], r'field "kernel_size" must be a positive integer or \[height, width\]'),
    ([{**CONV, "kernel_size": [3, 3, 3]}], r'field "kernel_size" must be a positive integer or \[height, width\]'),
    ([{**CONV, "stride": 0}], r'field "stride" must be a positive integer or \[height, width\]'),
    ([{**CONV, "padding": "full"}], r'field "padding" must be "valid", "same", an integer >= 0'),
    ([{**CONV, "padding": -1}], r'field "padding" must be "valid", "same"'),
    ([{**CONV, "use_bias": 1}], r'field "use_bias" must be true or false'),
    ([{"type": "Conv2D", "kernel_size": 3}], r'layer 0 \(Conv2D\): missing required field "filters"'),
    ([{"filters": 3}], r'layer 0: missing required field "type"'),
    ([CONV, "ReLU"], r"layer 1: a layer must be a JSON object"),
    ([{"type": "Flatten"}, {"type": "Dense"}], r'layer 1 \(Dense\): missing required field "units"'),
    ([{"type": "Flatten"}, {"type": "Dense", "units": True}], r'layer 1 \(Dense\): field "units" must be a positive'),
    ([{"type": "Dropout", "rate": 1.0}], r'layer 0 \(Dropout\): field "rate" must be a number in \[0, 1\)'),
    ([{"type": "LeakyReLU", "alpha": "x"}], r'layer 0 \(LeakyReLU\): field "alpha" must be a number'),
    ([{"type": "MaxPool2D", "pool_size": 2, "padding": 1}], r'field "padding" must be "valid" or "same"'),
    ([{"type": "AvgPool2D"}], r'layer 0 \(AvgPool2D\): missing required field "pool_size"'),
    ([{"type": "BatchNorm2D", "momentum": 0}], r'layer 0 \(BatchNorm2D\): field "momentum" must be a number greater'),
    ([{"type": "BatchNorm2D", "eps": float("nan")}], r'field "eps" must be a number greater than 0'),
]


@pytest.mark.parametrize(("layers", "message"), BAD_LAYERS)
def test_bad_layer_fields_name_index_and_field(layers, message):
    with pytest.raises(SpecError, match=message):
        spec(layers)


@pytest.mark.parametrize(("raw", "message"), [
    ({**BASE, "layers": []} | {"format": "keras/2"}, r"unsupported format 'keras/2'"),
    ({"input": BASE["input"], "layers": []}, r'missing "format"'),
    ({**BASE, "layers": {}}, r'"layers" must be a list'),
    ({**BASE, "layer": []}, r'unknown top-level field "layer"'),
    ({**BASE, "input": {"channels": 1, "height": 0, "width": 28}, "layers": []},
     r'input: field "height" must be a positive integer, got 0'),
    ({**BASE, "input": {"channels": 1, "height": 28}, "layers": []}, r'input: missing required field "width"'),
    ({**BASE, "input": [1, 28, 28], "layers": []}, r'"input" must be an object'),
    ({**BASE, "name": 3, "layers": []}, r'"name" must be a string'),
    ([1, 2], r"must be a JSON object"),
])
def test_bad_top_level(raw, message):
    with pytest.raises(SpecError, match=message):
        Spec.from_dict(raw)


def test_defaults_filled_and_round_trip(tmp_path):
    s = spec([{"type": "Conv2D", "filters": 6, "kernel_size": [3, 5]}, {"type": "MaxPool2D", "pool_size": 2},
              {"type": "Flatten"}, {"type": "Dense", "units": 10}, {"type": "Softmax"}])
    assert s.layers[0].config == {"filters": 6, "kernel_size": [3, 5], "stride": 1, "padding": "valid",
                                  "use_bias": True}
    assert s.layers[1].stride == (2, 2)
    p = tmp_path / "a.json"
    s.save(p)
    assert Spec.load(p) == s
    p.write_text("{not json")
    with pytest.raises(SpecError, match="not valid JSON"):
        Spec.load(p)
    with pytest.raises(SpecError, match="not found"):
        Spec.load(tmp_path / "missing.json")
    assert json.loads(s.to_json())["format"] == "cnn-designer/1"


SHAPE_ERRORS = [
    ([{"type": "Dense", "units": 3}], 0, "Dense needs a flat input but receives 1x28x28: add Flatten before it"),
    ([{"type": "Conv2D", "filters": 3, "kernel_size": 5}, {"type": "MaxPool2D", "pool_size": 2},
      {"type": "Conv2D", "filters": 3, "kernel_size": 5}, {"type": "MaxPool2D", "pool_size": 2},
      {"type": "Conv2D", "filters": 3, "kernel_size": 5}], 4, "kernel 5x5 is larger than its 4x4 input"),
    ([{"type": "MaxPool2D", "pool_size": 29}], 0, "pool 29x29 is larger than its 28x28 input"),
    ([{"type": "Softmax"}, {"type": "Flatten"}], 0, "Softmax is only allowed as the last layer"),
    ([{"type": "Flatten"}, {"type": "Conv2D", "filters": 3, "kernel_size": 3}], 1,
     "Conv2D needs channels x height x width maps but receives a flat vector of 784: move it before Flatten"),
    ([{"type": "Flatten"}, {"type": "BatchNorm2D"}], 1, "BatchNorm2D needs channels x height x width maps"),
    ([{"type": "BatchNorm1D"}], 0, "BatchNorm1D needs a flat input but receives 1x28x28: add Flatten before it"),
]


@pytest.mark.parametrize(("layers", "bad", "message"), SHAPE_ERRORS)
def test_shape_errors_are_fix_it_messages_and_mark_the_rest(layers, bad, message):
    inf = infer(spec(layers + [{"type": "ReLU"}]) if layers[-1]["type"] != "Softmax" else spec(layers))
    assert not inf.valid
    assert inf.layers[bad].error.startswith(message)
    assert all(i.error is None for i in inf.layers[:bad])
    assert all("until layer" in i.error for i in inf.layers[bad + 1:])
    assert inf.error_message.startswith(f"layer {bad} ({layers[bad]['type']}): {message}")
    assert "\n" not in inf.error_message


def test_training_memory_counts_the_buffers_batchnorm_keeps_between_steps():
    """Training keeps, per BatchNorm (inside residual blocks too), its deviations from the mean, the
    masked gradient and the ReLU mask from step to step: the estimate the memory budget checks
    counts three outputs' worth of values per image for each, and nothing in inference."""
    def spec(bn: bool, block: bool = False) -> Spec:
        body = [{"type": "Conv2D", "filters": 4, "kernel_size": 3, "padding": "same"},
                *([{"type": "BatchNorm2D"}] if bn else []), {"type": "ReLU"}]
        layers = [{"type": "Residual", "layers": body}] if block else body
        return Spec.from_dict({"format": "cnn-designer/1", "input": {"channels": 4, "height": 6, "width": 5},
                               "layers": [*layers, {"type": "Flatten"}, {"type": "Dense", "units": 2}]})

    for block in (False, True):
        with_bn, without = infer(spec(True, block)), infer(spec(False, block))
        assert with_bn.workspace_values(True) - without.workspace_values(True) == 3 * 4 * 6 * 5
        assert with_bn.workspace_values(False) == without.workspace_values(False)
