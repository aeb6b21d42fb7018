"""Stride-1 convolutions in the frequency domain (7x7 and larger kernels, 5x5 on maps up to 56x56
or 96x96, 3x3 with many channels on small maps: see `applies`): forward, input gradient and weight
gradient.

Why: im2col spends kh x kw multiplies per output, input channel and position, and its column
matrix is kh x kw times the input (32 -> 64 channels 7x7 at 16x16, batch 64: 3.3 GFLOP and a
103 MB matrix per forward pass, 45 ms on one core against PyTorch's 17). By the convolution
theorem each frequency of the output is a product of the input's and the kernel's transforms, so
the channel mixing becomes one small complex GEMM per frequency, (F x C) @ (C x N), whatever the
kernel size: about 4x fewer multiplies for 7x7 at 16x16, more for larger kernels; for 3x3 on small
maps, fewer than Winograd F(2x2, 3x3), whose tiles there are mostly border.

The transforms are discrete Fourier transforms written as GEMMs with fixed matrices, not FFTs:
maps here are 6 to 160 cells a side, NumPy's FFT on many small maps (6 to 32 a side, where this
path began) along non-last axes measured slower than the whole convolution, and a DFT matrix has
two properties an FFT lacks: any transform size (the smallest that avoids wrap-around, not the
next fast size), and zero padding and cropping for free (the matrices have only the input's rows
and the output's rows).

- Sizes: the transform is P x Q with P = H + max(top, bottom) padding (likewise Q): a circular
  correlation of that size equals the padded correlation on every output position (nothing wraps
  into a position that is read). The padding itself is a phase on the kernel: kernel tap (i, j)
  sits at circular position (i - top, j - left).
- Forward: rows along the width (a real GEMM, x as it lies, (C N H, W) @ (W, 2 Qh), cosines and
  sines interleaved so the result *is* a complex array: the half spectrum of real rows), one
  transposing copy to (H, Qh, C, N), then along the height (a complex GEMM (P, H) @ (H, Qh C N)),
  giving X (P Qh frequencies, C, N). The kernel's transform W (P Qh, F, C) is separable: along
  its columns, then its rows. Per frequency Z = conj(W) X, batched complex GEMMs. Back: along the
  height for the oh output rows (a complex GEMM), then along the width with the half spectrum's
  weights (1 for the zero and Nyquist columns, 2 for the others) into (oh, F N, ow), the real part
  taken in one copy into (F, N, oh, ow) that moves runs of ow.
- Backward: the exact adjoint of each of those linear stages (conjugate-transposed matrices,
  transposed copies in reverse), so float64 gradient checks hold to rounding, and the weight
  gradient is conj(dZ) X^T per frequency mapped back through the kernel transform's adjoint.

Everything is dtype-generic (float32 -> complex64 in training; float64 -> complex128 in the
gradient checks). The float32 error of the transforms is a few times the direct path's, checked
in the tests.
"""

from __future__ import annotations

import numpy as np

from engine.functional import Workspace

#: fewest input channels that run here by default (see `applies`)
_MIN_CHANNELS = 8
#: a 3x3 layer with this many input channels runs here on maps up to 16x16 (see `applies`)
_WIDE_3X3 = 128
#: a 3x3 layer with fewer input channels runs here on maps up to 16x16 unless pooled (see `applies`)
_NARROW_3X3 = 64


