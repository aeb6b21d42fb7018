"""Models brought back in: an ONNX chain, or weights (.safetensors / .npz) for a known design.

    tm, notes = import_model("net.onnx", classes=["cat", "dog"])   # -> engine.trained.TrainedModel
    tm, notes = import_model("trained.safetensors", like="digits.cnnd")
    modelfile.save("net.cnnd", tm)

ONNX: the graph must be a chain (each tensor feeds exactly one node) from one (N, C, H, W) input
to the output, of operators that map onto the format's layers. Where a tensor feeds several
nodes, registry layer types with a classmethod `from_onnx_branch(chain)` are asked to read the
pattern: Residual reads "x -> layers -> Add with x or a 1x1 Conv of x" (engine/layers/residual.py),
its inner layers through `Chain.read` like the rest. The rules live in one table,
`ONNX_RULES` (operator -> function building layers); a registry layer type may own its rule
instead by declaring `onnx_import_ops = ("OpName", ...)` and a classmethod
`from_onnx(chain, node) -> list[(config, arrays)]`, which is consulted first (the activations do:
engine/layers/activation_base.py). A rule reads the
node's attributes and constant inputs through `Chain` and may swallow the node after it (MatMul
takes its Add; GlobalAveragePool its Flatten). Anything else — an unsupported operator, a tensor
used twice (a branch), an attribute the app cannot express — is one ModelImportError line naming the
node.

Class names and preprocessing come from the metadata the app's own export writes, else from a
`like` model, else `classes` (default class_0, class_1, ...) and the default preprocessing
(pixels / 255). When the metadata (or `like`) carries an architecture that the graph matches
layer for layer, inside blocks too (`Layer.same_as_imported`; Dropout, which exports as Identity,
aside), that architecture is used, so an
exported model comes back exactly: same layers, names, Dropout rates and weights.

Weights: `.safetensors` or `.npz` arrays under the app's names (`layers.{i}.weight`, as the
exported train.py writes them; PyTorch's `num_batches_tracked` counters are ignored) replace the
weights of the `like` model; every name and shape is checked.

Files are untrusted: regular files only, size-capped, ONNX external data refused (a file must not
choose which local paths are read), no pickle.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from engine import modelfile
from engine.data import DataError, Preprocessing
from engine.errors import EngineError, SpecError
from engine.shapes import infer, weights_problem
from engine.spec import Spec
from engine.trained import TrainedModel

MAX_ONNX_BYTES = 2 * 1024**3
#: ONNX initializers' element types the importer reads (FLOAT, DOUBLE, FLOAT16; INT64 for shapes)
FLOAT_TYPES = (1, 11, 10)


class ModelImportError(EngineError):
    """The source cannot become a model; one line naming the file and the node or array."""


# --------------------------------------------------------------------------------------------
# Reading the chain
# --------------------------------------------------------------------------------------------
Built = list[tuple[dict[str, Any], dict[str, np.ndarray]]]


class Chain:
    """The graph as a chain of nodes, read front to back by the rules."""

    def __init__(self, model: Any, where: str):
        from onnx import numpy_helper

        self.where = where
        g = model.graph
        self.consts: dict[str, np.ndarray] = {}
        for t in g.initializer:
            self._const(t, numpy_helper)
        self.nodes = []
        for n in g.node:
            if n.op_type == "Constant" and len(n.output) == 1:
                val = next((a for a in n.attribute if a.name == "value"), None)
                if val is None:
                    raise self.error(n, "a Constant without a tensor value is not supported")
                self._const(val.t, numpy_helper, n.output[0])
            else:
                self.nodes.append(n)
        inputs = [i for i in g.input if i.name not in self.consts]
        if len(inputs) != 1:
            raise ModelImportError(f"{where}: the graph has {len(inputs)} inputs; a model to import has one "
                                   f"image input")
        self.input = inputs[0]
        outputs = [o.name for o in g.output]
        if len(outputs) != 1:
            raise ModelImportError(f"{where}: the graph has {len(outputs)} outputs; a model to import has one")
        self.output = outputs[0]
        self.consumers: dict[str, list[Any]] = {}
        for n in self.nodes:
            for name in n.input:
                if name and name not in self.consts:
                    self.consumers.setdefault(name, []).append(n)
        self.current = self.input.name
        #: names of nodes that end the chain (the app's own export appends its probabilities tail)
        self.stop_at: tuple[str, ...] = APP_TAIL if model.producer_name == "cnn-designer" else ()
        self.shape: tuple[int, ...] = ()  # the app's shape of `current`, without the batch
        self.batch: int | None = None  # the input's batch size when the graph fixes it
        #: where the walk ends (a block's inner chain ends at its Add's input), None: the output
        self.stop: str | None = None
        #: nodes a block's rule has taken (its Add, its shortcut): the walk no longer sees them
        self.claimed: list[Any] = []
        self.rules: dict[str, Callable[[Chain, Any], Built]] = {}

    def users(self, tensor: str) -> list[Any]:
        """The unclaimed nodes reading `tensor`."""
        return [u for u in self.consumers.get(tensor, []) if not any(u is n for n in self.claimed)]

    def _const(self, t: Any, numpy_helper: Any, name: str | None = None) -> None:
        if t.data_location == 1:  # EXTERNAL
            raise ModelImportError(f"{self.where}: tensor {t.name!r} is stored in an external file; "
                              f"only self-contained .onnx files are imported")
        if t.data_type not in (*FLOAT_TYPES, 7, 6):  # INT64, INT32 for shapes and pads
            raise ModelImportError(f"{self.where}: tensor {t.name!r} has an unsupported element type ({t.data_type})")
        try:
            arr = numpy_helper.to_array(t)
        except Exception as e:  # a malformed tensor is the file's problem
            raise ModelImportError(f"{self.where}: tensor {t.name!r} cannot be read ({e})") from None
        self.consts[name or t.name] = arr

    def error(self, node: Any, message: str) -> ModelImportError:
        label = f"{node.op_type} node " + (repr(node.name) if node.name else f"(output {node.output[0]!r})")
        return ModelImportError(f"{self.where}: {label}: {message}")

    def next_node(self) -> Any | None:
        """The node reading `current`, or None at the output; a branch is an error."""
        if self.current == self.stop:
            return None
        users = self.users(self.current)
        if users and all(u.name in self.stop_at for u in users):
            return None
        if self.current == self.output:
            if users:
                raise ModelImportError(f"{self.where}: the output {self.output!r} also feeds "
                                  f"{users[0].op_type} node {users[0].name!r}: not a chain")
            return None
        if not users:
            raise ModelImportError(f"{self.where}: tensor {self.current!r} feeds nothing but is not the output")
        if len(users) > 1:
            names = ", ".join(f"{u.op_type} {u.name!r}" for u in users)
            raise ModelImportError(f"{self.where}: tensor {self.current!r} branches into {names}; only a chain of "
                              f"layers can be imported")
        node = users[0]
        live = [i for i in node.input if i and i not in self.consts]
        if live != [self.current]:
            raise self.error(node, f"it combines {len(live)} tensors ({', '.join(live)}); only a chain of layers "
                                   f"and residual blocks (input -> layers -> Add with the input or a 1x1 Conv "
                                   f"of it) can be imported")
        if len(node.output) < 1:
            raise self.error(node, "it has no output")
        return node

    def read(self, stop: str | None = None) -> Built:
        """The layers from `current` up to the tensor `stop` (None: the output), each checked against
        its registry entry (config, shape, arrays); `current` and `shape` end after them. A tensor
        read by several nodes is offered to the registry's branch rules (a Residual block)."""
        from engine.layers import layer_from_config

        outer, self.stop = self.stop, stop
        out: Built = []
        pending_pad: list[int] | None = None
        pad_node = None
        try:
            while True:
                node = built = None
                if self.current != self.stop and len(self.users(self.current)) > 1 and pending_pad is None:
                    node, built = self._branch()
                if node is None:
                    node = self.next_node()
                    if node is None:
                        break
                    if node.op_type == "Pad":
                        if pending_pad is not None:
                            raise self.error(node, "two Pad nodes in a row are not supported")
                        pending_pad, pad_node = _pad_rule(self, node), node
                        self.advance(node)
                        continue
                    rule = self.rules.get(node.op_type)
                    if rule is None:
                        supported = ", ".join(sorted({*self.rules, "Pad"}))
                        raise self.error(node, f"operator {node.op_type} is not supported (supported: {supported})")
                    self.advance(node)  # a rule sees `current` as its node's output (take_next reads what follows)
                    if pending_pad is not None:
                        if node.op_type != "Conv":
                            raise self.error(pad_node, f"a Pad is supported only before a Conv, not before "
                                                       f"{node.op_type}")
                        built = rule_conv(self, node, pending_pad)
                        pending_pad = None
                    else:
                        built = rule(self, node)
                for cfg, arrays in built:
                    try:
                        layer = layer_from_config(cfg, len(out))
                        shape = layer.compute_output_shape(self.shape)
                    except (SpecError, EngineError) as e:
                        raise self.error(node, str(e)) from None
                    want = {**layer.param_shapes(self.shape), **layer.buffer_shapes(self.shape)}
                    for k, need in want.items():
                        if k not in arrays or tuple(arrays[k].shape) != tuple(need):
                            got = tuple(arrays[k].shape) if k in arrays else None
                            raise self.error(node, f"its {k} has shape {got}, the layer needs {tuple(need)}")
                    out.append((layer.to_config(), {k: arrays[k] for k in want}))
                    self.shape = tuple(shape)
            if pending_pad is not None:
                raise self.error(pad_node, "a Pad at the end of the graph is not supported")
        finally:
            self.stop = outer
        return out

    def _branch(self) -> tuple[Any, Built] | tuple[None, None]:
        """A registry type's rule for a tensor read by several nodes: (the node closing the pattern,
        the layers) or (None, None) when no rule matches (the walk then reports the branch)."""
        from engine.layers import LAYER_CLASSES

        for cls in LAYER_CLASSES.values():
            rule = getattr(cls, "from_onnx_branch", None)
            if rule is not None:
                found = rule(self)
                if found is not None:
                    return found
        return None, None

    def advance(self, node: Any) -> None:
        self.current = node.output[0]

    def take_next(self, op_types: tuple[str, ...]) -> Any | None:
        """Swallow the node after the one being read when it is one of `op_types` (MatMul's Add, ...)."""
        try:
            node = self.next_node()
        except ModelImportError:
            return None  # reported when the walk gets there
        if node is not None and node.op_type in op_types:
            self.advance(node)
            return node
        return None

    def attr(self, node: Any, name: str, default: Any = None) -> Any:
        from onnx import helper

        for a in node.attribute:
            if a.name == name:
                v = helper.get_attribute_value(a)
                return v.decode() if isinstance(v, bytes) else v
        return default

    def const(self, node: Any, k: int, what: str, required: bool = True) -> np.ndarray | None:
        """Input k of `node` as a constant array (weights, bias, shapes)."""
        if k >= len(node.input) or not node.input[k]:
            if required:
                raise self.error(node, f"it has no {what}")
            return None
        arr = self.consts.get(node.input[k])
        if arr is None:
            raise self.error(node, f"its {what} ({node.input[k]!r}) is computed, not a constant")
        return arr

    def weights(self, node: Any, k: int, what: str, shape: tuple[int, ...] | None = None,
                required: bool = True) -> np.ndarray | None:
        arr = self.const(node, k, what, required)
        if arr is None:
            return None
        if arr.dtype.kind != "f":
            raise self.error(node, f"its {what} is {arr.dtype}, not floating point")
        if shape is not None and tuple(arr.shape) != shape:
            raise self.error(node, f"its {what} has shape {tuple(arr.shape)}, expected {shape}")
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if not np.all(np.isfinite(arr)):
            raise self.error(node, f"its {what} contains NaN or infinity")
        return arr


