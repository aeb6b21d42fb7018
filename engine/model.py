"""A trainable network built from a `cnn-designer/1` Spec: forward, backward, losses, weights.

API (other modules code against these signatures; keep them stable):

    from engine.model import Model
    m = Model(spec, seed=0, dtype=np.float32)   # EngineError(inference.error_message) if the design is invalid
    m.spec; m.inference; m.num_classes          # last layer's width; 2 for a final Dense(1) + Sigmoid
    m.loss_kind                                 # "softmax_ce" (final Softmax or plain logits) | "binary_ce"
    m.forward(x, training=False)                # x float (N, C, H, W) -> output of the whole spec (incl. Softmax)
    m.backward(dy)                              # after forward(..., training=True): d(out) -> d(x); fills grads
    m.predict_proba(x, batch_size=256)          # (N, num_classes) probabilities; binary -> [1 - p, p]
    m.activations(x)                            # every layer's output (inference mode), NCHW / (N, F)
    m.score_gradients(x, classes, layer)        # d(class logit)/d(input, layer output) for saliency maps
    m.state_dict(); m.load_state_dict(d, strict=True)   # "layers.{i}.weight|bias|running_mean|running_var"
    m.parameters(); m.gradients()               # name -> live trainable arrays / their gradients
    m.flat_params; m.flat_grads                 # one contiguous buffer each; parameters are views into them
    m.train_step(x, y, optimizer)               # -> (mean_loss: float, n_correct: int)
    m.evaluate_batch(x, y)                      # -> (loss_sum: float, n_correct: int, probs), inference mode
    m.loss_and_grad(x, y)                       # forward + loss + backward without an update (for workers)
    engine.parallel.enable_workers(m, 2)        # split batches over 2 processes (None, else why not)
    m.workers                                   # 1 or 2, as currently running
    m.close()                                   # releases worker processes, if any (safe to call twice)
    Model.blas_threads = 1                      # BLAS threads while computing (None: leave NumPy's setting)
    engine.optimizers.make_optimizer(name, model, lr=..., **kw)   # "adam" | "adamw" | "sgd"

Inside, spatial tensors are CNHW (see engine.functional); the API speaks NCHW like PyTorch.
A Conv2D followed by a monotone activation and a MaxPool2D is run as conv -> pool -> bias ->
activation (max-pooling commutes with adding a per-channel bias and with a non-decreasing
function), which pools the raw GEMM output straight off its padded grid and applies bias and
activation to a quarter of the values; `activations()` runs the layers one by one instead.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from engine import functional as F
from engine import losses as L
from engine.blas import blas_threads
from engine.errors import EngineError
from engine.layers import Layer
from engine.shapes import Inference, infer
from engine.spec import Spec

Shape = tuple[int, ...]


# ----------------------------------------------------------------------------------------------
# Ops: one per layer, holding parameters (views into the model's flat buffer) and caches
# ----------------------------------------------------------------------------------------------
class Op:
    """One layer's compute. Spatial inputs arrive CNHW, flat ones (N, F)."""

    monotone = False  # activations that commute with max-pooling

    def __init__(self, layer: Layer, index: int, in_shape: Shape, out_shape: Shape, dtype: np.dtype):
        self.layer = layer
        self.index = index
        self.in_shape = in_shape
        self.out_shape = out_shape
        self.dtype = dtype
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.buffers: dict[str, np.ndarray] = {}
        self.cache: Any = None
        self.ws = {"t": F.Workspace(), "i": F.Workspace()}

    @property
    def cfg(self) -> dict[str, Any]:
        return self.layer.config

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        raise NotImplementedError

    def backward(self, dy: np.ndarray, need_dx: bool = True) -> np.ndarray | None:
        raise NotImplementedError

    def init_params(self, rng: np.random.Generator) -> None:
        """PyTorch's defaults: kaiming_uniform(a=sqrt(5)) weights, i.e. U(+-1/sqrt(fan_in)), same
        bound for biases."""