def applies(kernel: tuple[int, int], stride: tuple[int, int], channels: int, out_hw: tuple[int, int],
            pooled: bool = False) -> bool:
    """Whether a convolution runs in the frequency domain by default: stride 1, at least 8 input
    channels (an RGB stem's three pay for transforming every output map with too little channel
    mixing: 3 -> 32 5x5 at 32x32 42 ms here against 8 direct), and

    - kernels of 7x7 and up on output maps up to 160x160;
    - 5x5 (and 6x6) up to 96x96 from 16 input channels, up to 56x56 from 8 (on 64x64 maps with 8
      or 16 channels Winograd F(2x2, 5x5) ties with it);
    - 3x3 from 32 input channels (now from 8: the last case) on maps from 6x6 to 12x12, where
      Winograd's tiles and the direct paths' im2col have the most overhead per output, and on odd
      maps up to 15x15 (13x13, 15x15), where Winograd's last tile row and column are half used. One
      core, batch 32, forward + backward with the input gradient, ms, Winograd / this: 64 -> 64 at
      15x15 13.1 / 10.8, at 13x13 9.2 / 7.5, 32 -> 64 at 15x15 7.7 / 6.9, 32 -> 32 4.6 / 4.0,
      128 -> 128 44.1 / 36.3, 64 -> 128 20.5 / 20.4; whole steps, paired process runs, this /
      Winograd (medians of 12-14 pairs): resnet_stem64 (two 15x15 layers) one core 0.960, two
      processes 0.957; keras_cifar 0.970, tf_cifar 0.951. On even maps from 14x14 up Winograd pools
      off its own tiles under a 2x2 max-pool (the MNIST CNN's 14x14 layer), and with 64-127 input
      channels it is as fast from 14x14 on (64 -> 64 at 16x16 11.9 / 11.9, 64 -> 128 19.8 / 20.6,
      96 -> 96 25.9 / 25.4); on 4x4 the batch-innermost gather runs;
    - 3x3 from 128 input channels on maps up to 16x16, even ones too: this path's backward runs
      1.2-1.6x faster than Winograd's there (its transforms are GEMMs with fixed matrices, where
      Winograd's adjoint transforms are dozens of flat passes over 16 x C or 16 x F rows per
      chunk), which outweighs a forward up to 15 % slower. One core, batch 32 (benchmarks/conv_paths.py),
      forward + backward, ms, Winograd / this: 128 -> 128 at 16x16 44.0 / 35.5 and 42.0 / 38.6,
      128 -> 64 27.1 / 18.7, 128 -> 256 68.5 / 57.8, 256 -> 256 142.0 / 117.7, 128 -> 128 at 14x14
      28.3 / 26.1; at 24x24 Winograd stays ahead (128 -> 128 81.5 / 84.7). Whole steps, paired
      process runs, this / Winograd, medians of 4-5 pairs, one core (CPU time) and two processes
      (wall time): wide_vgg32 0.99 and 0.95, vgg_head32 0.93 and 0.93, wide_first32 0.89 and 0.89;
      a 128 -> 128 layer at 16x16 under ReLU and a 2x2 max-pool (Winograd's pooled path) 0.87 on one
      core; inference, batch 128, one core: wide_vgg32 0.94, vgg_head32 0.92, wide_first32 0.77;
    - 3x3 from 8 input channels on maps from 6x6 to 12x12, and with fewer than 64 on maps up to
      16x16 unless a non-overlapping max-pool follows (`pooled`: the conv + pool layouts of
      engine.functional and Winograd's pooled tiles keep those). With few channels Winograd's and
      the direct paths' passes over memory outweigh their multiplies, where this path's transforms
      are GEMMs. Training step of a net whose 3x3 layer follows a 1x1 one (so with the input
      gradient), batch 32, one core, CPU ms, the path before / this: 16 -> 16 at 16x16 5.4 / 4.3,
      at 12x12 3.7 / 2.4, at 8x8 2.1 / 1.2, under a 2x2 pool at 12x12 3.4 / 2.6; 8 -> 8 at 16x16
      2.5 / 1.9; 8 -> 16 at 14x14 3.0 / 2.2; 24 -> 24 at 16x16 8.3 / 6.8; 16 -> 32 8.3 / 6.9;
      32 -> 32 12.3 / 10.7, at 14x14 10.1 / 7.8; 48 -> 48 20.2 / 17.1; 64 -> 64 30.8 / 30.4 (no
      more: 64 stays). Under a 2x2 pool at 14x14-16x16 the pooled layouts hold (8 -> 16 at 14x14
      2.4 / 2.7, 16 -> 32 at 16x16 7.7 / 7.6, 8 -> 8 2.0 / 2.1); at 24x24 the paths tie (16 -> 16
      10.6 / 10.4). Inference (batch 128) at 14x14-16x16 ties (16 -> 16 8.1 / 7.7, 32 -> 32 17.1 /
      17.4, 24 -> 24 11.1 / 11.4) and at 12x12 and below gains (16 -> 16 at 12x12 4.7 / 3.8, at 8x8
      2.5 / 1.5).

    The large-kernel limits were first set (docs/performance.md, item 33) before the kernel
    transform was made separable and the last stage written in runs of ow; measured again after
    (item 42), per layer on one core, batch 32, forward + backward with the input gradient, CPU ms,
    this path / Winograd (5x5) or the best direct path (7x7): 5x5 16 -> 32 at 32x32 14.9 / 29.5
    (batch 64: 34.6 / 47.8), at 48x48 37.5 / 46.0; 8 -> 16 at 32x32 5.4 / 9.8, at 48x48 15.5 /
    19.4, at 56x56 24.0 / 26.9 (batch 64 at 64x64: 70.9 / 67.0); 16 -> 16 at 64x64 47.0 / 53.7;
    32 -> 32 at 56x56 83 / 126, at 64x64 108 / 167, at 80x80 180 / 276; 64 -> 64 at 48x48 145 /
    259; 32 -> 64 at 96x96 417 / 563; 7x7 16 -> 32 at 80x80 131 / 355, at 96x96 207 / 553; 8 -> 16
    at 128x128 182 / 349; 8 -> 8 at 160x160 210 / 533. The first figures (batch 64): 32 -> 64
    7x7 at 16x16 26.6 / 126 (PyTorch 49); 32 -> 32 7x7 at 32x32 79 / 264 (PyTorch 144); 32 -> 64
    5x5 at 6x6 3.8 / 7.0 (PyTorch 3.9); 64 -> 64 5x5 at 12x12 19.6 / 42.7. Batch 32, 3x3 against
    the path chosen before (Winograd from 8x8, the gather below): 64 -> 64 at 6x6 1.9 / 2.4, at
    8x8 3.6 / 6.4, at 12x12 6.6 / 8.8; 128 -> 128 at 8x8 9.5 / 14.3, at 12x12 23.1 / 27.1; 32 -> 64
    at 10x10 2.6 / 3.3; 32 -> 32 at 8x8 0.87 / 1.30; with OpenBLAS on older kernels
    (docs/performance.md, item 34) the margins are larger (128 -> 128 at 8x8 14.8 / 28.3; 5x5
    16 -> 32 at 32x32 19.6 / 29.1, 32 -> 32 at 64x64 158 / 204, 7x7 16 -> 32 at 96x96 282 /
    626)."""
    kh, kw = kernel
    if stride != (1, 1) or channels < _MIN_CHANNELS or min(kh, kw) < 3:
        return False
    k, side = min(kh, kw), max(out_hw)
    if k >= 7:
        return side <= 160
    if k >= 5:
        return side <= (96 if channels >= 16 else 56)
    if (kh, kw) != (3, 3) or min(out_hw) < 6:
        return False
    if side <= 12 or (side <= 16 and channels < _NARROW_3X3 and not pooled):
        return True
    odd = out_hw[0] % 2 == 1 and out_hw[1] % 2 == 1
    return channels >= 32 and ((side <= 15 and odd) or (channels >= _WIDE_3X3 and side <= 16))


