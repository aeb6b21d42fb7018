"""Optimizer update rules against PyTorch: 7 steps on a small quadratic, numbers from torch 2.13.0.

f(p) = 0.5 * sum(c * p^2) + sum(d * p), gradient c * p + d, evaluated at the current p before each
step, exactly as benchmarks/make_torch_reference.py drove torch.optim (float64 on both sides).
"""

from __future__ import annotations

import numpy as np
import pytest

from engine.errors import EngineError
from engine.model import Model
from engine.optimizers import make_optimizer
from engine.spec import Spec

P0 = np.array([0.5, -1.5, 2.0, 0.0, -0.25, 3.0])
C = np.array([1.0, 2.0, 0.5, 3.0, 1.5, 0.2])
D = np.array([0.1, -0.2, 0.3, -0.4, 0.5, -0.6])
STEPS = 7

TORCH_AFTER = {
    "sgd": ("sgd", {"lr": 0.1},
        [0.18697813999999996, -0.23554431999999995, 1.2156769698437502, 0.12235276, -0.3066185759765625, 3.0]),
    "sgd_momentum": ("sgd", {"lr": 0.1, "momentum": 0.9},
        [-0.36139024000000014, 1.1926044800000002, -0.38050342765625, 0.18217504, -0.38858049316406257, 3.0]),
    "sgd_nesterov_wd": ("sgd", {"lr": 0.05, "momentum": 0.8, "nesterov": True, "weight_decay": 0.01},
        [0.014899562329215093, 0.3488239792624749, 0.7514640123451629, 0.1654768582016509,
         -0.33318981678299286, 2.9686883807355424]),
    "sgd_dampening_wd": ("sgd", {"lr": 0.05, "momentum": 0.9, "dampening": 0.3, "weight_decay": 0.1},
        [0.02434844032958126, 0.5455596663389668, 0.8019893006123643, 0.20202071574015626,
         -0.3169150290262924, 2.747714009627597]),
    "adam": ("adam", {"lr": 0.1},
        [-0.13852333686247392, -0.8112063343227645, 1.305808957072117, 0.11680622239460164,
         -0.2846371960598566, 3.028030115661725]),
    "adam_wd_betas": ("adam", {"lr": 0.05, "weight_decay": 0.1, "betas": [0.8, 0.99], "eps": 1e-06},
        [0.16463364111911202, -1.154165337944932, 1.652517917660299, 0.17209626292791957, -0.2929909148013782,
         2.6572768033969947]),
    "adamw": ("adamw", {"lr": 0.1},
        [-0.13955711862981507, -0.8030357034951218, 1.2940749853318276, 0.11647525738016601,
         -0.2847863692728812, 3.0014189692338102]),
    "adamw_wd": ("adamw", {"lr": 0.05, "weight_decay": 0.3},
        [0.12541518367871232, -1.0181793424408645, 1.4666672648926147, 0.1934988162406286,
         -0.34117518911368794, 2.9585250028752363]),
}


class Flat:
    """Anything with flat_params / flat_grads can be optimised (that is all a Model offers)."""

    def __init__(self, p):
        self.flat_params = np.array(p, np.float64)
        self.flat_grads = np.zeros_like(self.flat_params)


@pytest.mark.parametrize("name", list(TORCH_AFTER))
def test_update_rule_matches_torch(name):
    kind, kw, want = TORCH_AFTER[name]
    if "betas" in kw:
        kw = dict(kw, betas=tuple(kw["betas"]))
    model = Flat(P0)
    opt = make_optimizer(kind, model, **kw)
    for _ in range(STEPS):
        model.flat_grads[...] = C * model.flat_params + D
        opt.step()
    np.testing.assert_allclose(model.flat_params, want, rtol=1e-12, atol=1e-14)


def test_defaults_are_torchs():
    m = Flat(P0)
    adam, adamw, sgd = make_optimizer("adam", m), make_optimizer("AdamW", m), make_optimizer("sgd", m, lr=0.1)
    assert (adam.lr, adam.b1, adam.b2, adam.eps, adam.weight_decay) == (1e-3, 0.9, 0.999, 1e-8, 0.0)
    assert adamw.weight_decay == 1e-2
    assert (sgd.momentum, sgd.dampening, sgd.weight_decay, sgd.nesterov) == (0.0, 0.0, 0.0, False)


