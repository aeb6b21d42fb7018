"""Layer icons, drawn with QPainter so they stay crisp at any DPI and need no image files.

Each category has a colour (also used by the stack's row markers) and each layer type names a
pictogram of what it does to the data (a kernel on a grid, four cells becoming one, a ReLU curve,
connected nodes); both come from the layer registry (engine.layers) as plain data. A type may
instead carry its own SVG drawing.
"""

from __future__ import annotations

from functools import cache

from PySide6.QtCore import QByteArray, QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QIcon, QPainter, QPainterPath, QPen, QPixmap
from PySide6.QtSvg import QSvgRenderer

from engine.layers import CATEGORIES, LAYER_CLASSES

INPUT_COLOR = QColor(90, 90, 90)


def category_color(category: str) -> QColor:
    if category == "Input":
        return INPUT_COLOR
    cat = CATEGORIES.get(category)
    return QColor(cat.color) if cat is not None else QColor(80, 80, 80)


def _pictogram(kind: str) -> str:
    """The pictogram (or SVG) of a layer type, a category, or the input row."""
    cls = LAYER_CLASSES.get(kind)
    if cls is not None:
        return cls.icon
    cat = CATEGORIES.get(kind)
    if cat is not None:
        return cat.icon
    return "grid" if kind == "Input" else ""