class ConvOp(Op):
    def __init__(self, *a):
        super().__init__(*a)
        self.kernel = self.layer.kernel
        self.stride = self.layer.stride
        self.pads = self.layer.pads(self.in_shape)
        self._geo: dict[int, F.ConvGeometry] = {}

    def geometry(self, n: int) -> F.ConvGeometry:
        g = self._geo.get(n)
        if g is None:
            c, h, w = self.in_shape
            g = F.ConvGeometry((c, n, h, w), self.cfg["filters"], self.kernel, self.stride, self.pads)
            self._geo = {**dict(list(self._geo.items())[-3:]), n: g}
        return g

    def init_params(self, rng):
        c = self.in_shape[0]
        fan_in = c * self.kernel[0] * self.kernel[1]
        bound = 1.0 / math.sqrt(fan_in)
        self.params["weight"][...] = rng.uniform(-bound, bound, self.params["weight"].shape)
        if "bias" in self.params:
            self.params["bias"][...] = rng.uniform(-bound, bound, self.params["bias"].shape)

    def conv(self, x: np.ndarray, training: bool) -> np.ndarray:
        """The bias-free convolution (possibly a view into the padded output grid)."""
        g = self.geometry(x.shape[1])
        tag = "t" if training else "i"
        z, cols = F.conv2d_forward(x, self.params["weight"], g, self.ws[tag])
        if training:
            self.cache = (cols, g)
        return z

    def forward(self, x, training):
        z = self.conv(x, training)
        y = np.empty(z.shape, self.dtype)
        if "bias" in self.params:
            np.add(z, self.params["bias"].reshape(-1, 1, 1, 1), out=y)
        else:
            y[...] = z
        return y

    def backward_conv(self, dz, need_dx, dz_grid=None):
        cols, g = self.cache
        self.cache = None
        return F.conv2d_backward(dz, cols, self.params["weight"], g, self.grads["weight"], need_dx,
                                 self.ws["t"], dz_grid=dz_grid)

    def backward(self, dy, need_dx=True):
        if "bias" in self.grads:
            np.sum(dy, axis=(1, 2, 3), out=self.grads["bias"])
        return self.backward_conv(dy, need_dx)


class DenseOp(Op):
    def init_params(self, rng):
        bound = 1.0 / math.sqrt(self.in_shape[0])
        self.params["weight"][...] = rng.uniform(-bound, bound, self.params["weight"].shape)
        if "bias" in self.params:
            self.params["bias"][...] = rng.uniform(-bound, bound, self.params["bias"].shape)

    def forward(self, x, training):
        if training:
            self.cache = x
        return F.dense_forward(x, self.params["weight"], self.params.get("bias"))

    def backward(self, dy, need_dx=True):
        x, self.cache = self.cache, None
        return F.dense_backward(dy, x, self.params["weight"], self.grads["weight"], self.grads.get("bias"), need_dx)


class _PoolOp(Op):
    def __init__(self, *a):
        super().__init__(*a)
        self.kernel = self.layer.kernel
        self.stride = self.layer.stride
        self.pads = self.layer.pads(self.in_shape)


class MaxPoolOp(_PoolOp):
    def forward(self, x, training):
        y, idx = F.maxpool_forward(x, self.kernel, self.stride, self.pads)
        if training:
            self.cache = idx
        return y

    def backward(self, dy, need_dx=True):
        idx, self.cache = self.cache, None
        return F.maxpool_backward(dy, idx, self.in_shape[1:], self.kernel, self.stride, self.pads)


class AvgPoolOp(_PoolOp):
    def forward(self, x, training):
        return F.avgpool_forward(x, self.kernel, self.stride, self.pads)

    def backward(self, dy, need_dx=True):
        return F.avgpool_backward(dy, self.in_shape[1:], self.kernel, self.stride, self.pads)


class GlobalAvgPoolOp(Op):
    def forward(self, x, training):
        return np.ascontiguousarray(x.mean(axis=(2, 3)).T)

    def backward(self, dy, need_dx=True):
        c, h, w = self.in_shape
        g = dy.T * dy.dtype.type(1.0 / (h * w))
        return np.ascontiguousarray(np.broadcast_to(g[:, :, None, None], (c, dy.shape[0], h, w)))


class FlattenOp(Op):
    def forward(self, x, training):
        if x.ndim == 2:
            return x
        return np.ascontiguousarray(x.transpose(1, 0, 2, 3)).reshape(x.shape[1], -1)

    def backward(self, dy, need_dx=True):
        if len(self.in_shape) == 1:
            return dy
        c, h, w = self.in_shape
        return np.ascontiguousarray(dy.reshape(dy.shape[0], c, h, w).transpose(1, 0, 2, 3))


