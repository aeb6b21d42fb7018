"""Image folder loading: real MNIST PNGs, every bad-input case, odd image modes, the cache."""

from __future__ import annotations

import io
import os
import struct
import threading
import zlib
from pathlib import Path

import mnist_data
import numpy as np
import pytest
from PIL import Image

from engine import data as D
from engine import decoding
from engine.data import (
    Augment,
    DataError,
    ImageError,
    LoadCancelled,
    LoadOptions,
    Preprocessing,
    augment_batch,
    decode_image,
    iter_batches,
    load_folder,
    load_image,
    scan_folder,
    split_stratified,
)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CNN_DESIGNER_CACHE", str(tmp_path / "cache"))


def digit(i: int = 0, split: str = "train") -> np.ndarray:
    x, _ = mnist_data.load(split)
    return x[i]


def two_class_folder(root: Path, per_class: int = 12) -> Path:
    """root/a, root/b holding real MNIST digits (0s and 1s)."""
    x, y = mnist_data.load("train")
    for name, d in (("a", 0), ("b", 1)):
        (root / name).mkdir(parents=True, exist_ok=True)
        for k, i in enumerate(np.flatnonzero(y == d)[:per_class]):
            Image.fromarray(x[i]).save(root / name / f"{k:03d}.png")
    return root


