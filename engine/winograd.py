"""Winograd F(2x2, 3x3) for stride-1 3x3 convolutions: forward, input gradient and weight gradient.

Why: the colour nets people build are stacks of 3x3 "same" convolutions, and the direct (im2col)
path spends 9 multiplies per output and input channel and position; F(2x2, 3x3) (Lavin & Gray 2016)
computes each 2x2 output tile from a 4x4 input tile with 16, i.e. 2.25x fewer, as 16 independent
GEMMs (F x C) @ (C x tiles). The transforms around them are element-wise, so they are laid out to
be contiguous passes (no strided gathers) run per L2-sized chunk of columns:

- The zero-padded input is stored as its four *phase planes* Q[a][b][y, x] = xp[2y + a, 2x + b]
  (each (C, N, th + 1, tw + 1), flattened per channel). Element (k, l) of the 4x4 tile at (y, x) is
  then Q[k % 2][l % 2] at flat position (y, x) shifted by (k // 2) rows and (l // 2) columns: every
  tile element of every tile is one contiguous shifted row, as in the engine's tap-shift im2col.
  The tile grid thus has (th + 1) x (tw + 1) positions per image, of which th x tw are used; the
  row transform runs over the whole grid, the column transform writes each image's first th grid
  rows only (the GEMM columns), so only the unused last column is carried along.
- The output comes out as the 2x2 output phase planes (the four positions of each tile), written
  back into (F, N, oh, ow) with four strided copies.
- Chunks are whole images, as many as keep the chunk's transformed input near 1 MB (L2).

What it buys is measured, not assumed: in NumPy each transform stage is a memory pass, and with
32 channels the passes cost about what the 2.25x fewer multiplies save (see `applies`).

The backward pass is the exact adjoint of each stage (so gradient checks against finite
differences hold to rounding), with the weight gradient accumulated in the transformed domain
(dU = dM @ V^T) and mapped back with G^T. Everything is dtype-generic: float32 in training,
float64 in the gradient checks; the transforms' coefficients are 0, +-1 and 1/2 (exact in both).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from engine.functional import Workspace

#: G of F(2x2, 3x3): U = G w G^T
_G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])
#: floats of the transformed input per column chunk (16 x C x chunk): ~1 MB, stays in L2
_CHUNK_FLOATS = 256 * 1024


def applies(kernel: tuple[int, int], stride: tuple[int, int], channels: int, filters: int,
            training: bool = True) -> bool:
    """Whether a convolution runs on this path by default. The transforms cost in proportion to
    C + F per tile and the GEMMs to C * F, so it pays only with enough channels. Measured per layer
    on one core: in training (forward + backward, batch 32) 0.95-1.0x the direct path at 32 -> 32
    channels, so those stay direct, 1.05-1.1x at 32 -> 64, 1.1-1.3x at 64 -> 64 and 64 -> 128,
    1.2x at 128 -> 256; in inference (forward, batch 128, no transformed input kept) 1.2-1.5x at
    32 -> 32 but 0.9x with 16 input channels."""
    if kernel != (3, 3) or stride != (1, 1) or channels < 32:
        return False
    return channels * filters >= 2048 if training else filters >= 16


class WinogradGeometry:
    """Shapes of one stride-1 3x3 convolution on the F(2x2, 3x3) tile grid."""

    def __init__(self, in_shape: tuple[int, int, int, int], filters: int, pads: tuple[int, int, int, int]):
        c, n, h, w = in_shape
        self.c, self.n, self.h, self.w, self.f = c, n, h, w, filters
        self.pads = pads
        t, b, left, r = pads
        self.oh, self.ow = h + t + b - 2, w + left + r - 2
        self.th, self.tw = (self.oh + 1) // 2, (self.ow + 1) // 2
        self.gh, self.gw = self.th + 1, self.tw + 1  # tile grid per image (last row/column unused)
        self.grid = n * self.gh * self.gw
        #: GEMM columns: each image's tile rows without the unused last grid row (the unused last
        #: column stays: dropping it too costs strided passes with short runs, more than it saves)
        self.tiles = n * self.th * self.gw
        self.tail = self.gw + 1  # zeros after each phase plane: the largest shift
        self.per_chunk = max(1, _CHUNK_FLOATS // (16 * c * self.gh * self.gw))  # images per chunk

    def steps(self) -> list[tuple[int, int]]:
        """Chunks of whole images: (first, last + 1)."""
        k = self.per_chunk
        return [(a, min(a + k, self.n)) for a in range(0, self.n, k)]

    def phase_views(self, planes: np.ndarray) -> Iterator[tuple[tuple, np.ndarray]]:
        """For each of the four phase planes of `planes` (4, C, >= grid): the index of the input
        map's (C, N, H, W) rows and columns that land on it, and the view of the plane they fill."""
        top, _, left, _ = self.pads
        for a in range(2):
            for b in range(2):
                r0, c0 = (a - top) % 2, (b - left) % 2
                nr, nc = len(range(r0, self.h, 2)), len(range(c0, self.w, 2))
                y0, x0 = (r0 + top) // 2, (c0 + left) // 2
                plane = planes[2 * a + b, :, :self.grid].reshape(self.c, self.n, self.gh, self.gw)
                src = (slice(None), slice(None), slice(r0, None, 2), slice(c0, None, 2))
                yield src, plane[:, :, y0:y0 + nr, x0:x0 + nc]


