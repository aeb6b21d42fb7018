"""Memory a command will need, estimated from shape inference before anything is allocated.

Why: a 2 KB design or model file can declare a network that needs 100 GB (a Dense of a billion
units, a 40000 x 40000 input). Allocating first and failing later means an out-of-memory kill or
a traceback minutes in. The estimate uses the same figures the designer's totals bar shows
(engine.shapes.Inference: parameters, activations per image), plus the optimizer's state, the
trainer's weight snapshots, the convolution work buffers and the decoded images, and is compared
with a budget tied to this machine: half its RAM, less when an address-space limit (`ulimit -v`)
leaves less, or `CNN_DESIGNER_MEMORY` (e.g. `8G`) when set.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

from engine.errors import EngineError

GB = 1024**3
#: Optimizer state in weight-sized arrays (Adam/AdamW: two moments; SGD: momentum).
OPTIMIZER_SLOTS = {"adam": 2, "adamw": 2, "sgd": 1}
#: Batch size the engine evaluates with (validation, `evaluate`).
EVAL_BATCH = 256


class MemoryBudgetError(EngineError):
    """The estimate exceeds the budget; the message gives both figures and what to change."""


def human(n: float) -> str:
    from engine.shapes import human_bytes

    return human_bytes(n)


def physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _parse_size(text: str) -> int | None:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*", text.lower())
    if not m:
        return None
    return int(float(m.group(1)) * 1024 ** "_kmgt".index(m.group(2) or "_"))


def _address_space_left() -> int | None:
    """Bytes of address space left under RLIMIT_AS (None when unlimited or unknown)."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    except (ImportError, OSError, ValueError):
        return None
    if soft == resource.RLIM_INFINITY:
        return None
    used = 0
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    used = int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return max(0, soft - used)


def budget() -> tuple[int, str]:
    """(bytes, where that figure comes from) for one command's planned allocations."""
    env = os.environ.get("CNN_DESIGNER_MEMORY", "")
    size = _parse_size(env) if env else None
    if size:
        b, why = size, f"CNN_DESIGNER_MEMORY={env}"
    else:
        phys = physical_memory()
        b, why = (phys // 2, f"half of this machine's {human(phys)} of RAM") if phys else (8 * GB, "8 GB")
    left = _address_space_left()
    if left is not None and left * 3 // 4 < b:
        b, why = left * 3 // 4, "what the address-space limit, ulimit -v, leaves"
    return b, why


@dataclass
class Estimate:
    """Bytes per part (a sentence each), and the advice for the part that dominates."""

    what: str
    parts: dict[str, int] = field(default_factory=dict)
    advice: dict[str, str] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def add(self, part: str, nbytes: int, advice: str) -> None:
        self.parts[part] = int(nbytes)
        self.advice[part] = advice

    def check(self) -> None:
        """MemoryBudgetError when the total exceeds the budget (see the module docstring)."""
        limit, why = budget()
        if self.total <= limit:
            return
        big = max(self.parts, key=self.parts.__getitem__)
        raise MemoryBudgetError(
            f"{self.what} would need about {human(self.total)} of memory ({big}: {human(self.parts[big])}), "
            f"more than the {human(limit)} budget ({why}): {self.advice[big]}")


def _largest_layer(inf: Any) -> str:
    info = max(inf.layers, key=lambda i: i.params, default=None)
    if info is None or not info.params:
        return ""
    return f" (the largest is layer {info.index}, {info.type}, with {info.params:,} parameters)"


def _per_image(inf: Any, training: bool) -> int:
    """Bytes per image: every layer's output (engine.shapes' activation memory, the totals bar's
    figure) plus the convolution work buffers."""
    return inf.activation_bytes + 4 * inf.workspace_values(training)


def model_estimate(inf: Any, itemsize: int = 4) -> Estimate:
    """Building the model: its weights and their gradients."""
    est = Estimate("building this model")
    est.add("weights and gradients", 2 * inf.total_params * itemsize,
            "use fewer filters or units" + _largest_layer(inf))
    return est


def load_estimate(inf: Any) -> Estimate:
    """Reading a model file: the stored weights and the arrays decoded from them, checked before the
    archive is decompressed (a few KB of zip can declare gigabytes of zeros)."""
    est = Estimate("loading this model file")
    est.add("its weights, read and decoded", 2 * inf.weights_bytes,
            "it is too large for this machine" + _largest_layer(inf))
    return est


def inference_estimate(inf: Any, batch: int, what: str = "running this model") -> Estimate:
    est = model_estimate(inf)
    est.what = what
    est.add(f"activations for a batch of {batch}", _per_image(inf, training=False) * batch,
            "use a smaller input size or fewer filters")
    return est


def explain_estimate(inf: Any, images: int, gradients: bool) -> Estimate:
    """A heat map: the model, and the copies of one image a method runs at once (engine.saliency's
    images_at_once), with their gradients when the method takes them."""
    est = model_estimate(inf)
    est.what = "explaining with this model"
    per_image = 2 * _per_image(inf, training=True) if gradients else _per_image(inf, training=False)
    est.add(f"activations{' and gradients' if gradients else ''} for {images} copies of the image", per_image * images,
            "use a smaller input size or fewer filters" + ("" if images == 1 else ", or --method gradcam"))
    return est


def training_estimate(inf: Any, batch_size: int, images: int, optimizer: str = "adam",
                      keep_best: bool = False) -> Estimate:
    """One training run: weights, gradients, optimizer state, the NaN guard's two snapshots (and
    keep-best's), activations and work buffers for a batch (and for a validation batch), and the
    decoded training images (uint8)."""
    w = inf.weights_bytes
    est = Estimate("training this model")
    copies = 2 + OPTIMIZER_SLOTS.get(optimizer, 2) + 2 + (1 if keep_best else 0)
    est.add("weights, gradients, optimizer state and snapshots", copies * w,
            "use fewer filters or units" + _largest_layer(inf))
    est.add(f"activations for a batch of {batch_size}",
            max(2 * _per_image(inf, training=True) * batch_size, _per_image(inf, training=False) * EVAL_BATCH),
            "lower --batch-size, or use a smaller input size or fewer filters")
    c, h, wd = inf.input_shape
    est.add(f"{images:,} decoded images", images * c * h * wd,
            "train on fewer images (--limit N) or use a smaller input size")
    return est


def eval_batch_size(inf: Any, images: int = EVAL_BATCH) -> int:
    """The largest evaluation batch (up to EVAL_BATCH) that fits the budget; MemoryBudgetError when
    not even one image does."""
    inference_estimate(inf, 1).check()
    limit, _ = budget()
    fixed = model_estimate(inf).total
    per_image = _per_image(inf, training=False)
    return max(1, min(EVAL_BATCH, images or 1, (limit - fixed) // max(per_image, 1)))


__all__ = ["MemoryBudgetError", "budget", "eval_batch_size", "explain_estimate", "inference_estimate",
           "load_estimate", "model_estimate", "training_estimate"]