def png_header_only(width: int, height: int) -> bytes:
    """A PNG claiming width x height with (almost) no data: a decompression bomb's header."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


# --- real MNIST ---------------------------------------------------------------------------------
def test_loads_real_mnist_folder(mnist_folder):
    ds = load_folder(mnist_folder / "train", (1, 28, 28))
    assert ds.classes == [str(d) for d in range(10)]
    assert ds.images.shape == (1000, 1, 28, 28) and ds.images.dtype == np.uint8
    assert ds.counts() == [100] * 10
    # pixels are exactly the IDX pixels (PNG is lossless, no resize needed)
    x, _ = mnist_data.load("train")
    idx = int(Path(ds.paths[0]).stem)
    assert np.array_equal(ds.images[0, 0], x[idx])
    assert ds.report.skipped == [] and ds.report.warnings == []


def test_resize_and_rgb_conversion(mnist_folder):
    ds = load_folder(mnist_folder / "test", (3, 20, 24))
    assert ds.images.shape == (300, 3, 20, 24)
    assert np.array_equal(ds.images[:, 0], ds.images[:, 2])  # gray digits -> equal RGB channels
    with pytest.raises(DataError, match="2 channels"):
        load_folder(mnist_folder / "test", (2, 28, 28))


def test_parallel_decoding_matches_serial(mnist_folder):
    a = load_folder(mnist_folder / "test", (1, 28, 28), options=LoadOptions(workers=1, cache=False))
    calls = []
    b = load_folder(mnist_folder / "test", (1, 28, 28), progress=lambda d, t: calls.append((d, t)),
                    options=LoadOptions(workers=2, parallel_threshold=1, cache=False))
    assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels) and a.paths == b.paths
    assert calls[-1] == (300, 300)
    assert all(d1 <= d2 for (d1, _), (d2, _) in zip(calls, calls[1:], strict=False))


def test_parallel_decoding_from_a_script_without_main_guard(mnist_folder, tmp_path):
    """Helpers are plain subprocesses: a user's script is never re-imported (multiprocessing would)."""
    import subprocess
    import sys

    script = tmp_path / "user_script.py"
    script.write_text(
        "from engine.data import LoadOptions, load_folder\n"
        f"ds = load_folder({str(mnist_folder / 'test')!r}, (1, 28, 28),\n"
        "                 options=LoadOptions(workers=2, parallel_threshold=1, cache=False))\n"
        "print('loaded', len(ds))\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("loaded 300") == 1


def test_a_dying_helper_does_not_lose_images(mnist_folder, monkeypatch):
    calls = []
    real = decoding._DecodeWorker.receive

    def flaky(self, c, h, w):
        calls.append(1)
        if len(calls) == 2:
            self.proc.kill()
            raise EOFError("decode helper stopped")
        return real(self, c, h, w)

    monkeypatch.setattr(decoding._DecodeWorker, "receive", flaky)
    ref = load_folder(mnist_folder / "test", (1, 28, 28), options=LoadOptions(workers=1, cache=False))
    ds = load_folder(mnist_folder / "test", (1, 28, 28),
                     options=LoadOptions(workers=2, parallel_threshold=1, cache=False))
    assert np.array_equal(ds.images, ref.images) and len(calls) >= 2


def test_cancel_stops_loading(mnist_folder):
    checks = []

    def cancel():  # the GUI passes an Event or a callable; here: "Cancel" pressed after 10 images
        checks.append(1)
        return len(checks) > 10

    with pytest.raises(LoadCancelled):
        load_folder(mnist_folder / "test", (1, 28, 28), cancel=cancel, options=LoadOptions(cache=False))
    assert len(checks) == 11
    ev = threading.Event()
    ev.set()
    with pytest.raises(LoadCancelled):  # an Event works too, and the process pool stops as well
        load_folder(mnist_folder / "test", (1, 28, 28), cancel=ev,
                    options=LoadOptions(workers=2, parallel_threshold=1, cache=False))


def test_limit_is_stratified_and_seeded(mnist_folder):
    a = load_folder(mnist_folder / "train", (1, 28, 28), options=LoadOptions(limit=200, seed=3))
    b = load_folder(mnist_folder / "train", (1, 28, 28), options=LoadOptions(limit=200, seed=3))
    assert len(a) == 200 and a.counts() == [20] * 10 and a.paths == b.paths


# --- the cache ----------------------------------------------------------------------------------
def test_cache_reuses_and_invalidates(tmp_path):
    root = two_class_folder(tmp_path / "d", per_class=10)
    first = load_folder(root, (1, 28, 28))
    assert first.report.decoded == 20 and first.report.from_cache == 0
    files = list((D.cache_dir() / "decoded").glob("*.npz"))
    assert len(files) == 1 and str(files[0]).startswith(str(tmp_path / "cache"))
    second = load_folder(root, (1, 28, 28))
    assert second.report.decoded == 0 and second.report.from_cache == 20
    assert np.array_equal(first.images, second.images)

    # change one file (new content and size): only it is decoded again, with the new pixels
    target = root / "a" / "000.png"
    Image.fromarray(np.full((28, 28), 200, np.uint8)).save(target)
    os.utime(target, ns=(1, 1))
    third = load_folder(root, (1, 28, 28))
    assert third.report.decoded == 1 and third.report.from_cache == 19
    assert (third.images[0] == 200).all()
    # remove a file: it disappears; add one: decoded
    (root / "b" / "000.png").unlink()
    Image.fromarray(digit(5)).save(root / "b" / "new.png")
    fourth = load_folder(root, (1, 28, 28))
    assert len(fourth) == 20 and fourth.report.decoded == 1
    assert not any(p.endswith("b/000.png") for p in fourth.paths)
    # another target size is a separate cache entry
    load_folder(root, (1, 14, 14))
    assert len(list((D.cache_dir() / "decoded").glob("*.npz"))) == 2


def test_cache_with_limited_subsets(tmp_path):
    root = two_class_folder(tmp_path / "d", per_class=10)
    part = load_folder(root, (1, 28, 28), options=LoadOptions(limit=6, seed=0))
    assert part.report.decoded == 6
    full = load_folder(root, (1, 28, 28))
    assert full.report.decoded == 14 and full.report.from_cache == 6
    (cache_file,) = (D.cache_dir() / "decoded").glob("*.npz")
    stamp = cache_file.stat().st_mtime_ns
    again = load_folder(root, (1, 28, 28), options=LoadOptions(limit=8, seed=1))
    assert again.report.decoded == 0 and cache_file.stat().st_mtime_ns == stamp  # nothing new: not rewritten
    assert np.array_equal(again.images, full.images[[full.paths.index(p) for p in again.paths]])


def test_damaged_cache_is_rebuilt(tmp_path):
    root = two_class_folder(tmp_path / "d", per_class=6)
    load_folder(root, (1, 28, 28))
    (cache_file,) = (D.cache_dir() / "decoded").glob("*.npz")
    cache_file.write_bytes(b"garbage")
    ds = load_folder(root, (1, 28, 28))
    assert ds.report.decoded == 12 and len(ds) == 12
    assert load_folder(root, (1, 28, 28)).report.from_cache == 12


def test_bad_files_are_cached_as_skipped(tmp_path):
    root = two_class_folder(tmp_path / "d", per_class=6)
    (root / "a" / "bad.png").write_bytes(b"not an image")
    a = load_folder(root, (1, 28, 28))
    b = load_folder(root, (1, 28, 28))
    assert b.report.decoded == 0
    assert [s.reason for s in a.report.skipped] == [s.reason for s in b.report.skipped]
    assert len(b.report.skipped) == 1


# --- bad content is skipped and reported -----------------------------------------------------------
def test_bad_files_skipped_with_reasons(tmp_path):
    root = two_class_folder(tmp_path / "d")
    a = root / "a"
    (a / "zero.png").write_bytes(b"")
    (a / "text.png").write_text("hello, I am not a picture")
    good = io.BytesIO()
    Image.fromarray(digit(1)).save(good, "PNG")
    raw = good.getvalue()
    (a / "truncated.png").write_bytes(raw[: len(raw) // 2])
    corrupt = bytearray(raw)
    corrupt[60:90] = b"\xff" * 30  # inside the compressed data
    (a / "corrupt.png").write_bytes(bytes(corrupt))
    (a / "bomb.png").write_bytes(png_header_only(30000, 30000))
    (a / "notes.txt").write_text("labels are folder names")
    (root / "loose.png").write_bytes(raw)

    ds = load_folder(root, (1, 28, 28))
    assert len(ds) == 24 and ds.counts() == [12, 12]  # the run goes on with the good images
    reasons = {Path(s.path).name: s.reason for s in ds.report.skipped}
    assert reasons["zero.png"] == "empty file (0 bytes)"
    assert "not a readable image" in reasons["text.png"]
    assert "truncated" in reasons["truncated.png"]
    assert "corrupt" in reasons["corrupt.png"] or "truncated" in reasons["corrupt.png"]
    assert "too large" in reasons["bomb.png"] and "900,000,000" in reasons["bomb.png"]
    assert "not an image file type (.txt)" in reasons["notes.txt"]
    assert reasons["loose.png"] == "not inside a class folder"
    text = "\n".join(ds.report.lines())
    assert "skipped 7 file(s)" in text and "zero.png: empty file" in text


def test_pixel_limit_is_checked_before_decoding(tmp_path):
    p = tmp_path / "big.png"
    Image.fromarray(np.zeros((300, 300), np.uint8)).save(p)
    with pytest.raises(ImageError, match="too large"):
        decode_image(p, "grayscale", 28, 28, max_pixels=10_000)
    assert decode_image(p, "grayscale", 28, 28).shape == (1, 28, 28)


def test_hidden_files_and_folders_ignored(tmp_path):
    root = two_class_folder(tmp_path / "d", per_class=10)
    raw = (root / "a" / "000.png").read_bytes()
    (root / ".hidden_class").mkdir()
    (root / ".hidden_class" / "x.png").write_bytes(raw)
    (root / "__MACOSX").mkdir()
    (root / "__MACOSX" / "._000.png").write_bytes(b"\0\5\26\7junk")
    (root / "a" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "a" / "._000.png").write_bytes(b"\0\5\26\7junk")
    (root / "a" / ".thumbs").mkdir()
    (root / "a" / ".thumbs" / "t.png").write_bytes(raw)
    (root / "a" / "nested").mkdir()  # images in subfolders of a class belong to it (as ImageFolder)
    (root / "a" / "nested" / "deep.PNG").write_bytes(raw)  # extensions are case-insensitive
    ds = load_folder(root, (1, 28, 28))
    assert ds.classes == ["a", "b"] and ds.counts() == [11, 10]
    assert ds.report.skipped == []


# --- odd image modes ---------------------------------------------------------------------------
def _save(img: Image.Image, path: Path, **kw) -> Path:
    img.save(path, **kw)
    return path


def test_odd_modes_and_formats(tmp_path):
    g = digit(7)
    # palette with a transparent entry: transparent -> white
    pal = Image.fromarray(g).convert("P")
    pal.info["transparency"] = 0
    p = _save(pal, tmp_path / "pal.png", transparency=int(np.asarray(pal)[0, 0]))
    out = decode_image(p, "grayscale", 28, 28)
    assert out[0, 0, 0] == 255 and out.shape == (1, 28, 28)
    # RGBA: transparent pixels become white, opaque keep their colour
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:14, :, 3] = 255
    out = decode_image(_save(Image.fromarray(rgba), tmp_path / "rgba.png"), "rgb", 28, 28)
    assert tuple(out[:, 0, 0]) == (255, 0, 0) and tuple(out[:, 27, 0]) == (255, 255, 255)
    # 16-bit grayscale: scaled, not clipped
    g16 = (g.astype(np.uint16) * 257).astype(np.uint16)
    out = decode_image(_save(Image.fromarray(g16), tmp_path / "g16.png"), "grayscale", 28, 28)
    assert np.abs(out[0].astype(int) - g.astype(int)).max() <= 1
    # 32-bit integer TIFF holding 16-bit values
    out = decode_image(_save(Image.fromarray(g16.astype(np.int32)), tmp_path / "g32.tif"), "grayscale", 28, 28)
    assert np.abs(out[0].astype(int) - g.astype(int)).max() <= 1
    # CMYK JPEG -> RGB
    cmyk = Image.new("CMYK", (28, 28), (0, 255, 255, 0))  # pure red in CMYK
    out = decode_image(_save(cmyk, tmp_path / "cmyk.jpg", quality=95), "rgb", 28, 28)
    assert out[0].mean() > 200 and out[1].mean() < 60 and out[2].mean() < 60
    # 1-bit, LA, BMP, GIF, WebP (lossless), TIFF, upper-case extension
    one = Image.fromarray(g > 128)
    assert decode_image(_save(one, tmp_path / "one.bmp"), "grayscale", 28, 28).max() == 255
    la = Image.fromarray(g).convert("LA")
    assert decode_image(_save(la, tmp_path / "la.png"), "grayscale", 28, 28).shape == (1, 28, 28)
    for name, kw in (("d.gif", {}), ("d.webp", {"lossless": True}), ("d.tiff", {}), ("D.PNG", {})):
        out = decode_image(_save(Image.fromarray(g), tmp_path / name, **kw), "grayscale", 28, 28)
        assert np.array_equal(out[0], g), name


def test_exif_orientation_applied(tmp_path):
    img = np.zeros((20, 40), np.uint8)
    img[:, :20] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    for name, kw in (("rot.jpg", {"quality": 100}), ("rot.png", {}), ("rot.webp", {"lossless": True})):
        p = _save(Image.fromarray(img), tmp_path / name, exif=exif, **kw)
        out = decode_image(p, "grayscale", 40, 20)  # displayed as 40 tall x 20 wide
        assert out.shape == (1, 40, 20)
        assert out[0, :15].mean() > 200 and out[0, 25:].mean() < 50, name  # white half now on top


def test_load_image_matches_folder_pipeline(mnist_folder):
    prep = Preprocessing("grayscale", 28, 28)
    ds = load_folder(mnist_folder / "test", prep=prep)
    x = load_image(ds.paths[5], prep)
    assert x.shape == (1, 1, 28, 28) and x.dtype == np.float32
    np.testing.assert_array_equal(x[0], prep.normalize(ds.images[5:6])[0])
    with pytest.raises(ImageError, match="file not found"):
        load_image(mnist_folder / "nope.png", prep)


# --- folder errors ------------------------------------------------------------------------------
def test_folder_errors_name_the_folder(tmp_path):
    with pytest.raises(DataError, match=r"data folder not found: .*missing"):
        load_folder(tmp_path / "missing", (1, 28, 28))
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(DataError, match="is a file, not a folder"):
        load_folder(f, (1, 28, 28))
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.fromarray(digit()).save(flat / "x.png")
    with pytest.raises(DataError, match="has no class subfolders"):
        load_folder(flat, (1, 28, 28))
    one = two_class_folder(tmp_path / "one", per_class=3)
    for p in (one / "b").iterdir():
        p.unlink()
    (one / "b").rmdir()
    with pytest.raises(DataError, match=r"only one class \('a'\)"):
        load_folder(one, (1, 28, 28))
    empty = two_class_folder(tmp_path / "empty", per_class=3)
    (empty / "c").mkdir()
    (empty / "c" / "readme.txt").write_text("todo")
    with pytest.raises(DataError, match=r"class folder .*empty[/\\]c has no images"):
        load_folder(empty, (1, 28, 28))
    allbad = two_class_folder(tmp_path / "allbad", per_class=3)
    (allbad / "c").mkdir()
    (allbad / "c" / "x.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"c has no usable images .*empty file"):
        load_folder(allbad, (1, 28, 28))


def test_warnings_for_unbalanced_and_tiny_classes(tmp_path):
    root = two_class_folder(tmp_path / "d", per_class=60)
    for p in sorted((root / "b").iterdir())[5:]:
        p.unlink()
    ds = load_folder(root, (1, 28, 28))
    text = " ".join(ds.report.warnings)
    assert "unbalanced" in text and "'a' has 60" in text and "'b' only 5" in text
    assert "very few images in class 'b' (5)" in text


def test_validation_folder_uses_given_classes(tmp_path, mnist_folder):
    ds = load_folder(mnist_folder / "test", (1, 28, 28), classes=[str(d) for d in range(10)] + ["extra"])
    assert ds.num_classes == 11 and any("no folder for class(es) extra" in w for w in ds.report.warnings)
    with pytest.raises(DataError, match="not one of the model's classes"):
        load_folder(mnist_folder / "test", (1, 28, 28), classes=["0", "1"])


def test_refuses_what_cannot_fit_in_memory(mnist_folder, monkeypatch):
    from engine import memory

    monkeypatch.delenv("CNN_DESIGNER_MEMORY", raising=False)
    monkeypatch.setattr(memory, "physical_memory", lambda: 1_000_000)  # a 1 MB machine
    with pytest.raises(DataError, match=r"300 images at 3x64x64 need .* decoded.*budget.*--limit"):
        load_folder(mnist_folder / "test", (3, 64, 64))


def test_scan_folder_is_cheap_listing(mnist_folder):
    scan = scan_folder(mnist_folder / "train")
    assert scan.classes == [str(d) for d in range(10)] and scan.counts == [100] * 10 and scan.total == 1000


# --- split, augmentation, batches ---------------------------------------------------------------
def test_stratified_seeded_split(mnist_folder):
    ds = load_folder(mnist_folder / "train", (1, 28, 28))
    tr, va = split_stratified(ds, 0.2, seed=1)
    assert tr.counts() == [80] * 10 and va.counts() == [20] * 10
    assert not set(tr.paths) & set(va.paths)
    tr2, va2 = split_stratified(ds, 0.2, seed=1)
    assert va.paths == va2.paths
    assert split_stratified(ds, 0.2, seed=2)[1].paths != va.paths
    with pytest.raises(DataError):
        split_stratified(ds, 1.5)


def test_augmentation_is_vectorised_geometry():
    rng = np.random.default_rng(0)
    x = np.stack([digit(i) for i in range(8)])[:, None]
    same = augment_batch(x, rng, Augment(shift=0, rotate=0, hflip=False))
    assert np.array_equal(same, x)
    flips = 0
    out = augment_batch(x, np.random.default_rng(1), Augment(shift=0, rotate=0, hflip=True))
    for a, b in zip(out, x, strict=True):
        assert np.array_equal(a, b) or np.array_equal(a, b[:, :, ::-1])
        flips += not np.array_equal(a, b)
    assert 0 < flips < 8
    a1 = augment_batch(x, np.random.default_rng(5), Augment())
    a2 = augment_batch(x, np.random.default_rng(5), Augment())
    assert np.array_equal(a1, a2) and not np.array_equal(a1, x) and a1.dtype == np.uint8
    # a shift moves the digit's centre of mass but keeps most of its ink
    ink = x.astype(float).sum(axis=(1, 2, 3))
    assert np.all(a1.astype(float).sum(axis=(1, 2, 3)) > 0.6 * ink)


def test_batches_normalise_as_stored():
    prep = Preprocessing("rgb", 2, 2, scale=1 / 255, mean=[0.5, 0.5, 0.5], std=[0.25, 0.5, 1.0])
    imgs = np.full((5, 3, 2, 2), 255, np.uint8)
    labels = np.arange(5)
    batches = list(iter_batches(imgs, labels, 2, prep))
    assert [len(y) for _, y in batches] == [2, 2, 1]
    x = batches[0][0]
    assert x.dtype == np.float32
    np.testing.assert_allclose(x[0, :, 0, 0], [2.0, 1.0, 0.5], rtol=1e-6)
    shuffled = np.concatenate([y for _, y in iter_batches(imgs, labels, 2, prep, np.random.default_rng(0))])
    assert sorted(shuffled.tolist()) == [0, 1, 2, 3, 4]


def test_preprocessing_dict_validation():
    p = Preprocessing.for_input((3, 32, 32))
    assert Preprocessing.from_dict(p.to_dict()) == p
    assert p.to_dict()["scale"] == 0.00392156862745098
    for bad, msg in (({**p.to_dict(), "color": "cmyk"}, "color"), ({**p.to_dict(), "std": [1, 0, 1]}, "positive"),
                     ({**p.to_dict(), "mean": [0]}, "list of 3"), ({**p.to_dict(), "height": 0}, "height"),
                     ({**p.to_dict(), "extra": 1}, "unknown field")):
        with pytest.raises(DataError, match=msg):
            Preprocessing.from_dict(bad)


def test_data_folders_the_one_train_val_convention(tmp_path):
    from engine.folders import data_folders

    root = tmp_path / "set"
    for part in ("train", "valid"):
        for c in ("a", "b"):
            (root / part / c).mkdir(parents=True)
    f = data_folders(root)
    assert (f.train, f.val, f.split_root) == (root / "train", root / "valid", True)
    assert f.describe() == "training images from train/, validation images from valid/"
    (root / "val").mkdir()  # "val" comes first in the order of names
    assert data_folders(root).val == root / "val"
    only_train = tmp_path / "only"
    (only_train / "train" / "a").mkdir(parents=True)
    assert (data_folders(only_train).train, data_folders(only_train).val) == (only_train / "train", None)
    # classes that happen to be named train and val (images directly inside): the folder itself is the data
    classes = tmp_path / "classes"
    for c in ("train", "val"):
        (classes / c).mkdir(parents=True)
        (classes / c / "x.png").write_bytes(b"")
    f = data_folders(classes)
    assert (f.train, f.val, f.split_root) == (classes, None, False)


def test_report_counts_only_images_that_decoded(tmp_path):
    """A broken file is a skipped file, not a decoded image, in the first run and when its failure
    comes from the cache: the report's decoded and cached figures add up to the images loaded
    (it said 21 decoded for 20 images)."""
    root = two_class_folder(tmp_path / "d", per_class=10)
    (root / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    first = load_folder(root, (1, 28, 28))
    assert len(first) == 20 and len(first.report.skipped) == 1
    assert (first.report.decoded, first.report.from_cache) == (20, 0)
    assert "(20 decoded, 0 from cache" in first.report.lines()[0]
    second = load_folder(root, (1, 28, 28))
    assert len(second) == 20 and len(second.report.skipped) == 1
    assert (second.report.decoded, second.report.from_cache) == (0, 20)
