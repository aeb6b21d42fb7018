"""The main window: a "Design" tab (palette | layer stack | properties + explanation, totals below)
inside a QTabWidget, so the training workspace adds its own tabs with `add_workspace_tab`.

For the other parts of the app the window exposes: `document` (the Qt-free Document: `spec`,
`inference`, `data_dir`, `spec_changed`), the Qt signal `spec_changed(Spec)`, `undo_stack`,
`train_action` / `export_action` (enabled only for a valid design, the reason in their tooltip;
`set_train_handler` / `set_export_handler` connect them), `add_close_guard` (e.g. "training is
running, stop it?") and `about_to_close` for cleanup.
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import shiboken6
from PySide6.QtCore import QByteArray, QEvent, QModelIndex, QPersistentModelIndex, QPoint, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QCloseEvent, QKeySequence, QUndoStack
from PySide6.QtWidgets import (
    QAbstractSpinBox,
    QApplication,
    QFileDialog,
    QFrame,
    QLabel,
    QLineEdit,
    QMainWindow,
    QMenu,
    QMessageBox,
    QScrollArea,
    QTabWidget,
    QToolBar,
    QVBoxLayout,
    QWidget,
)

from designer import settings as app_settings
from designer.blocks import remove as remove_addresses
from designer.commands import (
    InsertLayersCommand,
    RemoveLayersCommand,
    ReplaceLayersCommand,
    SetLockedCommand,
    make_move_command,
)
from designer.document import (
    DEFAULT_TEMPLATE,
    SAMPLE_DATA_DIR,
    TEMPLATES,
    Change,
    Document,
    blank_spec,
    load_template,
    new_layer,
)
from designer.explain import ExplainPanel
from designer.icons import app_icon, layer_icon
from designer.layer_list_model import END, AddressRole, LayerListModel
from designer.layout import splitter
from designer.palette import Palette
from designer.properties import PropertiesPanel
from designer.stack_view import StackHeader, StackView
from designer.stack_view import min_width as stack_min_width
from designer.totals import TotalsBar
from engine.errors import EngineError
from engine.layers import CATEGORIES, LAYER_CLASSES, layer_from_config
from engine.spec import Spec, atomic_write_text

APP_NAME = "CNN Designer"
FILE_FILTER = "Designs and models (*.json *.cnnd);;Designs (*.json);;Trained models (*.cnnd);;All files (*)"
AUTOSAVE_MS = 15_000


def load_design(path: str | Path) -> tuple[Spec, Any]:
    """Architecture from a design .json or a trained .cnnd (with its TrainedModel), or EngineError."""
    p = Path(path)
    if p.suffix.lower() == ".cnnd":
        from engine import modelfile

        mf = modelfile.load(p)
        return mf.spec, mf
    return Spec.load(p), None


class MainWindow(QMainWindow):
    #: The current architecture after every edit (undo/redo and file loads included).
    spec_changed = Signal(object)
    #: Emitted once the window has agreed to close (stop threads, save state).
    about_to_close = Signal()

    def __init__(self, document: Document | None = None, estimate: bool = True) -> None:
        super().__init__()
        if document is None:
            document = Document(load_template(DEFAULT_TEMPLATE), data_dir=SAMPLE_DATA_DIR)
        self.document = document
        self.undo_stack = QUndoStack(self)
        self.model = LayerListModel(document, self.undo_stack, self)
        self._close_guards: list[Callable[[], bool]] = []
        self._train_handler: Callable[[], None] | None = None
        self._export_handler: Callable[[], None] | None = None
        #: the Train tab (designer.workspace.TrainingWorkspace), when installed
        self.training_workspace: Any = None
        #: the Runs tab (designer.runs_view.RunsView) and File > Import, when installed
        self.runs_view: Any = None
        self.import_action: QAction | None = None
        self.setWindowIcon(app_icon())
        self.setObjectName("MainWindow")

        # --- the Design tab -------------------------------------------------------------------
        self.palette = Palette()
        self.palette.setMinimumWidth(230)
        self.view = StackView()
        self.view.setModel(self.model)
        self.stack_header = StackHeader(self.view)
        stack_box = QWidget()
        sl = QVBoxLayout(stack_box)
        sl.setContentsMargins(0, 0, 0, 0)
        sl.setSpacing(0)
        self.stack_title = QLabel()
        self.stack_title.setContentsMargins(6, 4, 6, 2)
        sl.addWidget(self.stack_title)
        #: a note above the stack while something uses the design (e.g. a training run started from it)
        self.design_note = QLabel()
        self.design_note.setWordWrap(True)
        self.design_note.setContentsMargins(6, 2, 6, 2)
        self.design_note.setStyleSheet("color: #8a5a00;")
        self.design_note.setVisible(False)
        sl.addWidget(self.design_note)
        sl.addWidget(self.stack_header)
        sl.addWidget(self.view, 1)
        self.properties = PropertiesPanel(document, self.model, self.undo_stack)
        self.explain = ExplainPanel(document)
        self.properties_scroll = QScrollArea()
        self.properties_scroll.setWidget(self.properties)
        self.properties_scroll.setWidgetResizable(True)
        self.properties_scroll.setFrameShape(QFrame.Shape.NoFrame)
        right = splitter(Qt.Orientation.Vertical, (self.properties_scroll, 0), (self.explain, 1), sizes=[250, 470])
        self.right_splitter = right
        palette_box = QWidget()
        pl = QVBoxLayout(palette_box)
        pl.setContentsMargins(0, 0, 0, 0)
        pl.setSpacing(0)
        palette_title = QLabel("<b>Layers</b> · drag or double-click")
        palette_title.setWordWrap(True)
        palette_title.setContentsMargins(6, 4, 6, 4)
        pl.addWidget(palette_title)
        pl.addWidget(self.palette, 1)
        self.splitter = splitter(Qt.Orientation.Horizontal, (palette_box, 0), (stack_box, 1), (right, 0),
                                 sizes=[270, 560, 450])
        self.splitter.setChildrenCollapsible(False)
        stack_box.setMinimumWidth(stack_min_width(self.view.fontMetrics()))  # the palette gives way first
        self.totals = TotalsBar(document, estimate=estimate)
        self.design_page = QWidget()
        dl = QVBoxLayout(self.design_page)
        dl.setContentsMargins(4, 4, 4, 4)
        dl.addWidget(self.splitter, 1)
        dl.addWidget(self.totals)
        self.tabs = QTabWidget()
        self.tabs.setDocumentMode(True)
        self.tabs.addTab(self.design_page, "Design")
        self.setCentralWidget(self.tabs)
        self.setTabOrder(self.palette, self.view)
        self.setTabOrder(self.view, self.properties)
        self.setTabOrder(self.properties, self.explain)

        self.problem_label = QLabel()
        self.problem_label.setTextFormat(Qt.TextFormat.PlainText)
        self.statusBar().addWidget(self.problem_label, 1)  # a transient message covers it briefly

        self._make_actions()
        self._make_menus()

        # --- wiring ---------------------------------------------------------------------------
        self.palette.insert_requested.connect(self.insert_layer)
        self.view.selectionModel().currentChanged.connect(self._current_changed)
        self.view.selectionModel().selectionChanged.connect(lambda *_a: self._update_actions())
        self.view.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.view.customContextMenuRequested.connect(self._stack_menu)
        self.view.edit_requested.connect(self._focus_properties)
        self.properties.message.connect(lambda m: self.statusBar().showMessage(m, 8000))
        self.model.refused.connect(lambda m: self.statusBar().showMessage(m, 8000))
        self.undo_stack.cleanChanged.connect(self._update_title)
        self.undo_stack.indexChanged.connect(lambda _i: self._update_title())
        document.spec_changed.connect(self._doc_changed)

        # Text fields claim some window shortcuts for editing (a line edit's Ctrl+E moves to the end
        # of the line), so Export did nothing from a spin box: the focused field is filtered instead.
        self._window_keys = [k for a in (self.export_action, self.train_action) for k in a.shortcuts()]
        app = QApplication.instance()
        if app is not None:
            app.focusChanged.connect(self._focus_changed)

        self._autosave = QTimer(self)
        self._autosave.setInterval(AUTOSAVE_MS)
        self._autosave.timeout.connect(self.write_recovery)
        self._autosave.start()

        self.resize(1280, 800)
        self._restore_geometry()
        self.select_layer(0 if len(document) else -1)
        self._doc_changed(Change("reset"))

    # --- actions and menus -------------------------------------------------------------------------
    def _action(self, text: str, slot: Callable[..., Any] | None = None, shortcut: Any = None,
                tip: str = "") -> QAction:
        act = QAction(text, self)
        if shortcut is not None:
            act.setShortcuts(shortcut if isinstance(shortcut, list) else [QKeySequence(shortcut)])
        if slot is not None:
            act.triggered.connect(lambda _checked=False: slot())
        if tip:
            act.setStatusTip(tip)
            act.setToolTip(tip)
        return act

    def _make_actions(self) -> None:
        Key = QKeySequence.StandardKey  # noqa: N806
        self.new_blank_action = self._action("&Blank design", lambda: self.new_design(None), Key.New,
                                             "Start an empty design (28x28 grayscale input)")
        self.template_actions: dict[str, QAction] = {}
        for stem, title in TEMPLATES:
            self.template_actions[stem] = self._action(title, lambda s=stem: self.new_design(s),
                                                       tip=f"Start from the {title} template")
        self.open_action = self._action("&Open…", self.open_dialog, Key.Open, "Open a design (.json) or model (.cnnd)")
        self.save_action = self._action("&Save", self.save, Key.Save, "Save the design")
        self.save_as_action = self._action("Save &As…", self.save_as_dialog, Key.SaveAs, "Save under a new name")
        self.export_action = self._action("&Export…", self._export, "Ctrl+E", "Export the model")
        self.quit_action = self._action("&Quit", self.close, Key.Quit)
        self.undo_action = self.undo_stack.createUndoAction(self, "&Undo")
        self.undo_action.setShortcuts(QKeySequence.keyBindings(Key.Undo))
        self.redo_action = self.undo_stack.createRedoAction(self, "&Redo")
        # The platform's Redo keys plus both common ones, each once: a key bound twice is ambiguous
        # and Qt then ignores it (Ctrl+Shift+Z already is StandardKey.Redo on Linux).
        redo_keys: list[QKeySequence] = []
        for k in QKeySequence.keyBindings(Key.Redo) + [QKeySequence("Ctrl+Y"), QKeySequence("Ctrl+Shift+Z")]:
            if k not in redo_keys:
                redo_keys.append(k)
        self.redo_action.setShortcuts(redo_keys)
        ctx = Qt.ShortcutContext.WidgetWithChildrenShortcut
        self.delete_action = self._action("&Delete layer", self.delete_selected,
                                          [QKeySequence(Qt.Key.Key_Delete), QKeySequence(Qt.Key.Key_Backspace)],
                                          "Delete the selected layers")
        self.duplicate_action = self._action("D&uplicate layer", self.duplicate_selected, "Ctrl+D",
                                             "Insert a copy of the selected layers after them")
        self.move_up_action = self._action("Move &up", lambda: self.move_selected(-1), "Alt+Up",
                                           "Move the selected layers up")
        self.move_down_action = self._action("Move do&wn", lambda: self.move_selected(1), "Alt+Down",
                                             "Move the selected layers down")
        self.lock_action = self._action("&Lock weights", self.toggle_lock_selected, "Ctrl+L",
                                        "Lock the selected layers: their weights stay fixed when training "
                                        "continues from trained weights (again: unlock)")
        for act in (self.delete_action, self.duplicate_action, self.move_up_action, self.move_down_action,
                    self.lock_action):
            act.setShortcutContext(ctx)
            self.view.addAction(act)
        self.train_action = self._action("&Train", self._train, "Ctrl+T", "Train this design")
        self.train_action.setIcon(layer_icon("Dense"))
        self.focus_actions = [
            self._action("Focus &palette", self.palette.setFocus, "Ctrl+1"),
            self._action("Focus layer &stack", self.view.setFocus, "Ctrl+2"),
            self._action("Focus p&roperties", self._focus_properties, "Ctrl+3"),
        ]

    def _make_menus(self) -> None:
        mb = self.menuBar()
        file_menu = self.file_menu = mb.addMenu("&File")
        new_menu = file_menu.addMenu("&New")
        new_menu.addAction(self.new_blank_action)
        new_menu.addSeparator()
        for act in self.template_actions.values():
            new_menu.addAction(act)
        file_menu.addAction(self.open_action)
        self.recent_menu = file_menu.addMenu("Open &Recent")
        self.recent_menu.aboutToShow.connect(self._fill_recent_menu)
        self._fill_recent_menu()
        file_menu.addSeparator()
        file_menu.addAction(self.save_action)
        file_menu.addAction(self.save_as_action)
        file_menu.addAction(self.export_action)
        file_menu.addSeparator()
        file_menu.addAction(self.quit_action)
        edit = mb.addMenu("&Edit")
        edit.addAction(self.undo_action)
        edit.addAction(self.redo_action)
        edit.addSeparator()
        for act in (self.delete_action, self.duplicate_action, self.move_up_action, self.move_down_action,
                    self.lock_action):
            edit.addAction(act)
        layer_menu = mb.addMenu("&Layer")
        self._fill_insert_menu(layer_menu.addMenu("&Insert"))
        #: the training workspace adds its entries here
        self.model_menu = mb.addMenu("&Model")
        self.model_menu.addAction(self.train_action)
        view = mb.addMenu("&View")
        for act in self.focus_actions:
            view.addAction(act)
        self.help_menu = mb.addMenu("&Help")
        self.help_actions = {
            "start": self._action("&Getting started", lambda: self.show_help("start"),
                                  QKeySequence.StandardKey.HelpContents,
                                  "The four steps from a design to a trained model"),
            "keys": self._action("&Keyboard shortcuts", lambda: self.show_help("keys")),
            "docs": self._action("&Documentation", lambda: self.show_help("docs"),
                                 tip="Where the file formats, the command line and the exports are described"),
            "about": self._action("&About CNN Designer", lambda: self.show_help("about")),
        }
        for act in self.help_actions.values():
            self.help_menu.addAction(act)

        tb = QToolBar("Main")
        tb.setObjectName("MainToolbar")
        tb.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
        tb.setMovable(False)
        # Fixed-width toolbar buttons; the menu entries carry "Undo Change filters…" texts.
        self.tool_undo = QAction("Undo", self)
        self.tool_undo.triggered.connect(self.undo_stack.undo)
        self.tool_redo = QAction("Redo", self)
        self.tool_redo.triggered.connect(self.undo_stack.redo)
        for act, can, text in ((self.tool_undo, self.undo_stack.canUndoChanged, self.undo_stack.undoTextChanged),
                               (self.tool_redo, self.undo_stack.canRedoChanged, self.undo_stack.redoTextChanged)):
            act.setEnabled(False)
            can.connect(act.setEnabled)
            text.connect(lambda t, a=act: a.setToolTip(f"{a.text()} {t}" if t else a.text()))
        for act in (self.open_action, self.save_action, None, self.tool_undo, self.tool_redo, None,
                    self.delete_action, self.duplicate_action, self.move_up_action, self.move_down_action, None,
                    self.train_action, self.export_action):
            if act is None:
                tb.addSeparator()
            else:
                tb.addAction(act)
        self.toolbar = tb
        self.addToolBar(tb)

    def _fill_insert_menu(self, menu: QMenu) -> None:
        for category in CATEGORIES:
            sub = menu.addMenu(layer_icon(category), category)
            for type_name, cls in LAYER_CLASSES.items():
                if cls.category == category:
                    act = sub.addAction(layer_icon(type_name, category), type_name)
                    act.setStatusTip(cls.description)
                    act.triggered.connect(lambda _c=False, t=type_name: self.insert_layer(t))

    def _fill_recent_menu(self) -> None:
        self.recent_menu.clear()
        files = app_settings.recent_files()
        for i, f in enumerate(files):
            act = self.recent_menu.addAction(f"&{i + 1} {Path(f).name}")
            act.setStatusTip(f)
            act.setToolTip(f)
            act.triggered.connect(lambda _c=False, path=f: self._open_recent(path))
        if not files:
            none = self.recent_menu.addAction("(no recent files)")
            none.setEnabled(False)
        else:
            self.recent_menu.addSeparator()
            self.recent_menu.addAction("Clear list", self._clear_recent)

    def _clear_recent(self) -> None:
        app_settings.settings().setValue("recent_files", [])

    def _stack_menu(self, pos: QPoint) -> None:
        menu = QMenu(self)
        self._fill_insert_menu(menu.addMenu("Insert after"))
        menu.addSeparator()
        for act in (self.duplicate_action, self.delete_action, self.move_up_action, self.move_down_action,
                    self.lock_action):
            menu.addAction(act)
        menu.popup(self.view.viewport().mapToGlobal(pos))

    # --- hooks for the training workspace and the exporter ------------------------------------------
    def add_workspace_tab(self, widget: QWidget, title: str) -> int:
        return self.tabs.addTab(widget, title)

    def set_design_note(self, text: str) -> None:
        """Show (or with "" hide) a note above the layer stack."""
        self.design_note.setText(text)
        self.design_note.setVisible(bool(text))

    def set_training_workspace(self, workspace: QWidget, title: str = "Train") -> int:
        """The Train tab: kept as `training_workspace` (File > Export exports its model)."""
        self.training_workspace = workspace
        return self.add_workspace_tab(workspace, title)

    def set_runs_view(self, view: QWidget, import_action: QAction) -> int:
        """The Runs tab, and File > Import placed before Export."""
        self.runs_view = view
        self.import_action = import_action
        self.file_menu.insertAction(self.export_action, import_action)
        return self.add_workspace_tab(view, "Runs")

    def add_close_guard(self, guard: Callable[[], bool]) -> None:
        """`guard()` runs before closing; returning False cancels the close."""
        self._close_guards.append(guard)

    def set_train_handler(self, handler: Callable[[], None]) -> None:
        self._train_handler = handler

    def set_export_handler(self, handler: Callable[[], None]) -> None:
        self._export_handler = handler

    def _train(self) -> None:
        if self._train_handler is not None:
            self._train_handler()
        else:
            self.statusBar().showMessage("Training is not available in this build.", 5000)

    def _export(self) -> None:
        if self._export_handler is not None:
            self._export_handler()
        else:
            self.statusBar().showMessage("Export is not available in this build.", 5000)

    def _focus_changed(self, _old: QWidget | None, new: QWidget | None) -> None:
        if isinstance(new, (QAbstractSpinBox, QLineEdit)) and new.window() is self:
            new.installEventFilter(self)

    def eventFilter(self, obj: Any, event: Any) -> bool:  # noqa: N802 - Qt naming
        if event.type() == QEvent.Type.ShortcutOverride and \
                QKeySequence(event.keyCombination()) in self._window_keys:
            return True  # not accepted by the field: the window's shortcut runs
        return super().eventFilter(obj, event)

    # --- selection -------------------------------------------------------------------------------
    def select_layer(self, layer_index: int, inner: int | None = None) -> None:
        """Select layer `layer_index` (-1 = the Input row; `inner`: that block's inner layer) and make it
        current."""
        if 0 <= layer_index < len(self.document):
            row = self.model.row_of((layer_index, inner))
        else:
            row = max(min(layer_index + 1, self.model.rowCount() - 1), 0)
        ix = self.model.index(row, 0)
        sel = self.view.selectionModel()
        sel.setCurrentIndex(ix, sel.SelectionFlag.ClearAndSelect)
        self.view.scrollTo(ix)

    def _select_layers(self, first: int, count: int) -> None:
        sel = self.view.selectionModel()
        sel.clearSelection()
        for i in range(first, first + count):
            sel.select(self.model.layer_row(i), sel.SelectionFlag.Select)
        sel.setCurrentIndex(self.model.layer_row(first), sel.SelectionFlag.NoUpdate)
        self._current_changed(self.model.layer_row(first))

    def selected_layers(self) -> list[int]:
        return self.view.selected_layer_indices()

    def current_layer(self) -> int | None:
        """Layer index of the current row, -1 for Input, None for nothing."""
        ix = self.view.currentIndex()
        if not ix.isValid():
            return None
        addr = ix.data(AddressRole)
        return -1 if addr is None else addr[0]

    def _current_changed(self, current: QModelIndex, _previous: QModelIndex | None = None) -> None:
        self.properties.set_row(QPersistentModelIndex(current) if current.isValid() else None)
        self.explain.set_index(self.properties.target(), self.properties.inner_target())
        self._update_actions()

    def _focus_properties(self) -> None:
        """Put the keyboard in the first editor of the form (Ctrl+3, or Enter on a stack row)."""
        first = self.properties.first_editor()
        (first or self.properties).setFocus(Qt.FocusReason.ShortcutFocusReason)

    # --- editing -----------------------------------------------------------------------------------
    def insert_layer(self, type_name: str, index: int | None = None) -> None:
        """Insert a new layer at `index`, by default after the current row (or at the end); with a
        block's inner or end row current, into that block after it."""
        cur_ix = self.view.currentIndex()
        addr = cur_ix.data(AddressRole) if index is None and cur_ix.isValid() else None
        if addr is not None and addr[1] is not None:
            j = len(self.document.layers[addr[0]].children()) if addr[1] == END else addr[1] + 1
            self.model.place((addr[0], j), layers=[new_layer(type_name)])
            self.view.setFocus()
            return
        if index is None:
            cur = self.current_layer()
            sel = self.selected_layers()
            if sel:
                index = max(sel) + 1
            elif cur is not None:
                index = cur + 1
            else:
                index = len(self.document)
        self.undo_stack.push(InsertLayersCommand(self.document, index, [new_layer(type_name)]))
        self.view.setFocus()

    def delete_selected(self) -> None:
        addrs = self.view.selected_addresses()
        if any(a[1] is not None for a in addrs):  # inner layers of blocks: one structure edit
            configs = remove_addresses([layer.to_config() for layer in self.document.layers], addrs)
            what = "1 layer" if len(addrs) == 1 else f"{len(addrs)} layers"
            self.undo_stack.push(ReplaceLayersCommand(self.document, configs, f"Delete {what}"))
            self._select_after_inner_delete(min(addrs, key=lambda a: (a[0], -1 if a[1] is None else a[1])))
            return
        rows = self.selected_layers()
        if rows:
            self.undo_stack.push(RemoveLayersCommand(self.document, rows))

    def _select_after_inner_delete(self, first: tuple) -> None:
        """Select the row now where the first deleted row was, as deleting top-level layers does: the
        next inner layer, else the block's last one, else the block itself (so Delete, the arrow keys
        and the properties form keep working; the structure edit rebuilt the rows and left nothing
        selected)."""
        if not len(self.document):
            self.select_layer(-1)
            return
        i = min(first[0], len(self.document) - 1)
        n = len(self.document.layers[i].children())
        j = first[1] if first[0] == i and first[1] is not None else 0
        self.select_layer(i, min(j, n - 1) if n else None)

    def duplicate_selected(self) -> None:
        rows = self.selected_layers()
        if not rows:
            return
        layers = [layer_from_config(self.document.layers[r].to_config()) for r in rows]
        what = layers[0].summary() if len(layers) == 1 else f"{len(layers)} layers"
        cmd = InsertLayersCommand(self.document, max(rows) + 1, layers, text=f"Duplicate {what}")
        self.undo_stack.push(cmd)

    def _lockable_selected(self) -> list[int]:
        return [i for i in self.selected_layers() if self.model.lockable(i)]

    def toggle_lock_selected(self) -> None:
        """Lock the selected layers with weights, or unlock them when all are locked (one undo step)."""
        rows = self._lockable_selected()
        if not rows:
            return
        locked = set(self.document.locked)
        want = locked - set(rows) if set(rows) <= locked else locked | set(rows)
        self.undo_stack.push(SetLockedCommand(self.document, sorted(want)))

    def move_selected(self, delta: int) -> None:
        addrs = self.view.selected_addresses()
        inner = [a for a in addrs if a[1] is not None]
        if inner and len({a[0] for a in inner}) == 1 and len(inner) == len(addrs):
            # inner rows of one block move inside it (past its first or last row: out of it)
            i, js = inner[0][0], sorted(a[1] for a in inner)
            n = len(self.document.layers[i].children())
            if delta < 0:
                target = (i, js[0] - 1) if js[0] > 0 else (i, None)
            else:
                target = (i, js[-1] + 2) if js[-1] + 1 < n else (i + 1, None)
            self.model.place(target, sources=inner)
            return
        rows = self.selected_layers()
        if not rows:
            return
        dest = min(rows) - 1 if delta < 0 else max(rows) + 2
        if dest < 0 or dest > len(self.document):
            return
        cmd = make_move_command(self.document, rows, dest)
        if cmd is not None:
            self.undo_stack.push(cmd)

    def _doc_changed(self, change: Change) -> None:
        if change.kind == "insert":
            self._select_layers(change.index, change.count)
        elif change.kind == "remove":
            self.select_layer(min(change.index, len(self.document) - 1))
        elif change.kind == "reset":
            self.select_layer(0 if len(self.document) else -1)
        elif change.kind == "layers":  # a structure edit: select what it placed, else keep the place
            placed = self.model.last_placed
            if placed:
                self.select_layer(*placed[0])
            else:
                self.explain.set_index(self.properties.target(), self.properties.inner_target())
        else:
            self.explain.set_index(self.properties.target(), self.properties.inner_target())
        self._update_actions()
        self._update_title()
        self.spec_changed.emit(self.document.spec)

    def _update_actions(self) -> None:
        inf = self.document.inference
        problem = inf.error_message
        for act, verb in ((self.train_action, "Train"), (self.export_action, "Export")):
            act.setEnabled(problem is None)
            tip = f"{verb} this design" if problem is None else f"Cannot {verb.lower()}: {problem}"
            act.setToolTip(tip)
            act.setStatusTip(tip)
        has_sel = bool(self.selected_layers())
        self.duplicate_action.setEnabled(has_sel)
        lockable = self._lockable_selected()
        self.lock_action.setEnabled(bool(lockable))
        all_locked = bool(lockable) and set(lockable) <= set(self.document.locked)
        self.lock_action.setText("Un&lock weights" if all_locked else "&Lock weights")
        for act in (self.delete_action, self.move_up_action, self.move_down_action):
            act.setEnabled(bool(self.view.selected_addresses()))
        n = len(self.document)
        layers = f"{n} layer{'' if n == 1 else 's'}"
        if problem is None:
            out = inf.output_shape
            shape = "x".join(map(str, out))
            if len(out) == 1:
                self.problem_label.setStyleSheet("")
                self.problem_label.setText(f"✓ Valid design: {layers}, output {shape}, "
                                           f"{inf.total_params:,} parameters")
            else:  # shapes work out, but there is no score per class to train
                self.problem_label.setStyleSheet("color: #8a5a00;")
                self.problem_label.setText(f"Valid shapes ({layers}, output {shape}), but not a classifier yet: "
                                           "add Flatten and Dense(classes)")
        else:
            self.problem_label.setStyleSheet("color: #b00000;")
            self.problem_label.setText(f"⚠ {problem}")
        self.problem_label.setToolTip(self.problem_label.text())
        first = inf.first_error
        title = f"<b>{html.escape(self.document.spec.name)}</b>: {n} layer{'s' if n != 1 else ''}"
        if first is not None:
            waiting = n - first.index - 1
            title += f" · <span style='color:#b00000'>⚠ layer {first.index} needs fixing</span>"
            if waiting:
                title += f" ({waiting} after it wait{'s' if waiting == 1 else ''} for it)"
        self.stack_title.setText(title)

    # --- files -------------------------------------------------------------------------------------
    @property
    def modified(self) -> bool:
        return not self.undo_stack.isClean()

    def _update_title(self) -> None:
        if not shiboken6.isValid(self.undo_stack):
            return  # the stack's destructor clears it (and signals) while the window goes away
        self.setWindowModified(self.modified)
        self.setWindowTitle(f"{self.document.display_name}[*] — {APP_NAME}")

    def set_design(self, spec: Spec, path: Path | None, model_file: Any = None) -> None:
        """Replace the design (a new file or template): clears the undo history."""
        self.undo_stack.clear()
        self.document.path = path
        self.document.model_path = path if model_file is not None else None
        self.document.model_file = model_file
        if model_file is not None:
            self.document.path = None  # a .cnnd is saved as a design with Save As
            # the document edits its spec in place: the model's own architecture must not change with it
            spec = spec.copy() if spec is getattr(model_file, "spec", None) else spec
        self.document.set_spec(spec)
        self.undo_stack.setClean()
        self._update_title()

    def maybe_save(self) -> bool:
        """Ask about unsaved changes; False means the user cancelled."""
        if not self.modified:
            return True
        answer = QMessageBox.warning(
            self, APP_NAME, f"“{self.document.display_name}” has unsaved changes. Save them?",
            QMessageBox.StandardButton.Save | QMessageBox.StandardButton.Discard | QMessageBox.StandardButton.Cancel,
            QMessageBox.StandardButton.Save)
        if answer == QMessageBox.StandardButton.Save:
            return self.save()
        return answer == QMessageBox.StandardButton.Discard

    def new_design(self, template: str | None) -> bool:
        if not self.maybe_save():
            return False
        spec = blank_spec() if template is None else load_template(template)
        self.set_design(spec, None)
        self.statusBar().showMessage(f"New design: {spec.name}", 4000)
        return True

    def open_dialog(self) -> None:
        if not self.maybe_save():
            return
        start = str(self.document.path.parent) if self.document.path else str(Path.home())
        path, _ = QFileDialog.getOpenFileName(self, "Open design", start, FILE_FILTER)
        if path:
            self.open_file(path, ask=False)

    def open_file(self, path: str | Path, ask: bool = True) -> bool:
        """Open a design or model; a broken file leaves the current design untouched."""
        if ask and not self.maybe_save():
            return False
        p = Path(path)
        try:
            spec, model_file = load_design(p)
        except (EngineError, OSError, ValueError) as e:
            QMessageBox.critical(self, "Cannot open file", f"Cannot open {p.name}:\n\n{e}")
            return False
        self.set_design(spec, p, model_file)
        app_settings.add_recent_file(p)
        self.statusBar().showMessage(f"Opened {p}", 4000)
        return True

    def _open_recent(self, path: str) -> None:
        if not Path(path).exists():
            QMessageBox.warning(self, APP_NAME, f"{path} no longer exists; it was removed from the list.")
            app_settings.remove_recent_file(path)
            return
        self.open_file(path)

    def save(self) -> bool:
        if self.document.path is None:
            return self.save_as_dialog()
        return self.save_to(self.document.path)

    def save_as_dialog(self) -> bool:
        start = self.document.path or Path.home() / f"{self.document.spec.name or 'design'}.json"
        path, _ = QFileDialog.getSaveFileName(self, "Save design as", str(start), "Designs (*.json)")
        if not path:
            return False
        if not path.lower().endswith(".json"):
            path += ".json"
        return self.save_to(Path(path))

    def save_to(self, path: str | Path) -> bool:
        p = Path(path)
        try:
            atomic_write_text(p, self.document.spec.to_json())
        except OSError as e:
            QMessageBox.critical(self, "Cannot save", f"Cannot save {p}:\n\n{e.strerror or e}")
            return False
        self.document.path = p
        self.undo_stack.setClean()
        app_settings.add_recent_file(p)
        self._update_title()
        self.statusBar().showMessage(f"Saved {p}", 4000)
        self.write_recovery()
        return True

    # --- recovery ---------------------------------------------------------------------------------
    def write_recovery(self) -> None:
        """Keep a copy of unsaved work; a clean design needs none."""
        rp = app_settings.recovery_path()
        try:
            if not self.modified:
                rp.unlink(missing_ok=True)
                return
            rp.parent.mkdir(parents=True, exist_ok=True)
            doc = self.document
            payload = {
                "saved_at": time.strftime("%Y-%m-%d %H:%M:%S"),
                "path": str(doc.path) if doc.path else None,
                "data_dir": str(doc.data_dir) if doc.data_dir else None,
                "spec": doc.spec.to_dict(),
            }
            atomic_write_text(rp, json.dumps(payload, indent=1))
        except OSError as e:
            self.statusBar().showMessage(f"Could not write the recovery file: {e.strerror or e}", 8000)

    def offer_recovery(self) -> bool:
        """If a previous session left unsaved work, offer to restore it. True if restored."""
        rp = app_settings.recovery_path()
        if not rp.exists():
            return False
        try:
            payload = json.loads(rp.read_text(encoding="utf-8"))
            spec = Spec.from_dict(payload["spec"])
        except (OSError, ValueError, KeyError, TypeError, EngineError):
            rp.unlink(missing_ok=True)
            return False
        name = Path(payload["path"]).name if payload.get("path") else spec.name
        answer = QMessageBox.question(
            self, "Restore unsaved design?",
            f"CNN Designer did not close normally. Restore the unsaved design “{name}” "
            f"from {payload.get('saved_at', 'the last session')}?",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, QMessageBox.StandardButton.Yes)
        if answer != QMessageBox.StandardButton.Yes:
            rp.unlink(missing_ok=True)
            return False
        self.set_design(spec, Path(payload["path"]) if payload.get("path") else None)
        if payload.get("data_dir"):
            self.document.data_dir = Path(payload["data_dir"])
        # Restored work is unsaved work: mark it modified until the user saves it.
        self.undo_stack.resetClean()
        self._update_title()
        return True

    # --- window state -------------------------------------------------------------------------------
    def _restore_geometry(self) -> None:
        s = app_settings.settings()
        geo = s.value("window/geometry")
        if isinstance(geo, QByteArray) and not geo.isEmpty():
            self.restoreGeometry(geo)
        sizes = s.value("window/splitter")
        if isinstance(sizes, QByteArray) and not sizes.isEmpty():
            self.splitter.restoreState(sizes)

    def _save_geometry(self) -> None:
        s = app_settings.settings()
        s.setValue("window/geometry", self.saveGeometry())
        s.setValue("window/splitter", self.splitter.saveState())

    def showEvent(self, event) -> None:  # noqa: N802
        super().showEvent(event)
        # A message shown before the window was visible would be painted over the problem line.
        # (Re-shown once the status bar's children are visible, so the line is hidden meanwhile.)
        message = self.statusBar().currentMessage()
        if message:
            self.statusBar().clearMessage()
            QTimer.singleShot(0, lambda: self.statusBar().showMessage(message, 4000))

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802
        for guard in self._close_guards:
            if not guard():
                event.ignore()
                return
        if not self.maybe_save():
            event.ignore()
            return
        self.about_to_close.emit()
        self._autosave.stop()
        self.totals.shutdown()
        self._save_geometry()
        app_settings.recovery_path().unlink(missing_ok=True)
        event.accept()

    def show_help(self, page: str) -> Any:
        """Help > Getting started / Keyboard shortcuts / Documentation / About (a non-modal dialog)."""
        from designer import help as help_pages

        pages = {
            "start": ("Getting started", lambda: help_pages.GETTING_STARTED),
            "keys": ("Keyboard shortcuts", lambda: help_pages.shortcuts_html(self._menu_actions())),
            "docs": ("Documentation", help_pages.docs_html),
            "about": ("About CNN Designer", help_pages.about_html),
        }
        title, make = pages[page]
        self._help = help_pages.show_help(self, title, make())
        return self._help

    def _menu_actions(self) -> list[QAction]:
        """Every action reachable from the menus (and the stack's own keys), in menu order."""
        out: list[QAction] = []

        def walk(menu: QMenu) -> None:
            for act in menu.actions():
                if act.menu() is not None:
                    walk(act.menu())
                elif not act.isSeparator():
                    out.append(act)

        for top in self.menuBar().actions():
            if top.menu() is not None:
                walk(top.menu())
        return out + list(self.view.actions())
