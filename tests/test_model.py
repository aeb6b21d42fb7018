"""The Model API other modules rely on: construction, weights by name, inference, training steps."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from engine.errors import EngineError
from engine.model import Model
from engine.optimizers import make_optimizer
from engine.parallel import enable_workers
from engine.spec import Spec


def spec_of(layers, shape=(1, 12, 12)) -> Spec:
    c, h, w = shape
    return Spec.from_dict({"format": "cnn-designer/1", "name": "t",
                           "input": {"channels": c, "height": h, "width": w}, "layers": layers})


SMALL = [
    {"type": "Conv2D", "filters": 4, "kernel_size": 3, "padding": "same"},
    {"type": "BatchNorm2D"},
    {"type": "ReLU"},
    {"type": "MaxPool2D", "pool_size": 2},
    {"type": "Flatten"},
    {"type": "Dense", "units": 16},
    {"type": "Dropout", "rate": 0.5},
    {"type": "Dense", "units": 3},
    {"type": "Softmax"},
]


@pytest.fixture
def model():
    return Model(spec_of(SMALL), seed=0)


def batch(n=6, shape=(1, 12, 12), seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, *shape), np.float32), rng.integers(0, 3, n)


def test_invalid_design_raises_the_inference_message():
    with pytest.raises(EngineError, match=r"layer 0 \(Dense\): Dense needs a flat input.*add Flatten"):
        Model(spec_of([{"type": "Dense", "units": 3}]))
    with pytest.raises(EngineError, match="no layers"):
        Model(spec_of([]))


def test_attributes(model):
    assert model.num_classes == 3 and model.loss_kind == "softmax_ce"
    assert model.inference.total_params == model.num_parameters + 8  # + BN running stats
    assert model.spec.layers[0].type == "Conv2D"
    binary = Model(spec_of([{"type": "Flatten"}, {"type": "Dense", "units": 1}, {"type": "Sigmoid"}]))
    assert (binary.num_classes, binary.loss_kind) == (2, "binary_ce")
    logits = Model(spec_of([{"type": "Flatten"}, {"type": "Dense", "units": 5}]))
    assert (logits.num_classes, logits.loss_kind) == (5, "softmax_ce")


def test_state_dict_names_shapes_and_copies(model):
    sd = model.state_dict()
    assert list(sd) == ["layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias",
                        "layers.1.running_mean", "layers.1.running_var", "layers.5.weight", "layers.5.bias",
                        "layers.7.weight", "layers.7.bias"]
    assert sd["layers.0.weight"].shape == (4, 1, 3, 3)
    assert sd["layers.5.weight"].shape == (16, 144)
    assert all(v.dtype == np.float32 for v in sd.values())
    sd["layers.0.weight"][...] = 7
    assert not np.any(model.state_dict()["layers.0.weight"] == 7)
    # parameters() are live views into the flat buffer
    p = model.parameters()
    assert set(p) == {k for k in sd if "running" not in k}
    p["layers.7.bias"][...] = 0.25
    assert np.all(model.state_dict()["layers.7.bias"] == 0.25)
    assert np.shares_memory(p["layers.7.bias"], model.flat_params)


def test_load_state_dict_round_trip_and_errors(model):
    other = Model(spec_of(SMALL), seed=5)
    x, _ = batch()
    assert not np.allclose(model.forward(x), other.forward(x))
    other.load_state_dict(model.state_dict())
    np.testing.assert_array_equal(model.forward(x), other.forward(x))

    sd = model.state_dict()
    del sd["layers.1.running_var"]
    sd["layers.99.weight"] = np.zeros(3)
    sd["layers.5.weight"] = np.zeros((16, 145))
    with pytest.raises(EngineError) as e:
        model.load_state_dict(sd)
    msg = str(e.value)
    assert "layers.1.running_var" in msg and "layers.99.weight" in msg and "layers.5.weight (16, 145)" in msg
    sd = model.state_dict()
    del sd["layers.1.running_var"]
    model.load_state_dict(sd, strict=False)  # missing is fine when not strict
    sd["layers.0.bias"][0] = np.nan
    with pytest.raises(EngineError, match="NaN"):
        model.load_state_dict(sd, strict=False)


def test_init_is_torch_kaiming_uniform_and_seeded():
    spec = spec_of([{"type": "Conv2D", "filters": 64, "kernel_size": [3, 5]}, {"type": "BatchNorm2D"},
                    {"type": "Flatten"}, {"type": "Dense", "units": 50}])
    a, b, c = Model(spec, seed=1), Model(spec, seed=1), Model(spec, seed=2)
    for k, v in a.state_dict().items():
        np.testing.assert_array_equal(v, b.state_dict()[k])
    assert not np.array_equal(a.flat_params, c.flat_params)
    sd = a.state_dict()
    for name, fan_in in (("layers.0", 15), ("layers.3", 64 * 10 * 8)):
        bound = 1 / math.sqrt(fan_in)
        for part in ("weight", "bias"):
            v = sd[f"{name}.{part}"]
            assert np.abs(v).max() <= bound and np.abs(v).max() > 0.9 * bound
            assert abs(v.mean()) < 0.2 * bound  # uniform, centred
    np.testing.assert_array_equal(sd["layers.1.weight"], 1)
    np.testing.assert_array_equal(sd["layers.1.bias"], 0)
    np.testing.assert_array_equal(sd["layers.1.running_mean"], 0)
    np.testing.assert_array_equal(sd["layers.1.running_var"], 1)


def test_forward_predict_activations(model):
    x, _ = batch(5)
    out = model.forward(x)
    assert out.shape == (5, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out.sum(1), 1, rtol=1e-5)
    np.testing.assert_allclose(model.predict_proba(x, batch_size=2), out, rtol=1e-5, atol=1e-7)
    acts = model.activations(x)
    assert [a.shape for a in acts] == [(5, 4, 12, 12), (5, 4, 12, 12), (5, 4, 12, 12), (5, 4, 6, 6), (5, 144),
                                       (5, 16), (5, 16), (5, 3), (5, 3)]
    np.testing.assert_allclose(acts[-1], out, rtol=1e-5, atol=1e-7)
    # activation maps are NCHW: sample 1 of the conv output only depends on sample 1
    solo = model.activations(x[1:2])
    np.testing.assert_allclose(solo[0][0], acts[0][1], rtol=1e-5, atol=1e-6)
    assert model.predict_proba(x[:0]).shape == (0, 3)


def test_binary_head_probabilities():
    m = Model(spec_of([{"type": "Flatten"}, {"type": "Dense", "units": 1}, {"type": "Sigmoid"}]), seed=0)
    x, _ = batch(4)
    p = m.predict_proba(x)
    assert p.shape == (4, 2)
    np.testing.assert_allclose(p[:, 1], m.forward(x)[:, 0], rtol=1e-6)
    np.testing.assert_allclose(p.sum(1), 1, rtol=1e-6)
    loss_sum, correct, probs = m.evaluate_batch(x, np.array([0, 1, 1, 0]))
    assert loss_sum > 0 and 0 <= correct <= 4 and probs.shape == (4, 2)


def test_train_step_and_evaluate(model):
    x, y = batch(8)
    opt = make_optimizer("adam", model, lr=1e-2)
    loss0, correct = model.train_step(x, y, opt)
    assert isinstance(loss0, float) and isinstance(correct, int) and 0 <= correct <= 8
    for _ in range(40):
        loss, _ = model.train_step(x, y, opt)
    assert loss < loss0 * 0.5
    loss_sum, correct, probs = model.evaluate_batch(x, y)
    assert isinstance(loss_sum, float) and probs.shape == (8, 3)
    assert correct == int((probs.argmax(1) == y).sum())
    # running statistics moved away from their initial values during training
    assert not np.allclose(model.buffers()["layers.1.running_var"], 1)


def test_inference_is_deterministic_training_is_not(model):
    x, _ = batch(4)
    np.testing.assert_array_equal(model.forward(x), model.forward(x))
    assert not np.allclose(model.forward(x, training=True), model.forward(x, training=True))


def test_bad_inputs_are_engine_errors(model):
    x, y = batch(4)
    opt = make_optimizer("sgd", model, lr=0.1)
    with pytest.raises(EngineError, match=r"input must be a batch of shape \(N, 1, 12, 12\)"):
        model.forward(np.zeros((4, 12, 12)))
    with pytest.raises(EngineError, match="labels must be in 0..2"):
        model.train_step(x, np.array([0, 1, 2, 3]), opt)
    with pytest.raises(EngineError, match="vector of 4"):
        model.evaluate_batch(x, y[:3])
    with pytest.raises(EngineError, match="forward"):
        Model(spec_of(SMALL)).backward(np.zeros((4, 3)))


def test_spatial_output_model_can_show_maps_but_not_train():
    m = Model(spec_of([{"type": "Conv2D", "filters": 2, "kernel_size": 3}]))
    assert m.num_classes == 0
    x, y = batch(2)
    assert m.forward(x).shape == (2, 2, 10, 10)
    with pytest.raises(EngineError, match="add Flatten and Dense"):
        m.train_step(x, y[:2], make_optimizer("sgd", m, lr=0.1))


def test_float64_model_matches_float32():
    spec = spec_of(SMALL)
    a, b = Model(spec, seed=3), Model(spec, seed=3, dtype=np.float64)
    x, _ = batch(4)
    np.testing.assert_allclose(a.forward(x), b.forward(x), rtol=1e-4, atol=1e-6)


# --- two-process data parallelism ------------------------------------------------------------------
DROP_NET = [
    {"type": "Conv2D", "filters": 4, "kernel_size": 3, "padding": "same"}, {"type": "ReLU"},
    {"type": "MaxPool2D", "pool_size": 2}, {"type": "Dropout", "rate": 0.3}, {"type": "Flatten"},
    {"type": "Dense", "units": 16}, {"type": "ReLU"}, {"type": "Dropout", "rate": 0.5}, {"type": "Dense", "units": 3},
    {"type": "Softmax"},
]


def _train(model, steps=4, n=10):
    opt = make_optimizer("adam", model, lr=1e-2)
    out = []
    for s in range(steps):
        x, y = batch(n, seed=s)
        out.append(model.train_step(x, y, opt))
    return out


def test_two_processes_give_single_process_results():
    spec = spec_of(DROP_NET)
    single = Model(spec, seed=4)
    ref = _train(single)
    with Model(spec, seed=4) as par:
        assert enable_workers(par, 2) is None
        assert par.workers == 2
        got = _train(par)
        proc = par._parallel.proc
        # this model's own shared files (other programs on the machine may make such files meanwhile)
        shared = [par._parallel.param_file.path, par._parallel.file.path]
        for (l1, c1), (l2, c2) in zip(ref, got, strict=True):
            assert abs(l1 - l2) < 1e-5 and c1 == c2
        np.testing.assert_allclose(par.flat_params, single.flat_params, rtol=1e-4, atol=1e-6)
        # inference is split too, and agrees
        x, y = batch(70, seed=9)
        np.testing.assert_allclose(par.forward(x), single.forward(x), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(par.predict_proba(x, batch_size=64), single.predict_proba(x), rtol=1e-4, atol=1e-6)
        lp, cp, pp = par.evaluate_batch(x, y)
        ls, cs, ps = single.evaluate_batch(x, y)
        assert abs(lp - ls) < 1e-3 and cp == cs
    assert proc.poll() is not None  # the helper is gone after close()
    assert par.workers == 1
    assert not any(os.path.exists(path) for path in shared)


def test_two_process_training_is_reproducible():
    """The split does not depend on timing: the same seed gives bit-identical weights."""
    runs = []
    for _ in range(2):
        with Model(spec_of(DROP_NET), seed=7) as m:
            assert enable_workers(m, 2) is None
            _train(m, steps=3, n=11)
            runs.append(m.flat_params.copy())
    np.testing.assert_array_equal(runs[0], runs[1])


BN_NET = [
    {"type": "Conv2D", "filters": 4, "kernel_size": 3, "padding": "same", "use_bias": False},
    {"type": "BatchNorm2D", "momentum": 0.3}, {"type": "ReLU"}, {"type": "MaxPool2D", "pool_size": 2},
    {"type": "Conv2D", "filters": 5, "kernel_size": 3, "padding": "same", "use_bias": False},
    {"type": "BatchNorm2D"}, {"type": "ReLU"}, {"type": "Flatten"}, {"type": "Dense", "units": 16, "use_bias": False},
    {"type": "BatchNorm1D"},
    {"type": "ReLU"}, {"type": "Dropout", "rate": 0.5}, {"type": "Dense", "units": 3}, {"type": "Softmax"},
]


@pytest.mark.parametrize("spin", [True, False], ids=["spin", "pipe"])
def test_two_processes_with_batchnorm_give_single_process_results(spin):
    """Synchronised BatchNorm: each half of a batch is normalised with the whole batch's statistics,
    so two processes train the same weights and running statistics as one (odd batches included).
    (No bias before BatchNorm: its gradient is zero up to rounding, which Adam would magnify.)
    The exchanges wait by spinning on shared counters on x86-64 and through the pipe elsewhere:
    both ways are run here."""
    from engine.parallel import spin_supported

    if spin and not spin_supported():
        pytest.skip("this processor's exchanges wait through the pipe")
    spec = spec_of(BN_NET, shape=(3, 10, 14))
    single = Model(spec, seed=5)

    def run(model):
        opt = make_optimizer("adam", model, lr=1e-2)
        rng = np.random.default_rng(3)
        out = []
        for n in (11, 8, 13, 9):
            x = (rng.random((n, 3, 10, 14), np.float32) * 3 + 1).astype(np.float32)  # mean far from 0
            out.append(model.train_step(x, rng.integers(0, 3, n), opt))
        return out

    ref = run(single)
    with Model(spec, seed=5) as par:
        assert enable_workers(par, 2) is None
        assert par.workers == 2
        par._parallel.spin = spin  # read when the batch file is mapped, at the first step
        got = run(par)
        assert (par._parallel.exchange.flags is not None) == spin
        assert par.workers == 2  # the helper took part in every step
        for (l1, c1), (l2, c2) in zip(ref, got, strict=True):
            assert abs(l1 - l2) < 1e-5 and c1 == c2
        np.testing.assert_allclose(par.flat_params, single.flat_params, rtol=1e-4, atol=1e-5)
        for k, v in single.buffers().items():
            np.testing.assert_allclose(par.buffers()[k], v, rtol=1e-5, atol=1e-6, err_msg=k)
        # inference split over both processes uses the running statistics in both
        x = np.random.default_rng(9).random((40, 3, 10, 14), np.float32)
        np.testing.assert_allclose(par.forward(x), single.forward(x), rtol=1e-4, atol=1e-6)


def test_batchnorm_helper_lost_mid_training_falls_back_with_the_same_results():
    spec = spec_of(BN_NET, shape=(3, 10, 14))
    single, m = Model(spec, seed=2), Model(spec, seed=2)
    assert enable_workers(m, 2) is None
    opt_s, opt_m = make_optimizer("sgd", single, lr=0.1), make_optimizer("sgd", m, lr=0.1)
    for s in range(3):
        x, y = batch(10, shape=(3, 10, 14), seed=s)
        if s == 1:
            m._parallel.proc.kill()
            m._parallel.proc.wait()
        ls, cs = single.train_step(x, y, opt_s)
        lm, cm = m.train_step(x, y, opt_m)
        assert abs(ls - lm) < 1e-5 and cs == cm
    assert m.workers == 1
    np.testing.assert_allclose(m.flat_params, single.flat_params, rtol=1e-5, atol=1e-6)
    for k, v in single.buffers().items():  # a step broken off is not counted twice
        np.testing.assert_allclose(m.buffers()[k], v, rtol=1e-5, atol=1e-6, err_msg=k)
    m.close()


def test_workers_fall_back_to_one_process():
    spec = spec_of(DROP_NET)
    single, m = Model(spec, seed=1), Model(spec, seed=1)
    assert enable_workers(m, 2) is None
    opt_s, opt_m = make_optimizer("sgd", single, lr=0.1), make_optimizer("sgd", m, lr=0.1)
    for s in range(3):
        x, y = batch(10, seed=s)
        if s == 1:  # the helper dies mid-training: the steps go on in one process, same results
            m._parallel.proc.kill()
            m._parallel.proc.wait()
        ls, cs = single.train_step(x, y, opt_s)
        lm, cm = m.train_step(x, y, opt_m)
        assert abs(ls - lm) < 1e-5 and cs == cm
    assert m.workers == 1
    assert m.workers_note == "the helper process ended unexpectedly (exit code -9); training goes on in one process"
    np.testing.assert_allclose(m.flat_params, single.flat_params, rtol=1e-5, atol=1e-6)
    m.close()
    m.close()  # idempotent


def _kill_after_send(m, sig):
    """Make the helper get the next step's request and then die (SIGKILL) or hang (SIGSTOP) before
    it answers: it is stopped first, so it cannot finish the step between the send and the signal."""
    import os
    import signal

    par = m._parallel
    send = par._send

    def send_then_signal(msg):
        if msg.get("cmd") != "step":
            return send(msg)
        os.kill(par.proc.pid, signal.SIGSTOP)
        ok = send(msg)
        if sig != signal.SIGSTOP:
            os.kill(par.proc.pid, sig)
        par._send = send
        return ok

    par._send = send_then_signal


@pytest.mark.parametrize("net", ["plain", "batchnorm"])
def test_helper_killed_mid_step_gives_the_single_process_result_and_a_note(net):
    """The helper dies after it got its share of a step (while the main process computes, or waits
    in a BatchNorm exchange): the step is finished in one process, nothing hangs, and the model
    says why in one line."""
    import signal

    layers, shape = (DROP_NET, (1, 12, 12)) if net == "plain" else (BN_NET, (3, 10, 14))
    spec = spec_of(layers, shape=shape)
    single, m = Model(spec, seed=6), Model(spec, seed=6)
    assert enable_workers(m, 2) is None
    opt_s, opt_m = make_optimizer("sgd", single, lr=0.1), make_optimizer("sgd", m, lr=0.1)
    for s in range(3):
        x, y = batch(10, shape=shape, seed=s)
        if s == 1:
            assert m.workers_note is None
            _kill_after_send(m, signal.SIGKILL)
        ls, cs = single.train_step(x, y, opt_s)
        lm, cm = m.train_step(x, y, opt_m)
        assert abs(ls - lm) < 1e-5 and cs == cm
    assert m.workers == 1
    note = m.workers_note
    assert note.startswith("the helper process ended unexpectedly") and "one process" in note
    assert "\n" not in note
    np.testing.assert_allclose(m.flat_params, single.flat_params, rtol=1e-5, atol=1e-6)
    for k, v in single.buffers().items():
        np.testing.assert_allclose(m.buffers()[k], v, rtol=1e-5, atol=1e-6, err_msg=k)
    m.close()


@pytest.mark.parametrize("net", ["plain", "batchnorm"])
def test_hung_helper_is_stopped_and_the_step_finishes_in_one_process(net):
    """A helper that stops answering (here: SIGSTOP after it got its share) is not waited for
    forever: after the hang limit it is ended, the step is done in one process with the same
    result, and the note says what happened."""
    import signal
    import time

    layers, shape = (DROP_NET, (1, 12, 12)) if net == "plain" else (BN_NET, (3, 10, 14))
    spec = spec_of(layers, shape=shape)
    single, m = Model(spec, seed=8), Model(spec, seed=8)
    assert enable_workers(m, 2) is None
    m._parallel.hang_seconds = 0.5
    proc = m._parallel.proc
    opt_s, opt_m = make_optimizer("adam", single, lr=0.01), make_optimizer("adam", m, lr=0.01)
    for s in range(2):
        x, y = batch(12, shape=shape, seed=s)
        if s == 1:
            _kill_after_send(m, signal.SIGSTOP)
        t0 = time.monotonic()
        ls, cs = single.train_step(x, y, opt_s)
        lm, cm = m.train_step(x, y, opt_m)
        assert time.monotonic() - t0 < 20
        assert abs(ls - lm) < 1e-5 and cs == cm
    assert m.workers == 1
    assert proc.wait(10) is not None  # ended, not left stopped
    assert m.workers_note == ("the helper process did not answer for 0.5 s and was stopped; "
                              "training goes on in one process")
    np.testing.assert_allclose(m.flat_params, single.flat_params, rtol=1e-5, atol=1e-6)
    m.close()


def test_model_computes_in_given_flat_buffers():
    spec = spec_of(DROP_NET)
    n = Model(spec).flat_params.size
    p, g = np.zeros(n, np.float32), np.zeros(n, np.float32)
    m = Model(spec, seed=3, flat=(p, g))
    ref = Model(spec, seed=3)
    assert m.flat_params is p and m.flat_grads is g
    np.testing.assert_array_equal(p, ref.flat_params)
    x, y = batch(6)
    m.loss_and_grad(x, y)
    ref.loss_and_grad(x, y)
    np.testing.assert_allclose(g, ref.flat_grads, rtol=1e-6)
    with pytest.raises(EngineError, match="flat buffers"):
        Model(spec, flat=(np.zeros(n - 1, np.float32), g))


def test_workers_start_from_a_background_thread():
    import threading

    result = {}

    def run():
        with Model(spec_of(DROP_NET), seed=0) as m:
            result["ok"] = enable_workers(m, 2) is None
            result["steps"] = _train(m, steps=2)

    t = threading.Thread(target=run)
    t.start()
    t.join(60)
    assert result["ok"] and len(result["steps"]) == 2


def test_model_computes_on_one_blas_thread_and_restores_the_count():
    """Model.blas_threads = 1 holds inside every compute call; the caller's count comes back after."""
    from threadpoolctl import threadpool_info, threadpool_limits

    def blas_counts():
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

    m = Model(spec_of(DROP_NET), seed=0)
    seen = []
    dense = m.ops[next(i for i, layer in enumerate(m.spec.layers) if layer.type == "Dense")]
    inner = dense.forward

    def spy(x, training):
        seen.append(blas_counts())
        return inner(x, training)

    dense.forward = spy
    x, y = batch(4)
    with threadpool_limits(limits=2, user_api="blas"):
        assert set(blas_counts()) == {2}
        m.predict_proba(x)
        m.train_step(x, y, make_optimizer("sgd", m, lr=0.1))
        assert set(blas_counts()) == {2}
    assert seen and all(c and set(c) == {1} for c in seen)


