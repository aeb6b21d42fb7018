"""The run store: every training run (CLI or window) remembered, so runs can be listed and compared.

Why SQLite: the window and several `cnn-designer train` processes may write at the same time, and
listing, sorting and filtering are queries. The store is one file, `runs.sqlite`, in the folder
named by `$CNN_DESIGNER_RUNS`, else the platform's user data folder (`store_dir`, the XDG rule on
Linux: `$XDG_DATA_HOME/cnn-designer/runs`, else `~/.local/share/cnn-designer/runs`). WAL mode and a
busy timeout let writers wait for each other instead of failing; every operation uses its own
short-lived connection, so any thread may call any function.

A record is a JSON object (see `RunRecorder` and docs/runs.md); the columns beside it (created,
name, status, best_val_accuracy, epochs, duration) exist for sorting and filtering. A record that
does not parse is reported and skipped; a store that is not a database is reported (never
overwritten: moving it away starts a fresh one). Training never fails because of the store: a
recorder that cannot write says so once and the run goes on.

Limits: `max_runs` (default 1000) and `max_age_days` (default 0 = no limit), kept in the store
itself and set with `cnn-designer runs limit`; the oldest runs beyond them are deleted when a new
run is recorded, with the model copies the store kept for them.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from engine import __version__
from engine.errors import EngineError
from engine.places import STORE_FILE, store_dir

SCHEMA_VERSION = 1
MODELS_DIR = "models"
BUSY_TIMEOUT_S = 30.0
DEFAULT_LIMITS = {"max_runs": 1000, "max_age_days": 0}
#: columns that `list_runs(order_by=...)` may sort on
SORTABLE = ("id", "created", "name", "status", "best_val_accuracy", "epochs", "duration")
#: skipped files kept per record (the count is always exact)
MAX_SKIPPED = 50


class RunStoreError(EngineError):
    """The store cannot be opened or written; the message names the file and what to do."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _clean(v: Any) -> Any:
    """Plain JSON: NaN/inf become null, numpy scalars Python numbers."""
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if hasattr(v, "item") and getattr(v, "ndim", None) == 0:  # a NumPy scalar
        v = v.item()
    if v is None or isinstance(v, (str, bool)):
        return v
    if isinstance(v, numbers.Integral):
        return int(v)
    if isinstance(v, numbers.Real):
        f = float(v)
        return f if math.isfinite(f) else None
    return str(v)


@dataclass
class Listing:
    """Records that parsed, and one line per record that did not (reported, never fatal)."""

    records: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


