"""Edits of the layer list's structure (moves into, out of and inside Residual blocks), Qt-free.

A row of the stack is addressed as (i, None) for top-level layer i, or (i, j) for inner layer j
of block i. A drop target is where new layers go: (i, None) = before top-level layer i (i may be
the layer count), (i, j) = inside block i before its inner layer j (j may be the inner count).
Edits work on configs (plain dicts), so the result is one ReplaceLayersCommand.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from engine.layers import LAYER_CLASSES
from engine.layers.residual import Residual

Address = tuple[int, int | None]


def _copy(configs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for c in configs:
        c = dict(c)
        if isinstance(c.get("layers"), list):
            c["layers"] = [dict(x) for x in c["layers"]]
        out.append(c)
    return out


def is_block(config: dict[str, Any]) -> bool:
    return isinstance(config.get("layers"), list)


def refusal(configs: Sequence[dict[str, Any]], target: Address) -> str | None:
    """Why these layers cannot go to `target`, or None."""
    if target[1] is None:
        return None
    for c in configs:
        cls = LAYER_CLASSES.get(c.get("type"))
        why = Residual.accepts(cls) if cls is not None else f"unknown layer type {c.get('type')!r}"
        if why:
            return why
    return None


def restructure(configs: Sequence[dict[str, Any]], sources: Sequence[Address], target: Address,
                inserted: Sequence[dict[str, Any]] = ()) -> tuple[list[dict[str, Any]], list[Address]] | str:
    """The layer list with the layers at `sources` (moved, in order) and then `inserted` placed at
    `target`; returns (new configs, addresses of the placed layers), or why it is refused."""
    tree = _copy(configs)

    def get(a: Address) -> dict[str, Any]:
        return tree[a[0]] if a[1] is None else tree[a[0]]["layers"][a[1]]

    tops = {a[0] for a in sources if a[1] is None}
    srcs = sorted({(a[0], -1 if a[1] is None else a[1]) for a in sources if a[1] is None or a[0] not in tops})
    movers = [get((i, None if j < 0 else j)) for i, j in srcs]
    placed = [*movers, *(dict(c) for c in _copy(inserted))]
    why = refusal(placed, target)
    if why:
        return why
    i, j = target
    marker: dict[str, Any] = {}
    host = tree if j is None else tree[i]["layers"]
    host.insert(i if j is None else j, marker)
    for m in movers:
        for lst in [tree, *(c["layers"] for c in tree if is_block(c))]:
            if any(x is m for x in lst):
                del lst[next(k for k, x in enumerate(lst) if x is m)]
                break
    k = next(n for n, x in enumerate(host) if x is marker)
    host[k:k + 1] = placed
    if j is None:
        addrs = [(k + n, None) for n in range(len(placed))]
    else:
        block = next(n for n, c in enumerate(tree) if c is not None and is_block(c) and c["layers"] is host)
        addrs = [(block, k + n) for n in range(len(placed))]
    return tree, addrs


def remove(configs: Sequence[dict[str, Any]], addresses: Sequence[Address]) -> list[dict[str, Any]]:
    """The layer list without the layers at `addresses` (a block's inner rows go with it)."""
    tree = _copy(configs)
    tops = {a[0] for a in addresses if a[1] is None}
    for i, j in sorted(addresses, key=lambda a: (a[0], -1 if a[1] is None else a[1]), reverse=True):
        if j is not None and i not in tops:
            del tree[i]["layers"][j]
    for i in sorted(tops, reverse=True):
        del tree[i]
    return tree
