"""Hostile and unlucky inputs, run as the user runs them: `python -m engine.cli ...` in a process of its
own (forked from one that has started as that command does, tests/cli_server.py: the ~260 commands
would otherwise spend most of their time starting Python and importing NumPy).

The contract for every case: exit code 2, exactly one `cnn-designer:` line on stderr, no traceback,
no file changed (inputs and outputs are fingerprinted before and after), finished in bounded time
and, where a tiny file declares huge memory, under a bounded address space.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import resource
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from cli_server import CliServer
from PIL import Image

from engine import modelfile
from engine.spec import Spec

TINY = {
    "format": "cnn-designer/1", "name": "tiny", "input": {"channels": 1, "height": 8, "width": 8},
    "layers": [{"type": "Flatten"}, {"type": "Dense", "units": 2}, {"type": "Softmax"}],
}
#: address-space limit for the memory cases: the CLI itself needs well under this
MEMORY_CAP = 1536 << 20


_server: CliServer | None = None


@pytest.fixture(scope="module", autouse=True)
def _cli_server(tmp_path_factory):
    """The commands run as processes forked from one that has started as `python -m engine.cli` does
    (tests/cli_server.py says how and why); the module's trained model and run store, and the
    commands run with capabilities dropped, start a fresh interpreter each."""
    global _server
    _server = CliServer(tmp_path_factory.mktemp("cli_server"))
    yield
    server, _server = _server, None
    server.close()


def cli(*args, cwd: Path, timeout: float = 60, mem: int | None = None, preexec=None,
        env: dict | None = None, fresh: bool = False) -> subprocess.CompletedProcess:
    e = dict(os.environ, CNN_DESIGNER_CACHE=str(cwd / ".cache"), PYTHONWARNINGS="default")
    e.update(env or {})
    if _server is not None and not fresh and preexec is None:
        p = _server.run(list(map(str, args)), cwd=cwd, env=e, timeout=timeout, mem=mem)
        _server.check_quiet()
        return p

    def pre():
        if mem is not None:
            resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        if preexec is not None:
            preexec()

    return subprocess.run([sys.executable, "-m", "engine.cli", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=e, preexec_fn=pre if (mem or preexec) else None)


def refused(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit 2 with one message line, no traceback, no warnings; returns the line."""
    err = proc.stderr
    assert "Traceback" not in err and "Warning" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    msgs = [ln for ln in lines if ln.startswith("cnn-designer:")]
    assert proc.returncode == 2, (proc.returncode, err)
    assert len(msgs) == 1, err
    for f in fragments:
        assert f in msgs[0], msgs[0]
    return msgs[0]


def fingerprint(root: Path) -> dict[str, tuple]:
    """Every entry under root (no descent into .cache): kind, mode, size and content hash."""
    out = {}
    for p in sorted(root.rglob("*")):
        if ".cache" in p.parts:
            continue
        st = os.lstat(p)
        digest = None
        if stat.S_ISREG(st.st_mode):  # the sparse giants are compared by size and time instead
            digest = hashlib.sha256(p.read_bytes()).hexdigest() if st.st_size < 1 << 24 else st.st_mtime_ns
        out[str(p.relative_to(root))] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_size, digest)
    return out


def tiny_folder(root: Path, classes=("a", "b"), per_class: int = 12) -> Path:
    """Two easy classes of 8x8 grayscale PNGs (bright top half vs bright bottom half)."""
    rng = np.random.default_rng(0)
    for k, name in enumerate(classes):
        d = root / name
        d.mkdir(parents=True)
        for i in range(per_class):
            img = rng.integers(0, 60, (8, 8), dtype=np.uint8)
            if k == 0:
                img[:4] += 180
            else:
                img[4:] += 180
            Image.fromarray(img).save(d / f"{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def _trained(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hostile")
    (root / "arch.json").write_text(json.dumps(TINY))
    tiny_folder(root / "data")
    p = cli("train", "--arch", "arch.json", "--data", "data", "--epochs", "1", "--val-split", "0",
            "--out", "model.cnnd", cwd=root, fresh=True)
    assert p.returncode == 0, p.stderr
    return root


@pytest.fixture
def work(_trained, tmp_path) -> Path:
    """A working folder (a fresh copy per test) with a tiny design, data set and trained model."""
    w = tmp_path / "w"
    shutil.copytree(_trained, w, ignore=shutil.ignore_patterns(".cache"))
    return w


def fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def model_with_json(path: Path, doc_bytes: bytes, like: Path) -> Path:
    """A .cnnd whose model.json is `doc_bytes` and whose weights are those of `like`."""
    with zipfile.ZipFile(like) as z:
        weights = z.read("weights.npz")
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("model.json", doc_bytes)
        z.writestr("weights.npz", weights)
    return path


# --------------------------------------------------------------------------------------------
# Inputs that are not regular files, or far too big
# --------------------------------------------------------------------------------------------
def _not_regular(work: Path, kind: str) -> Path:
    if kind == "device":
        return Path("/dev/zero")
    if kind == "fifo":
        return fifo(work / "pipe.json")
    if kind == "folder":
        d = work / "folder.json"
        d.mkdir()
        return d
    raise AssertionError(kind)


READERS = {
    "summary": lambda x: ["summary", x],
    "train --arch": lambda x: ["train", "--arch", x, "--data", "data", "--out", "new.cnnd"],
    "predict model": lambda x: ["predict", x, "data/a/00.png"],
    "predict image": lambda x: ["predict", "model.cnnd", x],
    "evaluate": lambda x: ["evaluate", x, "--data", "data"],
    "export model": lambda x: ["export", x, "--format", "json", "--out", "out.json"],
    "export --samples": lambda x: ["export", "model.cnnd", "--format", "onnx", "--out", "out.onnx", "--samples", x],
    "import": lambda x: ["import", x, "--out", "imported.cnnd"],
    "explain image": lambda x: ["explain", "model.cnnd", x],
    "lr-find --arch": lambda x: ["lr-find", "--arch", x, "--data", "data"],
}


@pytest.mark.parametrize("kind", ["device", "fifo", "folder"])
@pytest.mark.parametrize("reader", list(READERS))
def test_every_read_path_must_be_a_regular_file(work, reader, kind):
    bad = _not_regular(work, kind)
    before = fingerprint(work)
    p = cli(*READERS[reader](bad), cwd=work, timeout=30, mem=MEMORY_CAP)
    refused(p, str(bad))
    assert fingerprint(work) == before