def _dft(n_out: int, n_in: int, size: int, sign: float, shift: int = 0) -> np.ndarray:
    """exp(sign 2 pi i a (b - shift) / size) for a < n_out, b < n_in, in float64."""
    a = np.arange(n_out)[:, None]
    b = np.arange(n_in)[None, :] - shift
    return np.exp(sign * 2j * np.pi * ((a * b) % size) / size)


class SpectralGeometry:
    """Shapes and transform matrices of one stride-1 convolution in the frequency domain, per
    batch size and dtype (matrices are built once and cached here)."""

    def __init__(self, in_shape: tuple[int, int, int, int], filters: int, kernel: tuple[int, int],
                 pads: tuple[int, int, int, int]):
        c, n, h, w = in_shape
        self.c, self.n, self.h, self.w, self.f = c, n, h, w, filters
        self.kh, self.kw = kernel
        self.pads = pads
        t, b, left, r = pads
        self.oh, self.ow = h + t + b - self.kh + 1, w + left + r - self.kw + 1
        #: transform sizes: the smallest with no wrap-around onto a position that is read
        self.p, self.q = h + max(t, b), w + max(left, r)
        self.qh = self.q // 2 + 1
        self.nk = self.p * self.qh  # frequencies kept (the half spectrum along the width)
        self._mats: dict[np.dtype, dict[str, np.ndarray]] = {}

    def mats(self, dtype: np.dtype) -> dict[str, np.ndarray]:
        """The transform matrices in `dtype`'s precision (real ones in dtype, complex ones in the
        matching complex type), built on first use."""
        got = self._mats.get(np.dtype(dtype))
        if got is None:
            got = self._mats[np.dtype(dtype)] = self._build(np.dtype(dtype))
        return got

    def _build(self, dtype: np.dtype) -> dict[str, np.ndarray]:
        real, cplx = np.dtype(dtype), np.result_type(dtype, np.complex64)
        t, _, left, _ = self.pads
        p, q, qh = self.p, self.q, self.qh
        rw = _dft(qh, self.w, q, -1.0)  # (Qh, W): the half spectrum of a row
        m1 = np.empty((self.w, 2 * qh))
        m1[:, 0::2], m1[:, 1::2] = rw.real.T, rw.imag.T
        e1 = _dft(p, self.h, p, -1.0)  # (P, H)
        # kernel tap (i, j) at circular position (i - top, j - left); the 2-D transform is separable:
        # along the kernel's rows, then its columns
        tp, tq = _dft(p, self.kh, p, -1.0, t), _dft(qh, self.kw, q, -1.0, left)
        e2 = _dft(self.oh, p, p, 1.0)  # (oh, P)
        weight = np.full(qh, 2.0)
        weight[0] = 1.0
        if q % 2 == 0:
            weight[-1] = 1.0
        hc = _dft(self.ow, qh, q, 1.0) * weight[None, :] / (p * q)  # (ow, Qh)
        return {"m1": m1.astype(real), "m1t": np.ascontiguousarray(m1.T).astype(real),
                "e1": e1.astype(cplx), "e1h": np.ascontiguousarray(e1.conj().T).astype(cplx),
                "tp": tp.astype(cplx), "tph": np.ascontiguousarray(tp.conj().T).astype(cplx),
                "tq": tq.astype(cplx), "tqh": np.ascontiguousarray(tq.conj().T).astype(cplx),
                "e2": e2.astype(cplx), "e2h": np.ascontiguousarray(e2.conj().T).astype(cplx),
                "hct": np.ascontiguousarray(hc.T).astype(cplx), "hch": np.ascontiguousarray(hc.conj().T).astype(cplx)}


