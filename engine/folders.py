"""What a folder of images holds, before any decoding: classes, files, what will be skipped, and
which subfolders are for training and which for validation.

Layout as torchvision's ImageFolder / Keras' `image_dataset_from_directory`: one subfolder per
class (sorted names), images anywhere below it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from engine.preprocess import IMAGE_EXTENSIONS, DataError

#: More entries than this under a data folder is not a data set (ImageNet's training set has 1.3 M):
#: the scan stops instead of listing a whole disk through a linked class folder.
MAX_FOLDER_ENTRIES = 2_000_000
#: Ignored folder names besides hidden ones (macOS zip leftovers).
IGNORED_DIRS = {"__MACOSX"}
#: A class with fewer images than this gets a warning.
TINY_CLASS = 10
#: A largest/smallest class ratio at or above this gets a warning.
UNBALANCED_RATIO = 5.0


@dataclass
class SkippedFile:
    path: str
    reason: str


@dataclass
class FolderScan:
    """What a folder holds before any decoding: cheap enough for the GUI to show at once."""

    root: Path
    classes: list[str]
    #: per class, the image files (absolute paths), sorted
    files: list[list[str]]
    #: files that will not be read (wrong type, outside class folders), with the reason
    skipped: list[SkippedFile]
    #: class folders left out because they hold no image (scan_folder(skip_empty=True))
    empty: list[str] = field(default_factory=list)

    @property
    def counts(self) -> list[int]:
        return [len(f) for f in self.files]

    @property
    def total(self) -> int:
        return sum(self.counts)


def _hidden(name: str) -> bool:
    return name.startswith(".") or name in IGNORED_DIRS


class EmptyClassError(DataError):
    """Class folders without any image file; `folders` names them (the GUI offers to skip them)."""

    def __init__(self, message: str, folders: list[str]) -> None:
        super().__init__(message)
        self.folders = folders


def scan_folder(root: str | os.PathLike, what: str = "data folder", skip_empty: bool = False) -> FolderScan:
    """List classes and image files; DataError for a missing folder or no classes, EmptyClassError
    for class folders without images (left out and listed in `empty` with skip_empty)."""
    r = Path(root).expanduser()
    if not r.exists():
        raise DataError(f"{what} not found: {r}")
    if not r.is_dir():
        raise DataError(f"{what} {r} is a file, not a folder of class subfolders")
    r = r.resolve()
    try:
        entries = sorted(os.scandir(r), key=lambda e: e.name)
    except OSError as e:
        raise DataError(f"cannot read {what} {r}: {e.strerror or e}") from None
    classes: list[str] = []
    files: list[list[str]] = []
    skipped: list[SkippedFile] = []
    seen = len(entries)
    for entry in entries:
        if _hidden(entry.name):
            continue
        if entry.is_dir():
            real = os.path.realpath(entry.path)
            if str(r) == real or str(r).startswith(real.rstrip(os.sep) + os.sep):
                raise DataError(f"class folder {entry.path} leads to {real}, which contains the {what} itself: "
                                "remove that link")
            found: list[str] = []
            unreadable: list[OSError] = []  # os.walk skips what it cannot list; say so instead
            for dirpath, dirnames, filenames in os.walk(entry.path, onerror=unreadable.append):
                seen += len(dirnames) + len(filenames)
                if seen > MAX_FOLDER_ENTRIES:  # e.g. a class folder that is a link to a disk's root
                    raise DataError(f"{what} {r} holds more than {MAX_FOLDER_ENTRIES:,} files and folders: "
                                    f"is it the right folder? (class {entry.name!r} leads to {dirpath})")
                dirnames[:] = sorted(d for d in dirnames if not _hidden(d))
                prefix = dirpath + os.sep
                for name in sorted(filenames):
                    if name[0] == ".":
                        continue
                    dot = name.rfind(".")
                    ext = name[dot:] if dot > 0 else ""
                    if ext.lower() in IMAGE_EXTENSIONS:
                        found.append(prefix + name)
                    else:
                        skipped.append(SkippedFile(prefix + name, f"not an image file type ({ext or 'no extension'})"))
            for err in unreadable:
                if os.path.normpath(err.filename) == os.path.normpath(entry.path):
                    raise DataError(f"cannot read class folder {entry.path}: {err.strerror or err}")
                skipped.append(SkippedFile(err.filename, f"cannot read folder ({err.strerror or err})"))
            classes.append(entry.name)
            files.append(found)
        elif entry.is_file():
            if os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS:
                skipped.append(SkippedFile(entry.path, "not inside a class folder"))
    if not classes:
        raise DataError(
            f"{what} {r} has no class subfolders: put each class's images in a subfolder named after "
            f"the class (e.g. {r / 'cats'}, {r / 'dogs'})"
        )
    empty = [name for name, f in zip(classes, files, strict=True) if not f]
    if empty and not skip_empty:
        raise EmptyClassError(f"class folder {r / empty[0]} has no images (PNG, JPEG, BMP, GIF, TIFF or WebP)"
                              + (f" (nor {len(empty) - 1} more)" if len(empty) > 1 else ""), empty)
    keep = [k for k, f in enumerate(files) if f]
    return FolderScan(r, [classes[k] for k in keep], [files[k] for k in keep], skipped, empty)


def folder_warnings(classes: list[str], counts: list[int], scan: FolderScan) -> list[str]:
    out = [f"class folder {scan.root / name} has no images: skipped (no class {name!r})" for name in scan.empty]
    present = [(name, cnt) for name, cnt in zip(classes, counts, strict=True) if name in scan.classes]
    missing = [name for name in classes if name not in scan.classes and name not in scan.empty]
    if missing:
        out.append(f"no folder for class(es) {', '.join(missing)} in {scan.root}")
    tiny = [f"{name!r} ({cnt})" for name, cnt in present if cnt < TINY_CLASS]
    if tiny:
        out.append(f"very few images in class {', '.join(tiny)}: aim for dozens per class at least")
    if len(present) >= 2:
        big = max(present, key=lambda t: t[1])
        small = min(present, key=lambda t: t[1])
        if small[1] and big[1] / small[1] >= UNBALANCED_RATIO:
            out.append(
                f"classes are unbalanced: {big[0]!r} has {big[1]} images, {small[0]!r} only {small[1]} "
                f"({big[1] / small[1]:.0f}x); accuracy can look good while {small[0]!r} is mostly wrong"
            )
    return out


def shared_files(train: list[str], val: list[str]) -> list[str]:
    """The files of `val` that are files of `train` too: the same file reached through a linked
    folder (val/ a link to train/, class folders linking into it), a hard link or another spelling.
    Compared by device and inode, so it costs one stat per file and no reading."""

    def identity(path: str) -> tuple[int, int] | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return st.st_dev, st.st_ino

    seen = {i for i in map(identity, train) if i is not None}
    return [p for p in val if identity(p) in seen] if seen else []


# --------------------------------------------------------------------------------------------
# Which subfolders train and which validate
# --------------------------------------------------------------------------------------------
#: Names of the validation part of a data root holding train/, in order of preference.
VAL_NAMES = ("val", "valid", "validation", "test")


@dataclass(frozen=True)
class DataFolders:
    """What a data folder means: train on `train`, validate on `val` (None: split a share off)."""

    root: Path
    train: Path
    val: Path | None

    @property
    def split_root(self) -> bool:
        return self.train != self.root

    def describe(self) -> str:
        """Which folders are used for what, in the words the CLI and the data panel show."""
        if not self.split_root:
            return "one subfolder per class"
        if self.val is None:
            return f"training images from {self.train.name}/ (no validation folder beside it)"
        return f"training images from {self.train.name}/, validation images from {self.val.name}/"


def data_folders(path: str | os.PathLike) -> DataFolders:
    """The one folder convention of the CLI and the window.

    A root holding train/ whose entries are class subfolders, beside val/ (or valid/, validation/,
    test/), is laid out as most published datasets are: train on train/, validate on the other. A root
    with only train/ trains on train/. Anything else is itself the data, one subfolder per class, so
    classes that happen to be named "train" and "val" (holding images, not class folders) still work.
    """
    root = Path(path).expanduser()
    train = root / "train"
    if not _has_class_folders(train):
        return DataFolders(root, root, None)
    val = next((root / n for n in VAL_NAMES if (root / n).is_dir()), None)
    return DataFolders(root, train, val)


def _has_class_folders(folder: Path) -> bool:
    try:
        if not folder.is_dir():
            return False
        with os.scandir(folder) as entries:  # closed at once, not when collected (a ResourceWarning)
            return any(e.is_dir() and not _hidden(e.name) for e in entries)
    except OSError:
        return False
