"""Conv2D: config, shapes, compute (kernels in engine.functional), exporters, hints.

Its fused fast path lives here too: a Conv2D followed by a monotone activation and a MaxPool2D is
run as conv -> pool -> bias -> activation (max-pooling commutes with adding a per-channel bias and
with a non-decreasing function), which pools the raw GEMM output straight off its padded grid and
applies bias and activation to a quarter of the values.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from engine import functional as F
from engine import spectral as S
from engine import winograd as W
from engine.layers.base import (
    Field,
    Layer,
    Op,
    Shape,
    compact_pair,
    pair_of,
    same_padding,
    uniform_fan_in,
    window_output,
)
from engine.layers.maxpool2d import MaxPoolOp
from engine.layers.relu import ReLUOp


class _PerBatchSize:
    """Geometries for the last few batch sizes seen (training, an epoch's short last batch,
    inference), each built once. Replaced as a whole, never edited, so another thread reading it
    never sees it half-updated."""

    def __init__(self) -> None:
        self._by_n: dict[int, Any] = {}

    def get(self, n: int, make: Callable[[], Any]) -> Any:
        g = self._by_n.get(n)
        if g is None:
            g = make()
            self._by_n = {**dict(list(self._by_n.items())[-3:]), n: g}
        return g


class ConvOp(Op):
    def __init__(self, *a):
        super().__init__(*a)
        self.kernel = self.layer.kernel
        self.stride = self.layer.stride
        self.pads = self.layer.pads(self.in_shape)
        self._geo = _PerBatchSize()
        self._wgeo = _PerBatchSize()
        self._sgeo = _PerBatchSize()
        #: set by ConvActPool when a non-overlapping max-pool follows: the pooled layouts (polyphase,
        #: Winograd's tiles) keep some layers off the frequency domain (engine.spectral.applies)
        self.pooled = False
        #: None = the frequency domain where engine.spectral.applies (ahead of Winograd and the
        #: direct paths); True/False force it on or off (tests)
        self.spectral: bool | None = None
        #: None = Winograd F(2x2, 3x3) or F(2x2, 5x5) where engine.winograd.applies; True/False force
        #: it (tests)
        self.winograd: bool | None = None
        #: None = the stride-1 direct layout by ConvGeometry's rule; True/False force the compact
        #: gather / the tap shifts (tests)
        self.gather: bool | None = None
        #: None = the gather's batch-innermost layout on small maps (ConvGeometry's rule); True/False
        #: force it on or off where the gather runs (tests)
        self.batch_inner: bool | None = None
        #: None = the kernel-row lowering where engine.functional.rows_pay says; True/False force it
        #: on or off (tests)
        self.rows: bool | None = None

    def uses_spectral(self) -> bool:
        if self.spectral is not None:
            return self.spectral and self.stride == (1, 1)
        if any(v is not None for v in (self.winograd, self.gather, self.batch_inner, self.rows)):
            return False  # another path forced (tests compare it with the direct one)
        return S.applies(self.kernel, self.stride, self.in_shape[0], self.out_shape[1:], self.pooled)

    def spectral_geometry(self, n: int) -> S.SpectralGeometry:
        c, h, w = self.in_shape
        return self._sgeo.get(n, lambda: S.SpectralGeometry((c, n, h, w), self.cfg["filters"], self.kernel, self.pads))

    def uses_winograd(self, training: bool) -> bool:
        if self.winograd is not None:
            return self.winograd and W.has_tiles(self.kernel) and self.stride == (1, 1)
        if self.uses_spectral():
            return False
        return W.applies(self.kernel, self.stride, self.in_shape[0], self.cfg["filters"], training,
                         out_hw=self.out_shape[1:])

    def winograd_geometry(self, n: int) -> W.WinogradGeometry:
        c, h, w = self.in_shape
        return self._wgeo.get(n, lambda: W.WinogradGeometry((c, n, h, w), self.cfg["filters"], self.pads,
                                                            self.kernel[0]))

    def geometry(self, n: int, training: bool = False) -> F.ConvGeometry:
        c, h, w = self.in_shape
        gather = self.gather
        if training and gather is None and F.stem_trains_gathered(c, self.kernel, self.stride) and \
                self.batch_inner is None and self.rows is None:
            gather, key = True, -n  # its own entry: inference keeps the shifts
        else:
            key = n
        return self._geo.get(key, lambda: F.ConvGeometry((c, n, h, w), self.cfg["filters"], self.kernel, self.stride,
                                                         self.pads, gather=gather,
                                                         batch_inner=self.batch_inner, rows=self.rows))

    def init_params(self, rng):
        uniform_fan_in(self, self.in_shape[0] * self.kernel[0] * self.kernel[1], rng)

    def conv(self, x: np.ndarray, training: bool) -> tuple[np.ndarray, bool]:
        """The bias-free convolution, and whether it is a fresh array of this layer's own
        (the frequency domain, Winograd, the compact gather, a 1x1 product) rather than a view into
        a reused grid."""
        tag = "t" if training else "i"
        if self.uses_spectral():
            sg = self.spectral_geometry(x.shape[1])
            z, kept = S.conv_forward(x, self.params["weight"], sg, self.ws[tag], training)
            if training:
                self.cache = (kept, sg)
            return z, True
        if self.uses_winograd(training):
            wg = self.winograd_geometry(x.shape[1])
            z = W.conv_forward(x, self.params["weight"], wg, self.ws[tag], training)
            if training:
                self.cache = (None, wg)
            return z, True
        g = self.geometry(x.shape[1], training)
        z, cols = F.conv2d_forward(x, self.params["weight"], g, self.ws[tag], keep=training)
        if training:
            self.cache = (cols, g)
        return z, not g.grid_output(training)

    def forward(self, x, training):
        z, fresh = self.conv(x, training)
        if fresh:
            # the bias goes into the fresh output: no copy (photo64's 32 -> 32 layer wrote its 8 MB
            # output twice)
            if "bias" in self.params:
                z += self.params["bias"].reshape(-1, 1, 1, 1)
            return z
        y = np.empty(z.shape, self.dtype)
        if "bias" in self.params:
            np.add(z, self.params["bias"].reshape(-1, 1, 1, 1), out=y)
        else:
            y[...] = z
        return y

    def backward_conv(self, dz, need_dx, dz_grid=None):
        cols, g = self.cache
        self.cache = None
        if isinstance(g, S.SpectralGeometry):
            return S.conv_backward(dz, cols, self.params["weight"], g, self.grads["weight"], need_dx, self.ws["t"])
        if isinstance(g, W.WinogradGeometry):
            return W.conv_backward(dz, self.params["weight"], g, self.grads["weight"], need_dx, self.ws["t"])
        return F.conv2d_backward(dz, cols, self.params["weight"], g, self.grads["weight"], need_dx,
                                 self.ws["t"], dz_grid=dz_grid)

    def backward(self, dy, need_dx=True):
        if "bias" in self.grads:
            np.sum(dy, axis=(1, 2, 3), out=self.grads["bias"])
        return self.backward_conv(dy, need_dx)

    def fuse(self, following):
        if len(following) >= 2 and following[0].monotone and isinstance(following[1], MaxPoolOp):
            return ConvActPool(self, following[0], following[1]), 3
        if following and isinstance(following[0], ReLUOp):  # LeakyReLU's op too
            return ConvReLU(self, following[0]), 2
        return None


class ConvReLU:
    """Conv2D -> ReLU as one step (the all-convolutional and VGG-style stacks without BatchNorm):
    the ReLU runs in place on the convolution's own fresh output, and in the backward pass its
    mask is applied into a buffer reused from step to step, so neither a second full-size output
    nor a fresh gradient array is made per step. The same operations as the two layers one after
    the other (the float32 test compares them bit for bit)."""

    def __init__(self, conv: ConvOp, relu: ReLUOp):
        self.conv, self.relu = conv, relu
        self.ops = (conv, relu)
        self.cache: Any = None

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        y = self.relu.apply_(self.conv.forward(x, training))
        if training:
            self.cache = y
        return y

    def backward(self, dy: np.ndarray, need_dx: bool = True) -> np.ndarray | None:
        y, self.cache = self.cache, None
        g = F.leaky_relu_backward(dy, y, self.relu.leak, out=self.conv.ws["t"].get("relu_g", dy.shape, dy.dtype))
        return self.conv.backward(g, need_dx)


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
        self._poly_shape = (conv.stride == (1, 1) and pool.kernel == pool.stride and not any(pool.pads)
                            and pool.kernel[0] * pool.kernel[1] < 256)
        conv.pooled = self._poly_shape
        self._geo = _PerBatchSize()
        #: None = choose by cost estimate; True/False force the shift / tap formulation (tests)
        self.use_shifts: bool | None = None

    @property
    def polyphase(self) -> bool:
        """Whether the polyphase layout applies (a frequency-domain convolution's output is pooled
        by the generic path instead)."""
        return self._poly_shape and not self.conv.uses_spectral()

    def geometry(self, n: int) -> F.ConvPoolGeometry:
        return self._geo.get(n, lambda: self._new_geometry(n))

    def _new_geometry(self, n: int) -> F.ConvPoolGeometry:
        c, h, w = self.conv.in_shape
        args = ((c, n, h, w), self.conv.cfg["filters"], self.conv.kernel, self.conv.pads, self.pool.kernel)
        g = F.ConvPoolGeometry(*args)
        taps, shifts = F.shiftpool_cost(g)
        if self.use_shifts if self.use_shifts is not None else shifts < taps:
            g = F.ShiftPoolGeometry(*args)
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

    def winograd_pool(self, training: bool, n: int = 1) -> bool:
        """A 3x3 convolution under a 2x2 pool on the Winograd path, pooled off its output tiles:
        each output tile is one pooling window (even output sizes only: an odd one leaves
        half-windows). In training where winograd_train chooses Winograd for a batch of n."""
        conv = self.conv
        if not (self.polyphase and self.pool.kernel == (2, 2) and conv.out_shape[1] % 2 == 0
                and conv.out_shape[2] % 2 == 0):
            return False
        if training:
            return self.winograd_train(n)
        # inference: 5x5 stays on the polyphase path, which runs the chunked inference at least as
        # fast in one process (lenet_colour32's 16 -> 32 at 16x16, batch 128: 17.4 ms either way)
        # and faster in two, where the transforms' memory traffic meets the other process's
        # (forward 6,500-7,400 img/s against 5,600-5,800 with Winograd, two pairs)
        return conv.uses_winograd(False) and (conv.kernel == (3, 3) or conv.winograd is True)

    #: polyphase im2col matrices above this many floats train faster on the Winograd path (pooled
    #: off its output tiles): per core, conv + ReLU + pool forward + backward, 32 -> 32 at 32x32
    #: 97 -> 58 ms CPU (18.9M floats), 64 -> 64 at 16x16 65 -> 54 (9.4M); since the flat-row
    #: transforms also the MNIST CNN's 32 -> 64 at 14x14: batch 64 (3.6M) 24.5 -> 21.4 ms, batch 32
    #: (1.8M, one process's share) 14.3 -> 11.5 ms, but batch 16 (0.9M) 6.4 -> 8.1 ms
    poly_train_floats = 1_200_000

    def winograd_train(self, n: int) -> bool:
        """Training on the Winograd convolution, then the generic pool below, instead of polyphase."""
        conv = self.conv
        if not conv.uses_winograd(True):
            return False
        if conv.winograd:  # forced (tests)
            return True
        g = self.geometry(n)
        rows = g.rows * g.lq if isinstance(g, F.ShiftPoolGeometry) else g.k * g.np * g.lq
        return rows > self.poly_train_floats

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        if self.winograd_pool(training, x.shape[1]):
            wg = self.conv.winograd_geometry(x.shape[1])
            p = W.conv_maxpool2_forward(x, self.conv.params["weight"], wg, self.conv.ws["t" if training else "i"],
                                           training)
            y = self._bias_act(p)
            if training:
                self.cache = (wg, y)
            return y
        if self.polyphase and not (training and self.winograd_train(x.shape[1])):
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
        if not training and not any(self.pool.pads) and not self.conv.uses_spectral():
            g = self.conv.geometry(x.shape[1])
            if F.patch_rows_infer(g):  # an RGB stem: pooled chunk by chunk
                return self._bias_act(F.patch_rows_pooled(x, self.conv.params["weight"], g, self.conv.ws["i"],
                                                          self.pool.kernel, self.pool.stride))
        z, _ = self.conv.conv(x, training)
        p, idx = F.maxpool_forward(z, self.pool.kernel, self.pool.stride, self.pool.pads, with_index=training)
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
        if isinstance(idx, W.WinogradGeometry):
            return W.conv_maxpool2_backward(dp, self.conv.params["weight"], idx, self.conv.grads["weight"],
                                               need_dx, self.conv.ws["t"])
        if isinstance(idx, list):  # polyphase: the chunks' parts
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
        if isinstance(g, F.ConvGeometry) and g.shift and not any(pool.pads):
            ws = self.conv.ws["t"]
            grid = ws.get("dzg", (g.f, g.max_shift + g.grid), dp.dtype, zero=True)
            region = grid[:, g.max_shift:].reshape(g.f, g.n, g.hp, g.wp)[:, :, :g.oh, :g.ow]
            if pool.stride[0] < pool.kernel[0] or pool.stride[1] < pool.kernel[1]:
                region[...] = 0  # overlapping windows accumulate
            F.maxpool_backward(dp, idx, (g.oh, g.ow), pool.kernel, pool.stride, pool.pads, out=region)
            return self.conv.backward_conv(None, need_dx, dz_grid=grid)
        dz = F.maxpool_backward(dp, idx, (g.oh, g.ow), pool.kernel, pool.stride, pool.pads)
        return self.conv.backward_conv(dz, need_dx)


class Conv2D(Layer):
    type = "Conv2D"
    category = "Convolution"
    description = "Slides learned filters over the image; each filter makes one feature map."
    needs_spatial = True
    op = ConvOp
    score_field = "filters"
    icon = "kernel"
    palette_defaults = {"filters": 16, "kernel_size": 3, "padding": "same"}
    shows_feature_maps = True
    window_word = "kernel"
    keeps_maps = True
    shows_filters = True
    fields = (
        Field("filters", "int", help="How many filters, i.e. output feature maps."),
        Field("kernel_size", "pair", help="Filter size: an integer or [height, width]."),
        Field("stride", "pair", 1, help="Step between filter positions: integer or [h, w]."),
        Field(
            "padding",
            "conv_padding",
            "valid",
            help='"valid" (none), "same" (keep size / stride), an integer or [pad_h, pad_w].',
        ),
        Field("use_bias", "bool", True, help="Add a learned bias to each output map."),
    )

    @property
    def kernel(self) -> tuple[int, int]:
        return pair_of(self.config["kernel_size"])

    @property
    def stride(self) -> tuple[int, int]:
        return pair_of(self.config["stride"])

    def pads(self, input_shape: Shape) -> tuple[int, int, int, int]:
        """(top, bottom, left, right) zero padding for this input."""
        p = self.config["padding"]
        if p == "valid":
            return (0, 0, 0, 0)
        if p == "same":
            kh, kw = self.kernel
            sh, sw = self.stride
            return (*same_padding(input_shape[1], kh, sh), *same_padding(input_shape[2], kw, sw))
        ph, pw = pair_of(p)
        return (ph, ph, pw, pw)

    def geometry(self, input_shape: Shape):
        return self.kernel, self.stride, self.pads(input_shape)

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        self.check_input(input_shape)
        oh, ow = window_output(self, input_shape, self.kernel, self.stride, self.pads(input_shape))
        return (self.config["filters"], oh, ow)

    def param_shapes(self, input_shape: Shape) -> dict[str, Shape]:
        kh, kw = self.kernel
        f = self.config["filters"]
        shapes: dict[str, Shape] = {"weight": (f, input_shape[0], kh, kw)}
        if self.config["use_bias"]:
            shapes["bias"] = (f,)
        return shapes

    def macs(self, input_shape: Shape, output_shape: Shape) -> int:
        kh, kw = self.kernel
        f, oh, ow = output_shape
        return f * oh * ow * input_shape[0] * kh * kw

    def summary(self) -> str:
        kh, kw = self.kernel
        text = f"Conv2D {self.config['filters']}@{kh}x{kw}"
        p = self.config["padding"]
        text += f", {p}" if isinstance(p, str) else f", pad {compact_pair(pair_of(p))}"
        if self.stride != (1, 1):
            s = self.stride
            text += f", stride {s[0]}" if s[0] == s[1] else f", stride {s[0]}x{s[1]}"
        return text

    def to_onnx(self, g, x, in_shape, name):
        top, bottom, left, right = self.pads(in_shape)
        inputs = [x, g.weight(f"{name}.weight")]
        if self.config["use_bias"]:
            inputs.append(g.weight(f"{name}.bias"))
        return g.node("Conv", inputs, name, self.onnx_out(name), kernel_shape=list(self.kernel),
                      strides=list(self.stride), pads=[top, left, bottom, right], dilations=[1, 1], group=1)

    def torch_module(self, in_shape):
        top, bottom, left, right = self.pads(in_shape)
        cfg = self.config
        args = f"{in_shape[0]}, {cfg['filters']}, {self.kernel}, stride={self.stride}, bias={cfg['use_bias']}"
        if top == bottom and left == right:
            return f"nn.Conv2d({args}, padding={(top, left)})"
        return f"PadConv2d({args}, pads={(top, bottom, left, right)})"

    def explain_params(self, info):
        shapes = info.param_shapes
        f, c, kh, kw = shapes["weight"]
        text = f"{f} x ({c}*{kh}*{kw})" + (f" + {f}" if "bias" in shapes else "")
        return f"<b>Parameters</b> = filters x (in-channels*kh*kw) + bias: <tt>{text} = {info.trainable:,}</tt>"
