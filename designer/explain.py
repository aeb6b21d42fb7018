"""The explanation panel: what the selected layer does, with the user's own numbers.

Every number comes from the engine (engine.shapes.infer's LayerInfo and layer.geometry); this
module only writes them into the textbook formulas, so the formula always ends with the shape the
stack shows. `explain_html` is Qt-free so its text can be tested directly.
"""

from __future__ import annotations

import html
from typing import Any

from PySide6.QtCore import QPointF, QRectF, Qt, QUrl
from PySide6.QtGui import QBrush, QColor, QImage, QPainter, QPen
from PySide6.QtWidgets import QTextBrowser, QWidget

from designer.document import Document
from engine.layers import fmt_shape
from engine.shapes import LayerInfo, human_bytes


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
    what = "kernel" if layer.window_word == "kernel" else "window"
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


def _params_line(layer, info: LayerInfo) -> str:
    line = layer.explain_params(info) if info.param_shapes else None
    if line is not None:
        return line
    if not info.param_shapes:
        return "<b>Parameters:</b> none: nothing in this layer is learned."
    return f"<b>Parameters:</b> {_n(info.trainable)}"


def explain_html(doc: Document, index: int | None, inner: int | None = None) -> str:
    """The explanation of layer `index` (-1 = the input row, None = nothing selected; `inner`: that
    block's inner layer) as HTML."""
    # A formula broken across lines is hard to read: keep each one on a line of its own.
    return _explain(doc, index, inner).replace("<tt>", "<tt style='white-space:nowrap'>")


def _layer_and_info(doc: Document, index: int, inner: int | None) -> tuple[Any, LayerInfo | None]:
    layer, info = doc.layers[index], doc.inference.layers[index]
    if inner is None:
        return layer, info
    return layer.children()[inner], (info.inner[inner] if inner < len(info.inner) else None)


def _explain(doc: Document, index: int | None, inner: int | None = None) -> str:
    if index is None:
        return ("<p>Select a layer to see what it does, with your numbers: the output-size formula, the "
                "parameter count, and how much of the image each value sees.</p>")
    if index < 0:
        c, h, w = doc.spec.input_shape
        kind = "grayscale" if c == 1 else "RGB" if c == 3 else f"{c}-channel"
        data = f"<p>Dataset folder: <code>{html.escape(str(doc.data_dir))}</code></p>" if doc.data_dir else ""
        return (f"<p><b>Input:</b> {kind} images of {h}x{w} pixels: <tt>{c} x {h} x {w} = {_n(c * h * w)}</tt> "
                f"values per image ({human_bytes(4 * c * h * w)} as float32).</p>{data}"
                "<p>Every image is resized to this size before it enters the network.</p>")
    layer, info = _layer_and_info(doc, index, inner)
    if info is None:
        return (f"<p><b>{html.escape(layer.summary())}</b>: {html.escape(layer.description)}</p>"
                f"<p>Its shape is known once block {index} above it can be computed.</p>")
    where = "" if inner is None else f" (inside block {index}, whose input is added back after its last layer)"
    parts = [f"<p><b>{html.escape(info.summary)}</b>{where}: {html.escape(layer.description)}</p>"]
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
    if layer.geometry(in_shape) is not None:
        lines += _geometry_lines(layer, info)
    lines += layer.explain(info, doc.spec, index if inner is None else -1)
    if info.macs:
        lines.append(f"<b>Multiply-adds per image:</b> {_n(info.macs)}")
    lines.append(_params_line(layer, info))
    lines += layer.explain_after(info, doc.spec, index if inner is None else -1)
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
        self._inner: int | None = None
        self._diagram: QImage | None = None
        self.setOpenLinks(False)
        self.setAccessibleName("Explanation")

    def set_index(self, index: int | None, inner: int | None = None) -> None:
        self._index = index
        self._inner = inner
        self.refresh()

    def loadResource(self, kind: int, url: QUrl) -> Any:  # noqa: N802 - Qt's name
        if url.toString() == DIAGRAM_URL and self._diagram is not None:
            return self._diagram
        return super().loadResource(kind, url)

    def refresh(self) -> None:
        idx = self._index
        if idx is not None and idx >= len(self.doc):
            idx = None
        inner = self._inner if idx is not None else None
        if idx is not None and inner is not None and (
                idx < 0 or not self.doc.layers[idx].is_block or inner >= len(self.doc.layers[idx].children())):
            inner = None
        body = explain_html(self.doc, idx, inner)
        self._diagram = None
        if idx is not None and idx >= 0:
            layer, info = _layer_and_info(self.doc, idx, inner)
            if info is not None and info.valid and info.input_shape is not None:
                geo = layer.geometry(info.input_shape)
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
