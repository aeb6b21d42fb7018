"""Residual: a block of layers whose input is added back to their output (He et al. 2015).

Output = activation(F(x) + S(x)). F runs the inner `layers` in order. S is the identity when F
keeps the shape, otherwise (or with `"shortcut": "projection"`) a 1x1 Conv2D with bias and stride
(ceil(H / H'), ceil(W / W')) mapping x onto F's output. The block reuses the inner layers' own
registry entries for everything (shapes, compute and its fused fast paths, exporters); the
shortcut and the activation are ordinary Conv2D and activation layers built on the fly, so their
weights are `shortcut.weight|bias` exactly as a PyTorch module with an `nn.Conv2d` attribute
`shortcut` names them, and the inner ones `layers.{j}.*` as an `nn.Sequential` named `layers`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from engine.errors import LayerShapeError, SpecError
from engine.layers.base import Field, Layer, Op, Shape, fmt_shape, pair_of, plan

ACTIVATIONS = ("ReLU", "LeakyReLU", "Sigmoid", "Tanh", None)
SHORTCUTS = ("auto", "identity", "projection")


class ResidualOp(Op):
    def __init__(self, layer: Residual, name: str, in_shape: Shape, out_shape: Shape, dtype: np.dtype):
        super().__init__(layer, name, in_shape, out_shape, dtype)
        shapes = layer.inner_shapes(in_shape)
        self.inner = [child.make_op(f"{name}.layers.{j}", a, b, dtype)
                      for j, (child, (a, b)) in enumerate(zip(layer.inner, shapes, strict=True))]
        proj = layer.projection_layer(in_shape, out_shape)
        self.shortcut = proj.make_op(f"{name}.shortcut", in_shape, out_shape, dtype) if proj else None
        act = layer.activation_layer()
        self.act = act.make_op(f"{name}.activation", out_shape, out_shape, dtype) if act else None
        self.steps: list[Any] = []

    def _parts(self) -> list[Op]:
        return [*self.inner, *([self.shortcut] if self.shortcut else [])]

    def setup(self, fuse: bool) -> None:
        # The model allocated "layers.{j}.weight", "shortcut.bias", ... here: hand each its view.
        for op in self._parts():
            prefix = op.name[len(self.name) + 1:] + "."
            for mine, theirs in ((self.params, op.params), (self.grads, op.grads), (self.buffers, op.buffers)):
                for k, v in mine.items():
                    if k.startswith(prefix) and "." not in k[len(prefix):]:
                        theirs[k[len(prefix):]] = v
            op.setup(fuse)
        self.steps = plan(self.inner, fuse)

    def init_params(self, rng):
        for op in self._parts():
            op.init_params(rng)

    def walk(self) -> list[Op]:
        return [self, *(w for op in self.inner for w in op.walk()), *([self.shortcut] if self.shortcut else []),
                *([self.act] if self.act else [])]

    def forward(self, x, training):
        h = x
        for s in self.steps:
            h = s.forward(h, training)
        z = h + (x if self.shortcut is None else self.shortcut.forward(x, training))
        return z if self.act is None else self.act.forward(z, training)

    def backward(self, dy, need_dx=True):
        d = dy if self.act is None else self.act.backward(dy)
        if self.shortcut is None:
            ds, dh = d, np.array(d, copy=True)  # inner ops may work in place on their gradient
        else:
            ds, dh = self.shortcut.backward(d, need_dx), d
        for k in range(len(self.steps) - 1, -1, -1):
            dh = self.steps[k].backward(dh, need_dx=need_dx or k > 0)
        return dh + ds if need_dx else None

    def forward_inference_grad(self, x):
        backs = []
        h = x
        for op in self.inner:
            h, b = op.forward_inference_grad(h)
            backs.append(b)
        if self.shortcut is None:
            sc, back_s = x, None
        else:
            sc, back_s = self.shortcut.forward_inference_grad(x)
        z = h + sc
        back_a = None
        if self.act is not None:
            z, back_a = self.act.forward_inference_grad(z)

        def back(d):
            if back_a is not None:
                d = back_a(d)
            ds = d if back_s is None else back_s(d)
            dh = np.array(d, copy=True)
            for b in reversed(backs):
                dh = b(dh)
            return dh + ds

        return z, back


class Residual(Layer):
    type = "Residual"
    category = "Blocks"
    description = "Adds the block's input back to the output of its layers: a skip connection (ResNet)."
    needs_spatial = True
    keeps_maps = False  # blocks do not nest
    is_block = True
    shows_feature_maps = True
    op = ResidualOp
    fields = (
        Field("shortcut", "choice", "auto", choices=SHORTCUTS,
              help='"auto": identity when the shape is kept, else a 1x1 convolution; "identity"; "projection".'),
        Field("activation", "choice", "ReLU", choices=ACTIVATIONS,
              help="Applied after the addition (null: none)."),
    )
    icon = "residual"
    palette_defaults = {"layers": [
        {"type": "Conv2D", "filters": 16, "kernel_size": 3, "padding": "same"}, {"type": "BatchNorm2D"},
        {"type": "ReLU"}, {"type": "Conv2D", "filters": 16, "kernel_size": 3, "padding": "same"},
        {"type": "BatchNorm2D"},
    ]}

    def __init__(self, config: dict[str, Any], inner: list[Layer] | None = None):
        super().__init__(config)
        self.inner: list[Layer] = list(inner or [])

    # --- config ---------------------------------------------------------------------------------
    @staticmethod
    def accepts(cls: type[Layer]) -> str | None:
        """Why layers of this type cannot go inside a block, or None when they can."""
        if cls.type == Residual.type:
            return "a Residual block cannot hold another Residual block: put the blocks one after the other"
        if not cls.keeps_maps or cls.needs_spatial is False:
            return (f"{cls.type} cannot go inside a Residual block (the block adds its input back, so its layers "
                    f"must keep channels x height x width maps): move it after the block")
        return None

    @classmethod
    def from_config(cls, config: dict[str, Any], index: int | None = None) -> Layer:
        from engine.layers import LAYER_CLASSES

        where = f"layer {index} ({cls.type})" if index is not None else cls.type
        if not isinstance(config, dict):
            raise SpecError(f"{where}: a layer must be a JSON object, got {config!r}")
        raw = config.get("layers", [])
        if not isinstance(raw, list):
            raise SpecError(f'{where}: field "layers" must be a list of layer objects, got {raw!r}')
        rest = {k: v for k, v in config.items() if k != "layers"}
        unknown = sorted(set(rest) - {f.name for f in cls.fields} - {"type", "frozen"})
        if unknown:
            raise SpecError(f'{where}: unknown field "{unknown[0]}" (allowed: layers, shortcut, activation)')
        block = super().from_config(rest, index)
        inner = []
        for j, c in enumerate(raw):
            if not isinstance(c, dict):
                raise SpecError(f"{where}: inner layer {j}: a layer must be a JSON object, got {c!r}")
            t = c.get("type")
            if t is None:
                raise SpecError(f'{where}: inner layer {j}: missing required field "type"')
            sub = LAYER_CLASSES.get(t) if isinstance(t, str) else None
            if sub is None:
                allowed = ", ".join(n for n, k in LAYER_CLASSES.items() if cls.accepts(k) is None)
                raise SpecError(f"{where}: inner layer {j}: unknown layer type {t!r} (allowed in a block: {allowed})")
            if "frozen" in c:
                raise SpecError(f'{where}: inner layer {j}: "frozen" is set on the block as a whole, '
                                "not on its inner layers")
            why = cls.accepts(sub)
            if why:
                raise SpecError(f"{where}: inner layer {j}: {why}")
            try:
                inner.append(sub.from_config(c))
            except SpecError as e:
                msg = str(e)
                msg = msg[len(t) + 2:] if msg.startswith(f"{t}: ") else msg
                raise SpecError(f"{where}: inner layer {j} ({t}): {msg}") from None
        block.inner = inner
        return block

    def to_config(self) -> dict[str, Any]:
        return {**super().to_config(), "layers": [layer.to_config() for layer in self.inner]}

    def children(self) -> list[Layer]:
        return self.inner

    def summary(self) -> str:
        n = len(self.inner)
        text = f"Residual block, {n} layer{'s' if n != 1 else ''}"
        if self.config["shortcut"] == "projection":
            text += ", projection"
        act = self.config["activation"]
        return text + (f", then {act}" if act else "")

    # --- shapes ---------------------------------------------------------------------------------
    def inner_shapes(self, input_shape: Shape) -> list[tuple[Shape, Shape]]:
        """(input, output) shape of every inner layer; LayerShapeError names the inner layer."""
        out = []
        shape = tuple(input_shape)
        for j, layer in enumerate(self.inner):
            try:
                nxt = tuple(int(d) for d in layer.compute_output_shape(shape))
            except LayerShapeError as e:
                raise LayerShapeError(f"inner layer {j} ({layer.type}): {e}") from None
            out.append((shape, nxt))
            shape = nxt
        return out

    def shortcut_stride(self, input_shape: Shape, output_shape: Shape) -> tuple[int, int] | None:
        """None for an identity shortcut, else the 1x1 projection's stride; LayerShapeError with a
        fix when no shortcut fits."""
        mode = self.config["shortcut"]
        if tuple(output_shape) == tuple(input_shape) and mode != "projection":
            return None
        if mode == "identity":
            raise LayerShapeError(
                f'shortcut "identity" needs the inner layers to keep the {fmt_shape(input_shape)} shape but they '
                f'give {fmt_shape(output_shape)}: set "shortcut" to "auto" (adds a 1x1 convolution) or keep the shape')
        (_, h, w), (_, oh, ow) = input_shape, output_shape
        if oh > h or ow > w:
            grows = ("grow the maps from {}" if oh > h and ow > w else
                     "make the maps taller ({})" if oh > h else "make the maps wider ({})")
            raise LayerShapeError(
                f"the inner layers {grows.format(f'{h}x{w} to {oh}x{ow}')}, and a shortcut can only keep or shrink "
                f"them: use less padding inside the block")
        s = (-(-h // oh), -(-w // ow))
        got = ((h - 1) // s[0] + 1, (w - 1) // s[1] + 1)
        if got != (oh, ow):
            raise LayerShapeError(
                f"no 1x1 shortcut maps {h}x{w} onto the inner layers' {oh}x{ow} (stride {s[0]}x{s[1]} gives "
                f"{got[0]}x{got[1]}): use \"same\" padding inside the block so the sizes divide evenly")
        return s

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        self.check_input(input_shape)
        if not self.inner:
            raise LayerShapeError("the block is empty: drop layers into it, or delete it")
        out = self.inner_shapes(input_shape)[-1][1]
        if len(out) != 3:  # pragma: no cover - refused when the block is read
            raise LayerShapeError("the inner layers must keep channels x height x width maps")
        self.shortcut_stride(input_shape, out)
        return out

    def projection_layer(self, input_shape: Shape, output_shape: Shape) -> Layer | None:
        """The shortcut as a Conv2D layer (1x1, with bias), or None for the identity."""
        from engine.layers.conv2d import Conv2D

        s = self.shortcut_stride(input_shape, output_shape)
        if s is None:
            return None
        return Conv2D.from_config({"filters": output_shape[0], "kernel_size": 1, "stride": list(s),
                                   "padding": "valid", "use_bias": True})

    def side_layers(self, input_shape: Shape, output_shape: Shape) -> dict[str, Layer]:
        proj = self.projection_layer(input_shape, output_shape)
        return {} if proj is None else {"shortcut": proj}

    def activation_layer(self) -> Layer | None:
        from engine.layers import layer_from_config

        act = self.config["activation"]
        return None if act is None else layer_from_config({"type": act})

    def _parts(self, input_shape: Shape) -> list[tuple[str, Layer, Shape, Shape]]:
        shapes = self.inner_shapes(input_shape)
        parts = [(f"layers.{j}", layer, a, b) for j, (layer, (a, b)) in enumerate(zip(self.inner, shapes, strict=True))]
        out = shapes[-1][1] if shapes else tuple(input_shape)
        proj = self.projection_layer(input_shape, out) if shapes else None
        if proj is not None:
            parts.append(("shortcut", proj, tuple(input_shape), out))
        return parts

    def param_shapes(self, input_shape: Shape) -> dict[str, Shape]:
        return {f"{p}.{k}": v for p, layer, a, _ in self._parts(input_shape) for k, v in layer.param_shapes(a).items()}

    def buffer_shapes(self, input_shape: Shape) -> dict[str, Shape]:
        return {f"{p}.{k}": v for p, layer, a, _ in self._parts(input_shape) for k, v in layer.buffer_shapes(a).items()}

    def macs(self, input_shape: Shape, output_shape: Shape) -> int:
        return sum(layer.macs(a, b) for _, layer, a, b in self._parts(input_shape))

    # --- exporters ------------------------------------------------------------------------------
    def to_onnx(self, g, x, in_shape, name):
        h = x
        parts = self._parts(in_shape)
        for p, layer, a, _ in parts:
            if p != "shortcut":
                h = layer.to_onnx(g, h, a, f"{name}.{p}")
        s = x
        if parts[-1][0] == "shortcut":
            s = parts[-1][1].to_onnx(g, x, in_shape, f"{name}.shortcut")
        out = g.node("Add", [h, s], f"{name}.add", f"{name}.add")
        act = self.activation_layer()
        return out if act is None else act.to_onnx(g, out, parts[-1][3], f"{name}.activation")

    def torch_module(self, in_shape):
        parts = self._parts(in_shape)
        lines = ["Residual(["]
        for p, layer, a, _ in parts:
            if p != "shortcut":
                lines.append(f"    {layer.torch_module(a)},  # {p.split('.')[1]}: {layer.summary()}")
        args = []
        if parts[-1][0] == "shortcut":
            args.append(f"shortcut={parts[-1][1].torch_module(in_shape)}")
        act = self.activation_layer()
        if act is not None:
            args.append(f"activation={act.torch_module(parts[-1][3])}")
        lines.append("]" + "".join(f", {a}" for a in args) + ")")
        return "\n".join(lines)

    torch_helpers = '''class Residual(nn.Module):
    """activation(layers(x) + shortcut(x)): a residual block; the shortcut is the identity or a
    1x1 convolution, so the state_dict names are layers.{j}.* and shortcut.*."""

    def __init__(self, layers: list[nn.Module], shortcut: nn.Module | None = None,
                 activation: nn.Module | None = None):
        super().__init__()
        self.layers = nn.Sequential(*layers)
        self.shortcut = shortcut
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layers(x) + (x if self.shortcut is None else self.shortcut(x))
        return y if self.activation is None else self.activation(y)'''

    # --- ONNX import ----------------------------------------------------------------------------
    @classmethod
    def from_onnx_branch(cls, c: Any) -> tuple[Any, list] | None:
        """The importer's rule (engine.model_import) for a tensor x read by two nodes: x -> layers ->
        Add with x, or with a 1x1 Conv of x; an activation right after the Add joins the block.
        Returns (the Add, [(block config, arrays)]) with `c.current` after the block and `c.shape`
        still x's, or None when the pattern does not match."""
        from engine.layers import LAYER_CLASSES

        x, in_shape = c.current, tuple(c.shape)
        users = c.users(x)
        if len(users) != 2 or len(in_shape) != 3:
            return None
        found = None
        def one_by_one(u: Any) -> bool:
            w = c.consts.get(u.input[1]) if len(u.input) > 1 else None
            return w is not None and w.shape[2:] == (1, 1)

        # an Add reading x first, then a 1x1 Conv (an inner chain of one Conv also feeds the Add)
        for side in sorted(users, key=lambda u: (u.op_type != "Add", not one_by_one(u))):
            add, conv = (side, None) if side.op_type == "Add" else (None, side)
            if conv is not None:
                after = c.users(conv.output[0]) if conv.op_type == "Conv" and conv.output else []
                add = after[0] if len(after) == 1 and after[0].op_type == "Add" else None
            if add is None:
                continue
            joined = x if conv is None else conv.output[0]
            live = [t for t in add.input if t and t not in c.consts]
            end = next((t for t in live if t != joined), None)
            if len(live) == 2 and joined in live and end is not None and len(c.consumers.get(end, [])) == 1:
                found = add, conv, end
                break
        if found is None:
            return None
        add, conv, end = found
        c.claimed += [add, *([conv] if conv is not None else [])]
        inner = c.read(stop=end)
        if c.current != end:
            raise c.error(add, f"the layers from {x!r} do not lead to its input {end!r}: not a residual block")
        out_shape = tuple(c.shape)
        arrays = {f"layers.{j}.{k}": v for j, (_, arr) in enumerate(inner) for k, v in arr.items()}
        mode = "auto"
        if conv is None and out_shape != in_shape:
            raise c.error(add, f"it adds {fmt_shape(out_shape)} maps to the block's {fmt_shape(in_shape)} input")
        if conv is not None:
            c.shape = in_shape
            (sc, arr), = c.rules["Conv"](c, conv)  # the importer's own Conv rule
            if sc["kernel_size"] != 1 or sc["padding"] != "valid" or sc["filters"] != out_shape[0]:
                raise c.error(conv, f"a shortcut must be a 1x1 convolution without padding onto {out_shape[0]} "
                                    f"channels to become a Residual block's projection")
            mode = "auto" if out_shape != in_shape else "projection"
            probe = cls.from_config({"shortcut": mode, "activation": None, "layers": [cfg for cfg, _ in inner]})
            assert isinstance(probe, Residual)
            try:
                stride = probe.shortcut_stride(in_shape, out_shape)
            except LayerShapeError as e:
                raise c.error(conv, str(e)) from None
            if stride is None or tuple(stride) != pair_of(sc["stride"]):
                raise c.error(conv, f"its stride {sc['stride']} differs from the Residual block's shortcut "
                                    f"stride {list(stride)} for {fmt_shape(in_shape)} -> {fmt_shape(out_shape)}")
            arrays["shortcut.weight"] = arr["weight"]
            arrays["shortcut.bias"] = arr.get("bias", np.zeros(out_shape[0], np.float32))
        c.current, c.shape = add.output[0], out_shape
        activation = None
        nxt = c.users(add.output[0])
        if add.output[0] != c.output and len(nxt) == 1 and nxt[0].name not in c.stop_at:
            node = nxt[0]
            for t in filter(None, ACTIVATIONS):  # the block's activations take their defaults
                act = LAYER_CLASSES[t]
                if node.op_type in getattr(act, "onnx_import_ops", ()):
                    (cfg, _), = act.from_onnx(c, node)
                    if act.from_config({}).same_as_imported(act.from_config(cfg), out_shape):
                        activation = t
                        c.advance(node)
                    break
        c.shape = in_shape
        cfg = {"type": cls.type, "shortcut": mode, "activation": activation, "layers": [cfg for cfg, _ in inner]}
        return add, [(cfg, arrays)]

    def same_as_imported(self, other: Layer, input_shape: Shape) -> bool:
        # The inner layers are compared one by one by the importer; "auto" and an explicit mode
        # that resolve to the same shortcut export the same graph.
        if not isinstance(other, Residual) or self.config["activation"] != other.config["activation"]:
            return False
        out, other_out = self.compute_output_shape(input_shape), other.compute_output_shape(input_shape)
        return (out == other_out and (self.projection_layer(input_shape, out) is None)
                == (other.projection_layer(input_shape, out) is None))

    # --- explanation panel and the stack's end-of-block row ------------------------------------
    def shortcut_text(self, input_shape: Shape, output_shape: Shape) -> tuple[str, str]:
        """What reaches the addition: a few words that fit the stack's end-of-block row, and a
        sentence with the figures (its tooltip)."""
        proj = self.projection_layer(input_shape, output_shape)
        if proj is None:
            return "input (identity shortcut)", f"the input {fmt_shape(input_shape)} is added unchanged (free)"
        sh, sw = proj.stride
        stride = "" if (sh, sw) == (1, 1) else f", stride {sh if sh == sw else f'{sh}x{sw}'}"
        params = output_shape[0] * input_shape[0] + output_shape[0]
        return (f"1x1 conv shortcut{stride}",
                f"a 1x1 convolution (with bias{stride}) maps the input {fmt_shape(input_shape)} onto "
                f"{fmt_shape(output_shape)}: {params:,} parameters")

    def explain_params(self, info):
        if not info.non_trainable:
            return None
        return (f"<b>Parameters:</b> {info.trainable:,} learned + {info.non_trainable:,} running statistics of "
                f"its BatchNorm layers (not trained).")

    def explain(self, info, spec, index):
        in_shape, out = info.input_shape, info.output_shape
        act = self.config["activation"]
        output = (f"Output = {act} applied to <tt>F(x) + shortcut(x)</tt>" if act else
                  "Output = <tt>F(x) + shortcut(x)</tt>, with no activation after the addition")
        n = len(self.inner)
        inside = "the layer inside computes F" if n == 1 else f"the {n} layers inside compute F"
        lines = [f"{output}: {inside}; the block's input x is added back to their result. "
                 f"<tt>{fmt_shape(out)} + {fmt_shape(out)}</tt> values are added one to one."]
        lines.append("<b>Why:</b> the addition passes the gradient straight back to earlier layers (its "
                     "derivative is 1), so deep stacks keep learning; each block only has to learn a correction "
                     "to its input.")
        proj = self.projection_layer(in_shape, out)
        if proj is None:
            lines.append(f"<b>Shortcut:</b> the identity, since F keeps the {fmt_shape(in_shape)} shape: free.")
        else:
            c, (sh, sw) = in_shape[0], proj.stride
            p = out[0] * c + out[0]
            why = (f"F keeps the {fmt_shape(in_shape)} shape but \"projection\" asks for a learned shortcut:"
                   if tuple(in_shape) == tuple(out) else f"F turns {fmt_shape(in_shape)} into {fmt_shape(out)}, so")
            lines.append(f"<b>Shortcut:</b> {why} a 1x1 "
                         f"convolution with stride {sh if sh == sw else f'{sh}x{sw}'} maps the input onto that shape "
                         f"before the addition. It costs <tt>{out[0]} x {c} + {out[0]} = {p:,}</tt> parameters and "
                         f"{math.prod(out) * c:,} multiply-adds per image.")
        return lines