def _input_spectrum(x: np.ndarray, g: SpectralGeometry, m: dict, ws: Workspace, tag: str) -> np.ndarray:
    """X (P Qh, C, N), complex, of x (C, N, H, W): along the width as x lies, then one transposing
    copy, then along the height."""
    cd = m["e1"].dtype
    r = ws.get(tag + "r", (g.c * g.n * g.h, 2 * g.qh), x.dtype)
    np.matmul(x.reshape(-1, g.w), m["m1"], out=r)
    rt = ws.get(tag + "rt", (g.h, g.qh, g.c, g.n), cd)
    rt[...] = r.view(cd).reshape(g.c, g.n, g.h, g.qh).transpose(2, 3, 0, 1)
    xs = ws.get(tag + "x", (g.nk, g.c, g.n), cd)
    np.matmul(m["e1"], rt.reshape(g.h, -1), out=xs.reshape(g.p, -1))
    return xs


def _kernel_spectrum(w: np.ndarray, g: SpectralGeometry, m: dict) -> np.ndarray:
    """W (P Qh, F, C), complex, of the kernels w (F, C, kh, kw) at their circular positions: along
    the kernel's columns, then its rows (separable: 5x fewer products than one (P Qh, kh kw)
    matrix for 7x7; 0.9 -> 0.2 ms for 32 -> 64 at 16x16)."""
    wt = w.transpose(2, 3, 0, 1).reshape(g.kh, g.kw, g.f * g.c).astype(m["tq"].dtype)
    a = np.matmul(m["tq"], wt)  # (kh, Qh, F C)
    return np.matmul(m["tp"], a.reshape(g.kh, -1)).reshape(g.nk, g.f, g.c)


