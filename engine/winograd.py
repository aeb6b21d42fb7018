"""Winograd F(2x2, 3x3) and F(2x2, 5x5) for stride-1 3x3 and 5x5 convolutions: forward, input
gradient and weight gradient.

Why: the colour nets people build are stacks of 3x3 "same" convolutions, and the direct (im2col)
path spends 9 multiplies per output and input channel and position; F(2x2, 3x3) (Lavin & Gray 2016)
computes each 2x2 output tile from a 4x4 input tile with 16, i.e. 2.25x fewer, as 16 independent
GEMMs (F x C) @ (C x tiles). The transforms around them are element-wise; in NumPy each is a pass
over memory whose cost per float depends mostly on the array's layout, so everything is laid out
so that every transform is a handful of calls on *flat* rows:

- The work runs in chunks of whole images (as many as keep the chunk's transformed input near
  1 MB). A chunk's zero-padded input is stored as its four *phase planes* Q[a][b][y, x] =
  xp[2y + a, 2x + b], each (C, span) flattened: per channel the chunk's images' (th + 1) x (tw + 1)
  grid cells, then gw + 1 spare cells. Element (k, l) of the 4x4 tile at (y, x) is Q[k % 2][l % 2]
  at (y, x) shifted by (k // 2) rows and (l // 2) columns, i.e. by a fixed number of cells: every
  stage of B^T d B is a flat subtraction or addition of two shifted rows, the whole chunk and all
  channels in one call (shifts that run past a channel's cells only reach unused tiles).
- The GEMMs run over every cell (the unused last tile row and column of each image included:
  (th + 1)(tw + 1) columns for th x tw tiles), and A^T M A is again flat, giving the four output
  phases (the 2x2 positions of each tile), written into (F, N, oh, ow) with four strided copies.

Flat rows cost ~5x less per float than the (C, images, used tiles) views with 272-float runs that
the first version used for the column stage and the output transform; the extra GEMM columns cost
less than that saved (see `applies` for what it buys per layer).

F(2x2, 5x5) is the same scheme on 6x6 input tiles (36 GEMMs, 9 multiplies per output instead of 25,
2.8x fewer): a tile's element (k, l) is phase plane (k % 2, l % 2) shifted by k // 2 <= 2 tile rows
and l // 2 columns, so the grid gets two spare rows and columns and every transform stage is again
flat adds of shifted rows, with more terms (B^T of the points 0, +-1, +-2, infinity: the F(4x4, 3x3)
input transform of cuDNN/NNPACK).

The backward pass is the exact adjoint of each stage (so gradient checks against finite
differences hold to rounding), with the weight gradient accumulated in the transformed domain
(dU = dM @ V^T) and mapped back with G^T. Everything is dtype-generic: float32 in training,
float64 in the gradient checks; F(2x2, 3x3)'s coefficients are 0, +-1 and 1/2 (exact in both),
F(2x2, 5x5)'s input and output transforms use small integers and its G sixths (the float32 error of
its products is a few times the direct path's, checked in the tests).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from engine.functional import Workspace

#: G of F(2x2, 3x3): U = G w G^T
_G3 = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])
#: G of F(2x2, 5x5), points 0, 1, -1, 2, -2 and infinity
_G5 = np.array([[1 / 4, 0, 0, 0, 0], [-1 / 6] * 5, [-1 / 6, 1 / 6, -1 / 6, 1 / 6, -1 / 6],
                [1 / 24, 1 / 12, 1 / 6, 1 / 3, 2 / 3], [1 / 24, -1 / 12, 1 / 6, -1 / 3, 2 / 3], [0, 0, 0, 0, 1.0]])
#: floats of the transformed input per chunk (16 or 36 x C x chunk columns): ~1 MB, near L2
_CHUNK_FLOATS = 256 * 1024


def applies(kernel: tuple[int, int], stride: tuple[int, int], channels: int, filters: int,
            training: bool = True, out_hw: tuple[int, int] | None = None) -> bool:
    """Whether a convolution runs on this path by default: 3x3 or 5x5, stride 1, at least 8 input
    channels. Measured per layer on one core against the direct path, batch 64, CPU time of
    forward + backward (training) or forward (inference, batch 128): 32 -> 32 channels at 32x32
    71 -> 52 ms, 32 -> 64 at 16x16 35 -> 25, 64 -> 128 at 8x8 37 -> 27, 16 -> 32 at 32x32 42 -> 30,
    8 -> 8 at 32x32 11.9 -> 8.7; inference 16 -> 32 at 32x32 33 -> 22 ms, 8 -> 16 under a 2x2
    pool 12.4 -> 8.0. With 3 or 4 input channels (an RGB stem) the transforms cost more than the
    multiplies saved (3 -> 32: 14 -> 23 ms). `training` is kept for callers; the rule is the same.

    Smaller output maps (`out_hw`) stay direct: 3x3 below 8x8, where the direct path runs im2col
    with the batch innermost (engine.functional._batch_inner_cols) and the tiles of the last row
    and column and the grid's spare cells are a large share. Batch 32, forward + backward, one core,
    Winograd against that gather (ms): 3x3 64 -> 128 at 6x6 9.9 / 7.5, at 7x7 15.0 / 10.5, at 8x8
    13.8 / 15.9; 128 -> 128 at 8x8 26.9 / 33.8; 64 -> 64 at 8x8 8.4 / 9.5. 5x5 below 14x14 runs
    on the kernel-row lowering (engine.functional.rows_pay has the figures: 32 -> 64 at 10x10 20.8
    ms here against 15.1 there, 32 -> 32 at 13x13 16.7 / 13.3; at 14x14 Winograd wins, 30.0 /
    34.6)."""
    if not (has_tiles(kernel) and stride == (1, 1) and channels >= 8):
        return False
    return out_hw is None or min(out_hw) >= _SMALLEST_MAP[kernel[0]]


#: per kernel size, the smallest output map (rows and columns) its tiles pay from (see applies)
_SMALLEST_MAP = {3: 8, 5: 14}


def has_tiles(kernel: tuple[int, int]) -> bool:
    """Whether a kernel has a tile scheme here (3x3, 5x5): only these can run on this path, by
    default (applies) or forced."""
    return kernel[0] == kernel[1] and kernel[0] in _TILES


def _images_per_chunk(channels: int, cells: int) -> int:
    """Whole images per chunk: as many as keep a chunk's 4x4 tiles' transformed input near
    _CHUNK_FLOATS, so 6x6 tiles' chunks hold 2.25x that (~2.25 MB): 32 -> 64 channels 5x5 at 16x16,
    batch 32, one core, forward + backward by a 6x6 chunk of 1 / 2 / 4 MB: 38 / 34 / 39 ms; 64 -> 64
    at 8x8 28 / 24 / 27)."""
    return max(1, _CHUNK_FLOATS // (16 * channels * cells))


class WinogradGeometry:
    """Shapes of one stride-1 3x3 or 5x5 convolution on the F(2x2, r x r) tile grid, run in chunks
    of whole images. A chunk's arrays are flat per row: (rows, channels x span), each channel's
    `span` = its images' grid cells (gh x gw each) plus the cells read by the last shifts."""

    def __init__(self, in_shape: tuple[int, int, int, int], filters: int, pads: tuple[int, int, int, int],
                 kernel: int = 3):
        c, n, h, w = in_shape
        self.c, self.n, self.h, self.w, self.f = c, n, h, w, filters
        self.pads = pads
        self.tiles = _TILES[kernel]
        #: input tile side (4 or 6)
        self.alpha = kernel + 1
        #: transformed values per tile (16 or 36): the number of GEMMs
        self.nt = self.alpha ** 2
        #: tile rows (and columns) a tile's input reaches past its own: 1 for 3x3, 2 for 5x5
        self.reach = kernel // 2
        t, b, left, r = pads
        self.oh, self.ow = h + t + b - kernel + 1, w + left + r - kernel + 1
        self.th, self.tw = (self.oh + 1) // 2, (self.ow + 1) // 2
        # tile grid per image (the last `reach` rows and columns unused)
        self.gh, self.gw = self.th + self.reach, self.tw + self.reach
        self.cell = self.gh * self.gw
        self.per_chunk = _images_per_chunk(c, self.cell)
        self.nchunks = -(-n // self.per_chunk)

    def span(self, imgs: int) -> int:
        """Cells per channel of a chunk of `imgs` images."""
        return imgs * self.cell + self.reach * (self.gw + 1)

    def steps(self) -> list[tuple[int, int]]:
        """Chunks of whole images: (first, last + 1)."""
        k = self.per_chunk
        return [(a, min(a + k, self.n)) for a in range(0, self.n, k)]

    def phase_views(self, planes: np.ndarray, imgs: int) -> Iterator[tuple[tuple, np.ndarray]]:
        """For each of the four phase planes of a chunk's `planes` (4, C x span): the (rows,
        columns) slices of the input map that land on it, and the view of the plane they fill."""
        top, _, left, _ = self.pads
        s, cells = self.span(imgs), imgs * self.cell
        for a in range(2):
            for b in range(2):
                r0, c0 = (a - top) % 2, (b - left) % 2
                nr, nc = len(range(r0, self.h, 2)), len(range(c0, self.w, 2))
                y0, x0 = (r0 + top) // 2, (c0 + left) // 2
                plane = planes[2 * a + b].reshape(self.c, s)[:, :cells].reshape(self.c, imgs, self.gh, self.gw)
                yield (slice(r0, None, 2), slice(c0, None, 2)), plane[:, :, y0:y0 + nr, x0:x0 + nc]

    def output_views(self, planes: np.ndarray, imgs: int) -> Iterator[tuple[tuple, np.ndarray]]:
        """For each of the four output phases of a chunk's `planes` (4, F, span): the (rows,
        columns) slices of the (F, N, oh, ow) output it holds, and the view holding them."""
        cells = imgs * self.cell
        for i in range(2):
            for j in range(2):
                plane = planes[2 * i + j][:, :cells].reshape(self.f, imgs, self.gh, self.gw)
                yield (slice(i, None, 2), slice(j, None, 2)), \
                    plane[:, :, :len(range(i, self.oh, 2)), :len(range(j, self.ow, 2))]


def _used(a: np.ndarray, g: WinogradGeometry, imgs: int, rows: int) -> np.ndarray:
    """The used tiles' columns of a chunk's (nt, rows x span) array, as (nt, imgs, rows, th x gw)
    matrices for a stacked GEMM: each image's tile rows without its unused last grid row, and
    without the chunk's spare cells (per image 16 x 17 of 17 x 17 cells at 32x32, 4 x 5 of 5 x 5 at
    8x8). Measured per chunk against one GEMM over every cell: 0.13 -> 0.10 ms (32 -> 32, 32x32),
    0.92 -> 0.79 ms (64 -> 128, 8x8, 10 images)."""
    s = g.span(imgs)
    cells = a.reshape(g.nt, rows, s)[:, :, :imgs * g.cell].reshape(g.nt, rows, imgs, g.cell)
    return cells[..., :g.th * g.gw].transpose(0, 2, 1, 3)


def weight_transform(w: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """U (nt, F, C) = G w G^T for every filter and input channel (into `out` when given). One GEMM
    with kron(G, G) over all F x C kernels: as a batch of F x C tiny matmuls (G @ w @ G^T) it cost
    more than the layer's 16 GEMMs at 8x8 (128 -> 128: 2.1 ms against 0.24, one core), and every
    process pays it whole, whatever its share of the batch."""
    f, c, k, _ = w.shape
    kron = _kron(k, w.dtype)
    if out is None:
        out = np.empty((kron.shape[0], f, c), w.dtype)
    np.matmul(kron, w.reshape(f * c, k * k).T, out=out.reshape(-1, f * c))
    return out


def weight_gradient(du: np.ndarray, dw_out: np.ndarray) -> None:
    """dL/dw (F, C, k, k) = G^T dU G into `dw_out`, from dU (nt, F, C): the adjoint of
    weight_transform, again one GEMM."""
    f, c, k, _ = dw_out.shape
    kron = _kron(k, du.dtype)
    if dw_out.flags.c_contiguous:
        np.matmul(du.reshape(-1, f * c).T, kron, out=dw_out.reshape(f * c, k * k))
    else:
        dw_out[...] = (du.reshape(-1, f * c).T @ kron).reshape(dw_out.shape)


def _input3(q: np.ndarray, g: WinogradGeometry, out: np.ndarray, r: np.ndarray) -> None:
    """V (16, n) = B^T d B for every cell of a chunk's flat phase planes q (4, n): rows first
    (R (4, 2, n): row combination k, column parity), then columns. Every stage is 4 NumPy calls
    on flat rows: a shift by one tile row is gw cells, by one tile column 1 cell, and the cells a
    shift carries across a channel's end only feed unused tiles. Flat rows run ~5x faster per
    float than views with short runs (the per-image (C, images, tiles) views this replaced)."""
    n, gw = q.shape[1], g.gw
    nr, nv = n - gw, n - gw - 1
    d0, d1 = q[0:2, :nr], q[2:4, :nr]  # q[0:2]: row phase 0, column parity 0 / 1; q[2:4]: row phase 1
    d2, d3 = q[0:2, gw:], q[2:4, gw:]
    np.subtract(d0, d2, out=r[0, :, :nr])
    np.add(d1, d2, out=r[1, :, :nr])
    np.subtract(d2, d1, out=r[2, :, :nr])
    np.subtract(d1, d3, out=r[3, :, :nr])
    o4 = out.reshape(4, 4, n)
    e0, e1 = r[:, 0, :nv], r[:, 1, :nv]
    e2, e3 = r[:, 0, 1:nv + 1], r[:, 1, 1:nv + 1]
    np.subtract(e0, e2, out=o4[:, 0, :nv])
    np.add(e1, e2, out=o4[:, 1, :nv])
    np.subtract(e2, e1, out=o4[:, 2, :nv])
    np.subtract(e1, e3, out=o4[:, 3, :nv])
    o4[:, :, nv:] = 0  # defined (finite) values in the unused last cells: they meet zeros in dU


def _output3(m: np.ndarray, out: np.ndarray, p: np.ndarray) -> None:
    """The four output phases (4, n) (2x2 positions of each tile) = A^T M A for M (16, n); `p`
    (4, 2, n) scratch. Vectorised over the four rows, then over both columns."""
    m4 = m.reshape(4, 4, m.shape[-1])
    np.add(m4[:, 0], m4[:, 1], out=p[:, 0])
    p[:, 0] += m4[:, 2]
    np.subtract(m4[:, 1], m4[:, 2], out=p[:, 1])
    p[:, 1] -= m4[:, 3]
    np.add(p[0], p[1], out=out[0:2])
    out[0:2] += p[2]
    np.subtract(p[1], p[2], out=out[2:4])
    out[2:4] -= p[3]


def _output3_adjoint(o: np.ndarray, m: np.ndarray) -> None:
    """dM (16, n) from the gradient at the four output phases o (4, n): the adjoint of _output3."""
    m4 = m.reshape(4, 4, m.shape[-1])
    # adjoint of out_0j = P0j + P1j + P2j, out_1j = P1j - P2j - P3j (both j at once), written
    # where the next stage wants them: dP_k0 into dM_k0, dP_k1 into dM_k3 (rows 0 and 3 of m4[k])
    m4[0, ::3] = o[0:2]
    np.add(o[0:2], o[2:4], out=m4[1, ::3])
    np.subtract(o[0:2], o[2:4], out=m4[2, ::3])
    np.negative(o[2:4], out=m4[3, ::3])
    # adjoint of P_k0 = M_k0 + M_k1 + M_k2, P_k1 = M_k1 - M_k2 - M_k3 (all k at once)
    np.add(m4[:, 0], m4[:, 3], out=m4[:, 1])
    np.subtract(m4[:, 0], m4[:, 3], out=m4[:, 2])
    np.negative(m4[:, 3], out=m4[:, 3])


def _bt6(d: list[np.ndarray], o: list[np.ndarray], t1: np.ndarray, t2: np.ndarray) -> None:
    """o = B^T d along one axis for F(2x2, 5x5): six (rows, cells) views in, six out, shared
    differences first (19 flat calls instead of the 22 terms' 34):
    o0 = 4 d0 - 5 d2 + d4, o1 = -4 d1 - 4 d2 + d3 + d4, o2 = 4 d1 - 4 d2 - d3 + d4,
    o3 = -2 d1 - d2 + 2 d3 + d4, o4 = 2 d1 - d2 - 2 d3 + d4, o5 = 4 d1 - 5 d3 + d5."""
    np.multiply(d[2], 4, out=t1)
    np.subtract(d[4], t1, out=t1)  # d4 - 4 d2
    np.multiply(d[1], 4, out=t2)
    np.subtract(d[3], t2, out=t2)  # d3 - 4 d1
    np.add(t1, t2, out=o[1])
    np.subtract(t1, t2, out=o[2])
    np.subtract(d[4], d[2], out=t1)  # d4 - d2
    np.subtract(d[0], d[2], out=o[0])
    o[0] *= 4
    o[0] += t1
    np.subtract(d[3], d[1], out=t2)
    t2 *= 2  # 2 (d3 - d1)
    np.add(t1, t2, out=o[3])
    np.subtract(t1, t2, out=o[4])
    np.subtract(d[1], d[3], out=o[5])
    o[5] *= 4
    np.subtract(d[5], d[3], out=t1)
    o[5] += t1


def _bt6_adjoint(v: list[np.ndarray], even: np.ndarray, odd: np.ndarray, shift: int,
                 t1: np.ndarray, t2: np.ndarray, t3: np.ndarray) -> None:
    """The adjoint of _bt6 where its inputs were d_k = (even, odd)[k % 2][:, (k // 2) shift:][:, :m]:
    overwrites `even` and `odd` (rows, >= m + 2 shift) with the gradient of the planes the d_k were
    cut from, given the six gradients v (rows, m) of its outputs. B's columns:
    dd0 = 4 v0, dd1 = 4 (v2 - v1 + v5) + 2 (v4 - v3), dd2 = -(5 v0 + 4 (v1 + v2) + v3 + v4),
    dd3 = (v1 - v2) + 2 (v3 - v4) - 5 v5, dd4 = v0 + v1 + v2 + v3 + v4, dd5 = v5."""
    m = v[0].shape[-1]
    np.multiply(v[0], 4, out=even[:, :m])  # dd0
    even[:, m:] = 0
    np.add(v[1], v[2], out=t1)
    np.add(v[3], v[4], out=t2)
    np.add(v[0], t1, out=t3)
    t3 += t2
    even[:, 2 * shift:2 * shift + m] += t3  # dd4
    t1 *= 4
    t1 += t2
    np.multiply(v[0], 5, out=t3)
    t1 += t3
    even[:, shift:shift + m] -= t1  # dd2
    np.subtract(v[2], v[1], out=t1)
    np.subtract(v[4], v[3], out=t2)
    o = odd[:, :m]
    np.add(t1, v[5], out=o)
    o *= 2
    o += t2
    o *= 2  # dd1
    odd[:, m:] = 0
    t2 *= 2
    t2 += t1
    np.multiply(v[5], 5, out=t3)
    t2 += t3
    odd[:, shift:shift + m] -= t2  # dd3
    odd[:, 2 * shift:2 * shift + m] += v[5]  # dd5


def _input5(q: np.ndarray, g: WinogradGeometry, out: np.ndarray, r: np.ndarray) -> None:
    """V (36, n) = B^T d B for every cell of a chunk's flat phase planes q (4, n), as _input3 does
    for 3x3: rows first (R (6, 2, n): row combination, column parity), then columns, each stage
    one _bt6 on flat shifted rows (a tile row is gw cells, a tile column 1). `r` (15, 2, n) holds R
    and the temporaries."""
    n, gw = q.shape[1], g.gw
    nr = n - 2 * gw
    nv = nr - 2
    rr = r[:6]
    d = [q[2 * (k % 2):2 * (k % 2) + 2, (k // 2) * gw:(k // 2) * gw + nr] for k in range(6)]
    _bt6(d, [rr[k, :, :nr] for k in range(6)], r[6, :, :nr], r[7, :, :nr])
    o6 = out.reshape(6, 6, n)
    e = [rr[:, j % 2, j // 2:j // 2 + nv] for j in range(6)]
    _bt6(e, [o6[:, j, :nv] for j in range(6)], r[6:9].reshape(6, n)[:, :nv], r[9:12].reshape(6, n)[:, :nv])
    o6[:, :, nv:] = 0  # defined (finite) values in the unused last cells: they meet zeros in dU


def _input5_adjoint(dv: np.ndarray, dq: np.ndarray, g: WinogradGeometry, dr: np.ndarray) -> None:
    """The gradient of a chunk's flat phase planes dq (4, n) (overwritten) from dV (36, n), the
    exact adjoint of _input5; dr (15, 2, n) scratch."""
    n, gw = dq.shape[1], g.gw
    nr = n - 2 * gw
    nv = nr - 2
    v6 = dv.reshape(6, 6, n)
    t = [dr[6 + 3 * i:9 + 3 * i].reshape(6, n)[:, :nv] for i in range(3)]
    _bt6_adjoint([v6[:, j, :nv] for j in range(6)], dr[:6, 0], dr[:6, 1], 1, *t)
    t = [dr[6 + i, :, :nr] for i in range(3)]
    _bt6_adjoint([dr[k, :, :nr] for k in range(6)], dq[0:2], dq[2:4], gw, *t)


def _at6(s: list[np.ndarray], a: np.ndarray, b: np.ndarray) -> None:
    """(a, b) = A^T s along one axis for F(2x2, 5x5), A^T = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 1]]:
    a = s0 + s1 + s2 + s3 + s4, b = s1 - s2 + 2 (s3 - s4) + s5."""
    np.add(s[1], s[2], out=a)
    a += s[3]
    a += s[4]
    a += s[0]
    np.subtract(s[3], s[4], out=b)
    b *= 2
    b += s[1]
    b -= s[2]
    b += s[5]


def _at6_adjoint(a: np.ndarray, b: np.ndarray, d: list[np.ndarray]) -> None:
    """The adjoint of _at6 without its ends: d1..d4 = a + b, a - b, a + 2 b, a - 2 b (d0 = a and
    d5 = b are the caller's: where it keeps a and b in d0 and d5, they are already there)."""
    np.add(a, b, out=d[1])
    np.subtract(a, b, out=d[2])
    np.multiply(b, 2, out=d[3])
    d[3] += a
    np.multiply(b, -2, out=d[4])
    d[4] += a


def _output5(m: np.ndarray, out: np.ndarray, p: np.ndarray) -> None:
    """The four output phases (4, n) = A^T M A for M (36, n); `p` (6, 2, n) scratch. Over the
    columns for all six rows, then over the rows for both columns."""
    m6 = m.reshape(6, 6, m.shape[-1])
    _at6([m6[:, j] for j in range(6)], p[:, 0], p[:, 1])
    _at6(list(p), out[0:2], out[2:4])


def _output5_adjoint(o: np.ndarray, m: np.ndarray) -> None:
    """dM (36, n) from the gradient at the four output phases o (4, n): the adjoint of _output5.
    dP_k (both columns) goes where the column stage wants it, into dM_k0 and dM_k5."""
    m6 = m.reshape(6, 6, m.shape[-1])
    a, b = o[0:2], o[2:4]
    m6[0, ::5] = a
    m6[5, ::5] = b
    _at6_adjoint(a, b, [m6[k, ::5] for k in range(6)])
    _at6_adjoint(m6[:, 0], m6[:, 5], [m6[:, j] for j in range(6)])


@dataclass(frozen=True)
class _Tiles:
    """One tile scheme: its weight matrix G, the rows of (2, cells) scratch its input transforms
    use, and its transform stages with their adjoints."""
    g: np.ndarray
    scratch: int
    input: Callable[[np.ndarray, WinogradGeometry, np.ndarray, np.ndarray], None]
    input_adjoint: Callable[[np.ndarray, np.ndarray, WinogradGeometry, np.ndarray], None]
    output: Callable[[np.ndarray, np.ndarray, np.ndarray], None]
    output_adjoint: Callable[[np.ndarray, np.ndarray], None]


def conv_forward(x: np.ndarray, w: np.ndarray, g: WinogradGeometry, ws: Workspace, training: bool,
                 tag: str = "") -> np.ndarray:
    """z (F, N, oh, ow) of the bias-free convolution. In training the transformed input V of every
    chunk is kept in the workspace for the backward pass."""
    z = np.empty((g.f, g.n, g.oh, g.ow), x.dtype)

    def emit(a: int, b: int, out: np.ndarray) -> None:
        for (rows, cols), plane in g.output_views(out, b - a):
            z[:, a:b, rows, cols] = plane

    _forward(x, w, g, ws, training, tag, emit)
    return z


def conv_maxpool2_forward(x: np.ndarray, w: np.ndarray, g: WinogradGeometry, ws: Workspace,
                          training: bool = False) -> np.ndarray:
    """The bias-free convolution max-pooled over 2x2 windows, (F, N, oh / 2, ow / 2) for even oh,
    ow. A tile's four outputs are exactly one pooling window, so the pool is the maximum of the
    four output phases, taken per chunk while they are in cache, and the full-size output is never
    written. In training each chunk's output phases and maxima are kept (with V) for
    conv_maxpool2_backward."""
    dt = x.dtype
    pooled = np.empty((g.f, g.n, g.th, g.tw), dt)
    fs_full = g.f * g.span(g.per_chunk)
    # per chunk: the four output phases and their maximum
    kept = ws.get("wkeep", (g.nchunks if training else 1, 5, fs_full), dt)

    def emit(a: int, b: int, out: np.ndarray) -> None:
        o = out.reshape(4, -1)
        dst = kept[a // g.per_chunk if training else 0, 4, :o.shape[1]]
        np.maximum(o[0], o[1], out=dst)
        np.maximum(dst, o[2], out=dst)
        np.maximum(dst, o[3], out=dst)
        cells = (b - a) * g.cell
        pooled[:, a:b] = dst.reshape(g.f, -1)[:, :cells].reshape(g.f, b - a, g.gh, g.gw)[:, :, :g.th, :g.tw]

    _forward(x, w, g, ws, training, "", emit, lambda k: kept[k if training else 0, :4])
    return pooled


def conv_maxpool2_backward(dp: np.ndarray, w: np.ndarray, g: WinogradGeometry, dw_out: np.ndarray,
                           need_dx: bool, ws: Workspace) -> np.ndarray | None:
    """Gradients of conv_maxpool2_forward(training=True) from dp (F, N, oh / 2, ow / 2), the
    gradient at the pooled bias-free output: each window's gradient goes to the first of its four
    output phases equal to the maximum (PyTorch's tie rule), with flat compares per chunk."""
    dt = dp.dtype
    fs_full = g.f * g.span(g.per_chunk)
    kept = ws.get("wkeep", (g.nchunks, 5, fs_full), dt)
    free = ws.get("wfree", (fs_full,), bool)
    sel = ws.get("wsel", (fs_full,), bool)

    def phases(a: int, b: int, o: np.ndarray) -> None:
        n = o.shape[1]
        k = kept[a // g.per_chunk, :, :n]
        # the pooled gradient on the chunk's cells: zero on unused tiles (never written)
        dpf = ws.get(f"wdpool{b - a}", (n,), dt, zero=True)
        cells = (b - a) * g.cell
        dpf.reshape(g.f, -1)[:, :cells].reshape(g.f, b - a, g.gh, g.gw)[:, :, :g.th, :g.tw] = dp[:, a:b]
        fr, sl = free[:n], sel[:n]
        fr.fill(True)
        for j in range(4):
            np.equal(k[j], k[4], out=sl)
            sl &= fr
            if j < 3:
                fr ^= sl
            np.multiply(dpf, sl, out=o[j])

    return conv_backward(None, w, g, dw_out, need_dx, ws, phases=phases)


def _forward(x: np.ndarray, w: np.ndarray, g: WinogradGeometry, ws: Workspace, training: bool, tag: str,
             emit: Callable[[int, int, np.ndarray], None],
             out_of: Callable[[int], np.ndarray] | None = None) -> None:
    """The chunk loop: phase planes, input transform, 16 or 36 GEMMs, output transform, then
    `emit(first, last + 1, the four output phases (4, F, span))`. The phases go to `out_of(chunk)`
    ((4, >= F x span)) when given, else to one scratch buffer."""
    dt = x.dtype
    # kept for the backward pass in training: the input gradient's GEMMs take its transpose (a view,
    # as fast there as a contiguous copy)
    u = weight_transform(w, ws.get(tag + "wu", (g.nt, g.f, g.c), dt) if training else None)
    s_full = g.span(g.per_chunk)
    r = ws.get(tag + "wr", (g.tiles.scratch, 2, g.c * s_full), dt)
    mm = ws.get(tag + "wm", (g.nt, g.f * s_full), dt)
    p = ws.get(tag + "wp", (g.alpha, 2, g.f * s_full), dt)
    o = ws.get(tag + "wo", (4, g.f * s_full), dt) if out_of is None else None
    v_all = ws.get(tag + "wv", (g.nchunks if training else 1, g.nt, g.c * s_full), dt)
    for k, (a, b) in enumerate(g.steps()):
        s = g.span(b - a)
        cs, fs = g.c * s, g.f * s
        # one buffer per chunk size: its zero padding cells are never written
        q = ws.get(f"{tag}wq{b - a}", (4, cs), dt, zero=True)
        for (rows, cols), plane in g.phase_views(q, b - a):
            plane[...] = x[:, a:b, rows, cols]
        v = v_all[k if training else 0, :, :cs]
        g.tiles.input(q, g, v, r[:, :, :cs])
        m = mm[:, :fs]  # the unused tiles' columns keep old values: they only reach unused outputs
        np.matmul(u[:, None], _used(v, g, b - a, g.c), out=_used(m, g, b - a, g.f))
        out = (o if out_of is None else out_of(k))[:, :fs]
        g.tiles.output(m, out, p[:, :, :fs])
        emit(a, b, out.reshape(4, g.f, s))


def conv_backward(dz: np.ndarray | None, w: np.ndarray, g: WinogradGeometry, dw_out: np.ndarray, need_dx: bool,
                  ws: Workspace, tag: str = "",
                  phases: Callable[[int, int, np.ndarray], None] | None = None) -> np.ndarray | None:
    """Writes dL/dw into `dw_out` and returns dL/dx (C, N, H, W) when asked; uses the V and U that
    the training forward left in the same workspace. The output gradient is dz (F, N, oh, ow), or
    `phases(first, last + 1, o)` writes it straight onto a chunk's four output phases o (4, F x span)."""
    dt = w.dtype
    s_full = g.span(g.per_chunk)
    v_all = ws.get(tag + "wv", (g.nchunks, g.nt, g.c * s_full), dt)
    dm = ws.get(tag + "wdm", (g.nt, g.f * s_full), dt)
    du = ws.get(tag + "wdu", (g.nt, g.f, g.c), dt)
    du_k = ws.get(tag + "wduk", (g.nt, g.f, g.c), dt)  # one chunk's share, added into du
    dx = None
    if need_dx:
        ut = ws.get(tag + "wu", (g.nt, g.f, g.c), dt).transpose(0, 2, 1)  # the forward's U
        dr = ws.get(tag + "wdr", (g.tiles.scratch, 2, g.c * s_full), dt)
        dx = np.empty((g.c, g.n, g.h, g.w), dt)
    for k, (a, b) in enumerate(g.steps()):
        s = g.span(b - a)
        cs, fs = g.c * s, g.f * s
        # the output gradient on the four output phases, zero on unused tiles (a buffer per chunk
        # size, so those cells are never written): dM, dV and the phase-plane gradient stay zero there
        o = ws.get(f"{tag}wdz{b - a}", (4, fs), dt, zero=True)
        if phases is not None:
            phases(a, b, o)
        else:
            for (rows, cols), plane in g.output_views(o.reshape(4, g.f, s), b - a):
                plane[...] = dz[:, a:b, rows, cols]
        m = dm[:, :fs]
        g.tiles.output_adjoint(o, m)
        # dU over every cell up to the chunk's last used tile (dM is zero on the unused tiles; per
        # image these GEMMs would need a sum over the images after them, which cost more than the
        # columns saved); the last image's unused rows and the spare cells are left out
        last = (b - a - 1) * g.cell + g.th * g.gw
        m3 = m.reshape(g.nt, g.f, s)[:, :, :last]
        vt = v_all[k, :, :cs].reshape(g.nt, g.c, s)[:, :, :last].transpose(0, 2, 1)
        np.matmul(m3, vt, out=du if k == 0 else du_k)
        if k:
            du += du_k
        mu = _used(m, g, b - a, g.f)
        if need_dx:
            # only the used tiles' columns are ever written: the others stay zero (a buffer per
            # chunk size), so the adjoint input transform carries nothing from them
            v = ws.get(f"{tag}wdv{b - a}", (g.nt, cs), dt, zero=True)
            np.matmul(ut[:, None], mu, out=_used(v, g, b - a, g.c))
            q = ws.get(f"{tag}wdq{b - a}", (4, cs), dt)
            g.tiles.input_adjoint(v, q, g, dr[:, :, :cs])
            for (rows, cols), plane in g.phase_views(q, b - a):
                dx[:, a:b, rows, cols] = plane
    weight_gradient(du, dw_out)
    return dx


def _input3_adjoint(dv: np.ndarray, dq: np.ndarray, g: WinogradGeometry, dr: np.ndarray) -> None:
    """The gradient of a chunk's flat phase planes dq (4, n) (overwritten) from dV (16, n), the
    exact adjoint of _input3; dr (4, 2, n) scratch."""
    n, gw = dq.shape[1], g.gw
    nr, nv = n - gw, n - gw - 1
    v4 = dv.reshape(4, 4, n)
    # columns: V0 = e0 - e2, V1 = e1 + e2, V2 = e2 - e1, V3 = e1 - e3, with e0, e1 = R[k][0], R[k][1]
    # at cell i and e2, e3 the same at i + 1 (all k at once)
    r0, r1 = dr[:, 0], dr[:, 1]
    r0[:, :nv] = v4[:, 0, :nv]
    r0[:, nv:] = 0
    e2 = r0[:, 1:nv + 1]
    e2 += v4[:, 1, :nv]
    e2 += v4[:, 2, :nv]
    e2 -= v4[:, 0, :nv]
    np.subtract(v4[:, 1, :nv], v4[:, 2, :nv], out=r1[:, :nv])
    r1[:, :nv] += v4[:, 3, :nv]
    r1[:, nv:] = 0
    r1[:, 1:nv + 1] -= v4[:, 3, :nv]
    # rows: R0 = Q0 - Q0[+gw], R1 = Q1 + Q0[+gw], R2 = Q0[+gw] - Q1, R3 = Q1 - Q1[+gw], with
    # Q0 = q[0:2] (row phase 0, both column parities) and Q1 = q[2:4], over cells i < nr
    d0, d1, d2, d3 = dr[0, :, :nr], dr[1, :, :nr], dr[2, :, :nr], dr[3, :, :nr]
    dq[0:2, :nr] = d0
    dq[0:2, nr:] = 0
    lo = dq[0:2, gw:]
    lo -= d0
    lo += d1
    lo += d2
    np.subtract(d1, d2, out=dq[2:4, :nr])
    dq[2:4, :nr] += d3
    dq[2:4, nr:] = 0
    dq[2:4, gw:] -= d3


_TILES = {3: _Tiles(_G3, 4, _input3, _input3_adjoint, _output3, _output3_adjoint),
          5: _Tiles(_G5, 15, _input5, _input5_adjoint, _output5, _output5_adjoint)}


@functools.cache
def _kron(k: int, dtype: np.dtype) -> np.ndarray:
    """kron(G, G) (nt, k x k) of the k x k scheme: row i * alpha + j maps a flattened kernel to U[i, j]."""
    return np.kron(_TILES[k].g, _TILES[k].g).astype(dtype)