class RunStore:
    """One store folder. Cheap to create; opening the database happens per operation."""

    def __init__(self, folder: str | os.PathLike | None = None):
        self.folder = Path(folder) if folder is not None else store_dir()
        self.path = self.folder / STORE_FILE

    # --- connection ------------------------------------------------------------------------------
    @contextmanager
    def _db(self, create: bool = True) -> Iterator[sqlite3.Connection]:
        if not create and not self.path.exists():
            raise FileNotFoundError
        if self.path.exists() and not self.path.is_file():
            raise RunStoreError(f"run store {self.path} is not a file: move it away")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            con = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        except (OSError, sqlite3.Error) as e:
            raise RunStoreError(f"cannot open the run store {self.path}: {e}") from None
        try:
            try:
                con.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
                _use_wal(con)
                self._ensure_schema(con)
                yield con
            except sqlite3.DatabaseError as e:
                raise self._explain(e) from None
        finally:
            con.close()

    def _explain(self, e: sqlite3.DatabaseError) -> RunStoreError:
        if _busy(e):
            return RunStoreError(f"the run store {self.path} stayed busy for {BUSY_TIMEOUT_S:.0f} s ({e})")
        if isinstance(e, sqlite3.OperationalError) and "readonly" in str(e).replace(" ", "").replace("-", ""):
            return RunStoreError(f"the run store {self.path} is read-only ({e})")
        return RunStoreError(f"the run store {self.path} is damaged ({e}): move it away to start a new one "
                             f"(nothing was changed)")

    def _ensure_schema(self, con: sqlite3.Connection) -> None:
        version = con.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RunStoreError(f"the run store {self.path} was made by a newer CNN Designer "
                                f"(schema {version}); this version reads {SCHEMA_VERSION}")
        if version == SCHEMA_VERSION:
            return
        with _transaction(con):
            con.execute("""CREATE TABLE IF NOT EXISTS runs (
                id INTEGER PRIMARY KEY AUTOINCREMENT, created TEXT NOT NULL, name TEXT, status TEXT,
                best_val_accuracy REAL, epochs INTEGER, duration REAL, record TEXT NOT NULL)""")
            con.execute("CREATE INDEX IF NOT EXISTS runs_created ON runs(created)")
            con.execute("CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # --- writing ---------------------------------------------------------------------------------
    def add(self, record: dict[str, Any]) -> int:
        """Insert a record; returns its new id (also written into the record)."""
        record = _clean(record)
        with self._db() as con:
            with _transaction(con):
                cur = con.execute(
                    "INSERT INTO runs (created, name, status, best_val_accuracy, epochs, duration, record) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)", (*_columns(record), "{}"))
                run_id = int(cur.lastrowid)
                record["id"] = run_id
                con.execute("UPDATE runs SET record = ? WHERE id = ?", (json.dumps(record), run_id))
                removed = self._apply_limits(con)
        self._remove_model_copies(removed)
        return run_id

    def update(self, run_id: int, record: dict[str, Any]) -> None:
        record = _clean({**record, "id": run_id})
        with self._db() as con:
            con.execute("UPDATE runs SET created = ?, name = ?, status = ?, best_val_accuracy = ?, epochs = ?, "
                        "duration = ?, record = ? WHERE id = ?", (*_columns(record), json.dumps(record), run_id))

    def delete(self, run_id: int) -> bool:
        """Delete one run (and the model copy the store kept for it); False if there was none."""
        with self._db() as con:
            n = con.execute("DELETE FROM runs WHERE id = ?", (run_id,)).rowcount
        self._remove_model_copies([run_id])
        return n > 0

    def model_copy_path(self, run_id: int) -> Path:
        """Where the store keeps the model of a run that was not saved anywhere else (window runs)."""
        return self.folder / MODELS_DIR / f"run-{int(run_id)}.cnnd"

    def _remove_model_copies(self, ids: list[int]) -> None:
        for i in ids:
            try:
                self.model_copy_path(i).unlink(missing_ok=True)
            except OSError:
                pass

    # --- limits ----------------------------------------------------------------------------------
    def limits(self) -> dict[str, int]:
        with self._db() as con:
            return _read_limits(con)

    def set_limits(self, max_runs: int | None = None, max_age_days: int | None = None) -> list[int]:
        """Store new limits and apply them now; returns the ids deleted."""
        with self._db() as con:
            with _transaction(con):
                for k, v in (("max_runs", max_runs), ("max_age_days", max_age_days)):
                    if v is not None:
                        con.execute("INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)", (k, str(int(v))))
                removed = self._apply_limits(con)
        self._remove_model_copies(removed)
        return removed

    def _apply_limits(self, con: sqlite3.Connection) -> list[int]:
        lim = _read_limits(con)
        doomed: list[int] = []
        if lim["max_age_days"] > 0:
            cutoff = (datetime.now(UTC) - timedelta(days=lim["max_age_days"])).isoformat(timespec="seconds")
            doomed += [r[0] for r in con.execute("SELECT id FROM runs WHERE created < ?", (cutoff,))]
        if lim["max_runs"] > 0:
            doomed += [r[0] for r in con.execute("SELECT id FROM runs ORDER BY id DESC LIMIT -1 OFFSET ?",
                                                 (lim["max_runs"],))]
        doomed = sorted(set(doomed))
        con.executemany("DELETE FROM runs WHERE id = ?", [(i,) for i in doomed])
        return doomed

    # --- reading ---------------------------------------------------------------------------------
    def list_runs(self, order_by: str = "id", descending: bool = True) -> Listing:
        """Every readable record, newest first by default; damaged ones named in `problems`."""
        if order_by not in SORTABLE:
            raise RunStoreError(f"cannot sort runs by {order_by!r} (choose from {', '.join(SORTABLE)})")
        listing = Listing()
        try:
            with self._db(create=False) as con:
                rows = con.execute(f"SELECT id, record FROM runs ORDER BY {order_by} "
                                   f"{'DESC' if descending else 'ASC'}, id DESC").fetchall()
        except FileNotFoundError:
            return listing
        for run_id, text in rows:
            rec, problem = _parse(run_id, text)
            if rec is not None:
                listing.records.append(rec)
            else:
                listing.problems.append(problem)
        return listing

    def get(self, run_id: int) -> dict[str, Any]:
        """One record; RunStoreError when it does not exist or is damaged."""
        try:
            with self._db(create=False) as con:
                row = con.execute("SELECT id, record FROM runs WHERE id = ?", (run_id,)).fetchone()
        except FileNotFoundError:
            row = None
        if row is None:
            raise RunStoreError(f"no run {run_id} in {self.path} (`cnn-designer runs` lists them)")
        rec, problem = _parse(*row)
        if rec is None:
            raise RunStoreError(problem)
        return rec


def _busy(e: sqlite3.DatabaseError) -> bool:
    """Another connection holds the lock this one needed."""
    return isinstance(e, sqlite3.OperationalError) and ("locked" in str(e) or "busy" in str(e))


def _use_wal(con: sqlite3.Connection) -> None:
    """Write-ahead logging, which the file keeps once set. The switch takes an exclusive lock that
    SQLite does not wait for: several processes opening a new store at the same moment got
    "database is locked" at once (the concurrent-writers test, about one start in 100), so it is
    retried until BUSY_TIMEOUT_S."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            con.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as e:
            if not _busy(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


@contextmanager
def _transaction(con: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE takes the write lock up front, so two writers queue instead of deadlocking."""
    con.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


def _read_limits(con: sqlite3.Connection) -> dict[str, int]:
    rows = dict(con.execute("SELECT key, value FROM settings").fetchall())
    out = dict(DEFAULT_LIMITS)
    for k in out:
        try:
            out[k] = max(0, int(rows[k]))
        except (KeyError, ValueError):
            pass
    return out


def _columns(rec: dict[str, Any]) -> tuple:
    bva = rec.get("best_val_accuracy")
    dur = rec.get("duration")
    return (str(rec.get("created") or _now()), str(rec.get("name") or ""), str(rec.get("status") or ""),
            float(bva) if isinstance(bva, (int, float)) else None, int(rec.get("epochs") or 0),
            float(dur) if isinstance(dur, (int, float)) else None)


#: fields every record must have, with their JSON types (a record missing one is damaged)
_REQUIRED = {"created": str, "architecture": dict, "hyperparameters": dict, "history": list}
_NUMBER = (int, float)
#: fields a record may have, with the JSON types the readers (`runs show`, compare, the Runs tab)
#: rely on; a record with another type there is damaged, not a crash in whoever shows it
_OPTIONAL = {"name": str, "source": str, "status": str, "message": str, "model_path": str, "engine_version": str,
             "epochs": int, "duration": _NUMBER, "best_val_accuracy": _NUMBER, "best_val_accuracy_epoch": int,
             "data": dict, "final": dict}
#: per history entry (each an object)
_EPOCH_FIELDS = {"epoch": int, "train_loss": _NUMBER, "train_accuracy": _NUMBER, "val_loss": _NUMBER,
                 "val_accuracy": _NUMBER, "seconds": _NUMBER, "lr": _NUMBER}


def _wrong_type(obj: dict[str, Any], types: dict[str, Any]) -> str | None:
    for k, t in types.items():
        v = obj.get(k)
        if v is not None and (not isinstance(v, t) or isinstance(v, bool) and t is not bool):
            return k
    return None


def _parse(run_id: int, text: Any) -> tuple[dict[str, Any] | None, str]:
    """A record from the store's JSON text, or None and why: the text is untrusted (a store copied
    from elsewhere, a damaged disk), so it is parsed under engine.safeio's bounds and each field
    the readers use is type-checked here, once."""
    from engine import safeio

    try:
        rec = safeio.parse_json(text if isinstance(text, (str, bytes)) else "", f"run {run_id}'s record")
    except safeio.SafeIOError as e:
        return None, f"run {run_id} is damaged and was skipped ({e})"
    if not isinstance(rec, dict):
        return None, f"run {run_id} is damaged and was skipped (not a JSON object)"
    for k, t in _REQUIRED.items():
        if not isinstance(rec.get(k), t):
            return None, f"run {run_id} is damaged and was skipped (no valid {k!r})"
    bad = _wrong_type(rec, _OPTIONAL)
    if bad is None and not all(isinstance(h, dict) for h in rec["history"]):
        bad = "history"
    if bad is None:
        bad = next((f"history's {k!r}" for h in rec["history"] if (k := _wrong_type(h, _EPOCH_FIELDS))), None)
    if bad is not None:
        return None, f"run {run_id} is damaged and was skipped ({bad} has the wrong type)"
    rec["id"] = run_id
    return rec, ""


# --------------------------------------------------------------------------------------------
# Recording a Trainer's run
# --------------------------------------------------------------------------------------------
def data_info(trainer: Any) -> dict[str, Any]:
    """The data of a run: folders, classes, per-class counts, skipped files."""
    import numpy as np

    def counts(s: Any) -> dict[str, int] | None:
        if s is None:
            return None
        c = np.bincount(np.asarray(s.labels, np.int64), minlength=len(trainer.classes))
        return {name: int(c[i]) for i, name in enumerate(trainer.classes)}

    def folder(s: Any) -> str | None:
        rep = getattr(s, "report", None)
        return os.path.abspath(str(rep.root)) if rep is not None and getattr(rep, "root", None) else None

    train, val = trainer.train_data, trainer.val_data
    skipped = []
    seen_roots = set()
    for s in (train, val):
        rep = getattr(s, "report", None)
        if rep is None or id(rep) in seen_roots:
            continue
        seen_roots.add(id(rep))
        skipped += [{"path": str(x.path), "reason": str(x.reason)} for x in rep.skipped]
    train_folder, val_folder = folder(train), folder(val)
    return {
        "train_folder": train_folder,
        # a split of the training folder has the same report: say so instead of naming it twice
        "val_folder": val_folder if val_folder != train_folder else None,
        "val_split": val is not None and val_folder == train_folder,
        "classes": list(trainer.classes),
        "train_images": len(train), "val_images": len(val) if val is not None else 0,
        "counts": {"train": counts(train), "val": counts(val)},
        "skipped_count": len(skipped), "skipped": skipped[:MAX_SKIPPED],
    }


def summarize_history(history: list[dict[str, Any]]) -> dict[str, Any]:
    """best_val_accuracy, best epoch and the last epoch's metrics of a history."""
    vals = [(h.get("val_accuracy"), h.get("epoch")) for h in history if isinstance(h.get("val_accuracy"), (int, float))]
    best = max(vals, key=lambda t: t[0]) if vals else (None, None)
    last = history[-1] if history else {}
    return {
        "best_val_accuracy": best[0], "best_val_accuracy_epoch": best[1],
        "final": {k: last.get(k) for k in ("train_loss", "train_accuracy", "val_loss", "val_accuracy")},
    }


class RunRecorder:
    """Records one Trainer's run: `start` before training, `epoch` after each epoch, `finish` at the
    end. Never raises: the first store problem is kept in `warning` (the caller shows it) and later
    calls do nothing, because a run is worth more than its record."""

    def __init__(self, trainer: Any, source: str, store: RunStore | None = None,
                 extra_hyperparameters: dict[str, Any] | None = None):
        self.trainer = trainer
        self.store = store or RunStore()
        self.source = source
        self.run_id: int | None = None
        self.warning: str | None = None
        self._t0 = time.monotonic()
        self._offset = len(trainer.history)
        hp = trainer.config.to_dict()
        hp["init_from"] = getattr(trainer, "init_from", None)
        hp["freeze"] = list(getattr(trainer, "frozen", []))
        hp.update(extra_hyperparameters or {})
        self.record: dict[str, Any] = {
            "created": _now(), "name": trainer.spec.name, "source": source, "status": "running", "message": "",
            "architecture": trainer.spec.to_dict(), "hyperparameters": hp, "data": {},
            "history": [], "epochs": 0, "best_val_accuracy": None, "final": {}, "duration": 0.0,
            "model_path": None, "engine_version": __version__,
        }

    def _safely(self, fn: Any) -> None:
        if self.warning is not None:
            return
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - any store failure becomes one warning
            self.warning = f"this run is not recorded: {e}"

    def start(self) -> RunRecorder:
        def go() -> None:
            self.record["data"] = data_info(self.trainer)
            self.run_id = self.store.add(self.record)

        self._safely(go)
        return self

    def _refresh(self) -> None:
        hist = list(self.trainer.history[self._offset:])
        self.record.update(history=hist, epochs=len(hist), duration=round(time.monotonic() - self._t0, 3),
                           **summarize_history(hist))

    def epoch(self) -> None:
        if self.run_id is None:
            return
        self._refresh()
        self._safely(lambda: self.store.update(self.run_id, self.record))

    def finish(self, model_path: str | os.PathLike | None = None, keep_model: bool = False,
               status: str | None = None, message: str | None = None) -> None:
        """Final metrics and where the model is. `keep_model`: with no `model_path`, the store saves a
        copy of the trained model beside itself so the run can be reopened later (window runs)."""
        if self.run_id is None:
            return
        self._refresh()
        res = getattr(self.trainer, "result", None)
        self.record["status"] = status or (res.status if res is not None else "failed")
        self.record["message"] = message if message is not None else (res.message if res is not None else "")
        if self.trainer.best_epoch is not None:
            self.record["best_epoch"] = self.trainer.best_epoch

        def go() -> None:
            path = model_path
            if path is None and keep_model and self.trainer.history:
                dest = self.store.model_copy_path(self.run_id)
                dest.parent.mkdir(parents=True, exist_ok=True)
                self.trainer.save(dest)
                path = dest
            self.record["model_path"] = os.path.abspath(str(path)) if path is not None else None
            self.store.update(self.run_id, self.record)

        self._safely(go)


# --------------------------------------------------------------------------------------------
# Comparing two runs
# --------------------------------------------------------------------------------------------
METRIC_KEYS = ("best_val_accuracy", "epochs", "duration", "status")
FINAL_KEYS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")


def compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """What differs between two records: {"hyperparameters": {key: [a, b]} (differing keys only),
    "architecture": [readable layer-by-layer differences], "metrics": {key: [a, b]} (all)}."""
    ha, hb = a.get("hyperparameters") or {}, b.get("hyperparameters") or {}
    hp = {k: [ha.get(k), hb.get(k)] for k in sorted(set(ha) | set(hb)) if ha.get(k) != hb.get(k)}
    metrics = {k: [a.get(k), b.get(k)] for k in METRIC_KEYS}
    fa, fb = a.get("final") or {}, b.get("final") or {}
    metrics.update({f"final_{k}": [fa.get(k), fb.get(k)] for k in FINAL_KEYS})
    return {"ids": [a.get("id"), b.get("id")], "hyperparameters": hp,
            "architecture": architecture_diff(a.get("architecture") or {}, b.get("architecture") or {}),
            "metrics": metrics}


def _layer_text(cfg: Any) -> str:
    if not isinstance(cfg, dict):
        return repr(cfg)
    rest = ", ".join(f"{k}={json.dumps(v)}" for k, v in cfg.items() if k != "type")
    return f"{cfg.get('type')}({rest})"


def architecture_diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Readable differences between two cnn-designer/1 architectures, layer by layer (aligned like a
    text diff, so an inserted layer reads as one insertion rather than every later layer changed)."""
    import difflib

    out: list[str] = []
    ia, ib = a.get("input"), b.get("input")
    if ia != ib:
        def shape(i: Any) -> str:
            return "x".join(str(i.get(k)) for k in ("channels", "height", "width")) if isinstance(i, dict) else "?"
        out.append(f"input: {shape(ia)} -> {shape(ib)}")
    la = [x for x in a.get("layers") or [] if isinstance(x, dict)]
    lb = [x for x in b.get("layers") or [] if isinstance(x, dict)]
    keys_a = [json.dumps(x, sort_keys=True) for x in la]
    keys_b = [json.dumps(x, sort_keys=True) for x in lb]
    sm = difflib.SequenceMatcher(a=keys_a, b=keys_b, autojunk=False)
    for tag, i1, i2, j1, j2 in sm.get_opcodes():
        if tag == "equal":
            continue
        pairs = min(i2 - i1, j2 - j1) if tag == "replace" else 0
        for k in range(pairs):
            x, y = la[i1 + k], lb[j1 + k]
            if x.get("type") == y.get("type"):
                fields = sorted((set(x) | set(y)) - {"type"})
                changes = ", ".join(f"{f} {json.dumps(x.get(f))} -> {json.dumps(y.get(f))}"
                                    for f in fields if x.get(f) != y.get(f))
                out.append(f"layer {i1 + k} -> {j1 + k} {x.get('type')}: {changes}")
            else:
                out.append(f"layer {i1 + k} -> {j1 + k}: {_layer_text(x)} replaced by {_layer_text(y)}")
        for k in range(i1 + pairs, i2):
            out.append(f"layer {k} removed: {_layer_text(la[k])}")
        for k in range(j1 + pairs, j2):
            out.append(f"layer {k} added: {_layer_text(lb[k])}")
    return out
