"""A trainable network built from a `cnn-designer/1` Spec: forward, backward, losses, weights.

API (other modules code against these signatures; keep them stable):

    from engine.model import Model
    m = Model(spec, seed=0, dtype=np.float32)   # EngineError(inference.error_message) if the design is invalid
    m.spec; m.inference; m.num_classes          # last layer's width; 2 for a final Dense(1) + Sigmoid
    m.loss_kind                                 # "softmax_ce" (final Softmax or plain logits) | "binary_ce"
    m.forward(x, training=False)                # x float (N, C, H, W) -> output of the whole spec (incl. Softmax)
    m.backward(dy)                              # after forward(..., training=True): d(out) -> d(x); fills grads
    m.predict_proba(x, batch_size=256)          # (N, num_classes) probabilities; binary -> [1 - p, p]
    m.activations(x)                            # every layer's output (inference mode), NCHW / (N, F)
    m.score_gradients(x, classes, layer)        # d(class logit)/d(input, layer output) for saliency maps
    m.state_dict(); m.load_state_dict(d, strict=True)   # "layers.{i}.weight|bias|running_mean|running_var"
    m.parameters(); m.gradients()               # name -> live trainable arrays / their gradients
    m.flat_params; m.flat_grads                 # one contiguous buffer each; parameters are views into them
    m.train_step(x, y, optimizer)               # -> (mean_loss: float, n_correct: int)
    m.evaluate_batch(x, y)                      # -> (loss_sum: float, n_correct: int, probs), inference mode
    m.loss_and_grad(x, y)                       # forward + loss + backward without an update (for workers)
    engine.parallel.enable_workers(m, 2)        # split batches over 2 processes (None, else why not)
    m.workers                                   # 1 or 2, as currently running
    m.close()                                   # releases worker processes, if any (safe to call twice)
    Model.blas_threads = 1                      # BLAS threads while computing (None: leave NumPy's setting)
    engine.optimizers.make_optimizer(name, model, lr=..., **kw)   # "adam" | "adamw" | "sgd"

Inside, spatial tensors are CNHW (see engine.functional); the API speaks NCHW like PyTorch.
Each layer's compute is the Op its registry entry names (engine.layers); an op may fuse with the
ones after it into a faster step computing the same function (Conv2D + monotone activation +
MaxPool2D and Conv2D + ReLU, see engine.layers.conv2d; BatchNorm + ReLU (+ MaxPool2D), see
engine.layers.batchnorm).
`activations()` runs the layers one by one instead.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from engine import functional as F
from engine import losses as L
from engine.allocator import keep_freed_memory
from engine.blas import blas_threads
from engine.errors import EngineError
from engine.layers.base import Op, plan_spans
from engine.layers.batchnorm import BatchNormOp
from engine.layers.dropout import DropoutOp
from engine.layers.flatten import FlattenOp
from engine.memory import model_estimate
from engine.shapes import Inference, infer, weights_problem
from engine.spec import Spec

Shape = tuple[int, ...]


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------
def _one_blas_thread(method):
    """Run the engine's many small GEMMs on one BLAS thread: measured here, a 2-thread OpenBLAS made
    LeNet-5 training 4x slower as soon as anything else used a core (threads wake for every small
    GEMM and wait for each other), and it was no faster on an idle machine. Both cores are used by
    splitting batches over two processes instead (enable_workers). The previous count is restored."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        if self.blas_threads is None:
            return method(self, *args, **kwargs)
        with blas_threads(self.blas_threads):
            return method(self, *args, **kwargs)

    return wrapper


