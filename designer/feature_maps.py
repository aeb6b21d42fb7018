"""What the network sees: feature maps of every Conv/Pool layer for one sample, and first-layer filters.

Seeing the maps sharpen while the loss drops is the point of the workspace, so the views refresh
live, but at most a few times a second: images arrive from the worker already computed, the newest
replaces any not yet drawn, and the pyqtgraph items are created once per architecture and only
get `setImage` afterwards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QElapsedTimer, QRectF, Qt, QTimer, Signal
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

from designer.plots import FitOnResize

#: Minimum time between two redraws of the maps (the brief asks for a few per second at most).
MIN_REDRAW_MS = 500
#: Maps per layer in the overview; the large view of a clicked layer shows up to LARGE_MAX.
OVERVIEW_MAX = 16
LARGE_MAX = 64
GAP = 0.15  # gap between tiles, as a fraction of the tile size

_MAP_LUT = pg.colormap.get("viridis").getLookupTable(nPts=256)
_GREY_LUT = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)


@dataclass
class LayerMaps:
    """One layer's output for the chosen sample: (C, H, W) float32."""

    index: int
    title: str
    maps: np.ndarray


def normalise(a: np.ndarray) -> np.ndarray:
    """Min-max per map, so a dim map is still readable (a flat map stays mid-grey)."""
    a = np.asarray(a, dtype=np.float32)
    lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
    if not math.isfinite(lo) or not math.isfinite(hi) or hi - lo < 1e-12:
        return np.full(a.shape, 0.5, dtype=np.float32)
    return (a - lo) / (hi - lo)


def grid_shape(n: int, max_cols: int = 8) -> tuple[int, int]:
    cols = min(n, max_cols)
    return (math.ceil(n / cols) if cols else 0, cols)


class ClickableViewBox(pg.ViewBox):
    """A fixed (no pan/zoom) view box that reports clicks, so a layer row works like a button."""

    clicked = Signal()

    def __init__(self, **kw):
        super().__init__(lockAspect=True, invertY=True, enableMenu=False, **kw)
        self.setMouseEnabled(False, False)

    def mouseClickEvent(self, ev):  # noqa: N802 - Qt naming
        if ev.button() == Qt.MouseButton.LeftButton:
            ev.accept()
            self.clicked.emit()


class ClickableLabel(pg.LabelItem):
    """A layer's name in the overview: clicking it selects the layer, like clicking its maps."""

    clicked = Signal()

    def mouseClickEvent(self, ev):  # noqa: N802 - Qt naming
        if ev.button() == Qt.MouseButton.LeftButton:
            ev.accept()
            self.clicked.emit()


class TileGrid:
    """N equally sized images laid out in a grid, drawn as ONE ImageItem (a mosaic).

    One item per layer rather than one per map: painting is Python code in pyqtgraph, and while a
    training thread competes for the GIL every Python call in a paint can wait for it, so fewer
    items keep the event loop's stalls short. Tiles are coloured here (LUT per map) and separated
    by white gaps.
    """

    def __init__(self, view: pg.ViewBox, n: int, h: int, w: int, cols: int, lut=_MAP_LUT):
        self.view, self.n, self.h, self.w = view, n, h, w
        self.cols = max(1, cols)
        self.rows = math.ceil(n / self.cols) if n else 0
        self.gap = max(1, int(round(min(h, w) * GAP)))
        self.lut = np.asarray(lut if lut is not None else _GREY_LUT, dtype=np.uint8)[:, :3]
        self.canvas = np.full((self.rows * (h + self.gap) - self.gap, self.cols * (w + self.gap) - self.gap, 3),
                              255, dtype=np.uint8)
        self.item = pg.ImageItem(self.canvas, axisOrder="row-major", levels=(0, 255))
        view.addItem(self.item)
        view.setRange(QRectF(0, 0, self.canvas.shape[1], self.canvas.shape[0]), padding=0.02)

    def _tile(self, k: int) -> np.ndarray:
        r, c = divmod(k, self.cols)
        y, x = r * (self.h + self.gap), c * (self.w + self.gap)
        return self.canvas[y:y + self.h, x:x + self.w]

    def set(self, maps: np.ndarray) -> None:
        """maps (n, h, w): each normalised on its own and coloured with the LUT."""
        for k, m in enumerate(maps[: self.n]):
            self._tile(k)[...] = self.lut[(normalise(m) * 255).astype(np.uint8)]
        self.item.setImage(self.canvas, autoLevels=False, levels=(0, 255))

    def set_rgb(self, images: np.ndarray) -> None:
        """images (n, h, w, 3) uint8, drawn as they are."""
        for k, img in enumerate(images[: self.n]):
            self._tile(k)[...] = img
        self.item.setImage(self.canvas, autoLevels=False, levels=(0, 255))