def weight_transform(w: np.ndarray) -> np.ndarray:
    """U (16, F, C) = G w G^T for every filter and input channel."""
    g = _G.astype(w.dtype)
    u = np.matmul(np.matmul(g, w), g.T)  # (F, C, 4, 4)
    return np.ascontiguousarray(u.reshape(w.shape[0], w.shape[1], 16).transpose(2, 0, 1))


def _phase_planes(x: np.ndarray, g: WinogradGeometry, ws: Workspace, tag: str) -> np.ndarray:
    """Q (4, C, grid + tail): the padded input's phase planes, zero outside the input."""
    q = ws.get(tag + "wq", (4, g.c, g.grid + g.tail), x.dtype, zero=True)
    for src, plane in g.phase_views(q):
        plane[...] = x[src]
    return q


def _tiles(row: np.ndarray, g: WinogradGeometry, imgs: int, shift: int) -> np.ndarray:
    """The tile rows (C, imgs, th * gw) of a grid row array (C, >= imgs * gh * gw + shift) read
    `shift` columns on."""
    return row[:, shift:shift + imgs * g.gh * g.gw].reshape(-1, imgs, g.gh * g.gw)[:, :, :g.th * g.gw]


def _input_transform(q: np.ndarray, g: WinogradGeometry, a: int, b: int, out: np.ndarray, r: np.ndarray) -> None:
    """V (16, C, tiles of images [a, b)) = B^T d B: rows first on whole grid rows (8 contiguous
    arrays R[k][parity], one column longer), then columns, written for the used tiles only."""
    imgs, gw = b - a, g.gw
    i0, n = a * g.gh * gw, imgs * g.gh * gw
    out = out[:, :, :imgs * g.th * g.gw].reshape(16, g.c, imgs, g.th * g.gw)
    for par in range(2):
        q0 = q[par]  # row phase 0, column phase par
        q1 = q[2 + par]
        d0, d1 = q0[:, i0:i0 + n + 1], q1[:, i0:i0 + n + 1]
        d2, d3 = q0[:, i0 + gw:i0 + n + 1 + gw], q1[:, i0 + gw:i0 + n + 1 + gw]
        np.subtract(d0, d2, out=r[0, par, :, :n + 1])
        np.add(d1, d2, out=r[1, par, :, :n + 1])
        np.subtract(d2, d1, out=r[2, par, :, :n + 1])
        np.subtract(d1, d3, out=r[3, par, :, :n + 1])
    for k in range(4):
        e0, e1 = _tiles(r[k, 0], g, imgs, 0), _tiles(r[k, 1], g, imgs, 0)
        e2, e3 = _tiles(r[k, 0], g, imgs, 1), _tiles(r[k, 1], g, imgs, 1)
        np.subtract(e0, e2, out=out[4 * k])
        np.add(e1, e2, out=out[4 * k + 1])
        np.subtract(e2, e1, out=out[4 * k + 2])
        np.subtract(e1, e3, out=out[4 * k + 3])


def _output_transform(m: np.ndarray, out: list[np.ndarray], p: np.ndarray) -> None:
    """The four output phases (2x2 positions of each tile) = A^T M A; `p` (4, 2, F, n) scratch."""
    for k in range(4):
        np.add(m[4 * k], m[4 * k + 1], out=p[k, 0])
        p[k, 0] += m[4 * k + 2]
        np.subtract(m[4 * k + 1], m[4 * k + 2], out=p[k, 1])
        p[k, 1] -= m[4 * k + 3]
    for j in range(2):
        np.add(p[0, j], p[1, j], out=out[j])
        out[j] += p[2, j]
        np.subtract(p[1, j], p[2, j], out=out[2 + j])
        out[2 + j] -= p[3, j]


