"""Finite-difference gradient checks, float64, for every layer type and padding/stride mode.

Each case is a tiny spec run through the real Model code (the same kernels that train in float32):
the scalar loss is sum(output * R) for a fixed random R, and both d(loss)/d(input) and
d(loss)/d(every parameter) from backward() are compared with central differences. Odd sizes,
non-square kernels and strides, "same" padding with the odd pixel, overlapping pools, BatchNorm in
training mode and Dropout with a fixed mask are all covered, each with and without the fused
conv -> pool -> bias -> activation path.
"""

from __future__ import annotations

import numpy as np
import pytest

from engine import functional as F
from engine.losses import binary_cross_entropy_with_logits, softmax_cross_entropy
from engine.model import Model
from engine.spec import Spec

EPS = 1e-6
TOL = 2e-6


def make_spec(input_shape, layers) -> Spec:
    c, h, w = input_shape
    return Spec.from_dict({"format": "cnn-designer/1", "name": "t",
                           "input": {"channels": c, "height": h, "width": w}, "layers": layers})


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b) / np.maximum(1e-3, np.abs(a) + np.abs(b))))


def sample_indices(size: int, k: int, rng) -> np.ndarray:
    return np.arange(size) if size <= k else rng.choice(size, k, replace=False)


def _steps(plan: list) -> list:
    """Every step of a plan, with the steps a block (Residual) runs inside it."""
    return [x for step in plan for x in (step, *_steps(getattr(step, "steps", [])))]


def check_model_gradients(spec: Spec, batch: int = 3, fuse: bool = True, max_checks: int = 25, seed: int = 0,
                          use_shifts: bool | None = None, chunk_images: int | None = None,
                          winograd: bool | None = None, gather: bool | None = None, prepare=None,
                          batch_inner: bool | None = None, rows: bool | None = None, spectral: bool | None = None):
    rng = np.random.default_rng(seed)
    m = Model(spec, seed=seed, dtype=np.float64, fuse=fuse)
    for op in (o for top in m.ops for o in top.walk()):  # inside blocks too
        if hasattr(op, "winograd"):
            op.winograd = winograd
            op.gather = gather
            op.batch_inner = batch_inner
            op.rows = rows
            op.spectral = spectral
    for step in _steps(m._plan_full):
        if hasattr(step, "use_shifts"):
            step.use_shifts = use_shifts
            if chunk_images:  # run the batch in chunks of this many images
                g1 = step.geometry(1)
                rows = g1.rows * g1.lq if hasattr(g1, "rows") else g1.k * g1.np * g1.lq
                step.chunk_floats = step.train_chunk_floats = rows * chunk_images
    # parameters away from BatchNorm's defaults so gamma/beta gradients are generic
    for arr in m.parameters().values():
        arr[...] += rng.normal(0, 0.1, arr.shape)
    if prepare is not None:  # e.g. a negative BatchNorm scale
        prepare(m)
    x = rng.normal(0, 1, (batch, *spec.input_shape))
    out_shape = m.forward(x, training=True).shape
    r = rng.normal(0, 1, out_shape)

    def loss(xv):
        m.set_dropout_seed(123)
        return float(np.sum(m.forward(xv, training=True) * r))

    m.set_dropout_seed(123)
    m.forward(x, training=True)
    dx = m.backward(r)
    grads = {k: v.copy() for k, v in m.gradients().items()}

    def compare(what: str, arr: np.ndarray, analytic: np.ndarray) -> None:
        """Central differences on a sample of `arr`'s entries (perturbed in place) vs `analytic`."""
        flat = arr.reshape(-1)
        num, ana = [], []
        for i in sample_indices(flat.size, max_checks, rng):
            old = flat[i]
            flat[i] = old + EPS
            lp = loss(x)
            flat[i] = old - EPS
            lm = loss(x)
            flat[i] = old
            num.append((lp - lm) / (2 * EPS))
            ana.append(analytic.reshape(-1)[i])
        assert rel_err(np.array(num), np.array(ana)) < TOL, (what, num, ana)

    compare("input", x, dx)
    for name, p in m.parameters().items():
        compare(name, p, grads[name])
    return m


def conv(filters, k, stride=1, padding="valid", use_bias=True):
    return {"type": "Conv2D", "filters": filters, "kernel_size": k, "stride": stride, "padding": padding,
            "use_bias": use_bias}


CONV_CASES = {
    "valid_3x3": ((2, 7, 9), conv(3, 3)),
    "same_3x3_odd": ((2, 7, 9), conv(3, 3, padding="same")),
    "same_even_kernel_4": ((2, 7, 8), conv(2, 4, padding="same")),
    "same_nonsquare_3x5_stride_2x3": ((2, 9, 11), conv(3, [3, 5], [2, 3], "same")),
    "same_stride2_odd": ((1, 9, 9), conv(2, 3, 2, "same")),
    "valid_2x3_stride2": ((2, 9, 10), conv(3, [2, 3], 2)),
    "int_padding_1": ((2, 6, 5), conv(2, 3, 1, 1)),
    "pair_padding_2x1_stride_2": ((2, 7, 6), conv(2, [3, 2], 2, [2, 1])),
    "no_bias_1x1": ((3, 5, 4), conv(4, 1, use_bias=False)),
    "pointwise_stride2_odd": ((3, 7, 9), conv(4, 1, 2)),
    "pointwise_stride_2x3": ((2, 7, 8), conv(3, 1, [2, 3], use_bias=False)),
    "one_by_one_padded": ((2, 5, 4), conv(3, 1, 1, 1)),
    "kernel_equals_input": ((2, 4, 5), conv(3, [4, 5])),
    "same_5x5_wide": ((3, 6, 9), conv(4, 5, padding="same")),
    "valid_5x5": ((2, 9, 8), conv(3, 5)),
    "pair_padding_2x1_kernel_3x2": ((2, 6, 7), conv(3, [3, 2], 1, [2, 1])),
    "padding_as_large_as_kernel": ((2, 5, 4), conv(2, 2, 1, 2)),
}


#: stride-1 layouts: (gather, batch_inner, rows) as ConvOp takes them, and for the kernel-row
#: lowering how its input gradient runs ("scatter" or "full": ConvGeometry.rows_scatter forced)
STRIDE1_LAYOUTS = {"default": (None, None, None, None), "gather": (True, False, False, None),
                   "batch_inner": (True, True, False, None), "shifts": (False, None, False, None),
                   "rows_scatter": (None, None, True, "scatter"), "rows_full": (None, None, True, "full")}


@pytest.mark.parametrize("layout", list(STRIDE1_LAYOUTS))
@pytest.mark.parametrize("name", list(CONV_CASES))
def test_conv2d_gradients(name, layout, monkeypatch):
    """By default and on each stride-1 layout forced (the compact gather, its input gradient in
    chunks of one image; the gather with the batch innermost; the tap shifts; the kernel-row
    lowering with its input gradient by scatter and as a full convolution)."""
    shape, layer = CONV_CASES[name]
    gather, batch_inner, rows, dx = STRIDE1_LAYOUTS[layout]
    monkeypatch.setattr(F, "_GATHER_DX_FLOATS", 1)
    if dx is not None:
        monkeypatch.setattr(F, "_ROWS_FULL_MIN_C", 10**9 if dx == "scatter" else 0)
        monkeypatch.setattr(F, "_ROWS_SCATTER_RATIO", 0 if dx == "scatter" else float("inf"))
    m = check_model_gradients(make_spec(shape, [layer]), gather=gather, batch_inner=batch_inner, rows=rows)
    g = m.ops[0].geometry(3)
    if rows and (g.sh, g.sw) == (1, 1) and not g.pointwise and g.kh > 1:
        # the lowering where the padding is less than the kernel (the full convolution's padding
        # kernel - 1 - pad must not be negative)
        assert g.by_rows is (name != "padding_as_large_as_kernel")
        if g.by_rows:
            assert g.rows_scatter is (dx == "scatter")
    elif gather is not None and (g.sh, g.sw) == (1, 1) and not g.pointwise:  # 1x1 unpadded: one GEMM
        assert g.shift is not gather and g.batch_inner is bool(batch_inner)


def test_pointwise_convolution_is_a_plain_product():
    """A 1x1 convolution without padding (bottlenecks, residual shortcuts) runs as one GEMM on the
    input's (strided) pixels: the same outputs and gradients as the definition, in float64."""
    rng = np.random.default_rng(0)
    for stride in (1, 2, (2, 3)):
        layer = conv(5, 1, stride, use_bias=False)
        m = Model(make_spec((4, 7, 8), [layer]), seed=1, dtype=np.float64)
        g = m.ops[0].geometry(3)
        assert g.pointwise and not g.shift and not g.phased
        x = rng.normal(size=(3, 4, 7, 8))
        w = m.ops[0].params["weight"][:, :, 0, 0]
        sh, sw = (stride, stride) if isinstance(stride, int) else stride
        ref = np.einsum("fc,nchw->nfhw", w, x[:, :, ::sh, ::sw])
        out = m.forward(x, training=True)
        np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)
        dy = rng.normal(size=out.shape)
        dx = m.backward(dy)
        dx_ref = np.zeros_like(x)
        dx_ref[:, :, ::sh, ::sw] = np.einsum("fc,nfhw->nchw", w, dy)
        np.testing.assert_allclose(dx, dx_ref, rtol=1e-12, atol=1e-12)
        dw_ref = np.einsum("nfhw,nchw->fc", dy, x[:, :, ::sh, ::sw])
        np.testing.assert_allclose(m.ops[0].grads["weight"][:, :, 0, 0], dw_ref, rtol=1e-12, atol=1e-12)
    assert not Model(make_spec((4, 7, 8), [conv(5, 1, 1, 1)])).ops[0].geometry(3).pointwise  # padded


def test_inference_gather_in_image_chunks_equals_the_training_forward(monkeypatch):
    """In inference the plain gather (RGB stems: strided, or stride 1 with a large kernel) builds its
    im2col per chunk of images and multiplies it while it is in cache: the same outputs as the
    training forward that keeps the whole matrix, to float32 rounding (BLAS may sum a narrower
    product in another order), with a short last chunk too."""
    rng = np.random.default_rng(0)
    cases = [((3, 23, 21), conv(4, 7, 2, "same")), ((3, 19, 17), conv(5, 11, 4)),
             ((3, 12, 13), conv(4, 5, padding="same"))]
    for floats in (1, 3 * 7 * 7 * 12 * 11 * 2, 10**9):  # one image per chunk, two, all at once
        monkeypatch.setattr(F, "_INFER_COLS_FLOATS", floats)
        for shape, layer in cases:
            m = Model(make_spec(shape, [layer]), seed=1)
            g = m.ops[0].geometry(5)
            assert not (g.shift or g.phased or g.pointwise or g.batch_inner)
            x = rng.normal(size=(5, *shape)).astype(np.float32)
            ref = m.forward(x, training=True)
            np.testing.assert_allclose(m.forward(x), ref, rtol=0, atol=1e-6 * float(np.abs(ref).max()))