class Model:
    #: BLAS threads while the model computes (None: leave NumPy's setting alone)
    blas_threads: int | None = 1

    def __init__(self, spec: Spec, seed: int = 0, dtype: Any = np.float32, fuse: bool = True,
                 flat: tuple[np.ndarray, np.ndarray] | None = None):
        """`flat`: two 1-D arrays of `dtype` to hold the parameters and the gradients (engine.parallel's
        helper puts them in memory both processes share, so nothing is copied in or out per step)."""
        self.spec = spec
        self.inference: Inference = infer(spec)
        if not self.inference.valid:
            raise EngineError(self.inference.error_message)
        self.dtype = np.dtype(dtype)
        model_estimate(self.inference, self.dtype.itemsize).check()  # before allocating a byte
        keep_freed_memory()
        self.seed = seed
        self.ops: list[Op] = []
        for info, layer in zip(self.inference.layers, spec.layers, strict=True):
            self.ops.append(layer.make_op(f"layers.{info.index}", tuple(info.input_shape),
                                          tuple(info.output_shape), self.dtype))

        # One flat buffer for every trainable array (the optimizer updates it in one go).
        sizes = [(op, name, shape) for op, info in zip(self.ops, self.inference.layers, strict=True)
                 for name, shape in info.param_shapes.items()]
        total = sum(math.prod(s) for _, _, s in sizes)
        if flat is None:
            self.flat_params = np.zeros(total, self.dtype)
            self.flat_grads = np.zeros(total, self.dtype)
        else:
            self.flat_params, self.flat_grads = flat
            if any(a.shape != (total,) or a.dtype != self.dtype for a in flat):
                raise EngineError(f"flat buffers must be two vectors of {total} {self.dtype} values")
        off = 0
        for op, name, shape in sizes:
            k = math.prod(shape)
            op.params[name] = self.flat_params[off:off + k].reshape(shape)
            op.grads[name] = self.flat_grads[off:off + k].reshape(shape)
            off += k
        for op, info in zip(self.ops, self.inference.layers, strict=True):
            for name, shape in info.buffer_shapes.items():
                op.buffers[name] = np.zeros(shape, self.dtype)

        for op in self.ops:
            op.setup(fuse)

        init_seq, drop_seq = np.random.SeedSequence(seed).spawn(2)
        init_rng = np.random.default_rng(init_seq)
        for op in self.ops:
            op.init_params(init_rng)
        self.set_dropout_seed(drop_seq)

        self.output_shape: Shape = tuple(self.inference.output_shape)
        self.num_classes = self.inference.num_classes or 0
        if self.inference.binary:
            self.loss_kind = "binary_ce"
            self._head = len(self.ops) - 1
        else:
            self.loss_kind = "softmax_ce"
            self._head = len(self.ops) - 1 if spec.layers[-1].output_head == "softmax" else len(self.ops)
        self._fuse = fuse
        #: the net starts with Flatten (a Dense-only net), which takes (N, C*H*W) as it is
        self._flat_input = isinstance(self.ops[0], FlattenOp) if self.ops else False
        #: per plan (by id), its first step with parameters: backprop without the input gradient
        #: stops there (a Flatten -> Dense or a pool -> conv at the start computes no input gradient)
        self._first_weighted: dict[int, int] = {}
        self._plan_train = self._plan(0, self._head, fuse)
        self._plan_full = self._plan(0, len(self.ops), fuse)
        self._plan_head = self._plan(0, self._head, fuse)
        self._parallel: Any = None
        # looked up at every step of a split batch: found once
        walked = [op for top in self.ops for op in top.walk()]
        self._dropouts = [op for op in walked if isinstance(op, DropoutOp)]
        self._batchnorms = [op for op in walked if isinstance(op, BatchNormOp)]
        self._buffer_list = [v for op in self.ops for v in op.buffers.values()]

    # --- structure ------------------------------------------------------------------------------
    def _plan(self, start: int, stop: int, fuse: bool) -> list:
        spans = plan_spans(self.ops[start:stop], fuse)
        weighted = [k for k, (_, ops) in enumerate(spans) if any(o.params for op in ops for o in op.walk())]
        steps = [step for step, _ in spans]
        self._first_weighted[id(steps)] = weighted[0] if weighted else len(steps)
        return steps

    def set_dropout_seed(self, seed: Any) -> None:
        """Re-seed every Dropout layer's mask generator (tests fix masks this way)."""
        seqs = np.random.SeedSequence(seed) if not isinstance(seed, np.random.SeedSequence) else seed
        drops = [op for top in self.ops for op in top.walk() if isinstance(op, DropoutOp)]
        for op, s in zip(drops, seqs.spawn(len(drops)), strict=True):
            op.rng = np.random.default_rng(s)

    def dropout_ops(self) -> list[DropoutOp]:
        """Every Dropout's op, also inside blocks, in order (parallel workers seed them alike)."""
        return self._dropouts

    # --- tensors in and out ---------------------------------------------------------------------
    def _check_x(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        want = tuple(self.spec.input_shape)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise EngineError(
                f"input must be a batch of shape (N, {', '.join(map(str, want))}), got {tuple(x.shape)}")
        return x

    def _to_internal(self, x: np.ndarray) -> np.ndarray:
        x = self._check_x(x).astype(self.dtype, copy=False)
        if self._flat_input:  # torch.flatten's order is the images' own: no transpose there and back
            return np.ascontiguousarray(x).reshape(len(x), -1)
        return np.ascontiguousarray(x.transpose(1, 0, 2, 3))

    @staticmethod
    def _to_external(y: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(y.transpose(1, 0, 2, 3)) if y.ndim == 4 else y

    def _check_y(self, y: np.ndarray, n: int) -> np.ndarray:
        y = np.asarray(y)
        if y.shape != (n,):
            raise EngineError(f"labels must be a vector of {n} class indices, got shape {y.shape}")
        if self.num_classes < 1:
            raise EngineError("the last layer must output a flat vector of class scores: "
                              "add Flatten and Dense(number of classes) at the end")
        y = y.astype(np.int64, copy=False)
        if n and (y.min() < 0 or y.max() >= self.num_classes):
            raise EngineError(f"labels must be in 0..{self.num_classes - 1} for this model's last layer, "
                              f"got {int(y.min())}..{int(y.max())}")
        return y

    # --- forward / backward ---------------------------------------------------------------------
    def _run(self, steps: list, h: np.ndarray, training: bool) -> np.ndarray:
        for s in steps:
            h = s.forward(h, training)
        return h

    @_one_blas_thread
    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        """Output of the whole spec (with its final Softmax / Sigmoid), NCHW or (N, F)."""
        self._last_steps = self._plan_full if training else None
        par = self._parallel  # read once: another thread may close() it meanwhile
        if not training and par is not None:
            return par.infer(self._check_x(x).astype(self.dtype, copy=False), False, self._forward_local)
        return self._forward_local(x, training)

    def _forward_local(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        return self._to_external(self._run(self._plan_full, self._to_internal(x), training))

    @_one_blas_thread
    def backward(self, dy: np.ndarray, need_input_grad: bool = True) -> np.ndarray | None:
        """Backpropagate d(loss)/d(output of the last forward(training=True)); fills the gradients."""
        steps = getattr(self, "_last_steps", None)
        if steps is None:
            raise EngineError("backward() needs a forward(x, training=True) first")
        dy = np.asarray(dy, self.dtype)
        if dy.ndim == 4:
            dy = np.ascontiguousarray(dy.transpose(1, 0, 2, 3))
        dx = self._backprop(steps, dy, need_input_grad)
        self._last_steps = None
        return None if dx is None else self._to_external(np.array(dx, copy=True))

    def _backprop(self, steps: list, dy: np.ndarray, need_input_grad: bool) -> np.ndarray | None:
        """Without the input gradient, the steps before the first one with parameters (a Flatten or
        a pool that starts the net) have nothing to compute, and the first one needs no gradient
        for its input: for a Dense 512 on a flattened 3x32x32 image that is as many multiplies as
        its forward pass."""
        first = 0 if need_input_grad else self._first_weighted.get(id(steps), 0)
        for k in range(len(steps) - 1, first - 1, -1):
            dy = steps[k].backward(dy, need_dx=need_input_grad or k > first)
        for k in range(first):  # what the skipped backward passes would have released
            if getattr(steps[k], "cache", None) is not None:
                steps[k].cache = None
        return dy if need_input_grad else None

    @_one_blas_thread
    def activations(self, x: np.ndarray) -> list[np.ndarray]:
        """Every layer's output for `x`, inference mode, layer by layer (for feature-map views)."""
        h = self._to_internal(x)
        outs = []
        for op in self.ops:
            h = op.forward(h, False)
            outs.append(self._to_external(np.array(h, copy=True)))
        return outs

    @_one_blas_thread
    def score_gradients(self, x: np.ndarray, classes: np.ndarray, layer: int | None = None
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Gradients of each image's class score (its logit, before a final Softmax/Sigmoid) for
        saliency maps: returns (logits, d score / d input, output of `layer`, d score / d that output),
        the last two None without `layer`. The network computes as in inference (Dropout off,
        BatchNorm on its running statistics), layer by layer, so the gradients are those of what
        predict() computes. Overwrites gradients() (not the weights); not for use while training."""
        h = self._to_internal(x)
        n = h.shape[1] if h.ndim == 4 else h.shape[0]
        classes = np.broadcast_to(np.asarray(classes, np.int64), (n,))
        backs: list = []
        acts: list[np.ndarray] = []
        for op in self.ops[:self._head]:
            h, back = op.forward_inference_grad(h)
            backs.append(back)
            acts.append(h)
        logits = self._to_external(h)
        d = np.zeros_like(h)
        if self.loss_kind == "binary_ce":  # one logit z scores class 1; class 0 scores -z
            d[:, 0] = np.where(classes == 1, 1.0, -1.0)
        else:
            d[np.arange(n), classes] = 1.0
        act = dact = None
        for k in range(len(backs) - 1, -1, -1):
            if k == layer:
                act, dact = self._to_external(acts[k].copy()), self._to_external(np.array(d, copy=True))
            d = backs[k](d)
        if layer is not None and act is None:
            raise EngineError(f"layer {layer} is not before the class scores (layers 0..{self._head - 1})")
        return logits, self._to_external(np.array(d, copy=True)), act, dact

    # --- losses and training ----------------------------------------------------------------------
    def _loss(self, logits: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        if self.loss_kind == "binary_ce":
            losses, grad = L.binary_cross_entropy_with_logits(logits, y)
            correct = int(np.count_nonzero((logits[:, 0] > 0) == (y == 1)))
        else:
            losses, grad = L.softmax_cross_entropy(logits, y)
            correct = int(np.count_nonzero(logits.argmax(axis=1) == y))
        return losses, grad, correct

    @_one_blas_thread
    def loss_and_grad(self, x: np.ndarray, y: np.ndarray, scale: float = 1.0) -> tuple[float, int]:
        """Forward (training mode), loss, backward: fills flat_grads with d(mean loss * scale)/dparams.
        Returns (sum of per-sample losses, n_correct)."""
        h = self._to_internal(x)
        y = self._check_y(y, h.shape[1] if h.ndim == 4 else h.shape[0])
        logits = self._run(self._plan_train, h, True)
        losses, grad, correct = self._loss(logits, y)
        if scale != 1.0:
            grad *= grad.dtype.type(scale)
        self._backprop(self._plan_train, grad, False)
        return float(losses.sum()), correct

    @_one_blas_thread
    def train_step(self, x: np.ndarray, y: np.ndarray, optimizer) -> tuple[float, int]:
        """One SGD step on the batch: returns (mean loss, number of correct predictions)."""
        n = len(x)
        if n == 0:
            raise EngineError("cannot train on an empty batch")
        par = self._parallel
        if par is not None:
            loss_sum, correct = par.loss_and_grad(x, y)
        else:
            loss_sum, correct = self.loss_and_grad(x, y)
        optimizer.step()
        return loss_sum / n, correct

    @_one_blas_thread
    def logits(self, x: np.ndarray) -> np.ndarray:
        """Inference-mode output before a final Softmax / Sigmoid that the loss folds in."""
        par = self._parallel
        if par is not None:
            return par.infer(self._check_x(x).astype(self.dtype, copy=False), True, self._logits_local)
        return self._logits_local(x)

    def _logits_local(self, x: np.ndarray) -> np.ndarray:
        return self._to_external(self._run(self._plan_head, self._to_internal(x), False))

    @_one_blas_thread
    def evaluate_batch(self, x: np.ndarray, y: np.ndarray) -> tuple[float, int, np.ndarray]:
        logits = self.logits(x)
        y = self._check_y(y, logits.shape[0])
        losses, _, correct = self._loss(logits, y)
        return float(losses.sum()), correct, self._proba_from_logits(logits)

    def _proba_from_logits(self, logits: np.ndarray) -> np.ndarray:
        if self.loss_kind == "binary_ce":
            p = F.sigmoid(logits[:, 0])
            return np.stack([1 - p, p], axis=1)
        return F.softmax(logits)

    @_one_blas_thread
    def predict_proba(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Class probabilities, computed in batches (inference mode)."""
        x = self._check_x(x)
        if self.num_classes < 1:
            raise EngineError("the last layer must output a flat vector of class scores: "
                              "add Flatten and Dense(number of classes) at the end")
        outs = [self._proba_from_logits(self.logits(x[i:i + batch_size])) for i in range(0, len(x), batch_size)]
        if not outs:
            return np.zeros((0, self.num_classes), self.dtype)
        return np.concatenate(outs)

    # --- weights ---------------------------------------------------------------------------------
    def parameters(self) -> dict[str, np.ndarray]:
        return {f"{op.name}.{k}": v for op in self.ops for k, v in op.params.items()}

    def gradients(self) -> dict[str, np.ndarray]:
        return {f"{op.name}.{k}": v for op in self.ops for k, v in op.grads.items()}

    def buffers(self) -> dict[str, np.ndarray]:
        return {f"{op.name}.{k}": v for op in self.ops for k, v in op.buffers.items()}

    def _named_arrays(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for op in self.ops:
            for k, v in op.params.items():
                out[f"{op.name}.{k}"] = v
            for k, v in op.buffers.items():
                out[f"{op.name}.{k}"] = v
        return out

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of every weight and running statistic, by stable name, PyTorch shapes."""
        return {k: v.copy() for k, v in self._named_arrays().items()}

    def load_state_dict(self, state: dict[str, np.ndarray], strict: bool = True) -> None:
        mine = self._named_arrays()
        problem = weights_problem({k: v.shape for k, v in mine.items()}, state, strict)
        if problem is not None:
            raise EngineError(problem)
        for k, v in mine.items():
            if k in state:
                v[...] = np.asarray(state[k])
        if self._parallel is not None:
            self._parallel.sync_buffers()

    # --- data parallelism (engine.parallel drives a model through these; the model never imports it) ---
    def attach_workers(self, workers: Any) -> None:
        """Route training steps and inference through `workers` (an engine.parallel.DataParallel
        made for this model) until close(); see engine.parallel.enable_workers."""
        self.close()
        self._parallel = workers

    def check_batch(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The batch as the model takes it (NCHW inputs, int64 labels in range), or EngineError."""
        x = self._check_x(x)
        return x, self._check_y(y, len(x))

    def draw_dropout_seeds(self) -> list[int]:
        """One mask seed per Dropout layer for the next step, from the model's own generators."""
        return [int(op.rng.integers(2**62)) for op in self.dropout_ops()]

    @contextlib.contextmanager
    def dropout_share(self, seeds: list[int], lo: int, total: int) -> Iterator[None]:
        """Inside, a training forward pass draws each Dropout mask for a whole batch of `total`
        rows from `seeds` and uses rows lo.. of it: a batch split over processes gets exactly the
        masks it would get in one process."""
        drops = self.dropout_ops()
        for op, s in zip(drops, seeds, strict=True):
            op.batch_seed, op.batch_slice = s, (lo, total)
        try:
            yield
        finally:
            for op in drops:
                op.batch_seed, op.batch_slice = None, None

    @contextlib.contextmanager
    def batchnorm_share(self, allsum: Any) -> Iterator[None]:
        """Inside, training-mode BatchNorm layers normalise with the statistics of a whole batch split
        over processes: `allsum(v)` returns the element-wise sum of the float64 vector `v` over all
        shares (each process calls it in the same order), as PyTorch's SyncBatchNorm does."""
        bns = self._batchnorms
        for op in bns:
            op.allsum = allsum
        try:
            yield
        finally:
            for op in bns:
                op.allsum = None

    @property
    def workers(self) -> int:
        return 2 if self._parallel is not None and self._parallel.alive else 1

    @property
    def workers_note(self) -> str | None:
        """Why a split over two processes ended before close() (the helper died, hung or failed),
        in one line for the user; None while it runs or when there was none."""
        return getattr(self._parallel, "note", None)

    @property
    def num_parameters(self) -> int:
        return int(self.flat_params.size)

    def close(self) -> None:
        """Stop the helper process, if any; the model keeps working in this process."""
        par, self._parallel = self._parallel, None
        if par is not None:
            par.close()

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
