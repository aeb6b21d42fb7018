"""Undo commands: every edit of the design is one of these, pushed on the window's QUndoStack.

Commands hold configs (plain dicts), not Layer objects, so an undone edit can never share a
mutable layer with the current design. Their text is what the Edit menu shows after "Undo".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PySide6.QtGui import QUndoCommand

from designer.document import Document
from engine.layers import Layer, layer_from_config
from engine.spec import Spec

MERGE_FIELD = 1001
MERGE_INPUT = 1002


def _layers(configs: Sequence[dict[str, Any]]) -> list[Layer]:
    return [layer_from_config(dict(c)) for c in configs]


class InsertLayersCommand(QUndoCommand):
    def __init__(self, doc: Document, index: int, layers: Sequence[Layer], text: str | None = None):
        super().__init__(text or (f"Insert {layers[0].type}" if len(layers) == 1 else f"Insert {len(layers)} layers"))
        self.doc, self.index = doc, index
        self.configs = [layer.to_config() for layer in layers]

    def redo(self) -> None:
        self.doc.insert_layers(self.index, _layers(self.configs))

    def undo(self) -> None:
        self.doc.remove_layers(self.index, len(self.configs))


class RemoveLayersCommand(QUndoCommand):
    """Removes any set of layers (a multi-selection); undo puts each back at its old index."""

    def __init__(self, doc: Document, indices: Sequence[int]):
        self.doc = doc
        self.indices = sorted(set(indices))
        self.configs = [doc.layers[i].to_config() for i in self.indices]
        what = doc.layers[self.indices[0]].summary() if len(self.indices) == 1 else f"{len(self.indices)} layers"
        super().__init__(f"Delete {what}")

    def redo(self) -> None:
        for i in reversed(self.indices):
            self.doc.remove_layers(i, 1)

    def undo(self) -> None:
        for i, cfg in zip(self.indices, self.configs, strict=True):
            self.doc.insert_layers(i, _layers([cfg]))


class ReorderCommand(QUndoCommand):
    """Moves layers by applying a permutation; undo applies its inverse."""

    def __init__(self, doc: Document, order: Sequence[int], text: str):
        super().__init__(text)
        self.doc = doc
        self.order = tuple(order)
        inverse = [0] * len(self.order)
        for new, old in enumerate(self.order):
            inverse[old] = new
        self.inverse = tuple(inverse)

    def redo(self) -> None:
        self.doc.reorder(self.order)

    def undo(self) -> None:
        self.doc.reorder(self.inverse)


def move_order(n: int, rows: Sequence[int], dest: int) -> list[int]:
    """The permutation that moves `rows` (layer indices) to just before `dest` (0..n) in their order."""
    moving = sorted(set(rows))
    keep = [i for i in range(n) if i not in moving]
    insert_at = sum(1 for i in keep if i < dest)
    return keep[:insert_at] + moving + keep[insert_at:]


def make_move_command(doc: Document, rows: Sequence[int], dest: int) -> ReorderCommand | None:
    """A command moving `rows` before layer `dest`, or None when nothing would move."""
    order = move_order(len(doc), rows, dest)
    if order == list(range(len(doc))):
        return None
    rows = sorted(set(rows))
    what = doc.layers[rows[0]].type if len(rows) == 1 else f"{len(rows)} layers"
    return ReorderCommand(doc, order, f"Move {what}")


class SetFieldCommand(QUndoCommand):
    """Changes one field of one layer; consecutive changes of the same field merge (typing "128")."""

    def __init__(self, doc: Document, index: int, name: str, value: Any, inner: int | None = None):
        """`inner`: change that inner layer of block `index` instead of the layer itself."""
        self.doc, self.index, self.name, self.inner = doc, index, name, inner
        layer = doc.layers[index]
        self.old = layer.to_config()
        new = dict(self.old)
        value = list(value) if isinstance(value, tuple) else value
        if inner is None:
            new[name] = value
        else:
            new["layers"] = [dict(c) for c in new["layers"]]
            new["layers"][inner][name] = value
        # Validate now, so an impossible value never reaches the stack (raises SpecError).
        self.new = layer_from_config(new, index).to_config()
        where = f"layer {index}" if inner is None else f"layer {index}.{inner}"
        what = layer.type if inner is None else layer.children()[inner].type
        super().__init__(f"Change {name} of {where} ({what})")

    def id(self) -> int:
        return MERGE_FIELD

    def mergeWith(self, other: QUndoCommand) -> bool:  # noqa: N802 - Qt's name
        if not isinstance(other, SetFieldCommand) or (other.index, other.inner, other.name) != (
                self.index, self.inner, self.name):
            return False
        if other.doc is not self.doc:
            return False
        self.new = other.new
        self.setObsolete(self.new == self.old)
        return True

    def redo(self) -> None:
        self.doc.set_layer_config(self.index, self.new)

    def undo(self) -> None:
        self.doc.set_layer_config(self.index, self.old)


class SetInputCommand(QUndoCommand):
    def __init__(self, doc: Document, shape: Sequence[int]):
        self.doc = doc
        self.old = tuple(doc.spec.input_shape)
        self.new = tuple(int(v) for v in shape)
        super().__init__(f"Change input to {'x'.join(map(str, self.new))}")

    def id(self) -> int:
        return MERGE_INPUT

    def mergeWith(self, other: QUndoCommand) -> bool:  # noqa: N802 - Qt's name
        if not isinstance(other, SetInputCommand) or other.doc is not self.doc:
            return False
        self.new = other.new
        self.setText(other.text())
        self.setObsolete(self.new == self.old)
        return True

    def redo(self) -> None:
        self.doc.set_input(self.new)

    def undo(self) -> None:
        self.doc.set_input(self.old)


class ReplaceSpecCommand(QUndoCommand):
    """Replaces the whole architecture (e.g. a one-click fix from the training workspace)."""

    def __init__(self, doc: Document, spec: Spec, text: str):
        super().__init__(text)
        self.doc = doc
        self.old = doc.spec.to_dict()
        self.new = spec.to_dict()

    def redo(self) -> None:
        self.doc.set_spec(Spec.from_dict(self.new))

    def undo(self) -> None:
        self.doc.set_spec(Spec.from_dict(self.old))


class ReplaceLayersCommand(QUndoCommand):
    """Replaces the layer list by another (moves into, out of and inside blocks); undo restores it."""

    def __init__(self, doc: Document, configs: Sequence[dict[str, Any]], text: str):
        super().__init__(text)
        self.doc = doc
        self.old = [layer.to_config() for layer in doc.layers]
        self.new = [dict(c) for c in configs]

    def redo(self) -> None:
        self.doc.replace_layers(_layers(self.new))

    def undo(self) -> None:
        self.doc.replace_layers(_layers(self.old))


class SetLockedCommand(QUndoCommand):
    """Locks exactly `indices` (the stack rows' lock, the Train tab's Freeze field); undo restores
    the locks before. One command type for both places, so they are one setting."""

    def __init__(self, doc: Document, indices: Sequence[int], text: str | None = None):
        self.doc = doc
        self.old = doc.locked
        self.new = sorted(set(indices))
        if text is None:
            added, removed = sorted(set(self.new) - set(self.old)), sorted(set(self.old) - set(self.new))
            if len(added) + len(removed) == 1:
                i = (added or removed)[0]
                text = f"{'Lock' if added else 'Unlock'} layer {i} ({doc.layers[i].type})"
            else:
                text = f"Freeze layers {', '.join(map(str, self.new))}" if self.new else "Unlock all layers"
        super().__init__(text)

    def redo(self) -> None:
        self.doc.set_locked(self.new)

    def undo(self) -> None:
        self.doc.set_locked(self.old)