def test_rgb_stems_run_on_phase_planes_once_their_im2col_outgrows_the_cache(monkeypatch):
    """A strided layer with fewer than 8 input channels (an RGB stem) runs on the phase planes
    once the plain gather's im2col would hold F._PHASED_MIN_COLS floats (photos from ~128x128 at 32
    images): float64 finite differences on that path (input gradient included), float32 training
    outputs and gradients equal to the plain gather's, and in inference the chunked plain gather
    (a fresh output) equal to the training forward."""
    cases = [((3, 11, 10), conv(4, 5, 2, "same")), ((3, 13, 12), conv(3, 7, 2, "same")), ((2, 9, 9), conv(2, 3, 2))]

    def phase_planes(m, on):  # the floor as the model's geometries are made (at its first forward)
        monkeypatch.setattr(F, "_PHASED_MIN_COLS", 0 if on else 10**12)

    for shape, layer in cases:
        spec = make_spec(shape, [layer, {"type": "ReLU"}])
        monkeypatch.setattr(F, "_PHASED_MIN_COLS", 0)
        check_model_gradients(spec, max_checks=15)
        on, off = _conv_switch_agrees_in_float32(spec, 3, phase_planes)
        assert on.ops[0].geometry(3).phased and not off.ops[0].geometry(3).phased
        assert not on.ops[0].geometry(3).grid_output(False)  # inference: the chunked gather
    monkeypatch.undo()
    assert Model(make_spec((3, 224, 224), [conv(16, 5, 2, "same")])).ops[0].geometry(32).phased
    assert Model(make_spec((3, 128, 128), [conv(32, 7, 2, "same")])).ops[0].geometry(32).phased
    assert not Model(make_spec((3, 64, 64), [conv(32, 7, 2, "same")])).ops[0].geometry(32).phased
    assert not Model(make_spec((3, 64, 64), [conv(32, 11, 4)])).ops[0].geometry(32).phased


def test_wide_stems_of_stride_3_and_more_train_on_patch_rows(monkeypatch):
    """An RGB stem with long kernel rows (kw x C >= 21) and strides >= 3 trains on patch rows
    (F._patch_train): float64 finite differences through it (input gradient included, padded and
    non-square cases, fused under a pool), the same float32 outputs and gradients as the per-tap
    gather it replaces, and the rule leaves stride-2 stems and narrow kernels alone."""
    cases = [((3, 19, 17), [conv(5, 11, 4)]),
             ((3, 23, 22), [conv(4, 7, 3, "same"), {"type": "ReLU"},
                            {"type": "MaxPool2D", "pool_size": 3, "stride": 2}]),
             ((4, 20, 21), [{"type": "Conv2D", "filters": 3, "kernel_size": [6, 8], "stride": [3, 4],
                             "padding": "same"}, {"type": "Tanh"}])]

    def patch_rows(m, on):  # read as the model makes its geometries (at its first forward)
        monkeypatch.setattr(F, "_PATCH_TRAIN_MIN_STRIDE", 3 if on else 10**9)

    for shape, layers in cases:
        spec = make_spec(shape, layers)
        check_model_gradients(spec, max_checks=15)
        on, off = _conv_switch_agrees_in_float32(spec, 3, patch_rows)
        assert on.ops[0].geometry(3).patches and not off.ops[0].geometry(3).patches
    monkeypatch.undo()
    assert Model(make_spec((3, 64, 64), [conv(32, 11, 4)])).ops[0].geometry(32).patches
    assert not Model(make_spec((3, 64, 64), [conv(32, 7, 2, "same")])).ops[0].geometry(32).patches
    assert not Model(make_spec((3, 64, 64), [conv(32, 5, 4)])).ops[0].geometry(32).patches  # 15-float rows
    assert not Model(make_spec((16, 64, 64), [conv(32, 11, 4)])).ops[0].geometry(32).patches


def test_patch_row_stems_train_in_chunks_of_images(monkeypatch):
    """A patch-row stem's training forward multiplies each chunk of images' rows as soon as they
    are copied (F._PATCH_TRAIN_CHUNK_FLOATS) into one buffer kept whole for the weight gradient:
    chunks of one image (a short last one included) pass float64 finite differences and give the
    float32 outputs and gradients of one chunk for the whole batch; by default a 9x9/3 stem at
    80x80 takes 3 images a chunk."""
    spec = make_spec((3, 23, 22), [conv(4, 7, 3, "same"), {"type": "ReLU"},
                                   {"type": "MaxPool2D", "pool_size": 3, "stride": 2}])
    calls = []
    real, budget = F._patch_rows, F._PATCH_TRAIN_CHUNK_FLOATS
    monkeypatch.setattr(F, "_patch_rows", lambda *a, **k: calls.append(k.get("per")) or real(*a, **k))
    monkeypatch.setattr(F, "_PATCH_TRAIN_CHUNK_FLOATS", 1)
    check_model_gradients(spec, max_checks=15)
    assert Model(spec).ops[0].geometry(3).patches and calls and set(calls) == {1}

    def chunks(m, one_image):
        monkeypatch.setattr(F, "_PATCH_TRAIN_CHUNK_FLOATS", 1 if one_image else 10**12)

    _conv_switch_agrees_in_float32(spec, 3, chunks)
    monkeypatch.setattr(F, "_PATCH_TRAIN_CHUNK_FLOATS", budget)
    calls.clear()
    m = Model(make_spec((3, 80, 80), [conv(32, 9, 3)]))
    m.forward(np.zeros((32, 3, 80, 80), np.float32), training=True)
    assert calls == [3]


def _conv_switch_agrees_in_float32(spec: Spec, batch: int, switch) -> list[Model]:
    """The first convolution's path `switch` ("winograd", "gather", ... : the op's attribute, or a
    function (model, on) that forces it another way) forced on and off gives the same training
    outputs, input and parameter gradients and inference outputs to float32 rounding. Returns the
    two models (on, off)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, *spec.input_shape)).astype(np.float32)
    dy = None
    results, models = [], []
    for on in (True, False):
        m = Model(spec, seed=3)
        if callable(switch):
            switch(m, on)
        else:
            setattr(m.ops[0], switch, on)
        out = m.forward(x, training=True)
        if dy is None:
            dy = rng.normal(size=out.shape).astype(np.float32)
        results.append((out, m.backward(dy), m.flat_grads.copy(), m.forward(x)))
        models.append(m)
    for a, b in zip(*results, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-5 * float(np.abs(b).max()))
    return models


def test_stride1_layouts_agree_in_float32_and_the_rule_picks_the_gather_on_small_maps():
    """The compact gather and the tap shifts give the same outputs and gradients to float32
    rounding; the default takes the gather where the padded grid has many more cells than outputs
    (5x5 "same" at 16x16: 1.56x) and the shifts where it has few (3x3 "same" at 32x32: 1.13x)."""
    from engine import winograd as W

    spec = make_spec((6, 16, 13), [conv(10, 5, padding="same"), {"type": "ReLU"}])
    _conv_switch_agrees_in_float32(spec, 4, "gather")
    assert not Model(spec).ops[0].geometry(4).shift and not Model(spec).ops[0].geometry(4).batch_inner
    # on small maps the gather runs with the batch innermost; forced off it is the plain gather
    small_spec = make_spec((6, 7, 8), [conv(10, 3, padding="same"), {"type": "ReLU"}])
    _conv_switch_agrees_in_float32(small_spec, 5, "batch_inner")
    assert Model(small_spec).ops[0].geometry(5).batch_inner
    assert Model(make_spec((3, 32, 32), [conv(8, 3, padding="same")])).ops[0].geometry(4).shift
    # Winograd from 8x8 output maps on (where the frequency domain does not take the layer: from 6x6
    # to 12x12, engine.spectral.applies); below, the direct path (the gather with the batch innermost)
    small = Model(make_spec((16, 5, 8), [conv(16, 3, padding="same")])).ops[0]
    assert not small.uses_winograd(True) and not small.uses_spectral()
    assert not small.geometry(2).shift and small.geometry(2).batch_inner
    assert Model(make_spec((64, 14, 15), [conv(16, 3, padding="same")])).ops[0].uses_winograd(True)
    assert W.applies((3, 3), (1, 1), 16, 16, out_hw=(8, 8)) and not W.applies((3, 3), (1, 1), 16, 16, out_hw=(7, 30))


def test_rgb_3x3_stem_trains_on_the_gather_and_infers_on_the_shifts():
    """A 3x3 stride-1 stem on 3 channels trains on the compact gather (its backward pass is the
    weight gradient alone, cheaper on the outputs-only columns) and infers on the tap shifts, each
    from its own cached geometry; both give the same outputs and gradients as the forced paths."""
    spec = make_spec((3, 32, 30), [conv(8, 3, padding="same"), {"type": "ReLU"}, {"type": "Flatten"},
                                   {"type": "Dense", "units": 4}])
    op = Model(spec).ops[0]
    assert not op.geometry(5, training=True).shift and op.geometry(5, training=False).shift
    assert op.geometry(5).shift  # the training entry does not replace the inference one
    forced = Model(make_spec((3, 32, 30), [conv(8, 3, padding="same")])).ops[0]
    forced.gather = False
    assert forced.geometry(5, training=True).shift  # a forced path wins
    # grey stems too; not 5x5 (the grid rule gathers those anyway) nor 8 channels (input gradient)
    assert not Model(make_spec((1, 28, 28), [conv(8, 3, padding="same")])).ops[0].geometry(2, True).shift
    eight = Model(make_spec((8, 28, 28), [conv(8, 3, padding="same")])).ops[0]
    assert eight.geometry(2, True) is eight.geometry(2, False)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 3, 32, 30)).astype(np.float64)
    y = rng.integers(0, 4, 5)
    grads = []
    for gather in (None, True, False):
        m = Model(spec, seed=1, dtype=np.float64)
        m.ops[0].gather = gather
        m.loss_and_grad(x, y)
        grads.append((m.flat_grads.copy(), m.forward(x)))
    for g, out in grads[1:]:
        np.testing.assert_allclose(grads[0][0], g, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(grads[0][1], out, rtol=1e-10, atol=1e-12)


def test_kernel_row_lowering_agrees_in_float32_and_the_rule_picks_it_for_5x5_on_small_maps():
    """The kernel-row lowering gives the direct path's outputs and gradients to float32 rounding
    (valid: its input gradient by scatter; "same" with 64 channels: as a full convolution), and
    runs by default for kernels of 5x5 and up on maps up to 14x14 with 6 or more input channels:
    not for 3x3, RGB inputs or larger maps, and 5x5 from 14x14 with 8 channels is Winograd's."""
    from engine import winograd as W

    valid = make_spec((8, 14, 13), [conv(16, 5), {"type": "ReLU"}])
    _conv_switch_agrees_in_float32(valid, 4, "rows")
    g = Model(valid).ops[0].geometry(4)
    assert g.by_rows and g.rows_scatter
    wide = make_spec((64, 6, 7), [conv(8, 5, padding="same")])
    _conv_switch_agrees_in_float32(wide, 3, "rows")
    g = Model(wide).ops[0].geometry(3)
    assert g.by_rows and not g.rows_scatter and g.full_conv.by_rows

    def path(c, k, hw, spectral=None):
        op = Model(make_spec((c, hw, hw), [conv(16, k, padding="same")])).ops[0]
        op.spectral = spectral
        return ("spectral" if op.uses_spectral() else "winograd" if op.uses_winograd(True)
                else "rows" if op.geometry(2).by_rows else "direct")

    # with 8 or more channels the frequency domain takes 5x5 up to 56x56 (96x96 from 16 channels)
    # and 7x7 (engine.spectral); without it, the lowering takes 5x5 below 14x14 and Winograd from there
    assert [path(16, 5, hw) for hw in (4, 14, 20, 96, 97)] == ["spectral"] * 4 + ["winograd"]
    assert [path(8, 5, hw) for hw in (56, 57)] == ["spectral", "winograd"]
    assert [path(16, 5, hw, False) for hw in (4, 10, 13, 14, 20)] == ["rows", "rows", "rows", "winograd", "winograd"]
    paths = [path(6, 5, 14), path(6, 5, 15), path(3, 5, 10), path(16, 3, 10), path(16, 3, 18), path(16, 7, 12, False)]
    assert paths == ["rows", "direct", "direct", "spectral", "winograd", "rows"]
    assert not W.applies((5, 5), (1, 1), 16, 16, out_hw=(13, 13))


