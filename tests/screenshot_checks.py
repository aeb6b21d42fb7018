"""What a screenshot must show, beyond its size: each panel drawn where it belongs.

A blank or half-painted window has the right size too; text, icons and bars leave dark, anti-aliased
pixels, so every panel's rectangle must hold a share of them in many grey levels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

#: (left, top, right, bottom) of the Design tab's panels in the 1280x800 window as laid out today
DESIGN_PANELS = {
    "palette": (0, 100, 270, 720),
    "layer stack": (280, 100, 820, 720),
    "properties and explanation": (825, 80, 1280, 720),
    "totals bar": (0, 735, 1280, 775),
}


def assert_panels_drawn(path: str | Path, panels: dict[str, tuple[int, int, int, int]] = DESIGN_PANELS) -> None:
    with Image.open(path) as im:
        grey = np.asarray(im.convert("L"))
    assert grey.shape == (800, 1280)
    for name, (left, top, right, bottom) in panels.items():
        region = grey[top:bottom, left:right]
        dark = int((region < 128).sum())
        levels = len(np.unique(region))
        assert dark >= 0.01 * region.size and levels >= 50, f"{name} looks empty ({dark} dark pixels, {levels} levels)"