class ReLUOp(Op):
    monotone = True

    def forward(self, x, training):
        y = np.maximum(x, 0)
        if training:
            self.cache = y
        return y

    def backward(self, dy, need_dx=True):
        y, self.cache = self.cache, None
        return F.relu_backward(dy, y)

    # in-place variants for the fused conv block
    def apply_(self, z: np.ndarray) -> np.ndarray:
        return np.maximum(z, 0, out=z)

    def grad_(self, dy: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.multiply(dy, y > 0, out=dy)


class LeakyReLUOp(Op):
    monotone = True

    def forward(self, x, training):
        if training:
            self.cache = x
        return F.leaky_relu_forward(x, self.cfg["alpha"])

    def backward(self, dy, need_dx=True):
        x, self.cache = self.cache, None
        return F.leaky_relu_backward(dy, x, self.cfg["alpha"])

    def apply_(self, z):
        return F.leaky_relu_forward(z, self.cfg["alpha"])

    def grad_(self, dy, y):
        return np.where(y > 0, dy, dy * dy.dtype.type(self.cfg["alpha"]))


class _OutputGradOp(Op):
    """An activation whose gradient is a function of its output (sigmoid, tanh): caches y."""

    monotone = True
    fn: Any  # y = fn(x), and for the gradient dfn(dy, y)
    dfn: Any

    def forward(self, x, training):
        y = self.fn(x)
        if training:
            self.cache = y
        return y

    def backward(self, dy, need_dx=True):
        y, self.cache = self.cache, None
        return self.dfn(dy, y)

    # in-place variants for the fused conv block
    def apply_(self, z):
        return self.fn(z)

    def grad_(self, dy, y):
        return self.dfn(dy, y)


class SigmoidOp(_OutputGradOp):
    fn = staticmethod(F.sigmoid)
    dfn = staticmethod(F.sigmoid_backward)


class TanhOp(_OutputGradOp):
    fn = staticmethod(np.tanh)
    dfn = staticmethod(F.tanh_backward)

    def apply_(self, z):
        return np.tanh(z, out=z)


class SoftmaxOp(Op):
    def forward(self, x, training):
        y = F.softmax(x)
        if training:
            self.cache = y
        return y

    def backward(self, dy, need_dx=True):
        y, self.cache = self.cache, None
        return F.softmax_backward(dy, y)


class DropoutOp(Op):
    def __init__(self, *a):
        super().__init__(*a)
        self.rng: np.random.Generator = np.random.default_rng(0)
        #: set by Model.dropout_share for a share of a batch: the step's seed and (first row, batch size)
        self.batch_seed: int | None = None
        self.batch_slice: tuple[int, int] | None = None

    def forward(self, x, training):
        rate = self.cfg["rate"]
        if not training or rate == 0:
            self.cache = None
            return x
        n = x.shape[1] if x.ndim == 4 else x.shape[0]
        seed = self.batch_seed if self.batch_seed is not None else int(self.rng.integers(2**62))
        lo, total = self.batch_slice if self.batch_slice is not None else (0, n)
        # Drawn for the whole batch, sample-major (N, C, H, W) whatever the internal layout, so a
        # batch split across processes gets exactly the mask it would get in one process.
        mask = F.dropout_mask(np.random.default_rng(seed), (total, *self.in_shape), rate, self.dtype)[lo:lo + n]
        if x.ndim == 4:
            mask = mask.transpose(1, 0, 2, 3)
        self.cache = mask
        return x * mask

    def backward(self, dy, need_dx=True):
        mask, self.cache = self.cache, None
        return dy if mask is None else dy * mask


class BatchNormOp(Op):
    def init_params(self, rng):
        self.params["weight"][...] = 1.0
        self.params["bias"][...] = 0.0
        self.buffers["running_mean"][...] = 0.0
        self.buffers["running_var"][...] = 1.0

    def _view(self, x):
        if x.ndim == 4:
            return x.reshape(x.shape[0], -1), 1
        return x, 0

    def forward(self, x, training):
        x = np.ascontiguousarray(x)
        x2, axis = self._view(x)
        y2, cache = F.batchnorm_forward(
            x2, self.params["weight"], self.params["bias"], self.buffers["running_mean"],
            self.buffers["running_var"], self.cfg["momentum"], self.cfg["eps"], training, axis)
        if training:
            self.cache = cache
        return y2.reshape(x.shape)

    def backward(self, dy, need_dx=True):
        cache, self.cache = self.cache, None
        dy = np.ascontiguousarray(dy)
        dy2, axis = self._view(dy)
        dx2 = F.batchnorm_backward(dy2, cache, self.params["weight"], self.grads["weight"], self.grads["bias"], axis)
        return dx2.reshape(dy.shape)


OP_CLASSES: dict[str, type[Op]] = {
    "Conv2D": ConvOp, "Dense": DenseOp, "MaxPool2D": MaxPoolOp, "AvgPool2D": AvgPoolOp,
    "GlobalAvgPool2D": GlobalAvgPoolOp, "Flatten": FlattenOp, "ReLU": ReLUOp, "LeakyReLU": LeakyReLUOp,
    "Sigmoid": SigmoidOp, "Tanh": TanhOp, "Softmax": SoftmaxOp, "Dropout": DropoutOp,
    "BatchNorm2D": BatchNormOp, "BatchNorm1D": BatchNormOp,
}


class ConvActPool:
    """Conv2D -> monotone activation -> MaxPool2D run as conv -> pool -> bias -> activation.

    Exactly the same function (max commutes with +bias and with non-decreasing maps). A stride-1
    convolution feeding a non-overlapping unpadded pool runs on the polyphase layout of
    engine.functional.convpool_forward (contiguous im2col, GEMM, contiguous max); other
    combinations pool the raw GEMM grid and write the pooled gradient straight into the
    convolution's gradient grid."""

    def __init__(self, conv: ConvOp, act: Op, pool: MaxPoolOp):
        self.conv, self.act, self.pool = conv, act, pool
        self.cache: Any = None
        self.polyphase = (conv.stride == (1, 1) and pool.kernel == pool.stride and not any(pool.pads)
                          and pool.kernel[0] * pool.kernel[1] < 256)
        self._geo: dict[int, F.ConvPoolGeometry] = {}
        #: None = choose by cost estimate; True/False force the shift / tap formulation (tests)
        self.use_shifts: bool | None = None

    def geometry(self, n: int) -> F.ConvPoolGeometry:
        g = self._geo.get(n)
        if g is None:
            c, h, w = self.conv.in_shape
            args = ((c, n, h, w), self.conv.cfg["filters"], self.conv.kernel, self.conv.pads, self.pool.kernel)
            g = F.ConvPoolGeometry(*args)
            taps, shifts = F.shiftpool_cost(g)
            if self.use_shifts if self.use_shifts is not None else shifts < taps:
                g = F.ShiftPoolGeometry(*args)
            self._geo = {**dict(list(self._geo.items())[-3:]), n: g}
        return g

    def _bias_act(self, p: np.ndarray) -> np.ndarray:
        y = np.empty(p.shape, p.dtype)
        if "bias" in self.conv.params:
            np.add(p, self.conv.params["bias"].reshape(-1, 1, 1, 1), out=y)
        else:
            y[...] = p
        return self.act.apply_(y)

    #: largest im2col matrix (floats) computed in one piece in inference: bigger batches run in
    #: chunks of images that reuse the same cache-resident scratch arrays (MNIST CNN forward at
    #: batch 256: 2,600 -> 4,200 img/s per process). Training keeps every chunk's arrays for the
    #: backward pass, which measured no faster chunked, so it runs in one piece by default.
    chunk_floats = 600_000
    train_chunk_floats = 1 << 62

    def _chunks(self, n: int, training: bool) -> list[tuple[int, int]]:
        g1 = self.geometry(1)
        rows = g1.rows * g1.lq if isinstance(g1, F.ShiftPoolGeometry) else g1.k * g1.np * g1.lq
        cap = self.train_chunk_floats if training else self.chunk_floats
        size = max(1, min(n, cap // max(rows, 1)))
        return [(i, min(i + size, n)) for i in range(0, n, size)]

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        if self.polyphase:
            tag = "t" if training else "i"
            n = x.shape[1]
            w = self.conv.params["weight"]
            y = None
            parts = []
            for k, (a, b) in enumerate(self._chunks(n, training)):
                g = self.geometry(b - a)
                fwd = F.shiftpool_forward if isinstance(g, F.ShiftPoolGeometry) else F.convpool_forward
                # training keeps each chunk's arrays for backward; inference reuses one set
                p, zm, cols = fwd(x[:, a:b], w, g, self.conv.ws[tag], tag=f"{k}:" if training else "")
                if y is None:
                    y = np.empty((p.shape[0], n, *p.shape[2:]), p.dtype)
                if "bias" in self.conv.params:
                    np.add(p, self.conv.params["bias"].reshape(-1, 1, 1, 1), out=y[:, a:b])
                else:
                    y[:, a:b] = p
                parts.append((a, b, zm, cols, g))
            y = self.act.apply_(y)
            if training:
                self.cache = (parts, y)
            return y
        z = self.conv.conv(x, training)
        p, idx = F.maxpool_forward(z, self.pool.kernel, self.pool.stride, self.pool.pads)
        y = self._bias_act(p)
        if training:
            self.cache = (idx, y)
        return y

    def backward(self, dy: np.ndarray, need_dx: bool = True) -> np.ndarray | None:
        cache, self.cache = self.cache, None
        idx, y = cache[0], cache[1]
        dp = self.act.grad_(np.array(dy, copy=True), y)
        if "bias" in self.conv.grads:
            np.sum(dp, axis=(1, 2, 3), out=self.conv.grads["bias"])
        if self.polyphase:
            w, dw = self.conv.params["weight"], self.conv.grads["weight"]
            dx = None
            dw_part = np.empty_like(dw) if len(idx) > 1 else dw
            for k, (a, b, zm, cols, g) in enumerate(idx):
                bwd = F.shiftpool_backward if isinstance(g, F.ShiftPoolGeometry) else F.convpool_backward
                d = bwd(dp[:, a:b], zm, cols, w, g, dw_part, need_dx, self.conv.ws["t"], tag=f"{k}:")
                if len(idx) > 1:
                    if k == 0:
                        dw[...] = dw_part
                    else:
                        dw += dw_part
                if d is not None:
                    if len(idx) == 1:
                        return d
                    if dx is None:
                        dx = np.empty((d.shape[0], dp.shape[1], *d.shape[2:]), d.dtype)
                    dx[:, a:b] = d
            return dx
        cols, g = self.conv.cache
        pool = self.pool
        if g.shift and not any(pool.pads):
            ws = self.conv.ws["t"]
            grid = ws.get("dzg", (g.f, g.max_shift + g.grid), dp.dtype, zero=True)
            region = grid[:, g.max_shift:].reshape(g.f, g.n, g.hp, g.wp)[:, :, :g.oh, :g.ow]
            if pool.stride[0] < pool.kernel[0] or pool.stride[1] < pool.kernel[1]:
                region[...] = 0  # overlapping windows accumulate
            F.maxpool_backward(dp, idx, (g.oh, g.ow), pool.kernel, pool.stride, pool.pads, out=region)
            return self.conv.backward_conv(None, need_dx, dz_grid=grid)
        dz = F.maxpool_backward(dp, idx, (g.oh, g.ow), pool.kernel, pool.stride, pool.pads)
        return self.conv.backward_conv(dz, need_dx)


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------
def _one_blas_thread(method):
    """Run the engine's many small GEMMs on one BLAS thread: measured here, a 2-thread OpenBLAS made
    LeNet-5 training 4x slower as soon as anything else used a core (threads wake for every small
    GEMM and wait for each other), and it was no faster on an idle machine. Both cores are used by
    splitting batches over two processes instead (enable_workers). The previous count is restored."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        if self.blas_threads is None:
            return method(self, *args, **kwargs)
        with blas_threads(self.blas_threads):
            return method(self, *args, **kwargs)

    return wrapper


class Model:
    #: BLAS threads while the model computes (None: leave NumPy's setting alone)
    blas_threads: int | None = 1

    def __init__(self, spec: Spec, seed: int = 0, dtype: Any = np.float32, fuse: bool = True):
        self.spec = spec
        self.inference: Inference = infer(spec)
        if not self.inference.valid:
            raise EngineError(self.inference.error_message)
        self.dtype = np.dtype(dtype)
        self.seed = seed
        self.ops: list[Op] = []
        for info, layer in zip(self.inference.layers, spec.layers, strict=True):
            op = OP_CLASSES[layer.type](layer, info.index, tuple(info.input_shape), tuple(info.output_shape),
                                        self.dtype)
            self.ops.append(op)

        # One flat buffer for every trainable array (the optimizer updates it in one go).
        sizes = [(op, name, shape) for op, info in zip(self.ops, self.inference.layers, strict=True)
                 for name, shape in info.param_shapes.items()]
        total = sum(math.prod(s) for _, _, s in sizes)
        self.flat_params = np.zeros(total, self.dtype)
        self.flat_grads = np.zeros(total, self.dtype)
        off = 0
        for op, name, shape in sizes:
            k = math.prod(shape)
            op.params[name] = self.flat_params[off:off + k].reshape(shape)
            op.grads[name] = self.flat_grads[off:off + k].reshape(shape)
            off += k
        for op, info in zip(self.ops, self.inference.layers, strict=True):
            for name, shape in info.buffer_shapes.items():
                op.buffers[name] = np.zeros(shape, self.dtype)

        init_seq, drop_seq = np.random.SeedSequence(seed).spawn(2)
        init_rng = np.random.default_rng(init_seq)
        for op in self.ops:
            op.init_params(init_rng)
        self.set_dropout_seed(drop_seq)

        out = self.inference.output_shape
        last = spec.layers[-1].type
        self.output_shape: Shape = tuple(out)
        if last == "Sigmoid" and tuple(out) == (1,):
            self.loss_kind = "binary_ce"
            self.num_classes = 2
            self._head = len(self.ops) - 1
        else:
            self.loss_kind = "softmax_ce"
            self.num_classes = int(out[0]) if len(out) == 1 else 0
            self._head = len(self.ops) - 1 if last == "Softmax" else len(self.ops)
        self._fuse = fuse
        self._plan_train = self._plan(0, self._head, fuse)
        self._plan_full = self._plan(0, len(self.ops), fuse)
        self._plan_head = self._plan(0, self._head, fuse)
        self._parallel: Any = None

    # --- structure ------------------------------------------------------------------------------
    def _plan(self, start: int, stop: int, fuse: bool) -> list:
        steps: list = []
        i = start
        while i < stop:
            op = self.ops[i]
            if (fuse and isinstance(op, ConvOp) and i + 2 < stop
                    and self.ops[i + 1].monotone and isinstance(self.ops[i + 2], MaxPoolOp)):
                steps.append(ConvActPool(op, self.ops[i + 1], self.ops[i + 2]))
                i += 3
                continue
            steps.append(op)
            i += 1
        return steps

    def set_dropout_seed(self, seed: Any) -> None:
        """Re-seed every Dropout layer's mask generator (tests fix masks this way)."""
        seqs = np.random.SeedSequence(seed) if not isinstance(seed, np.random.SeedSequence) else seed
        drops = [op for op in self.ops if isinstance(op, DropoutOp)]
        for op, s in zip(drops, seqs.spawn(len(drops)), strict=True):
            op.rng = np.random.default_rng(s)

    # --- tensors in and out ---------------------------------------------------------------------
    def _check_x(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        want = tuple(self.spec.input_shape)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise EngineError(
                f"input must be a batch of shape (N, {', '.join(map(str, want))}), got {tuple(x.shape)}")
        return x

    def _to_internal(self, x: np.ndarray) -> np.ndarray:
        x = self._check_x(x).astype(self.dtype, copy=False)
        return np.ascontiguousarray(x.transpose(1, 0, 2, 3))

    @staticmethod
    def _to_external(y: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(y.transpose(1, 0, 2, 3)) if y.ndim == 4 else y

    def _check_y(self, y: np.ndarray, n: int) -> np.ndarray:
        y = np.asarray(y)
        if y.shape != (n,):
            raise EngineError(f"labels must be a vector of {n} class indices, got shape {y.shape}")
        if self.num_classes < 1:
            raise EngineError("the last layer must output a flat vector of class scores: "
                              "add Flatten and Dense(number of classes) at the end")
        y = y.astype(np.int64, copy=False)
        if n and (y.min() < 0 or y.max() >= self.num_classes):
            raise EngineError(f"labels must be in 0..{self.num_classes - 1} for this model's last layer, "
                              f"got {int(y.min())}..{int(y.max())}")
        return y

    # --- forward / backward ---------------------------------------------------------------------
    def _run(self, steps: list, h: np.ndarray, training: bool) -> np.ndarray:
        for s in steps:
            h = s.forward(h, training)
        return h

    @_one_blas_thread
    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        """Output of the whole spec (with its final Softmax / Sigmoid), NCHW or (N, F)."""
        self._last_steps = self._plan_full if training else None
        par = self._parallel  # read once: another thread may close() it meanwhile
        if not training and par is not None:
            return par.infer(self._check_x(x).astype(self.dtype, copy=False), False, self._forward_local)
        return self._forward_local(x, training)

    def _forward_local(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        return self._to_external(self._run(self._plan_full, self._to_internal(x), training))

    @_one_blas_thread
    def backward(self, dy: np.ndarray, need_input_grad: bool = True) -> np.ndarray | None:
        """Backpropagate d(loss)/d(output of the last forward(training=True)); fills the gradients."""
        steps = getattr(self, "_last_steps", None)
        if steps is None:
            raise EngineError("backward() needs a forward(x, training=True) first")
        dy = np.asarray(dy, self.dtype)
        if dy.ndim == 4:
            dy = np.ascontiguousarray(dy.transpose(1, 0, 2, 3))
        dx = self._backprop(steps, dy, need_input_grad)
        self._last_steps = None
        return None if dx is None else self._to_external(np.array(dx, copy=True))

    def _backprop(self, steps: list, dy: np.ndarray, need_input_grad: bool) -> np.ndarray | None:
        for k in range(len(steps) - 1, -1, -1):
            dy = steps[k].backward(dy, need_dx=need_input_grad or k > 0)
        return dy

    @_one_blas_thread
    def activations(self, x: np.ndarray) -> list[np.ndarray]:
        """Every layer's output for `x`, inference mode, layer by layer (for feature-map views)."""
        h = self._to_internal(x)
        outs = []
        for op in self.ops:
            h = op.forward(h, False)
            outs.append(self._to_external(np.array(h, copy=True)))
        return outs

    @_one_blas_thread
    def score_gradients(self, x: np.ndarray, classes: np.ndarray, layer: int | None = None
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Gradients of each image's class score (its logit, before a final Softmax/Sigmoid) for
        saliency maps: returns (logits, d score / d input, output of `layer`, d score / d that output),
        the last two None without `layer`. The network computes as in inference (Dropout off,
        BatchNorm on its running statistics), layer by layer, so the gradients are those of what
        predict() computes. Overwrites gradients() (not the weights); not for use while training."""
        h = self._to_internal(x)
        n = h.shape[1] if h.ndim == 4 else h.shape[0]
        classes = np.broadcast_to(np.asarray(classes, np.int64), (n,))
        backs: list = []
        acts: list[np.ndarray] = []
        for op in self.ops[:self._head]:
            if isinstance(op, DropoutOp):
                backs.append(None)
            elif isinstance(op, BatchNormOp):  # inference: a fixed per-channel scale and shift
                h = op.forward(h, False)
                scale = op.params["weight"] / np.sqrt(op.buffers["running_var"] + op.cfg["eps"])
                backs.append(scale.reshape(-1, *([1] * (h.ndim - 1))) if h.ndim == 4 else scale)
            else:
                h = op.forward(h, True)
                backs.append(op)
            acts.append(h)
        logits = self._to_external(h)
        d = np.zeros_like(h)
        if self.loss_kind == "binary_ce":  # one logit z scores class 1; class 0 scores -z
            d[:, 0] = np.where(classes == 1, 1.0, -1.0)
        else:
            d[np.arange(n), classes] = 1.0
        act = dact = None
        for k in range(len(backs) - 1, -1, -1):
            if k == layer:
                act, dact = self._to_external(acts[k].copy()), self._to_external(np.array(d, copy=True))
            b = backs[k]
            if isinstance(b, Op):
                d = b.backward(d, need_dx=True)
            elif b is not None:
                d = d * b
        if layer is not None and act is None:
            raise EngineError(f"layer {layer} is not before the class scores (layers 0..{self._head - 1})")
        return logits, self._to_external(np.array(d, copy=True)), act, dact

    # --- losses and training ----------------------------------------------------------------------
    def _loss(self, logits: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        if self.loss_kind == "binary_ce":
            losses, grad = L.binary_cross_entropy_with_logits(logits, y)
            correct = int(np.count_nonzero((logits[:, 0] > 0) == (y == 1)))
        else:
            losses, grad = L.softmax_cross_entropy(logits, y)
            correct = int(np.count_nonzero(logits.argmax(axis=1) == y))
        return losses, grad, correct

    @_one_blas_thread
    def loss_and_grad(self, x: np.ndarray, y: np.ndarray, scale: float = 1.0) -> tuple[float, int]:
        """Forward (training mode), loss, backward: fills flat_grads with d(mean loss * scale)/dparams.
        Returns (sum of per-sample losses, n_correct)."""
        h = self._to_internal(x)
        y = self._check_y(y, h.shape[1] if h.ndim == 4 else h.shape[0])
        logits = self._run(self._plan_train, h, True)
        losses, grad, correct = self._loss(logits, y)
        if scale != 1.0:
            grad *= grad.dtype.type(scale)
        self._backprop(self._plan_train, grad, False)
        return float(losses.sum()), correct

    @_one_blas_thread
    def train_step(self, x: np.ndarray, y: np.ndarray, optimizer) -> tuple[float, int]:
        """One SGD step on the batch: returns (mean loss, number of correct predictions)."""
        n = len(x)
        if n == 0:
            raise EngineError("cannot train on an empty batch")
        par = self._parallel
        if par is not None:
            loss_sum, correct = par.loss_and_grad(x, y)
        else:
            loss_sum, correct = self.loss_and_grad(x, y)
        optimizer.step()
        return loss_sum / n, correct

    @_one_blas_thread
    def logits(self, x: np.ndarray) -> np.ndarray:
        """Inference-mode output before a final Softmax / Sigmoid that the loss folds in."""
        par = self._parallel
        if par is not None:
            return par.infer(self._check_x(x).astype(self.dtype, copy=False), True, self._logits_local)
        return self._logits_local(x)

    def _logits_local(self, x: np.ndarray) -> np.ndarray:
        return self._to_external(self._run(self._plan_head, self._to_internal(x), False))

    @_one_blas_thread
    def evaluate_batch(self, x: np.ndarray, y: np.ndarray) -> tuple[float, int, np.ndarray]:
        logits = self.logits(x)
        y = self._check_y(y, logits.shape[0])
        losses, _, correct = self._loss(logits, y)
        return float(losses.sum()), correct, self._proba_from_logits(logits)

    def _proba_from_logits(self, logits: np.ndarray) -> np.ndarray:
        if self.loss_kind == "binary_ce":
            p = F.sigmoid(logits[:, 0])
            return np.stack([1 - p, p], axis=1)
        return F.softmax(logits)

    @_one_blas_thread
    def predict_proba(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Class probabilities, computed in batches (inference mode)."""
        x = self._check_x(x)
        if self.num_classes < 1:
            raise EngineError("the last layer must output a flat vector of class scores: "
                              "add Flatten and Dense(number of classes) at the end")
        outs = [self._proba_from_logits(self.logits(x[i:i + batch_size])) for i in range(0, len(x), batch_size)]
        if not outs:
            return np.zeros((0, self.num_classes), self.dtype)
        return np.concatenate(outs)

    # --- weights ---------------------------------------------------------------------------------
    def parameters(self) -> dict[str, np.ndarray]:
        return {f"layers.{op.index}.{k}": v for op in self.ops for k, v in op.params.items()}

    def gradients(self) -> dict[str, np.ndarray]:
        return {f"layers.{op.index}.{k}": v for op in self.ops for k, v in op.grads.items()}

    def buffers(self) -> dict[str, np.ndarray]:
        return {f"layers.{op.index}.{k}": v for op in self.ops for k, v in op.buffers.items()}

    def _named_arrays(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for op in self.ops:
            for k, v in op.params.items():
                out[f"layers.{op.index}.{k}"] = v
            for k, v in op.buffers.items():
                out[f"layers.{op.index}.{k}"] = v
        return out

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of every weight and running statistic, by stable name, PyTorch shapes."""
        return {k: v.copy() for k, v in self._named_arrays().items()}

    def load_state_dict(self, state: dict[str, np.ndarray], strict: bool = True) -> None:
        mine = self._named_arrays()
        missing = [k for k in mine if k not in state]
        extra = [k for k in state if k not in mine]
        bad = [f"{k} {tuple(np.shape(state[k]))} (expected {v.shape})" for k, v in mine.items()
               if k in state and tuple(np.shape(state[k])) != v.shape]
        problems = []
        if bad:
            problems.append("wrong shape: " + ", ".join(bad))
        if strict and missing:
            problems.append("missing: " + ", ".join(missing))
        if strict and extra:
            problems.append("unexpected: " + ", ".join(extra))
        if problems:
            raise EngineError("weights do not fit this architecture; " + "; ".join(problems))
        for k, v in mine.items():
            if k in state:
                arr = np.asarray(state[k])
                if not np.all(np.isfinite(arr)):
                    raise EngineError(f"weights contain NaN or infinity: {k}")
                v[...] = arr
        if self._parallel is not None:
            self._parallel.sync_buffers()

    # --- data parallelism (engine.parallel drives a model through these; the model never imports it) ---
    def attach_workers(self, workers: Any) -> None:
        """Route training steps and inference through `workers` (an engine.parallel.DataParallel
        made for this model) until close(); see engine.parallel.enable_workers."""
        self.close()
        self._parallel = workers

    def check_batch(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The batch as the model takes it (NCHW inputs, int64 labels in range), or EngineError."""
        x = self._check_x(x)
        return x, self._check_y(y, len(x))

    def draw_dropout_seeds(self) -> list[int]:
        """One mask seed per Dropout layer for the next step, from the model's own generators."""
        return [int(op.rng.integers(2**62)) for op in self.ops if isinstance(op, DropoutOp)]

    @contextlib.contextmanager
    def dropout_share(self, seeds: list[int], lo: int, total: int) -> Iterator[None]:
        """Inside, a training forward pass draws each Dropout mask for a whole batch of `total`
        rows from `seeds` and uses rows lo.. of it: a batch split over processes gets exactly the
        masks it would get in one process."""
        drops = [op for op in self.ops if isinstance(op, DropoutOp)]
        for op, s in zip(drops, seeds, strict=True):
            op.batch_seed, op.batch_slice = s, (lo, total)
        try:
            yield
        finally:
            for op in drops:
                op.batch_seed, op.batch_slice = None, None

    @property
    def workers(self) -> int:
        return 2 if self._parallel is not None and self._parallel.alive else 1

    @property
    def num_parameters(self) -> int:
        return int(self.flat_params.size)

    def close(self) -> None:
        """Stop the helper process, if any; the model keeps working in this process."""
        par, self._parallel = self._parallel, None
        if par is not None:
            par.close()

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
