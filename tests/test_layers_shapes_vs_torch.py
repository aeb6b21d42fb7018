"""Output shapes, parameter counts and a numeric forward/backward against figures PyTorch gave.

The expected numbers were produced once with torch 2.13.0 by benchmarks/make_torch_reference.py
(run with the reference venv; it imports the architectures below) and are stored here, so these
tests do not need torch. Architectures cover strided "same" convolutions on odd sizes, even and
non-square kernels, explicit int/pair padding, "same" pools, BatchNorm, GlobalAvgPool and Dropout.
"""

from __future__ import annotations

import numpy as np
import pytest

from engine.model import Model
from engine.shapes import infer
from engine.spec import Spec


def _a(name, c, h, w, layers):
    return {"format": "cnn-designer/1", "name": name, "input": {"channels": c, "height": h, "width": w},
            "layers": layers}


def _conv(f, k, s=1, p="valid", bias=True):
    return {"type": "Conv2D", "filters": f, "kernel_size": k, "stride": s, "padding": p, "use_bias": bias}


def _pool(t, k, s=None, p="valid"):
    return {"type": t, "pool_size": k, "stride": s, "padding": p}


R, FL, SM = {"type": "ReLU"}, {"type": "Flatten"}, {"type": "Softmax"}


def _d(u, bias=True):
    return {"type": "Dense", "units": u, "use_bias": bias}


ARCHS = {
    "lenet5": _a("LeNet-5", 1, 28, 28, [
        _conv(6, 5, 1, "same"), R, _pool("MaxPool2D", 2), _conv(16, 5), R, _pool("MaxPool2D", 2), FL,
        _d(120), R, _d(84), R, _d(10), SM]),
    "mnist_cnn": _a("MNIST CNN", 1, 28, 28, [
        _conv(32, 3, 1, "same"), R, _pool("MaxPool2D", 2), _conv(64, 3, 1, "same"), R, _pool("MaxPool2D", 2), FL,
        _d(128), R, {"type": "Dropout", "rate": 0.25}, _d(10), SM]),
    "strided_same_odd": _a("strided same", 3, 33, 31, [
        _conv(8, 3, 2, "same"), R, _conv(16, [3, 5], [2, 3], "same"), R, _conv(4, 4, 3, "same"), FL, _d(10)]),
    "asymmetric_kernels_padding": _a("asym", 1, 20, 17, [
        _conv(5, [1, 7], 1, [0, 3]), {"type": "Tanh"}, _conv(6, [5, 2], [1, 2], [2, 1]), R,
        _pool("MaxPool2D", [3, 2], [2, 1]), FL, _d(3)]),
    "batchnorm_gap": _a("BN + GAP", 3, 32, 32, [
        _conv(16, 3, 1, "same"), {"type": "BatchNorm2D"}, R, _pool("MaxPool2D", 2), _conv(32, 3),
        {"type": "BatchNorm2D", "momentum": 0.01, "eps": 1e-3}, R, {"type": "GlobalAvgPool2D"}, _d(20),
        {"type": "BatchNorm1D"}, R, _d(10), SM]),
    "all_conv_gap": _a("all-conv", 3, 15, 15, [
        _conv(8, 3, 2, "same"), {"type": "LeakyReLU", "alpha": 0.1}, _conv(10, 1), {"type": "GlobalAvgPool2D"}, SM]),
    "same_pools": _a("same pools", 2, 13, 11, [
        _conv(4, 3, 1, "same"), _pool("AvgPool2D", 3, 2, "same"), _pool("MaxPool2D", 2, None, "same"),
        _pool("MaxPool2D", [2, 3], [1, 2], "same"), FL, _d(5)]),
    "vgg_like": _a("VGG-like", 3, 64, 64, [
        _conv(32, 3, 1, "same"), R, _conv(32, 3, 1, "same"), R, _pool("MaxPool2D", 2), _conv(64, 3, 1, "same"), R,
        _conv(64, 3, 1, "same"), R, _pool("MaxPool2D", 2), _conv(128, 3, 2, "same"), R,
        {"type": "GlobalAvgPool2D"}, _d(100), R, {"type": "Dropout"}, _d(10), SM]),
    "mlp": _a("MLP", 1, 28, 28, [FL, _d(256), R, {"type": "Dropout", "rate": 0.2}, _d(128), {"type": "Tanh"},
                                 _d(10), SM]),
    "binary": _a("binary", 1, 16, 16, [_conv(4, 5), {"type": "LeakyReLU"}, _pool("AvgPool2D", 2), FL, _d(1),
                                       {"type": "Sigmoid"}]),
    "no_bias_bn": _a("no-bias + BN", 3, 10, 10, [_conv(6, 3, 1, "same", bias=False), {"type": "BatchNorm2D"}, R,
                                                 _conv(12, [2, 4], [2, 1], "valid", bias=False), FL, _d(7, False)]),
    "even_kernel_same_stride": _a("even kernels", 1, 17, 19, [
        _conv(3, 2, 1, "same"), _conv(5, 4, 2, "same"), _conv(2, [6, 3], [3, 2], "same"), _pool("AvgPool2D", 2),
        FL, _d(4), SM]),
}

