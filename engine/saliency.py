"""Saliency maps: which pixels of an image drove a trained model's decision.

Three methods, because each can mislead in its own way (docs/explain.md says when):

* ``gradcam`` (Selvaraju et al. 2017): the output of a late spatial layer, each channel weighted by
  the spatial mean of the class score's gradient there, summed, negatives dropped, resized to the
  input. Cheap (one forward and backward) and about *where*, but only as sharp as that layer's grid.
* ``occlusion`` (Zeiler & Fergus 2014): cover a patch with the image's median and see how much the
  class score falls. Model-agnostic and directly about evidence; costs one forward per patch.
* ``smoothgrad`` (Smilkov et al. 2017): the input gradient's magnitude, averaged over noisy copies.
  Pixel-sharp, but it shows sensitivity, which is not the same as evidence.

The class score is the logit (before Softmax/Sigmoid), as Grad-CAM prescribes: the probability
saturates, so its gradient vanishes exactly for the confident predictions one wants explained.

    from engine.saliency import explain
    maps = explain(model, x, method="occlusion")    # x: preprocessed (N, C, H, W)
    maps[0].heatmap                                  # (H, W) in [0, 1], 1 = most important

`deletion_test` measures faithfulness: blanking the most salient pixels should hurt the prediction
much more than blanking as many random ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.errors import EngineError

METHODS = ("occlusion", "gradcam", "smoothgrad")
#: the most faithful by the deletion test (docs/explain.md), at ~170 forward passes per image
DEFAULT_METHOD = "occlusion"


class SaliencyCancelled(EngineError):
    """`cancel()` said stop (the window's heat maps: the image, method or layer changed)."""


def _check(cancel: Callable[[], bool] | None) -> None:
    if cancel is not None and cancel():
        raise SaliencyCancelled("heat map cancelled")


@dataclass
class Saliency:
    heatmap: np.ndarray  # (H, W) float64 in [0, 1] at the model's input size
    target: int  # the class explained
    probabilities: np.ndarray  # (K,) the model's prediction for the unaltered image
    method: str
    layer: int | None  # the layer Grad-CAM looked at


def spatial_layers(model: Any) -> list[int]:
    """Indices of the layers Grad-CAM can use: outputs still maps (C, H, W), before the scores."""
    return [i.index for i in model.inference.layers[:model._head]
            if len(i.output_shape) == 3 and i.output_shape[1] * i.output_shape[2] > 1]


#: layers that only coarsen a map: Grad-CAM looks at the map before them
_POOLS = ("MaxPool2D", "AvgPool2D")


def default_layer(model: Any) -> int | None:
    """The last spatial layer, before any pooling at the end: its channels are the most
    class-specific that still have a place, and a pooling layer after them adds no feature, only
    halves the grid (LeNet-5: the last ReLU's 10x10 rather than the pool's 5x5; the deletion test
    on MNIST goes from 7x to 10x, docs/explain.md)."""
    layers = spatial_layers(model)
    if not layers:
        return None
    i = layers[-1]
    while model.spec.layers[i].type in _POOLS and i - 1 in layers:
        i -= 1
    return i


def _score_gradient_mask(model: Any, classes: np.ndarray) -> np.ndarray:
    """(N, K) signs s with score = sum(s * logits): one-hot, or +-1 for a one-logit binary model."""
    n = len(classes)
    if model.loss_kind == "binary_ce":
        return np.where(classes == 1, 1.0, -1.0)[:, None]
    m = np.zeros((n, model.num_classes))
    m[np.arange(n), classes] = 1.0
    return m


def _scores(model: Any, x: np.ndarray, classes: np.ndarray) -> np.ndarray:
    logits = model.logits(x).astype(np.float64)
    return (logits * _score_gradient_mask(model, classes)).sum(axis=1)


def _normalize(maps: np.ndarray) -> np.ndarray:
    maps = np.maximum(np.nan_to_num(maps, nan=0.0, posinf=0.0, neginf=0.0), 0.0)
    top = maps.reshape(len(maps), -1).max(axis=1).reshape(-1, 1, 1)
    return np.divide(maps, top, out=np.zeros_like(maps), where=top > 0)


def gradcam(model: Any, x: np.ndarray, classes: np.ndarray, layer: int | None = None) -> np.ndarray:
    """(N, H, W) raw Grad-CAM maps (non-negative, not normalized) at the input size."""
    layer = default_layer(model) if layer is None else layer
    if layer is None or layer not in spatial_layers(model):
        raise EngineError("Grad-CAM needs a layer whose output is still a map (C x H x W): "
                          + ("this design has none; use --method occlusion" if layer is None
                             else f"layer {layer} is not one (choose from {spatial_layers(model)})"))
    _, _, act, dact = model.score_gradients(x, classes, layer)
    weights = dact.astype(np.float64).mean(axis=(2, 3), keepdims=True)  # (N, C, 1, 1)
    cam = np.maximum((weights * act).sum(axis=1), 0.0)
    return _to_input_grid(model, layer, cam)


def _to_input_grid(model: Any, layer: int, maps: np.ndarray) -> np.ndarray:
    """Resample (N, h, w) maps of `layer`'s output onto the input's pixels, each cell placed at the
    centre of its receptive field. A plain resize would stretch the grid over the whole image,
    which is wrong by several pixels after unpadded convolutions (LeNet-5's last maps cover
    pixels 5.5..21.5 of 28, not 0..27)."""
    _, h, w = model.spec.input_shape
    start, jump = [0.0, 0.0], [1.0, 1.0]
    for info, spec_layer in zip(model.inference.layers[:layer + 1], model.spec.layers, strict=False):
        if not hasattr(spec_layer, "pads") or len(info.input_shape) != 3:
            continue
        pads = spec_layer.pads(tuple(info.input_shape))
        for a in (0, 1):
            k, s, p = spec_layer.kernel[a], spec_layer.stride[a], pads[2 * a]
            start[a] += ((k - 1) / 2 - p) * jump[a]
            jump[a] *= s
    out = maps.astype(np.float64)
    for a, size in ((1, h), (2, w)):  # separable linear interpolation, clamped at the edges
        cells = out.shape[a]
        t = np.clip((np.arange(size) - start[a - 1]) / jump[a - 1], 0, cells - 1)
        lo = np.minimum(np.floor(t).astype(int), max(cells - 2, 0))
        hi = np.minimum(lo + 1, cells - 1)
        f = t - lo
        shape = [1, 1, 1]
        shape[a] = size
        f = f.reshape(shape)
        out = np.take(out, lo, axis=a) * (1 - f) + np.take(out, hi, axis=a) * f
    return out


#: noisy copies smoothgrad averages over
SMOOTHGRAD_SAMPLES = 20


def _occlusion_batch(c: int, h: int, w: int) -> int:
    return max(8, min(128, 2**20 // max(1, c * h * w)))


def images_at_once(method: str, input_shape: tuple[int, int, int]) -> tuple[int, bool]:
    """(images a method runs through the model at once, whether with gradients): what the memory
    estimate needs before anything is allocated (engine.memory.explain_estimate)."""
    if method == "occlusion":
        return _occlusion_batch(*input_shape), False
    if method == "smoothgrad":
        return SMOOTHGRAD_SAMPLES, True
    return 1, True


def occlusion(model: Any, x: np.ndarray, classes: np.ndarray, patch: int | None = None,
              stride: int | None = None, batch_size: int | None = None,
              cancel: Callable[[], bool] | None = None) -> np.ndarray:
    """(N, H, W): how much the class score falls when a patch around each pixel is set to the
    image's median (mean over the patches covering it; rises are counted as zero).

    Batches hold about a million input values (128 LeNet-sized images, 37 of 3x96x96), so a
    big model's batch stays short and `cancel` is heard within a fraction of a second."""
    n, c, h, w = x.shape
    batch_size = batch_size or _occlusion_batch(c, h, w)
    patch = patch or max(3, round(min(h, w) / 7))
    stride = stride or max(1, patch // 2)
    ys = list(range(0, max(h - patch, 0) + 1, stride))
    xs = list(range(0, max(w - patch, 0) + 1, stride))
    if ys[-1] + patch < h:
        ys.append(h - patch)
    if xs[-1] + patch < w:
        xs.append(w - patch)
    spots = [(a, b) for a in ys for b in xs]
    out = np.zeros((n, h, w))
    cover = np.zeros((h, w))
    for a, b in spots:
        cover[a:a + patch, b:b + patch] += 1
    base = _scores(model, x, classes)
    for i in range(n):
        fill = np.median(x[i].reshape(c, -1), axis=1).reshape(c, 1, 1).astype(x.dtype)
        for k in range(0, len(spots), batch_size):
            _check(cancel)
            part = spots[k:k + batch_size]
            xb = np.repeat(x[i:i + 1], len(part), axis=0)
            for j, (a, b) in enumerate(part):
                xb[j, :, a:a + patch, b:b + patch] = fill
            drop = base[i] - _scores(model, xb, np.full(len(part), classes[i]))
            for (a, b), d in zip(part, drop, strict=True):
                out[i, a:a + patch, b:b + patch] += max(d, 0.0)
    return out / np.maximum(cover, 1)


def smoothgrad(model: Any, x: np.ndarray, classes: np.ndarray, samples: int = SMOOTHGRAD_SAMPLES, noise: float = 0.15,
               seed: int = 0, cancel: Callable[[], bool] | None = None) -> np.ndarray:
    """(N, H, W): mean |d score / d pixel| over `samples` copies with Gaussian noise of
    `noise` x the image's value range, largest over channels."""
    rng = np.random.default_rng(seed)
    out = np.zeros((x.shape[0], x.shape[2], x.shape[3]))
    for i in range(x.shape[0]):
        _check(cancel)
        span = float(x[i].max() - x[i].min()) or 1.0
        xb = x[i:i + 1] + rng.normal(0.0, noise * span, (samples, *x.shape[1:])).astype(x.dtype)
        _, dx, _, _ = model.score_gradients(xb, np.full(samples, classes[i]))
        out[i] = np.abs(dx.astype(np.float64)).mean(axis=0).max(axis=0)
    return out


def explain(model: Any, x: np.ndarray, method: str = DEFAULT_METHOD, target: int | np.ndarray | None = None,
            layer: int | None = None, seed: int = 0, cancel: Callable[[], bool] | None = None) -> list[Saliency]:
    """One Saliency per image of the preprocessed batch `x`; `target` None explains the predicted
    class, an int or an (N,) array the given class(es). `cancel() -> True` stops it between two
    batches with SaliencyCancelled."""
    if method not in METHODS:
        raise EngineError(f"unknown saliency method {method!r} (choose from {', '.join(METHODS)})")
    if model.num_classes < 2:
        raise EngineError("saliency needs a classifier: the last layer must output one score per class")
    x = np.asarray(x)
    probs = model.predict_proba(x).astype(np.float64)
    classes = probs.argmax(axis=1) if target is None else np.broadcast_to(np.asarray(target, np.int64), (len(x),))
    if len(classes) and (classes.min() < 0 or classes.max() >= model.num_classes):
        raise EngineError(f"class index must be in 0..{model.num_classes - 1}")
    if method == "gradcam":
        layer = default_layer(model) if layer is None else layer
        _check(cancel)
        raw = gradcam(model, x, classes, layer)
    elif method == "occlusion":
        layer = None
        raw = occlusion(model, x, classes, cancel=cancel)
    else:
        layer = None
        raw = smoothgrad(model, x, classes, seed=seed, cancel=cancel)
    maps = _normalize(raw)
    return [Saliency(maps[i], int(classes[i]), probs[i], method, layer) for i in range(len(x))]


# --------------------------------------------------------------------------------------------
# Faithfulness
# --------------------------------------------------------------------------------------------
def blank(x: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Copies of images (N, C, H, W) with the pixels where masks (N, H, W) is True set to each
    image's per-channel median."""
    out = np.array(x, copy=True)
    for i in range(len(x)):
        med = np.median(x[i].reshape(x.shape[1], -1), axis=1)
        for ch in range(x.shape[1]):
            out[i, ch][masks[i]] = med[ch]
    return out


def deletion_test(model: Any, x: np.ndarray, heatmaps: np.ndarray, targets: np.ndarray,
                  fraction: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Fall of each target class's probability when the `fraction` most salient pixels are
    blanked to the image's median, and when as many random pixels are: (salient, random), (N,)
    each. A faithful map makes the first much larger than the second."""
    n, _, h, w = x.shape
    k = max(1, int(math.ceil(fraction * h * w)))
    rng = np.random.default_rng(seed)
    top = np.zeros((n, h * w), bool)
    rand = np.zeros((n, h * w), bool)
    for i in range(n):
        # ties (flat regions of an upsampled map) are broken at random, not by pixel order
        jitter = rng.random(h * w) * 1e-9
        top[i, np.argsort(-(heatmaps[i].reshape(-1) + jitter))[:k]] = True
        rand[i, rng.choice(h * w, k, replace=False)] = True
    targets = np.asarray(targets, np.int64)
    rows = np.arange(n)
    p0 = model.predict_proba(x).astype(np.float64)[rows, targets]
    p_top = model.predict_proba(blank(x, top.reshape(n, h, w))).astype(np.float64)[rows, targets]
    p_rand = model.predict_proba(blank(x, rand.reshape(n, h, w))).astype(np.float64)[rows, targets]
    return p0 - p_top, p0 - p_rand


# --------------------------------------------------------------------------------------------
# Pictures
# --------------------------------------------------------------------------------------------
#: A perceptually ordered dark-blue -> red -> yellow ramp (anchors of matplotlib's "inferno"), so
#: "more important" reads as "hotter" and the order survives grey-scale printing.
_RAMP = np.array([[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21],
                  [250, 193, 39], [252, 255, 164]], np.float64)


def colorize(heatmap: np.ndarray) -> np.ndarray:
    """(H, W) values in [0, 1] -> (H, W, 3) uint8 colours of the ramp."""
    t = np.clip(np.nan_to_num(heatmap), 0, 1) * (len(_RAMP) - 1)
    lo = np.floor(t).astype(int).clip(0, len(_RAMP) - 2)
    f = (t - lo)[..., None]
    return np.rint(_RAMP[lo] * (1 - f) + _RAMP[lo + 1] * f).astype(np.uint8)


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.5, size: int = 320,
            caption: str = "", color_bar: bool = True) -> Any:
    """A PIL image: `image` (uint8 (C, H, W) as decoded, or (H, W)) scaled up to about `size`
    pixels, the heat map blended over it, a colour bar (low .. high) at the right, and a caption."""
    from PIL import Image, ImageDraw

    img = np.asarray(image)
    if img.ndim == 3:
        img = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)
    base = Image.fromarray(img.astype(np.uint8)).convert("RGB")
    h, w = heatmap.shape
    scale = max(1, size // max(h, w))
    big = (w * scale, h * scale)
    base = base.resize(big, Image.Resampling.NEAREST)
    heat = Image.fromarray(colorize(heatmap)).resize(big, Image.Resampling.BILINEAR)
    blended = Image.blend(base, heat, alpha)
    if not color_bar and not caption:
        return blended
    bar_w = 56 if color_bar else 0
    text_h = 18 if caption else 0
    canvas = Image.new("RGB", (big[0] + bar_w, big[1] + text_h), (255, 255, 255))
    canvas.paste(blended, (0, 0))
    draw = ImageDraw.Draw(canvas)
    if color_bar:
        ramp = colorize(np.linspace(1, 0, big[1])[:, None].repeat(12, axis=1))
        canvas.paste(Image.fromarray(ramp), (big[0] + 6, 0))
        draw.text((big[0] + 22, 0), "high", fill=(0, 0, 0))
        draw.text((big[0] + 22, big[1] - 12), "low", fill=(0, 0, 0))
    if caption:
        draw.text((4, big[1] + 3), caption, fill=(0, 0, 0))
    return canvas
