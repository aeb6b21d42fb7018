"""The explanation panel: what the selected layer does, with the user's own numbers.

Every number comes from the engine (engine.shapes.infer's LayerInfo and layer.geometry); this
module only writes them into the textbook formulas, so the formula always ends with the shape the
stack shows. `explain_html` is Qt-free so its text can be tested directly.
"""

from __future__ import annotations

import html
import math
from typing import Any

from PySide6.QtCore import QPointF, QRectF, Qt, QUrl
from PySide6.QtGui import QBrush, QColor, QImage, QPainter, QPen
from PySide6.QtWidgets import QTextBrowser, QWidget

from designer.document import Document
from engine.layers import LAYER_CLASSES, fmt_shape
from engine.shapes import LayerInfo, human_bytes

ACTIVATION_FORMULAS = {
    "ReLU": "y = max(0, x)",
    "LeakyReLU": "y = x if x &gt; 0, else {alpha} · x",
    "Sigmoid": "y = 1 / (1 + e<sup>−x</sup>)",
    "Tanh": "y = (e<sup>x</sup> − e<sup>−x</sup>) / (e<sup>x</sup> + e<sup>−x</sup>)",
    "Softmax": "p<sub>i</sub> = e<sup>x<sub>i</sub></sup> / Σ<sub>j</sub> e<sup>x<sub>j</sub></sup>",
}
SKIP_FOR_RAW = ("ReLU", "LeakyReLU", "Sigmoid", "Tanh", "Dropout", "BatchNorm1D", "BatchNorm2D")


def _n(v: int) -> str:
    return f"{v:,}"


def _size_formula(size: int, before: int, after: int, k: int, s: int, out: int) -> str:
    pad = "" if before == after == 0 else (f" + 2*{before}" if before == after else f" + {before} + {after}")
    inner = size + before + after - k
    exact = inner % s == 0
    lhs = f"({size}{pad} - {k}) / {s} + 1" if exact else f"floor(({size}{pad} - {k}) / {s}) + 1"
    return f"{lhs} = {out}"


def _geometry_lines(layer, info: LayerInfo) -> list[str]:
    geo = layer.geometry(info.input_shape)
    if geo is None or info.output_shape is None:
        return []
    (kh, kw), (sh, sw), (pt, pb, pl, pr) = geo
    _, ih, iw = info.input_shape
    _, oh, ow = info.output_shape
    hline = _size_formula(ih, pt, pb, kh, sh, oh)
    wline = _size_formula(iw, pl, pr, kw, sw, ow)
    what = "kernel" if layer.type == "Conv2D" else "window"
    out = ["<b>Output size</b> = (input + padding − kernel) / stride + 1:"]
    if hline.replace(str(ih), "#", 1) == wline.replace(str(iw), "#", 1) and ih == iw:
        out.append(f"<tt>&nbsp;&nbsp;height and width: {hline}</tt>")
    else:
        out.append(f"<tt>&nbsp;&nbsp;height: {hline}</tt>")
        out.append(f"<tt>&nbsp;&nbsp;width:&nbsp; {wline}</tt>")
    pad_desc = "no padding" if not any((pt, pb, pl, pr)) else (
        f"padding top {pt}, bottom {pb}, left {pl}, right {pr}")
    out.append(f"The {kh}x{kw} {what} moves {sh if sh == sw else f'{sh}x{sw}'} pixel"
               f"{'s' if max(sh, sw) > 1 else ''} at a time, {pad_desc}.")
    return out


def _receptive_line(info: LayerInfo) -> str:
    if info.receptive_field is None:
        return ("<b>Receptive field:</b> every value now depends on the whole input image "
                "(the maps were flattened or pooled globally).")
    rh, rw = info.receptive_field
    jh, jw = info.jump or (1, 1)
    jump = f"{jh}" if jh == jw else f"{jh}x{jw}"
    return (f"<b>Receptive field so far:</b> each output value sees a {rh}x{rw} patch of the input image; "
            f"neighbouring outputs are {jump} input pixel{'s' if max(jh, jw) > 1 else ''} apart.")


