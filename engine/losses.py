"""Losses computed from logits, so a final Softmax / Sigmoid never meets a log of zero.

A spec ending in Softmax keeps it for inference; training folds it into the cross-entropy
(log-sum-exp of the logits, shifted by the row maximum). A final Dense(1) + Sigmoid is a two-class
model trained with binary cross-entropy on the logit. Both return per-sample losses (sums and
means are the caller's choice) and the gradient of the *mean* loss with respect to the logits.
"""

from __future__ import annotations

import numpy as np

from engine.functional import sigmoid


def softmax_cross_entropy(logits: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample cross-entropy of (N, K) logits against class indices, and d(mean loss)/d(logits)."""
    n = logits.shape[0]
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    s = e.sum(axis=1, keepdims=True)
    rows = np.arange(n)
    losses = np.log(s[:, 0]) - z[rows, y]
    grad = e / s
    grad[rows, y] -= 1
    grad *= logits.dtype.type(1.0 / max(n, 1))
    return losses, grad


def binary_cross_entropy_with_logits(logit: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample binary cross-entropy from the (N, 1) logit z: max(z, 0) - z*y + log(1 + e^-|z|),
    and d(mean loss)/dz = (sigmoid(z) - y) / N."""
    z = logit[:, 0]
    t = y.astype(logit.dtype)
    losses = np.maximum(z, 0) - z * t + np.log1p(np.exp(-np.abs(z)))
    grad = ((sigmoid(z) - t) * logit.dtype.type(1.0 / max(len(z), 1)))[:, None]
    return losses, grad