# --------------------------------------------------------------------------------------------
# The rules: ONNX operator -> layers
# --------------------------------------------------------------------------------------------
def _only(c: Chain, node: Any, **allowed: Any) -> None:
    """Refuse attributes whose value the app cannot express."""
    for name, ok in allowed.items():
        v = c.attr(node, name)
        if v is not None and v != ok and not (isinstance(ok, tuple) and v in ok):
            raise c.error(node, f"{name}={v!r} is not supported")


def _window(c: Chain, node: Any, kernel: tuple[int, int], extra_pads: list[int] | None, pool: bool = False):
    """kernel, stride and the app's padding value for a Conv / pool node."""
    from engine.layers.base import same_padding

    strides = tuple(c.attr(node, "strides", [1, 1]))
    if c.attr(node, "dilations") not in (None, [1, 1]):
        raise c.error(node, "dilated windows are not supported")
    if c.attr(node, "auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise c.error(node, f"auto_pad={c.attr(node, 'auto_pad')} is not supported (write explicit pads)")
    pads = list(c.attr(node, "pads", [0, 0, 0, 0]))
    if len(kernel) != 2 or len(strides) != 2 or len(pads) != 4:
        raise c.error(node, "only 2-D windows are supported")
    if extra_pads is not None:
        pads = [a + b for a, b in zip(pads, extra_pads, strict=True)]
    top, left, bottom, right = pads
    _, h, w = c.shape
    same = ((top, bottom) == same_padding(h, kernel[0], strides[0])
            and (left, right) == same_padding(w, kernel[1], strides[1]))
    if top == bottom == left == right == 0:
        padding: Any = "valid"
    elif top == bottom and left == right and not (pool and same):
        padding = top if top == left else [top, left]
    elif same:
        padding = "same"
    else:
        raise c.error(node, f"pads {pads} cannot be expressed (explicit symmetric pads"
                            f"{'' if not pool else ' are not available for pooling'} or 'same' padding)")
    return list(kernel), list(strides), padding


def _pair(v: list[int]) -> Any:
    return v[0] if v[0] == v[1] else v


def rule_conv(c: Chain, node: Any, pending_pad: list[int] | None = None) -> Built:
    _only(c, node, group=1)
    w = c.weights(node, 1, "weight")
    if w.ndim != 4 or w.shape[1] != c.shape[0]:
        raise c.error(node, f"its weight has shape {w.shape}, expected (filters, {c.shape[0]}, kh, kw)")
    kernel = tuple(c.attr(node, "kernel_shape", list(w.shape[2:])))
    if kernel != w.shape[2:]:
        raise c.error(node, "kernel_shape differs from the weight's shape")
    kernel, strides, padding = _window(c, node, kernel, pending_pad)
    b = c.weights(node, 2, "bias", (w.shape[0],), required=False)
    cfg = {"type": "Conv2D", "filters": int(w.shape[0]), "kernel_size": _pair(kernel), "stride": _pair(strides),
           "padding": padding, "use_bias": b is not None}
    arrays = {"weight": w} | ({"bias": b} if b is not None else {})
    return [(cfg, arrays)]


def rule_pool(c: Chain, node: Any) -> Built:
    _only(c, node, ceil_mode=0, storage_order=0)
    kernel = tuple(c.attr(node, "kernel_shape", []))
    kernel, strides, padding = _window(c, node, kernel, None, pool=True)
    if padding not in ("valid", "same"):
        raise c.error(node, f"pads {c.attr(node, 'pads')} are not supported (pooling is 'valid' or 'same')")
    if node.op_type == "AveragePool" and padding == "same" and c.attr(node, "count_include_pad", 0) != 0:
        raise c.error(node, "count_include_pad=1 is not supported (the app averages over real cells only)")
    t = "MaxPool2D" if node.op_type == "MaxPool" else "AvgPool2D"
    return [({"type": t, "pool_size": _pair(kernel), "stride": None if strides == kernel else _pair(strides),
              "padding": padding}, {})]


def rule_global_avg(c: Chain, node: Any) -> Built:
    c.take_next(("Flatten", "Reshape"))  # the app's GlobalAvgPool2D already outputs a flat vector
    return [({"type": "GlobalAvgPool2D"}, {})]


def rule_reduce_mean(c: Chain, node: Any) -> Built:
    """A mean over height and width: how torch.onnx.export's default (dynamo) exporter writes
    AdaptiveAvgPool2d(1) or x.mean((2, 3)); axes are an attribute before opset 18, an input after."""
    axes = c.attr(node, "axes")
    if axes is None:
        given = c.const(node, 1, "axes", required=False)
        axes = None if given is None else [int(v) for v in np.asarray(given).ravel()]
    if len(c.shape) != 3 or axes is None or sorted(int(a) % 4 for a in axes) != [2, 3]:
        raise c.error(node, f"only a mean over height and width (axes 2 and 3 of N, C, H, W) is supported, "
                            f"got axes {axes}")
    if not c.attr(node, "keepdims", 1):
        return [({"type": "GlobalAvgPool2D"}, {})]  # already (batch, channels)
    return rule_global_avg(c, node)


def rule_flatten(c: Chain, node: Any) -> Built:
    if node.op_type == "Flatten":
        _only(c, node, axis=1)
    else:
        shape = c.const(node, 1, "shape")
        n_features = math.prod(c.shape)
        s = [int(v) for v in np.asarray(shape).ravel()]
        # the batch is -1, 0 (copied), or the input's own when the graph was exported with a fixed one
        batch = (-1, 0, *([c.batch] if c.batch is not None else []))
        ok = len(s) == 2 and ((s[1] == n_features and s[0] in batch) or (s[1] == -1 and s[0] in batch[1:]))
        if not ok:
            raise c.error(node, f"only a reshape to (batch, features) is supported, got shape {s}")
    return [] if len(c.shape) == 1 else [({"type": "Flatten"}, {})]


def rule_gemm(c: Chain, node: Any) -> Built:
    _only(c, node, alpha=1.0, beta=1.0, transA=0)
    if len(c.shape) != 1:
        raise c.error(node, f"it multiplies {'x'.join(map(str, c.shape))} maps; flatten them first")
    w = c.weights(node, 1, "weight")
    if w.ndim != 2:
        raise c.error(node, f"its weight has shape {w.shape}, expected 2-D")
    if not c.attr(node, "transB", 0):
        w = np.ascontiguousarray(w.T)
    if w.shape[1] != c.shape[0]:
        raise c.error(node, f"its weight expects {w.shape[1]} inputs but gets {c.shape[0]}")
    b = c.weights(node, 2, "bias", required=False)
    return _dense(c, node, w, b)


def _dense(c: Chain, node: Any, w: np.ndarray, b: np.ndarray | None) -> Built:
    if b is not None:
        if b.size != w.shape[0] or b.ndim > 2:
            raise c.error(node, f"its bias has shape {b.shape}, expected ({w.shape[0]},)")
        b = np.ascontiguousarray(b.reshape(-1))
    cfg = {"type": "Dense", "units": int(w.shape[0]), "use_bias": b is not None}
    return [(cfg, {"weight": w} | ({"bias": b} if b is not None else {}))]


def rule_matmul(c: Chain, node: Any) -> Built:
    if len(c.shape) != 1:
        raise c.error(node, f"it multiplies {'x'.join(map(str, c.shape))} maps; flatten them first")
    w = c.weights(node, 1, "weight")
    if w.ndim != 2 or w.shape[0] != c.shape[0]:
        raise c.error(node, f"its weight has shape {w.shape}, expected ({c.shape[0]}, units)")
    add = c.take_next(("Add",))
    b = None
    if add is not None:
        k = 1 if add.input[0] == node.output[0] else 0
        b = c.weights(add, k, "bias")
    return _dense(c, node, np.ascontiguousarray(w.T), b)


def rule_batchnorm(c: Chain, node: Any) -> Built:
    _only(c, node, training_mode=0)
    ch = c.shape[0]
    arrays = {k: c.weights(node, i, k, (ch,)) for i, k in
              ((1, "weight"), (2, "bias"), (3, "running_mean"), (4, "running_var"))}
    if (arrays["running_var"] < 0).any():
        raise c.error(node, "its variance has negative values")
    eps = float(c.attr(node, "epsilon", 1e-5))
    momentum = 1.0 - float(c.attr(node, "momentum", 0.9))  # ONNX keeps the old value's share
    t = "BatchNorm2D" if len(c.shape) == 3 else "BatchNorm1D"
    return [({"type": t, "eps": eps, "momentum": round(momentum, 12)}, arrays)]


def rule_identity(c: Chain, node: Any) -> Built:
    return []


ONNX_RULES: dict[str, Callable[[Chain, Any], Built]] = {
    "Conv": rule_conv, "MaxPool": rule_pool, "AveragePool": rule_pool, "GlobalAveragePool": rule_global_avg,
    "ReduceMean": rule_reduce_mean,
    "Flatten": rule_flatten, "Reshape": rule_flatten, "Gemm": rule_gemm, "MatMul": rule_matmul,
    "BatchNormalization": rule_batchnorm, "Dropout": rule_identity,
    "Identity": rule_identity,
}
#: What the app's own export appends after the last layer (engine.export.onnx_export): not layers.
APP_TAIL = ("probabilities", "binary.complement", "binary.concat")


def _rules() -> dict[str, Callable[[Chain, Any], Built]]:
    """The table, with rules owned by registry layer types taking precedence."""
    from engine.layers import LAYER_CLASSES

    rules = dict(ONNX_RULES)
    for cls in LAYER_CLASSES.values():
        for op in getattr(cls, "onnx_import_ops", ()):
            rules[op] = cls.from_onnx
    return rules


def _pad_rule(c: Chain, node: Any) -> list[int]:
    """A zero Pad before a Conv becomes part of the Conv's padding ([top, left, bottom, right])."""
    if c.attr(node, "mode", "constant") != "constant":
        raise c.error(node, f"{c.attr(node, 'mode')} padding is not supported (only zeros)")
    pads = c.attr(node, "pads")
    if pads is None:
        pads = [int(v) for v in np.asarray(c.const(node, 1, "pads")).ravel()]
    value = c.const(node, 2, "constant value", required=False)
    if value is not None and float(np.asarray(value).ravel()[0]) != 0.0:
        raise c.error(node, "only zero padding is supported")
    if len(pads) != 8 or pads[0] or pads[1] or pads[4] or pads[5] or min(pads) < 0:
        raise c.error(node, f"only non-negative padding of height and width is supported, got {pads}")
    return [pads[2], pads[3], pads[6], pads[7]]


def _input_shape(c: Chain, where: str) -> tuple[int, int, int]:
    t = c.input.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    if t.elem_type != 1:
        raise ModelImportError(f"{where}: the input {c.input.name!r} is not float32")
    if len(dims) != 4 or any(d is None or d < 1 for d in dims[1:]):
        raise ModelImportError(f"{where}: the input {c.input.name!r} must be (N, C, H, W) with fixed C, H and W, "
                          f"got {['?' if d is None else d for d in dims]}")
    c.batch = dims[0] or None
    return (dims[1], dims[2], dims[3])


def read_onnx(path: Path) -> tuple[Spec, dict[str, np.ndarray], dict[str, str], Any]:
    """The graph as an architecture and weights, plus its metadata (see the module docstring)."""
    import onnx

    where = str(path)
    data = _read_capped(path, MAX_ONNX_BYTES)
    try:
        model = onnx.load_from_string(data)
    except Exception as e:
        raise ModelImportError(f"{where}: not an ONNX model ({type(e).__name__})") from None
    meta = {p.key: p.value for p in model.metadata_props}
    c = Chain(model, where)
    input_shape = _input_shape(c, where)
    c.shape = input_shape
    c.rules = _rules()
    layers: list[dict[str, Any]] = []
    state: dict[str, np.ndarray] = {}
    for i, (cfg, arrays) in enumerate(c.read()):
        layers.append(cfg)
        state.update({f"layers.{i}.{k}": v for k, v in arrays.items()})
    if not layers:
        raise ModelImportError(f"{where}: the graph has no layers")
    ci, h, w = input_shape
    name = Path(path).stem
    spec = Spec.from_dict({"format": "cnn-designer/1", "name": name,
                           "input": {"channels": ci, "height": h, "width": w}, "layers": layers})
    return spec, state, meta, model


def _read_capped(path: Path, cap: int) -> bytes:
    """engine.safeio's read: a regular file (never a device or a pipe), at most `cap` bytes."""
    from engine import safeio

    try:
        return safeio.read_bytes(path, "model to import", cap)
    except safeio.SafeIOError as e:
        raise ModelImportError(str(e)) from None


# --------------------------------------------------------------------------------------------
# Matching a known architecture (the app's metadata or --like)
# --------------------------------------------------------------------------------------------
def _adopt(parsed: Spec, state: dict[str, np.ndarray], known: Spec) -> dict[str, np.ndarray] | None:
    """`state` renamed to `known`'s layer indices when `known` is the parsed chain layer for layer,
    inside blocks too (layers that export as Identity, Dropout, aside); None when they differ."""
    if known.input_shape != parsed.input_shape:
        return None
    ki, pi = infer(known), infer(parsed)
    if not ki.valid:
        return None
    prefixes = _match(known.layers, ki.layers, parsed.layers, pi.layers, "layers.", "layers.")
    if prefixes is None:
        return None
    renamed = {}
    for key, arr in state.items():
        # the longest parsed prefix owning the key: a block's inner layer before the block itself
        p = max((p for p in prefixes if key.startswith(p)), key=len)
        renamed[prefixes[p] + key[len(p):]] = arr
    return renamed


def _match(known: list[Any], kinfo: list[Any], parsed: list[Any], pinfo: list[Any], kpre: str,
           ppre: str) -> dict[str, str] | None:
    """{parsed weight prefix: known weight prefix} when the layer lists match, else None."""
    kept = [i for i, layer in enumerate(known) if not layer.onnx_identity]
    if len(kept) != len(parsed):
        return None
    out = {}
    for j, i in enumerate(kept):
        a, b = known[i], parsed[j]
        if (tuple(kinfo[i].output_shape) != tuple(pinfo[j].output_shape)
                or not a.same_as_imported(b, kinfo[i].input_shape)):
            return None
        out[f"{ppre}{j}."] = f"{kpre}{i}."
        if a.children() or b.children():
            inner = _match(a.children(), kinfo[i].inner, b.children(), pinfo[j].inner, f"{kpre}{i}.layers.",
                           f"{ppre}{j}.layers.")
            if inner is None:
                return None
            out.update(inner)
    return out


def _parse_meta(meta: dict[str, str], where: str) -> tuple[Spec | None, list[str] | None, Preprocessing | None]:
    """The app's metadata, untrusted JSON like any file's (engine.safeio's bounds and messages)."""
    from engine import safeio

    spec = classes = prep = None
    try:
        if "architecture" in meta:
            spec = Spec.from_dict(safeio.parse_json(meta["architecture"], "architecture"))
        if "classes" in meta:
            classes = safeio.parse_json(meta["classes"], "classes")
            if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
                raise DataError('"classes" is not a list of names')
        if "preprocessing" in meta:
            prep = Preprocessing.from_dict(safeio.parse_json(meta["preprocessing"], "preprocessing"))
    except (safeio.SafeIOError, SpecError, DataError) as e:
        raise ModelImportError(f"{where}: its CNN Designer metadata is damaged ({e})") from None
    return spec, classes, prep


# --------------------------------------------------------------------------------------------
# Weights for a known design
# --------------------------------------------------------------------------------------------
def read_weights(path: Path, like: TrainedModel) -> dict[str, np.ndarray]:
    """A .safetensors / .npz file's arrays, checked against `like`'s architecture."""
    where = str(path)
    want = like.inference.weight_shapes()
    cap = sum(8 * math.prod(s) + modelfile.NPY_HEADER_SLACK for s in want.values()) + (1 << 20)
    cap += len(want) * 64 * 1024  # headers, names, the counters PyTorch adds
    data = _read_capped(path, cap)
    if path.suffix.lower() == ".npz":
        return modelfile._read_weights(data, want, where)
    from safetensors.numpy import load as safetensors_load

    try:
        arrays = safetensors_load(data)
    except Exception as e:  # the reference parser's own error types; a bad file is one line
        raise ModelImportError(f"{where}: not a valid safetensors file ({e})") from None
    arrays = {k: v for k, v in arrays.items() if not k.endswith(".num_batches_tracked")}
    for k, v in arrays.items():
        if v.dtype.kind != "f":
            raise ModelImportError(f"{where}: array {k} is {v.dtype}, not floating point")
    state = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()}
    problem = weights_problem(want, state)
    if problem is not None:
        raise ModelImportError(f"{where}: {problem}")
    return state


