"""BatchNorm2D and BatchNorm1D: one normalisation on maps (per channel) or vectors (per feature).

The two types differ only in the rank they accept and in their PyTorch class, so they share this
file; their arithmetic is engine.functional.batchnorm_forward/backward. The fused training steps
BatchNorm -> ReLU and BatchNorm2D -> ReLU -> MaxPool2D live here too (BatchNormOp.fuse), for ReLU
and LeakyReLU alike (one op, engine.layers.relu.ReLUOp, with a slope `leak` for negatives).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from engine import functional as F
from engine.layers.base import Field, Layer, Op, Shape
from engine.layers.maxpool2d import MaxPoolOp
from engine.layers.relu import ReLUOp


class BatchNormOp(Op):
    #: set by Model.batchnorm_share while a batch is split over processes: sums over the shares
    allsum: Any = None

    def init_params(self, rng):
        self.params["weight"][...] = 1.0
        self.params["bias"][...] = 0.0
        self.buffers["running_mean"][...] = 0.0
        self.buffers["running_var"][...] = 1.0

    def _state(self) -> tuple:
        """gamma, beta, the running statistics, momentum and eps, as the kernels take them."""
        return (self.params["weight"], self.params["bias"], self.buffers["running_mean"],
                self.buffers["running_var"], self.cfg["momentum"], self.cfg["eps"])

    def _view(self, x):
        if x.ndim == 4:
            return x.reshape(x.shape[0], -1), 1
        return x, 0

    def forward(self, x, training, leak=None):
        """`leak` (not None): a fused (leaky) ReLU with that slope for negatives."""
        x = np.ascontiguousarray(x)
        x2, axis = self._view(x)
        y2, cache = F.batchnorm_forward(x2, *self._state(), training, axis, self.allsum, leak, self.ws["t"])
        if training:
            self.cache = cache
        return y2.reshape(x.shape)

    def normalise(self, x, training):
        """(src, scale, shift) of engine.functional.batchnorm_normalise for maps `x`: the output
        is src * scale + shift per channel (src in x's shape, maybe a reused buffer)."""
        x = np.ascontiguousarray(x)
        x2, axis = self._view(x)
        src, scale, shift, cache = F.batchnorm_normalise(x2, *self._state(), training, axis, self.allsum,
                                                         self.ws["t"])
        if training:
            self.cache = cache
        return src.reshape(x.shape), scale, shift

    def backward(self, dy, need_dx=True):
        cache, self.cache = self.cache, None
        dy = np.ascontiguousarray(dy)
        dy2, axis = self._view(dy)
        dx2 = F.batchnorm_backward(dy2, cache, self.params["weight"], self.grads["weight"], self.grads["bias"], axis,
                                   self.allsum)
        return dx2.reshape(dy.shape)

    def forward_inference_grad(self, x):  # inference: a fixed per-channel scale and shift
        y = self.forward(x, False)
        scale = self.params["weight"] / np.sqrt(self.buffers["running_var"] + self.cfg["eps"])
        scale = scale.reshape(-1, *([1] * (y.ndim - 1))) if y.ndim == 4 else scale
        return y, lambda d: d * scale

    def fuse(self, following):
        if following and isinstance(following[0], MaxPoolOp):  # ReLU before BatchNorm, then a pool
            return BatchNormPool(self, None, following[0]), 2
        if not following or not isinstance(following[0], ReLUOp):
            return None
        if len(following) >= 2 and isinstance(following[1], MaxPoolOp):
            return BatchNormReLUPool(self, following[0], following[1]), 3
        return BatchNormReLU(self, following[0]), 2


class BatchNormReLU:
    """BatchNorm -> ReLU as one step computing the same function bit for bit: the ReLU runs in
    place on the normalised output and its mask is applied inside BatchNorm's backward (into a
    reused buffer), so ReLU's own output array and its backward temporaries are gone. Batch 64,
    one core, CPU ms forward / backward of the pair (`benchmarks/layer_profile.py photo96 photo64
    small_cifar`): 48x48x32 maps 8.3 / 11.8 -> 6.9 / 9.7, 32x32x32 4.6 / 6.1 -> 2.9 / 3.7,
    small_cifar's first block 6.6 / 6.4 -> 2.9 / 4.0 (with the leaner batchnorm_forward/backward).
    Plans fuse; activations() and saliency maps still run the layers one by one. The same for
    LeakyReLU (docs/performance.md, item 23): 32x48x48 maps at batch 32, one core, the pair
    14.8 / 16.4 -> 3.3 / 4.4 ms (its own layer used np.where: ~4.5 ns a value)."""

    def __init__(self, bn: BatchNormOp, relu: ReLUOp):
        self.bn, self.relu = bn, relu
        self.ops = (bn, relu)

    def forward(self, x, training):
        return self.bn.forward(x, training, leak=self.relu.leak)

    def backward(self, dy, need_dx=True):
        return self.bn.backward(dy, need_dx)


class BatchNormReLUPool:
    """BatchNorm2D -> ReLU -> MaxPool2D run as BatchNorm -> pool -> ReLU: max-pooling commutes with
    a non-decreasing function, so the ReLU and its mask shrink to the pooled values. Only the
    first maximum of a window gets a gradient; where that maximum is positive it is the first
    maximum after the ReLU too, and where it is not the ReLU zeroes the gradient either way, so
    every gradient equals the layer-by-layer one (the float32 test compares them). A LeakyReLU
    keeps the order of values too (alpha >= 0), and so does BatchNorm's per-channel scale and
    shift wherever every channel's scale (gamma / std) is positive, as it nearly always is: then
    the pool runs on the deviations x - mean (in training; on x in inference) and the scale and
    shift on the pooled quarter only, which spares two full-size passes and the normalised maps.
    The forward values are the layers' bit for bit (rounding is monotone); a gradient can go to
    another cell only where rounding ties two distinct values of one window (the layers route it
    to the first of them, this step to the larger; both valid subgradients). No full-size ReLU
    output is kept. Batch 64, one core, CPU ms forward / backward of the three layers against
    BatchNormReLU + MaxPool2D (`benchmarks/layer_profile.py photo96 photo64`, 3 runs): 48x48x32
    maps 12.4 / 13.2 -> 12.2 / 11.8, 24x24x64 6.1 / 6.3 -> 5.7 / 5.6, 32x32x32 5.3 / 5.3 -> 5.3 /
    5.0 (forward alone, without the neighbours' page faults: 12.1 -> 10.9 at 48x48x32). Pooling
    the deviations, batch 32, one core, forward on 16x64x64 maps 4.6-5.7 -> 3.9-4.2 ms, 32x32x32
    2.3-2.7 -> 2.1-2.2 (a Conv-BN-ReLU-MaxPool net at 3x64x64, old and new code alternating)."""

    def __init__(self, bn: BatchNormOp, relu: ReLUOp | None, pool: MaxPoolOp):
        self.bn, self.relu, self.pool = bn, relu, pool
        self.ops = (bn, pool) if relu is None else (bn, relu, pool)
        self.cache: Any = None

    def forward(self, x, training):
        pool = self.pool
        src, scale, shift = self.bn.normalise(x, training)
        scale, shift = scale.reshape(-1, 1, 1, 1), shift.reshape(-1, 1, 1, 1)
        if (scale > 0).all():  # increasing per channel: pool first
            p, idx = F.maxpool_forward(src, pool.kernel, pool.stride, pool.pads, with_index=training)
            p *= scale
            p += shift
        else:  # the normalised maps in a buffer reused from step to step, then the pool
            y = np.multiply(src, scale, out=self.bn.ws["t"].get("y", src.shape, src.dtype) if training else None)
            y += shift
            p, idx = F.maxpool_forward(y, pool.kernel, pool.stride, pool.pads, with_index=training)
        if self.relu is not None:
            F.leaky_relu_forward(p, self.relu.leak, out=p)
        if training:
            self.cache = (idx, p)
        return p

    def backward(self, dy, need_dx=True):
        (idx, p), self.cache = self.cache, None
        pool = self.pool
        if self.relu is not None:
            dy = F.leaky_relu_backward(dy, p, self.relu.leak)
        g = F.maxpool_backward(dy, idx, pool.in_shape[1:], pool.kernel, pool.stride, pool.pads, ws=pool.ws["t"])
        return self.bn.backward(g, need_dx)


class BatchNormPool(BatchNormReLUPool):
    """BatchNorm2D -> MaxPool2D (the "ReLU before BatchNorm" designs of Keras-style tutorials:
    Conv -> ReLU -> BatchNorm -> MaxPool): the same step without the activation, so where every
    scale is positive the pool runs on the deviations and the scale and shift on the pooled quarter
    only, and no full-size normalised output is written. relu_bn32's two pairs, batch 32, one core,
    CPU ms of forward + backward, the two layers -> this step, two runs: 32 channels at 32x32
    5.07 / 4.42 -> 4.85 / 4.21 (forward alone 2.24 / 1.84 -> 1.83 / 1.59), 64 channels at 16x16
    2.06 / 2.09 -> 2.00 / 1.84; the same outputs bit for bit."""


class _BatchNorm(Layer):
    category = "Regularization"
    fields = (
        Field("momentum", "exclusive_float", 0.1, help="Weight of each batch in the running statistics.",
              minimum=0.0, maximum=1.0),
        Field("eps", "exclusive_float", 1e-5, help="Added to the variance for numerical safety.",
              minimum=0.0, maximum=1.0),
    )
    op = BatchNormOp
    elementwise = True
    training_buffers = 3  # deviations from the mean, masked gradient, ReLU mask (engine.functional)
    keeps_scores = True
    keeps_maps = True
    icon = "bell"

    def param_shapes(self, input_shape: Shape) -> dict[str, Shape]:
        c = input_shape[0]
        return {"weight": (c,), "bias": (c,)}

    def buffer_shapes(self, input_shape: Shape) -> dict[str, Shape]:
        c = input_shape[0]
        return {"running_mean": (c,), "running_var": (c,)}

    def to_onnx(self, g, x, in_shape, name):
        inputs = [x, *(g.weight(f"{name}.{k}") for k in ("weight", "bias", "running_mean", "running_var"))]
        return g.node("BatchNormalization", inputs, name, self.onnx_out(name),
                      epsilon=float(self.config["eps"]), momentum=1.0 - float(self.config["momentum"]))

    def torch_module(self, in_shape):
        cls = "BatchNorm2d" if self.type == "BatchNorm2D" else "BatchNorm1d"
        return f"{cls}({in_shape[0]}, eps={float(self.config['eps'])!r}, momentum={float(self.config['momentum'])!r})"

    def explain_params(self, info):
        c = info.param_shapes["weight"][0]
        return (f"<b>Parameters:</b> <tt>2 x {c} = {info.trainable:,}</tt> learned (scale γ and shift β per "
                f"channel) + <tt>2 x {c} = {info.non_trainable:,}</tt> running statistics (not trained).")


class BatchNorm2D(_BatchNorm):
    type = "BatchNorm2D"
    description = "Normalises each channel over the batch, then scales and shifts it (learned)."
    needs_spatial = True


class BatchNorm1D(_BatchNorm):
    type = "BatchNorm1D"
    description = "Normalises each feature over the batch, then scales and shifts it (learned)."
    needs_spatial = False