#: One net for a numeric forward/backward comparison with fixed weights (float64 on both sides).
NUMERIC_ARCH = _a("numeric", 2, 11, 9, [
    _conv(4, 3, 2, "same"), {"type": "BatchNorm2D"}, R, _conv(5, [2, 3], 1, "same"), {"type": "Tanh"},
    _pool("MaxPool2D", 2, None, "same"), _pool("AvgPool2D", [3, 2], 1, "same"), FL, _d(6),
    {"type": "BatchNorm1D"}, {"type": "LeakyReLU", "alpha": 0.1}, _d(3), SM])


# --- figures from PyTorch ------------------------------------------------------------------------------
TORCH = {
    "lenet5": {
        "shapes":
            [[6, 28, 28], [6, 28, 28], [6, 14, 14], [16, 10, 10], [16, 10, 10], [16, 5, 5], [400], [120], [120], [84],
            [84], [10], [10]],
        "trainable":
            [156, 0, 0, 2416, 0, 0, 0, 48120, 0, 10164, 0, 850, 0],
        "non_trainable":
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    },
    "mnist_cnn": {
        "shapes":
            [[32, 28, 28], [32, 28, 28], [32, 14, 14], [64, 14, 14], [64, 14, 14], [64, 7, 7], [3136], [128], [128],
            [128], [10], [10]],
        "trainable":
            [320, 0, 0, 18496, 0, 0, 0, 401536, 0, 0, 1290, 0],
        "non_trainable":
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    },
    "strided_same_odd": {
        "shapes":
            [[8, 17, 16], [8, 17, 16], [16, 9, 6], [16, 9, 6], [4, 3, 2], [24], [10]],
        "trainable":
            [224, 0, 1936, 0, 1028, 0, 250],
        "non_trainable":
            [0, 0, 0, 0, 0, 0, 0],
    },
    "asymmetric_kernels_padding": {
        "shapes":
            [[5, 20, 17], [5, 20, 17], [6, 20, 9], [6, 20, 9], [6, 9, 8], [432], [3]],
        "trainable":
            [40, 0, 306, 0, 0, 0, 1299],
        "non_trainable":
            [0, 0, 0, 0, 0, 0, 0],
    },
    "batchnorm_gap": {
        "shapes":
            [[16, 32, 32], [16, 32, 32], [16, 32, 32], [16, 16, 16], [32, 14, 14], [32, 14, 14], [32, 14, 14], [32],
            [20], [20], [20], [10], [10]],
        "trainable":
            [448, 32, 0, 0, 4640, 64, 0, 0, 660, 40, 0, 210, 0],
        "non_trainable":
            [0, 32, 0, 0, 0, 64, 0, 0, 0, 40, 0, 0, 0],
    },
    "all_conv_gap": {
        "shapes":
            [[8, 8, 8], [8, 8, 8], [10, 8, 8], [10], [10]],
        "trainable":
            [224, 0, 90, 0, 0],
        "non_trainable":
            [0, 0, 0, 0, 0],
    },
    "same_pools": {
        "shapes":
            [[4, 13, 11], [4, 7, 6], [4, 4, 3], [4, 4, 2], [32], [5]],
        "trainable":
            [76, 0, 0, 0, 0, 165],
        "non_trainable":
            [0, 0, 0, 0, 0, 0],
    },
    "vgg_like": {
        "shapes":
            [[32, 64, 64], [32, 64, 64], [32, 64, 64], [32, 64, 64], [32, 32, 32], [64, 32, 32], [64, 32, 32], [64, 32,
            32], [64, 32, 32], [64, 16, 16], [128, 8, 8], [128, 8, 8], [128], [100], [100], [100], [10], [10]],
        "trainable":
            [896, 0, 9248, 0, 0, 18496, 0, 36928, 0, 0, 73856, 0, 0, 12900, 0, 0, 1010, 0],
        "non_trainable":
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    },
    "mlp": {
        "shapes":
            [[784], [256], [256], [256], [128], [128], [10], [10]],
        "trainable":
            [0, 200960, 0, 0, 32896, 0, 1290, 0],
        "non_trainable":
            [0, 0, 0, 0, 0, 0, 0, 0],
    },
    "binary": {
        "shapes":
            [[4, 12, 12], [4, 12, 12], [4, 6, 6], [144], [1], [1]],
        "trainable":
            [104, 0, 0, 0, 145, 0],
        "non_trainable":
            [0, 0, 0, 0, 0, 0],
    },
    "no_bias_bn": {
        "shapes":
            [[6, 10, 10], [6, 10, 10], [6, 10, 10], [12, 5, 7], [420], [7]],
        "trainable":
            [162, 12, 0, 576, 0, 2940],
        "non_trainable":
            [0, 12, 0, 0, 0, 0],
    },
    "even_kernel_same_stride": {
        "shapes":
            [[3, 17, 19], [5, 9, 10], [2, 3, 5], [2, 1, 2], [4], [4], [4]],
        "trainable":
            [15, 245, 182, 0, 0, 20, 0],
        "non_trainable":
            [0, 0, 0, 0, 0, 0, 0],
    },
}