# --------------------------------------------------------------------------------------------
# The entry point
# --------------------------------------------------------------------------------------------
def import_model(source: str | os.PathLike, like: str | os.PathLike | None = None,
                 classes: list[str] | None = None) -> tuple[TrainedModel, list[str]]:
    """A TrainedModel (not yet saved) from SOURCE, and notes for the user (what came from where)."""
    src = Path(source)
    kind = src.suffix.lower()
    like_tm = modelfile.load(like) if like is not None else None
    notes: list[str] = []
    training = {"imported_from": str(src.resolve())}
    if kind in (".safetensors", ".npz"):
        if like_tm is None:
            raise ModelImportError(f"{src}: weights alone need the design they belong to: add --like MODEL.cnnd")
        state = read_weights(src, like_tm)
        notes.append(f"replaced all {len(state)} arrays of {like}'s design")
        tm = TrainedModel(like_tm.spec, state, list(classes or like_tm.classes), like_tm.preprocessing, training)
    elif kind == ".onnx":
        spec, state, meta, _ = read_onnx(src)
        m_spec, m_classes, m_prep = _parse_meta(meta, str(src))
        for known, label in ((m_spec, "its CNN Designer metadata"), (like_tm.spec if like_tm else None, str(like))):
            if known is None:
                continue
            renamed = _adopt(spec, state, known)
            if renamed is not None:
                spec, state = known, renamed
                notes.append(f"architecture from {label} (the graph matches it layer for layer)")
                break
            notes.append(f"the graph differs from the architecture in {label}: using the graph's")
        if classes is None:
            classes = m_classes or (like_tm.classes if like_tm else None)
        prep = m_prep or (like_tm.preprocessing if like_tm else None)
        if prep is None:
            try:
                prep = Preprocessing.for_input(spec.input_shape)
            except DataError as e:
                raise ModelImportError(f"{src}: {e}") from None
            notes.append("preprocessing: the default (pixels / 255, no mean or std); give --like MODEL.cnnd "
                         "to use another model's")
        if classes is None:
            n = infer(spec).num_classes
            if n is None:
                raise ModelImportError(f"{src}: the graph's output is not one score per class (it ends in "
                                       f"{'x'.join(map(str, infer(spec).output_shape or ()))})")
            classes = [f"class_{i}" for i in range(n)]
            notes.append(f"classes: {n} unnamed (class_0 ...); give --classes A,B,... to name them")
        tm = TrainedModel(spec, state, list(classes), prep, training)
    else:
        raise ModelImportError(f"{src}: cannot import {kind or 'a file without extension'} "
                          f"(import .onnx, or .safetensors / .npz with --like MODEL.cnnd)")
    problem = tm.problem()  # the check every model file gets (classes vs outputs, arrays vs design, input)
    if problem is not None:
        raise ModelImportError(f"{src}: {problem}")
    return tm, notes
