"""The arithmetic of every layer: forward and backward kernels, dtype-generic.

Spatial tensors are laid out **CNHW** inside the engine (channels first, then the batch). With that
layout a convolution is one GEMM whose output is already in the layout the next layer wants, and
each channel's pixels (of the whole batch) are one contiguous row, so every kernel tap of a stride-1
convolution is a *contiguous shift* of that row (conv2d_forward): im2col becomes kh*kw plain
memcpys instead of a strided gather, and the input gradient is one GEMM over shifted rows of the
output gradient instead of GEMM + col2im. Pooling, activations and dropout work on the last axes
and do not care about the layout. Flat tensors are (N, F) like PyTorch's.

The same functions run in float32 for training and in float64 for the gradient checks: nothing here
fixes a dtype, every temporary takes the dtype of its input.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

Pads = tuple[int, int, int, int]  # top, bottom, left, right
Pair = tuple[int, int]


class Workspace:
    """Reusable scratch arrays keyed by name, so a training loop does not allocate (and page-fault
    on) fresh multi-megabyte buffers at every step. Each name keeps one flat buffer at least as
    large as the largest request and hands out reshaped views of its front, so batch sizes that
    vary from step to step (the last batch of an epoch, the adaptive split of engine.parallel)
    reuse memory too. Buffers marked `zero` are zero when first handed out for a shape; callers
    only ever write the same interior region for that shape, so the borders stay zero."""

    def __init__(self) -> None:
        self._bufs: dict[str, np.ndarray] = {}
        self._shapes: dict[str, tuple] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: np.dtype, zero: bool = False) -> np.ndarray:
        dtype = np.dtype(dtype)
        size = 1
        for d in shape:
            size *= int(d)
        buf = self._bufs.get(name)
        key = (tuple(shape), dtype)
        if buf is None or buf.dtype != dtype or buf.size < size:
            buf = np.zeros(max(size, 1), dtype)  # fresh pages are zero
            self._bufs[name] = buf
            self._shapes[name] = key
        elif self._shapes.get(name) != key:
            self._shapes[name] = key
            if zero:
                buf[:size] = 0
        return buf[:size].reshape(shape)

    def clear(self) -> None:
        self._bufs.clear()
        self._shapes.clear()


def _ws(ws: Workspace | None) -> Workspace:
    return ws if ws is not None else Workspace()


# ----------------------------------------------------------------------------------------------
# GEMM shapes: convolution GEMMs are short and very wide; OpenBLAS runs the thin ones (few rows x
# few inner terms) about twice as fast in column chunks that stay in L2, measured on this machine.
# ----------------------------------------------------------------------------------------------
_CHUNK = 2048
#: floats of the per-chunk input-gradient product in convpool_backward (~600 KB: stays in L2)
_DX_CHUNK_FLOATS = 150_000
#: im2col floats per column chunk of a stride-1 convolution: each chunk of the matrix is written and
#: then multiplied while it is still in L2 (32 -> 32 channels at 32x32: forward -8 %, input gradient
#: -12 % CPU against whole-width passes, measured on this machine)
_COLS_CHUNK_FLOATS = 300_000
_DX_CHUNK_MIN = 256  # columns: narrower GEMMs lose more than L2 gains


def gemm_wide(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out (M, L) = a (M, K) @ b (K, L) for a wide b."""
    m, k = a.shape
    n = b.shape[1]
    if m * k > 400 or n <= 2 * _CHUNK:
        return np.matmul(a, b, out=out)
    for i in range(0, n, _CHUNK):
        np.matmul(a, b[:, i:i + _CHUNK], out=out[:, i:i + _CHUNK])
    return out


#: weight gradients with at most this many entries (F x K) are summed over column chunks of
#: _CHUNK: OpenBLAS runs such a tiny product over a long inner dimension 2-4x faster in pieces.
#: Larger ones run as (cols @ dz^T)^T. One core, L = 32 images' cells, ms, dz @ cols^T / (cols @
#: dz^T)^T / chunks: 16 x 27 (RGB 3x3 stem) at 34x34 0.65 / 0.44 / 0.30; 6 x 25 at 32x32 0.45 /
#: 0.25 / 0.11; 32 x 27 at 42x42 1.89 / 1.56 / 1.99; 32 x 48 at 34x34 1.22 / 0.95 / 1.27; 64 x 147
#: at 35x35 6.7 / 5.5 / 6.9
_DW_CHUNK_MAX = 512