# strided convolutions with >= 8 input channels run on the input's phase planes (ConvGeometry.phased)
PHASED_CASES = {
    "same_stride2_odd": ((8, 9, 9), conv(2, 3, 2, "same")),
    "same_stride2_even": ((8, 8, 10), conv(3, 3, 2, "same", use_bias=False)),
    "same_5x5_stride2": ((8, 9, 8), conv(2, 5, 2, "same")),
    "same_nonsquare_3x5_stride_2x3": ((8, 9, 11), conv(3, [3, 5], [2, 3], "same")),
    "valid_2x3_stride2": ((9, 9, 10), conv(3, [2, 3], 2)),
    "pair_padding_2x1_stride_2": ((8, 7, 6), conv(2, [3, 2], 2, [2, 1])),
    "stride3_valid_leftover": ((8, 8, 7), conv(2, 2, 3)),
    "stride_larger_than_kernel": ((8, 7, 7), conv(2, 2, 3, "same")),  # 1x1: a plain GEMM (pointwise)
}


@pytest.mark.parametrize("name", list(PHASED_CASES))
def test_strided_conv_on_phase_planes_gradients(name, monkeypatch):
    """Float64 finite differences of the phase-plane path, in column chunks too small for one
    chunk (every chunk boundary crossed), and its float32 outputs and gradients equal to the
    plain gather's."""
    shape, layer = PHASED_CASES[name]
    spec = make_spec(shape, [layer])
    m = Model(spec)
    m.ops[0].batch_inner = False  # on these small maps the default is the batch innermost gather
    assert m.ops[0].geometry(2).phased
    monkeypatch.setattr(F, "_DX_CHUNK_MIN", 7)
    monkeypatch.setattr(F, "_DX_CHUNK_FLOATS", 1)
    monkeypatch.setattr(F, "_COLS_CHUNK_FLOATS", 1)
    check_model_gradients(spec, max_checks=15, batch_inner=False)
    monkeypatch.undo()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, *shape)).astype(np.float32)
    results = []
    for phased in (True, False):
        m = Model(spec, seed=1)
        m.ops[0].batch_inner = False
        g = m.ops[0].geometry(3)
        g.phased = phased
        out = m.forward(x, training=True)
        assert m.ops[0].cache[0].shape[1] == (g.qgrid if phased else 3 * g.oh * g.ow)
        dy = np.random.default_rng(1).normal(size=out.shape).astype(np.float32)
        results.append((out, m.backward(dy), m.flat_grads.copy()))
    for a, b in zip(*results, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-5 * float(np.abs(b).max()))


@pytest.mark.parametrize("name", list(PHASED_CASES))
def test_strided_conv_with_the_batch_innermost_gradients(name, monkeypatch):
    """A strided convolution with >= 8 input channels on output rows of up to 8 floats gathers its
    im2col with the batch innermost from the input's phase planes: float64 finite differences of
    that path (input gradient included) and its float32 results equal to the phase planes'."""
    shape, layer = PHASED_CASES[name]
    spec = make_spec(shape, [layer, {"type": "ReLU"}])
    g = Model(spec).ops[0].geometry(3)
    assert g.batch_inner and not g.phased
    check_model_gradients(spec, max_checks=15, batch_inner=True)
    on, off = _conv_switch_agrees_in_float32(spec, 3, "batch_inner")
    assert on.ops[0].geometry(3).batch_inner and off.ops[0].geometry(3).phased


def test_strided_conv_picks_the_batch_innermost_gather_on_short_output_rows():
    """The rule at the sizes it was measured on: >= 8 input channels and output rows of up to 8;
    RGB stems and wider outputs keep their paths."""
    def geometry(shape, layer):
        return Model(make_spec(shape, [layer])).ops[0].geometry(32)

    for shape, layer in [((128, 8, 8), conv(256, 4, 2, "same")), ((64, 16, 16), conv(128, 3, 2, "same")),
                         ((64, 15, 15), conv(128, 3, 2)), ((32, 8, 8), conv(64, 3, 2, "same"))]:
        g = geometry(shape, layer)
        assert g.batch_inner and not g.phased and g.nq == 4
    assert geometry((32, 32, 32), conv(64, 3, 2, "same")).phased  # 16-float rows
    assert not geometry((3, 16, 16), conv(16, 3, 2, "same")).batch_inner  # an RGB stem
    # up to 16-float rows where the planes hold >= 1.2 cells per output: 5x5/2 from 32x32 (18 x 18
    # plane cells for 16 x 16 outputs), not 4x4/2 (17 x 17) nor 5x5/2 onto 24-float rows
    g = geometry((32, 32, 32), conv(64, 5, 2, "same"))
    assert g.batch_inner and not g.phased
    assert geometry((32, 32, 32), conv(64, 4, 2, "same")).phased
    assert geometry((32, 48, 48), conv(64, 5, 2, "same")).phased


def test_wide_strided_kernel_gathers_with_the_batch_innermost_onto_longer_rows():
    """A 5x5/2 layer onto 10-float rows (12 x 12 plane cells per 10 x 10 outputs) takes the
    batch-innermost gather by the plane-waste rule: float64 finite differences and float32 agreement
    with the phase planes."""
    spec = make_spec((8, 20, 19), [conv(4, 5, 2, "same"), {"type": "ReLU"}])
    g = Model(spec).ops[0].geometry(3)
    assert g.ow == 10 and g.batch_inner and not g.phased
    check_model_gradients(spec, max_checks=15)
    on, off = _conv_switch_agrees_in_float32(spec, 3, "batch_inner")
    assert on.ops[0].geometry(3).batch_inner and off.ops[0].geometry(3).phased


def pool(kind, size, stride=None, padding="valid"):
    return {"type": kind, "pool_size": size, "stride": stride, "padding": padding}


POOL_CASES = {
    "max_2_valid_odd": ((2, 7, 9), pool("MaxPool2D", 2)),
    "max_3_stride2_overlap": ((2, 9, 8), pool("MaxPool2D", 3, 2)),
    "max_same_2x3_odd": ((2, 7, 8), pool("MaxPool2D", [2, 3], None, "same")),
    "max_same_3_stride1": ((1, 5, 6), pool("MaxPool2D", 3, 1, "same")),
    "avg_2_valid_odd": ((2, 7, 9), pool("AvgPool2D", 2)),
    "avg_3_stride2_overlap": ((2, 9, 8), pool("AvgPool2D", 3, 2)),
    "avg_same_excludes_pad": ((2, 7, 8), pool("AvgPool2D", [2, 3], None, "same")),
    "avg_same_3_stride1": ((1, 5, 6), pool("AvgPool2D", 3, 1, "same")),
    # windows that tile the input (the broadcast-write backward), cells left over at the edges
    "avg_2x3_tiles_odd": ((2, 9, 8), pool("AvgPool2D", [2, 3])),
    "avg_3_tiles_odd": ((1, 10, 11), pool("AvgPool2D", 3)),
}


@pytest.mark.parametrize("name", [k for k in POOL_CASES if k.startswith("max")])
def test_inference_max_pool_skips_the_index_not_the_values(name):
    shape, layer = POOL_CASES[name]
    m = Model(make_spec(shape, [layer]), seed=0)
    x = np.random.default_rng(0).normal(size=(3, *shape)).astype(np.float32)
    x[:, :, 1:3, 1:3] = 0.5  # ties
    np.testing.assert_array_equal(m.forward(x), m.forward(x, training=True))


@pytest.mark.parametrize("name", list(POOL_CASES))
def test_pool_gradients(name):
    shape, layer = POOL_CASES[name]
    check_model_gradients(make_spec(shape, [layer]))