def _params_line(info: LayerInfo) -> str:
    shapes = info.param_shapes
    if not shapes:
        return "<b>Parameters:</b> none: nothing in this layer is learned."
    if info.type == "Conv2D":
        f, c, kh, kw = shapes["weight"]
        text = f"{f} x ({c}*{kh}*{kw})"
        if "bias" in shapes:
            text += f" + {f}"
        return f"<b>Parameters</b> = filters x (in-channels*kh*kw) + bias: <tt>{text} = {_n(info.trainable)}</tt>"
    if info.type == "Dense":
        u, n = shapes["weight"]
        text = f"{u} x {n}" + (f" + {u}" if "bias" in shapes else "")
        return f"<b>Parameters</b> = units x inputs + bias: <tt>{text} = {_n(info.trainable)}</tt>"
    if info.type.startswith("BatchNorm"):
        c = shapes["weight"][0]
        return (f"<b>Parameters:</b> <tt>2 x {c} = {_n(info.trainable)}</tt> learned (scale γ and shift β per "
                f"channel) + <tt>2 x {c} = {_n(info.non_trainable)}</tt> running statistics (not trained).")
    return f"<b>Parameters:</b> {_n(info.trainable)}"


def _raw_input_comparison(doc: Document, index: int, info: LayerInfo) -> str | None:
    """For the first Dense after a Flatten: what the same layer would cost on the raw pixels."""
    j = index - 1
    while j >= 0 and doc.layers[j].type in SKIP_FOR_RAW:
        j -= 1
    if j < 0 or doc.layers[j].type != "Flatten" or "weight" not in info.param_shapes:
        return None
    units, n = info.param_shapes["weight"]
    raw = math.prod(doc.spec.input_shape)
    bias = units if "bias" in info.param_shapes else 0
    raw_params = units * raw + bias
    c, h, w = doc.spec.input_shape
    if raw == n:
        return (f"<b>Raw pixels:</b> this Dense sees the {c}x{h}x{w} input directly, so each of its {units} units "
                f"has its own weight for every one of the {_n(raw)} pixels ({_n(info.trainable)} parameters). "
                "Convolution and pooling before it would shrink that input and share weights across positions.")
    ratio = raw_params / max(info.trainable, 1)
    cmp = f"{ratio:.1f}x as many" if ratio >= 1 else f"{1 / ratio:.1f}x fewer"
    return (f"<b>Why convolution and pooling:</b> on the raw {c}x{h}x{w} input ({_n(raw)} values) the same "
            f"Dense {units} would need <tt>{units} x {raw}{f' + {units}' if bias else ''} = {_n(raw_params)}</tt> "
            f"parameters; after the layers above it sees {_n(n)} values and needs {_n(info.trainable)} "
            f"({cmp}).")


def explain_html(doc: Document, index: int | None) -> str:
    """The explanation of layer `index` (-1 = the input row, None = nothing selected) as HTML."""
    # A formula broken across lines is hard to read: keep each one on a line of its own.
    return _explain(doc, index).replace("<tt>", "<tt style='white-space:nowrap'>")