def gemm_dw(dz: np.ndarray, cols: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out (F, K) = dz (F, L) @ cols (K, L).T, a long inner dimension L."""
    f, n = dz.shape
    k = cols.shape[0]
    if f * k > _DW_CHUNK_MAX or n <= 2 * _CHUNK:
        out[...] = np.matmul(cols, dz.T).T
        return out
    out[...] = 0
    for i in range(0, n, _CHUNK):
        out += np.matmul(dz[:, i:i + _CHUNK], cols[:, i:i + _CHUNK].T)
    return out


# ----------------------------------------------------------------------------------------------
# Convolution
# ----------------------------------------------------------------------------------------------
#: a stride-1 convolution whose padded grid has this many times as many cells as it has outputs
#: (small maps, 5x5 and larger kernels) runs on the compact gather instead of the tap shifts. Per
#: core, batch 32, forward + backward with the input gradient, shift -> gather: 5x5 32 -> 64 at
#: 16x16 (1.56 cells per output) 62.8 -> 42.9 ms, 5x5 32 -> 32 at 32x32 (1.27) 124 -> 111, 5x5
#: 3 -> 32 at 32x32 8.7 -> 6.9, 3x3 64 -> 128 at 7x7 (1.65) 14.7 -> 10.4; 3x3 3 -> 32 at 32x32
#: (1.13) 3.05 -> 3.12, and inference 1.12 -> 1.56, so it keeps the shifts
_GATHER_GRID_RATIO = 1.2
#: strided convolutions with fewer than 8 input channels (RGB stems) run on the phase planes, like
#: the others, once the plain gather's im2col matrix would have this many floats (32 MB: this
#: machine's L3): it is written out and read back from memory, where each phase-plane tap is a
#: contiguous copy into column chunks multiplied while in cache. One core, batch 32, forward +
#: weight gradient, median of 7 interleaved runs, ms, gather / phase planes: 5x5/2 at 96x96 (5.5M
#: floats) 20.6 / 20.1, at 128x128 (9.8M) 42.5 / 36.4, at 224x224 (30M) 184 / 110; 7x7/2 at 64x64
#: (4.8M) 18.5 / 18.4, at 128x128 (19M) 70 / 61, at 224x224 320 / 199; 3x3/2 at 128x128 (3.5M)
#: 19.7 / 21.0; 11x11/4 at 64x64 (2.3M) 7.1 / 9.7. In inference such a stem keeps the chunked
#: gather (_strided_chunks): the phase-plane im2col is kept whole for the backward pass.
_PHASED_MIN_COLS = 8 * 1024 * 1024
#: strided convolutions with at least this many input channels run on the phase planes, except
#: on output rows of up to _BATCH_INNER_MAX_OW (the gather with the batch innermost: ConvGeometry)
_PHASED_MIN_CHANNELS = 8
#: stride-1 gathers with output rows up to this long build im2col with the batch innermost
#: (_batch_inner_cols); one core, batch 32, forward + backward, median of 15 interleaved runs,
#: compact gather -> batch innermost, ms: 5x5 32 -> 64 at 6x6 7.9 -> 5.8, 3x3 64 -> 96 at 2x2 1.24
#: -> 0.69, 64 -> 128 at 4x4 4.1 -> 3.1, 256 -> 256 at 4x4 29.2 -> 23.1, 64 -> 128 at 7x7 10.5 ->
#: 9.5, 5x5 32 -> 64 at 8x8 14.0 -> 11.6 (at 8x8 3x3 Winograd is faster still: winograd.applies)
_BATCH_INNER_MAX_OW = 8
#: strided layers onto output rows of up to this many take the batch-innermost gather too where
#: the phase planes hold _PLANE_WASTE or more cells per output (5x5/2 and wider kernels: the planes'
#: GEMM multiplies every cell). One core, batch 32, forward + backward with the input gradient, two
#: runs each, ms, phase planes / batch innermost: 5x5/2 32 -> 64 from 32x32 (1.27 cells per output)
#: 30.3-29.9 / 26.0-25.8, from 24x24 (1.36) 17.1-17.3 / 14.5-14.9, 64 -> 64 from 32x32 54.1-58.4
#: / 50.5-61.1, 16 -> 32 from 32x32 10.5-10.9 / 11.2-10.9. Below the ratio the planes keep them:
#: 3x3/2 32 -> 64 from 32x32 (1.13) 12.0-12.3 / 13.9-13.4, 4x4/2 32 -> 64 (1.13) 17.8-17.0 /
#: 18.5-18.0; 5x5/2 32 -> 64 from 48x48 (1.17) 58-62 / 59-63
_BATCH_INNER_WASTE_MAX_OW = 16
_PLANE_WASTE = 1.2


def conv_out_size(size: int, kernel: int, stride: int, pad_total: int) -> int:
    return (size + pad_total - kernel) // stride + 1


def stem_trains_gathered(channels: int, kernel: Pair, stride: Pair) -> bool:
    """Whether a 3x3 stride-1 convolution on fewer than 4 input channels (an RGB or grey stem, whose
    padded grid has too few cells more than outputs for _GATHER_GRID_RATIO) trains on the compact
    gather rather than the tap shifts: with no input gradient its backward pass is the weight
    gradient alone, which the compact columns (outputs only, no padding cells) make cheaper, and
    the gather's copies cost no more than the shifts' there. Inference keeps the shifts (1.12 ->
    1.56 ms for 3 -> 32 at 32x32, _GATHER_GRID_RATIO). One core, batch 32, forward + weight
    gradient, ms, shifts / gather (benchmarks/conv_paths.py): 3 -> 8 at 64x64 10.6 / 8.6, 3 -> 16
    at 64x64 9.1 / 8.2, 3 -> 32 at 32x32 2.9 / 2.4."""
    return channels < 4 and tuple(kernel) == (3, 3) and tuple(stride) == (1, 1)


class ConvGeometry:
    """Everything about one convolution that depends only on shapes, computed once per batch size."""

    def __init__(self, in_shape: tuple[int, int, int, int], filters: int, kernel: Pair, stride: Pair, pads: Pads,
                 gather: bool | None = None, batch_inner: bool | None = None, rows: bool | None = None):
        c, n, h, w = in_shape
        self.c, self.n, self.h, self.w = c, n, h, w
        self.f = filters
        self.kh, self.kw = kernel
        self.sh, self.sw = stride
        self.unit_stride = stride == (1, 1)
        self.pads = pads
        t, b, left, r = pads
        self.hp, self.wp = h + t + b, w + left + r
        self.oh = conv_out_size(h, self.kh, self.sh, t + b)
        self.ow = conv_out_size(w, self.kw, self.sw, left + r)
        #: cells per image of each of the stride's phase planes (_phases; stride 1: the padded map)
        self.qh, self.qw = -(-self.hp // self.sh), -(-self.wp // self.sw)
        self.grid = n * self.hp * self.wp  # L: columns of the tap-shift GEMM
        #: stride 1: the tap-shift layout (contiguous copies, GEMM over every padded-grid cell) or
        #: the compact gather (copies in runs of ow, GEMM over the outputs only); `gather` forces one
        if gather is None:
            gather = self.hp * self.wp >= _GATHER_GRID_RATIO * self.oh * self.ow
        #: a 1x1 kernel without padding is a plain GEMM on the input's (strided) pixels: no im2col
        #: (bottleneck and residual-shortcut convolutions; 64 -> 32 at 32x32, batch 32, forward
        #: 6.8 -> 2.6 ms CPU against the tap shifts' two copies of the input)
        self.pointwise = (self.kh, self.kw) == (1, 1) and not any(pads)
        self.shift = self.unit_stride and not gather and not self.pointwise
        #: the compact gather with the batch innermost (_batch_inner_cols), by default on small maps;
        #: `batch_inner` forces it on or off wherever the gather runs
        if batch_inner is None:
            batch_inner = self.ow <= _BATCH_INNER_MAX_OW or (
                not self.unit_stride and self.ow <= _BATCH_INNER_WASTE_MAX_OW
                and self.qh * self.qw >= _PLANE_WASTE * self.oh * self.ow)
        self.batch_inner = self.unit_stride and gather and not self.pointwise and batch_inner
        #: stride 1: the kernel-row lowering (_row_lowered) instead of any of the above; `rows`
        #: forces it on or off
        if rows is None:
            rows = rows_pay(c, self.kh, self.kw, self.oh, self.ow)
        self.by_rows = (self.unit_stride and not self.pointwise and self.kh > 1 and rows
                        and max(t, b) < self.kh and max(left, r) < self.kw)
        if self.by_rows:
            self.shift = self.batch_inner = False
        #: the kernel-row lowering's input gradient by scatter (the adjoint: GEMMs over the output,
        #: then adds) or as a full convolution (GEMMs over the input, no large adds). One core, batch
        #: 32, backward, median of 11 interleaved runs, ms, full / scatter: 5x5 valid 32 -> 64 at 14x14
        #: 19.3 / 10.4, 64 -> 64 at 12x12 21.2 / 16.0; "same" 32 -> 64 at 10x10 11.5 / 10.4, 6 -> 16 at
        #: 14x14 2.5 / 1.8, 16 -> 32 at 13x13 6.5 / 5.4; but 64 -> 64 at 8x8 12.0 / 14.4, 96 -> 64 at
        #: 6x6 9.6 / 11.1, 128 -> 128 at 8x8 43.3 / 49.2
        self.rows_scatter = c < _ROWS_FULL_MIN_C or self.h * self.w >= _ROWS_SCATTER_RATIO * self.oh * self.ow
        self.max_shift = (self.kh - 1) * self.wp + (self.kw - 1)
        self.k = c * self.kh * self.kw
        #: strided with >= 8 input channels: tap shifts over phase planes (_phases); with fewer (an
        #: RGB stem, whose backward needs no dx) the plain gather measured faster on small images
        #: (photo96's 5x5/2 stem 24 + 14 ms against 22 + 18 per batch of 64, CPU), but not once its
        #: im2col matrix outgrows the cache (_PHASED_MIN_COLS)
        #: an RGB stem with long kernel rows and stride >= 3 trains on patch rows (_patch_train)
        self.patches = (not self.unit_stride and not self.pointwise and c < _PHASED_MIN_CHANNELS
                        and self.kw * c >= _PATCH_ROW_MIN and min(self.sh, self.sw) >= _PATCH_TRAIN_MIN_STRIDE)
        self.phased = not self.unit_stride and not self.pointwise and not self.patches and (
            c >= _PHASED_MIN_CHANNELS or self.k * n * self.oh * self.ow >= _PHASED_MIN_COLS)
        #: with >= 8 input channels and output rows up to _BATCH_INNER_MAX_OW, the gather with the
        #: batch innermost, over the input's phase planes laid out (C, qh, qw x N): each tap's copy
        #: is runs of ow x N floats instead of a strided read per float, and the GEMM covers the
        #: outputs only. One core, batch 32, forward + backward, median of 3 interleaved runs, ms,
        #: input maps, phase planes / per-tap gather / this: 3x3/2 32 -> 64 at 8x8 0.99 / 1.08 / 0.60, 64 -> 128
        #: at 16x16 10.2 / 9.6 / 8.0, 16 -> 32 at 16x16 0.99 / 1.27 / 0.87; 4x4/2 128 -> 256 at 8x8
        #: 20.3 / 13.9 / 11.4, 32 -> 64 at 16x16 6.6 / 7.5 / 5.7; at 32x32 (16-float rows) it loses
        #: (3x3/2 32 -> 64 9.9 / 10.1 / 11.4), at 24x24 it wins a little (18.0 / 18.4 / 17.0)
        if self.phased and c >= _PHASED_MIN_CHANNELS and batch_inner:
            self.phased, self.batch_inner = False, True
        if self.phased or (self.batch_inner and not self.unit_stride):
            self._phases(c, n, h, w)

    def grid_output(self, keep: bool) -> bool:
        """Whether conv2d_forward's output is a view into a reused grid (tap shifts, phase planes)
        rather than a fresh array: without `keep` (inference) an RGB stem on phase planes runs the
        plain gather in chunks, whose output is fresh."""
        return self.shift or (self.phased and (keep or self.c >= _PHASED_MIN_CHANNELS))

    @functools.cached_property
    def full_conv(self) -> ConvGeometry:
        """The input gradient as a convolution: dz (F, N, oh, ow) -> (C, N, h, w) on the kernel-row
        lowering, with the flipped kernels (made when first asked for: its own full_conv would be
        this one's shape again)."""
        t, b, left, r = self.pads
        return ConvGeometry((self.f, self.n, self.oh, self.ow), self.c, (self.kh, self.kw), (1, 1),
                            (self.kh - 1 - t, self.kh - 1 - b, self.kw - 1 - left, self.kw - 1 - r), rows=True)

    def _phases(self, c: int, n: int, h: int, w: int) -> None:
        """A strided convolution on the padded input's sh x sw phase planes (rows and columns of
        each residue mod the stride): tap (i, j) at output (y, x) reads plane (i % sh, j % sw) at
        (y + i // sh, x + j // sw), a contiguous shift of the plane's flattened (n, y, x) cells."""
        sh, sw = self.sh, self.sw
        t, _, left, _ = self.pads
        self.nq = sh * sw
        self.qgrid = n * self.qh * self.qw  # GEMM columns: every plane cell, outputs in the top-left oh x ow
        self.qmax = ((self.kh - 1) // sh) * self.qw + (self.kw - 1) // sw
        #: per tap (row-major): (phase plane, shift)
        self.qtaps = [((i % sh) * sw + j % sw, (i // sh) * self.qw + j // sw)
                      for i in range(self.kh) for j in range(self.kw)]
        #: per phase plane holding input pixels: (plane, first input row, first input column,
        #: first plane row, first plane column, rows, columns)
        self.qscatter = []
        for a in range(sh):
            r0 = (a - t) % sh
            for b in range(sw):
                c0 = (b - left) % sw
                if r0 < h and c0 < w:
                    self.qscatter.append((a * sw + b, r0, c0, (r0 + t) // sh, (c0 + left) // sw,
                                          len(range(r0, h, sh)), len(range(c0, w, sw))))


def _pad_rows(x: np.ndarray, g: ConvGeometry, ws: Workspace, tag: str) -> np.ndarray:
    """The zero-padded input as rows (C, L + max_shift) over the flattened (n, y, x) padded grid."""
    t, _, left, _ = g.pads
    xp = ws.get(tag + "xp", (g.c, g.grid + g.max_shift), x.dtype, zero=True)
    xp[:, :g.grid].reshape(g.c, g.n, g.hp, g.wp)[:, :, t:t + g.h, left:left + g.w] = x
    return xp


def _column_steps(length: int, rows: int, budget: int) -> list[tuple[int, int]]:
    step = max(_DX_CHUNK_MIN, budget // max(rows, 1))
    return [(a, min(a + step, length)) for a in range(0, length, step)]


def _phase_rows(x: np.ndarray, g: ConvGeometry, ws: Workspace, tag: str) -> np.ndarray:
    """The zero-padded input's phase planes (sh * sw, C, n * qh * qw + qmax), each flattened."""
    q = ws.get(tag + "sq", (g.nq, g.c, g.qgrid + g.qmax), x.dtype, zero=True)
    for p, r0, c0, y0, x0, nr, nc in g.qscatter:
        q[p, :, :g.qgrid].reshape(g.c, g.n, g.qh, g.qw)[:, :, y0:y0 + nr, x0:x0 + nc] = x[:, :, r0::g.sh, c0::g.sw]
    return q


def _padded(x: np.ndarray, g: ConvGeometry, ws: Workspace, tag: str, fill: float = 0.0) -> np.ndarray:
    """x inside its padding (C, N, hp, wp), in a buffer of `ws`."""
    t, _, left, _ = g.pads
    xp = ws.get(tag + "xps", (g.c, g.n, g.hp, g.wp), x.dtype, zero=fill == 0.0)
    if fill != 0.0:
        xp.fill(fill)
    xp[:, :, t:t + g.h, left:left + g.w] = x
    return xp


def _window_taps(cols: np.ndarray, xp: np.ndarray, g: ConvGeometry, a: int, b: int) -> None:
    """Images a..b-1's im2col into cols (C, kh, kw, b - a, oh, ow): one strided copy per tap."""
    for i in range(g.kh):
        for j in range(g.kw):
            cols[:, i, j] = xp[:, a:b, i:i + g.sh * (g.oh - 1) + 1:g.sh, j:j + g.sw * (g.ow - 1) + 1:g.sw]


def _strided_cols(x: np.ndarray, g: ConvGeometry, ws: Workspace, tag: str, fill: float = 0.0) -> np.ndarray:
    """Generic im2col for strided windows: cols (C, kh, kw, N, oh, ow)."""
    cols = ws.get(tag + "scols", (g.c, g.kh, g.kw, g.n, g.oh, g.ow), x.dtype)
    _window_taps(cols, _padded(x, g, ws, tag, fill), g, 0, g.n)
    return cols


def _batch_last_padded(x: np.ndarray, g: ConvGeometry, ws: Workspace, tag: str) -> np.ndarray:
    """x (C, N, H, W) inside its padding with the batch innermost, as rows (C, hp, wp x N): a shift
    by one column is N floats, so a window's copy is one run per row (one small transposing copy;
    the layout of _batch_inner_cols and _row_lowered)."""
    t, _, left, _ = g.pads
    xp = ws.get(tag + "bxp", (g.c, g.hp, g.wp, g.n), x.dtype, zero=True)
    xp[:, t:t + g.h, left:left + g.w] = x.transpose(0, 2, 3, 1)
    return xp.reshape(g.c, g.hp, g.wp * g.n)


def _batch_last(a: np.ndarray, ws: Workspace, key: str) -> np.ndarray:
    """a (F, N, h, w) as (F, h, w, N), in a buffer of `ws`."""
    out = ws.get(key, (a.shape[0], *a.shape[2:], a.shape[1]), a.dtype)
    out[...] = a.transpose(0, 2, 3, 1)
    return out


def _batch_first(v: np.ndarray) -> np.ndarray:
    """A (C, h, w, N) view back to a fresh (C, N, h, w) array."""
    out = np.empty((v.shape[0], v.shape[3], v.shape[1], v.shape[2]), v.dtype)
    out[...] = v.transpose(0, 3, 1, 2)
    return out


def _batch_last_planes(x: np.ndarray, g: ConvGeometry, ws: Workspace, tag: str) -> np.ndarray:
    """x inside its padding with the batch innermost, split into the stride's phase planes (rows
    and columns of each residue mod the stride): (sh x sw, C, qh, qw x N), written straight from x.
    Stride 1: the one plane is _batch_last_padded's (C, hp, wp x N)."""
    if g.unit_stride:
        return _batch_last_padded(x, g, ws, tag)[None]
    n = g.n
    q = ws.get(tag + "bxq", (g.nq, g.c, g.qh, g.qw, n), x.dtype, zero=True)
    for p, r0, c0, y0, x0, nr, nc in g.qscatter:
        q[p, :, y0:y0 + nr, x0:x0 + nc] = x[:, :, r0::g.sh, c0::g.sw].transpose(0, 2, 3, 1)
    return q.reshape(g.nq, g.c, g.qh, g.qw * n)


def _batch_inner_taps(g: ConvGeometry):
    """Per tap (i, j): its phase plane and the plane's first row and column (stride 1: (0, i, j))."""
    for i in range(g.kh):
        for j in range(g.kw):
            yield i, j, (i % g.sh) * g.sw + j % g.sw, i // g.sh, j // g.sw


def _batch_inner_cols(x: np.ndarray, g: ConvGeometry, ws: Workspace, tag: str) -> np.ndarray:
    """im2col with the batch innermost: cols (C, kh, kw, oh, ow x N), columns ordered (y, x,
    image). On small maps the compact gather's copies run over ow floats (6 at 6x6; strided, every
    other float), and NumPy's per-run cost dominates; with the padded input laid out (C, hp, wp x N)
    (one small transposing copy; strided, split into phase planes) every tap's copy is a (C, oh)
    set of runs of ow x N floats. The GEMM's output comes out (F, oh, ow, N) and is turned back
    into (F, N, oh, ow) (small: the maps are small)."""
    n = g.n
    xq = _batch_last_planes(x, g, ws, tag)
    cols = ws.get(tag + "bcols", (g.c, g.kh, g.kw, g.oh, g.ow * n), x.dtype)
    for i, j, p, r, c in _batch_inner_taps(g):
        cols[:, i, j] = xq[p, :, r:r + g.oh, c * n:(c + g.ow) * n]
    return cols.reshape(g.k, g.oh * g.ow * n)


def _batch_inner_dx(dz2: np.ndarray, w: np.ndarray, g: ConvGeometry, ws: Workspace, tag: str) -> np.ndarray:
    """dL/dx for _batch_inner_cols's layout from dz2 (F, oh x ow x N): the column gradient
    W^T dz2, each tap's part added into the padded input's gradient (C, hp, wp x N) in runs of
    ow x N floats, then back to (C, N, H, W)."""
    n, dt = g.n, dz2.dtype
    dcols = np.matmul(w.reshape(g.f, g.k).T, dz2, out=ws.get(tag + "bdc", (g.k, dz2.shape[1]), dt))
    d5 = dcols.reshape(g.c, g.kh, g.kw, g.oh, g.ow * n)
    if g.unit_stride:
        dxq = ws.get(tag + "bdxp", (1, g.c, g.hp, g.wp * n), dt)
    else:
        dxq = ws.get(tag + "bdxq", (g.nq, g.c, g.qh, g.qw * n), dt)
    dxq.fill(0)
    for i, j, p, r, c in _batch_inner_taps(g):
        dxq[p, :, r:r + g.oh, c * n:(c + g.ow) * n] += d5[:, i, j]
    if g.unit_stride:
        t, _, left, _ = g.pads
        return _batch_first(dxq[0].reshape(g.c, g.hp, g.wp, n)[:, t:t + g.h, left:left + g.w])
    dx = np.empty((g.c, n, g.h, g.w), dt)
    planes = dxq.reshape(g.nq, g.c, g.qh, g.qw, n)
    for p, r0, c0, y0, x0, nr, nc in g.qscatter:
        dx[:, :, r0::g.sh, c0::g.sw] = planes[p, :, y0:y0 + nr, x0:x0 + nc].transpose(0, 3, 1, 2)
    return dx


#: im2col floats per chunk of images when the plain gather's columns are not kept (inference):
#: each chunk is multiplied while it is still in cache instead of the whole matrix going out to
#: memory and back. One core, 128 images, whole -> chunked, ms: 7x7/2 3 -> 32 at 64x64 39.4 -> 31.0,
#: 5x5/2 at 96x96 47.7 -> 39.9, 11x11/4 at 64x64 17.2 -> 14.9, 5x5 3 -> 32 at 32x32 16.2 -> 12.7;
#: 4 MB chunks beat 1 MB ones there (per-tap copies of fewer images cost more calls than cache)
_INFER_COLS_FLOATS = 1024 * 1024


#: inference of a strided gather whose kernel rows hold at least this many floats (kw x C: 7x7 RGB and
#: up), onto output maps of at most _PATCH_MAX_CELLS, builds its columns from the input with the
#: channels innermost (_patch_rows)
_PATCH_ROW_MIN = 21
_PATCH_MAX_CELLS = 1024
#: training too builds such a stem's columns as patch rows (kept for the weight gradient) from
#: this stride on, where windows overlap most and each per-tap copy is shortest. One core, batch
#: 32, forward + weight gradient, ms, three runs each, per-tap gather / patch rows: 11x11/4 at
#: 64x64 4.3-4.9 / 3.3-4.0, at 96x96 12.7-13.4 / 11.7-12.3; 9x9/3 6.3-6.4 / 5.5-5.7; 8x8/4 2.5-2.9 /
#: 2.3-2.4; 7x7/4 2.5-2.6 / 1.8-2.2. At stride 2 it does not pay: 7x7/2 at 64x64 9.7-10.7 /
#: 10.4-10.8, 5x5/2 4.9-5.6 / 6.4-7.0
_PATCH_TRAIN_MIN_STRIDE = 3


def patch_rows_infer(g: ConvGeometry) -> bool:
    """Whether inference of this (strided, fewer than 8 channels) convolution runs on patch rows."""
    return (g.kw * g.c >= _PATCH_ROW_MIN and g.c < _PHASED_MIN_CHANNELS and (g.sh, g.sw) != (1, 1)
            and g.oh * g.ow <= _PATCH_MAX_CELLS)


def patch_rows_pooled(x: np.ndarray, w: np.ndarray, g: ConvGeometry, ws: Workspace, kernel: Pair,
                      stride: Pair) -> np.ndarray:
    """Inference of a patch-row stem (patch_rows_infer) under an unpadded max-pool, bias-free:
    (F, N, ph, pw). Each chunk's product (cells, F) is pooled while it is in cache, with the
    filters innermost (each tap's F values contiguous, not 6 strided ones), and only the pooled
    maps are transposed. alex64's 11x11/4 stem + 3x3/2 pool, 128 images, one core, interleaved
    runs: see docs/performance.md, item 40."""
    return _patch_rows(x, w.reshape(g.f, g.k), g, ws, "", (kernel, stride))[0]


def _max_channels_last(z: np.ndarray, kernel: Pair, stride: Pair, out: np.ndarray) -> np.ndarray:
    """Max over each unpadded window of z (n, h, w, F) into out (n, ph, pw, F)."""
    (kh, kw), (sh, sw) = kernel, stride
    ph, pw = out.shape[1:3]

    def tap(k: int) -> np.ndarray:
        i, j = divmod(k, kw)
        return z[:, i:i + sh * (ph - 1) + 1:sh, j:j + sw * (pw - 1) + 1:sw]

    return _max_of_taps(tap, kh * kw, out)


def _patch_rows(x: np.ndarray, w2: np.ndarray, g: ConvGeometry, ws: Workspace, tag: str,
                pool: tuple[Pair, Pair] | None = None, per: int | None = None,
                keep: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Inference of a wide-kernel stem: the padded input with the channels innermost (N, hp, wp, C),
    so each window is kh runs of kw x C contiguous floats, copied for a chunk of images in one
    strided-view copy into patch rows (cells, kh x kw x C) and multiplied from the left, the
    orientation OpenBLAS runs faster for few filters. One core, RGB -> 32 filters, CPU time, median
    of 25 interleaved runs, ms, per-tap gather / this: 11x11/4 at 64x64, 128 images 9.7 / 8.9, 64
    images 5.0 / 4.4; 7x7/2 at 64x64, 128 images 23.4 / 19.6. Onto larger maps, or with shorter rows,
    it loses: 7x7/2 at 128x128 (64 images) 34.0 / 35.3, 5x5/2 at 96x96 26.0 / 30.9, 3x3/2 at
    64x64 6.0 / 9.7. With `pool` (kernel, stride) each chunk is max-pooled before it is written
    out (patch_rows_pooled). Returns (z, the last chunk's patch rows): chunks of `per` images, by
    default as many as fill _INFER_COLS_FLOATS. With `keep` (training, _patch_train) every chunk's
    rows go to their own place in one buffer for the whole batch, which is returned for the weight
    gradient."""
    xh = _channels_last_padded(x, g, ws, tag)
    wt = w2.reshape(g.f, g.c, g.kh, g.kw).transpose(2, 3, 1, 0).reshape(g.k, g.f)  # (kh, kw, C) x F
    cells = g.oh * g.ow
    if per is None:
        per = _chunk_images(g, _INFER_COLS_FLOATS)
    patches = ws.get(tag + "prow", (g.n if keep else per, g.oh, g.ow, g.kh, g.kw * g.c), x.dtype)
    zt = ws.get(tag + "pzt", (per * cells, g.f), x.dtype)
    out_hw = (g.oh, g.ow)
    if pool is not None:
        (kh, kw), (sh, sw) = pool
        out_hw = (conv_out_size(g.oh, kh, sh, 0), conv_out_size(g.ow, kw, sw, 0))
        pooled = ws.get(tag + "ppool", (per, *out_hw, g.f), x.dtype)
    z = np.empty((g.f, g.n, *out_hw), x.dtype)
    for a in range(0, g.n, per):
        b = min(a + per, g.n)
        p = patches[a:b] if keep else patches[:b - a]
        p[...] = _patch_windows(xh[a:b], g)
        rows = p.reshape((b - a) * cells, g.k)
        zc = np.matmul(rows, wt, out=zt[:(b - a) * cells]).reshape(b - a, g.oh, g.ow, g.f)
        if pool is not None:
            zc = _max_channels_last(zc, *pool, pooled[:b - a])
        z[:, a:b] = zc.transpose(3, 0, 1, 2)
    return z, patches.reshape(-1, g.k) if keep else rows


def _chunk_images(g: ConvGeometry, floats: int) -> int:
    """Whole images per chunk of a strided layer's im2col (or patch rows) of about `floats`
    floats: at least one, at most the batch."""
    return max(1, min(g.n, floats // (g.k * g.oh * g.ow)))


def _channels_last_padded(x: np.ndarray, g: ConvGeometry, ws: Workspace, tag: str) -> np.ndarray:
    """x (C, N, H, W) inside its padding with the channels innermost, (N, hp, wp, C). Written one
    channel plane at a time: a whole-array transposing copy runs its inner loop over the C < 8
    channels (128 RGB images at 64x64: 1.3-1.5 ms against 0.45 by planes)."""
    t, _, left, _ = g.pads
    xh = ws.get(tag + "pxh", (g.n, g.hp, g.wp, g.c), x.dtype, zero=True)
    for c in range(g.c):
        xh[:, t:t + g.h, left:left + g.w, c] = x[c]
    return xh


def _patch_windows(xh: np.ndarray, g: ConvGeometry) -> np.ndarray:
    """The windows of images xh (n, hp, wp, C) as a read-only view (n, oh, ow, kh, kw x C): each
    window is kh runs of kw x C contiguous floats."""
    s0, s1, s2, s3 = xh.strides
    return np.lib.stride_tricks.as_strided(xh, (xh.shape[0], g.oh, g.ow, g.kh, g.kw * g.c),
                                           (s0, g.sh * s1, g.sw * s2, s1, s3), writeable=False)


#: patch-row floats per chunk of images in a patch-row stem's training forward (~1.9 MB): each
#: chunk's rows are multiplied right after they are copied, while the cache still holds them,
#: instead of the whole batch's rows (19 MB for 32 images of a 9x9/3 stem at 80x80) copied first
#: and multiplied after, from memory. The GEMM alone on such rows, one core, 32 filters: 11x11/4,
#: 2,744 rows (14 images at 64x64) 151 GFLOP/s, 10,976 rows 93 GFLOP/s. Whole steps, paired
#: process runs, this / before (median of 12-14 pairs): stem9s3_80 one core 0.966, two processes
#: 0.957; alex64 (11x11/4, 6 images a chunk) 0.992
_PATCH_TRAIN_CHUNK_FLOATS = 480_000


def _patch_train(x: np.ndarray, w2: np.ndarray, g: ConvGeometry, ws: Workspace, tag: str
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Training forward of a wide-kernel stem of stride >= 3 (ConvGeometry.patches): the whole
    batch's patch rows (N x oh x ow, kh x kw x C), kept for the weight gradient, times the
    weights from the left, chunk by chunk (_PATCH_TRAIN_CHUNK_FLOATS); z (F, N, oh, ow) is a
    fresh array."""
    return _patch_rows(x, w2, g, ws, tag, per=_chunk_images(g, _PATCH_TRAIN_CHUNK_FLOATS), keep=True)


def _strided_chunks(x: np.ndarray, w2: np.ndarray, g: ConvGeometry, ws: Workspace, tag: str) -> np.ndarray:
    """The plain gather's convolution (F, N, oh, ow) without keeping its im2col matrix: built and
    multiplied per chunk of images (wide-kernel stems: _patch_rows)."""
    if patch_rows_infer(g):
        return _patch_rows(x, w2, g, ws, tag)[0]
    xp = _padded(x, g, ws, tag)
    cells = g.oh * g.ow
    per = _chunk_images(g, _INFER_COLS_FLOATS)
    cols = ws.get(tag + "ccols", (g.k, per * cells), x.dtype)
    z = np.empty((g.f, g.n, g.oh, g.ow), x.dtype)
    z2 = z.reshape(g.f, g.n * cells)
    for a in range(0, g.n, per):
        b = min(a + per, g.n)
        c = cols[:, :(b - a) * cells]
        _window_taps(c.reshape(g.c, g.kh, g.kw, b - a, g.oh, g.ow), xp, g, a, b)
        np.matmul(w2, c, out=z2[:, a * cells:b * cells])
    return z


#: the kernel-row lowering's largest output map side (see rows_pay)
_ROWS_MAX_MAP = 14
#: its input gradient is a full convolution from this many input channels on, unless the input
#: has this many times as many cells as the output (ConvGeometry.rows_scatter)
_ROWS_FULL_MIN_C = 64
_ROWS_SCATTER_RATIO = 1.3


def rows_pay(channels: int, kh: int, kw: int, oh: int, ow: int) -> bool:
    """Whether a stride-1 convolution runs on the kernel-row lowering (_row_lowered) by default:
    kernels of 5x5 and up, at least 6 input channels, output maps up to 14x14 (5x5 from 14x14 with 8
    or more channels is Winograd's: winograd.applies). One core, batch 32, forward + backward with
    the input gradient, median of 9 interleaved runs, ms, Winograd / the gather (batch innermost up to
    8 columns) / this: 5x5 32 -> 64 at 10x10 20.8 / 20.2 / 15.1, at 12x12 27.3 / 27.9 / 23.5, 32 -> 32
    at 13x13 16.7 / 21.3 / 13.3, 6 -> 16 at 14x14 - / 3.7 / 2.8, 64 -> 64 at 8x8 - / 22.0 / 18.0,
    128 -> 128 at 8x8 - / 70.7 / 66.4, 32 -> 64 at 6x6 - / 5.4 / 5.2. Larger maps lose its backward
    (32 -> 64 at 14x14 30.0 / 36.2 / 34.6; 6 -> 16 at 28x28 - / 14.5 / 15.9), and so do 3x3 kernels
    (64 -> 128 at 7x7 - / 9.6 / 10.1) and RGB inputs, whose rows are too short a GEMM (5x5 3 -> 32 at
    32x32 7.8 / 16.8)."""
    return min(kh, kw) >= 5 and channels >= 6 and max(oh, ow) <= _ROWS_MAX_MAP


def _row_lowered(x: np.ndarray, g: ConvGeometry, ws: Workspace, tag: str) -> np.ndarray:
    """The kernel-row lowering (MEC, Cho & Brand 2017) of a stride-1 convolution: im2col over the
    kernel's columns only, xh (C, kw, hp, ow x N) = the padded input with the batch innermost
    (C, hp, wp x N) shifted by each kernel column, returned as rows (C x kw, hp x ow x N). Kernel
    row i's im2col is then the contiguous slice of every row from cell i x ow x N on (output rows y
    read input rows y + i): a strided matrix that BLAS reads in place, so kh GEMMs of inner size
    C x kw replace one of C x kh x kw, and the copies are kw runs of ow x N floats per input row
    (the batch innermost makes them long), on a matrix kh times smaller than im2col. The batch
    innermost measured 3-12 % faster than (hp, N, ow) rows, forward and backward."""
    n = g.n
    xv = _batch_last_padded(x, g, ws, tag)
    xh = ws.get(tag + "rxh", (g.c, g.kw, g.hp, g.ow * n), x.dtype)
    for j in range(g.kw):
        xh[:, j] = xv[:, :, j * n:(j + g.ow) * n]
    return xh.reshape(g.c * g.kw, g.hp * g.ow * n)


def _row_weights(w: np.ndarray, g: ConvGeometry, ws: Workspace, tag: str) -> np.ndarray:
    """w as (kh, F, C x kw): kernel row i's weights, matching _row_lowered's rows."""
    wk = ws.get(tag + "rwk", (g.kh, g.f, g.c, g.kw), w.dtype)
    wk[...] = w.transpose(2, 0, 1, 3)
    return wk.reshape(g.kh, g.f, g.c * g.kw)


def _rows_forward(x: np.ndarray, w: np.ndarray, g: ConvGeometry, ws: Workspace, tag: str
                  ) -> tuple[np.ndarray, np.ndarray]:
    xf = _row_lowered(x, g, ws, tag)
    wk = _row_weights(w, g, ws, tag)
    s = g.n * g.ow
    cells = g.oh * s
    zt = np.matmul(wk[0], xf[:, :cells], out=ws.get(tag + "rz", (g.f, cells), x.dtype))
    part = ws.get(tag + "rzp", (g.f, cells), x.dtype)
    for i in range(1, g.kh):
        zt += np.matmul(wk[i], xf[:, i * s:i * s + cells], out=part)
    return _batch_first(zt.reshape(g.f, g.oh, g.ow, g.n)), xf


def _rows_dx_scatter(dz2: np.ndarray, w: np.ndarray, g: ConvGeometry, ws: Workspace, tag: str) -> np.ndarray:
    """dx as the exact adjoint of _rows_forward: kernel row i's W_i^T dz (C x kw, cells) added into
    the lowered input's gradient at the row offset it was read from, then the kw column shifts
    added back into the padded input's gradient. Its GEMMs have the output's size (the full
    convolution's have the input's): for valid convolutions, whose input is much larger."""
    dt = dz2.dtype
    n = g.n
    s = g.ow * n
    cells = g.oh * s
    ck = g.c * g.kw
    wt = ws.get(tag + "rwt", (g.kh, ck, g.f), dt)
    wt[...] = w.transpose(2, 1, 3, 0).reshape(g.kh, ck, g.f)
    dxh = ws.get(tag + "rdxh", (ck, g.hp * s), dt)
    np.matmul(wt[0], dz2, out=dxh[:, :cells])
    dxh[:, cells:] = 0
    part = ws.get(tag + "rdxp", (ck, cells), dt)
    for i in range(1, g.kh):
        dxh[:, i * s:i * s + cells] += np.matmul(wt[i], dz2, out=part)
    d4 = dxh.reshape(g.c, g.kw, g.hp, s)
    dxq = ws.get(tag + "rdxq", (g.c, g.hp, g.wp * n), dt)
    dxq[:, :, :s] = d4[:, 0]
    dxq[:, :, s:] = 0
    for j in range(1, g.kw):
        dxq[:, :, j * n:j * n + s] += d4[:, j]
    t, _, left, _ = g.pads
    return _batch_first(dxq.reshape(g.c, g.hp, g.wp, n)[:, t:t + g.h, left:left + g.w])


def _rows_backward(dz: np.ndarray, xf: np.ndarray, w: np.ndarray, g: ConvGeometry, dw_out: np.ndarray,
                   need_dx: bool, ws: Workspace, tag: str) -> np.ndarray | None:
    """Gradients of _rows_forward: kernel row i's slice of dw is dz times the same shifted slice of
    the lowered input, one GEMM each; dx by scatter (_rows_dx_scatter) or as the full convolution
    of dz with the flipped kernels on this same lowering (ConvGeometry.rows_scatter says which)."""
    dt = dz.dtype
    s = g.n * g.ow
    cells = g.oh * s
    dz2 = _batch_last(dz, ws, tag + "bdz").reshape(g.f, cells)
    ck = g.c * g.kw
    dwk = ws.get(tag + "rdw", (g.kh, g.f, ck), dt)
    for i in range(g.kh):
        dwk[i] = np.matmul(xf[:, i * s:i * s + cells], dz2.T).T
    dw_out[...] = dwk.reshape(g.kh, g.f, g.c, g.kw).transpose(1, 2, 0, 3)
    if not need_dx:
        return None
    if g.rows_scatter:
        return _rows_dx_scatter(dz2, w, g, ws, tag)
    # dx as the full convolution of dz with the flipped kernels, on this same lowering
    wf = ws.get(tag + "rwf", (g.c, g.f, g.kh, g.kw), dt)
    wf[...] = w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)
    return _rows_forward(dz, wf, g.full_conv, ws, tag + "d")[0]


def conv2d_forward(
    x: np.ndarray, w: np.ndarray, g: ConvGeometry, ws: Workspace | None = None, tag: str = "", keep: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
    """Convolution without bias. x (C, N, H, W) -> (z, cols); z is (F, N, oh, ow), possibly a view
    into the padded output grid (not contiguous). Keep `cols` for the backward pass; without
    `keep` (inference) the plain gather does not make them (None)."""
    ws = _ws(ws)
    w2 = w.reshape(g.f, g.k)
    if g.pointwise:
        # (a stride-1 slice is x itself, contiguous: no copy)
        cols = np.ascontiguousarray(x[:, :, ::g.sh, ::g.sw]).reshape(g.c, g.n * g.oh * g.ow)
        return np.matmul(w2, cols).reshape(g.f, g.n, g.oh, g.ow), cols
    if g.by_rows:
        return _rows_forward(x, w, g, ws, tag)
    if g.shift:
        # Output position q of the padded grid (flattened n, y, x) reads input q + i*Wp + j for tap
        # (i, j): im2col is kh*kw contiguous shifted copies per chunk of columns; positions whose
        # window runs off the grid are computed but never used.
        xp = _pad_rows(x, g, ws, tag)
        L = g.grid
        cols = ws.get(tag + "cols", (g.c, g.kh * g.kw, L), x.dtype)
        cols2 = cols.reshape(g.k, L)
        zg = ws.get(tag + "zg", (g.f, L), x.dtype)
        thin = g.f * g.k <= 400  # OpenBLAS's thin GEMMs want chunks of _CHUNK columns (gemm_wide)
        for a, b in _column_steps(L, g.k, _CHUNK * g.k if thin else _COLS_CHUNK_FLOATS):
            for i in range(g.kh):
                for j in range(g.kw):
                    s = i * g.wp + j
                    cols[:, i * g.kw + j, a:b] = xp[:, s + a:s + b]
            np.matmul(w2, cols2[:, a:b], out=zg[:, a:b])
        return zg.reshape(g.f, g.n, g.hp, g.wp)[:, :, :g.oh, :g.ow], cols2
    if g.batch_inner:
        cols = _batch_inner_cols(x, g, ws, tag)
        zt = np.matmul(w2, cols, out=ws.get(tag + "bz", (g.f, cols.shape[1]), x.dtype))
        return _batch_first(zt.reshape(g.f, g.oh, g.ow, g.n)), cols
    if not keep and not g.grid_output(keep):
        return _strided_chunks(x, w2, g, ws, tag), None
    if g.patches:
        return _patch_train(x, w2, g, ws, tag)
    if not g.phased:
        cols = _strided_cols(x, g, ws, tag).reshape(g.k, g.n * g.oh * g.ow)
        z = np.matmul(w2, cols)
        return z.reshape(g.f, g.n, g.oh, g.ow), cols
    # strided: the same tap shifts over the input's phase planes (one contiguous copy per tap and
    # column chunk, instead of a strided gather per tap over every output position)
    q = _phase_rows(x, g, ws, tag)
    L = g.qgrid
    cols = ws.get(tag + "cols", (g.c, g.kh * g.kw, L), x.dtype)
    cols2 = cols.reshape(g.k, L)
    zg = ws.get(tag + "zg", (g.f, L), x.dtype)
    thin = g.f * g.k <= 400
    for a, b in _column_steps(L, g.k, _CHUNK * g.k if thin else _COLS_CHUNK_FLOATS):
        for t, (p, s) in enumerate(g.qtaps):
            cols[:, t, a:b] = q[p, :, s + a:s + b]
        np.matmul(w2, cols2[:, a:b], out=zg[:, a:b])
    return zg.reshape(g.f, g.n, g.qh, g.qw)[:, :, :g.oh, :g.ow], cols2


#: floats of one chunk's column gradient in _gather_dx (~1.2 MB, near L2 with the rows it adds into)
_GATHER_DX_FLOATS = 300_000


def _gather_dx(dz: np.ndarray, w: np.ndarray, g: ConvGeometry, ws: Workspace, tag: str) -> np.ndarray:
    """dL/dx of a stride-1 convolution on the compact (gather) layout, by chunks of images.

    The output gradient is first widened to the padded input's row length wp (zeros in the
    kw - 1 extra columns), so the column gradient W^T dz of tap (i, j) is, per image, one
    contiguous run of oh * wp floats added at offset i * wp + j of the image's flattened padded
    gradient: kh * kw adds of long runs instead of (N * oh) runs of ow floats per tap and channel
    (32 -> 64 channels, 5x5 at 16x16, batch 32: the scatter 9.8 -> 3 ms). The zero columns'
    products are exact zeros; the runs they add into spill at most kw - 1 cells into the next
    image's first row or the spare cells at the end, and add zeros there."""
    dt = dz.dtype
    cell, run = g.hp * g.wp, g.oh * g.wp
    taps = g.kh * g.kw
    per = max(1, _GATHER_DX_FLOATS // max(g.k * run, 1))
    dzr = ws.get(tag + "gdz", (g.f, g.n, g.oh, g.wp), dt, zero=True)
    dzr[..., :g.ow] = dz
    wt = w.reshape(g.f, g.k).T
    dxp = ws.get(tag + "gdx", (g.c, g.n * cell + g.max_shift), dt)
    dxp.fill(0)
    dcols = ws.get(tag + "gdc", (g.k, per * run), dt)
    for a in range(0, g.n, per):
        b = min(a + per, g.n)
        d = dcols[:, :(b - a) * run]
        np.matmul(wt, dzr[:, a:b].reshape(g.f, -1), out=d)
        d3 = d.reshape(g.c, taps, b - a, run)
        for i in range(g.kh):
            for j in range(g.kw):
                s = a * cell + i * g.wp + j
                dxp[:, s:s + (b - a) * cell].reshape(g.c, b - a, cell)[:, :, :run] += d3[:, i * g.kw + j]
    t, _, left, _ = g.pads
    return dxp[:, :g.n * cell].reshape(g.c, g.n, g.hp, g.wp)[:, :, t:t + g.h, left:left + g.w]


def conv2d_backward(
    dz: np.ndarray | None,
    cols: np.ndarray,
    w: np.ndarray,
    g: ConvGeometry,
    dw_out: np.ndarray,
    need_dx: bool = True,
    ws: Workspace | None = None,
    tag: str = "",
    dz_grid: np.ndarray | None = None,
) -> np.ndarray | None:
    """Gradients of a bias-free convolution. Writes dL/dw into `dw_out` (shape of w) and returns
    dL/dx (C, N, H, W) when asked. For stride 1 the caller may pass the output gradient already
    laid on the padded grid (`dz_grid`, (F, max_shift + L), zero outside the valid outputs): the
    pooling backward writes it there directly and saves a copy."""
    ws = _ws(ws)
    dt = cols.dtype
    if g.pointwise:
        dz2 = dz.reshape(g.f, g.n * g.oh * g.ow)
        gemm_dw(dz2, cols, dw_out.reshape(g.f, g.k))
        if not need_dx:
            return None
        # into reused buffers (a fresh 8 MB product page-faulted in at every step); the strided
        # case's skipped pixels are never written, so they stay zero
        dxs = np.matmul(w.reshape(g.f, g.k).T, dz2, out=ws.get(tag + "pdx", (g.c, dz2.shape[1]), dt))
        if g.unit_stride:
            return dxs.reshape(g.c, g.n, g.h, g.w)
        dx = ws.get(tag + "pdxs", (g.c, g.n, g.h, g.w), dt, zero=True)
        dx[:, :, ::g.sh, ::g.sw] = dxs.reshape(g.c, g.n, g.oh, g.ow)
        return dx
    if g.by_rows:
        return _rows_backward(dz, cols, w, g, dw_out, need_dx, ws, tag)
    if g.shift:
        L, ms = g.grid, g.max_shift
        if dz_grid is None:
            dz_grid = ws.get(tag + "dzg", (g.f, ms + L), dt, zero=True)
            dz_grid[:, ms:].reshape(g.f, g.n, g.hp, g.wp)[:, :, :g.oh, :g.ow] = dz
        dzl = dz_grid[:, ms:]
        gemm_dw(dzl, cols, dw_out.reshape(g.f, g.k))
        if not need_dx:
            return None
        # dx = W' @ dcols, dcols the output gradient's kh*kw shifted rows, built and multiplied per
        # column chunk while it is in L2
        rows = g.f * g.kh * g.kw
        wt = ws.get(tag + "wt", (g.c, g.f, g.kh, g.kw), dt)
        wt[...] = w.transpose(1, 0, 2, 3)
        wt2 = wt.reshape(g.c, rows)
        dxp = ws.get(tag + "dxp", (g.c, L), dt)
        steps = _column_steps(L, rows, _CHUNK * rows if g.c * rows <= 400 else _DX_CHUNK_FLOATS)
        dcols = ws.get(tag + "dcols", (g.f, g.kh * g.kw, steps[0][1]), dt)
        for a, b in steps:
            n = b - a
            for i in range(g.kh):
                for j in range(g.kw):
                    s = i * g.wp + j
                    dcols[:, i * g.kw + j, :n] = dz_grid[:, ms - s + a:ms - s + b]
            np.matmul(wt2, dcols.reshape(rows, -1)[:, :n], out=dxp[:, a:b])
        t, _, left, _ = g.pads
        return dxp.reshape(g.c, g.n, g.hp, g.wp)[:, :, t:t + g.h, left:left + g.w]
    if g.batch_inner:
        dz2 = _batch_last(dz, ws, tag + "bdz").reshape(g.f, -1)
        gemm_dw(dz2, cols, dw_out.reshape(g.f, g.k))
        return _batch_inner_dx(dz2, w, g, ws, tag) if need_dx else None
    if not g.phased:
        dz2 = dz.reshape(g.f, g.n * g.oh * g.ow)
        if g.patches:  # cols are patch rows (N x oh x ow, kh x kw x C)
            dwp = np.matmul(dz2, cols, out=ws.get(tag + "pdw", (g.f, g.k), dt))
            dw_out[...] = dwp.reshape(g.f, g.kh, g.kw, g.c).transpose(0, 3, 1, 2)
        else:
            gemm_dw(dz2, cols, dw_out.reshape(g.f, g.k))
        if not need_dx:
            return None
        if g.unit_stride:
            return _gather_dx(dz, w, g, ws, tag)
        dcols = np.matmul(w.reshape(g.f, g.k).T, dz2).reshape(g.c, g.kh, g.kw, g.n, g.oh, g.ow)
        dxp = np.zeros((g.c, g.n, g.hp, g.wp), dt)
        for i in range(g.kh):
            for j in range(g.kw):
                dxp[:, :, i:i + g.sh * (g.oh - 1) + 1:g.sh, j:j + g.sw * (g.ow - 1) + 1:g.sw] += dcols[:, i, j]
        t, _, left, _ = g.pads
        return dxp[:, :, t:t + g.h, left:left + g.w]
    # strided: the output gradient on the phase-plane cells (zero where no output is), then dW as
    # for stride 1 and dx as per-tap products added, shifted, into the phase planes' gradient
    L, ms = g.qgrid, g.qmax
    dzg = ws.get(tag + "sdzg", (g.f, L), dt, zero=True)
    dzg.reshape(g.f, g.n, g.qh, g.qw)[:, :, :g.oh, :g.ow] = dz
    gemm_dw(dzg, cols, dw_out.reshape(g.f, g.k))
    if not need_dx:
        return None
    taps = g.kh * g.kw
    wall = ws.get(tag + "swt", (g.kh, g.kw, g.c, g.f), dt)
    wall[...] = w.transpose(2, 3, 1, 0)
    w2 = wall.reshape(g.k, g.f)  # rows (tap, channel)
    dq = ws.get(tag + "sdq", (g.nq, g.c, L + ms), dt)
    dq.fill(0)
    steps = _column_steps(L, g.k, _DX_CHUNK_FLOATS)
    pm = ws.get(tag + "spm", (g.k * (steps[0][1] - steps[0][0]),), dt)
    for a, b in steps:
        pv = pm[:g.k * (b - a)].reshape(g.k, b - a)
        np.matmul(w2, dzg[:, a:b], out=pv)
        pv3 = pv.reshape(taps, g.c, b - a)
        for t, (p, s) in enumerate(g.qtaps):
            dq[p, :, s + a:s + b] += pv3[t]
    dx = np.empty((g.c, g.n, g.h, g.w), dt)
    for p, r0, c0, y0, x0, nr, nc in g.qscatter:
        dx[:, :, r0::g.sh, c0::g.sw] = dq[p, :, :L].reshape(g.c, g.n, g.qh, g.qw)[:, :, y0:y0 + nr, x0:x0 + nc]
    return dx


# ----------------------------------------------------------------------------------------------
# Pooling (on the last two axes; any leading layout)
# ----------------------------------------------------------------------------------------------
def _pool_out(h: int, w: int, kernel: Pair, stride: Pair, pads: Pads) -> tuple[int, int]:
    return (conv_out_size(h, kernel[0], stride[0], pads[0] + pads[1]),
            conv_out_size(w, kernel[1], stride[1], pads[2] + pads[3]))


def _pad_last2(x: np.ndarray, pads: Pads, fill: float) -> np.ndarray:
    t, b, left, r = pads
    if not any(pads):
        return x
    h, w = x.shape[-2:]
    xp = np.full((*x.shape[:-2], h + t + b, w + left + r), fill, x.dtype)
    xp[..., t:t + h, left:left + w] = x
    return xp


def _tap(xp: np.ndarray, i: int, j: int, oh: int, ow: int, stride: Pair) -> np.ndarray:
    sh, sw = stride
    return xp[..., i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw]


#: bytes of pooling input handled per block: every tap pass of a block re-reads it from L2 instead
#: of memory (2x2 max pool in training, 32 channels at 48x48, batch 64, one core, together with the
#: byte-mask argmax below: forward 11.3 -> 6.4 ms CPU, backward 8.2 -> 5.2 ms; 64 channels at
#: 24x24: 4.3 -> 3.4 and 3.4 -> 2.6; `benchmarks/layer_profile.py photo96`)
_POOL_BLOCK_BYTES = 1 << 19


def _lead_blocks(lead: tuple[int, ...], item_bytes: int) -> list[tuple]:
    """Index tuples over the leading axes (the pooled planes are the last two) splitting them into
    blocks of about _POOL_BLOCK_BYTES; slicing instead of reshaping keeps strided views (a
    convolution's output grid) as views."""
    if not lead:
        return [()]
    inner = item_bytes
    for d in lead[1:]:
        inner *= d
    if inner > _POOL_BLOCK_BYTES and len(lead) > 1:
        return [(i, *rest) for i in range(lead[0]) for rest in _lead_blocks(lead[1:], item_bytes)]
    blocks = -(-lead[0] * inner // _POOL_BLOCK_BYTES)
    step = -(-lead[0] // max(blocks, 1))
    return [(slice(a, a + step),) for a in range(0, lead[0], step)]


def _max_of_taps(tap: Any, taps: int, out: np.ndarray) -> np.ndarray:
    """out = the element-wise maximum of tap(0) .. tap(taps - 1) (max pooling's values)."""
    if taps == 1:
        out[...] = tap(0)
        return out
    np.maximum(tap(0), tap(1), out=out)
    for k in range(2, taps):
        np.maximum(out, tap(k), out=out)
    return out


def _first_max_index(tap: Any, taps: int, y: np.ndarray, idx: np.ndarray, ne: np.ndarray | None) -> None:
    """idx = the first k (row-major) with tap(k) == y, for taps >= 2: ne0 * (1 + ne1 * (1 + ...))
    over the taps' "not the maximum" masks, written into `ne` (bool, y's shape; None for 2 taps),
    two small passes per tap; a uint8 index takes the masks as its bytes, without casting loops."""
    byte = idx.dtype == np.uint8
    np.not_equal(tap(taps - 2), y, out=idx.view(bool) if byte else idx)
    for k in range(taps - 3, -1, -1):
        np.not_equal(tap(k), y, out=ne)
        idx += 1
        idx *= ne.view(np.uint8) if byte else ne


def _max_by_phases(xb: np.ndarray, kernel: Pair, stride: Pair, yb: np.ndarray, ib: np.ndarray | None) -> None:
    """maxpool_forward's max (and first-argmax index) for one block of overlapping windows
    (kernel > stride): the block's sh x sw phase planes (rows and columns of each residue mod the
    stride, -inf beyond the input), each flattened, so tap (i, j) is one contiguous shift of plane
    (i % sh, j % sw) and every pass runs on contiguous memory, which NumPy vectorises; a strided
    tap view runs element by element. Outputs are computed on the planes' whole grid and the
    valid oh x ow corner is written out. The same values and ties as the per-tap views."""
    (kh, kw), (sh, sw) = kernel, stride
    lead, (hp, wp) = xb.shape[:-2], xb.shape[-2:]
    oh, ow = yb.shape[-2:]
    qh, qw = -(-hp // sh), -(-wp // sw)
    cells = math.prod(lead) * qh * qw
    tail = ((kh - 1) // sh) * qw + (kw - 1) // sw
    planes = np.empty((sh, sw, cells + tail), xb.dtype)
    for a in range(sh):
        for b in range(sw):
            src = xb[..., a::sh, b::sw]
            pv = planes[a, b, :cells].reshape(*lead, qh, qw)
            pv[..., :src.shape[-2], :src.shape[-1]] = src
            pv[..., src.shape[-2]:, :] = -np.inf
            pv[..., :, src.shape[-1]:] = -np.inf
    planes[:, :, cells:] = -np.inf

    def tap(k: int) -> np.ndarray:
        i, j = divmod(k, kw)
        shift = (i // sh) * qw + j // sw
        return planes[i % sh, j % sw, shift:shift + cells]

    taps = kh * kw
    y = _max_of_taps(tap, taps, np.empty(cells, xb.dtype))
    yb[...] = y.reshape(*lead, qh, qw)[..., :oh, :ow]
    if ib is None:
        return
    idx = np.empty(cells, np.uint8)
    _first_max_index(tap, taps, y, idx, np.empty(cells, bool))
    ib[...] = idx.reshape(*lead, qh, qw)[..., :oh, :ow]


def maxpool_forward(x: np.ndarray, kernel: Pair, stride: Pair, pads: Pads,
                    with_index: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Max over each window; padding cells are -inf (never chosen). Returns (y, argmax tap index)
    with ties resolved to the first tap in row-major order, as PyTorch does; the index only
    `with_index`, for training. Block by block (see _POOL_BLOCK_BYTES); the index is
    ne0 * (1 + ne1 * (1 + ...)) over the taps' "not the maximum" masks, two small uint8 passes per
    tap instead of the masked arithmetic on the whole index that took as long as the max itself."""
    h, w = x.shape[-2:]
    oh, ow = _pool_out(h, w, kernel, stride, pads)
    xp = _pad_last2(x, pads, -np.inf)
    kh, kw = kernel
    taps = kh * kw
    lead = xp.shape[:-2]
    y = np.empty((*lead, oh, ow), x.dtype)
    idx = np.empty(y.shape, np.uint8 if taps < 256 else np.int32) if with_index and taps > 1 else None
    phases = (kh > stride[0] or kw > stride[1]) and taps > 2 and (idx is None or idx.dtype == np.uint8)
    ne = np.empty(y.shape, bool) if idx is not None and taps > 2 and not phases else None
    for blk in _lead_blocks(lead, xp.shape[-1] * xp.shape[-2] * xp.itemsize):
        xb, yb = xp[blk], y[blk]
        if phases:
            _max_by_phases(xb, kernel, stride, yb, None if idx is None else idx[blk])
            continue

        def tap(k: int, xb: np.ndarray = xb) -> np.ndarray:
            return _tap(xb, k // kw, k % kw, oh, ow, stride)

        _max_of_taps(tap, taps, yb)
        if idx is not None:
            _first_max_index(tap, taps, yb, idx[blk], None if ne is None else ne[blk])
    if with_index and idx is None:  # one tap: always the first
        idx = np.zeros(y.shape, np.uint8)
    return y, idx


@functools.lru_cache(maxsize=16)
def _window_origins(rows: int, hp: int, wp: int, oh: int, ow: int, sh: int, sw: int) -> np.ndarray:
    """Flat index of each pooling window's first cell in a (rows, hp, wp) array, (rows x oh x ow,)."""
    o = (np.arange(rows, dtype=np.int64)[:, None, None] * (hp * wp)
         + (sh * np.arange(oh, dtype=np.int64))[None, :, None] * wp
         + (sw * np.arange(ow, dtype=np.int64))[None, None, :]).reshape(-1)
    o.flags.writeable = False
    return o


def _scatter_overlapping(dy: np.ndarray, idx: np.ndarray, dxp: np.ndarray, kernel: Pair, stride: Pair,
                         hp: int, wp: int) -> None:
    """Overlapping windows' gradients (3x3/2 and the like) summed into dxp (..., hp, wp), overwritten:
    each output's gradient goes to its argmax cell's flat index, and np.bincount adds them up in
    one pass per block (in float64, then rounded once). The per-tap masked adds this replaced took
    2.5x as long: one core, 3x3/2 over 32 x 32 maps of 32 channels, 2.08 -> 0.84 ms; over 14 x 14,
    0.47 -> 0.14."""
    kh, kw = kernel
    oh, ow = dy.shape[-2:]
    taps = np.array([i * wp + j for i in range(kh) for j in range(kw)], np.int64)
    for blk in _lead_blocks(dy.shape[:-2], hp * wp * 8):
        db, xb = dy[blk], dxp[blk]
        rows = db.size // (oh * ow)
        flat = taps[idx[blk].reshape(-1)]
        flat += _window_origins(rows, hp, wp, oh, ow, *stride)
        xb[...] = np.bincount(flat, weights=db.reshape(-1), minlength=rows * hp * wp).reshape(xb.shape)


def maxpool_backward(
    dy: np.ndarray, idx: np.ndarray, in_hw: tuple[int, int], kernel: Pair, stride: Pair, pads: Pads,
    out: np.ndarray | None = None, ws: Workspace | None = None,
) -> np.ndarray:
    """Routes each output gradient to its window's argmax. `out` (optional) is a zeroed array of the
    padded input shape to write into (e.g. a view of a convolution's gradient grid); else the
    result is fresh, or a buffer of `ws` (valid until the next call with it). Block by block like
    maxpool_forward; windows that tile the input write every cell they cover, so only the
    uncovered border of a new result is zeroed; overlapping ones are summed by _scatter_overlapping."""
    h, w = in_hw
    t, b, left, r = pads
    kh, kw = kernel
    oh, ow = dy.shape[-2:]
    hp, wp = h + t + b, w + left + r
    if out is not None:
        dxp = out
    else:
        shape = (*dy.shape[:-2], hp, wp)
        dxp = np.empty(shape, dy.dtype) if ws is None else ws.get("pool_dx", shape, dy.dtype)
    if stride[0] < kh or stride[1] < kw:  # overlapping windows: every cell written
        _scatter_overlapping(dy, idx, dxp, kernel, stride, hp, wp)
    else:
        if out is None and stride == (kh, kw):
            dxp[..., oh * kh:, :] = 0
            dxp[..., :oh * kh, ow * kw:] = 0
        elif out is None:
            dxp[...] = 0
        sel = np.empty(dy.shape, bool)
        for blk in _lead_blocks(dy.shape[:-2], hp * wp * dy.itemsize):
            db, ib, sb, xb = dy[blk], idx[blk], sel[blk], dxp[blk]
            for k in range(kh * kw):
                np.equal(ib, k, out=sb)
                np.multiply(db, sb, out=_tap(xb, k // kw, k % kw, oh, ow, stride))
    if out is not None or not any(pads):
        return dxp
    return dxp[..., t:t + h, left:left + w]


def _avg_counts(h: int, w: int, kernel: Pair, stride: Pair, pads: Pads, dtype) -> np.ndarray:
    """How many real (unpadded) cells each window covers: padded cells are excluded from averages."""
    oh, ow = _pool_out(h, w, kernel, stride, pads)
    ones = _pad_last2(np.ones((h, w), dtype), pads, 0.0)
    cnt = np.zeros((oh, ow), dtype)
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            cnt += _tap(ones, i, j, oh, ow, stride)
    return cnt


def avgpool_forward(x: np.ndarray, kernel: Pair, stride: Pair, pads: Pads) -> np.ndarray:
    h, w = x.shape[-2:]
    oh, ow = _pool_out(h, w, kernel, stride, pads)
    xp = _pad_last2(x, pads, 0.0)
    kh, kw = kernel
    if kh * kw == 1:
        y = _tap(xp, 0, 0, oh, ow, stride).copy()
    else:  # the first two taps summed into the fresh result: no copy pass
        y = np.add(_tap(xp, 0, 0, oh, ow, stride), _tap(xp, 1 // kw, 1 % kw, oh, ow, stride))
    for k in range(2, kh * kw):
        y += _tap(xp, k // kw, k % kw, oh, ow, stride)
    if any(pads):
        y /= _avg_counts(h, w, kernel, stride, pads, x.dtype)
    else:
        y *= x.dtype.type(1.0 / (kh * kw))
    return y


def avgpool_backward(dy: np.ndarray, in_hw: tuple[int, int], kernel: Pair, stride: Pair, pads: Pads,
                     ws: Workspace | None = None) -> np.ndarray:
    """Spreads each output gradient evenly over its window's real cells. Windows that tile the
    input (stride = kernel, no padding: the usual 2x2/2) cover each cell once, so the scaled
    gradient is written into each tap's cells, into buffers of `ws` if given (valid until the next
    call with it): no zero-filled fresh array and no per-tap additions (32x32x32x32 input at batch
    32, one core: 1.6-2.2 -> ~0.8 ms CPU, the same values). Other windows add per tap into a zeroed
    array."""
    h, w = in_hw
    t, b, left, r = pads
    kh, kw = kernel
    oh, ow = dy.shape[-2:]
    if stride == (kh, kw) and not any(pads):
        shape = (*dy.shape[:-2], h, w)
        dx = np.empty(shape, dy.dtype) if ws is None else ws.get("pool_dx", shape, dy.dtype)
        dx[..., oh * kh:, :] = 0  # the rows and columns no window reaches
        dx[..., :oh * kh, ow * kw:] = 0
        g = np.multiply(dy, dy.dtype.type(1.0 / (kh * kw)),
                        out=None if ws is None else ws.get("pool_g", dy.shape, dy.dtype))
        for k in range(kh * kw):  # from a separate array: a copy within dx would go via a temporary
            _tap(dx, k // kw, k % kw, oh, ow, stride)[...] = g
        return dx
    if any(pads):
        gy = dy / _avg_counts(h, w, kernel, stride, pads, dy.dtype)
    else:
        gy = dy * dy.dtype.type(1.0 / (kh * kw))
    dxp = np.zeros((*dy.shape[:-2], h + t + b, w + left + r), dy.dtype)
    for k in range(kh * kw):
        _tap(dxp, k // kw, k % kw, oh, ow, stride)[...] += gy
    return dxp[..., t:t + h, left:left + w] if any(pads) else dxp


# ----------------------------------------------------------------------------------------------
# Element-wise activations
# ----------------------------------------------------------------------------------------------
def sigmoid(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Numerically stable logistic: never exponentiates a large positive number. With e =
    exp(-|x|), 1 / (1 + e) for x >= 0 and e / (1 + e) below, as one division of max(e, [x >= 0]) by
    1 + e in the result's own array (`out`, fresh by default, may be `x`): the same values as
    np.where over the two quotients, without its mispredicted branches and five temporaries (1M
    values, one core: 15 -> 2.5 ms CPU)."""
    dt = x.dtype
    top = np.greater_equal(x, 0).astype(dt)  # 1 where the numerator is 1, else 0 (< e)
    e = np.abs(x, out=out)
    np.negative(e, out=e)
    np.exp(e, out=e)
    den = np.add(e, 1)
    np.maximum(e, top, out=e)
    return np.divide(e, den, out=e)


def relu_backward(dy: np.ndarray, y: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    return leaky_relu_backward(dy, y, 0.0, out)


#: values per block of the element-wise kernels that need a temporary: it stays in L2, and no
#: full-size temporary is allocated at every step (whose fresh pages fault in: BatchNorm2D ->
#: LeakyReLU on 32x48x48 maps at batch 32, one core: forward 6.5 -> 3.2 ms CPU, backward 5.0 -> 4.4;
#: blocks of 2^14 to 2^19 values measured alike)
_EW_BLOCK = 1 << 16


def _by_blocks(fn: Any, out: np.ndarray, *arrays: np.ndarray) -> bool:
    """fn(out block, *array blocks) over flat blocks of arrays of one shape; False (nothing done)
    unless all are C-contiguous."""
    if not all(a.flags.c_contiguous for a in (out, *arrays)):
        return False
    flats = [a.reshape(-1) for a in (out, *arrays)]
    for s in range(0, flats[0].size, _EW_BLOCK):
        fn(*(f[s:s + _EW_BLOCK] for f in flats))
    return True


def leaky_relu_forward(x: np.ndarray, alpha: float, out: np.ndarray | None = None) -> np.ndarray:
    """x for positives, alpha * x for the rest (alpha 0: ReLU), into `out` (fresh by default; `x`
    itself for in place). max(x, alpha * x) for alpha <= 1, min beyond: two branch-free passes.
    np.where(x > 0, ...) on data of random sign cost ~4.5 ns a value in mispredicted branches
    (32x48x48 maps at batch 32, one core: 11.3 -> ~1 ms)."""
    if alpha == 0:
        return np.maximum(x, 0, out=out)
    a = x.dtype.type(alpha)
    pick = np.maximum if alpha <= 1 else np.minimum
    if out is None:  # the fresh result holds alpha * x first
        t = np.multiply(x, a)
        return pick(x, t, out=t)
    if not _by_blocks(lambda ob, xb: pick(xb, np.multiply(xb, a), out=ob), out, x):
        pick(x, np.multiply(x, a), out=out)
    return out


def leaky_relu_slope(y: np.ndarray, alpha: float) -> np.ndarray:
    """A fresh array of the local slope of a (leaky) ReLU: exactly 1 where its output `y` is
    positive, exactly alpha elsewhere, as PyTorch's gradient (the output has the input's sign for
    every alpha >= 0). Built from a comparison cast to 0/1 times a constant plus a constant, all
    contiguous branch-free passes (np.maximum against a scalar runs 4x slower than these here)."""
    dt = y.dtype
    one, a = dt.type(1), dt.type(alpha)
    if alpha <= 1:  # 0/1 where y > 0 -> a + (1 - a) * mask
        mask, base, step, top = np.greater(y, 0), a, one - a, one
    else:  # 0/1 where y <= 0 -> 1 + (a - 1) * mask
        mask, base, step, top = np.less_equal(y, 0), one, a - one, a
    s = mask.astype(dt)
    if alpha == 0:
        return s
    if base + step == top:  # exact in this dtype (true for 0 <= alpha <= 2 at least)
        s *= step
        s += base
    else:
        s *= top
        np.maximum(s, base, out=s)
    return s


def leaky_relu_backward(dy: np.ndarray, y: np.ndarray, alpha: float, out: np.ndarray | None = None) -> np.ndarray:
    """dy times the slope at the output `y` (see leaky_relu_slope), into `out` (fresh by default;
    `dy` itself for in place; block by block, see _EW_BLOCK). The same products as
    np.where(y > 0, dy, alpha * dy), bit for bit."""
    if out is None:  # the fresh slope array becomes the result
        s = leaky_relu_slope(y, alpha)
        return np.multiply(dy, s, out=s)
    if not _by_blocks(lambda ob, dyb, yb: np.multiply(dyb, leaky_relu_slope(yb, alpha), out=ob), out, dy, y):
        np.multiply(dy, leaky_relu_slope(y, alpha), out=out)
    return out


def sigmoid_backward(dy: np.ndarray, y: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """dy * y * (1 - y) in three passes over one array (`out`, fresh by default, may be `dy`)."""
    t = np.subtract(1, y, out=None if out is dy else out)
    t *= y
    return np.multiply(dy, t, out=t if out is None else out)


def tanh_backward(dy: np.ndarray, y: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """dy * (1 - y^2) in three passes over one array (`out`, fresh by default, may be `dy`)."""
    t = np.multiply(y, y, out=None if out is dy else out)
    np.subtract(1, t, out=t)
    return np.multiply(dy, t, out=t if out is None else out)


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax, shifted by the row maximum so exp never overflows."""
    e = np.exp(z - z.max(axis=1, keepdims=True))
    e /= e.sum(axis=1, keepdims=True)
    return e


def softmax_backward(dy: np.ndarray, y: np.ndarray) -> np.ndarray:
    return y * (dy - (dy * y).sum(axis=1, keepdims=True))


# ----------------------------------------------------------------------------------------------
# Dense, BatchNorm, Dropout
# ----------------------------------------------------------------------------------------------
#: batches of up to this many rows multiply as (W @ x^T)^T: OpenBLAS runs x @ W^T (its right
#: operand transposed) at about half speed on short batches, one core: 32 x 3136 @ 3136 x 128 in
#: 0.36 against 0.22 ms, 32 x 2048 @ 2048 x 2048 in 4.6 against 3.0 ms; from ~128 rows it is the
#: other way round (256 x 3136 @ 3136 x 128: 1.3 against 1.7 ms)
DENSE_WX_MAX_ROWS = 64


def dense_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    if x.ndim == 2 and x.shape[0] <= DENSE_WX_MAX_ROWS:
        yt = w @ x.T
        y = np.empty((x.shape[0], w.shape[0]), dtype=yt.dtype)
        if b is None:
            np.copyto(y, yt.T)
        else:
            np.add(yt.T, b, out=y)
        return y
    y = x @ w.T
    if b is not None:
        y += b
    return y


def dense_backward(
    dy: np.ndarray, x: np.ndarray, w: np.ndarray, dw_out: np.ndarray, db_out: np.ndarray | None, need_dx: bool
) -> np.ndarray | None:
    np.matmul(dy.T, x, out=dw_out)
    if db_out is not None:
        np.sum(dy, axis=0, out=db_out)
    return dy @ w if need_dx else None


def _rowsum(x: np.ndarray, axis: int) -> np.ndarray:
    return x.sum(axis=axis)


_vecdot = getattr(np, "vecdot", None)


def _rowdot(a: np.ndarray, b: np.ndarray, axis: int) -> np.ndarray:
    """Per-row (axis 1) or per-column (axis 0) dot products without a temporary the size of a and b
    (np.vecdot is NumPy 2's; the project still supports NumPy 1.26, which gets einsum)."""
    if _vecdot is not None:
        return _vecdot(a, b, axis=axis)
    return np.einsum("ij,ij->i" if axis == 1 else "ij,ij->j", a, b)


def batchnorm_normalise(
    x2: np.ndarray, gamma: np.ndarray, beta: np.ndarray, running_mean: np.ndarray, running_var: np.ndarray,
    momentum: float, eps: float, training: bool, axis: int, allsum: Any = None, ws: Workspace | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple | None]:
    """The statistics half of batchnorm_forward: (src, scale, shift, cache) with the output
    src * scale + shift per channel. In training src is d = x - mean in a buffer of `ws` (kept for
    the backward pass), scale gamma * inv, shift beta, and the running statistics are updated; in
    inference src is x itself, the running statistics folded into scale and shift, and the cache
    None. A fused max-pool may pool src first where every scale is positive (BatchNormReLUPool)."""
    dt = x2.dtype
    if not training:
        inv = 1.0 / np.sqrt(running_var.astype(dt) + dt.type(eps))
        return x2, gamma * inv, beta - running_mean * gamma * inv, None
    shape = (1, -1) if axis == 0 else (-1, 1)
    n = x2.shape[axis]
    total = _rowsum(x2, axis)
    if allsum is not None:
        both = allsum(np.append(total.astype(np.float64), n))
        total, n = both[:-1].astype(dt), int(round(both[-1]))
    mean = total / dt.type(n)
    d = np.subtract(x2, mean.reshape(shape), out=_ws(ws).get("bn_d", x2.shape, dt))
    ss = _rowdot(d, d, axis)
    if allsum is not None:
        ss = allsum(ss.astype(np.float64)).astype(dt)
    var = ss / dt.type(n)
    inv = (1.0 / np.sqrt(var + dt.type(eps))).astype(dt)
    m = momentum
    running_mean *= 1 - m
    running_mean += m * mean
    running_var *= 1 - m
    running_var += m * var * (n / max(n - 1, 1))
    return d, (gamma * inv).astype(dt), beta, (d, inv, n, None, ws)


def batchnorm_forward(
    x2: np.ndarray, gamma: np.ndarray, beta: np.ndarray, running_mean: np.ndarray, running_var: np.ndarray,
    momentum: float, eps: float, training: bool, axis: int, allsum: Any = None, leak: float | None = None,
    ws: Workspace | None = None, out: np.ndarray | None = None,
) -> tuple[np.ndarray, tuple | None]:
    """PyTorch batch norm on a 2-D view whose statistics run along `axis` (0 for (N, F) features,
    1 for (C, N*H*W) channel rows). Training normalises with the biased batch variance and updates
    the running variance with the unbiased one (momentum-weighted, like torch). `leak` (not None):
    a ReLU (0) or LeakyReLU (alpha) applied in place to the fresh output, leaky_relu_forward (the
    BatchNorm -> ReLU step of engine.layers.batchnorm).

    `allsum(v)` (optional) returns the element-wise sum of `v` over every process holding a share
    of the batch (engine.parallel): the count and the per-channel sum, then the sum of squared
    deviations from the global mean, so each share is normalised with the whole batch's statistics
    exactly as one process would (two passes, as here, not the cancellation-prone E[x^2] - E[x]^2).

    Every full-size pass costs about 1 ms per 4.7M floats here (and a fresh array more, in page
    faults), so there are few: the deviations d = x - mean are kept for the backward pass in a
    buffer of `ws` reused from step to step (not xhat = d * inv: one pass less), their squares are
    summed by np.vecdot (BLAS dot: 0.35 ms against einsum's 1.0 for 32 x 147k floats) and y is
    d * (gamma * inv) + beta in two passes (xhat, then * gamma, then + beta took three). The
    backward pass turns d into the input gradient in place, so that gradient is a view of `ws`
    too, valid until the next training forward pass (Model.backward returns a copy)."""
    shape = (1, -1) if axis == 0 else (-1, 1)
    src, scale, shift, cache = batchnorm_normalise(x2, gamma, beta, running_mean, running_var, momentum, eps,
                                                   training, axis, allsum, ws)
    y = np.multiply(src, scale.reshape(shape), out=out)
    y += shift.reshape(shape)
    if leak is not None:
        leaky_relu_forward(y, leak, out=y)
    if cache is None:
        return y, None
    return y, (*cache[:3], None if leak is None else (y, leak), ws)


def batchnorm_backward(
    dy2: np.ndarray, cache: tuple, gamma: np.ndarray, dgamma_out: np.ndarray, dbeta_out: np.ndarray, axis: int,
    allsum: Any = None,
) -> np.ndarray:
    """Writes this share's dgamma, dbeta (the shares' sum is the whole batch's); the input gradient
    uses the whole batch's sums (`allsum` as in batchnorm_forward). After a fused (leaky) ReLU the
    gradient is first scaled by its slope at the output, as its own backward does (into a reused
    buffer)."""
    shape = (1, -1) if axis == 0 else (-1, 1)
    d, inv, n, act, ws = cache
    dt = dy2.dtype
    ws = _ws(ws)
    if act is None:
        g = dy2
    else:
        y, leak = act
        g = leaky_relu_backward(dy2, y, leak, out=ws.get("bn_g", y.shape, dt))
    dbeta = _rowsum(g, axis)
    dgamma = _rowdot(g, d, axis) * inv
    dgamma_out[...] = dgamma
    dbeta_out[...] = dbeta
    if allsum is not None:
        c = dgamma.size
        both = allsum(np.concatenate([dbeta, dgamma]).astype(np.float64)).astype(dt)
        dbeta, dgamma = both[:c], both[c:]
    # dx = gamma * inv / n * (n * g - dbeta - xhat * dgamma), xhat = d * inv: one scale, two shifts,
    # computed in the deviations' own array (the cache is used once)
    k = gamma * inv
    dx = d
    dx *= (-k * inv * dgamma / dt.type(n)).astype(dt).reshape(shape)
    dx += (-k * dbeta / dt.type(n)).astype(dt).reshape(shape)
    k_r = k.astype(dt).reshape(shape)
    dx += np.multiply(g, k_r, out=ws.get("bn_g", g.shape, dt))  # in place after a ReLU
    return dx


def dropout_mask(rng: np.random.Generator, shape: tuple[int, ...], rate: float, dtype) -> np.ndarray:
    """Inverted dropout: kept values are scaled by 1 / (1 - rate) so inference needs no change."""
    keep = rng.random(shape, dtype=np.float32) >= rate
    return keep.astype(dtype) * dtype.type(1.0 / (1.0 - rate))


# ----------------------------------------------------------------------------------------------
# Stride-1 convolution fused with a non-overlapping max-pool, on a polyphase layout
# ----------------------------------------------------------------------------------------------
class ConvPoolGeometry:
    """A stride-1 convolution whose output feeds a (qy, qx) max-pool with stride = pool size.

    The padded input is split into qy*qx *phase grids* (rows = r mod qy, columns = c mod qx), each
    of Hq x Wq cells. The convolution output at pool phase (py, px) and pooled position (a, b) reads
    phase ((py+i) mod qy, (px+j) mod qx) at (a + (py+i) // qy, b + (px+j) // qx): a contiguous
    shift of that phase grid's flattened rows. So im2col is qy*qx*kh*kw block copies (long
    contiguous runs), the GEMM output comes out as qy*qx contiguous blocks (one per position inside
    the pooling window), and the max-pool is an element-wise maximum over those blocks instead of a
    strided gather."""

    def __init__(self, in_shape: tuple[int, int, int, int], filters: int, kernel: Pair, pads: Pads, pool: Pair):
        c, n, h, w = in_shape
        self.c, self.n, self.h, self.w, self.f = c, n, h, w, filters
        self.kh, self.kw = kernel
        self.qy, self.qx = pool
        self.pads = pads
        t, b, left, r = pads
        hp, wp = h + t + b, w + left + r
        self.oh, self.ow = hp - self.kh + 1, wp - self.kw + 1
        self.ph, self.pw = self.oh // self.qy, self.ow // self.qx
        self.hq, self.wq = -(-hp // self.qy), -(-wp // self.qx)
        # Phase grids are laid out (row, column, image), the image innermost: a row of the grid is
        # `rs` floats and a column step is n floats. Only the pooled map's ph x pw positions are
        # computed, packed as (row, column < pw, image): im2col copies each grid row's first pw*n
        # floats (long contiguous runs), and no GEMM column is wasted on padding (MNIST CNN conv 2
        # computed 8 x 8 positions for 7 x 7, LeNet-5 conv 2 7 x 7 for 5 x 5).
        self.rs = self.wq * n
        self.run = self.pw * n  # computed floats per grid row
        self.lgrid = self.hq * self.rs  # cells per phase grid and channel
        self.lq = self.ph * self.run  # computed positions per pool phase
        self.np = self.qy * self.qx
        self.max_shift = (((self.qy - 1 + self.kh - 1) // self.qy) * self.rs
                          + ((self.qx - 1 + self.kw - 1) // self.qx) * n)
        self.k = c * self.kh * self.kw
        # where each input pixel lands: phase index, first row/col in the phase grid, source slices
        self.scatter = []
        for ry in range(self.qy):
            y0 = (ry - t) % self.qy
            if y0 >= h:
                continue
            a0 = (y0 + t) // self.qy
            ny = len(range(y0, h, self.qy))
            for rx in range(self.qx):
                x0 = (rx - left) % self.qx
                if x0 >= w:
                    continue
                b0 = (x0 + left) // self.qx
                nx = len(range(x0, w, self.qx))
                self.scatter.append((ry * self.qx + rx, y0, x0, a0, b0, ny, nx))
        # (tap, pool phase) -> (input phase, shift)
        self.taps = []
        for i in range(self.kh):
            for j in range(self.kw):
                for py in range(self.qy):
                    for px in range(self.qx):
                        u, v = py + i, px + j
                        self.taps.append((i, j, py * self.qx + px, (u % self.qy) * self.qx + v % self.qx,
                                          (u // self.qy) * self.rs + (v // self.qx) * n))
        #: per pool phase: (tap index i*kw + j, input phase, shift)
        self.taps_by_phase: list[list[tuple[int, int, int]]] = [[] for _ in range(self.np)]
        for i, j, p, pin, s in self.taps:
            self.taps_by_phase[p].append((i * self.kw + j, pin, s))
        #: per tap (i, j): where its qy x qx pool phases lie, when one strided view holds them all
        t = np.array([(pin, s) for _, _, _, pin, s in self.taps]).reshape(self.kh, self.kw, self.qy, self.qx, 2)
        self.tap_views = [[_affine(self, t[i, j, ..., 0], t[i, j, ..., 1]) for j in range(self.kw)]
                          for i in range(self.kh)]


def _rows(grid: np.ndarray, start: int, nrows: int, g: ConvPoolGeometry) -> np.ndarray:
    """View (C, nrows, pw*n) of the computed part of `nrows` phase-grid rows from flat offset `start`."""
    return grid[:, start:start + nrows * g.rs].reshape(grid.shape[0], nrows, g.rs)[:, :, :g.run]


def _affine(g: ConvPoolGeometry, pins: np.ndarray, shifts: np.ndarray) -> tuple[int, tuple[int, ...]] | None:
    """(first offset, offset step per axis) in a phase-grid array (np, C, lgrid + max_shift) of the rows
    of phase pins[...] shifted by shifts[...], or None when the offsets are not affine along every axis."""
    off = pins * (g.c * (g.lgrid + g.max_shift)) + shifts
    steps = []
    for ax in range(off.ndim):
        d = np.diff(off, axis=ax)
        step = int(d.flat[0]) if d.size else 0
        if d.size and not np.all(d == step):
            return None
        steps.append(step)
    return int(off.flat[0]), tuple(steps)


def _shifted_rows(xq: np.ndarray, g: ConvPoolGeometry, where: tuple[int, tuple[int, ...]], lead: tuple[int, ...]
                  ) -> np.ndarray:
    """One strided view (*lead, C, ph, pw*n) of the computed rows of several (phase, shift) pairs
    whose offsets `where` (from _affine) are affine: copying it (or adding into it, when the pairs
    do not overlap) is one NumPy call instead of one per pair. For LeNet-5's small layers the
    per-call overhead was most of im2col (36 copies of 5-25 KB each: 0.08 -> 0.02 ms per layer)."""
    base, steps = where
    it = xq.itemsize
    return np.ndarray((*lead, g.c, g.ph, g.run), xq.dtype, buffer=xq, offset=base * it,
                      strides=(*(st * it for st in steps), (g.lgrid + g.max_shift) * it, g.rs * it, it))


def _to_phases(x: np.ndarray, g: ConvPoolGeometry, ws: Workspace, tag: str) -> np.ndarray:
    """Scatter x (C, N, H, W) into the zero-padded phase grids (qy*qx, C, hq*wq*N + max_shift)."""
    L = g.lgrid
    xq = ws.get(tag + "xq", (g.np, g.c, L + g.max_shift), x.dtype, zero=True)
    for p, y0, x0, a0, b0, ny, nx in g.scatter:
        xq[p, :, :L].reshape(g.c, g.hq, g.wq, g.n)[:, a0:a0 + ny, b0:b0 + nx, :] = \
            x[:, :, y0::g.qy, x0::g.qx].transpose(0, 2, 3, 1)
    return xq


def _from_phases(dxq: np.ndarray, g: ConvPoolGeometry, ws: Workspace, tag: str) -> np.ndarray:
    """Gather the phase grids' interior back into (C, N, H, W): the inverse of _to_phases."""
    L = g.lgrid
    dx = ws.get(tag + "qdx", (g.c, g.n, g.h, g.w), dxq.dtype)
    for p, y0, x0, a0, b0, ny, nx in g.scatter:
        dx[:, :, y0::g.qy, x0::g.qx] = \
            dxq[p, :, :L].reshape(g.c, g.hq, g.wq, g.n)[:, a0:a0 + ny, b0:b0 + nx, :].transpose(0, 3, 1, 2)
    return dx


def _pool_grad_blocks(dp: np.ndarray, zm: tuple[np.ndarray, np.ndarray], g: ConvPoolGeometry, ws: Workspace,
                      tag: str) -> np.ndarray:
    """Gradient of the pooled map routed to the conv output blocks (F, qy*qx, L'): each value goes
    to the first block equal to the window maximum, as PyTorch does on ties."""
    z, m = zm
    L = g.lq
    dz = ws.get(tag + "qdz", (g.f, g.np, L), dp.dtype)
    dpg = ws.get(tag + "qdp", (g.f, L), dp.dtype)  # dp in the packed (row, column, image) order
    dpg.reshape(g.f, g.ph, g.pw, g.n)[...] = dp.transpose(0, 2, 3, 1)
    free = ws.get(tag + "qfree", (g.f, L), bool)
    sel = ws.get(tag + "qsel", (g.f, L), bool)
    free.fill(True)
    for p in range(g.np):
        np.equal(z[:, p], m, out=sel)
        sel &= free
        if p + 1 < g.np:
            free ^= sel
        np.multiply(dpg, sel, out=dz[:, p])
    return dz


def _pooled_max(z: np.ndarray, g: ConvPoolGeometry, ws: Workspace, tag: str):
    m = ws.get(tag + "qm", (g.f, g.lq), z.dtype)
    np.max(z, axis=1, out=m)
    return m.reshape(g.f, g.ph, g.pw, g.n).transpose(0, 3, 1, 2), (z, m)


def convpool_forward(
    x: np.ndarray, w: np.ndarray, g: ConvPoolGeometry, ws: Workspace, tag: str = ""
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x (C, N, H, W) -> (pooled bias-free conv (F, N, ph, pw) view, (conv blocks, block maxima), cols).

    The argmax is not stored: the backward pass finds, block by block, the first block equal to the
    maximum (contiguous compares, ~10x cheaper than tracking indices with masked copies)."""
    dt = x.dtype
    L = g.lq
    xq = _to_phases(x, g, ws, tag)
    cols = ws.get(tag + "qcols", (g.c, g.kh, g.kw, g.np, L), dt)
    for i, j, p, pin, s in g.taps:
        where = g.tap_views[i][j]
        if where is None:
            cols[:, i, j, p, :].reshape(g.c, g.ph, g.run)[...] = _rows(xq[pin], s, g.ph, g)
        elif p == 0:  # all pool phases of the tap at once
            src = _shifted_rows(xq, g, where, (g.qy, g.qx))
            cols[:, i, j].reshape(g.c, g.qy, g.qx, g.ph, g.run)[...] = src.transpose(2, 0, 1, 3, 4)
    cols2 = cols.reshape(g.k, g.np * L)
    z = ws.get(tag + "qz", (g.f, g.np, L), dt)
    gemm_wide(w.reshape(g.f, g.k), cols2, z.reshape(g.f, g.np * L))
    pooled, zm = _pooled_max(z, g, ws, tag)
    return pooled, zm, cols2


def convpool_backward(
    dp: np.ndarray, zm: tuple[np.ndarray, np.ndarray], cols2: np.ndarray, w: np.ndarray, g: ConvPoolGeometry,
    dw_out: np.ndarray, need_dx: bool, ws: Workspace, tag: str = "",
) -> np.ndarray | None:
    """dp: gradient at the pooled, bias-free conv output (F, N, ph, pw). Writes dL/dw, returns dL/dx."""
    dt = dp.dtype
    L, ms = g.lq, g.max_shift
    dz2 = _pool_grad_blocks(dp, zm, g, ws, tag).reshape(g.f, g.np * L)
    gemm_dw(dz2, cols2, dw_out.reshape(g.f, g.k))
    if not need_dx:
        return None
    # P[i, j, c, q] = sum_f w[f, c, i, j] dz[f, phase, q]; then shifted adds into the input phases.
    # Done per phase over column chunks so that P stays in L2 between the GEMM and the adds
    # (MNIST CNN conv 2, 32 images: 4.75 -> 4.1 ms against one whole-width P).
    rows = g.kh * g.kw * g.c
    wall = ws.get(tag + "qwall", (g.kh, g.kw, g.c, g.f), dt)
    wall[...] = w.transpose(2, 3, 1, 0)
    w2 = wall.reshape(rows, g.f)
    dz3 = dz2.reshape(g.f, g.np, L)
    step = max(1, max(_DX_CHUNK_MIN, _DX_CHUNK_FLOATS // rows) // g.run)  # grid rows per chunk
    pm = ws.get(tag + "qpm", (g.kh * g.kw, g.c, min(step, g.ph) * g.run), dt)
    dxq = ws.get(tag + "qdxq", (g.np, g.c, g.lgrid + ms), dt)
    dxq.fill(0)
    for a in range(0, g.ph, step):
        b = min(a + step, g.ph)
        pmv = pm[:, :, :(b - a) * g.run]
        for p, taps in enumerate(g.taps_by_phase):
            np.matmul(w2, dz3[:, p, a * g.run:b * g.run], out=pmv.reshape(rows, -1))
            for t, pin, s in taps:
                _rows(dxq[pin], s + a * g.rs, b - a, g)[...] += pmv[t].reshape(g.c, b - a, g.run)
    return _from_phases(dxq, g, ws, tag)


class ShiftPoolGeometry(ConvPoolGeometry):
    """The polyphase convolution + pool written over *distinct shifts* instead of taps.

    Output phase (py, px) with tap (i, j) reads the input at phase-grid offset u = py + i, v = px + j;
    only U x V = (qy + kh - 1) x (qx + kw - 1) offsets exist (36 for a 5x5 kernel under a 2x2 pool,
    against 100 tap/phase pairs). So im2col copies U*V shifted rows per channel, and one GEMM with a
    block-sparse weight matrix W'[(f, py, px), (u, v, c)] = w[f, c, u - py, v - px] produces all
    pool phases at once. Fewer, smaller copies and shifted adds, at the price of multiplying some
    zeros; Model picks it per layer when its cost estimate is lower."""

    def __init__(self, *a):
        super().__init__(*a)
        self.u, self.v = self.qy + self.kh - 1, self.qx + self.kw - 1
        self.rows = self.u * self.v * self.c
        self.shifts = [((u % self.qy) * self.qx + v % self.qx, (u // self.qy) * self.rs + (v // self.qx) * self.n)
                       for u in range(self.u) for v in range(self.v)]
        #: all shifts as one strided view over (u // qy, u % qy, v // qx, v % qx), when U and V are
        #: multiples of the pool (_shifted_rows)
        self.shift_lead = (self.u // self.qy, self.qy, self.v // self.qx, self.qx)
        self.shift_view = None
        if self.u % self.qy == 0 and self.v % self.qx == 0:
            sh = np.array(self.shifts).reshape(*self.shift_lead, 2)
            self.shift_view = _affine(self, sh[..., 0], sh[..., 1])
            #: per (u // qy, v // qx): its qy x qx shifts land in different phase grids, so the input
            #: gradient adds them in one call (9 calls instead of 36 for a 5x5 kernel under a 2x2 pool)
            self.add_views = [[_affine(self, sh[a, :, b, :, 0], sh[a, :, b, :, 1]) for b in range(self.shift_lead[2])]
                              for a in range(self.shift_lead[0])]


def shiftpool_cost(g: ConvPoolGeometry) -> tuple[float, float]:
    """(tap-phase cost, shift cost) in rough float-copy units (a GEMM flop ~ 1/20 of a copied float,
    measured on this machine's OpenBLAS): used to choose the formulation per layer."""
    taps = g.k * g.np + g.f * g.k * g.np / 20
    d = (g.qy + g.kh - 1) * (g.qx + g.kw - 1) * g.c
    shifts = d + g.f * g.np * d / 20
    return taps, shifts


def _big_weight(w: np.ndarray, g: ShiftPoolGeometry, ws: Workspace, tag: str) -> np.ndarray:
    wb = ws.get(tag + "swb", (g.f, g.qy, g.qx, g.u, g.v, g.c), w.dtype, zero=True)
    wt = w.transpose(0, 2, 3, 1)  # (F, kh, kw, C)
    for py in range(g.qy):
        for px in range(g.qx):
            wb[:, py, px, py:py + g.kh, px:px + g.kw, :] = wt
    return wb.reshape(g.f * g.np, g.rows)


def shiftpool_forward(
    x: np.ndarray, w: np.ndarray, g: ShiftPoolGeometry, ws: Workspace, tag: str = ""
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray], np.ndarray]:
    """Same contract as convpool_forward; `cols` is the (U*V*C, L') shifted-row matrix."""
    dt = x.dtype
    L = g.lq
    xq = _to_phases(x, g, ws, tag)
    cols = ws.get(tag + "scols", (g.u * g.v, g.c, L), dt)
    if g.shift_view is not None:
        src = _shifted_rows(xq, g, g.shift_view, g.shift_lead)
        cols.reshape(src.shape)[...] = src
    else:
        for r, (pin, s) in enumerate(g.shifts):
            cols[r].reshape(g.c, g.ph, g.run)[...] = _rows(xq[pin], s, g.ph, g)
    cols2 = cols.reshape(g.rows, L)
    z = ws.get(tag + "sz", (g.f, g.np, L), dt)
    gemm_wide(_big_weight(w, g, ws, tag), cols2, z.reshape(g.f * g.np, L))
    pooled, zm = _pooled_max(z, g, ws, tag)
    return pooled, zm, cols2


def shiftpool_backward(
    dp: np.ndarray, zm: tuple[np.ndarray, np.ndarray], cols2: np.ndarray, w: np.ndarray, g: ShiftPoolGeometry,
    dw_out: np.ndarray, need_dx: bool, ws: Workspace, tag: str = "",
) -> np.ndarray | None:
    dt = dp.dtype
    L, ms = g.lq, g.max_shift
    dz2 = _pool_grad_blocks(dp, zm, g, ws, tag).reshape(g.f * g.np, L)
    dwb = ws.get(tag + "sdwb", (g.f * g.np, g.rows), dt)
    gemm_dw(dz2, cols2, dwb)
    dwb6 = dwb.reshape(g.f, g.qy, g.qx, g.u, g.v, g.c)
    acc = ws.get(tag + "sdwacc", (g.f, g.kh, g.kw, g.c), dt)
    acc[...] = dwb6[:, 0, 0, :g.kh, :g.kw, :]
    for py in range(g.qy):
        for px in range(g.qx):
            if py or px:
                acc += dwb6[:, py, px, py:py + g.kh, px:px + g.kw, :]
    dw_out[...] = acc.transpose(0, 3, 1, 2)
    if not need_dx:
        return None
    wb = _big_weight(w, g, ws, tag)
    dcols = ws.get(tag + "sdcols", (g.u * g.v, g.c, L), dt)
    np.matmul(wb.T, dz2, out=dcols.reshape(g.rows, L))
    dxq = ws.get(tag + "qdxq", (g.np, g.c, g.lgrid + ms), dt)
    dxq.fill(0)
    if g.shift_view is not None:
        dc = dcols.reshape(*g.shift_lead, g.c, g.ph, g.run)
        for a, row in enumerate(g.add_views):
            for b, where in enumerate(row):
                dst = _shifted_rows(dxq, g, where, (g.qy, g.qx))
                dst += dc[a, :, b]
    else:
        for r, (pin, s) in enumerate(g.shifts):
            _rows(dxq[pin], s, g.ph, g)[...] += dcols[r].reshape(g.c, g.ph, g.run)
    return _from_phases(dxq, g, ws, tag)