def _planes_to_map(z: np.ndarray, g: WinogradGeometry, out: np.ndarray) -> np.ndarray:
    """(F, N, oh, ow) from the four output phase planes (4, F, tiles)."""
    for i in range(2):
        for j in range(2):
            plane = z[2 * i + j].reshape(g.f, g.n, g.th, g.gw)
            out[:, :, i::2, j::2] = plane[:, :, :len(range(i, g.oh, 2)), :len(range(j, g.ow, 2))]
    return out


def conv3x3_forward(x: np.ndarray, w: np.ndarray, g: WinogradGeometry, ws: Workspace, training: bool,
                    tag: str = "") -> np.ndarray:
    """z (F, N, oh, ow) of the bias-free convolution. In training the transformed input V (of the
    used tiles) is kept in the workspace for the backward pass."""
    zp = ws.get(tag + "wz", (4, g.f, g.tiles), x.dtype)
    _forward(x, w, g, ws, training, tag, lambda t0, t1: [zp[j, :, t0:t1] for j in range(4)], None)
    return _planes_to_map(zp, g, np.empty((g.f, g.n, g.oh, g.ow), x.dtype))


def conv3x3_maxpool2_forward(x: np.ndarray, w: np.ndarray, g: WinogradGeometry, ws: Workspace) -> np.ndarray:
    """Inference: the bias-free convolution max-pooled over 2x2 windows, (F, N, oh / 2, ow / 2)
    for even oh, ow. A tile's four outputs are exactly one pooling window, so the pool is the
    maximum of the four output phases, taken per chunk while they are in L2."""
    dt = x.dtype
    pooled = ws.get("wpool", (g.f, g.tiles), dt)
    width = g.per_chunk * g.th * g.gw
    planes = ws.get("wzc", (4, g.f, width), dt)

    def pool(t0: int, t1: int, out: list) -> None:
        dst = pooled[:, t0:t1]
        np.maximum(out[0], out[1], out=dst)
        np.maximum(dst, out[2], out=dst)
        np.maximum(dst, out[3], out=dst)

    _forward(x, w, g, ws, False, "", lambda t0, t1: [planes[j, :, :t1 - t0] for j in range(4)], pool)
    return pooled.reshape(g.f, g.n, g.th, g.gw)[:, :, :, :g.tw]


def _forward(x: np.ndarray, w: np.ndarray, g: WinogradGeometry, ws: Workspace, training: bool, tag: str,
             outputs: Any, then: Any) -> None:
    """The chunk loop: input transform, 16 GEMMs, output transform into `outputs(t0, t1)` (the four
    output phases of tiles [t0, t1)), then `then(t0, t1, those)` if given."""
    dt = x.dtype
    q = _phase_planes(x, g, ws, tag)
    u = weight_transform(w)
    k = g.per_chunk
    cols, tiles = k * g.gh * g.gw, k * g.th * g.gw
    r = ws.get(tag + "wr", (4, 2, g.c, cols + 1), dt)
    p = ws.get(tag + "wp", (4, 2, g.f, tiles), dt)
    mm = ws.get(tag + "wm", (16, g.f, tiles), dt)
    v_all = ws.get(tag + "wv", (16, g.c, g.tiles), dt) if training else ws.get(tag + "wvc", (16, g.c, tiles), dt)
    for a, b in g.steps():
        t0, t1 = a * g.th * g.gw, b * g.th * g.gw
        v = v_all[:, :, t0:t1] if training else v_all[:, :, :t1 - t0]
        _input_transform(q, g, a, b, v, r)
        m = mm[:, :, :t1 - t0]
        np.matmul(u, v, out=m)
        out = outputs(t0, t1)
        _output_transform(m, out, p[:, :, :, :t1 - t0])
        if then is not None:
            then(t0, t1, out)