def _maxpool_reference(x, kernel, stride, pads, dy):
    """Window by window: np.argmax over the row-major window takes the first maximum (PyTorch's rule)."""
    (kh, kw), (sh, sw), (t, b, left, r) = kernel, stride, pads
    xp = np.pad(x, [(0, 0)] * (x.ndim - 2) + [(t, b), (left, r)], constant_values=-np.inf)
    oh, ow = (xp.shape[-2] - kh) // sh + 1, (xp.shape[-1] - kw) // sw + 1
    y = np.empty((*x.shape[:-2], oh, ow), x.dtype)
    dxp = np.zeros(xp.shape, x.dtype)
    for i in range(oh):
        for j in range(ow):
            win = xp[..., i * sh:i * sh + kh, j * sw:j * sw + kw].reshape(*x.shape[:-2], kh * kw)
            k = win.argmax(axis=-1)
            y[..., i, j] = np.take_along_axis(win, k[..., None], -1)[..., 0]
            for tap in range(kh * kw if dy is not None else 0):
                dxp[..., i * sh + tap // kw, j * sw + tap % kw] += np.where(k == tap, dy[..., i, j], 0)
    return y, dxp[..., t:t + x.shape[-2], left:left + x.shape[-1]]


@pytest.mark.parametrize("kernel,stride,pads,hw", [
    ((2, 2), (2, 2), (0, 0, 0, 0), (9, 7)), ((2, 2), (2, 2), (0, 1, 0, 1), (7, 9)),
    ((3, 3), (2, 2), (0, 0, 0, 0), (9, 8)), ((2, 3), (3, 2), (0, 0, 0, 0), (8, 9)),
    ((3, 2), (1, 1), (1, 1, 0, 1), (5, 6)), ((1, 1), (2, 2), (0, 0, 0, 0), (5, 5)),
    ((1, 2), (1, 2), (0, 0, 0, 0), (3, 8)), ((3, 3), (2, 2), (1, 1, 1, 1), (10, 11)),
    ((5, 4), (3, 2), (0, 2, 1, 0), (13, 12))])
@pytest.mark.parametrize("block_bytes", [64, 1 << 19])
def test_maxpool_kernels_equal_a_window_by_window_reference(kernel, stride, pads, hw, block_bytes, monkeypatch):
    """The blocked max pool with its byte-mask argmax (on the phase planes where windows overlap,
    F._max_by_phases): values, first-maximum index and routed gradient equal a plain loop over
    windows, with many ties (ReLU-like zeros, repeated values), blocks down to one plane, and a
    strided view as input and as `out` (a convolution's grid)."""
    monkeypatch.setattr(F, "_POOL_BLOCK_BYTES", block_bytes)
    rng = np.random.default_rng(0)
    x = np.maximum(rng.integers(-3, 3, (3, 4, *hw)), 0).astype(np.float32)
    x[0] = rng.normal(size=hw)
    view = np.zeros((3, 5, hw[0] + 1, hw[1] + 2), np.float32)[:, 1:, 1:, 2:]
    view[...] = x
    y_ref, _ = _maxpool_reference(x, kernel, stride, pads, None)
    dy = rng.normal(size=y_ref.shape).astype(np.float32)
    y_ref, dx_ref = _maxpool_reference(x, kernel, stride, pads, dy)
    for xin in (x, view):
        y, idx = F.maxpool_forward(xin, kernel, stride, pads)
        np.testing.assert_array_equal(y, y_ref)
        np.testing.assert_array_equal(F.maxpool_forward(xin, kernel, stride, pads, with_index=False)[0], y_ref)
        np.testing.assert_allclose(F.maxpool_backward(dy, idx, hw, kernel, stride, pads), dx_ref, rtol=1e-5, atol=1e-6)
        ws = F.Workspace()  # a reused buffer holds the last call's values: each call must overwrite or zero all
        F.maxpool_backward(dy * 3 + 1, idx, hw, kernel, stride, pads, ws=ws).fill(np.nan)
        np.testing.assert_allclose(F.maxpool_backward(dy, idx, hw, kernel, stride, pads, ws=ws), dx_ref,
                                   rtol=1e-5, atol=1e-6)
        if not any(pads):
            grid = np.zeros((3, 5, hw[0] + 2, hw[1] + 1), np.float32)
            F.maxpool_backward(dy, idx, hw, kernel, stride, pads, out=grid[:, 1:, 2:, 1:])
            np.testing.assert_allclose(grid[:, 1:, 2:, 1:], dx_ref, rtol=1e-5, atol=1e-6)
            assert not grid[:, 0].any() and not grid[:, :, :2].any() and not grid[..., 0].any()


@pytest.mark.parametrize("act", ["ReLU", "LeakyReLU", "LeakyReLU0", "LeakyReLU2.5", "Sigmoid", "Tanh"])
def test_activation_gradients_spatial_and_flat(act):
    alpha = {"LeakyReLU": 0.2, "LeakyReLU0": 0.0, "LeakyReLU2.5": 2.5}.get(act)
    a = {"type": act} if alpha is None else {"type": "LeakyReLU", "alpha": alpha}
    check_model_gradients(make_spec((2, 5, 6), [conv(3, 3), a, {"type": "Flatten"}, {"type": "Dense", "units": 4}, a]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("alpha", [0.0, 0.01, 0.2, 1.0, 1.5, 16777218.0])
def test_leaky_relu_kernels_equal_np_where(alpha, dtype):
    """The branch-free (leaky) ReLU kernels give np.where's values bit for bit, fresh and in place,
    for slopes of 0, below 1, 1, above 1 and one so large that 1 + (alpha - 1) rounds in float32
    (the slope array's fallback), with exact zeros in the input."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 4, 7, 5)).astype(dtype)
    x[0, 0] = 0
    x[1, 1, 2] = -0.0
    dy = rng.normal(size=x.shape).astype(dtype)
    a = dtype(alpha)
    want_y = np.where(x > 0, x, x * a)
    want_dx = np.where(x > 0, dy, dy * a)
    y = F.leaky_relu_forward(x, alpha)
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(F.leaky_relu_backward(dy, y, alpha), want_dx)
    z, g = x.copy(), dy.copy()
    assert F.leaky_relu_forward(z, alpha, out=z) is z and F.leaky_relu_backward(g, y, alpha, out=g) is g
    np.testing.assert_array_equal(z, want_y)
    np.testing.assert_array_equal(g, want_dx)
    assert y.dtype == dtype and F.leaky_relu_slope(y, alpha).dtype == dtype


@pytest.mark.parametrize("kernel", [(2, 2), (2, 3), (3, 1), (1, 1)])
@pytest.mark.parametrize("hw", [(8, 6), (7, 9)])
def test_avgpool_tiling_windows_equal_a_window_by_window_reference(kernel, hw):
    """Non-overlapping unpadded average pooling (the fast path: a broadcast write instead of a
    zero-fill and per-tap adds) gives the window-by-window means and gradients, the gradient bit
    for bit, with the cells no window covers at zero, twice into the same reused buffer."""
    rng = np.random.default_rng(0)
    kh, kw = kernel
    h, w = hw
    oh, ow = h // kh, w // kw
    ws = F.Workspace()
    for _ in range(2):
        x = rng.normal(size=(3, 2, h, w)).astype(np.float32)
        dy = rng.normal(size=(3, 2, oh, ow)).astype(np.float32)
        y_ref = np.zeros((3, 2, oh, ow), np.float32)
        dx_ref = np.zeros_like(x)
        for i in range(oh):
            for j in range(ow):
                win = (..., slice(i * kh, (i + 1) * kh), slice(j * kw, (j + 1) * kw))
                y_ref[..., i, j] = x[win].sum(axis=(-2, -1)) / (kh * kw)
                dx_ref[win] = (dy[..., i, j] * np.float32(1 / (kh * kw)))[..., None, None]
        np.testing.assert_allclose(F.avgpool_forward(x, kernel, kernel, (0, 0, 0, 0)), y_ref, rtol=1e-6, atol=1e-6)
        dx = F.avgpool_backward(dy, hw, kernel, kernel, (0, 0, 0, 0), ws)
        np.testing.assert_array_equal(dx, dx_ref)
        np.testing.assert_array_equal(F.avgpool_backward(dy, hw, kernel, kernel, (0, 0, 0, 0)), dx_ref)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_and_tanh_kernels_equal_the_plain_formulas(dtype):
    """Sigmoid's branch-free forward gives np.where's stable formula bit for bit (saturated, zero
    and -0 inputs included), fresh and in place; tanh's backward is dy * (1 - y^2) bit for bit and
    sigmoid's dy * y * (1 - y) within rounding, fresh, into a buffer and in place on dy."""
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(4, 3, 7, 5)) * 6).astype(dtype)
    x[0, 0, 0, :4] = [0.0, -0.0, 1000.0, -1000.0]
    e = np.exp(-np.abs(x))
    want = np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(dtype)
    np.testing.assert_array_equal(F.sigmoid(x), want)
    z = x.copy()
    assert F.sigmoid(z, out=z) is z
    np.testing.assert_array_equal(z, want)
    dy = rng.normal(size=x.shape).astype(dtype)
    for fn, y, ref, exact in ((F.tanh_backward, np.tanh(x), lambda y: dy * (1 - y * y), True),
                              (F.sigmoid_backward, want, lambda y: dy * y * (1 - y), False)):
        for got in (fn(dy, y), fn(dy, y, np.empty_like(dy)), fn(g := dy.copy(), y, g)):
            if exact:
                np.testing.assert_array_equal(got, ref(y))
            else:
                np.testing.assert_allclose(got, ref(y), rtol=8 * np.finfo(dtype).eps, atol=0)
            assert got.dtype == dtype


TANH_AVG_NET = [conv(3, 5, padding="same"), {"type": "Tanh"}, pool("AvgPool2D", 2), conv(4, 3, padding="same"),
                {"type": "Sigmoid"}, pool("AvgPool2D", [2, 3]), {"type": "Flatten"}, {"type": "Dense", "units": 5},
                {"type": "Tanh"}, {"type": "Dense", "units": 3}]


def test_tanh_sigmoid_avgpool_net_gradients():
    check_model_gradients(make_spec((2, 9, 13), TANH_AVG_NET), batch=4)


def test_reused_gradient_buffers_hold_nothing_from_the_last_step():
    """Tanh, Sigmoid and AvgPool2D write their input gradients into buffers kept from step to step:
    a model's second step gives bit for bit what a fresh model gives for that batch."""
    spec = make_spec((2, 9, 13), TANH_AVG_NET)
    rng = np.random.default_rng(3)
    x1, x2 = (rng.normal(size=(5, 2, 9, 13)).astype(np.float32) for _ in range(2))
    used, fresh = Model(spec, seed=1), Model(spec, seed=1)
    y = used.forward(x1, training=True)
    used.backward(rng.normal(size=y.shape).astype(np.float32))
    dy = rng.normal(size=y.shape).astype(np.float32)
    got = [m.forward(x2, training=True) for m in (used, fresh)]
    got += [m.backward(dy) for m in (used, fresh)]
    np.testing.assert_array_equal(got[0], got[1])
    np.testing.assert_array_equal(got[2], got[3])
    np.testing.assert_array_equal(used.flat_grads, fresh.flat_grads)


def test_dense_flatten_globalpool_softmax_gradients():
    check_model_gradients(make_spec((3, 5, 7), [
        conv(4, [2, 3], padding="same"), {"type": "GlobalAvgPool2D"}, {"type": "Dense", "units": 5},
        {"type": "Dense", "units": 3, "use_bias": False}, {"type": "Softmax"}]))
    check_model_gradients(make_spec((2, 3, 5), [{"type": "Flatten"}, {"type": "Dense", "units": 4},
                                                {"type": "Flatten"}, {"type": "Dense", "units": 2}]))


def test_weight_gradient_product_on_each_of_its_paths():
    """gemm_dw sums tiny weight gradients over column chunks (a short last one too) and multiplies
    larger ones the other way round: both give dz @ cols^T."""
    rng = np.random.default_rng(0)
    for f, k, n in [(6, 25, 3 * F._CHUNK + 5), (16, 27, 2 * F._CHUNK + 1), (32, 27, 5000), (4, 9, 100), (8, 70, 300)]:
        dz, cols = rng.normal(size=(f, n)), rng.normal(size=(k, n))
        out = np.empty((f, k))
        F.gemm_dw(dz, cols, out)
        np.testing.assert_allclose(out, dz @ cols.T, rtol=1e-10, atol=1e-10)


def test_dense_forward_on_short_and_long_batches_is_x_times_w_transposed():
    """Short batches multiply as (W @ x^T)^T (faster in OpenBLAS), long ones as x @ W^T: both give
    the product and its bias, C-ordered, at either side of the switch."""
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(7, 13)), rng.normal(size=7)
    for n in (1, F.DENSE_WX_MAX_ROWS, F.DENSE_WX_MAX_ROWS + 1):
        x = rng.normal(size=(n, 13))
        for bias in (b, None):
            y = F.dense_forward(x, w, bias)
            assert y.flags.c_contiguous and y.shape == (n, 7)
            np.testing.assert_allclose(y, x @ w.T + (0 if bias is None else bias), rtol=1e-12, atol=1e-12)