def _explain(doc: Document, index: int | None) -> str:
    if index is None:
        return ("<p>Select a layer to see what it does, with your numbers: the output-size formula, the "
                "parameter count, and how much of the image each value sees.</p>")
    inf = doc.inference
    if index < 0:
        c, h, w = doc.spec.input_shape
        kind = "grayscale" if c == 1 else "RGB" if c == 3 else f"{c}-channel"
        data = f"<p>Dataset folder: <code>{html.escape(str(doc.data_dir))}</code></p>" if doc.data_dir else ""
        return (f"<p><b>Input:</b> {kind} images of {h}x{w} pixels: <tt>{c} x {h} x {w} = {_n(c * h * w)}</tt> "
                f"values per image ({human_bytes(4 * c * h * w)} as float32).</p>{data}"
                "<p>Every image is resized to this size before it enters the network.</p>")
    layer = doc.layers[index]
    info = inf.layers[index]
    cls = LAYER_CLASSES[layer.type]
    parts = [f"<p><b>{html.escape(info.summary)}</b>: {html.escape(cls.description)}</p>"]
    if info.error:
        parts.append(f"<p style='color:#b00000'><b>Problem:</b> {html.escape(info.error)}</p>")
        if info.input_shape is None:
            return "".join(parts)
    in_shape, out_shape = info.input_shape, info.output_shape
    lines: list[str] = []
    if in_shape is not None:
        lines.append(f"<b>Input</b> {fmt_shape(in_shape)} → <b>output</b> {fmt_shape(out_shape)}"
                     + (f" = {_n(info.activation_size)} values per image" if out_shape else ""))
    if info.error:
        parts.append("<p>" + "<br>".join(lines) + "</p>")
        return "".join(parts)
    t = layer.type
    if layer.geometry(in_shape) is not None:
        lines += _geometry_lines(layer, info)
    elif t == "Flatten":
        lines.append(f"<tt>{' x '.join(map(str, in_shape))} = {_n(out_shape[0])}</tt> values in one vector "
                     "(channel by channel, row by row).")
    elif t == "GlobalAvgPool2D":
        c, h, w = in_shape
        lines.append(f"Each of the {c} maps ({h}x{w}) is averaged to one number. A Flatten here would pass "
                     f"{_n(c * h * w)} values to the next layer instead of {c}.")
    elif t in ACTIVATION_FORMULAS:
        formula = ACTIVATION_FORMULAS[t].format(alpha=layer.config.get("alpha", ""))
        lines.append(f"<tt>{formula}</tt>, applied to each value; the shape does not change.")
        if t == "Softmax":
            lines.append("The outputs are positive and sum to 1: class probabilities. For training, it is "
                         "folded into the cross-entropy loss.")
    elif t == "Dropout":
        p = layer.config["rate"]
        keep = 1 - p
        lines.append(f"While training, each value is set to 0 with probability {p:g} and the others are scaled "
                     f"by 1 / {keep:g} = {1 / keep:.3g}; at inference the layer does nothing.")
    if t in ("Conv2D", "Dense"):
        lines.append(f"<b>Multiply-adds per image:</b> {_n(info.macs)}")
    lines.append(_params_line(info))
    raw = _raw_input_comparison(doc, index, info) if t == "Dense" else None
    if raw:
        lines.append(raw)
    if out_shape is not None and len(out_shape) == 3 or info.receptive_field is not None:
        lines.append(_receptive_line(info))
    parts.append("<p>" + "<br>".join(lines) + "</p>")
    return "".join(parts)


DIAGRAM_URL = "diagram:kernel"
BLUE = QColor(33, 113, 181)
ORANGE = QColor(217, 95, 2)


def render_diagram(geo: tuple, input_hw: tuple[int, int], output_hw: tuple[int, int], cell: float = 15.0,
                   dpr: float = 1.0) -> QImage:
    """The kernel over the top-left corner of the (padded) input grid: padding cells grey, the
    first window blue, the next window one stride further in orange dashes, and the corner of
    the output grid they produce. Drawn into an image that the explanation text embeds."""
    (kh, kw), (sh, sw), (pt, pb, pl, pr) = geo
    ih, iw = input_hw
    oh, ow = output_hw
    rows = min(pt + ih + pb, max(kh + sh + 1, 5), 12)
    cols = min(pl + iw + pr, max(kw + sw + 1, 5), 12)
    margin = 4.0
    width = margin * 2 + (cols + 2.5 + min(ow, 3)) * cell
    height = margin * 2 + rows * cell
    image = QImage(int(width * dpr), int(height * dpr), QImage.Format.Format_ARGB32_Premultiplied)
    image.setDevicePixelRatio(dpr)
    image.fill(Qt.GlobalColor.transparent)
    p = QPainter(image)
    p.setRenderHint(QPainter.RenderHint.Antialiasing)
    grid = QColor(170, 170, 170)
    x0 = y0 = margin
    for r in range(rows):
        for c in range(cols):
            is_pad = r < pt or c < pl or r >= pt + ih or c >= pl + iw
            rect = QRectF(x0 + c * cell, y0 + r * cell, cell, cell)
            p.fillRect(rect, QColor(222, 222, 222) if is_pad else QColor(255, 255, 255))
            p.setPen(QPen(grid, 0.8))
            p.drawRect(rect)
    fill = QColor(BLUE)
    fill.setAlpha(70)
    first = QRectF(x0, y0, min(kw, cols) * cell, min(kh, rows) * cell)
    p.fillRect(first, QBrush(fill))
    p.setPen(QPen(BLUE, 2.2))
    p.drawRect(first)
    if sw < cols:
        p.setPen(QPen(ORANGE, 2.0, Qt.PenStyle.DashLine))
        p.drawRect(QRectF(x0 + sw * cell, y0 + 2, min(kw, cols - sw) * cell, min(kh, rows) * cell - 4))
    ox = x0 + cols * cell + 2.5 * cell
    arrow_y = y0 + cell * 1.5
    p.setPen(QPen(QColor(90, 90, 90), 1.2))
    p.drawLine(QPointF(x0 + cols * cell + 0.5 * cell, arrow_y), QPointF(ox - 0.5 * cell, arrow_y))
    p.drawLine(QPointF(ox - 0.5 * cell, arrow_y), QPointF(ox - 0.9 * cell, arrow_y - 0.3 * cell))
    p.drawLine(QPointF(ox - 0.5 * cell, arrow_y), QPointF(ox - 0.9 * cell, arrow_y + 0.3 * cell))
    next_fill = QColor(ORANGE)
    next_fill.setAlpha(90)
    for r in range(min(oh, 3)):
        for c in range(min(ow, 3)):
            rect = QRectF(ox + c * cell, y0 + r * cell, cell, cell)
            color = fill if (r, c) == (0, 0) else next_fill if (r, c) == (0, 1) else QColor(255, 255, 255)
            p.fillRect(rect, color)
            p.setPen(QPen(grid, 0.8))
            p.drawRect(rect)
    p.end()
    return image