@pytest.mark.parametrize(("reader", "size"), [
    ("summary", 17 << 20), ("predict model", (4 << 30) + 1), ("predict image", 257 << 20),
    ("export --samples", 257 << 20),
])
def test_files_over_their_kinds_size_cap_are_refused_before_reading(work, reader, size):
    big = work / ("big.png" if "image" in reader or "samples" in reader else "big.json")
    with open(big, "wb") as f:  # sparse: costs no disk, reading it would cost the whole size
        f.truncate(size)
    before = fingerprint(work)
    p = cli(*READERS[reader](big), cwd=work, timeout=30, mem=MEMORY_CAP)
    refused(p, "more than the")
    assert fingerprint(work) == before


HOSTILE_JSON = {
    "nested 100000 deep": b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    "nested 2000 deep in a list": b"[" * 2000 + b"]" * 2000,
    "5000-digit integer": b'{"format": "cnn-designer/1", "input": {"channels": 1, "height": ' + b"9" * 5000
                          + b', "width": 8}, "layers": []}',
    "float overflow": b'{"format": "cnn-designer/1", "input": {"channels": 1, "height": 1e999, "width": 8}}',
    "NaN literal": b'{"format": "cnn-designer/1", "input": {"channels": NaN, "height": 8, "width": 8}}',
    "type is a list": json.dumps({**TINY, "layers": [{"type": ["ReLU"]}]}).encode(),
    "type is an object": json.dumps({**TINY, "layers": [{"type": {"ReLU": 1}}]}).encode(),
    "units is a list": json.dumps({**TINY, "layers": [{"type": "Flatten"}, {"type": "Dense", "units": [2]}]}).encode(),
    "layer is a string": json.dumps({**TINY, "layers": ["ReLU"]}).encode(),
    "input is a list": json.dumps({**TINY, "input": [1, 8, 8]}).encode(),
    "name is an object": json.dumps({**TINY, "name": {"x": 1}}).encode(),
    "not UTF-8": b'{"name": "\xff\xfe"}',
    "huge input": json.dumps({**TINY, "input": {"channels": 1, "height": 40000, "width": 40000}}).encode(),
}


@pytest.mark.parametrize("case", list(HOSTILE_JSON))
def test_hostile_architecture_json_is_one_line(work, case):
    (work / "bad.json").write_bytes(HOSTILE_JSON[case])
    before = fingerprint(work)
    for args in (["summary", "bad.json"], ["train", "--arch", "bad.json", "--data", "data", "--out", "n.cnnd"]):
        p = cli(*args, cwd=work, timeout=30, mem=MEMORY_CAP)
        refused(p)
    assert fingerprint(work) == before


@pytest.mark.parametrize("case", ["nested 100000 deep", "5000-digit integer", "type is a list", "float overflow"])
def test_hostile_json_inside_a_model_file_is_one_line(work, case):
    doc = json.loads(zipfile.ZipFile(work / "model.cnnd").read("model.json"))
    if case == "nested 100000 deep":
        raw = json.dumps(doc).encode()[:-1] + b', "training": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    elif case == "5000-digit integer":
        raw = json.dumps(doc).replace('"height": 8', '"height": ' + "9" * 5000, 1).encode()
    elif case == "float overflow":
        raw = json.dumps(doc).replace('"scale": ', '"scale": 1e999, "x": ', 1).encode()
    else:
        doc["architecture"]["layers"][0]["type"] = ["Flatten"]
        raw = json.dumps(doc).encode()
    model_with_json(work / "bad.cnnd", raw, work / "model.cnnd")
    before = fingerprint(work)
    for args in (["summary", "bad.cnnd"], ["predict", "bad.cnnd", "data/a/00.png"],
                 ["evaluate", "bad.cnnd", "--data", "data"], ["export", "bad.cnnd", "--out", "o.json"]):
        refused(cli(*args, cwd=work, timeout=30, mem=MEMORY_CAP), "bad.cnnd")
    assert fingerprint(work) == before