def test_batchnorm_training_mode_gradients():
    check_model_gradients(make_spec((3, 5, 4), [
        conv(4, 3, padding="same"), {"type": "BatchNorm2D"}, {"type": "ReLU"}, {"type": "Flatten"},
        {"type": "Dense", "units": 6}, {"type": "BatchNorm1D", "momentum": 0.3, "eps": 1e-3},
        {"type": "Dense", "units": 3}]), batch=4)


def test_batchnorm_without_numpy2_vecdot_gives_the_same_results(monkeypatch):
    """pyproject allows NumPy 1.26, which has no np.vecdot: BatchNorm's per-channel dot products
    then come from einsum, with the same forward values and gradients."""
    rng = np.random.default_rng(0)
    x2, dy2 = rng.normal(1, 2, (4, 30)), rng.normal(0, 1, (4, 30))
    gamma, beta = rng.normal(1, 0.2, 4), rng.normal(0, 0.2, 4)

    def run():
        rm, rv, dg, db = np.zeros(4), np.ones(4), np.zeros(4), np.zeros(4)
        y, cache = F.batchnorm_forward(x2, gamma, beta, rm, rv, 0.1, 1e-5, True, 1)
        dx = F.batchnorm_backward(dy2, cache, gamma, dg, db, 1)
        return y.copy(), dx.copy(), dg, db, rm, rv

    want = run()
    monkeypatch.setattr(F, "_vecdot", None)
    for a, b in zip(run(), want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


BN_RELU_CASES = {
    # odd, non-square maps; the fused step feeds a max pool with ties at ReLU's zeros
    "bn2d_relu_pool": ((3, 7, 5), [conv(4, 3, padding="same", use_bias=False), {"type": "BatchNorm2D"},
                                   {"type": "ReLU"}, pool("MaxPool2D", 2), {"type": "Flatten"},
                                   {"type": "Dense", "units": 3}]),
    "bn2d_relu_pool3_overlap_same": ((2, 9, 8), [conv(3, 3, padding="same", use_bias=False),
                                                 {"type": "BatchNorm2D"}, {"type": "ReLU"},
                                                 pool("MaxPool2D", 3, 2, "same"), {"type": "Flatten"},
                                                 {"type": "Dense", "units": 3}]),
    "bn2d_relu": ((3, 6, 5), [conv(4, 3, padding="same"), {"type": "BatchNorm2D"}, {"type": "ReLU"},
                              conv(2, 3), {"type": "Flatten"}, {"type": "Dense", "units": 3}]),
    "bn1d_relu": ((2, 3, 5), [{"type": "Flatten"}, {"type": "Dense", "units": 7},
                              {"type": "BatchNorm1D", "momentum": 0.3, "eps": 1e-3}, {"type": "ReLU"},
                              {"type": "Dense", "units": 3}]),
    # LeakyReLU takes the same steps: PyTorch's default slope, a steep one, 0 (a ReLU), one above 1
    "bn2d_leaky_pool": ((3, 7, 5), [conv(4, 3, padding="same", use_bias=False), {"type": "BatchNorm2D"},
                                    {"type": "LeakyReLU"}, pool("MaxPool2D", 2), {"type": "Flatten"},
                                    {"type": "Dense", "units": 3}]),
    "bn2d_leaky_pool3_overlap_same": ((2, 9, 8), [conv(3, 3, padding="same", use_bias=False),
                                                  {"type": "BatchNorm2D"}, {"type": "LeakyReLU", "alpha": 0.2},
                                                  pool("MaxPool2D", 3, 2, "same"), {"type": "Flatten"},
                                                  {"type": "Dense", "units": 3}]),
    "bn2d_leaky0": ((3, 6, 5), [conv(4, 3, padding="same"), {"type": "BatchNorm2D"},
                                {"type": "LeakyReLU", "alpha": 0.0}, conv(2, 3), {"type": "Flatten"},
                                {"type": "Dense", "units": 3}]),
    "bn2d_leaky_steep_pool": ((3, 7, 5), [conv(4, 3, padding="same"), {"type": "BatchNorm2D"},
                                          {"type": "LeakyReLU", "alpha": 2.5}, pool("MaxPool2D", 2),
                                          {"type": "Flatten"}, {"type": "Dense", "units": 3}]),
    "bn1d_leaky": ((2, 3, 5), [{"type": "Flatten"}, {"type": "Dense", "units": 7},
                               {"type": "BatchNorm1D", "momentum": 0.3, "eps": 1e-3},
                               {"type": "LeakyReLU", "alpha": 0.2}, {"type": "Dense", "units": 3}]),
    # ReLU before BatchNorm, then a pool: BatchNorm -> MaxPool as one step without an activation
    "relu_bn2d_pool": ((3, 7, 5), [conv(4, 3, padding="same"), {"type": "ReLU"}, {"type": "BatchNorm2D"},
                                   pool("MaxPool2D", 2), {"type": "Flatten"}, {"type": "Dense", "units": 3}]),
    "bn2d_pool3_overlap_same": ((2, 9, 8), [conv(3, 3, padding="same", use_bias=False), {"type": "BatchNorm2D"},
                                            pool("MaxPool2D", 3, 2, "same"), {"type": "Flatten"},
                                            {"type": "Dense", "units": 3}]),
}


def _bn_step_kind(layers: list[dict]) -> str:
    """The fused BatchNorm step a case's plan should hold."""
    types = [layer["type"] for layer in layers]
    after = types[types.index("BatchNorm2D" if "BatchNorm2D" in types else "BatchNorm1D") + 1]
    if after == "MaxPool2D":
        return "BatchNormPool"
    return "BatchNormReLUPool" if "MaxPool2D" in types else "BatchNormReLU"


def _negative_gamma(m) -> None:
    """One channel of every BatchNorm with a negative scale: a fused max-pool cannot run before the
    scale there (BatchNormReLUPool's other path)."""
    for name, arr in m.parameters().items():
        if name.endswith("weight") and arr.ndim == 1:
            arr[0] = -abs(arr[0])


@pytest.mark.parametrize("gamma", ["positive", "negative"])
@pytest.mark.parametrize("fuse", [True, False])
@pytest.mark.parametrize("name", list(BN_RELU_CASES))
def test_batchnorm_relu_step_gradients(name, fuse, gamma):
    shape, layers = BN_RELU_CASES[name]
    m = check_model_gradients(make_spec(shape, layers), batch=5, fuse=fuse,
                              prepare=_negative_gamma if gamma == "negative" else None)
    assert any(type(s).__name__ == _bn_step_kind(layers) for s in m._plan_train) == fuse


@pytest.mark.parametrize("gamma", ["positive", "negative"])
@pytest.mark.parametrize("name", list(BN_RELU_CASES))
def test_batchnorm_relu_step_equals_the_layers_in_float32(name, gamma):
    """The fused BatchNorm -> ReLU step computes what the two layers compute one after the other:
    outputs, input gradient, parameter gradients and running statistics, in training and in
    inference, bit for bit (the same operations in the same order; only where ReLU runs moves;
    with a pool, before BatchNorm's scale and shift where they increase, after them elsewhere).
    The same for BatchNorm -> MaxPool without an activation."""
    shape, layers = BN_RELU_CASES[name]
    spec = make_spec(shape, layers)
    assert any(type(s).__name__ == _bn_step_kind(layers) for s in Model(spec)._plan_train)
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(6, *shape)) * 2 + 1).astype(np.float32)
    x[:, :, :2] = 0  # constant regions: exact zeros before and after the ReLU
    models = [Model(spec, seed=4, fuse=f) for f in (True, False)]
    outs = []
    for m in models:
        for arr in m.parameters().values():
            arr[...] += np.random.default_rng(7).normal(0, 0.3, arr.shape).astype(np.float32)
        if gamma == "negative":
            _negative_gamma(m)
        y = m.forward(x, training=True)
        dx = m.backward(np.random.default_rng(2).normal(size=y.shape).astype(np.float32))
        outs.append((y, dx, m.flat_grads.copy(), *m.buffers().values(), m.forward(x)))
    for a, b in zip(*outs, strict=True):
        np.testing.assert_array_equal(a, b)


CONV_RELU_CASES = {
    # Winograd (3x3, stride 1, >= 8 channels), the tap-shift im2col path, a strided convolution
    "winograd_relu": ((8, 7, 6), [conv(5, 3, padding="same"), {"type": "ReLU"}, conv(3, 3, padding="same"),
                                  {"type": "Flatten"}, {"type": "Dense", "units": 3}]),
    "direct_5x5_relu_no_bias": ((3, 9, 8), [conv(4, 5, padding="same", use_bias=False), {"type": "ReLU"},
                                            {"type": "Flatten"}, {"type": "Dense", "units": 3}]),
    "strided_relu": ((2, 9, 7), [conv(4, 3, stride=2, padding="same"), {"type": "ReLU"}, {"type": "Flatten"},
                                 {"type": "Dense", "units": 3}]),
    "winograd_leaky": ((8, 7, 6), [conv(5, 3, padding="same"), {"type": "LeakyReLU"}, conv(3, 3, padding="same"),
                                   {"type": "Flatten"}, {"type": "Dense", "units": 3}]),
    "strided_leaky_steep": ((2, 9, 7), [conv(4, 3, stride=2, padding="same"), {"type": "LeakyReLU", "alpha": 1.5},
                                        {"type": "Flatten"}, {"type": "Dense", "units": 3}]),
    "direct_5x5_leaky0_no_bias": ((3, 9, 8), [conv(4, 5, padding="same", use_bias=False),
                                              {"type": "LeakyReLU", "alpha": 0.0}, {"type": "Flatten"},
                                              {"type": "Dense", "units": 3}]),
}


@pytest.mark.parametrize("fuse", [True, False])
@pytest.mark.parametrize("name", list(CONV_RELU_CASES))
def test_conv_relu_step_gradients(name, fuse):
    shape, layers = CONV_RELU_CASES[name]
    m = check_model_gradients(make_spec(shape, layers), batch=4, fuse=fuse, winograd=name.startswith("winograd"))
    assert any(type(s).__name__ == "ConvReLU" for s in m._plan_train) == fuse


