"""Residual blocks in the engine: format, shapes, fix-it messages, gradients, torch numbers, processes.

The PyTorch figures below were produced once with torch 2.13.0 by benchmarks/make_residual_reference.py
(run with a Python that has torch; it imports ARCHS and NUMERIC_ARCH from here and builds each block
as its own torch module: inner nn.Sequential `layers`, a 1x1 nn.Conv2d `shortcut` with bias when the
shape changes, the activation after the addition), so these tests do not need torch.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_gradients import check_model_gradients
from test_layers_shapes_vs_torch import numeric_model as torch_numeric_model

from engine.errors import SpecError
from engine.model import Model
from engine.shapes import infer, summary_table
from engine.spec import Spec


def _a(name, c, h, w, layers):
    return {"format": "cnn-designer/1", "name": name, "input": {"channels": c, "height": h, "width": w},
            "layers": layers}


def _conv(f, k, s=1, p="same", bias=True):
    return {"type": "Conv2D", "filters": f, "kernel_size": k, "stride": s, "padding": p, "use_bias": bias}


def _res(layers, shortcut="auto", activation="ReLU"):
    return {"type": "Residual", "shortcut": shortcut, "activation": activation, "layers": layers}


R, BN, FL, GAP, SM = {"type": "ReLU"}, {"type": "BatchNorm2D"}, {"type": "Flatten"}, {"type": "GlobalAvgPool2D"}, \
    {"type": "Softmax"}


def _d(u):
    return {"type": "Dense", "units": u}


ARCHS = {
    "identity": _a("identity", 3, 16, 16, [
        _conv(8, 3), R, _res([_conv(8, 3), BN, R, _conv(8, 3), BN]), GAP, _d(10), SM]),
    "projection_stride2": _a("projection", 3, 16, 16, [
        _conv(8, 3), _res([_conv(16, 3, 2), BN, R, _conv(16, 3), BN]), GAP, _d(10)]),
    "pool_inside_odd": _a("pool inside", 1, 15, 13, [
        _res([_conv(4, [3, 5]), R, {"type": "MaxPool2D", "pool_size": 2, "padding": "same"}],
             activation="Tanh"), FL, _d(5)]),
    "forced_projection_odd_stride": _a("forced projection", 2, 11, 9, [
        _res([_conv(6, 3, [2, 3]), {"type": "LeakyReLU", "alpha": 0.1}], shortcut="projection", activation=None),
        _res([_conv(6, 1), {"type": "Dropout", "rate": 0.2}, {"type": "AvgPool2D", "pool_size": 3, "stride": 1,
                                                                 "padding": "same"}]),
        FL, _d(3)]),
    "resnet_mini": _a("ResNet mini", 3, 32, 32, [
        _conv(16, 3), BN, R,
        _res([_conv(16, 3), BN, R, _conv(16, 3), BN]),
        _res([_conv(32, 3, 2), BN, R, _conv(32, 3), BN]),
        _res([_conv(64, 3, 2), BN, R, _conv(64, 3), BN]),
        GAP, _d(10), SM]),
}

#: One net for a numeric forward/backward comparison with fixed weights (float64 on both sides).
NUMERIC_ARCH = _a("numeric", 2, 9, 7, [
    _conv(4, 3), _res([_conv(6, 3, 2), BN, R, _conv(6, [3, 1]), BN]),
    _res([_conv(6, 3), {"type": "Sigmoid"}, {"type": "MaxPool2D", "pool_size": 3, "stride": 1, "padding": "same"}],
         activation="LeakyReLU"),
    FL, _d(3), SM])

# --- figures from PyTorch (benchmarks/make_residual_reference.py, torch 2.13.0+cpu) ----------------------------
TORCH = {'forced_projection_odd_stride': {'inner': {'0': {'shapes': [[6, 6, 3], [6, 6, 3]], 'shortcut': True},
                                            '1': {'shapes': [[6, 6, 3], [6, 6, 3], [6, 6, 3]], 'shortcut': False}},
                                  'names': ['layers.0.layers.0.bias', 'layers.0.layers.0.weight',
                                            'layers.0.shortcut.bias', 'layers.0.shortcut.weight',
                                            'layers.1.layers.0.bias', 'layers.1.layers.0.weight', 'layers.3.bias',
                                            'layers.3.weight'],
                                  'non_trainable': [0, 0, 0, 0],
                                  'shapes': [[6, 6, 3], [6, 6, 3], [108], [3]],
                                  'trainable': [132, 42, 0, 327]},
 'identity': {'inner': {'2': {'shapes': [[8, 16, 16], [8, 16, 16], [8, 16, 16], [8, 16, 16], [8, 16, 16]],
                              'shortcut': False}},
              'names': ['layers.0.bias', 'layers.0.weight', 'layers.2.layers.0.bias', 'layers.2.layers.0.weight',
                        'layers.2.layers.1.bias', 'layers.2.layers.1.running_mean', 'layers.2.layers.1.running_var',
                        'layers.2.layers.1.weight', 'layers.2.layers.3.bias', 'layers.2.layers.3.weight',
                        'layers.2.layers.4.bias', 'layers.2.layers.4.running_mean', 'layers.2.layers.4.running_var',
                        'layers.2.layers.4.weight', 'layers.4.bias', 'layers.4.weight'],
              'non_trainable': [0, 0, 32, 0, 0, 0],
              'shapes': [[8, 16, 16], [8, 16, 16], [8, 16, 16], [8], [10], [10]],
              'trainable': [224, 0, 1200, 0, 90, 0]},
 'pool_inside_odd': {'inner': {'0': {'shapes': [[4, 15, 13], [4, 15, 13], [4, 8, 7]], 'shortcut': True}},
                     'names': ['layers.0.layers.0.bias', 'layers.0.layers.0.weight', 'layers.0.shortcut.bias',
                               'layers.0.shortcut.weight', 'layers.2.bias', 'layers.2.weight'],
                     'non_trainable': [0, 0, 0],
                     'shapes': [[4, 8, 7], [224], [5]],
                     'trainable': [72, 0, 1125]},
 'projection_stride2': {'inner': {'1': {'shapes': [[16, 8, 8], [16, 8, 8], [16, 8, 8], [16, 8, 8], [16, 8, 8]],
                                        'shortcut': True}},
                        'names': ['layers.0.bias', 'layers.0.weight', 'layers.1.layers.0.bias',
                                  'layers.1.layers.0.weight', 'layers.1.layers.1.bias',
                                  'layers.1.layers.1.running_mean', 'layers.1.layers.1.running_var',
                                  'layers.1.layers.1.weight', 'layers.1.layers.3.bias', 'layers.1.layers.3.weight',
                                  'layers.1.layers.4.bias', 'layers.1.layers.4.running_mean',
                                  'layers.1.layers.4.running_var', 'layers.1.layers.4.weight',
                                  'layers.1.shortcut.bias', 'layers.1.shortcut.weight', 'layers.3.bias',
                                  'layers.3.weight'],
                        'non_trainable': [0, 64, 0, 0],
                        'shapes': [[8, 16, 16], [16, 8, 8], [16], [10]],
                        'trainable': [224, 3696, 0, 170]},
 'resnet_mini': {'inner': {'3': {'shapes': [[16, 32, 32], [16, 32, 32], [16, 32, 32], [16, 32, 32], [16, 32, 32]],
                                 'shortcut': False},
                           '4': {'shapes': [[32, 16, 16], [32, 16, 16], [32, 16, 16], [32, 16, 16], [32, 16, 16]],
                                 'shortcut': True},
                           '5': {'shapes': [[64, 8, 8], [64, 8, 8], [64, 8, 8], [64, 8, 8], [64, 8, 8]],
                                 'shortcut': True}},
                 'names': ['layers.0.bias', 'layers.0.weight', 'layers.1.bias', 'layers.1.running_mean',
                           'layers.1.running_var', 'layers.1.weight', 'layers.3.layers.0.bias',
                           'layers.3.layers.0.weight', 'layers.3.layers.1.bias', 'layers.3.layers.1.running_mean',
                           'layers.3.layers.1.running_var', 'layers.3.layers.1.weight', 'layers.3.layers.3.bias',
                           'layers.3.layers.3.weight', 'layers.3.layers.4.bias', 'layers.3.layers.4.running_mean',
                           'layers.3.layers.4.running_var', 'layers.3.layers.4.weight', 'layers.4.layers.0.bias',
                           'layers.4.layers.0.weight', 'layers.4.layers.1.bias', 'layers.4.layers.1.running_mean',
                           'layers.4.layers.1.running_var', 'layers.4.layers.1.weight', 'layers.4.layers.3.bias',
                           'layers.4.layers.3.weight', 'layers.4.layers.4.bias', 'layers.4.layers.4.running_mean',
                           'layers.4.layers.4.running_var', 'layers.4.layers.4.weight', 'layers.4.shortcut.bias',
                           'layers.4.shortcut.weight', 'layers.5.layers.0.bias', 'layers.5.layers.0.weight',
                           'layers.5.layers.1.bias', 'layers.5.layers.1.running_mean',
                           'layers.5.layers.1.running_var', 'layers.5.layers.1.weight', 'layers.5.layers.3.bias',
                           'layers.5.layers.3.weight', 'layers.5.layers.4.bias', 'layers.5.layers.4.running_mean',
                           'layers.5.layers.4.running_var', 'layers.5.layers.4.weight', 'layers.5.shortcut.bias',
                           'layers.5.shortcut.weight', 'layers.7.bias', 'layers.7.weight'],
                 'non_trainable': [0, 32, 0, 64, 128, 256, 0, 0, 0],
                 'shapes': [[16, 32, 32], [16, 32, 32], [16, 32, 32], [16, 32, 32], [32, 16, 16], [64, 8, 8], [64],
                            [10], [10]],
                 'trainable': [448, 32, 0, 4704, 14560, 57792, 0, 650, 0]}}

TORCH_NUMERIC = {'eval_output': [[0.34938811703165695, 0.11676081718441673, 0.5338510657839264],
                 [0.3967980754006722, 0.11767144382238648, 0.48553048077694144],
                 [0.43816362700569333, 0.1261401598966674, 0.43569621309763923]],
 'grads': {'layers.0.bias': [0.7204710778539379,
                             [0.020849647329338968, -0.13639746468517663, -0.2632141707960173,
                              -0.3000097950434051]],
           'layers.0.weight': [3.5895707706855275,
                               [-0.020203937146585138, 0.055967626173426835, 0.11849019625625178,
                                -0.11702094359356537]],
           'layers.1.layers.0.bias': [6.245004513516506e-17,
                                      [1.0408340855860843e-17, -2.0816681711721685e-17, 0.0,
                                       -3.469446951953614e-18]],
           'layers.1.layers.0.weight': [7.711040975902199,
                                        [-0.01240017709706107, 0.004630176935563085, 0.02034569524831453,
                                         -0.033568998951663244]],
           'layers.1.layers.1.bias': [2.1928260800985315,
                                      [-0.24902093755665405, 0.844216410494657, -0.08833011346691133,
                                       -0.6821598540207227]],
           'layers.1.layers.1.weight': [3.909284113566673,
                                        [-0.46475135854904676, 1.1634388736737598, -0.16529706463283644,
                                         -0.9889793855567481]],
           'layers.1.layers.3.bias': [3.760880495917718e-15,
                                      [9.71445146547012e-17, 3.4416913763379853e-15, 0.0, 2.220446049250313e-16]],
           'layers.1.layers.3.weight': [14.878543786429876,
                                        [-0.001631558006099382, -0.015991393170251004, -0.014181140653578294,
                                         0.007443767528386487]],
           'layers.1.layers.4.bias': [2.2199047600690625,
                                      [0.47546145878414003, 0.24969144341615318, 0.2712814042774996,
                                       -0.4880630100518085]],
           'layers.1.layers.4.weight': [1.0440675236888537,
                                        [-0.12613915146256702, 0.36470042499003424, 0.28494803146168624,
                                         -0.09183288846930741]],
           'layers.1.shortcut.bias': [2.219904760069062,
                                      [0.47546145878414003, 0.24969144341615318, 0.2712814042774996,
                                       -0.4880630100518085]],
           'layers.1.shortcut.weight': [8.149454001152577,
                                        [-0.4553233868872992, -0.3458060114375818, -0.2790110753702006,
                                         -0.27785065265221687]],
           'layers.2.layers.0.bias': [0.22132381816443458,
                                      [-0.031069934951680624, 0.043705075565825056, 0.03980105059287811,
                                       -0.0333902815907573]],
           'layers.2.layers.0.weight': [4.470910575496764,
                                        [0.0014107044187605861, -0.01884914098184796, -0.015145799448305956,
                                         -0.00233172601236916]],
           'layers.4.bias': [0.4617382967521816, [0.04934440171197707, -0.2308691483760908, 0.18152474666411372]],
           'layers.4.weight': [37.64515014237137,
                               [0.024954373440240304, 0.05129671534089253, 0.029427140900074922,
                                0.01734654952539763]]},
 'input_grad_first': [-0.0056605338977718574, -0.005749310949107081, -0.009382652932319773, -0.005948095363168109,
                      -0.012101539358749476, -0.009118692108205224],
 'input_grad_sum_abs': 6.090489924331481,
 'labels': [0, 1, 2],
 'running': {'layers.1.layers.1.running_mean': [-0.22519402317833606, -0.1303081533250423, 0.028451415222241774,
                                                0.17599548208717153],
             'layers.1.layers.1.running_var': [1.4450287746331107, 1.5006987411592243, 1.653525001225217,
                                               1.689558456282636],
             'layers.1.layers.4.running_mean': [-0.2269013052575472, -0.17204810813136318, -0.029804006082460324,
                                                0.13310379117580753],
             'layers.1.layers.4.running_var': [1.0451183374966102, 0.9362070045146655, 1.1001268214046973,
                                               1.1700301587559825]},
 'train_loss': 1.3760966279902476}


# --- shapes and parameters --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(ARCHS))
def test_shapes_params_and_names_match_torch(name):
    spec = Spec.from_dict(ARCHS[name])
    inf = infer(spec)
    assert inf.valid, inf.error_message
    want = TORCH[name]
    assert [list(i.output_shape) for i in inf.layers] == want["shapes"]
    assert [i.trainable for i in inf.layers] == want["trainable"]
    assert [i.non_trainable for i in inf.layers] == want["non_trainable"]
    for i, block in want["inner"].items():
        info = inf.layers[int(i)]
        assert [list(j.output_shape) for j in info.inner] == block["shapes"]
        assert ("shortcut" in info.side) == block["shortcut"]
    m = Model(spec, seed=0)
    assert sorted(m.state_dict()) == want["names"]  # exactly PyTorch's state_dict names
    x = np.zeros((2, *spec.input_shape), np.float32)
    assert [list(a.shape[1:]) for a in m.activations(x)] == want["shapes"]


def numeric_model(fuse: bool = True) -> tuple[Model, np.ndarray]:
    return torch_numeric_model(NUMERIC_ARCH, fuse)


def test_forward_matches_torch_numbers():
    m, x = numeric_model()
    np.testing.assert_allclose(m.forward(x), TORCH_NUMERIC["eval_output"], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("fuse", [True, False])
def test_training_step_matches_torch_numbers(fuse):
    from engine.losses import softmax_cross_entropy

    m, x = numeric_model(fuse)
    y = np.array(TORCH_NUMERIC["labels"])
    logits = m._run(m._plan_train, m._to_internal(x), True)
    losses, g = softmax_cross_entropy(logits, y)
    assert abs(losses.mean() - TORCH_NUMERIC["train_loss"]) < 1e-10
    dx = m._to_external(np.array(m._backprop(m._plan_train, g, True)))
    assert abs(np.abs(dx).sum() - TORCH_NUMERIC["input_grad_sum_abs"]) < 1e-9
    np.testing.assert_allclose(dx.reshape(-1)[:6], TORCH_NUMERIC["input_grad_first"], rtol=1e-8, atol=1e-12)
    grads = m.gradients()
    assert set(grads) == set(TORCH_NUMERIC["grads"])
    for name, (sum_abs, first) in TORCH_NUMERIC["grads"].items():
        assert abs(np.abs(grads[name]).sum() - sum_abs) < 1e-9 * max(1.0, sum_abs), name
        np.testing.assert_allclose(grads[name].reshape(-1)[:4], first, rtol=1e-8, atol=1e-12)
    for name, first in TORCH_NUMERIC["running"].items():
        np.testing.assert_allclose(m.buffers()[name].reshape(-1)[:4], first, rtol=1e-10, atol=1e-12)


# --- gradients (float64 finite differences), fused and unfused --------------------------------------------
GRAD_CASES = {
    "identity": ((3, 7, 9), [_conv(3, 3), _res([_conv(3, 3), R, _conv(3, 3)]), FL, _d(4)]),
    "projection_stride2_bn": ((2, 9, 7), [_res([_conv(4, 3, 2), BN, R, _conv(4, 3), BN]), GAP]),
    "pool_inside": ((2, 8, 8), [_res([_conv(3, 3), R, {"type": "MaxPool2D", "pool_size": 2},
                                      {"type": "Dropout", "rate": 0.3}], activation="Tanh"), FL, _d(3)]),
    "forced_projection_odd": ((3, 11, 5), [_res([_conv(5, [3, 1], [2, 1]), {"type": "LeakyReLU", "alpha": 0.2}],
                                                shortcut="projection", activation=None), FL]),
    "two_blocks_valid_conv": ((2, 8, 8), [_res([_conv(3, 2, 2, "valid")]), _res([_conv(3, 3), _conv(3, 3)]), FL]),
}


@pytest.mark.parametrize("fuse", [True, False])
@pytest.mark.parametrize("name", list(GRAD_CASES))
def test_gradients(name, fuse):
    shape, layers = GRAD_CASES[name]
    check_model_gradients(Spec.from_dict(_a(name, *shape, layers)), fuse=fuse)


@pytest.mark.parametrize("use_shifts", [True, False])
def test_forced_fast_paths_reach_layers_inside_blocks(use_shifts):
    """The checker's switches (Winograd, the conv+pool shift formulation) reach convolutions inside a
    block, so these paths are gradient-checked there too (the Small ResNet's 32- and 64-channel
    blocks run Winograd by default)."""
    from engine import winograd as W

    layers = [_res([_conv(3, 3), R, _conv(3, 3, p="valid"), {"type": "Dropout", "rate": 0.2}, _conv(3, 3),
                    R, {"type": "MaxPool2D", "pool_size": 2}], activation="Tanh"), FL]
    m = check_model_gradients(Spec.from_dict(_a("w", 3, 10, 9, layers)), winograd=True, use_shifts=use_shifts)
    convs = [op for op in m.ops[0].inner if hasattr(op, "winograd")]
    assert len(convs) == 3 and all(op.uses_winograd(True) for op in convs)
    assert isinstance(convs[0].winograd_geometry(3), W.WinogradGeometry)
    pooled = m.ops[0].steps[-1]
    assert (type(pooled.geometry(3)).__name__ == "ShiftPoolGeometry") == use_shifts


def test_fast_path_runs_inside_blocks():
    m = Model(Spec.from_dict(_a("f", 2, 8, 8, GRAD_CASES["pool_inside"][1])))
    block = m.ops[0]
    assert type(block.steps[0]).__name__ == "ConvActPool"  # not silently skipped inside the block
    assert len(block.steps) == 2  # conv+relu+pool fused, then Dropout


# --- format and fix-it messages ---------------------------------------------------------------------------
def test_round_trip_and_defaults():
    spec = Spec.from_dict(ARCHS["resnet_mini"])
    again = Spec.from_dict(json.loads(spec.to_json()))
    assert again == spec and again.to_json() == spec.to_json()
    minimal = Spec.from_dict(_a("m", 1, 8, 8, [{"type": "Residual", "layers": [_conv(1, 3)]}]))
    assert minimal.layers[0].to_config() == {"type": "Residual", "shortcut": "auto", "activation": "ReLU",
                                             "layers": [minimal.layers[0].inner[0].to_config()]}


@pytest.mark.parametrize("block, message", [
    (_res([_conv(4, 3), FL]), r"layer 0 \(Residual\): inner layer 1: Flatten cannot go inside a Residual block"),
    (_res([_d(4)]), "Dense cannot go inside .* move it after the block"),
    (_res([GAP]), "GlobalAvgPool2D cannot go inside"),
    (_res([SM]), "Softmax cannot go inside"),
    (_res([_res([_conv(2, 3)])]), "cannot hold another Residual block: put the blocks one after the other"),
    (_res([_conv(0, 3)]), r'inner layer 0 \(Conv2D\): field "filters" must be a positive integer'),
    (_res([_conv(2, 3)], shortcut="sometimes"), 'field "shortcut" must be one of "auto", "identity", "projection"'),
    (_res([_conv(2, 3)], activation="Softmax"), 'field "activation" must be one of "ReLU", .*null'),
    ({"type": "Residual", "layers": [], "size": 3}, 'unknown field "size"'),
    ({"type": "Residual", "layers": {"type": "ReLU"}}, 'field "layers" must be a list'),
    ({"type": "Residual", "layers": [3]}, "inner layer 0: a layer must be a JSON object, got 3"),
    ({"type": "Residual", "layers": [{"filters": 2}]}, 'inner layer 0: missing required field "type"'),
    ({"type": "Residual", "layers": [{"type": "Conv3D"}]},
     r"inner layer 0: unknown layer type 'Conv3D' \(allowed in a block: Conv2D, MaxPool2D, AvgPool2D, ReLU, "
     r"LeakyReLU, Sigmoid, Tanh, Dropout, BatchNorm2D\)"),
])
def test_format_errors(block, message):
    with pytest.raises(SpecError, match=message):
        Spec.from_dict(_a("bad", 1, 8, 8, [block]))


@pytest.mark.parametrize("shape, layers, message", [
    ((1, 8, 8), [_res([])], "the block is empty: drop layers into it, or delete it"),
    ((4, 8, 8), [_res([_conv(8, 3)], shortcut="identity")],
     r'shortcut "identity" needs the inner layers to keep the 4x8x8 shape but they give 8x8x8: set "shortcut" '
     r'to "auto"'),
    ((1, 8, 8), [_res([_conv(2, 3, 1, 2)])], "grow the maps from 8x8 to 10x10.*use less padding"),
    ((1, 8, 8), [_res([_conv(2, [3, 1], 1, [0, 2])])],
     r"the inner layers make the maps wider \(8x8 to 6x12\), and a shortcut can only keep or shrink"),
    ((1, 6, 6), [_res([_conv(2, 3, 1, "valid")])], r"no 1x1 shortcut maps 6x6 onto the inner layers' 4x4"),
    ((1, 4, 4), [_res([_conv(2, 3), _conv(2, 7, 1, "valid")])], r"inner layer 1 \(Conv2D\): kernel 7x7 is larger"),
    ((8,), [], None),
])
def test_shape_problems_have_fixes(shape, layers, message):
    if message is None:  # a block after Flatten
        spec = Spec.from_dict(_a("s", 1, 4, 4, [FL, _res([_conv(2, 3)])]))
        assert "needs channels x height x width maps" in infer(spec).layers[1].error
        return
    inf = infer(Spec.from_dict(_a("s", *shape, layers)))
    assert not inf.valid
    import re
    assert re.search(message, inf.layers[0].error), inf.layers[0].error


def test_inner_rows_keep_their_shapes_when_a_later_one_breaks():
    inf = infer(Spec.from_dict(_a("s", 1, 4, 4, [_res([_conv(2, 3), _conv(2, 7, 1, "valid"), R])])))
    inner = inf.layers[0].inner
    assert inner[0].output_shape == (2, 4, 4) and inner[1].error and "inner layer 1" in inner[2].error


def test_summary_has_indented_inner_rows_and_json():
    spec = Spec.from_dict(ARCHS["projection_stride2"])
    text = summary_table(spec)
    assert "layers.1 (Residual)" in text
    assert "  └ layers.0 (Conv2D)         (None, 16, 8, 8)           1,168" in text
    assert "  └ shortcut (Conv2D)" in text
    lines = text.splitlines()
    assert lines[2].split() == ["Layer", "(type)", "Output", "Shape", "Param", "#", "MACs"]
    rows = infer(spec).layers[1]
    for j, row in enumerate([*rows.inner, rows.side["shortcut"]]):  # every inner row has its own MACs
        name = f"layers.{j}" if j < len(rows.inner) else "shortcut"
        line = next(t for t in lines if t.startswith(f"  └ {name} ("))
        assert line.split()[-2:] == [f"{row.params:,}", f"{row.macs:,}"], line
    assert next(t for t in lines if t.startswith("layers.1 (Residual)")).endswith(f"{rows.macs:,}")
    assert rows.inner[0].macs == 16 * 8 * 8 * 8 * 9 and rows.side["shortcut"].macs == 16 * 8 * 8 * 8
    doc = infer(spec).to_json()
    block = doc["layers"][1]
    assert [r["type"] for r in block["layers"]] == ["Conv2D", "BatchNorm2D", "ReLU", "Conv2D", "BatchNorm2D"]
    assert block["shortcut"]["params"] == 16 * 8 + 16
    assert "layers" not in doc["layers"][0]  # plain rows unchanged
    assert doc["macs"] == sum(r["macs"] for r in doc["layers"])
    inner_macs = sum(r["macs"] for r in block["layers"]) + block["shortcut"]["macs"]
    assert block["macs"] == inner_macs
    # inner rows carry a top-level row's keys: an inner BatchNorm's running statistics are non-trainable
    assert set(block["layers"][1]) == set(doc["layers"][0]) - {"layers", "shortcut"}
    assert (block["layers"][1]["trainable"], block["layers"][1]["non_trainable"]) == (32, 32)
    assert sum(r["trainable"] for r in block["layers"]) + block["shortcut"]["trainable"] == block["trainable"]


def test_receptive_field_goes_through_the_block():
    inf = infer(Spec.from_dict(_a("r", 1, 16, 16, [_res([_conv(2, 3), _conv(2, 3, 2)]), _conv(2, 3)])))
    assert inf.layers[0].receptive_field == (5, 5) and inf.layers[0].jump == (2, 2)
    assert inf.layers[0].inner[0].receptive_field == (3, 3)
    assert inf.layers[1].receptive_field == (9, 9)


# --- training -----------------------------------------------------------------------------------------------
def test_two_processes_train_exactly_like_one():
    from engine import parallel
    from engine.optimizers import make_optimizer

    arch = _a("p", 1, 12, 12, [_conv(4, 3), R, _res([_conv(4, 3), R, {"type": "Dropout", "rate": 0.3}, _conv(4, 3)]),
                               _res([_conv(6, 3, 2, bias=False), BN, R]), GAP, _d(3)])
    spec = Spec.from_dict(arch)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, 1, 12, 12)).astype(np.float32)
    y = rng.integers(0, 3, 24)
    results = []
    for workers in (1, 2):
        m = Model(spec, seed=1)
        if workers == 2:
            note = parallel.enable_workers(m, 2)
            assert note is None and m.workers == 2, note
        opt = make_optimizer("adam", m, lr=1e-2)
        try:
            losses = [m.train_step(x, y, opt)[0] for _ in range(3)]
        finally:
            m.close()
        results.append((losses, m.state_dict()))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5)
    # BatchNorm inside a block uses the whole batch's statistics. (Its convolution has no bias: a bias
    # before BatchNorm has a zero gradient whose rounding noise Adam would turn into full-size steps.)
    for k, v in results[0][1].items():
        np.testing.assert_allclose(v, results[1][1][k], rtol=1e-4, atol=1e-6)
    assert "layers.3.layers.1.running_var" in results[1][1]


def test_saliency_gradients_go_through_blocks():
    """score_gradients (inference mode: BatchNorm on running statistics) against finite differences."""
    m = Model(Spec.from_dict(ARCHS["projection_stride2"]), seed=0, dtype=np.float64)
    state = m.state_dict()
    rng = np.random.default_rng(0)
    for k in state:
        if k.endswith("running_var"):
            state[k] = 1 + rng.uniform(0, 1, state[k].shape)
        elif k.endswith("running_mean"):
            state[k] = rng.normal(0, 0.2, state[k].shape)
    m.load_state_dict(state)
    x = rng.normal(size=(1, 3, 16, 16))
    _, dx, act, dact = m.score_gradients(x, np.array([3]), layer=1)
    assert act.shape == dact.shape == (1, 16, 8, 8)
    for i in [(0, 0, 3, 4), (0, 2, 7, 7), (0, 1, 15, 0)]:
        xp, xm = x.copy(), x.copy()
        xp[i] += 1e-6
        xm[i] -= 1e-6
        num = (m.logits(xp)[0, 3] - m.logits(xm)[0, 3]) / 2e-6
        assert abs(num - dx[i]) < 1e-7 * max(1.0, abs(num))


def test_explanation_names_the_activation_or_its_absence():
    spec = Spec.from_dict(ARCHS["forced_projection_odd_stride"])
    inf = infer(spec)
    none, relu = (" ".join(spec.layers[i].explain(inf.layers[i], spec, i)) for i in (0, 1))
    assert "Output = <tt>F(x) + shortcut(x)</tt>, with no activation after the addition" in none
    assert "nothing" not in none
    assert "Output = ReLU applied to <tt>F(x) + shortcut(x)</tt>" in relu
    # a projection that keeps the shape ("projection" asked for) still says what it costs
    assert "1x1 convolution with stride 2x3" in none and "6 x 2 + 6 = 18</tt> parameters" in none
    keep = Spec.from_dict(_a("k", 1, 8, 8, [_res([_conv(1, 3)], shortcut="projection")]))
    text = " ".join(keep.layers[0].explain(infer(keep).layers[0], keep, 0))
    assert 'F keeps the 1x8x8 shape but "projection" asks for a learned shortcut: a 1x1 convolution' in text
    assert "the layer inside computes F;" in text and "the 2 layers inside compute F;" in none