# --------------------------------------------------------------------------------------------
# Outputs that must not be clobbered
# --------------------------------------------------------------------------------------------
def _special_output(work: Path, kind: str) -> Path:
    if kind == "fifo":
        return fifo(work / "out.pipe")
    if kind == "device":
        if os.geteuid() != 0:
            pytest.skip("making a device node needs root")
        p = work / "null"
        os.mknod(p, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # a private /dev/null
        return p
    if kind == "symlink to a device":
        p = work / "link.cnnd"
        p.symlink_to("/dev/null")
        return p
    raise AssertionError(kind)


WRITERS = {
    "train --out": lambda x: ["train", "--arch", "arch.json", "--data", "data", "--epochs", "1", "--out", x],
    "train --log": lambda x: ["train", "--arch", "arch.json", "--data", "data", "--epochs", "1", "--out", "n.cnnd",
                              "--log", x],
    "export --out json": lambda x: ["export", "model.cnnd", "--format", "json", "--out", x],
    "export --out npz": lambda x: ["export", "model.cnnd", "--format", "npz", "--out", x],
    "export --out onnx": lambda x: ["export", "model.cnnd", "--format", "onnx", "--out", x],
}


@pytest.mark.parametrize("kind", ["fifo", "device", "symlink to a device"])
@pytest.mark.parametrize("writer", list(WRITERS))
def test_outputs_are_regular_files_only(work, writer, kind):
    target = _special_output(work, kind)
    before = fingerprint(work)
    p = cli(*WRITERS[writer](target), cwd=work, timeout=60)
    refused(p, "regular file")
    assert fingerprint(work) == before
    assert not stat.S_ISREG(os.stat(target).st_mode)


COLLISIONS = {
    "--out is --arch": ["--out", "arch.json"],
    "--log is --arch": ["--out", "n.cnnd", "--log", "arch.json"],
    "--log is --out": ["--out", "n.cnnd", "--log", "n.cnnd"],
    "--out is a hard link of --arch": ["--out", "hard.json"],
    "--log is a symlink to --arch": ["--out", "n.cnnd", "--log", "sym.jsonl"],
    "--log is the model trained before": ["--out", "n.cnnd", "--log", "model.cnnd", "--val", "data"],
    "--log onto a training image": ["--out", "n.cnnd", "--log", "data/a/00.png"],
    "--out onto a training image": ["--out", "data/b/03.png"],
    "--out new inside --data": ["--out", "data/a/new.cnnd"],
    "--out inside --data through a link": ["--out", "lnk/new.cnnd"],
}


@pytest.mark.parametrize("case", list(COLLISIONS))
def test_colliding_paths_are_refused_up_front(work, case):
    os.link(work / "arch.json", work / "hard.json")
    (work / "sym.jsonl").symlink_to(work / "arch.json")
    (work / "lnk").symlink_to(work / "data" / "a")
    before = fingerprint(work)
    p = cli("train", "--arch", "arch.json", "--data", "data", "--epochs", "1", *COLLISIONS[case], cwd=work)
    refused(p)
    assert fingerprint(work) == before


def test_a_failed_run_leaves_the_log_file_untouched(work):
    """--log naming the previous model: the run fails (bad data), the model is intact."""
    (work / "empty").mkdir()
    before = fingerprint(work)
    p = cli("train", "--arch", "arch.json", "--data", "empty", "--out", "n.cnnd", "--log", "model.cnnd", cwd=work)
    refused(p, "no class subfolders")
    assert fingerprint(work) == before


def test_val_and_data_must_differ(work):
    (work / "data" / "val").mkdir()
    before = fingerprint(work)
    for val in ("data", "./data/", "data/val"):
        refused(cli("train", "--arch", "arch.json", "--data", "data", "--val", val, "--out", "n.cnnd", cwd=work),
                "overlaps --data")
    assert fingerprint(work) == before


def test_export_never_overwrites_its_own_model(work):
    before = fingerprint(work)
    for fmt in ("json", "npz", "onnx"):
        refused(cli("export", "model.cnnd", "--format", fmt, "--out", "model.cnnd", cwd=work), "same file")
    assert fingerprint(work) == before


def test_replacing_a_file_keeps_its_mode_and_writes_only_after_success(work):
    out, log = work / "model.cnnd", work / "run.jsonl"
    log.write_text("old log\n")
    os.chmod(out, 0o640)
    os.chmod(log, 0o604)
    p = cli("train", "--arch", "arch.json", "--data", "data", "--epochs", "2", "--val-split", "0", "--out", out,
            "--log", log, cwd=work)
    assert p.returncode == 0, p.stderr
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o640 and stat.S_IMODE(os.stat(log).st_mode) == 0o604
    assert [json.loads(ln)["epoch"] for ln in log.read_text().splitlines()] == [1, 2]
    assert len(modelfile.load(out).history) == 2
    assert not [f for f in os.listdir(work) if f.endswith(".tmp")]


# --------------------------------------------------------------------------------------------
# Terminal output
# --------------------------------------------------------------------------------------------
ESC = "\x1b[31mred\x1b[0m"


def test_control_characters_from_files_are_shown_escaped(tmp_path):
    tiny_folder(tmp_path / "data", classes=(ESC, "b\u202egnp.exe"))
    arch = dict(TINY, name="x\x1b]0;pwned\x07")
    (tmp_path / "arch.json").write_text(json.dumps(arch))
    img = tmp_path / "a\nfake: line.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(img, format="PNG")
    (tmp_path / "bad\x1b[2J.png").write_bytes(b"not an image")
    env = {"CNN_DESIGNER_RUNS": str(tmp_path / "runs")}
    runs = [
        cli("train", "--arch", "arch.json", "--data", "data", "--epochs", "1", "--val-split", "0",
            "--out", "m.cnnd", cwd=tmp_path, env=env),
        cli("predict", "m.cnnd", img, "bad\x1b[2J.png", "--top", "2", cwd=tmp_path),
        cli("evaluate", "m.cnnd", "--data", "data", cwd=tmp_path),
        cli("summary", "m.cnnd", cwd=tmp_path),
        cli("summary", "arch.json", cwd=tmp_path),
        cli("explain", "m.cnnd", img, cwd=tmp_path),
        cli("runs", cwd=tmp_path, env=env),
        cli("runs", "show", "1", cwd=tmp_path, env=env),
        cli("explain", "m.cnnd", img, "--out", "ov\x1b[2J", cwd=tmp_path),
    ]
    for p in runs:
        text = p.stdout + p.stderr
        assert "\x1b" not in text and "\u202e" not in text and "\x07" not in text, text
        assert "Traceback" not in text
    predict = runs[1]
    assert predict.returncode == 2
    assert "\\x1b[31mred\\x1b[0m" in predict.stdout  # the name is still there, readable
    assert "a\\nfake: line.png: " in predict.stdout and "\nfake: line.png" not in predict.stdout
    assert len(predict.stderr.strip().splitlines()) == 1 and "bad\\x1b[2J.png" in predict.stderr
    assert "\\u202e" in runs[2].stdout
    assert "x\\x1b]0;pwned\\x07" in runs[4].stdout
    assert "pwned" in runs[7].stdout and runs[7].returncode == 0
    assert runs[8].returncode == 0 and "-> ov\\x1b[2J/a\\nfake: line_occlusion.png" in runs[8].stdout
    # JSON output stays exact: json escapes what a terminal would interpret
    js = cli("predict", "m.cnnd", img, "--json", cwd=tmp_path)
    assert "\x1b" not in js.stdout and set(json.loads(js.stdout)[0]["probabilities"]) == {ESC, "b\u202egnp.exe"}


def test_the_spec_loader_never_raises_anything_but_spec_errors(tmp_path):
    """The Python API behind the CLI: the same hostile files give SpecError, not other types."""
    from engine.errors import SpecError

    for case, raw in HOSTILE_JSON.items():
        (tmp_path / "x.json").write_bytes(raw)
        with pytest.raises(SpecError):
            Spec.load(tmp_path / "x.json")
        assert case


# --------------------------------------------------------------------------------------------
# Memory declared by tiny files: refused with the figure, under a bounded address space and time
# --------------------------------------------------------------------------------------------
HUGE_DENSE = {**TINY, "input": {"channels": 1, "height": 256, "width": 256},
              "layers": [{"type": "Flatten"}, {"type": "Dense", "units": 500_000}, {"type": "ReLU"},
                         {"type": "Dense", "units": 2}]}
HUGE_MAPS = {**TINY, "input": {"channels": 3, "height": 4096, "width": 4096},
             "layers": [{"type": "Conv2D", "filters": 64, "kernel_size": 3, "padding": "same"},
                        {"type": "GlobalAvgPool2D"}, {"type": "Dense", "units": 2}]}


@pytest.mark.parametrize("command", ["train", "lr-find", "check"])
@pytest.mark.parametrize(("arch", "expect"), [(HUGE_DENSE, "use fewer filters or units"),
                                              (HUGE_MAPS, "lower --batch-size")])
def test_training_a_design_that_cannot_fit_is_refused_with_the_figure(work, arch, expect, command):
    (work / "big.json").write_text(json.dumps(arch))
    before = fingerprint(work)
    out = ["--out", "n.cnnd"] if command == "train" else []
    p = cli(command, "--arch", "big.json", "--data", "data", *out, cwd=work, timeout=60, mem=MEMORY_CAP)
    line = refused(p, "would need about", "GB of memory", "budget", expect)
    assert "ulimit" in line  # the budget follows the address-space limit the process runs under
    assert fingerprint(work) == before


def _model_declaring(path: Path, arch: dict) -> Path:
    """A valid model file (weights and all) for `arch`, written without running it."""
    from engine.data import Preprocessing
    from engine.model import Model
    from engine.trained import TrainedModel

    spec = Spec.from_dict(arch)
    tm = TrainedModel.from_model(Model(spec), ["a", "b"], Preprocessing.for_input(spec.input_shape),
                                 history=[{"epoch": 1, "train_loss": 0.5}])
    modelfile.save(path, tm)
    return path


def test_a_small_model_file_declaring_huge_activations_is_refused(work):
    m = _model_declaring(work / "maps.cnnd", HUGE_MAPS)
    assert m.stat().st_size < 20_000
    before = fingerprint(work)
    for args in (["predict", m, "data/a/00.png"], ["evaluate", m, "--data", "data"]):
        refused(cli(*args, cwd=work, timeout=60, mem=MEMORY_CAP), "would need about", "budget")
    assert fingerprint(work) == before


def test_a_model_file_may_not_declare_a_giant_input(work):
    doc = json.loads(zipfile.ZipFile(work / "model.cnnd").read("model.json"))
    doc["architecture"]["input"].update(height=40000, width=40000)
    doc["preprocessing"].update(height=40000, width=40000)
    bad = model_with_json(work / "giant.cnnd", json.dumps(doc).encode(), work / "model.cnnd")
    assert bad.stat().st_size < 4096
    before = fingerprint(work)
    for args in (["predict", bad, "data/a/00.png"], ["evaluate", bad, "--data", "data"], ["summary", bad]):
        refused(cli(*args, cwd=work, timeout=30, mem=MEMORY_CAP), "too large")
    assert fingerprint(work) == before


def test_the_budget_can_be_set_and_is_named(work):
    p = cli("train", "--arch", "arch.json", "--data", "data", "--out", "n.cnnd", cwd=work,
            env={"CNN_DESIGNER_MEMORY": "2K"})
    refused(p, "CNN_DESIGNER_MEMORY=2K")
    assert not (work / "n.cnnd").exists()


# --------------------------------------------------------------------------------------------
# What a model file may steer: generated code, local paths
# --------------------------------------------------------------------------------------------
HOSTILE_NAME = 'evil"""; import os; os.system("touch pwned") #\\u0041\\N{BEL}__CLASSES__'
HOSTILE_CLASSES = ['a"""\nimport os #', "b\\'\x1b[2J__NAME__\u2028\\"]


def _module_constants(path: Path) -> dict:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))  # a SyntaxError fails the test
    out = {"__doc__": ast.get_docstring(tree, clean=False)}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            try:
                out[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    return out


@pytest.mark.parametrize("fmt", ["pytorch", "onnx"])
def test_generated_code_carries_hostile_names_only_as_literals(tmp_path, fmt):
    tiny_folder(tmp_path / "data", classes=HOSTILE_CLASSES)
    (tmp_path / "arch.json").write_text(json.dumps(dict(TINY, name=HOSTILE_NAME)))
    model = tmp_path / (HOSTILE_NAME.replace("/", "_") + ".cnnd")
    p = cli("train", "--arch", "arch.json", "--data", "data", "--epochs", "1", "--val-split", "0", "--out", model,
            cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    out = tmp_path / ("exp" if fmt == "pytorch" else "exp.onnx")
    p = cli("export", model, "--format", fmt, "--out", out, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    folder = out if fmt == "pytorch" else tmp_path / "exp_predict"
    scripts = sorted(folder.glob("*.py"))
    assert {s.name for s in scripts} >= {"predict.py", "preprocess.py"} | (
        {"model.py", "train.py"} if fmt == "pytorch" else set())
    for script in scripts:
        consts = _module_constants(script)
        if "CLASSES" in consts:
            assert consts["CLASSES"] == HOSTILE_CLASSES  # exactly the names, not code
        if script.name in ("model.py", "train.py"):
            assert HOSTILE_NAME.replace("/", "_") in consts["__doc__"]  # the name reads back as written
    assert isinstance(_module_constants(folder / "preprocess.py")["PREPROCESSING"], dict)
    assert not (tmp_path / "pwned").exists()
    assert "\x1b" not in (folder / "README.md").read_text(encoding="utf-8")
    if fmt == "onnx":  # the exported program shows the class names escaped too
        sample = sorted((folder / "samples").iterdir())[0]
        r = subprocess.run([sys.executable, folder / "predict.py", sample, "--top", "2"], capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert "\x1b" not in r.stdout and "\u2028" not in r.stdout and r.stdout.count("\n") == 1, r.stdout
        assert "\\x1b[2J__NAME__" in r.stdout


def test_a_model_file_never_chooses_local_files_for_export(work, tmp_path):
    """training.data pointing at a private folder: export does not read or copy from it."""
    private = tmp_path / "private"
    tiny_folder(private, classes=("scan", "secret"))
    doc = json.loads(zipfile.ZipFile(work / "model.cnnd").read("model.json"))
    doc["training"].update(data=str(private), data_dir=str(private), val=str(private))
    m = model_with_json(work / "crafted.cnnd", json.dumps(doc).encode(), work / "model.cnnd")
    p = cli("export", m, "--format", "onnx", "--out", "x.onnx", cwd=work)
    assert p.returncode == 0, p.stderr
    copied = sorted(f.name for f in (work / "x_predict" / "samples").iterdir())
    assert copied and not any("scan" in c or "secret" in c for c in copied)
    # the samples are the built-in digits (or the ones the user names)
    p = cli("export", m, "--format", "onnx", "--out", "y.onnx", "--samples", "data/b/03.png", cwd=work)
    assert p.returncode == 0 and [f.name for f in (work / "y_predict" / "samples").iterdir()] == ["00_03.png"]


@pytest.mark.parametrize("bad", ["notes.png", "bomb.png", "empty.png"])
def test_export_never_takes_a_file_training_would_skip_as_a_sample(work, bad):
    path = work / bad
    if bad == "notes.png":
        path.write_text("not an image")
    elif bad == "bomb.png":
        Image.new("1", (10_000, 10_000)).save(path)  # 100 megapixels, a few KB of PNG
    else:
        path.touch()
    before = fingerprint(work)
    refused(cli("export", "model.cnnd", "--format", "onnx", "--out", "x.onnx", "--samples", path, cwd=work),
            "cannot use", bad)
    assert fingerprint(work) == before


# --------------------------------------------------------------------------------------------
# Wrong results
# --------------------------------------------------------------------------------------------
def _strict_json(text: str):
    def no_constants(name):
        raise AssertionError(f"{name} is not JSON")

    return json.loads(text, parse_constant=no_constants)


def test_a_diverging_first_step_saves_the_initial_weights_without_warnings(work):
    p = cli("train", "--arch", "arch.json", "--data", "data", "--lr", "1e308", "--epochs", "1", "--out", "n.cnnd",
            "--log", "run.jsonl", cwd=work)
    line = refused(p, "became NaN", "saved the last good weights")
    assert "RuntimeWarning" not in p.stderr and "nan" not in p.stderr.replace(line, "").lower()
    tm = modelfile.load(work / "n.cnnd")  # saved as promised, and loadable: every weight finite
    assert all(np.isfinite(v).all() for v in tm.state.values())
    for ln in (work / "run.jsonl").read_text().splitlines():
        _strict_json(ln)
    p = cli("predict", "n.cnnd", "data/a/00.png", "--json", cwd=work)
    assert p.returncode == 0 and _strict_json(p.stdout)


def test_json_outputs_never_carry_nan_literals(work):
    from engine import safeio

    assert safeio.dumps({"loss": float("nan"), "x": [np.float32("inf"), 1.5]}) == '{"loss": null, "x": [null, 1.5]}'
    p = cli("train", "--arch", "arch.json", "--data", "data", "--epochs", "2", "--val-split", "0", "--out", "n.cnnd",
            "--log", "run.jsonl", cwd=work)
    assert p.returncode == 0, p.stderr
    logs = [_strict_json(ln) for ln in (work / "run.jsonl").read_text().splitlines()]
    assert [d["val_loss"] for d in logs] == [None, None]
    for args in (["evaluate", "n.cnnd", "--data", "data", "--json"], ["summary", "n.cnnd", "--json"]):
        p = cli(*args, cwd=work)
        assert p.returncode == 0 and _strict_json(p.stdout)


@pytest.mark.parametrize("change", [{"scale": 1e308}, {"std": [1e-300]}, {"mean": [1e300]}, {"scale": 1e5}])
def test_preprocessing_that_would_make_every_prediction_nan_is_refused(work, change):
    doc = json.loads(zipfile.ZipFile(work / "model.cnnd").read("model.json"))
    doc["preprocessing"].update(change)
    bad = model_with_json(work / "bad.cnnd", json.dumps(doc).encode(), work / "model.cnnd")
    before = fingerprint(work)
    for args in (["predict", bad, "data/a/00.png"], ["evaluate", bad, "--data", "data"],
                 ["export", bad, "--format", "onnx", "--out", "x.onnx"]):
        refused(cli(*args, cwd=work), "preprocessing")
    assert fingerprint(work) == before


def _without_read_override():
    """Make the CLI unable to read 0o000 files even as root: drop CAP_DAC_OVERRIDE and
    CAP_DAC_READ_SEARCH from the bounding set before exec (prctl PR_CAPBSET_DROP)."""
    if os.geteuid() != 0:
        return None
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)

    def drop():
        for cap in (1, 2):
            if libc.prctl(24, cap, 0, 0, 0) != 0:
                os._exit(99)

    probe = subprocess.run(["cat", "/proc/self/status"], preexec_fn=drop, capture_output=True, text=True)
    if probe.returncode == 99:
        pytest.skip("cannot drop the file-read capabilities here")
    return drop


def test_unreadable_files_and_folders_are_reported_as_unreadable(work):
    drop = _without_read_override()
    train = ["train", "--arch", "arch.json", "--data", "data", "--epochs", "1", "--val-split", "0", "--out", "n.cnnd"]
    p = cli(*train, cwd=work, preexec=drop)  # warms the cache with every file readable
    assert p.returncode == 0, p.stderr
    locked = work / "data" / "a" / "03.png"
    os.chmod(locked, 0)
    try:
        p = cli(*train, cwd=work, preexec=drop)  # warm cache: the locked file must not be used silently
        assert p.returncode == 0, p.stderr
        assert f"{locked}: cannot read (Permission denied)" in p.stderr and "corrupt" not in p.stderr
        assert "23 images in 2 classes" in p.stderr
        p = cli("predict", "model.cnnd", locked, cwd=work, preexec=drop)
        refused(p, "cannot read (Permission denied)")
        os.chmod(work / "data" / "b", 0)
        p = cli(*train, cwd=work, preexec=drop)
        refused(p, "cannot read class folder", "Permission denied")
    finally:
        os.chmod(locked, 0o644)
        os.chmod(work / "data" / "b", 0o755)


def test_special_files_inside_a_data_folder_are_skipped_not_waited_on(work):
    fifo(work / "data" / "a" / "pipe.png")
    (work / "data" / "b" / "zero.png").symlink_to("/dev/zero")
    p = cli("train", "--arch", "arch.json", "--data", "data", "--epochs", "1", "--val-split", "0", "--out", "n.cnnd",
            cwd=work, timeout=60, mem=MEMORY_CAP)
    assert p.returncode == 0, p.stderr
    assert "pipe.png: is a named pipe, not a regular file" in p.stderr
    assert "zero.png: is a device, not a regular file" in p.stderr
    # the window's colour check samples the same files: it must not block on the pipe either
    code = ("import sys; from designer.worker import sample_images; "
            "print(sample_images(sys.argv[1:])[0])")
    files = [str(work / "data" / "a" / "pipe.png"), str(work / "data" / "b" / "zero.png"),
             str(work / "data" / "a" / "00.png")]
    r = subprocess.run([sys.executable, "-c", code, *files], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, QT_QPA_PLATFORM="offscreen"))
    assert r.returncode == 0 and r.stdout.strip() == "0.0", r.stderr


@pytest.mark.parametrize("target", ["/", ".."])
def test_a_class_folder_linking_back_above_the_data_is_refused_at_once(work, target):
    (work / "data" / "linked").symlink_to(target if target == "/" else work)
    before = fingerprint(work)
    p = cli("train", "--arch", "arch.json", "--data", "data", "--out", "n.cnnd", cwd=work, timeout=30)
    refused(p, "leads to", "remove that link")
    assert fingerprint(work) == before


def test_scanning_stops_at_the_entry_limit(tmp_path, monkeypatch):
    from engine import folders

    tiny_folder(tmp_path / "d", per_class=6)
    monkeypatch.setattr(folders, "MAX_FOLDER_ENTRIES", 8)
    with pytest.raises(folders.DataError, match="more than 8 files and folders"):
        folders.scan_folder(tmp_path / "d")


# --------------------------------------------------------------------------------------------
# Round 3: further cases of the same families
# --------------------------------------------------------------------------------------------
def test_a_file_that_would_wait_for_data_is_refused_not_waited_on(tmp_path, monkeypatch):
    """/proc/kmsg is a "regular" file whose read waits for the next kernel message: reading it must
    not hang. Reproduced without touching the kernel log: the read gets a descriptor that has no
    data and would block (a pipe with a writer that never writes)."""
    from engine import safeio

    path = fifo(tmp_path / "kmsg")
    writer = os.open(path, os.O_RDWR)  # keeps the pipe open, never writes
    try:
        monkeypatch.setattr(safeio, "_open_checked",
                            lambda p, what, limit: os.open(p, os.O_RDONLY | os.O_NONBLOCK))
        with pytest.raises(safeio.SafeIOError, match="would wait forever"):
            safeio.read_bytes(path, "architecture")
    finally:
        os.close(writer)


def test_a_size_cap_of_gigabytes_costs_only_the_files_size(work):
    """The importer's cap is 2 GB: reading a small ONNX under a 1.5 GB address space must work (the
    cap was once allocated up front, so every import failed under `ulimit -v`)."""
    assert cli("export", "model.cnnd", "--format", "onnx", "--out", "m.onnx", cwd=work).returncode == 0
    p = cli("import", "m.onnx", "--out", "back.cnnd", cwd=work, timeout=60, mem=MEMORY_CAP)
    assert p.returncode == 0, p.stderr
    assert modelfile.load(work / "back.cnnd").classes == ["a", "b"]
    assert "article" not in p.stderr
    big = work / "big.json"
    with open(big, "wb") as f:
        f.truncate(17 << 20)
    assert "an architecture file may have" in refused(cli("summary", big, cwd=work))


def test_a_model_file_declaring_gigabytes_of_weights_is_refused_before_reading_them(work):
    """A few KB of zip can decompress to gigabytes: the declared weights are weighed against the
    budget before a byte of weights.npz is decompressed (here the archive's weights are not even
    there; the message must be the memory figure, not a complaint about the arrays)."""
    doc = json.loads(zipfile.ZipFile(work / "model.cnnd").read("model.json"))
    doc["architecture"]["layers"] = [{"type": "Flatten"}, {"type": "Dense", "units": 20_000_000},
                                     {"type": "Dense", "units": 2}]
    bad = model_with_json(work / "bomb.cnnd", json.dumps(doc).encode(), work / "model.cnnd")
    before = fingerprint(work)
    for args in (["summary", bad], ["predict", bad, "data/a/00.png"], ["export", bad, "--out", "x.json"],
                 ["train", "--arch", "arch.json", "--data", "data", "--init-from", bad, "--out", "n.cnnd"]):
        refused(cli(*args, cwd=work, timeout=30, mem=MEMORY_CAP), "loading this model file would need about",
                "budget")
    assert fingerprint(work) == before


def test_a_design_with_a_million_layers_is_refused_at_once(work):
    arch = dict(TINY, layers=[{"type": "ReLU"}] * 200_000 + TINY["layers"])
    (work / "deep.json").write_text(json.dumps(arch))
    block = {"type": "Residual", "layers": [{"type": "Conv2D", "filters": 1, "kernel_size": 1}] * 20_000}
    (work / "block.json").write_text(json.dumps(dict(TINY, layers=[block] + TINY["layers"])))
    for name in ("deep.json", "block.json"):
        for args in (["summary", name], ["train", "--arch", name, "--data", "data", "--out", "n.cnnd"]):
            refused(cli(*args, cwd=work, timeout=30), "layers is more than the 10,000 a design may have")


def test_log_or_out_naming_the_init_from_model_is_refused(work):
    os.link(work / "model.cnnd", work / "hard.cnnd")
    before = fingerprint(work)
    train = ["train", "--arch", "arch.json", "--data", "data", "--epochs", "1", "--val-split", "0"]
    for init, rest in (("model.cnnd", ["--out", "n.cnnd", "--log", "./model.cnnd"]),
                       ("hard.cnnd", ["--out", "n.cnnd", "--log", "model.cnnd"]),
                       ("./model.cnnd", ["--out", "model.cnnd"])):
        refused(cli(*train, "--init-from", init, *rest, cwd=work), "--init-from name the same file")
    assert fingerprint(work) == before


@pytest.mark.parametrize("layout", ["val links to train", "val's classes link into train",
                                    "--val's classes link into --data", "one hard-linked image"])
def test_validation_images_that_are_training_images_through_links_are_refused(work, layout):
    root = work / "root"
    shutil.copytree(work / "data", root / "train")
    val = root / "val"
    args = ["--data", root]
    if layout == "val links to train":
        val.symlink_to("train")
    elif layout == "val's classes link into train":
        val.mkdir()
        for c in ("a", "b"):
            (val / c).symlink_to(root / "train" / c)
    elif layout == "--val's classes link into --data":
        val = work / "v"
        val.mkdir()
        for c in ("a", "b"):
            (val / c).symlink_to(work / "data" / c)
        args = ["--data", "data", "--val", val]
    else:
        for c in ("a", "b"):
            (val / c).mkdir(parents=True)
            shutil.copy(root / "train" / c / "00.png", val / c / "x.png")
        os.link(root / "train" / "b" / "05.png", val / "b" / "same.png")
    before = fingerprint(work)
    p = cli("train", "--arch", "arch.json", *args, "--epochs", "1", "--out", "n.cnnd", cwd=work)
    refused(p, "validation images are training images", "measures nothing")
    assert fingerprint(work) == before


def test_a_read_only_output_file_is_not_replaced(work):
    drop = _without_read_override()
    os.chmod(work / "model.cnnd", 0o444)
    before = fingerprint(work)
    for args in (["train", "--arch", "arch.json", "--data", "data", "--epochs", "1", "--out", "model.cnnd"],
                 ["export", "n.cnnd", "--format", "json", "--out", "model.cnnd"]):
        refused(cli(*args, cwd=work, preexec=drop), "read-only")
    assert fingerprint(work) == before


RECORDS = {
    "nested 100000 deep": lambda r: json.dumps(r)[:-1] + ', "x": ' + "[" * 100_000 + "]" * 100_000 + "}",
    "5000-digit integer": lambda r: json.dumps({**r, "epochs": 1}).replace('"epochs": 1', '"epochs": ' + "9" * 5000),
    "name is an object": lambda r: json.dumps({**r, "name": {"a": 1}}),
    "duration is text": lambda r: json.dumps({**r, "duration": "slow"}),
    "history holds text": lambda r: json.dumps({**r, "history": ["x", 3]}),
    "final is a list": lambda r: json.dumps({**r, "final": [1]}),
    "an epoch's loss is a list": lambda r: json.dumps({**r, "history": [{"epoch": 1, "train_loss": [1]}]}),
}


@pytest.fixture(scope="module")
def _store(_trained, tmp_path_factory) -> Path:
    """A run store holding two runs of the tiny design."""
    root = tmp_path_factory.mktemp("store")
    for _ in range(2):
        p = cli("train", "--arch", "arch.json", "--data", "data", "--epochs", "1", "--val-split", "0", "--out",
                root / "n.cnnd", cwd=_trained, env={"CNN_DESIGNER_RUNS": str(root / "store")}, fresh=True)
        assert p.returncode == 0, p.stderr
    return root / "store"


def _edited_store(store: Path, work: Path, edit) -> dict[str, str]:
    """A copy of the store with run 1's record text replaced by edit(record); the env using it."""
    import sqlite3

    shutil.copytree(store, work / "store")
    con = sqlite3.connect(work / "store" / "runs.sqlite")
    rec = json.loads(con.execute("SELECT record FROM runs WHERE id = 1").fetchone()[0])
    with con:
        con.execute("UPDATE runs SET record = ? WHERE id = 1", (edit(rec),))
    con.close()
    return {"CNN_DESIGNER_RUNS": str(work / "store")}


@pytest.mark.parametrize("case", list(RECORDS))
def test_a_run_store_record_of_the_wrong_shape_is_skipped_with_a_word(_store, work, case):
    """The run store is a file too (copied, restored, damaged): a record that is not what the app
    writes is named and skipped by `runs`, refused in one line by `show` and `compare`."""
    env = _edited_store(_store, work, RECORDS[case])
    listing = cli("runs", cwd=work, env=env)
    assert listing.returncode == 0 and "Traceback" not in listing.stderr
    assert "warning: run 1 is damaged and was skipped" in listing.stderr and "\n2 " in "\n" + listing.stdout
    for args in (["runs", "show", "1"], ["runs", "show", "1", "--json"], ["runs", "compare", "2", "1", "--json"]):
        line = refused(cli(*args, cwd=work, env=env), "run 1 is damaged")
        assert "unexpected" not in line and "recursion" not in line and "set_int_max_str_digits" not in line


def test_a_recorded_epoch_without_numbers_is_shown_as_a_dash(_store, work):
    env = _edited_store(_store, work, lambda r: json.dumps({**r, "history": [{"epoch": None, "train_loss": None}]}))
    p = cli("runs", "show", "1", cwd=work, env=env)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[-1].split() == ["-", "-", "-", "-", "-"]


@pytest.mark.parametrize("args", [["runs", "show", "9" * 25], ["runs", "limit", "--max-runs", "9" * 25],
                                  ["runs", "compare", "1", "9" * 25]])
def test_integers_beyond_64_bits_are_refused_as_usage_errors(work, args):
    p = cli(*args, cwd=work, env={"CNN_DESIGNER_RUNS": str(work / "store")})
    assert p.returncode == 2 and "Traceback" not in p.stderr and "unexpected" not in p.stderr
    assert "expected a positive integer" in p.stderr or "expected an integer >= 0" in p.stderr


@pytest.fixture(scope="module")
def _exported_onnx(_trained, tmp_path_factory) -> Path:
    """The module's model exported to ONNX by the CLI, once: each case edits a copy of its metadata."""
    root = tmp_path_factory.mktemp("onnx")
    shutil.copy(_trained / "model.cnnd", root)
    assert cli("export", "model.cnnd", "--format", "onnx", "--out", "m.onnx", cwd=root).returncode == 0
    return root / "m.onnx"


@pytest.mark.parametrize(("key", "value", "expect"), [
    ("classes", "[" * 5000 + "]" * 5000, "nests 5,000 levels deep"),
    ("preprocessing", '{"scale": ' + "9" * 5000 + "}", "a number with 5,000 digits"),
    ("preprocessing", '{"scale": NaN}', "NaN is not a JSON number"),
    ("classes", '{"a": 1, "b": 2}', '"classes" is not a list of names'),
    ("architecture", '{"format": "cnn-designer/1", "layers": [{"type": ["Flatten"]}]', "not valid JSON"),
])
def test_an_onnx_files_metadata_is_untrusted_json(_exported_onnx, work, key, value, expect):
    import onnx

    m = onnx.load(_exported_onnx)
    for prop in m.metadata_props:
        if prop.key == key:
            prop.value = value
    (work / "bad.onnx").write_bytes(m.SerializeToString())
    before = fingerprint(work)
    line = refused(cli("import", "bad.onnx", "--out", "n.cnnd", cwd=work), "metadata is damaged", expect)
    assert "recursion" not in line and "set_int_max_str_digits" not in line
    assert fingerprint(work) == before


def test_a_model_whose_output_overflows_is_not_explained_or_exported(work):
    tm = modelfile.load(work / "model.cnnd")
    tm.state = {k: np.full_like(v, 3e38) for k, v in tm.state.items()}
    modelfile.save(work / "huge.cnnd", tm)
    before = fingerprint(work)
    for args, expect in ((["explain", "huge.cnnd", "data/a/00.png"], "not a number"),
                         (["explain", "huge.cnnd", "data/a/00.png", "--json", "--method", "smoothgrad"],
                          "not a number"),
                         (["explain", "huge.cnnd", "data/a/00.png", "--out", "ov"], "not a number"),
                         (["export", "huge.cnnd", "--format", "onnx", "--out", "x.onnx"], "not a number"),
                         (["export", "huge.cnnd", "--format", "pytorch", "--out", "pt"], "not a number")):
        p = cli(*args, cwd=work)
        refused(p, expect)
        assert "nan%" not in p.stdout and "RuntimeWarning" not in p.stderr
    after = fingerprint(work)
    assert {k: v for k, v in after.items() if k != "ov"} == before  # explain may make its --out folder only
    assert not any((work / "ov").iterdir()) if (work / "ov").exists() else True


def test_exporting_again_never_deletes_what_was_added_or_changed_in_the_folder(work):
    """A re-export replaces only what the last export wrote: weights trained later in the folder
    (the exported train.py's trained.safetensors), notes, an edited script are kept, and the export
    is refused; Python's own __pycache__ (made by running predict.py) does not count."""
    for fmt, out, folder in (("pytorch", "exp", "exp"), ("onnx", "m.onnx", "m_predict")):
        assert cli("export", "model.cnnd", "--format", fmt, "--out", out, cwd=work).returncode == 0
        (work / folder / "__pycache__").mkdir()
        (work / folder / "__pycache__" / "preprocess.cpython-311.pyc").write_bytes(b"\0")
        assert cli("export", "model.cnnd", "--format", fmt, "--out", out, cwd=work).returncode == 0
        for change in ("trained.safetensors", "predict.py"):
            with open(work / folder / change, "a") as f:
                f.write("# hours of training, or my edit\n")
            before = fingerprint(work)
            refused(cli("export", "model.cnnd", "--format", fmt, "--out", out, cwd=work), change,
                    "which the last export did not write")
            assert fingerprint(work) == before
            (work / folder / change).unlink()


def test_explain_never_writes_through_a_link_planted_in_its_out_folder(work, tmp_path):
    precious = tmp_path / "precious.txt"
    precious.write_text("precious")
    (work / "ov").mkdir()
    (work / "ov" / "01_occlusion.png").symlink_to(precious)
    before = fingerprint(work)
    refused(cli("explain", "model.cnnd", "data/a/00.png", "data/a/01.png", "--out", "ov", cwd=work), "is a link")
    assert precious.read_text() == "precious" and fingerprint(work) == before


@pytest.mark.parametrize("setting", [{"aug_shift": 1e308}, {"aug_rotate": 1e308}, {"aug_shift": 2.0}])
def test_augmentation_settings_beyond_meaning_are_refused(work, setting):
    (work / "aug.json").write_text(json.dumps(dict(TINY, training={"augment": True, **setting})))
    refused(cli("train", "--arch", "aug.json", "--data", "data", "--out", "n.cnnd", cwd=work),
            f"training setting '{next(iter(setting))}'")
    assert not (work / "n.cnnd").exists()


def test_usage_errors_show_what_was_typed_escaped(work):
    for args in (["summary", "arch.json", "\x1b[2Jx"], ["train", "--optimizer", "\x1b[2J"], ["runs", "\x07"]):
        p = cli(*args, cwd=work)
        assert p.returncode == 2 and "\x1b" not in p.stderr and "\x07" not in p.stderr, p.stderr
        assert "Traceback" not in p.stderr and "error:" in p.stderr
    p = subprocess.run([sys.executable, "-c", "import sys; from designer.launcher import main; sys.exit(main())",
                        "\x1b[2Jx.json"], cwd=work, capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, QT_QPA_PLATFORM="offscreen"))
    assert p.returncode == 2 and "\\x1b[2Jx.json: no such file" in p.stderr and "\x1b" not in p.stderr, p.stderr


def test_outputs_never_replace_the_tools_own_records(work):
    """The run store's database and the decode cache are the tool's own: `--out` naming them (a
    slip of the shell's history) would wipe every recorded run."""
    env = {"CNN_DESIGNER_RUNS": str(work / "store")}
    train = ["train", "--arch", "arch.json", "--data", "data", "--epochs", "1", "--val-split", "0"]
    assert cli(*train, "--out", "n.cnnd", cwd=work, env=env).returncode == 0
    before = fingerprint(work)
    cache = work / ".cache"
    for args in ([*train, "--out", "store/runs.sqlite"], [*train, "--out", "n2.cnnd", "--log", "store/runs.sqlite"],
                 ["export", "model.cnnd", "--format", "json", "--out", "store/runs.sqlite"],
                 ["import", "m.onnx", "--out", cache / "x.cnnd"],
                 ["export", "model.cnnd", "--format", "npz", "--out", cache / "x.npz"]):
        refused(cli(*args, cwd=work, env=env), "give another name")
    assert fingerprint(work) == before
    assert "1 " in cli("runs", cwd=work, env=env).stdout


def test_outputs_differing_only_in_case_are_refused(work):
    before = fingerprint(work)
    refused(cli("train", "--arch", "arch.json", "--data", "data", "--out", "Run.cnnd", "--log", "run.CNND", cwd=work),
            "differ only in upper/lower case")
    assert fingerprint(work) == before


@pytest.mark.parametrize("method", ["occlusion", "gradcam", "smoothgrad"])
def test_explaining_with_a_model_that_cannot_fit_is_refused_with_the_figure(work, method):
    m = _model_declaring(work / "maps.cnnd", HUGE_MAPS)
    before = fingerprint(work)
    p = cli("explain", m, "data/a/00.png", "--method", method, cwd=work, timeout=60, mem=MEMORY_CAP)
    refused(p, "explaining with this model would need about", "budget")
    assert fingerprint(work) == before


def test_text_that_is_half_a_character_is_refused(work):
    """JSON may spell a lone surrogate ("\\ud800"): no file system, terminal or UTF-8 file takes it
    (the run store could not record the run)."""
    (work / "half.json").write_text(json.dumps(dict(TINY, name="x\ud800y")))
    refused(cli("summary", "half.json", cwd=work), "not valid Unicode")
    (work / "pair.json").write_text(json.dumps(dict(TINY, name="x\U0001f600y")))  # a full pair is fine
    assert cli("summary", "pair.json", cwd=work).returncode == 0
