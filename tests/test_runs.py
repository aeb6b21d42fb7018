"""The run store through the CLI: runs recorded by `train`, listed, shown, compared, deleted; a damaged
record or store reported, never fatal; concurrent writers; limits."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from engine import modelfile, runs
from engine.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_cli import LENET, cli, one_line_error, write_arch  # noqa: E402


@pytest.fixture(autouse=True)
def _private_store(tmp_path, monkeypatch):
    monkeypatch.setenv("CNN_DESIGNER_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("CNN_DESIGNER_CACHE", str(tmp_path / "cache"))


def _train(capsys, tmp_path, data, lr, out="m.cnnd", extra=()):
    arch = write_arch(tmp_path / "lenet.json", LENET)
    rc, out_, err = cli(capsys, "train", "--arch", arch, "--data", data, "--epochs", 2, "--lr", lr,
                        "--limit", 300, "--batch-size", 32, "--out", tmp_path / out, *extra)
    assert rc == 0, err
    return err


def test_two_runs_listed_compared_and_deleted(capsys, tmp_path, mnist_folder):
    data = mnist_folder / "train"
    err = _train(capsys, tmp_path, data, 0.002, "a.cnnd")
    assert "recorded as run 1" in err
    _train(capsys, tmp_path, data, 0.0005, "b.cnnd")

    rc, out, err = cli(capsys, "runs", "--json")
    assert rc == 0, err
    listed = json.loads(out)
    assert [r["id"] for r in listed] == [2, 1]  # newest first
    for r, lr, name in zip(listed, (0.0005, 0.002), ("b.cnnd", "a.cnnd"), strict=True):
        assert {"id", "created", "name", "hyperparameters", "best_val_accuracy", "epochs"} <= set(r)
        assert r["hyperparameters"]["lr"] == lr
        assert r["epochs"] == 2 and r["name"] == "LeNet-5" and r["status"] == "finished"
        mf = modelfile.load(tmp_path / name)  # the best accuracy is the real one from the run's history
        assert r["best_val_accuracy"] == max(h["val_accuracy"] for h in mf.history)
        assert r["model_path"] == str((tmp_path / name).resolve())

    rc, out, _ = cli(capsys, "runs")
    assert rc == 0 and "LeNet-5" in out and "0.0005" in out and out.splitlines()[1].startswith("2 ")

    rc, out, _ = cli(capsys, "runs", "show", 1, "--json")
    rec = json.loads(out)
    assert rec["data"]["classes"] == [str(d) for d in range(10)]
    assert rec["data"]["train_images"] + rec["data"]["val_images"] == 300
    assert sum(rec["data"]["counts"]["train"].values()) == rec["data"]["train_images"]
    assert len(rec["history"]) == 2
    assert [x["type"] for x in rec["architecture"]["layers"]] == [x["type"] for x in LENET["layers"]]
    assert rec["engine_version"] and rec["duration"] > 0
    rc, out, _ = cli(capsys, "runs", "show", 1)
    assert rc == 0 and "lr=0.002" in out and "Conv2D" in out

    rc, out, _ = cli(capsys, "runs", "compare", 1, 2, "--json")
    diff = json.loads(out)
    assert diff["hyperparameters"] == {"lr": [0.002, 0.0005]}
    assert diff["architecture"] == []
    assert diff["metrics"]["best_val_accuracy"] == [listed[1]["best_val_accuracy"], listed[0]["best_val_accuracy"]]
    rc, out, _ = cli(capsys, "runs", "compare", 1, 2)
    assert "lr: 0.002 -> 0.0005" in out

    rc, _, err = cli(capsys, "runs", "delete", 1)
    assert rc == 0
    rc, out, _ = cli(capsys, "runs", "--json")
    assert [r["id"] for r in json.loads(out)] == [2]
    rc, _, err = cli(capsys, "runs", "show", 1)
    assert rc == 2 and "no run 1" in one_line_error(err)
    rc, _, err = cli(capsys, "runs", "delete", 7)
    assert rc == 2 and "no run 7" in one_line_error(err)


def _record(name: str, lr: float, layers: list | None = None) -> dict:
    return {"created": runs._now(), "name": name, "status": "finished",
            "architecture": {"format": "cnn-designer/1", "input": {"channels": 1, "height": 28, "width": 28},
                             "layers": layers or LENET["layers"]},
            "hyperparameters": {"lr": lr, "epochs": 1}, "history": [], "epochs": 1, "best_val_accuracy": 0.5}


def test_damaged_record_is_reported_and_skipped(capsys):
    store = runs.RunStore()
    a = store.add(_record("a", 0.1))
    b = store.add(_record("b", 0.2))
    with sqlite3.connect(store.path) as con:
        con.execute("UPDATE runs SET record = ? WHERE id = ?", ('{"created": "x", "architec', a))
    rc, out, err = cli(capsys, "runs", "--json")
    assert rc == 0
    assert [r["id"] for r in json.loads(out)] == [b]
    assert f"run {a} is damaged and was skipped" in err
    rc, _, err = cli(capsys, "runs", "show", a)
    assert rc == 2 and "damaged" in one_line_error(err)
    rc, _, err = cli(capsys, "runs", "compare", a, b)
    assert rc == 2 and f"run {a} is damaged" in one_line_error(err)


def test_damaged_store_reported_training_still_saves(capsys, tmp_path, mnist_folder):
    store = runs.RunStore()
    store.folder.mkdir(parents=True)
    garbage = b"this is not a database" * 100
    store.path.write_bytes(garbage)
    rc, _, err = cli(capsys, "runs")
    assert rc == 2 and "damaged" in one_line_error(err) and "move it away" in err
    err = _train(capsys, tmp_path, mnist_folder / "train", 0.001)
    assert "warning: this run is not recorded" in err and (tmp_path / "m.cnnd").is_file()
    assert store.path.read_bytes() == garbage  # never overwritten


def test_concurrent_writers_lose_nothing(tmp_path):
    code = ("import sys; from engine import runs; s = runs.RunStore()\n"
            "for i in range(25): s.add({'created': runs._now(), 'name': sys.argv[1], 'architecture': {}, "
            "'hyperparameters': {'i': i}, 'history': []})\n")
    root = Path(__file__).resolve().parent.parent
    procs = [subprocess.Popen([sys.executable, "-c", code, f"w{k}"], cwd=root) for k in range(4)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    listing = runs.RunStore().list_runs()
    assert not listing.problems
    assert sorted(r["name"] for r in listing.records) == sorted(f"w{k}" for k in range(4) for _ in range(25))
    assert len({r["id"] for r in listing.records}) == 100


def test_limits_prune_the_oldest(capsys):
    store = runs.RunStore()
    ids = [store.add(_record(f"r{i}", 0.1)) for i in range(4)]
    rc, out, err = cli(capsys, "runs", "limit", "--max-runs", 2)
    assert rc == 0 and "max_runs 2" in out and "deleted 2 run(s)" in err
    assert [r["id"] for r in store.list_runs().records] == ids[:1:-1]
    new = store.add(_record("r4", 0.1))
    assert [r["id"] for r in store.list_runs().records] == [new, ids[3]]
    old = _record("old", 0.1)
    old["created"] = "2020-01-01T00:00:00+00:00"
    store.set_limits(max_runs=0)
    store.add(old)
    assert len(store.list_runs().records) == 3
    rc, out, _ = cli(capsys, "runs", "limit", "--max-age-days", 30)
    assert "max_runs unlimited, max_age_days 30" in out
    assert "old" not in [r["name"] for r in store.list_runs().records]


def test_architecture_differences_are_readable():
    a = _record("a", 0.1)
    layers = [dict(x) for x in LENET["layers"]]
    layers[9]["units"] = 64
    layers.insert(12, {"type": "Dropout", "rate": 0.5})
    b = _record("b", 0.1, layers)
    diff = runs.compare({**a, "id": 1}, {**b, "id": 2})
    assert diff["hyperparameters"] == {}
    assert diff["architecture"] == ["layer 9 -> 9 Dense: units 84 -> 64",
                                    'layer 12 added: Dropout(rate=0.5)']


def test_store_location_rule(monkeypatch, tmp_path):
    monkeypatch.setenv("CNN_DESIGNER_RUNS", str(tmp_path / "x"))
    assert runs.store_dir() == tmp_path / "x"
    monkeypatch.delenv("CNN_DESIGNER_RUNS")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    if sys.platform.startswith("linux"):
        assert runs.store_dir() == tmp_path / "data" / "cnn-designer" / "runs"


def test_no_store_yet_lists_nothing(capsys):
    rc, out, err = cli(capsys, "runs", "--json")
    assert rc == 0 and json.loads(out) == []
    assert main(["runs"]) == 0