TORCH_NUMERIC = {"eval_output": [[0.3027605008602536, 0.3894862556073812, 0.3077532435323652], [0.3027293627982052,
    0.38973394009631424, 0.30753669710548054], [0.30268000937158235, 0.3896332139478883, 0.3076867766805293]],
    "train_loss": 1.14137848145421, "labels": [0, 1, 2], "input_grad_sum_abs": 25.454375533825683,
    "input_grad_first": [0.0029267233502668797, 0.004328311676695719, 0.001874064628969641,
    0.002627791932245423, -0.0005071650057283315, -0.00028835285786996617], "grads": {"layers.0.weight":
    [4.6318470832471546, [0.1238154071333391, 0.08221425670083593, 0.09765890703991259, -0.03500127915145407]],
    "layers.0.bias": [2.38524477946811e-16, [-5.551115123125783e-17, 1.1102230246251565e-16,
    -2.6020852139652106e-18, 6.938893903907228e-17]], "layers.1.weight": [1.5145929866503625,
    [0.010029610614446762, -0.4047311362799817, -0.6298723610794689, 0.4699598786764652]], "layers.1.bias":
    [1.1254261982529452, [-0.1478260405488908, -0.5923841358659153, -0.24003223453030315, 0.14518378730783588]],
    "layers.3.weight": [4.402231012335241, [0.006059115115894555, 0.2305072191776382, -0.06470222630672479,
    -0.00026934993300981036]], "layers.3.bias": [0.08280957950938526, [-0.0378278038218787, 0.02696598309957482,
    0.00048291681429962763, 0.014717596566830419]], "layers.8.weight": [3.75868432074207,
    [-0.004338853365922475, -0.006805504857465593, -0.00509336912549822, -0.0015747851368101875]],
    "layers.8.bias": [7.993605777301127e-15, [0.0, 0.0, 5.995204332975845e-15, 8.881784197001252e-16]],
    "layers.9.weight": [0.34342945389382906, [-0.011352346409249809, -0.1610964982393688, -0.06389862730701552,
    -0.05311488940364105]], "layers.9.bias": [0.2134594789952045, [-0.0029645332618859436, -0.02449171832219625,
    0.07786270122104483, 0.047511042938017764]], "layers.11.weight": [0.5513991647817689,
    [-0.003893793693142784, -0.0027976670861151586, 0.06528097464406123, 0.09583545011041758]],
    "layers.11.bias": [0.12729428682390326, [-0.048614965911054034, 0.0636471434119516,
    -0.015032177500897609]]}, "running": {"layers.1.running_mean": [0.037858351330363325, -0.12398356996674494,
    -0.2276334146639615, -0.22434773498651517], "layers.1.running_var": [1.1154509909100139, 1.180853690662131,
    1.119278027884596, 0.9595709066317681], "layers.9.running_mean": [0.09980122953763546, 0.21857422023760958,
    0.23578313206579452, 0.14332040003532795], "layers.9.running_var": [1.1674648156684067, 1.1283537309290828,
    0.9818462291467625, 1.003166609516525]}}


