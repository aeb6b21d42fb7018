"""Dropout: while training, zero a random fraction of values and scale the rest by 1 / (1 - rate)."""

from __future__ import annotations

import numpy as np

from engine import functional as F
from engine.layers.base import Field, Layer, Op

_SPREAD = 0x9E3779B97F4A7C15F39CC0605CEDC835  # odd: seed -> state is one-to-one modulo 2**128
_MASK128 = (1 << 128) - 1
_INC = 0xDA3E39CB94B95BDB  # PCG64's stream increment (odd)


class DropoutOp(Op):
    def __init__(self, *a):
        super().__init__(*a)
        self.rng: np.random.Generator = np.random.default_rng(0)
        #: set by engine.parallel for a share of a batch: the step's seed and (first row, batch size)
        self.batch_seed: int | None = None
        self.batch_slice: tuple[int, int] | None = None
        self._masks = np.random.Generator(np.random.PCG64(0))

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
        mask = F.dropout_mask(self._seeded(seed), (total, *self.in_shape), rate, self.dtype)[lo:lo + n]
        if x.ndim == 4:
            mask = mask.transpose(1, 0, 2, 3)
        self.cache = mask
        return x * mask

    def _seeded(self, seed: int) -> np.random.Generator:
        """The mask generator put at the step's seed by setting its state, not built anew: a new
        Generator (SeedSequence, PCG64, Generator) costs 0.1-0.15 ms inside a training step, where its
        code is cold, 1-2 % of the MNIST CNN's step. The state is the seed spread over 128 bits by an
        odd multiplier (a bijection), so different seeds start different streams."""
        state = {"state": (seed * _SPREAD) & _MASK128, "inc": _INC}
        self._masks.bit_generator.state = {"bit_generator": "PCG64", "state": state, "has_uint32": 0, "uinteger": 0}
        return self._masks

    def backward(self, dy, need_dx=True):
        mask, self.cache = self.cache, None
        return dy if mask is None else dy * mask

    def forward_inference_grad(self, x):  # off at inference
        return x, lambda d: d


class Dropout(Layer):
    type = "Dropout"
    category = "Regularization"
    description = "While training, zeroes a random fraction of values so units cannot co-adapt."
    fields = (Field("rate", "rate", 0.5, help="Fraction of values dropped while training, in [0, 1)."),)
    op = DropoutOp
    elementwise = True
    keeps_scores = True
    keeps_maps = True
    onnx_identity = True
    icon = "dropout"

    def summary(self) -> str:
        return f"Dropout {self.config['rate']:g}"

    def to_onnx(self, g, x, in_shape, name):  # inference: identity
        return g.node("Identity", [x], name, self.onnx_out(name))

    def torch_module(self, in_shape):
        return f"nn.Dropout({float(self.config['rate'])!r})"

    def explain(self, info, spec, index):
        p = self.config["rate"]
        keep = 1 - p
        return [f"While training, each value is set to 0 with probability {p:g} and the others are scaled "
                f"by 1 / {keep:g} = {1 / keep:.3g}; at inference the layer does nothing."]