def _draw(kind: str, p: QPainter, color: QColor) -> None:
    """Paint pictogram `kind` (a name below, or an SVG document) in a 32x32 box."""
    if kind.lstrip().startswith("<svg"):
        QSvgRenderer(QByteArray(kind.replace("{color}", color.name()).encode("utf-8"))).render(p, QRectF(0, 0, 32, 32))
        return
    pen = QPen(color, 2)
    pen.setCapStyle(Qt.PenCapStyle.RoundCap)
    pen.setJoinStyle(Qt.PenJoinStyle.RoundJoin)
    p.setPen(pen)
    light = QColor(color)
    light.setAlpha(60)
    if kind in ("kernel", "grid"):
        p.setPen(QPen(QColor(150, 150, 150), 1))
        for i in range(5):
            p.drawLine(QPointF(4, 4 + i * 6), QPointF(28, 4 + i * 6))
            p.drawLine(QPointF(4 + i * 6, 4), QPointF(4 + i * 6, 28))
        if kind == "kernel":
            p.setPen(pen)
            p.setBrush(light)
            p.drawRect(QRectF(4, 4, 12, 12))
            p.drawLine(QPointF(16, 16), QPointF(26, 26))
    elif kind in ("maxpool", "avgpool"):
        p.setBrush(light)
        for dx in (0, 7):
            for dy in (0, 7):
                p.drawRect(QRectF(3 + dx, 5 + dy, 6, 6))
        p.drawLine(QPointF(18, 14), QPointF(22, 14))
        p.setBrush(color)
        p.drawRect(QRectF(23, 10, 7, 7))
        if kind == "avgpool":
            p.setPen(QPen(QColor("white"), 1.5))
            p.drawLine(QPointF(24.5, 13.5), QPointF(28.5, 13.5))
    elif kind == "globalpool":
        p.setBrush(light)
        p.drawRect(QRectF(3, 6, 14, 14))
        p.drawLine(QPointF(19, 13), QPointF(23, 13))
        p.setBrush(color)
        p.drawEllipse(QRectF(24, 10, 6, 6))
    elif kind in ("relu", "leakyrelu"):
        p.setPen(QPen(QColor(160, 160, 160), 1))
        p.drawLine(QPointF(2, 22), QPointF(30, 22))
        p.setPen(pen)
        slope = 3 if kind == "leakyrelu" else 0
        p.drawPolyline([QPointF(3, 22 + slope), QPointF(16, 22), QPointF(29, 6)])
    elif kind in ("sigmoid", "softmax"):
        p.setPen(QPen(QColor(160, 160, 160), 1))
        p.drawLine(QPointF(2, 16), QPointF(30, 16))
        p.setPen(pen)
        path = QPainterPath(QPointF(3, 27))
        path.cubicTo(QPointF(18, 27), QPointF(14, 5), QPointF(29, 5))
        if kind == "softmax":
            p.setBrush(light)
            for i, h in enumerate((6, 16, 9)):
                p.drawRect(QRectF(5 + i * 8, 28 - h, 6, h))
        else:
            p.drawPath(path)
    elif kind == "dense":
        left = [QPointF(6, 6 + i * 10) for i in range(3)]
        right = [QPointF(26, 11 + i * 10) for i in range(2)]
        p.setPen(QPen(QColor(color.red(), color.green(), color.blue(), 140), 1.2))
        for a in left:
            for b in right:
                p.drawLine(a, b)
        p.setPen(pen)
        p.setBrush(color)
        for pt in left + right:
            p.drawEllipse(pt, 3, 3)
    elif kind == "dropout":
        p.setBrush(color)
        for i in range(3):
            for j in range(3):
                c = QPointF(7 + i * 9, 7 + j * 9)
                if (i + 2 * j) % 3 == 1:
                    p.setBrush(Qt.BrushStyle.NoBrush)
                    p.drawLine(c + QPointF(-3, -3), c + QPointF(3, 3))
                    p.setBrush(color)
                else:
                    p.drawEllipse(c, 3, 3)
    elif kind == "bell":
        p.setPen(QPen(QColor(160, 160, 160), 1))
        p.drawLine(QPointF(2, 26), QPointF(30, 26))
        p.setPen(pen)
        path = QPainterPath(QPointF(3, 25))
        path.cubicTo(QPointF(12, 25), QPointF(12, 5), QPointF(16, 5))
        path.cubicTo(QPointF(20, 5), QPointF(20, 25), QPointF(29, 25))
        p.drawPath(path)
    elif kind == "residual":  # a chain of two boxes with the skip arc around them into a sum
        p.setBrush(light)
        p.drawRect(QRectF(4, 12, 8, 10))
        p.drawRect(QRectF(14, 12, 8, 10))
        p.setBrush(Qt.BrushStyle.NoBrush)
        arc = QPainterPath(QPointF(2, 17))
        arc.cubicTo(QPointF(2, 2), QPointF(27, 2), QPointF(27, 13))
        p.drawPath(arc)
        p.drawEllipse(QRectF(24, 14, 6, 6))
        p.drawLine(QPointF(27, 15.5), QPointF(27, 18.5))
        p.drawLine(QPointF(25.5, 17), QPointF(28.5, 17))
    elif kind == "flatten":
        p.setBrush(light)
        p.drawRect(QRectF(3, 4, 12, 12))
        p.drawLine(QPointF(9, 19), QPointF(9, 23))
        p.setBrush(color)
        p.drawRect(QRectF(3, 24, 26, 5))
    else:
        p.drawEllipse(QRectF(6, 6, 20, 20))


@cache
def layer_icon(kind: str, category: str = "") -> QIcon:
    """Icon for a layer type (or a category name, or "Input"), cached; needs a QGuiApplication."""
    cls = LAYER_CLASSES.get(kind)
    color = category_color(category or (cls.category if cls is not None else kind))
    pictogram = _pictogram(kind)
    icon = QIcon()
    for size in (16, 24, 32, 48, 64):
        pm = QPixmap(size, size)
        pm.fill(Qt.GlobalColor.transparent)
        p = QPainter(pm)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        p.scale(size / 32, size / 32)
        _draw(pictogram, p, color)
        p.end()
        icon.addPixmap(pm)
    return icon


@cache
def app_icon() -> QIcon:
    icon = QIcon()
    for size in (32, 64, 128):
        pm = QPixmap(size, size)
        pm.fill(Qt.GlobalColor.transparent)
        p = QPainter(pm)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        p.scale(size / 32, size / 32)
        p.setBrush(QColor(33, 113, 181))
        p.setPen(Qt.PenStyle.NoPen)
        p.drawRoundedRect(QRectF(1, 1, 30, 30), 6, 6)
        _draw("kernel", p, QColor("white"))
        p.end()
        icon.addPixmap(pm)
    return icon