def conv_forward(x: np.ndarray, w: np.ndarray, g: SpectralGeometry, ws: Workspace, training: bool,
                 tag: str = "") -> tuple[np.ndarray, tuple | None]:
    """Convolution without bias, x (C, N, H, W) -> z (F, N, oh, ow), a fresh array; with
    `training`, what the backward pass needs (the input's spectrum, kept in `ws`, and the
    kernels')."""
    tag = tag + ("t" if training else "i")
    m = g.mats(x.dtype)
    xs = _input_spectrum(x, g, m, ws, tag)
    ks = _kernel_spectrum(w, g, m)
    cd = xs.dtype
    zs = np.matmul(ks.conj(), xs, out=ws.get(tag + "z", (g.nk, g.f, g.n), cd))
    # back along the height (the output rows only), then along the width to real values
    gy = ws.get(tag + "g", (g.oh, g.qh, g.f * g.n), cd)
    np.matmul(m["e2"], zs.reshape(g.p, -1), out=gy.reshape(g.oh, -1))
    # (oh, F N, ow): the last copy then moves runs of ow (1.37 -> 0.3 ms against (oh, ow, F N))
    zc = np.matmul(gy.transpose(0, 2, 1), m["hct"], out=ws.get(tag + "zc", (g.oh, g.f * g.n, g.ow), cd))
    z = np.empty((g.f, g.n, g.oh, g.ow), x.dtype)
    z[...] = zc.real.reshape(g.oh, g.f, g.n, g.ow).transpose(1, 2, 0, 3)
    return z, ((xs, ks) if training else None)


def conv_backward(dz: np.ndarray, kept: tuple, w: np.ndarray, g: SpectralGeometry, dw_out: np.ndarray,
                  need_dx: bool, ws: Workspace, tag: str = "") -> np.ndarray | None:
    """Gradients of conv_forward from what it `kept`: writes dL/dw into `dw_out`, returns dL/dx
    (C, N, H, W) when asked. Each step is the adjoint of a forward stage, in reverse order."""
    tag = tag + "b"
    xs, ks = kept
    cd = xs.dtype
    m = g.mats(dz.dtype)
    dzc = ws.get(tag + "dzc", (g.oh, g.f, g.n, g.ow), cd, zero=True)  # its imaginary part stays zero
    dzc.real[...] = dz.transpose(2, 0, 1, 3)
    dg = np.matmul(m["hch"], dzc.reshape(g.oh, -1, g.ow).transpose(0, 2, 1),
                   out=ws.get(tag + "dg", (g.oh, g.qh, g.f * g.n), cd))
    dzs = ws.get(tag + "dzs", (g.nk, g.f, g.n), cd)
    np.matmul(m["e2h"], dg.reshape(g.oh, -1), out=dzs.reshape(g.p, -1))
    dx = None
    if need_dx:
        dxs = np.matmul(ks.transpose(0, 2, 1), dzs, out=ws.get(tag + "dxs", (g.nk, g.c, g.n), cd))
        drt = np.matmul(m["e1h"], dxs.reshape(g.p, -1), out=ws.get(tag + "drt", (g.h, g.qh * g.c * g.n), cd))
        dr = ws.get(tag + "dr", (g.c, g.n, g.h, g.qh), cd)
        dr[...] = drt.reshape(g.h, g.qh, g.c, g.n).transpose(2, 3, 0, 1)
        dx = np.matmul(dr.view(dz.dtype).reshape(-1, 2 * g.qh), m["m1t"]).reshape(g.c, g.n, g.h, g.w)
    np.conjugate(dzs, out=dzs)
    dks = np.matmul(dzs, xs.transpose(0, 2, 1))  # (K, F, C): conj(dZ) X^T
    b = np.matmul(m["tph"], dks.reshape(g.p, -1)).reshape(g.kh, g.qh, -1)  # the kernel transform's adjoint
    dwt = np.matmul(m["tqh"], b).real  # (kh, kw, F C)
    dw_out[...] = dwt.reshape(g.kh, g.kw, g.f, g.c).transpose(2, 3, 0, 1)
    return dx