def conv3x3_backward(dz: np.ndarray, w: np.ndarray, g: WinogradGeometry, dw_out: np.ndarray, need_dx: bool,
                     ws: Workspace, tag: str = "") -> np.ndarray | None:
    """Writes dL/dw into `dw_out` and returns dL/dx (C, N, H, W) when asked; uses the V that
    conv3x3_forward(training=True) left in the same workspace."""
    dt = dz.dtype
    v_all = ws.get(tag + "wv", (16, g.c, g.tiles), dt)
    k = g.per_chunk
    cols, tiles = k * g.gh * g.gw, k * g.th * g.gw
    # output gradient on the four output phase planes (zero where an odd size leaves no output)
    dzp = ws.get(tag + "wdz", (4, g.f, g.tiles), dt, zero=True)
    for i in range(2):
        for j in range(2):
            plane = dzp[2 * i + j].reshape(g.f, g.n, g.th, g.gw)
            plane[:, :, :len(range(i, g.oh, 2)), :len(range(j, g.ow, 2))] = dz[:, :, i::2, j::2]
    dp = ws.get(tag + "wdp", (4, 2, g.f, tiles), dt)
    dm = ws.get(tag + "wdm", (16, g.f, tiles), dt)
    du = np.zeros((16, g.f, g.c), dt)
    if need_dx:
        ut = np.ascontiguousarray(weight_transform(w).transpose(0, 2, 1))
        dv = ws.get(tag + "wdv", (16, g.c, tiles), dt)
        dr = ws.get(tag + "wdr", (4, 2, g.c, cols + 1), dt)
        dq = ws.get(tag + "wdq", (4, g.c, g.grid + g.tail), dt)
        dq[...] = 0
    for a, b in g.steps():
        t0, t1 = a * g.th * g.gw, b * g.th * g.gw
        n = t1 - t0
        o = [dzp[j, :, t0:t1] for j in range(4)]  # o[2 i + j]
        d = dp[:, :, :, :n]
        # adjoint of out_0j = P0j + P1j + P2j, out_1j = P1j - P2j - P3j
        for j in range(2):
            d[0, j] = o[j]
            np.add(o[j], o[2 + j], out=d[1, j])
            np.subtract(o[j], o[2 + j], out=d[2, j])
            np.negative(o[2 + j], out=d[3, j])
        m = dm[:, :, :n]
        # adjoint of P_k0 = M_k0 + M_k1 + M_k2, P_k1 = M_k1 - M_k2 - M_k3
        for k in range(4):
            m[4 * k] = d[k, 0]
            np.add(d[k, 0], d[k, 1], out=m[4 * k + 1])
            np.subtract(d[k, 0], d[k, 1], out=m[4 * k + 2])
            np.negative(d[k, 1], out=m[4 * k + 3])
        du += np.matmul(m, v_all[:, :, t0:t1].transpose(0, 2, 1))
        if need_dx:
            v = dv[:, :, :n]
            np.matmul(ut, m, out=v)
            _input_transform_adjoint(v, dq, g, a, b, dr)
    g3 = _G.astype(dt)
    dw_out[...] = np.matmul(np.matmul(g3.T, du.transpose(1, 2, 0).reshape(g.f, g.c, 4, 4)), g3)
    if not need_dx:
        return None
    dx = np.empty((g.c, g.n, g.h, g.w), dt)
    for src, plane in g.phase_views(dq):
        dx[src] = plane
    return dx


def _input_transform_adjoint(dv: np.ndarray, dq: np.ndarray, g: WinogradGeometry, a: int, b: int,
                             dr: np.ndarray) -> None:
    """Adds the gradient of the phase planes for the tiles of images [a, b) into `dq`."""
    imgs, gw = b - a, g.gw
    i0, n = a * g.gh * gw, imgs * g.gh * gw
    dv = dv[:, :, :imgs * g.th * g.gw].reshape(16, g.c, imgs, g.th * g.gw)
    dr = dr[:, :, :, :n + 1]
    dr[...] = 0  # the unused grid rows pass nothing on
    for k in range(4):
        v0, v1, v2, v3 = dv[4 * k], dv[4 * k + 1], dv[4 * k + 2], dv[4 * k + 3]
        # V0 = e0 - e2, V1 = e1 + e2, V2 = e2 - e1, V3 = e1 - e3; e0, e1 = R[k][0, 1] at 0, e2, e3 at +1
        e0, e1 = _tiles(dr[k, 0], g, imgs, 0), _tiles(dr[k, 1], g, imgs, 0)
        e2, e3 = _tiles(dr[k, 0], g, imgs, 1), _tiles(dr[k, 1], g, imgs, 1)
        e0[...] = v0
        e2 += v1
        e2 += v2
        e2 -= v0
        np.subtract(v1, v2, out=e1)
        e1 += v3
        e3 -= v3
    for par in range(2):
        # R0 = Q0[0] - Q0[gw], R1 = Q1[0] + Q0[gw], R2 = Q0[gw] - Q1[0], R3 = Q1[0] - Q1[gw]
        r0, r1, r2, r3 = dr[0, par], dr[1, par], dr[2, par], dr[3, par]
        q0, q1 = dq[par], dq[2 + par]
        q0[:, i0:i0 + n + 1] += r0
        lo = q0[:, i0 + gw:i0 + n + 1 + gw]
        lo -= r0
        lo += r1
        lo += r2
        hi = q1[:, i0:i0 + n + 1]
        hi += r1
        hi -= r2
        hi += r3
        q1[:, i0 + gw:i0 + n + 1 + gw] -= r3