def test_lr_is_settable_for_schedules_and_state_round_trips():
    m = Flat(P0)
    opt = make_optimizer("adam", m, lr=0.1)
    for _ in range(3):
        m.flat_grads[...] = C * m.flat_params + D
        opt.step()
    state = {k: v.copy() for k, v in opt.state_dict().items()}
    p_mid = m.flat_params.copy()
    opt.lr = 0.01
    m.flat_grads[...] = C * m.flat_params + D
    opt.step()
    after = m.flat_params.copy()
    small_step = np.abs(after - p_mid).max()
    assert 0 < small_step < 0.011  # Adam's step is bounded by about lr

    m2 = Flat(p_mid)
    opt2 = make_optimizer("adam", m2, lr=0.5)
    opt2.load_state_dict(state)
    opt2.lr = 0.01
    m2.flat_grads[...] = C * m2.flat_params + D
    opt2.step()
    np.testing.assert_allclose(m2.flat_params, after, rtol=1e-14)


def test_bad_optimizer_settings_are_clear_errors():
    m = Flat(P0)
    with pytest.raises(EngineError, match="unknown optimizer"):
        make_optimizer("rmsprop", m)
    with pytest.raises(EngineError, match="learning rate"):
        make_optimizer("sgd", m, lr=0)
    with pytest.raises(EngineError, match="Nesterov"):
        make_optimizer("sgd", m, lr=0.1, nesterov=True)
    with pytest.raises(EngineError, match="adam"):
        make_optimizer("adam", m, lr=0.1, momentum=0.9)


def test_optimizer_updates_a_models_layers_through_the_flat_buffer():
    spec = Spec.from_dict({"format": "cnn-designer/1", "input": {"channels": 1, "height": 6, "width": 6},
                           "layers": [{"type": "Conv2D", "filters": 2, "kernel_size": 3}, {"type": "Flatten"},
                                      {"type": "Dense", "units": 3}]})
    m = Model(spec, seed=0)
    before = m.state_dict()
    opt = make_optimizer("sgd", m, lr=0.5, momentum=0.9)
    x = np.random.default_rng(0).random((4, 1, 6, 6), np.float32)
    m.train_step(x, np.array([0, 1, 2, 0]), opt)
    after = m.state_dict()
    for k in before:
        assert not np.array_equal(before[k], after[k]), k
        np.testing.assert_allclose(after[k], before[k] - 0.5 * m.gradients()[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind, kw", [("adam", {}), ("adamw", {}), ("sgd", {"momentum": 0.9, "nesterov": True}),
                                      ("sgd", {"momentum": 0.9, "dampening": 0.2})])
def test_sliced_and_threaded_update_is_the_same_update(kind, kw):
    """Slices, a second thread and frozen ranges change where each element is updated, not how."""
    rng = np.random.default_rng(0)
    a = Flat(rng.normal(size=200_003))
    start = a.flat_params.copy()
    b, c = Flat(start), Flat(start)
    opts = [make_optimizer(kind, f, lr=0.01, weight_decay=0.1, **kw) for f in (a, b, c)]
    opts[0].chunk = 10**9  # one pass over everything, in one thread
    opts[0].threaded_from = 10**12
    opts[1].chunk = opts[2].chunk = 4099 if kind != "sgd" else None
    opts[1].threaded_from = 10**12
    opts[2].threaded_from = 1_000  # sliced, half of it in the second thread
    frozen = [(10, 5_000), (150_000, 150_001)]
    for o in opts:
        o.freeze(frozen)
    for _ in range(3):
        g = rng.normal(size=a.flat_params.size)
        for f in (a, b, c):
            f.flat_grads[...] = g
        for o in opts:
            o.step()
    np.testing.assert_array_equal(a.flat_params, b.flat_params)
    np.testing.assert_array_equal(a.flat_params, c.flat_params)
    np.testing.assert_array_equal(c.flat_params[10:5_000], start[10:5_000])
    assert not np.array_equal(c.flat_params[5_000:], start[5_000:])


def test_update_without_a_second_thread_is_the_same_update(monkeypatch):
    """At interpreter shutdown no thread can start (submit raises RuntimeError): the step then runs
    every slice in the calling thread rather than failing."""
    from concurrent.futures import ThreadPoolExecutor

    import engine.optimizers as O

    gone = ThreadPoolExecutor(1)
    gone.shutdown()
    rng = np.random.default_rng(1)
    a = Flat(rng.normal(size=50_000))
    b = Flat(a.flat_params.copy())
    oa, ob = make_optimizer("adam", a, lr=0.01), make_optimizer("adam", b, lr=0.01)
    oa.threaded_from, ob.threaded_from, ob.chunk = 10**12, 1_000, 4099
    monkeypatch.setattr(O, "_second_thread", lambda: gone)
    g = rng.normal(size=a.flat_params.size)
    a.flat_grads[...] = g
    b.flat_grads[...] = g
    oa.step()
    ob.step()
    np.testing.assert_array_equal(a.flat_params, b.flat_params)