def test_dropout_scales_kept_values_by_one_over_keep_rate():
    """Inverted dropout: a kept value is x / (1 - rate), so the expected output equals the input and
    inference needs no change (the gradient checks use the same mask both ways and cannot see this)."""
    rate = 0.25
    spec = spec_of([{"type": "Flatten"}, {"type": "Dropout", "rate": rate}], shape=(1, 40, 40))
    x = np.full((16, 1, 40, 40), 3.0, np.float32)
    model = Model(spec, seed=0)
    y = model.forward(x, training=True)
    np.testing.assert_allclose(np.unique(y), [0.0, 3.0 / (1 - rate)], rtol=1e-6)
    assert abs((y != 0).mean() - (1 - rate)) < 0.02 and abs(y.mean() - 3.0) < 0.1
    np.testing.assert_array_equal(model.forward(x, training=False), x.reshape(16, -1))


@pytest.mark.parametrize("conv,pool,shape,pooled", [
    ({"kernel_size": 11, "stride": 4}, {"pool_size": 3, "stride": 2}, (3, 64, 64), True),
    ({"kernel_size": 7, "stride": 2, "padding": "same"}, {"pool_size": 2}, (3, 29, 34), True),
    ({"kernel_size": [9, 7], "stride": [3, 2], "padding": "same"}, {"pool_size": [3, 2], "stride": [1, 2]},
     (3, 23, 19), True),
    ({"kernel_size": 7, "stride": 2}, {"pool_size": 3, "stride": 2, "padding": "same"}, (3, 31, 30), False),
])
def test_stem_and_max_pool_inference_pooled_chunk_by_chunk(conv, pool, shape, pooled, monkeypatch):
    """Inference of a patch-row stem under an unpadded max-pool pools each chunk of images with
    the filters innermost (engine.functional.patch_rows_pooled): the same numbers as the training
    forward and as the layers run one by one, in float64 to rounding, over several chunks; a
    padded pool keeps the separate layers."""
    import engine.functional as F

    layers = [{"type": "Conv2D", "filters": 5, **conv}, {"type": "ReLU"}, {"type": "MaxPool2D", **pool},
              {"type": "Flatten"}, {"type": "Dense", "units": 3}]
    spec = spec_of(layers, shape=shape)
    fused, plain = Model(spec, seed=4, dtype=np.float64), Model(spec, seed=4, dtype=np.float64, fuse=False)
    monkeypatch.setattr(F, "_INFER_COLS_FLOATS", 1)  # one image per chunk
    calls = []
    real = F.patch_rows_pooled
    monkeypatch.setattr(F, "patch_rows_pooled", lambda *a: calls.append(1) or real(*a))
    x = np.random.default_rng(2).normal(size=(7, *shape))
    out = fused.forward(x)
    assert bool(calls) == pooled
    np.testing.assert_allclose(out, fused.forward(x, training=True), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out, plain.forward(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("conv,shape", [
    ({"kernel_size": 11, "stride": 4, "padding": "valid"}, (3, 64, 64)),
    ({"kernel_size": 7, "stride": 2, "padding": "same"}, (3, 29, 34)),
    ({"kernel_size": [9, 7], "stride": [3, 2], "padding": "same"}, (3, 23, 19)),
    ({"kernel_size": 3, "stride": 2, "padding": "same"}, (3, 17, 16)),  # short rows: the per-tap gather
])
def test_strided_stem_inference_equals_the_training_path(conv, shape, monkeypatch):
    """Inference of a wide strided RGB stem builds its columns as patch rows with the channels
    innermost (engine.functional._patch_rows), training as per-tap im2col (or, from stride 3, as
    the whole batch's patch rows): the same numbers, in float64 to rounding, batches of several
    chunks included."""
    spec = spec_of([{"type": "Conv2D", "filters": 5, **conv}, {"type": "ReLU"}, {"type": "Flatten"},
                    {"type": "Dense", "units": 3}], shape=shape)
    m = Model(spec, seed=4, dtype=np.float64)
    x = np.random.default_rng(2).random((70, *shape))
    h = m._to_internal(x)
    conv_op = m._plan_full[0]
    import engine.functional as F

    calls = []
    real = F._patch_rows
    monkeypatch.setattr(F, "_patch_rows", lambda *a, **k: calls.append(1) or real(*a, **k))
    z_train = conv_op.forward(h, True)
    calls.clear()  # from stride 3 training runs on patch rows too: count the inference's calls
    z_infer = conv_op.forward(h, False)
    assert bool(calls) == (conv["kernel_size"] != 3)
    np.testing.assert_allclose(z_infer, z_train, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(m.forward(x[:3]), m.forward(x)[:3], rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("lead", [
    [{"type": "Flatten"}, {"type": "Dense", "units": 7}, {"type": "ReLU"}],
    [{"type": "MaxPool2D", "pool_size": 2}, {"type": "Dropout", "rate": 0.3},
     {"type": "Conv2D", "filters": 3, "kernel_size": 3}, {"type": "ReLU"}, {"type": "Flatten"}],
])
def test_training_computes_no_gradient_below_the_first_weights(lead, monkeypatch):
    """A net that starts with layers without weights (Flatten -> Dense, a pool before the first
    convolution) needs no input gradient from its first weighted layer, nor any backward pass
    below it; the weights' gradients are the same as with the input gradient computed."""
    spec = spec_of([*lead, {"type": "Dense", "units": 3}, {"type": "Softmax"}])
    m, ref = Model(spec, seed=1, dtype=np.float64), Model(spec, seed=1, dtype=np.float64)
    x, y = batch(5)
    asked = []
    first = m._plan_train[m._first_weighted[id(m._plan_train)]]
    real = first.backward
    monkeypatch.setattr(first, "backward", lambda dy, need_dx=True: asked.append(need_dx) or real(dy, need_dx))
    for op in m._plan_train[:m._first_weighted[id(m._plan_train)]]:
        monkeypatch.setattr(op, "backward", lambda *a, **k: pytest.fail("backward below the first weights"))
    for mm in (m, ref):
        mm.set_dropout_seed(4)
    m.loss_and_grad(x, y)
    h = ref._to_internal(x)  # the same step, with the input gradient
    logits = ref._run(ref._plan_train, h, True)
    _, grad, _ = ref._loss(logits, y)
    dx = ref._backprop(ref._plan_train, grad, True)
    assert asked == [False] and dx is not None and dx.size == h.size
    np.testing.assert_allclose(m.flat_grads, ref.flat_grads, rtol=1e-12, atol=1e-15)
    assert not np.allclose(m.flat_grads, 0)
    assert all(getattr(s, "cache", None) is None for s in m._plan_train)


def test_a_net_starting_with_flatten_flattens_as_torch_does():
    """A Dense-only net takes each image flattened channel-major (torch.flatten); it skips the
    channels-first transpose the convolutions use, and must come out the same."""
    m = Model(spec_of([{"type": "Flatten"}, {"type": "Dense", "units": 4}, {"type": "ReLU"},
                       {"type": "Dense", "units": 3}], shape=(2, 3, 5)), seed=0)
    x, _ = batch(6, shape=(2, 3, 5))
    p = m.parameters()
    want = np.maximum(x.reshape(6, -1) @ p["layers.1.weight"].T + p["layers.1.bias"], 0)
    want = want @ p["layers.3.weight"].T + p["layers.3.bias"]
    np.testing.assert_allclose(m.forward(x), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m.activations(x)[0], x.reshape(6, -1))