class FeatureMapsView(QWidget):
    """Overview of all Conv/Pool layers (left) and the clicked layer's maps large (right)."""

    layer_clicked = Signal(int)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.overview = pg.GraphicsLayoutWidget()
        self.overview.setBackground("w")
        self.large = pg.GraphicsLayoutWidget()
        self.large.setBackground("w")
        self.hint = QLabel("Train, or pick a sample, to see what each convolution and pooling layer responds to.")
        self.hint.setWordWrap(True)
        self.hint.setStyleSheet("color: #555;")
        # `large` is a separate widget the workspace may place elsewhere (it does: beside the overview).
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.hint)
        lay.addWidget(self.overview, 1)

        self._layout_key: tuple | None = None
        self._grids: list[TileGrid] = []
        self._labels: list[ClickableLabel] = []
        self._input_grid: TileGrid | None = None
        self._layers: list[LayerMaps] = []
        self._input: np.ndarray | None = None
        self._selected: int | None = None
        self._large_key: tuple | None = None
        self._large_grid: TileGrid | None = None
        self._large_label: pg.LabelItem | None = None
        self._fit_caption = FitOnResize(self.large, lambda: [self._large_label])  # never cut off at the edge
        self._pending: tuple[np.ndarray | None, list[LayerMaps]] | None = None
        self._since = QElapsedTimer()
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self._draw_pending)
        #: Redraw count, so tests can see the maps appear and the throttle hold.
        self.redraws = 0

    # --- public API ----------------------------------------------------------------------------
    def set_maps(self, sample: np.ndarray | None, layers: list[LayerMaps]) -> None:
        """Queue the newest maps; drawn now if the last redraw is old enough, else a bit later."""
        self._pending = (sample, layers)
        if self._timer.isActive():
            return
        if not self._since.isValid() or self._since.elapsed() >= MIN_REDRAW_MS:
            self._draw_pending()
        else:
            self._timer.start(MIN_REDRAW_MS - int(self._since.elapsed()))

    def prepare(self, sample_shape: tuple[int, ...] | None, layers: list[tuple[int, str, tuple[int, ...]]]) -> None:
        """Build the items for these shapes now, while the GUI is idle, so the first live maps
        during training only fill images in (building dozens of items takes ~100 ms)."""
        blank = [LayerMaps(i, t, np.zeros(shape, np.float32)) for i, t, shape in layers]
        key = (sample_shape, tuple((lm.index, lm.title, lm.maps.shape) for lm in blank))
        if key == self._layout_key:
            return
        self._build(np.zeros(sample_shape, np.uint8) if sample_shape else None, blank)
        self._layout_key = key
        self._layers = blank
        self._selected = blank[0].index if blank else None
        self._draw_large(fill=False)  # laid out, left blank: no maps yet

    def clear(self) -> None:
        self._pending = None
        self._timer.stop()
        self._layers = []
        self._layout_key = None
        self.overview.clear()
        self.large.clear()
        self._grids, self._input_grid, self._large_grid, self._large_key = [], None, None, None
        self.hint.show()

    @property
    def layer_count(self) -> int:
        return len(self._grids)

    @property
    def selected_layer(self) -> int | None:
        return self._selected

    def select_layer(self, index: int) -> None:
        """Show layer `index` (the spec's layer index) large."""
        self._selected = index
        self._draw_large()
        self.layer_clicked.emit(index)

    # --- drawing ---------------------------------------------------------------------------------
    def _draw_pending(self) -> None:
        if self._pending is None:
            return
        sample, layers = self._pending
        self._pending = None
        self._since.start()
        self._input, self._layers = sample, layers
        key = (None if sample is None else sample.shape, tuple((lm.index, lm.title, lm.maps.shape) for lm in layers))
        if key != self._layout_key:
            self._build(sample, layers)
            self._layout_key = key
        if self._input_grid is not None and sample is not None:
            img = _display_image(sample)
            self._input_grid.set_rgb((np.repeat(img[..., None], 3, axis=-1) if img.ndim == 2 else img)[None])
        for grid, lm in zip(self._grids, layers, strict=True):
            grid.set(lm.maps[:OVERVIEW_MAX])
        if self._selected is None and layers:
            self._selected = layers[0].index
        self._draw_large()
        self.hint.setVisible(not layers)
        self.redraws += 1

    def _build(self, sample: np.ndarray | None, layers: list[LayerMaps]) -> None:
        self.overview.clear()
        self._grids = []
        self._labels = []
        self._input_grid = None
        row = 0
        if sample is not None:
            self.overview.addLabel("input", row=row, col=0, color="#333", size="9pt")
            vb = ClickableViewBox()
            self.overview.addItem(vb, row=row, col=1)
            h, w = sample.shape[-2:]
            self._input_grid = TileGrid(vb, 1, h, w, 1, lut=None)
            row += 1
        for lm in layers:
            c, h, w = lm.maps.shape
            n = min(c, OVERVIEW_MAX)
            label = f"{lm.title}\n{c}x{h}x{w}" if c <= OVERVIEW_MAX else f"{lm.title}\n{c}x{h}x{w} (first {n})"
            name = ClickableLabel(label.replace("\n", "<br>"), color="#333", size="9pt")
            name.setToolTip("Click to see this layer's maps large")
            name.clicked.connect(lambda i=lm.index: self.select_layer(i))
            self.overview.addItem(name, row=row, col=0)
            self._labels.append(name)
            vb = ClickableViewBox()
            vb.clicked.connect(lambda i=lm.index: self.select_layer(i))
            self.overview.addItem(vb, row=row, col=1)
            self._grids.append(TileGrid(vb, n, h, w, min(n, 8)))
            row += 1
        self.overview.ci.layout.setColumnStretchFactor(1, 10)
        self._large_key = None

    def _draw_large(self, fill: bool = True) -> None:
        lm = next((x for x in self._layers if x.index == self._selected), None)
        if lm is None:
            return
        c, h, w = lm.maps.shape
        n = min(c, LARGE_MAX)
        key = (lm.index, lm.maps.shape)
        if key != self._large_key:
            self.large.clear()
            self._large_label = self.large.addLabel(
                f"{lm.title}: {c} maps of {h}x{w}" + (f" (first {n})" if c > n else ""),
                row=0, col=0, color="#333", size="10pt")
            self._fit_caption.fit()
            vb = ClickableViewBox()
            self.large.addItem(vb, row=1, col=0)
            _, cols = grid_shape(n, max_cols=max(1, math.ceil(math.sqrt(n * 1.4))))
            self._large_grid = TileGrid(vb, n, h, w, cols)
            self._large_key = key
        assert self._large_grid is not None
        if fill:
            self._large_grid.set(lm.maps[:n])


