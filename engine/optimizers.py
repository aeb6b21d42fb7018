"""SGD, Adam and AdamW with PyTorch's defaults and update rules, fused over one flat buffer.

Every trainable array of a Model is a view into `model.flat_params` (gradients into
`model.flat_grads`), so one optimizer step is a handful of vectorised passes over two contiguous
arrays instead of a Python loop over layers; from half a million parameters, half of those passes
run in a second thread on the core that idles between steps. The arithmetic follows torch.optim's
single-tensor code path step by step, so the updates agree with PyTorch to float rounding
(tests/test_optimizers.py holds numbers produced by torch).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from engine.errors import EngineError

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _second_thread() -> ThreadPoolExecutor:
    """One pool thread for the whole process, made on first use (most processes never need it)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(1, thread_name_prefix="optimizer")
        return _pool


class Optimizer:
    name = ""
    #: elements per pass, or None for whole ranges. Adam's dozen passes run over slices that stay in
    #: the caches (measured 2-3x faster than whole-array passes for the MNIST CNN's 421k
    #: parameters; 128k beat 64k by ~10 % on a 1.7M-parameter Dense net); SGD's few passes are
    #: fastest whole (slices of 128k: 1.7 ms instead of 1.0 for 1M parameters)
    chunk: int | None = None
    #: from this many elements the update is shared with a second thread. NumPy's element-wise
    #: passes release the GIL, and between steps the other core idles (one process's BLAS thread,
    #: or a helper process waiting for the next batch). Measured on 1.7M parameters (Adam): 6.6-6.8
    #: ms in one thread, 4.5-5.3 ms in two; below ~0.5M the thread's start-up costs what it saves.
    threaded_from = 524288

    def __init__(self, model: Any, lr: float):
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise EngineError(f"learning rate must be a positive number, got {lr!r}")
        self.model = model
        self.params: np.ndarray = model.flat_params
        self.grads: np.ndarray = model.flat_grads
        self.lr = float(lr)
        self.steps = 0
        self._tmp = np.empty_like(self.params)
        #: [start, stop) slices of the flat buffer this optimizer updates (freeze() removes some)
        self.ranges: list[tuple[int, int]] = [(0, self.params.size)]

    def freeze(self, frozen: list[tuple[int, int]]) -> None:
        """Never touch these slices of the parameters (frozen layers): no update, no weight decay,
        no optimizer state, so they stay bit-identical."""
        from engine.transfer import trainable_ranges

        self.ranges = trainable_ranges(self.params.size, frozen)

    def step(self) -> None:
        raise NotImplementedError

    def _each_slice(self, update: Callable[[int, int], None]) -> None:
        """Call update(i, j) for every slice of the trainable ranges (cache-sized, if `chunk`), half
        of the elements in a second thread when there are enough. Each element's update is the same
        arithmetic whatever the slicing, so the result is bit-identical to one pass over everything."""
        total = sum(stop - start for start, stop in self.ranges)
        threaded = total >= self.threaded_from
        size = self.chunk or (-(-total // 2) if threaded else total) or 1
        pieces = [(i, min(i + size, stop)) for start, stop in self.ranges for i in range(start, stop, size)]

        def run(part: list[tuple[int, int]]) -> None:
            for i, j in part:
                update(i, j)

        if not threaded or len(pieces) < 2:
            run(pieces)
            return
        done, half = 0, 0
        while done < total // 2:  # first half by elements, not by count (frozen ranges leave odd sizes)
            done += pieces[half][1] - pieces[half][0]
            half += 1
        try:
            other = _second_thread().submit(run, pieces[half:])
        except RuntimeError:  # the interpreter is shutting down and starts no threads: all here
            run(pieces)
            return
        try:
            run(pieces[:half])
        finally:
            other.result()

    def state_dict(self) -> dict[str, np.ndarray]:
        """Arrays only (no pickle): the step count travels as a 0-d array."""
        return {"steps": np.array(self.steps, np.int64), "lr": np.array(self.lr, np.float64)}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.steps = int(state["steps"])
        self.lr = float(state["lr"])


class SGD(Optimizer):
    name = "sgd"

    def __init__(self, model: Any, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False):
        super().__init__(model, lr)
        if momentum < 0 or weight_decay < 0:
            raise EngineError("momentum and weight decay must be >= 0")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise EngineError("Nesterov momentum requires a momentum > 0 and zero dampening")
        self.momentum, self.dampening = float(momentum), float(dampening)
        self.weight_decay, self.nesterov = float(weight_decay), bool(nesterov)
        self.buf: np.ndarray | None = None

    def step(self) -> None:
        first = self.momentum and self.buf is None
        if first:
            self.buf = np.zeros_like(self.params)
        buf = self.buf
        self._each_slice(lambda i, j: self._update(self.params[i:j], self.grads[i:j], self._tmp[i:j],
                                                   None if buf is None else buf[i:j], first))
        self.steps += 1

    def _update(self, p, g, t, buf, first: bool) -> None:
        dt = p.dtype.type
        if self.weight_decay:
            np.multiply(p, dt(self.weight_decay), out=t)
            t += g
            g = t
        if self.momentum:
            if first:
                np.copyto(buf, g)
            else:
                buf *= dt(self.momentum)
                if self.dampening:
                    buf += g * dt(1 - self.dampening)
                else:
                    buf += g
            if self.nesterov:
                if g is not t:
                    np.copyto(t, g)
                t += buf * dt(self.momentum)
                g = t
            else:
                g = buf
        if g is t:
            t *= dt(self.lr)
            p -= t
        else:
            np.multiply(g, dt(self.lr), out=t)
            p -= t

    def state_dict(self):
        d = super().state_dict()
        if self.buf is not None:
            d["momentum_buffer"] = self.buf.copy()
        return d

    def load_state_dict(self, state):
        super().load_state_dict(state)
        b = state.get("momentum_buffer")
        self.buf = None if b is None else np.array(b, self.params.dtype).reshape(self.params.shape)


class Adam(Optimizer):
    name = "adam"
    decoupled = False
    chunk = 131072

    def __init__(self, model: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(model, lr)
        b1, b2 = betas
        if not (0 <= b1 < 1 and 0 <= b2 < 1) or eps < 0 or weight_decay < 0:
            raise EngineError("Adam needs betas in [0, 1), eps >= 0 and weight decay >= 0")
        self.b1, self.b2, self.eps, self.weight_decay = float(b1), float(b2), float(eps), float(weight_decay)
        self.m = np.zeros_like(self.params)
        self.v = np.zeros_like(self.params)
        self._tmp2 = np.empty_like(self.params)

    def step(self) -> None:
        self.steps += 1
        bc1 = 1 - self.b1 ** self.steps
        bc2 = 1 - self.b2 ** self.steps
        self._each_slice(lambda i, j: self._update(self.params[i:j], self.grads[i:j], self.m[i:j], self.v[i:j],
                                                   self._tmp[i:j], self._tmp2[i:j], bc1, bc2))

    def _update(self, p, g, m, v, t, t2, bc1: float, bc2: float) -> None:
        dt = p.dtype.type
        if self.decoupled:
            if self.weight_decay:
                p *= dt(1 - self.lr * self.weight_decay)
        elif self.weight_decay:
            np.multiply(p, dt(self.weight_decay), out=t2)
            t2 += g
            g = t2
        # m = m + (1 - b1) * (g - m)   (torch's lerp)
        np.subtract(g, m, out=t)
        t *= dt(1 - self.b1)
        m += t
        # v = b2 * v + (1 - b2) * g * g
        v *= dt(self.b2)
        np.multiply(g, g, out=t)
        t *= dt(1 - self.b2)
        v += t
        step_size = self.lr / bc1
        # denom = sqrt(v) / sqrt(bc2) + eps ; p -= step_size * m / denom
        np.sqrt(v, out=t)
        t *= dt(1 / math.sqrt(bc2))
        t += dt(self.eps)
        np.divide(m, t, out=t)
        t *= dt(step_size)
        p -= t

    def state_dict(self):
        d = super().state_dict()
        d["exp_avg"] = self.m.copy()
        d["exp_avg_sq"] = self.v.copy()
        return d

    def load_state_dict(self, state):
        super().load_state_dict(state)
        for key, arr in (("exp_avg", self.m), ("exp_avg_sq", self.v)):
            src = np.asarray(state[key])
            if src.shape != arr.shape:
                raise EngineError(f"optimizer state {key} has shape {src.shape}, expected {arr.shape}")
            arr[...] = src


class AdamW(Adam):
    name = "adamw"
    decoupled = True

    def __init__(self, model: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2):
        super().__init__(model, lr, betas, eps, weight_decay)


OPTIMIZERS: dict[str, type[Optimizer]] = {"sgd": SGD, "adam": Adam, "adamw": AdamW}


def make_optimizer(name: str, model: Any, lr: float = 1e-3, **kw: Any) -> Optimizer:
    """`name` is "adam", "adamw" or "sgd"; keyword arguments as torch.optim's (momentum, nesterov,
    weight_decay, betas, eps, dampening). Unknown names or options raise EngineError."""
    cls = OPTIMIZERS.get(str(name).lower())
    if cls is None:
        raise EngineError(f"unknown optimizer {name!r} (choose from: {', '.join(OPTIMIZERS)})")
    try:
        return cls(model, lr=lr, **kw)
    except TypeError as e:
        raise EngineError(f"{cls.name}: {e}") from None