@pytest.mark.parametrize("name", list(ARCHS))
def test_shapes_and_params_match_torch(name):
    spec = Spec.from_dict(ARCHS[name])
    inf = infer(spec)
    assert inf.valid, inf.error_message
    want = TORCH[name]
    got_shapes = [list(i.output_shape) for i in inf.layers]
    # torch has no layer for our Softmax-free logits, so shapes compare one to one
    assert got_shapes == want["shapes"]
    assert [i.trainable for i in inf.layers] == want["trainable"]
    assert [i.non_trainable for i in inf.layers] == want["non_trainable"]
    m = Model(spec, seed=0)
    assert m.num_parameters == sum(want["trainable"])
    assert sum(v.size for v in m.state_dict().values()) == sum(want["trainable"]) + sum(want["non_trainable"])
    x = np.zeros((2, *spec.input_shape), np.float32)
    assert [list(a.shape[1:]) for a in m.activations(x)] == want["shapes"]
    assert list(m.forward(x, training=True).shape[1:]) == want["shapes"][-1]


def test_lenet5_has_61706_parameters():
    assert infer(Spec.from_dict(ARCHS["lenet5"])).total_params == 61706


def det_weights(shape, k):
    n = int(np.prod(shape))
    return (0.3 * np.sin(0.7 * np.arange(n) + k)).reshape(shape)


def numeric_model(arch: dict = NUMERIC_ARCH, fuse: bool = True) -> tuple[Model, np.ndarray]:
    """float64 model with the deterministic weights the torch reference uses, and its input."""
    spec = Spec.from_dict(arch)
    m = Model(spec, seed=0, dtype=np.float64, fuse=fuse)
    state = m.state_dict()
    for k, name in enumerate(sorted(state)):
        v = det_weights(state[name].shape, k)
        state[name] = 1.0 + np.abs(v) if name.endswith("running_var") else v
    m.load_state_dict(state)
    x = det_weights((3, *spec.input_shape), 99) * 3
    return m, x


def test_forward_matches_torch_numbers():
    m, x = numeric_model()
    np.testing.assert_allclose(m.forward(x), TORCH_NUMERIC["eval_output"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(m.predict_proba(x), TORCH_NUMERIC["eval_output"], rtol=1e-10, atol=1e-12)


def test_training_step_matches_torch_numbers():
    """Batch statistics, running-statistics update, loss, input and parameter gradients."""
    m, x = numeric_model()
    y = np.array(TORCH_NUMERIC["labels"])
    out = m.forward(x, training=True)
    m.backward(np.zeros_like(out))  # clear caches; the running stats are now updated once
    for name, first in TORCH_NUMERIC["running"].items():
        np.testing.assert_allclose(m.buffers()[name].reshape(-1)[:4], first, rtol=1e-10, atol=1e-12)

    m, x = numeric_model()
    logits = m._run(m._plan_train, m._to_internal(x), True)
    from engine.losses import softmax_cross_entropy

    losses, g = softmax_cross_entropy(logits, y)
    assert abs(losses.mean() - TORCH_NUMERIC["train_loss"]) < 1e-10
    dx = m._backprop(m._plan_train, g, True)
    dx = m._to_external(np.array(dx))
    assert abs(np.abs(dx).sum() - TORCH_NUMERIC["input_grad_sum_abs"]) < 1e-9
    np.testing.assert_allclose(dx.reshape(-1)[:6], TORCH_NUMERIC["input_grad_first"], rtol=1e-8, atol=1e-12)
    grads = m.gradients()
    for name, (sum_abs, first) in TORCH_NUMERIC["grads"].items():
        assert abs(np.abs(grads[name]).sum() - sum_abs) < 1e-9 * max(1.0, sum_abs), name
        np.testing.assert_allclose(grads[name].reshape(-1)[:4], first, rtol=1e-8, atol=1e-12)
