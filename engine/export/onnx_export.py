"""ONNX export: one node (or two) per layer, weights under the app's own names.

Written with the reference `onnx` package and checked with `onnx.checker`. The input is named
`input`, float32 (N, C, H, W) *after* the model's preprocessing, with a dynamic batch dimension;
the output `probabilities` matches the app's `predict_proba` (a Dense(1) + Sigmoid model gives
[1 - p, p]). Class names and preprocessing travel in `metadata_props` so a user of the bare
.onnx file knows how to feed it; a sidecar folder beside it holds sample images, the app's
probabilities for them and a predict.py that checks onnxruntime reproduces them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from engine.export.common import AtomicFolder, ExportError, metadata, write_file, write_samples
from engine.export.scripts import fill, input_format, write_predict_scripts
from engine.safeio import printable
from engine.shapes import infer
from engine.trained import TrainedModel

#: A recent opset that current onnxruntime releases run; the layers here need nothing newer.
OPSET = 21
#: The oldest opset whose Softmax works along one axis (13), as the graphs here assume.
MIN_OPSET = 13


class OnnxGraph:
    """What a layer's `to_onnx` writes into: nodes and initializers (weights by the app's names)."""

    def __init__(self, state: dict[str, np.ndarray]) -> None:
        self.state = state
        self.nodes: list[Any] = []
        self.inits: list[Any] = []

    def node(self, op_type: str, inputs: list[str], name: str, out: str, **attrs: Any) -> str:
        """Add one node; returns its output tensor's name."""
        from onnx import helper

        self.nodes.append(helper.make_node(op_type, inputs, [out], name=name, **attrs))
        return out

    def constant(self, name: str, arr: np.ndarray) -> str:
        from onnx import numpy_helper

        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr, dtype=np.float32), name=name))
        return name

    def weight(self, name: str) -> str:
        """The model's array `name` ("layers.3.weight") as an initializer of that name."""
        return self.constant(name, self.state[name])


def build_onnx(src: TrainedModel, opset: int = OPSET) -> Any:
    """The checked onnx.ModelProto of a model."""
    import onnx
    from onnx import TensorProto, helper

    if not MIN_OPSET <= opset <= onnx.defs.onnx_opset_version():
        raise ExportError(f"opset {opset} is not supported: choose {MIN_OPSET} to {onnx.defs.onnx_opset_version()}")

    inf = infer(src.spec)
    g = OnnxGraph(src.state)
    cur = "input"
    for i, layer in enumerate(src.spec.layers):
        try:
            cur = layer.to_onnx(g, cur, inf.layers[i].input_shape, f"layers.{i}")
        except NotImplementedError as e:
            raise ExportError(f"layer {i}: {e}") from None
    nodes, inits = g.nodes, g.inits

    cur = _probabilities_tail(src, cur, nodes, inits)
    n_classes = len(src.classes)
    c, h, w = src.input_shape
    graph = helper.make_graph(
        nodes,
        _graph_name(src),
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", c, h, w])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", n_classes])],
        initializer=inits,
    )
    meta = metadata(src)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset)],
        producer_name="cnn-designer",
        producer_version=str(meta["engine_version"]),
        doc_string=_doc(src),
    )
    # the oldest IR version that can carry this opset, so older runtimes still load the file
    model.ir_version = min(onnx.IR_VERSION, _ir_for(opset))
    props = {
        "classes": json.dumps(src.classes),
        "preprocessing": json.dumps(src.preprocessing.to_dict()),
        "input_format": input_format(src),
        "output_format": meta["output"],
        "architecture": json.dumps(src.spec.to_dict()),
    }
    for k, v in props.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))
    onnx.checker.check_model(model, full_check=True)
    # every intermediate tensor's shape in the file, so Netron and friends show them per layer
    return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)


def _ir_for(opset: int) -> int:
    from onnx.helper import VERSION_TABLE

    irs = [ir for _release, ir, ai_onnx, *_ in VERSION_TABLE if ai_onnx >= opset]
    return min(irs) if irs else 10


def _probabilities_tail(src: TrainedModel, cur: str, nodes: list[Any], inits: list[Any]) -> str:
    """Make the graph's output the app's probabilities, whatever the last layer is."""
    from onnx import helper, numpy_helper

    if src.binary:  # (N, 1) probability of classes[1] -> (N, 2) = [1 - p, p]
        inits.append(numpy_helper.from_array(np.ones((1, 1), np.float32), name="one"))
        nodes.append(helper.make_node("Sub", ["one", cur], ["p_class0"], name="binary.complement"))
        nodes.append(helper.make_node("Concat", ["p_class0", cur], ["probabilities"], name="binary.concat", axis=1))
        return "probabilities"
    if src.spec.layers[-1].output_head != "softmax":  # raw scores: the app turns them into probabilities with a softmax
        nodes.append(helper.make_node("Softmax", [cur], ["probabilities"], name="probabilities", axis=1))
        return "probabilities"
    nodes.append(helper.make_node("Identity", [cur], ["probabilities"], name="probabilities"))
    return "probabilities"


def _graph_name(src: TrainedModel) -> str:
    return "".join(ch if ch.isalnum() or ch in "_-" else "_" for ch in src.name) or "model"


def _doc(src: TrainedModel) -> str:
    return (
        f"{src.name}: exported by CNN Designer. Input 'input' = {input_format(src)}. "
        f"Output 'probabilities' (N, {len(src.classes)}) over classes {src.classes}."
    )


def export_onnx(
    src: TrainedModel, out: Path, samples: list[Path] | None = None, opset: int | None = None
) -> list[Path]:
    """Write MODEL.onnx and its proof folder MODEL_predict/; returns the written paths."""
    out = Path(out)
    if not out.parent.is_dir():
        raise ExportError(f"folder {out.parent} does not exist")
    model = build_onnx(src, opset or OPSET)
    side = out.parent / f"{out.stem}_predict"
    with AtomicFolder(side) as tmp:
        write_samples(tmp, src, samples)
        (tmp / "classes.json").write_text(json.dumps(src.classes, indent=1) + "\n", encoding="utf-8")
        write_predict_scripts(tmp, src, backend="onnx", model_file=f"../{out.name}")
        (tmp / "README.md").write_text(fill("README_onnx.md.in", src, __ONNX__=printable(out.name)), encoding="utf-8")
        write_file(out, model.SerializeToString())
    return [out, side]