def diagram_legend_html(geo: tuple, output_hw: tuple[int, int]) -> str:
    (kh, kw), (sh, sw), (pt, pb, pl, pr) = geo
    stride = f"{sh}" if sh == sw else f"{sh}x{sw}"
    oh, ow = output_hw
    sq = "<span style='color:{}'>&#9632;</span>"
    pads = (f"{sq.format('#b4b4b4')} zero padding: top {pt}, bottom {pb}, left {pl}, right {pr}"
            if any((pt, pb, pl, pr)) else "no padding")
    return (f"{sq.format(BLUE.name())} the {kh}x{kw} window at its first position<br>"
            f"{sq.format(ORANGE.name())} the next position, stride {stride} to the right<br>"
            f"{pads}<br>each window position makes one of the {oh}x{ow} output values (right)")


class ExplainPanel(QTextBrowser):
    """The explanation text with the kernel/stride/padding diagram embedded, scrolling as one."""

    def __init__(self, doc: Document, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.doc = doc
        self._index: int | None = None
        self._diagram: QImage | None = None
        self.setOpenLinks(False)
        self.setAccessibleName("Explanation")

    def set_index(self, index: int | None) -> None:
        self._index = index
        self.refresh()

    def loadResource(self, kind: int, url: QUrl) -> Any:  # noqa: N802 - Qt's name
        if url.toString() == DIAGRAM_URL and self._diagram is not None:
            return self._diagram
        return super().loadResource(kind, url)

    def refresh(self) -> None:
        idx = self._index
        if idx is not None and idx >= len(self.doc):
            idx = None
        body = explain_html(self.doc, idx)
        self._diagram = None
        if idx is not None and idx >= 0:
            info = self.doc.inference.layers[idx]
            if info.valid and info.input_shape is not None:
                geo = self.doc.layers[idx].geometry(info.input_shape)
                if geo is not None:
                    cell = max(self.fontMetrics().height() * 1.1, 12.0)
                    self._diagram = render_diagram(geo, info.input_shape[1:], info.output_shape[1:], cell,
                                                   self.devicePixelRatioF())
                    body += (f"<p><b>Kernel, stride and padding</b> (top-left corner of the input):<br>"
                             f"<img src='{DIAGRAM_URL}'><br>{diagram_legend_html(geo, info.output_shape[1:])}</p>")
        scroll = self.verticalScrollBar().value()
        self.document().clear()  # drops the cached diagram image too
        self.setHtml(body)
        self.verticalScrollBar().setValue(scroll)
