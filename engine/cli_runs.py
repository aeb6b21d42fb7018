"""`cnn-designer runs [show | delete | compare | limit]`: the command-line face of engine.runs."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from typing import Any

from engine import runs
from engine.cli_train import CLIUsageError, _nonneg_int, _positive_int
from engine.safeio import dumps, printable_lines


def _print(*args: object, **kw: object) -> None:
    """print with control characters in run names, paths and class names shown escaped."""
    print(*(printable_lines(str(a)) for a in args), **kw)  # type: ignore[call-overload]


def _pct(v: Any) -> str:
    return f"{100 * v:.2f}%" if isinstance(v, (int, float)) else "-"


def _num(v: Any, spec: str) -> str:
    """A recorded number, or "-" when the run has none (null: a diverged loss, no validation)."""
    return format(v, spec) if isinstance(v, (int, float)) else "-"


def _when(iso: Any) -> str:
    try:
        return datetime.fromisoformat(str(iso)).astimezone().strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return str(iso)


def _report_problems(listing: runs.Listing) -> None:
    for p in listing.problems:
        _print(f"warning: {p}", file=sys.stderr)


def cmd_runs(args: argparse.Namespace) -> int:
    store = runs.RunStore()
    listing = store.list_runs()
    _report_problems(listing)
    if args.json:
        _print(dumps([_list_entry(r) for r in listing.records], indent=1))
        return 0
    if not listing.records:
        _print(f"no runs recorded yet in {store.path}", file=sys.stderr)
        return 0
    rows = [("ID", "CREATED", "NAME", "STATUS", "EPOCHS", "BEST VAL", "OPTIMIZER", "LR", "BATCH", "SECONDS")]
    for r in listing.records:
        hp = r["hyperparameters"]
        rows.append((str(r["id"]), _when(r["created"]), str(r.get("name", "")), str(r.get("status", "")),
                     str(r.get("epochs", 0)), _pct(r.get("best_val_accuracy")), str(hp.get("optimizer", "")),
                     f"{hp.get('lr', '')}", str(hp.get("batch_size", "")),
                     f"{r.get('duration') or 0:.1f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        _print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _list_entry(r: dict[str, Any]) -> dict[str, Any]:
    """What `runs --json` prints per run: the record without its bulky parts."""
    keep = ("id", "created", "name", "source", "status", "hyperparameters", "best_val_accuracy", "epochs",
            "final", "duration", "model_path", "engine_version")
    return {k: r.get(k) for k in keep}


def cmd_show(args: argparse.Namespace) -> int:
    r = runs.RunStore().get(args.id)
    if args.json:
        _print(dumps(r, indent=1))
        return 0
    hp, data = r["hyperparameters"], r.get("data") or {}
    _print(f"run {r['id']}: {r.get('name', '')} ({r.get('source', '?')}, {_when(r['created'])})")
    _print(f"status: {r.get('status')} {('- ' + r['message']) if r.get('message') else ''}".rstrip())
    _print(f"best validation accuracy: {_pct(r.get('best_val_accuracy'))}  epochs: {r.get('epochs', 0)}  "
          f"seconds: {r.get('duration') or 0:.1f}")
    _print(f"model: {r.get('model_path') or '(not saved)'}")
    if data:
        _print(f"data: {data.get('train_folder')} ({data.get('train_images')} training, "
              f"{data.get('val_images')} validation images; {data.get('skipped_count', 0)} skipped)")
    _print("hyperparameters: " + ", ".join(f"{k}={dumps(v)}" for k, v in hp.items()))
    _print("architecture:")
    for i, layer in enumerate(r["architecture"].get("layers") or []):
        _print(f"  {i:>2}  {runs._layer_text(layer)}")
    if r["history"]:
        _print("epoch  train loss  train acc  val loss  val acc")
        for h in r["history"]:
            _print(f"{_num(h.get('epoch'), 'd'):>5}  {_num(h.get('train_loss'), '.4f'):>10}  "
                  f"{_pct(h.get('train_accuracy')):>9}  {_num(h.get('val_loss'), '.4f'):>8}  "
                  f"{_pct(h.get('val_accuracy')):>7}")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    if not runs.RunStore().delete(args.id):
        raise CLIUsageError(f"no run {args.id} (`cnn-designer runs` lists them)")
    _print(f"deleted run {args.id}", file=sys.stderr)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    store = runs.RunStore()
    diff = runs.compare(store.get(args.a), store.get(args.b))
    if args.json:
        _print(dumps(diff, indent=1))
        return 0
    _print(f"run {args.a} vs run {args.b}")
    if diff["hyperparameters"]:
        _print("hyperparameters:")
        for k, (x, y) in diff["hyperparameters"].items():
            _print(f"  {k}: {dumps(x)} -> {dumps(y)}")
    else:
        _print("hyperparameters: the same")
    if diff["architecture"]:
        _print("architecture:")
        for line in diff["architecture"]:
            _print(f"  {line}")
    else:
        _print("architecture: the same")
    _print("metrics:")
    for k, (x, y) in diff["metrics"].items():
        fx, fy = (_pct(x), _pct(y)) if "accuracy" in k else (dumps(x), dumps(y))
        _print(f"  {k}: {fx} | {fy}")
    return 0


def cmd_limit(args: argparse.Namespace) -> int:
    store = runs.RunStore()
    if args.max_runs is not None or args.max_age_days is not None:
        removed = store.set_limits(args.max_runs, args.max_age_days)
        if removed:
            _print(f"deleted {len(removed)} run(s) beyond the new limits", file=sys.stderr)
    lim = store.limits()
    _print(f"max_runs {lim['max_runs'] or 'unlimited'}, max_age_days {lim['max_age_days'] or 'unlimited'} "
          f"({store.path})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "runs", help="list, show, compare and delete recorded training runs",
        description="Every training run (CLI or window) is recorded in the run store: $CNN_DESIGNER_RUNS, else "
                    "the user data folder (~/.local/share/cnn-designer/runs on Linux). With no action: list the "
                    "runs, newest first.")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_runs)
    acts = p.add_subparsers(dest="action", metavar="ACTION")

    def json_flag(q: argparse.ArgumentParser) -> None:
        q.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")

    q = acts.add_parser("show", help="everything recorded about one run")
    q.add_argument("id", type=_positive_int, metavar="ID")
    json_flag(q)
    q.set_defaults(func=cmd_show)
    q = acts.add_parser("delete", help="delete one run (its model file is left alone unless the store made it)")
    q.add_argument("id", type=_positive_int, metavar="ID")
    q.set_defaults(func=cmd_delete)
    q = acts.add_parser("compare", help="what differs between two runs")
    q.add_argument("a", type=_positive_int, metavar="ID1")
    q.add_argument("b", type=_positive_int, metavar="ID2")
    json_flag(q)
    q.set_defaults(func=cmd_compare)
    q = acts.add_parser("limit", help="show or set how many runs (and how old) the store keeps",
                        description="The oldest runs beyond the limits are deleted when a run is recorded. "
                                    "0 means unlimited. Defaults: 1000 runs, any age.")
    q.add_argument("--max-runs", type=_nonneg_int, metavar="N", help="keep at most N runs (0 = unlimited)")
    q.add_argument("--max-age-days", type=_nonneg_int, metavar="D", help="delete runs older than D days (0 = never)")
    q.set_defaults(func=cmd_limit)
