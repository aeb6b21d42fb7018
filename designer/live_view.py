"""The Train tab's "Live training" page: progress, loss and accuracy curves, and what the network
sees (feature maps of one chosen sample, the first convolution's filters).

Why a widget of its own: the maps have rules of their own (which sample, preprocessed like which
model; only a model of the design being shown may draw them, or another design's maps would be
taken for this one's), and none of them concern the rest of the tab. During a run the maps arrive
from the training job (`show_maps`); otherwise `refresh` computes them from the session's current
model on demand.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QHBoxLayout, QLabel, QSpinBox, QVBoxLayout, QWidget

from designer.feature_maps import FeatureMapsView, FiltersView, LayerMaps
from designer.layout import splitter
from designer.plots import LivePlots
from designer.results import thumbnail
from designer.worker import feature_maps, first_conv, map_layers
from engine.data import Preprocessing
from engine.errors import EngineError


class LiveView(QWidget):
    """Curves over maps; `session` is the designer.session.TrainSession the tab observes."""

    #: The user picked another sample (its maps are wanted: from the run, or from `refresh`).
    sample_changed = Signal()
    #: A line for the status bar (e.g. why the maps could not be computed).
    status_message = Signal(str)

    def __init__(self, session: Any, progress: QWidget | None = None, parent: QWidget | None = None):
        super().__init__(parent)
        self.session = session
        self.document = session.document
        #: the chosen sample as stored: uint8 (C, H, W)
        self.sample: np.ndarray | None = None
        self._source: tuple[np.ndarray, np.ndarray] | None = None  # (images, labels) to pick from
        #: the views show a model's maps (not just the design's empty layout)
        self.maps_drawn = False

        self.plots = LivePlots()
        self.maps = FeatureMapsView()
        self.filters = FiltersView()
        self.sample_spin = QSpinBox(minimum=0, maximum=0)
        self.sample_spin.setToolTip("Which validation image the feature maps show")
        self.sample_spin.valueChanged.connect(self._pick)
        self.sample_thumb = QLabel()
        self.sample_thumb.setFixedSize(32, 32)
        self.sample_info = QLabel("")
        srow = QHBoxLayout()
        srow.addWidget(QLabel("Feature maps of sample"))
        srow.addWidget(self.sample_spin)
        srow.addWidget(self.sample_thumb)
        srow.addWidget(self.sample_info, 1)
        srow.addWidget(QLabel("Click a layer to see its maps large."))
        maps_box = QWidget()
        ml = QVBoxLayout(maps_box)
        ml.setContentsMargins(0, 0, 0, 0)
        ml.addLayout(srow)
        # overview | (clicked layer large over the first conv's filters)
        side = splitter(Qt.Orientation.Vertical, (self.maps.large, 3), (self.filters, 2))
        ml.addWidget(splitter(Qt.Orientation.Horizontal, (self.maps, 3), (side, 2)), 1)
        vsplit = splitter(Qt.Orientation.Vertical, (self.plots, 2), (maps_box, 3))
        lv = QVBoxLayout(self)
        lv.setContentsMargins(4, 4, 4, 0)
        if progress is not None:
            lv.addWidget(progress)
        lv.addWidget(vsplit, 1)

    # --- layout for a design ---------------------------------------------------------------------------
    def prepare(self, trained_here: bool) -> None:
        """Lay the views out for the design being edited (each layer's grid, the filters' size) before
        any model has drawn into them. `trained_here`: a model of this design exists or is training
        (else the filters say they appear once it is trained)."""
        inf = self.document.inference
        if not inf.valid:
            return
        spec = self.document.spec
        shapes = [(i, f"{i} {spec.layers[i].summary()}", tuple(inf.layers[i].output_shape)) for i in map_layers(spec)]
        if any(len(s) != 3 for _, _, s in shapes):
            return
        self.maps.prepare(tuple(spec.input_shape), shapes)
        k = first_conv(spec)
        if k is not None:
            self.filters.prepare(tuple(inf.layers[k].param_shapes["weight"]))
            if not trained_here:
                self.filters.title.setText("First convolution's filters: shown once this design is trained")

    # --- the sample ---------------------------------------------------------------------------------------
    def set_source(self, pair: tuple[np.ndarray, np.ndarray] | None, refresh: bool = True) -> None:
        """Pick samples from these (uint8 images, labels); keeps the chosen index where it can."""
        if pair is None:
            return
        self._source = pair
        self.sample_spin.blockSignals(True)
        self.sample_spin.setMaximum(max(0, len(pair[1]) - 1))
        self.sample_spin.blockSignals(False)
        self._choose(min(self.sample_spin.value(), len(pair[1]) - 1))
        if refresh:
            self.sample_changed.emit()

    def _pick(self, k: int) -> None:
        if self._choose(k):
            self.sample_changed.emit()

    def _choose(self, k: int) -> bool:
        if self._source is None or k < 0:
            return False
        images, labels = self._source
        self.sample = images[k]
        self.sample_thumb.setPixmap(thumbnail(self.sample, 32))
        d, cur = self.session.data, self.session.current
        names = d.classes if d is not None else (cur.classes if cur is not None else [])
        label = int(labels[k])
        self.sample_info.setText(f"class {names[label]}" if label < len(names) else "")
        return True

    def sample_input(self, prep: Preprocessing | None = None) -> np.ndarray | None:
        """The chosen sample as model input, preprocessed like the model in question: the current
        model's preprocessing by default (a run passes its own)."""
        if self.sample is None:
            return None
        cur = self.session.current
        prep = prep or (cur.prep if cur is not None else None) \
            or Preprocessing.for_input(self.document.spec.input_shape)
        if self.sample.shape[0] != prep.channels:
            return None
        return prep.normalize(self.sample[None])

    # --- the maps -----------------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Maps and filters of the current model for the chosen sample, computed here. Only a model of
        the design being shown: another design's maps would be taken for this one's."""
        cur = self.session.current
        if cur is None or self.sample is None or not self.session.matches_design():
            return
        x = self.sample_input()
        if x is None or tuple(x.shape[1:]) != tuple(cur.model.spec.input_shape):
            return
        try:
            maps, weight = feature_maps(cur.model, x)
        except EngineError as e:
            self.status_message.emit(str(e))
            return
        self.show_maps({"sample": self.sample, "maps": maps, "weight": weight})

    def show_maps(self, payload: dict) -> None:
        """Draw {"sample", "maps": [(index, title, (C, H, W))], "weight"} (a run's TrainJob.maps_ready)."""
        self.maps_drawn = True
        self.maps.set_maps(payload["sample"], [LayerMaps(i, t, m) for i, t, m in payload["maps"]])
        w = payload["weight"]
        title = ""
        if w is not None:
            f, c, kh, kw = w.shape
            kind = "colour (RGB)" if c == 3 else ("grey" if c == 1 else f"mean of {c} channels")
            title = f"First convolution's {f} filters, {kh}x{kw}, {kind}"
        self.filters.set_weights(w, title)

    def clear_maps(self) -> None:
        self.maps.clear()
        self.filters.clear()
        self.maps_drawn = False
