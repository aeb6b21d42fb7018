"""Random small architectures through every fast path at once: a differential test of their meeting points.

Each fast path (the compact gather or the tap shifts for stride-1 convolutions, Winograd from 8x8
output maps, 1x1 convolutions as one GEMM, the bias added into a fresh conv output, LeakyReLU on
ReLU's fused steps, BatchNorm -> ReLU -> MaxPool pooling the deviations, AvgPool's tiling backward,
workspaces reused from step to step) has its own unit tests; here they meet. A fixed list of seeds
draws valid `cnn-designer/1` designs from motifs (conv -> BN -> act -> pool, conv -> act -> pool,
BN -> 1x1 conv, residual blocks with and without 1x1 shortcuts, Tanh / Sigmoid / Dropout / pools,
odd non-square maps around the 8x8 Winograd rule, channel counts on both sides of 8), and every
design must satisfy:

1. float64: the fused plan and the layer-by-layer plan give the same outputs and gradients, and
   finite differences agree with backward() on a sample of inputs and parameters;
2. float32: a second training step of a model equals a fresh model's first step on that batch
   (nothing stale in a reused buffer);
3. float32: with every convolution's Winograd / gather switch forced either way, outputs and
   gradients equal the default's to float32 rounding (inference outputs too, also in check 1).

The last test checks that the seeds really reach the paths named above, so a change to the
generator or to a path's rule cannot quietly leave one out.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import test_gradients as TG
from test_gradients import make_spec

from engine.model import Model
from engine.shapes import infer

#: the designs every run checks; RANDOM_ARCHS=START:STOP draws others (a longer hunt: 0:1200 runs in
#: a few minutes). One of the first 1200 stops check 3 at a legitimate kink, not a wrong path: in
#: seed 566 a BatchNorm output 2.3e-7 from zero feeds a ReLU, so float32 rounding of the Winograd
#: and the direct convolution put it on different sides (in float64 the paths agree to 6e-16).
DEFAULT_SEEDS = range(100)
SEEDS = list(range(*map(int, os.environ["RANDOM_ARCHS"].split(":")))) if os.environ.get("RANDOM_ARCHS") \
    else list(DEFAULT_SEEDS)

ACTS = [{"type": "ReLU"}, {"type": "LeakyReLU", "alpha": 0.1}, {"type": "LeakyReLU", "alpha": 0.0},
        {"type": "LeakyReLU", "alpha": 1.5}, {"type": "Tanh"}, {"type": "Sigmoid"}]
MONOTONE = ACTS[:4]  # the activations the fused conv / BatchNorm steps take


def _conv(rng, filters=None, kernel=None, stride=None, padding=None):
    k = int(rng.choice([1, 3, 3, 3, 5])) if kernel is None else kernel
    pads = ["same", "same", "valid", int(rng.integers(0, 3))]
    return {"type": "Conv2D", "filters": int(rng.choice([4, 6, 8, 12, 16])) if filters is None else filters,
            "kernel_size": k, "stride": int(rng.choice([1, 1, 1, 2])) if stride is None else stride,
            "padding": pads[int(rng.integers(len(pads)))] if padding is None else padding,
            "use_bias": bool(rng.integers(2))}


def _pool(rng, kind=None, inside=False):
    kind = kind or str(rng.choice(["MaxPool2D", "AvgPool2D"]))
    size = int(rng.choice([2, 3]))
    stride = int(rng.choice([1, 2])) if size == 3 else 2
    padding = "same" if inside else str(rng.choice(["valid", "same"]))
    return {"type": kind, "pool_size": size, "stride": stride, "padding": padding}


def _choice(rng, items):
    return items[int(rng.integers(len(items)))]


def _residual(rng, channels: int):
    """A block; half of them keep the channels and the map size, so the shortcut is the identity."""
    keep = rng.random() < 0.5
    first = _conv(rng, kernel=3, stride=1 if keep else int(rng.choice([1, 2])), padding="same",
                  filters=channels if keep else None)
    inner = [first, {"type": "BatchNorm2D"}, _choice(rng, ACTS)]
    if rng.random() < 0.6:
        inner += [_conv(rng, filters=first["filters"], kernel=int(rng.choice([1, 3])), stride=1,
                        padding="same")]
        if rng.random() < 0.5:
            inner.append({"type": "BatchNorm2D"})
    if not keep and rng.random() < 0.3:
        inner.append(_pool(rng, inside=True))
    if rng.random() < 0.2:
        inner.append({"type": "Dropout", "rate": 0.3})
    return {"type": "Residual", "shortcut": _choice(rng, ["auto", "auto", "projection"]),
            "activation": _choice(rng, ["ReLU", "LeakyReLU", "Tanh", None]), "layers": inner}


def _motif(rng, channels: int) -> list[dict]:
    kind = int(rng.integers(8))
    if kind == 0:  # conv -> BatchNorm -> monotone act [-> max pool]: BatchNormReLU(Pool), or with the
        # activation before BatchNorm, conv -> act -> BatchNorm -> max pool: BatchNormPool
        conv_, act = _conv(rng), _choice(rng, MONOTONE)
        r = rng.random()
        if r < 0.2:
            return [conv_, act, {"type": "BatchNorm2D"}, _pool(rng, "MaxPool2D")]
        return [conv_, {"type": "BatchNorm2D"}, act] + ([_pool(rng, "MaxPool2D")] if r < 0.6 else [])
    if kind == 1:  # conv -> act -> max pool: ConvActPool
        return [_conv(rng), _choice(rng, MONOTONE), _pool(rng, "MaxPool2D")]
    if kind == 2:  # BatchNorm's (reused) output into a 1x1 convolution: one GEMM
        return [{"type": "BatchNorm2D"}, _choice(rng, ACTS), _conv(rng, kernel=1, padding="valid")]
    if kind == 3:
        return [_residual(rng, channels)]
    if kind == 4:  # a 3x3 stride-1 pair: a gather conv feeding a Winograd one (or the shifts)
        return [_conv(rng, kernel=3, stride=1, padding="same", filters=int(rng.choice([8, 12]))),
                _choice(rng, ACTS), _conv(rng, kernel=3, stride=1, filters=int(rng.choice([8, 16])))]
    if kind == 5:
        return [_conv(rng), _choice(rng, ACTS)]
    if kind == 6:
        return [_pool(rng)] + ([{"type": "Dropout", "rate": 0.25}] if rng.random() < 0.5 else [])
    return [_choice(rng, ACTS), _conv(rng)]


def random_design(seed: int):
    """(input shape, layers) of a valid design drawn from `seed`: 2-4 motifs (each kept if the maps
    stay at least 3x3), then a GlobalAvgPool2D or Flatten head with one or two Dense layers."""
    rng = np.random.default_rng(seed)
    big = rng.random() < 0.2  # stride-1 convolutions on maps this large take the tap shifts
    shape = (int(rng.choice([1, 3, 8, 10])), *(int(v) for v in rng.integers(*((22, 29) if big else (5, 21)), 2)))
    layers: list[dict] = []
    for _ in range(int(rng.integers(2, 5))):
        for _attempt in range(10):
            channels = infer(make_spec(shape, layers + [{"type": "ReLU"}])).output_shape[0]
            candidate = layers + _motif(rng, channels)
            inf = infer(make_spec(shape, candidate + [{"type": "Flatten"}]))
            if inf.valid and min(inf.layers[len(candidate) - 1].output_shape[1:]) >= 3:
                layers = candidate
                break
    # Flatten only on small maps: a Dense summing thousands of inputs leaves the float64 loss
    # with more rounding than finite differences can see through (and is no small design)
    flat = np.prod(infer(make_spec(shape, layers + [{"type": "Flatten"}])).output_shape) <= 1500
    head = [{"type": "Flatten"} if flat and rng.random() < 0.5 else {"type": "GlobalAvgPool2D"}]
    if rng.random() < 0.4:
        head += [{"type": "Dense", "units": 6}, _choice(rng, ACTS)]
    head.append({"type": "Dense", "units": int(rng.choice([3, 5])), "use_bias": bool(rng.integers(2))})
    return shape, layers + head


def _negative_scale(seed: int) -> bool:
    """Every fourth design gives one channel of each BatchNorm a negative scale: then a fused
    BatchNorm -> ReLU -> MaxPool cannot pool before the scale (its other path)."""
    return seed % 4 == 3


def _model(spec, seed: int, dtype=np.float32, fuse: bool = True, noise: bool = False) -> Model:
    m = Model(spec, seed=seed, dtype=dtype, fuse=fuse)
    if noise:  # away from BatchNorm's defaults so gamma/beta gradients are generic
        m.flat_params += np.random.default_rng(seed).normal(0, 0.1, m.flat_params.shape).astype(dtype)
    if _negative_scale(seed):
        TG._negative_gamma(m)
    return m


def _force(m: Model, winograd, gather) -> None:
    for op in (o for top in m.ops for o in top.walk()):
        if hasattr(op, "winograd"):
            op.winograd, op.gather = winograd, gather


def _inputs(spec, n, dtype, seed):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, *spec.input_shape)).astype(dtype)


def _step(m: Model, x: np.ndarray, dy_seed: int, drop_seed: int = 7):
    """Forward + backward in training mode with a fixed dropout mask and a fixed output gradient."""
    m.set_dropout_seed(drop_seed)
    out = m.forward(x, training=True)
    dy = np.random.default_rng(dy_seed).normal(size=out.shape).astype(m.dtype)
    dx = m.backward(dy)
    return out, dx, m.flat_grads.copy()


def _close(got, want, scale_tol: float, what: str) -> None:
    for name, a, b in zip(("output", "input gradient", "parameter gradients"), got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=scale_tol * max(float(np.abs(b).max()), 1e-30),
                                   err_msg=f"{what}: {name}")


@pytest.mark.parametrize("seed", SEEDS)
def test_fused_equals_layerwise_and_finite_differences_float64(seed):
    shape, layers = random_design(seed)
    spec = make_spec(shape, layers)
    fused, plain = (_model(spec, seed, np.float64, fuse, noise=True) for fuse in (True, False))
    x = _inputs(spec, 3, np.float64, seed)
    _close(_step(fused, x, seed), _step(plain, x, seed), 1e-10, f"fused vs layer by layer, seed {seed}")
    x2 = _inputs(spec, 2, np.float64, seed + 1)  # inference: the running statistics, no caches
    np.testing.assert_allclose(fused.forward(x2), plain.forward(x2), rtol=1e-10, atol=1e-12)
    finite_differences(spec, seed)


def finite_differences(spec, seed: int, batch: int = 3, per_array: int = 6) -> None:
    """Central differences of sum(output * R) against backward() on `per_array` entries of the
    input and of every parameter, each entry at steps 1e-5, 1e-6, 1e-7, 1e-8 in turn until one
    agrees within test_gradients' TOL. One step fits no random net: on these deeper ones (BatchNorm, sums
    over hundreds of terms) the float64 loss carries ~1e-14 of rounding, so at 1e-6 gradients near
    rel_err's 1e-3 floor miss by up to 5e-6 (their error measured at steps 1e-4 .. 1e-7 grows
    tenfold per tenfold smaller step: rounding, not curvature), while a first layer's weight moves
    thousands of pre-activations and about one design in a hundred has one within 1e-5 or even
    1e-6 of a ReLU's or a max-pool's kink (before the negative scales, seeds 407, 413, 672, 762,
    772, 982: the loss's slope jumps between 1e-7 and 1e-6 from the point; now seed 71: between
    1e-8 and 1e-7; backward() gives the slope on the near side). A wrong gradient misses at every
    step."""
    m = _model(spec, seed, np.float64, noise=True)
    rng = np.random.default_rng(seed + 1)
    x = rng.normal(0, 1, (batch, *spec.input_shape))
    r = rng.normal(0, 1, m.forward(x, training=True).shape)

    def loss() -> float:
        m.set_dropout_seed(123)
        return float(np.sum(m.forward(x, training=True) * r))

    m.set_dropout_seed(123)
    m.forward(x, training=True)
    grads = {"input": m.backward(r), **{k: v.copy() for k, v in m.gradients().items()}}
    for name, arr in {"input": x, **m.parameters()}.items():
        flat, analytic = arr.reshape(-1), grads[name].reshape(-1)
        for i in TG.sample_indices(flat.size, per_array, rng):
            errors = []
            for step in (1e-5, 1e-6, 1e-7, 1e-8):
                old = flat[i]
                flat[i] = old + step
                up = loss()
                flat[i] = old - step
                down = loss()
                flat[i] = old
                errors.append(TG.rel_err(np.array([(up - down) / (2 * step)]), analytic[i:i + 1]))
                if errors[-1] < TG.TOL:
                    break
            else:
                raise AssertionError(f"seed {seed}: d/d {name}[{i}] = {analytic[i]:.8g} by backward(), "
                                     f"relative errors of the differences {errors}")


@pytest.mark.parametrize("seed", SEEDS)
def test_second_training_step_equals_a_fresh_models_first_float32(seed):
    spec = make_spec(*random_design(seed))
    used, fresh = _model(spec, seed), _model(spec, seed)
    x1, x2 = _inputs(spec, 4, np.float32, seed), _inputs(spec, 4, np.float32, seed + 1000)
    _step(used, x1, seed)
    used.forward(x2)  # an inference pass in between uses the other workspaces
    _close(_step(used, x2, seed + 1), _step(fresh, x2, seed + 1), 1e-6, f"second step, seed {seed}")


@pytest.mark.parametrize("seed", SEEDS)
def test_forced_conv_paths_equal_the_default_float32(seed):
    spec = make_spec(*random_design(seed))
    x = _inputs(spec, 4, np.float32, seed)
    default = _model(spec, seed)
    want = _step(default, x, seed)
    want_inference = default.forward(x[:3])
    for winograd, gather in ((True, True), (True, False), (False, True), (False, False)):
        m = _model(spec, seed)
        _force(m, winograd, gather)
        what = f"winograd={winograd} gather={gather}, seed {seed}"
        _close(_step(m, x, seed), want, 5e-5, what)
        np.testing.assert_allclose(m.forward(x[:3]), want_inference, rtol=0,
                                   atol=5e-5 * float(np.abs(want_inference).max()), err_msg=f"{what}: inference")


def _all_steps(plan):
    return [s for step in plan for s in (step, *_all_steps(getattr(step, "steps", [])))]


def test_the_seeds_reach_every_fast_path_and_their_meeting_points():
    from engine.layers.batchnorm import BatchNormReLU, BatchNormReLUPool
    from engine.layers.conv2d import ConvActPool, ConvReLU

    seen: set[str] = set()
    for seed in DEFAULT_SEEDS:
        shape, layers = random_design(seed)
        m = Model(make_spec(shape, layers), seed=seed)
        steps = _all_steps(m._plan_train)
        kinds = {type(s).__name__ for s in steps}
        if _negative_scale(seed) and "BatchNormReLUPool" in kinds:
            seen.add("negative scale before a fused max pool")
        seen |= kinds
        convs = [o for top in m.ops for o in top.walk() if hasattr(o, "winograd")]
        for op in convs:
            g = op.geometry(4)
            if op.uses_spectral():
                seen.add("frequency domain")
            elif op.uses_winograd(True):
                seen.add("winograd" if op.kernel == (3, 3) else "winograd 5x5")
            elif g.pointwise:
                seen.add("pointwise")
            elif g.unit_stride:
                seen.add("shifts" if g.shift else "gather")
            elif g.phased:
                seen.add("phase planes")
            if (op.uses_winograd(True) or not (g.shift or g.phased)) and "bias" in op.params:
                seen.add("bias into fresh output")
        if any(op.uses_winograd(True) for op in convs) and any(
                not op.uses_winograd(True) and op.stride == (1, 1) and not op.geometry(4).shift for op in convs):
            seen.add("gather and winograd in one net")
        if any(isinstance(s, (ConvReLU, ConvActPool, BatchNormReLU, BatchNormReLUPool))
               and getattr(s, "relu", getattr(s, "act", None)).__class__.__name__ == "LeakyReLUOp" for s in steps):
            seen.add("leaky fused")
        res = [o for o in m.ops if type(o).__name__ == "ResidualOp"]
        if any(o.shortcut is not None and o.shortcut.geometry(4).pointwise for o in res):
            seen.add("1x1 shortcut")
        if any(o.shortcut is None for o in res):
            seen.add("identity shortcut")
    wanted = {"BatchNormReLU", "BatchNormReLUPool", "BatchNormPool", "ConvActPool", "ConvReLU", "AvgPoolOp",
              "MaxPoolOp", "DropoutOp",
              "TanhOp", "SigmoidOp", "ResidualOp", "winograd", "frequency domain", "pointwise", "shifts", "gather",
              "phase planes", "bias into fresh output", "gather and winograd in one net", "leaky fused", "1x1 shortcut",
              "identity shortcut", "negative scale before a fused max pool"}
    assert wanted <= seen, wanted - seen
