"""Help > Getting started, Keyboard shortcuts, Documentation and About, as HTML in one small dialog.

The shortcut list is read from the window's own actions, so it cannot drift from the real keys.
"""

from __future__ import annotations

import html
import platform
from typing import Any

from PySide6 import __version__ as pyside_version
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import QDialog, QDialogButtonBox, QTextBrowser, QVBoxLayout, QWidget

from engine import __version__

GETTING_STARTED = """
<h2>Getting started</h2>
<p>CNN Designer takes you from an idea for a network to a trained model in four steps.</p>
<ol>
<li><b>Design.</b> Start from a template (<i>File &gt; New</i>) or stack layers from the palette on the
left (drag, or double-click). Every layer shows its output shape and parameter count as you edit; a
layer that does not fit turns red and says why. The bar at the bottom totals parameters, memory and
an epoch-time estimate.</li>
<li><b>Data.</b> On the <i>Train</i> tab choose (or drop) a folder with one subfolder of images per
class. A folder holding <code>train/</code> and <code>val/</code> (or <code>test/</code>) is used
as training and validation images. When the design does not fit the data (colour, class count,
input size) the tab says so and offers a one-click fix you can undo.</li>
<li><b>Train.</b> Set epochs, learning rate and the other options, press <i>Start training</i>
(<i>Ctrl+T</i>) and watch the loss curves, the feature maps of a sample image and the first
layer's filters. Pause, resume or stop at any time; the weights trained so far are kept.</li>
<li><b>Use the model.</b> <i>Results</i> shows the confusion matrix and the most confident mistakes
(double-click one to open it in <i>Predict</i>); <i>Predict</i> takes any image. Save the model as
<code>.cnnd</code>, evaluate it on another folder, or export it with <i>File &gt; Export</i>
(ONNX, or PyTorch with a training script). Edit its design and tick <i>Continue from the current
weights</i>: every compatible layer keeps what it learned. The stack marks each layer with weights
<i>kept</i>, <i>new</i> or <i>frozen</i>; the lock at the right of a row (<i>Ctrl+L</i>) keeps that
layer fixed while the rest trains.</li>
</ol>
<p>The same engine runs from the command line: <code>cnn-designer --help</code>.</p>
"""

DOCS = (
    ("docs/format.md", "the architecture file format (cnn-designer/1)"),
    ("docs/model-file.md", "the trained model file (.cnnd)"),
    ("docs/cli.md", "the command line: train, evaluate, predict, export"),
    ("docs/export.md", "ONNX and PyTorch export, and how the exports prove their numbers"),
    ("docs/runs.md", "the record of training runs"),
    ("docs/explain.md", "saliency maps and training health"),
    ("docs/performance.md", "speed, and how it is measured"),
    ("docs/architecture.md", "how the code is organised"),
)


def shortcuts_html(actions: list[QAction]) -> str:
    """A table of every action with a key, in menu order, each key once."""
    rows, seen = [], set()
    for act in actions:
        name = act.text().replace("&", "").rstrip("…. ").strip()
        keys = [k.toString(QKeySequence.SequenceFormat.NativeText) for k in act.shortcuts() if not k.isEmpty()]
        keys = [k for k in keys if k != name]  # the keyboard's own Undo key read "Undo: ..., Undo"
        if not keys or not name or name in seen:
            continue
        seen.add(name)
        rows.append(f"<tr><td>{html.escape(name)}</td><td><b>{html.escape(', '.join(keys))}</b></td></tr>")
    return ("<h2>Keyboard shortcuts</h2><table cellspacing='4'>" + "".join(rows) + "</table>"
            "<p>In a form field, Tab moves to the next field and Enter applies the value.</p>")


def docs_html() -> str:
    items = "".join(f"<li><code>{path}</code>: {html.escape(what)}</li>" for path, what in DOCS)
    return ("<h2>Documentation</h2><p>The documents live in the <code>docs/</code> folder of the CNN Designer "
            f"repository, beside its README:</p><ul>{items}</ul>")


def about_html() -> str:
    return (f"<h2>CNN Designer {__version__}</h2><p>Design a convolutional network by stacking layers, see every "
            "shape and parameter as you go, train it on a folder of your own images with a pure-NumPy engine, "
            "and export it.</p>"
            f"<p>Python {platform.python_version()}, PySide6 {pyside_version}.</p>")


class HelpDialog(QDialog):
    """One page of help (HTML), scrollable, with a Close button."""

    def __init__(self, title: str, page: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle(title)
        self.text = QTextBrowser()
        self.text.setOpenExternalLinks(True)
        self.text.setHtml(page)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        lay = QVBoxLayout(self)
        lay.addWidget(self.text, 1)
        lay.addWidget(buttons)
        self.resize(640, 520)


def show_help(parent: Any, title: str, page: str) -> HelpDialog:
    """Show a help page without blocking the window (it stays open beside it)."""
    dlg = HelpDialog(title, page, parent)
    dlg.show()
    return dlg