def _display_image(x: np.ndarray) -> np.ndarray:
    """A (C, H, W) sample as something ImageItem draws: (H, W) grey or (H, W, 3) colour, 0..255."""
    x = np.asarray(x)
    if x.ndim == 3 and x.shape[0] == 3:
        img = np.moveaxis(x, 0, -1)
    elif x.ndim == 3:
        img = x[0]
    else:
        img = x
    if img.dtype != np.uint8:
        img = (normalise(img) * 255).astype(np.uint8)
    return img


class FiltersView(QWidget):
    """The first convolution's kernels as small images: RGB for colour input, grey otherwise."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.view = pg.GraphicsLayoutWidget()
        self.view.setBackground("w")
        self.title = QLabel("First convolution's filters")
        self.title.setStyleSheet("color: #333;")
        self.title.setWordWrap(True)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.title)
        lay.addWidget(self.view, 1)
        self._key: tuple | None = None
        self._grid: TileGrid | None = None
        self._pending: np.ndarray | None = None
        self._since = QElapsedTimer()
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self._draw)
        self.redraws = 0

    def set_weights(self, weight: np.ndarray | None, title: str = "") -> None:
        """`weight` (filters, in_channels, kh, kw) of the first Conv2D, or None to clear."""
        if weight is None:
            self.view.clear()
            self._key, self._grid = None, None
            self.title.setText("No convolution in this design, so no filters to show.")
            return
        if title:
            self.title.setText(title)
        self._pending = np.asarray(weight, dtype=np.float32)
        if self._timer.isActive():
            return
        if not self._since.isValid() or self._since.elapsed() >= MIN_REDRAW_MS:
            self._draw()
        else:
            self._timer.start(MIN_REDRAW_MS - int(self._since.elapsed()))

    def clear(self, title: str = "First convolution's filters") -> None:
        """Forget the drawn weights and any not yet drawn (they belonged to another model)."""
        self._pending = None
        self._timer.stop()
        self.view.clear()
        self._key, self._grid = None, None
        self.title.setText(title)

    def prepare(self, shape: tuple[int, ...]) -> None:
        """Build the grid for weights of this shape (filters, in_channels, kh, kw) ahead of time."""
        f, c, kh, kw = shape
        n = min(f, LARGE_MAX)
        key = (n, c, kh, kw)
        if key != self._key:
            self.view.clear()
            vb = ClickableViewBox()
            self.view.addItem(vb)
            cols = max(1, math.ceil(math.sqrt(n * 2)))
            self._grid = TileGrid(vb, n, kh, kw, min(n, cols), lut=None)
            self._key = key

    def _draw(self) -> None:
        if self._pending is None:
            return
        wt, self._pending = self._pending, None
        self._since.start()
        f, c, kh, kw = wt.shape
        n = min(f, LARGE_MAX)
        colour = c == 3
        self.prepare(wt.shape)
        if colour:
            # One shared scale over each kernel's three channels keeps its hue meaningful.
            self._grid.set_rgb(np.stack([(np.moveaxis(normalise(k), 0, -1) * 255).astype(np.uint8) for k in wt[:n]]))
        else:
            self._grid.set(wt[:n].mean(axis=1) if c > 1 else wt[:n, 0])
        self.redraws += 1
