"""Heat maps over images in the Predict view and the most-confident-mistakes list.

The computation is engine.saliency's; this module only adapts it to uint8 images as the views hold
them (`Explainer`), offers the choice of method and layer with one sentence on the colours
(`SaliencyControls`), and blends the map over a picture (`overlay_pixmap`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QPixmap
from PySide6.QtWidgets import QCheckBox, QComboBox, QHBoxLayout, QLabel, QVBoxLayout, QWidget

from engine import saliency as S

METHOD_LABELS = {"occlusion": "Occlusion", "gradcam": "Grad-CAM", "smoothgrad": "SmoothGrad"}
METHOD_HELP = {
    "occlusion": "how much the score falls when a patch is covered",
    "gradcam": "where the chosen layer found evidence for the class",
    "smoothgrad": "how sensitive the score is to each pixel",
}


class Explainer:
    """Heat maps for uint8 images (N, C, H, W) with one trained model and its preprocessing."""

    def __init__(self, model: Any, prep: Any, before: Callable[[], None] | None = None):
        self.model = model
        self.prep = prep
        self.before = before  # e.g. wait until the model is not busy in another thread
        names = model.spec.layers
        self.layers = [(i, f"{i}: {names[i].type} {'x'.join(map(str, model.inference.layers[i].output_shape))}")
                       for i in S.spatial_layers(model)]

    def heat(self, images: np.ndarray, classes: np.ndarray | list[int], method: str,
             layer: int | None = None) -> np.ndarray:
        """(N, H, W) maps in [0, 1] explaining `classes` (one per image)."""
        if self.before is not None:
            self.before()
        x = self.prep.normalize(np.asarray(images))
        maps = S.explain(self.model, x, method, np.asarray(classes, np.int64), layer)
        return np.stack([m.heatmap for m in maps])


def overlay_pixmap(img: np.ndarray, heat: np.ndarray | None, size: int) -> QPixmap:
    """The image (uint8 (C, H, W)) scaled to about `size`, with the heat map blended over it."""
    from designer.results import to_qimage

    if heat is None:
        pix = QPixmap.fromImage(to_qimage(img))
    else:
        pil = S.overlay(img, heat, alpha=0.55, size=size, color_bar=False)
        pix = QPixmap.fromImage(to_qimage(np.asarray(pil).transpose(2, 0, 1)))
    return pix.scaled(size, size, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.FastTransformation)


class SaliencyControls(QWidget):
    """A "Heat map" toggle, the method, Grad-CAM's layer, and what the colours mean."""

    changed = Signal()

    def __init__(self, parent: QWidget | None = None, compact: bool = False):
        super().__init__(parent)
        self.toggle = QCheckBox("Heat map")
        self.toggle.setToolTip("Colour the pixels by how much they drove the prediction (docs/explain.md)")
        self.method = QComboBox()
        for key in S.METHODS:
            self.method.addItem(METHOD_LABELS[key], key)
        self.method.setToolTip("Occlusion: cover patches and watch the score (slowest, most faithful). "
                               "Grad-CAM: one layer's evidence (fast, coarse). SmoothGrad: pixel sensitivity.")
        self.layer = QComboBox()
        self.layer.setToolTip("Grad-CAM's layer: later layers know more about the class, earlier ones are sharper")
        self.legend = QLabel("")
        self.legend.setWordWrap(True)
        self.legend.setStyleSheet("color: #444;")
        self.legend.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        # room for the longest sentence, so the layout never squeezes it when the text changes
        self.legend.setMinimumHeight(self.legend.fontMetrics().lineSpacing() * (3 if compact else 5))
        self.layer_label = QLabel("Layer:")
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.toggle)
        row.addWidget(self.method, 1)
        layer_row = QHBoxLayout()
        layer_row.setContentsMargins(0, 0, 0, 0)
        layer_row.addWidget(self.layer_label)
        layer_row.addWidget(self.layer, 1)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(row)
        lay.addLayout(layer_row)
        lay.addWidget(self.legend)
        self.compact = compact
        self.toggle.toggled.connect(self._changed)
        self.method.currentIndexChanged.connect(self._changed)
        self.layer.currentIndexChanged.connect(self._changed)
        self.set_layers([])

    def set_layers(self, layers: list[tuple[int, str]]) -> None:
        """Grad-CAM's choices (index, label); the last (most class-specific) is selected."""
        self.layer.blockSignals(True)
        self.layer.clear()
        for index, label in layers:
            self.layer.addItem(label, index)
        self.layer.setCurrentIndex(len(layers) - 1)
        self.layer.blockSignals(False)
        gradcam = self.method.findData("gradcam")
        item = self.method.model().item(gradcam)
        item.setEnabled(bool(layers))
        if not layers and self.method.currentData() == "gradcam":
            self.method.setCurrentIndex(self.method.findData(S.DEFAULT_METHOD))
        self._sync()

    @property
    def on(self) -> bool:
        return self.toggle.isChecked()

    def choice(self) -> tuple[str, int | None]:
        method = self.method.currentData()
        return method, (self.layer.currentData() if method == "gradcam" else None)

    def _changed(self, *_: Any) -> None:
        self._sync()
        self.changed.emit()

    def _sync(self) -> None:
        method = self.method.currentData()
        self.method.setEnabled(self.on)
        self.layer.setVisible(method == "gradcam")
        self.layer_label.setVisible(method == "gradcam")
        self.layer.setEnabled(self.on)
        if self.on:
            self.legend.setText(f"Yellow: the pixels that drove the prediction most; dark: little or none "
                                f"({METHOD_LABELS[method]}: {METHOD_HELP[method]}).")
        else:
            self.legend.setText("" if self.compact else "Turn on to see which pixels drove the prediction.")