@pytest.mark.parametrize("name", list(CONV_RELU_CASES))
def test_conv_relu_step_equals_the_layers_in_float32(name):
    """Conv2D -> ReLU as one step gives the two layers' outputs, input gradient and parameter
    gradients bit for bit, in training and inference, two steps running (the reused buffers)."""
    shape, layers = CONV_RELU_CASES[name]
    spec = make_spec(shape, layers)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, *shape)).astype(np.float32)
    x[:, :, :2] = 0
    outs = []
    for fuse in (True, False):
        m = Model(spec, seed=4, fuse=fuse)
        got = []
        for step in range(2):
            y = m.forward(x * (step + 1), training=True)
            dx = m.backward(np.random.default_rng(step).normal(size=y.shape).astype(np.float32))
            got += [y, dx, m.flat_grads.copy()]
        outs.append((*got, m.forward(x)))
    for a, b in zip(*outs, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("leak", [None, 0.0, 0.2])
@pytest.mark.parametrize("axis,shape", [(1, (5, 7 * 3 * 5)), (0, (9, 6))])
def test_synchronised_batchnorm_equals_the_whole_batch(axis, shape, leak):
    """Two shares of a batch normalised in two threads that exchange their sums (as engine.parallel's
    two processes do) give, in float64, the whole batch's outputs, input gradients, running statistics
    and (summed) gamma/beta gradients: the gradient-checked one-process path above."""
    import threading

    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, shape)
    dy = rng.normal(0, 1, shape)
    c = shape[1 - axis]
    gamma, beta = rng.normal(1, 0.2, c), rng.normal(0, 0.2, c)

    def run(xs, dys, allsum):
        rm, rv, dg, db = np.zeros(c), np.ones(c), np.zeros(c), np.zeros(c)
        y, cache = F.batchnorm_forward(xs, gamma, beta, rm, rv, 0.1, 1e-5, True, axis, allsum, leak)
        dx = F.batchnorm_backward(dys, cache, gamma, dg, db, axis, allsum)
        return y, dx, rm, rv, dg, db

    whole = run(x, dy, None)
    cut = 4 if axis == 0 else 50  # unequal shares
    parts = [np.split(a, [cut], axis=axis) for a in (x, dy)]
    slots: list = [None, None]
    barrier = threading.Barrier(2)
    results: list = [None, None]

    def share(i):
        def allsum(v):
            slots[i] = v.copy()
            barrier.wait()
            total = slots[0] + slots[1]
            barrier.wait()
            return total
        results[i] = run(parts[0][i], parts[1][i], allsum)

    threads = [threading.Thread(target=share, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    (y0, dx0, rm0, rv0, dg0, db0), (y1, dx1, rm1, rv1, dg1, db1) = results
    np.testing.assert_allclose(np.concatenate([y0, y1], axis=axis), whole[0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.concatenate([dx0, dx1], axis=axis), whole[1], rtol=1e-10, atol=1e-12)
    for r in (rm0, rv0, rm1, rv1):
        np.testing.assert_allclose(r, whole[2] if r is rm0 or r is rm1 else whole[3], rtol=1e-12)
    np.testing.assert_allclose(dg0 + dg1, whole[4], rtol=1e-10)
    np.testing.assert_allclose(db0 + db1, whole[5], rtol=1e-10)


def test_dropout_gradients_with_fixed_mask():
    m = check_model_gradients(make_spec((2, 5, 6), [
        {"type": "Dropout", "rate": 0.3}, conv(3, 3), {"type": "Flatten"}, {"type": "Dense", "units": 5},
        {"type": "Dropout", "rate": 0.5}, {"type": "Dense", "units": 2}]), batch=4)
    # the mask really drops: a training forward differs from inference, inference is deterministic
    x = np.random.default_rng(1).normal(size=(4, 2, 5, 6))
    assert not np.allclose(m.forward(x, training=True), m.forward(x))
    assert np.array_equal(m.forward(x), m.forward(x))


FUSED_CASES = {
    "same_relu_pool2": ((2, 8, 7), [conv(3, 3, padding="same"), {"type": "ReLU"}, pool("MaxPool2D", 2)]),
    "valid_tanh_pool3_overlap": ((2, 9, 9), [conv(2, [2, 3]), {"type": "Tanh"}, pool("MaxPool2D", 3, 2)]),
    "stride2_leaky_pool_same": ((2, 9, 9), [conv(2, 3, 2, "same"), {"type": "LeakyReLU"},
                                            pool("MaxPool2D", 2, None, "same")]),
    "polyphase_pool3_odd": ((2, 11, 10), [conv(3, 3, padding="same"), {"type": "ReLU"}, pool("MaxPool2D", 3)]),
    "polyphase_pool_2x3_even_kernel": ((2, 9, 13), [conv(3, [4, 2], padding="same"), {"type": "Tanh"},
                                                    pool("MaxPool2D", [2, 3])]),
    "polyphase_valid_int_pad_no_bias": ((3, 8, 7), [conv(2, [3, 2], padding=[1, 2], use_bias=False),
                                                    {"type": "Sigmoid"}, pool("MaxPool2D", 2)]),
    "sigmoid_pool_same_stride1": ((1, 6, 5), [conv(2, 3, padding="same", use_bias=False), {"type": "Sigmoid"},
                                              pool("MaxPool2D", 2, 1, "same")]),
    "polyphase_leaky_steep_odd": ((2, 9, 7), [conv(3, 3, padding="same"), {"type": "LeakyReLU", "alpha": 1.5},
                                              pool("MaxPool2D", 2)]),
}


@pytest.mark.parametrize("fuse", [True, False])
@pytest.mark.parametrize("name", list(FUSED_CASES))
def test_conv_act_pool_block_gradients(name, fuse):
    shape, layers = FUSED_CASES[name]
    spec = make_spec(shape, layers)
    m = check_model_gradients(spec, fuse=fuse)
    assert (type(m._plan_full[0]).__name__ == "ConvActPool") == fuse
    if fuse:
        assert m._plan_full[0].polyphase == (name.startswith("polyphase") or name == "same_relu_pool2")


@pytest.mark.parametrize("chunk_images", [None, 2])
@pytest.mark.parametrize("use_shifts", [True, False])
@pytest.mark.parametrize("name", [k for k in FUSED_CASES if k.startswith("polyphase") or k == "same_relu_pool2"])
def test_polyphase_tap_and_shift_formulations(name, use_shifts, chunk_images):
    shape, layers = FUSED_CASES[name]
    m = check_model_gradients(make_spec(shape, layers), use_shifts=use_shifts, chunk_images=chunk_images, batch=5)
    block = m._plan_full[0]
    assert (type(block.geometry(3)).__name__ == "ShiftPoolGeometry") == use_shifts
    assert len(block._chunks(5, True)) == (3 if chunk_images else 1)


@pytest.mark.parametrize("name", [k for k in FUSED_CASES if k.startswith("polyphase") or k == "same_relu_pool2"])
def test_polyphase_input_gradient_in_column_chunks(name, monkeypatch):
    """The tap formulation's input gradient runs over column chunks of the phase grid; force chunks of
    7 columns (not a multiple of anything in the geometry) so every chunk boundary is crossed."""
    monkeypatch.setattr(F, "_DX_CHUNK_MIN", 1)
    shape, layers = FUSED_CASES[name]
    c = shape[0] * np.prod(layers[0]["kernel_size"] if isinstance(layers[0]["kernel_size"], list)
                           else [layers[0]["kernel_size"]] * 2)
    monkeypatch.setattr(F, "_DX_CHUNK_FLOATS", int(c) * 7)
    m = check_model_gradients(make_spec(shape, layers), use_shifts=False, batch=5)
    assert m._plan_full[0].geometry(5).ph > 1  # more than one chunk of grid rows


@pytest.mark.parametrize("use_shifts", [True, False])
@pytest.mark.parametrize("pool_size", [2, 3, [2, 3]])
def test_polyphase_ties_go_to_the_first_maximum_as_layer_by_layer(use_shifts, pool_size):
    """Zero regions of the input (MNIST's background) make all outputs of a pooling window equal:
    the fused block must route each gradient to the first of them, exactly as the unfused MaxPool2D
    does, whatever the formulation (one broadcast compare, then later matches cleared)."""
    spec = make_spec((2, 12, 12), [conv(3, 3, padding="same", use_bias=False), {"type": "Sigmoid"},
                                   pool("MaxPool2D", pool_size), {"type": "Flatten"}, {"type": "Dense", "units": 3}])
    x = np.random.default_rng(4).normal(size=(5, 2, 12, 12))
    x[:, :, :7] = 0  # whole windows of equal (zero) outputs
    dy = np.random.default_rng(5).normal(size=(5, 3))
    fused, plain = Model(spec, seed=2, dtype=np.float64), Model(spec, seed=2, dtype=np.float64, fuse=False)
    fused._plan_full[0].use_shifts = use_shifts
    grads = []
    for m in (fused, plain):
        m.forward(x, training=True)
        dx = m.backward(dy)
        grads.append((dx, m.flat_grads.copy()))
    assert type(fused._plan_full[0]).__name__ == "ConvActPool" and fused._plan_full[0].polyphase
    for a, b in zip(*grads, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


STRIDE1_CASES = ["valid_3x3", "same_3x3_odd", "same_even_kernel_4", "int_padding_1", "no_bias_1x1",
                 "kernel_equals_input"]


@pytest.mark.parametrize("name", STRIDE1_CASES)
def test_stride1_convolution_in_column_chunks(name, monkeypatch):
    """A stride-1 convolution builds and multiplies im2col (forward) and the shifted output gradient
    (input gradient) per column chunk; force chunks of 7 columns so every boundary is crossed, and
    compare float64 finite differences and the float32 results of whole-width passes."""
    shape, layer = CONV_CASES[name]
    spec = make_spec(shape, [layer, {"type": "ReLU"}, {"type": "Flatten"}, {"type": "Dense", "units": 3}])
    x = np.random.default_rng(2).normal(size=(4, *shape)).astype(np.float32)
    dy = np.random.default_rng(3).normal(size=(4, 3)).astype(np.float32)

    def run():
        m = Model(spec, seed=1)
        out = m.forward(x, training=True)
        return out, m.backward(dy), m.flat_grads.copy()

    whole = run()
    monkeypatch.setattr(F, "_column_steps", lambda length, rows, budget: [
        (a, min(a + 7, length)) for a in range(0, length, 7)])
    check_model_gradients(spec, batch=3)
    for a, b in zip(run(), whole, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


SPECTRAL_CASES = {
    "7x7_same_odd_non_square": ((3, 9, 11), [conv(4, 7, padding="same")]),
    "5x5_valid_no_bias": ((2, 8, 7), [conv(3, 5, use_bias=False)]),
    "kernel_5x3_stride_1": ((2, 7, 6), [conv(3, [5, 3], padding="same")]),
    "even_kernel_4_same": ((2, 7, 8), [conv(2, 4, padding="same")]),
    "3x3_same_even_maps": ((2, 6, 8), [conv(3, 3, padding="same", use_bias=False)]),
    "pair_padding_3x1": ((2, 6, 9), [conv(3, 5, padding=[3, 1])]),
    "padding_as_large_as_kernel": ((2, 5, 4), conv(2, 2, 1, 2)),
    "kernel_equals_input": ((2, 5, 6), [conv(3, [5, 6])]),
    "one_by_one_map": ((2, 1, 1), [conv(2, 7, padding="same")]),
    "bn_relu_after": ((3, 6, 5), [conv(4, 5, padding="same", use_bias=False), {"type": "BatchNorm2D"},
                                  {"type": "ReLU"}]),
    # under a pool the fused block pools the spectral output (no polyphase layout)
    "relu_pool_2_after_odd": ((3, 7, 9), [conv(2, 5, padding="same"), {"type": "ReLU"}, pool("MaxPool2D", 2)]),
    "tanh_overlapping_pool_after": ((2, 9, 8), [conv(3, 7, padding="same"), {"type": "Tanh"},
                                                pool("MaxPool2D", 3, 2)]),
    "in_a_residual_block": ((4, 6, 7), [{"type": "Residual", "layers": [conv(4, 5, padding="same"), {"type": "ReLU"},
                                                                        conv(4, 5, padding="same")]}]),
}


@pytest.mark.parametrize("name", list(SPECTRAL_CASES))
def test_spectral_gradients(name):
    """The frequency-domain convolution (engine.spectral: forward, input and weight gradient)
    against float64 finite differences: odd, non-square and 1x1 maps, non-square and even
    kernels, any padding (as large as the kernel too), with BatchNorm, pools and inside a block."""
    from engine import spectral as S

    shape, layers = SPECTRAL_CASES[name]
    m = check_model_gradients(make_spec(shape, layers if isinstance(layers, list) else [layers]), spectral=True)
    x = np.random.default_rng(1).normal(size=(3, *shape))
    out = m.forward(x, training=True)
    convs = [o for top in m.ops for o in top.walk() if hasattr(o, "spectral")]
    assert convs and all(isinstance(o.cache[1], S.SpectralGeometry) for o in convs)  # what backward runs on
    if "pool" in name:
        assert not m._plan_train[0].polyphase
    for o in convs:  # the same function as the direct path, not only a consistent gradient
        o.spectral = False
    np.testing.assert_allclose(out, m.forward(x, training=True), rtol=1e-10, atol=1e-10)


def test_spectral_equals_the_direct_convolution_in_float32_and_the_rule_picks_it():
    """Float32 outputs, input and weight gradients and inference outputs of the frequency domain
    equal the direct path's to float32 rounding on layers of the sizes it is chosen for (7x7 at
    12x13, 5x5 valid at 6x6, 5x5 under a 2x2 max-pool, 3x3 with 32 channels at 8x10), and the
    default picks it there: 8 or more input channels, stride 1, 7x7 up to 64x64 output maps, 5x5 up
    to 20x20 or to 32x32 from 32 channels, 3x3 from 32 channels at 6x6 to 12x12 and on odd maps up
    to 15x15, from 128 channels up to 16x16; not for RGB stems or strides."""
    from engine import spectral as S

    for spec, batch in ((make_spec((16, 12, 13), [conv(24, 7, padding="same"), {"type": "ReLU"}]), 5),
                        (make_spec((32, 10, 10), [conv(16, 5), {"type": "ReLU"}]), 4),
                        (make_spec((8, 16, 14), [conv(12, 5, padding="same"), {"type": "ReLU"},
                                                 pool("MaxPool2D", 2)]), 3),
                        (make_spec((32, 8, 10), [conv(48, 3, padding="same", use_bias=False),
                                                 {"type": "BatchNorm2D"}, {"type": "ReLU"}]), 4)):
        assert Model(spec).ops[0].uses_spectral()
        _conv_switch_agrees_in_float32(spec, batch, "spectral")
    assert S.applies((7, 7), (1, 1), 8, (160, 160)) and not S.applies((7, 7), (1, 1), 8, (161, 64))
    assert S.applies((5, 5), (1, 1), 8, (56, 56)) and not S.applies((5, 5), (1, 1), 15, (57, 20))
    assert S.applies((5, 5), (1, 1), 16, (96, 96)) and not S.applies((5, 5), (1, 1), 32, (97, 32))
    assert not S.applies((7, 7), (1, 1), 3, (32, 32)) and not S.applies((7, 7), (2, 2), 64, (16, 16))
    # 3x3 from 8 channels on maps from 6x6 to 12x12, pooled or not
    assert S.applies((3, 3), (1, 1), 32, (6, 12)) and S.applies((3, 3), (1, 1), 8, (8, 8), pooled=True)
    assert not S.applies((3, 3), (1, 1), 64, (5, 8)) and not S.applies((3, 3), (1, 1), 7, (8, 8))
    # from 32 channels on odd maps up to 15x15, pooled or not
    assert S.applies((3, 3), (1, 1), 32, (15, 15), pooled=True) and S.applies((3, 3), (1, 1), 64, (13, 15))
    assert not S.applies((3, 3), (1, 1), 64, (14, 14)) and not S.applies((3, 3), (1, 1), 64, (17, 17))
    assert not S.applies((3, 3), (1, 1), 16, (15, 15), pooled=True)
    # with 8-63 channels up to 16x16 when no max-pool follows
    assert S.applies((3, 3), (1, 1), 16, (16, 16)) and S.applies((3, 3), (1, 1), 63, (14, 16))
    assert not S.applies((3, 3), (1, 1), 16, (16, 16), pooled=True)
    assert not S.applies((3, 3), (1, 1), 16, (16, 17)) and not S.applies((3, 3), (1, 1), 64, (16, 16))
    # and from 128 channels on maps up to 16x16, even ones too
    assert S.applies((3, 3), (1, 1), 128, (16, 16)) and S.applies((3, 3), (1, 1), 256, (14, 16))
    assert not S.applies((3, 3), (1, 1), 96, (16, 16)) and not S.applies((3, 3), (1, 1), 128, (16, 18))
    wide = make_spec((128, 16, 16), [conv(8, 3, padding="same", use_bias=False), {"type": "BatchNorm2D"},
                                     {"type": "ReLU"}, pool("MaxPool2D", 2)])
    assert Model(wide).ops[0].uses_spectral()
    _conv_switch_agrees_in_float32(wide, 2, "spectral")
    odd = make_spec((32, 15, 15), [conv(40, 3, padding="same", use_bias=False), {"type": "BatchNorm2D"},
                                   {"type": "ReLU"}, pool("MaxPool2D", 2)])
    assert Model(odd).ops[0].uses_spectral()
    _conv_switch_agrees_in_float32(odd, 3, "spectral")
    odd13 = make_spec((32, 13, 13), [conv(6, 3, padding="same"), {"type": "ReLU"}])
    assert Model(odd13).ops[0].uses_spectral()
    check_model_gradients(odd13, batch=2, max_checks=12)
    # a narrow layer: in the frequency domain alone, on the polyphase layout under a max-pool
    narrow = [conv(16, 3, padding="same"), {"type": "ReLU"}, conv(12, 3, padding="same"), {"type": "ReLU"}]
    alone = make_spec((3, 16, 14), narrow + [{"type": "GlobalAvgPool2D"}])
    assert Model(alone).ops[2].uses_spectral() and not Model(alone).ops[0].uses_spectral()
    _conv_switch_agrees_in_float32(alone, 3, lambda m, on: setattr(m.ops[2], "spectral", on))
    assert not Model(make_spec((3, 16, 14), narrow + [pool("MaxPool2D", 2)])).ops[2].uses_spectral()
    assert not S.applies((5, 3), (1, 1), 64, (8, 8)) and not S.applies((4, 4), (1, 1), 64, (8, 8))


WINOGRAD_CASES = {
    "same_odd_non_square": ((3, 7, 9), [conv(4, 3, padding="same")]),
    "valid_no_bias": ((2, 6, 5), [conv(3, 3, use_bias=False)]),
    "int_padding_2": ((2, 5, 4), [conv(2, 3, padding=2)]),
    "pair_padding_0x1": ((2, 6, 7), [conv(3, 3, padding=[0, 1])]),
    "one_by_one_map": ((2, 1, 1), [conv(2, 3, padding="same")]),
    "bn_relu_after": ((3, 5, 6), [conv(4, 3, padding="same", use_bias=False), {"type": "BatchNorm2D"},
                                  {"type": "ReLU"}]),
    "padded_pool_after": ((2, 7, 7), [conv(3, 3, padding="same"), {"type": "ReLU"},
                                      pool("MaxPool2D", 2, None, "same")]),
    "overlapping_pool_after": ((2, 9, 8), [conv(3, 3, padding="same"), {"type": "Tanh"}, pool("MaxPool2D", 3, 2)]),
    # the fused conv -> ReLU -> pool block trains on the Winograd output when forced (or large)
    "pool_2_after": ((2, 6, 8), [conv(3, 3, padding="same"), {"type": "ReLU"}, pool("MaxPool2D", 2)]),
    "pool_2_after_odd": ((3, 7, 5), [conv(2, 3, padding="same"), {"type": "ReLU"}, pool("MaxPool2D", 2)]),
    # F(2x2, 5x5): 6x6 tiles reaching two tile rows and columns past their own
    "5x5_same_odd_non_square": ((3, 7, 9), [conv(4, 5, padding="same")]),
    "5x5_valid_no_bias": ((2, 8, 7), [conv(3, 5, use_bias=False)]),
    "5x5_pair_padding_1x2": ((2, 6, 7), [conv(3, 5, padding=[1, 2])]),
    "5x5_one_by_one_map": ((2, 1, 1), [conv(2, 5, padding="same")]),
    "5x5_bn_relu_after": ((3, 6, 5), [conv(4, 5, padding="same", use_bias=False), {"type": "BatchNorm2D"},
                                      {"type": "ReLU"}]),
    "5x5_pool_2_after": ((2, 6, 8), [conv(3, 5, padding="same"), {"type": "ReLU"}, pool("MaxPool2D", 2)]),
    "5x5_pool_2_after_odd": ((3, 7, 5), [conv(2, 5, padding="same"), {"type": "ReLU"}, pool("MaxPool2D", 2)]),
}


@pytest.mark.parametrize("per_chunk", [None, 1, 2])
@pytest.mark.parametrize("name", list(WINOGRAD_CASES))
def test_winograd_gradients(name, per_chunk, monkeypatch):
    """Winograd F(2x2, 3x3) and F(2x2, 5x5) (forward, input and weight gradient) against float64 finite differences,
    odd and non-square sizes, any padding; the batch of 3 in one chunk, in chunks of one image
    (every chunk boundary crossed) or of two (a shorter last chunk with its own buffers)."""
    from engine import winograd as W

    if per_chunk:
        monkeypatch.setattr(W, "_images_per_chunk", lambda c, cells: per_chunk)
    shape, layers = WINOGRAD_CASES[name]
    m = check_model_gradients(make_spec(shape, layers), winograd=True, batch=3)
    assert isinstance(m.ops[0].winograd_geometry(3), W.WinogradGeometry)
    assert len(m.ops[0].winograd_geometry(3).steps()) == {None: 1, 1: 3, 2: 2}[per_chunk]
    if "pool_2" in name:
        assert m._plan_train[0].winograd_train(3)


def test_winograd_equals_the_direct_convolution_in_float32():
    """Float32 outputs, input and weight gradients of the Winograd path equal the direct path's to
    float32 rounding, on a layer of the size it is chosen for (and by default it is)."""
    from engine import winograd as W

    spec = make_spec((32, 11, 18), [conv(64, 3, padding="same"), {"type": "ReLU"}])
    assert Model(spec).ops[0].uses_winograd(True)  # chosen by default at this size
    _conv_switch_agrees_in_float32(spec, 5, "winograd")
    assert not W.applies((3, 3), (1, 1), 3, 64) and not W.applies((3, 3), (2, 2), 64, 64)
    assert W.applies((5, 5), (1, 1), 64, 64) and W.applies((3, 3), (1, 1), 64, 64)
    assert not W.applies((7, 7), (1, 1), 64, 64) and not W.applies((5, 5), (2, 2), 64, 64)
    # 5x5 from 14x14 output maps on (below: the kernel-row lowering), 3x3 from 8x8
    assert W.applies((5, 5), (1, 1), 16, 32, out_hw=(14, 16)) and not W.applies((5, 5), (1, 1), 16, 32, out_hw=(13, 16))
    assert not W.applies((5, 5), (1, 1), 3, 32, out_hw=(32, 32))
    # from 8 input channels on, training and inference; an RGB stem stays direct
    assert W.applies((3, 3), (1, 1), 8, 8) and W.applies((3, 3), (1, 1), 32, 32, training=False)
    assert not W.applies((3, 3), (1, 1), 4, 64) and not W.applies((3, 3), (1, 1), 3, 32, training=False)


def test_winograd_5x5_equals_the_direct_convolution_in_float32():
    """F(2x2, 5x5)'s transforms have entries up to 5 (25 in 2D) and G sixths, so its float32
    rounding is larger than F(2x2, 3x3)'s; on a layer of the size it is chosen for, outputs, input
    and weight gradients still equal the direct path's to float32 rounding of the values' scale,
    alone and under a 2x2 max-pool."""
    spec = make_spec((8, 58, 57), [conv(12, 5, padding="same"), {"type": "ReLU"}])
    assert Model(spec).ops[0].uses_winograd(True)
    _conv_switch_agrees_in_float32(spec, 5, "winograd")
    pooled = make_spec((8, 58, 58), [conv(12, 5, padding="same"), {"type": "ReLU"}, pool("MaxPool2D", 2)])
    block = Model(pooled)._plan_full[0]
    # large batches train pooled off the tiles; inference stays polyphase unless forced (as here)
    assert block.winograd_pool(True, 256) and not block.winograd_pool(False)
    _conv_switch_agrees_in_float32(pooled, 4, "winograd")


def test_winograd_conv_pool_training_equals_the_polyphase_path_in_float32():
    """Conv 3x3 -> ReLU -> MaxPool 2 in training: the Winograd convolution pooled afterwards (the
    default for large blocks) gives the polyphase path's outputs, input and weight gradients to
    float32 rounding, odd map sizes included."""
    for shape in [(16, 12, 10), (8, 9, 11)]:
        spec = make_spec(shape, [conv(24, 3, padding="same"), {"type": "ReLU"}, pool("MaxPool2D", 2)])
        rng = np.random.default_rng(0)
        x = rng.normal(size=(5, *shape)).astype(np.float32)
        results = []
        for wino in (True, False):
            m = Model(spec, seed=3)
            m.ops[0].winograd = wino
            assert m._plan_train[0].winograd_train(5) == wino
            out = m.forward(x, training=True)
            dy = np.random.default_rng(1).normal(size=out.shape).astype(np.float32)
            results.append((out, m.backward(dy), m.flat_grads.copy()))
        for a, b in zip(*results, strict=True):
            np.testing.assert_allclose(a, b, rtol=0, atol=2e-5 * float(np.abs(b).max()))
    big = Model(make_spec((32, 32, 32), [conv(32, 3, padding="same"), {"type": "ReLU"}, pool("MaxPool2D", 2)]))
    assert big._plan_train[0].winograd_train(64) and not big._plan_train[0].winograd_train(2)
    assert big._plan_train[0].winograd_pool(True, 64)


def test_winograd_pooled_training_routes_ties_like_the_polyphase_path():
    """Where a pooling window's conv outputs tie (an all-zero region gives exact zeros on both
    paths), the Winograd-pooled block sends the gradient to the first maximum, as the polyphase
    path and PyTorch do: outputs and every gradient equal in float64."""
    spec = make_spec((3, 8, 6), [conv(4, 3, padding="same", use_bias=False), {"type": "ReLU"},
                                 pool("MaxPool2D", 2)])
    x = np.random.default_rng(0).normal(size=(3, 3, 8, 6))
    x[:, :, :5] = 0.0
    results = []
    for wino in (True, False):
        m = Model(spec, seed=1, dtype=np.float64)
        m.ops[0].winograd = wino
        assert m._plan_train[0].winograd_pool(True, 3) == wino
        out = m.forward(x, training=True)
        dy = np.random.default_rng(2).normal(size=out.shape)
        results.append((out, m.backward(dy), m.flat_grads.copy()))
    for a, b in zip(*results, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape", [(3, 6, 8), (3, 7, 9), (2, 2, 4)])
def test_winograd_conv_pool_inference_equals_the_polyphase_path(shape):
    """Inference of Conv 3x3 -> ReLU -> MaxPool 2x2 on the Winograd tiles (one tile = one pooling
    window) equals the polyphase path in float64; odd output sizes fall back to it."""
    spec = make_spec(shape, [conv(4, 3, padding="same"), {"type": "ReLU"}, pool("MaxPool2D", 2)])
    x = np.random.default_rng(1).normal(size=(5, *shape))
    outs = []
    for wino in (True, False):
        m = Model(spec, seed=2, dtype=np.float64)
        m.ops[0].winograd = wino
        block = m._plan_full[0]
        assert block.winograd_pool(False) == (wino and shape[1] % 2 == 0 and shape[2] % 2 == 0)
        assert block.winograd_pool(True, 5) == block.winograd_pool(False)  # forced: in training too
        outs.append(m.forward(x))
    np.testing.assert_allclose(outs[0], outs[1], rtol=0, atol=1e-12)
    default = Model(make_spec((16, 14, 14), [conv(16, 3, padding="same"), {"type": "ReLU"}, pool("MaxPool2D", 2)]))
    assert default._plan_full[0].winograd_pool(False)
    # at 8x8 the frequency domain's output is pooled instead (engine.spectral)
    spectral = Model(make_spec((16, 8, 8), [conv(16, 3, padding="same"), {"type": "ReLU"}, pool("MaxPool2D", 2)]))
    assert not spectral._plan_full[0].winograd_pool(False) and spectral.ops[0].uses_spectral()


def test_fused_and_layerwise_forward_agree():
    spec = make_spec((1, 28, 28), [conv(6, 5, padding="same"), {"type": "ReLU"}, pool("MaxPool2D", 2),
                                   conv(16, 5), {"type": "ReLU"}, pool("MaxPool2D", 2), {"type": "Flatten"},
                                   {"type": "Dense", "units": 10}, {"type": "Softmax"}])
    a, b = Model(spec, seed=3, dtype=np.float64), Model(spec, seed=3, dtype=np.float64, fuse=False)
    c = Model(spec, seed=3, dtype=np.float64)
    for step in c._plan_full:
        if hasattr(step, "use_shifts"):
            step.use_shifts = not step.geometry(5).__class__.__name__.startswith("Shift")
            step._geo = type(step._geo)()  # forget the geometry built with the other formulation
    d = Model(spec, seed=3, dtype=np.float64)
    for step in d._plan_full:
        if hasattr(step, "chunk_floats"):
            step.chunk_floats = 1  # one image per chunk
    x = np.random.default_rng(0).random((5, 1, 28, 28))
    np.testing.assert_allclose(a.forward(x), b.forward(x), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(c.forward(x), b.forward(x), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(d.forward(x), b.forward(x), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(d.activations(x)[5], b.activations(x)[5], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(a.activations(x)[-1], a.forward(x), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kind", ["softmax", "binary"])
def test_loss_gradients(kind):
    rng = np.random.default_rng(0)
    if kind == "softmax":
        z = rng.normal(0, 3, (5, 4))
        y = rng.integers(0, 4, 5)
        fn = softmax_cross_entropy
    else:
        z = rng.normal(0, 3, (6, 1))
        y = rng.integers(0, 2, 6)
        fn = binary_cross_entropy_with_logits
    _, g = fn(z, y)
    num = np.zeros_like(z)
    for i in np.ndindex(z.shape):
        zp, zm = z.copy(), z.copy()
        zp[i] += EPS
        zm[i] -= EPS
        num[i] = (fn(zp, y)[0].mean() - fn(zm, y)[0].mean()) / (2 * EPS)
    assert rel_err(num, g) < TOL


def test_losses_are_stable_for_huge_logits():
    losses, g = softmax_cross_entropy(np.array([[1000.0, -1000.0, 0.0]]), np.array([1]))
    assert np.isfinite(losses).all() and abs(losses[0] - 2000.0) < 1e-9 and np.isfinite(g).all()
    losses, g = binary_cross_entropy_with_logits(np.array([[800.0], [-800.0]]), np.array([0, 1]))
    np.testing.assert_allclose(losses, [800.0, 800.0])
    assert np.isfinite(g).all()
    assert np.isfinite(F.sigmoid(np.array([-1000.0, 1000.0]))).all()


@pytest.mark.parametrize("head", ["softmax", "logits", "binary"])
def test_model_loss_and_grad_matches_finite_differences(head):
    """The training path (final Softmax/Sigmoid folded into the loss) against the inference loss."""
    layers = [conv(3, 3, padding="same"), {"type": "ReLU"}, pool("MaxPool2D", 2), {"type": "Flatten"},
              {"type": "Dense", "units": 1 if head == "binary" else 4}]
    if head == "softmax":
        layers.append({"type": "Softmax"})
    if head == "binary":
        layers.append({"type": "Sigmoid"})
    m = Model(make_spec((2, 6, 7), layers), seed=1, dtype=np.float64)
    assert m.loss_kind == ("binary_ce" if head == "binary" else "softmax_ce")
    assert m.num_classes == (2 if head == "binary" else 4)
    rng = np.random.default_rng(2)
    x = rng.normal(size=(5, 2, 6, 7))
    y = rng.integers(0, m.num_classes, 5)
    loss_sum, _ = m.loss_and_grad(x, y)
    assert abs(loss_sum - m.evaluate_batch(x, y)[0]) < 1e-10
    g = m.flat_grads.copy()
    p = m.flat_params
    for i in rng.choice(p.size, 30, replace=False):
        old = p[i]
        p[i] = old + EPS
        lp = m.evaluate_batch(x, y)[0] / 5
        p[i] = old - EPS
        lm = m.evaluate_batch(x, y)[0] / 5
        p[i] = old
        assert abs((lp - lm) / (2 * EPS) - g[i]) < 1e-6 * max(1.0, abs(g[i]))
