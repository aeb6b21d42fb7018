"""Every file the tool reads or writes on a user's behalf goes through here.

Why one module: the files come from anywhere (a colleague's model, a downloaded design, a folder
of scans), and each way a path can hurt was found once per reader before. So the rules live in
one place and every reader and writer follows them:

* Reading: a path must name a *regular* file (never a device such as /dev/zero, a named pipe that
  would block forever, or a folder), opened without blocking and checked with fstat on the open
  descriptor (no race between check and read), and no larger than a cap that fits its kind. The
  size is checked before a byte is parsed, and at most cap + 1 bytes are ever read.
* JSON: nesting depth and the length of numbers are bounded before Python's parser (which
  recurses) sees the text; NaN/Infinity literals and out-of-range numbers are refused. Every
  problem is a one-line SafeIOError, never RecursionError/ValueError.
* JSON out: non-finite floats become null (JSON has no NaN), so --json and --log stay JSON.
* Writing: only regular files or new ones, built in a temp file in the same folder and swapped
  in with os.replace after everything succeeded, keeping a replaced file's permission bits.
  Devices, folders and other special files are refused.
* Collisions: outputs and inputs of one command that are the same file (same resolved path or
  same inode) are refused before any work starts.
* Terminal: text from files (class names, file names, model names) is shown with control
  characters escaped, so it cannot move the cursor, recolour, or forge lines.
"""

from __future__ import annotations

import json
import os
import re
import stat
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np

from engine.errors import EngineError
from engine.places import STORE_FILE, cache_dir, store_dir

MB = 1024 * 1024
#: Size caps per kind of file read: far above any real file of the kind, far below memory trouble.
MAX_BYTES: dict[str, int] = {
    "architecture": 16 * MB,
    "json": 16 * MB,
    "model": 4 * 1024 * MB,
    "image": 256 * MB,
}
#: Deeper nesting than this is not a design or a model (the format needs about 5 levels).
MAX_JSON_DEPTH = 64
#: Characters in one JSON number (a float64 needs about 25).
MAX_NUMBER_CHARS = 64
#: Longest message line shown on the terminal (a huge field must not flood the screen).
MAX_MESSAGE_CHARS = 800


class SafeIOError(EngineError):
    """A path or file that is refused; the message names it and says why. `reason` is the why
    alone (for lists that already show the path, such as a folder's skipped files)."""

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason or message


# --------------------------------------------------------------------------------------------
# Terminal text
# --------------------------------------------------------------------------------------------
def printable(text: Any, limit: int | None = None) -> str:
    """`text` with control and formatting characters (escape codes, newlines, bidi overrides)
    shown escaped, e.g. '\\x1b[31m'; optionally cut to `limit` characters."""
    s = str(text)
    if not s.isprintable():
        s = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in s)
    if limit is not None and len(s) > limit:
        s = s[: limit - 3] + "..."
    return s


def printable_lines(text: str) -> str:
    """Multi-line output with each line made printable (the line breaks themselves are kept)."""
    return "\n".join(printable(line) for line in text.split("\n"))


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------
def _kind_text(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def _size_text(n: int) -> str:
    return f"{n / MB:,.1f} MB" if n >= MB else f"{n:,} bytes"


def _cap_text(limit: int, what: str) -> str:
    return f"the {_size_text(limit)} {'an' if what[:1] in 'aeiou' else 'a'} {what} file may have"


def _open_checked(p: str, what: str, limit: int) -> int:
    """A descriptor open for reading on a regular file no larger than `limit`, still non-blocking
    (opening a named pipe must not wait for a writer, and a file such as /proc/kmsg that is
    "regular" but waits for data must not hang a read)."""
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise SafeIOError(f"{what} file not found: {p}", "file not found") from None
    except IsADirectoryError:
        raise SafeIOError(f"{what} {p} is a folder, not a file", "is a folder, not a file") from None
    except OSError as e:
        why = e.strerror or str(e)
        raise SafeIOError(f"cannot read {what} {p}: {why}", f"cannot read ({why})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            why = f"is {_kind_text(st.st_mode)}, not a regular file"
            raise SafeIOError(f"{what} {p} {why}", why)
        if st.st_size > limit:
            why = f"is {_size_text(st.st_size)}, more than {_cap_text(limit, what)}"
            raise SafeIOError(f"{what} {p} {why}", why)
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextmanager
def open_regular(path: str | os.PathLike, what: str, cap: int | None = None) -> Iterator[IO[bytes]]:
    """Open a regular file for reading, checked on the open descriptor; SafeIOError otherwise.

    `what` is the kind ("architecture", "model", "image", ...): it picks the size cap (unless
    `cap` is given) and names the file in messages."""
    p = os.fspath(path)
    fd = _open_checked(p, what, cap if cap is not None else MAX_BYTES.get(what, MAX_BYTES["json"]))
    try:
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)  # readers such as zipfile expect blocking reads
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        yield f


def read_bytes(path: str | os.PathLike, what: str, cap: int | None = None) -> bytes:
    """The whole content of a regular file no larger than its kind's cap (see open_regular).

    Memory is what the file holds, not the cap: the first read asks for the size fstat reports
    (plus one byte, to notice a file that grew), so a 2 GB cap costs nothing for a 2 KB file, even
    under `ulimit -v`. Files whose size the kernel reports as 0 (/proc) are read in chunks up to
    the cap; one that would block (/proc/kmsg) is refused instead of waited on."""
    p = os.fspath(path)
    limit = cap if cap is not None else MAX_BYTES.get(what, MAX_BYTES["json"])
    fd = _open_checked(p, what, limit)
    parts: list[bytes] = []
    total = 0
    try:
        ask = min(os.fstat(fd).st_size, limit) + 1
        while total <= limit:
            try:
                chunk = os.read(fd, min(max(ask, 1), limit + 1 - total))
            except BlockingIOError:
                raise SafeIOError(f"cannot read {what} {p}: it has no data ready (it would wait forever)",
                                  "cannot read (it would wait for data)") from None
            except OSError as e:
                why = e.strerror or str(e)
                raise SafeIOError(f"cannot read {what} {p}: {why}", f"cannot read ({why})") from None
            if not chunk:
                break
            parts.append(chunk)
            total += len(chunk)
            ask = 1 << 20
    finally:
        os.close(fd)
    if total > limit:  # it grew after the check, or the kernel did not say its size
        why = f"is larger than {_cap_text(limit, what)}"
        raise SafeIOError(f"{what} {p} {why}", why)
    return parts[0] if len(parts) == 1 else b"".join(parts)


class _NumberError(ValueError):
    pass


def _parse_int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise _NumberError(f"a number with {len(text):,} digits")
    return int(text)


def _parse_float(text: str) -> float:
    v = float(text) if len(text) <= MAX_NUMBER_CHARS else float("inf")
    if not np.isfinite(v):
        raise _NumberError(f"the number {printable(text, 40)} is out of range")
    return v


def _parse_constant(text: str) -> Any:
    raise _NumberError(f"{text} is not a JSON number")


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


def json_depth(text: str) -> int:
    """Deepest nesting of [ and { outside strings, without recursion."""
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    if not brackets:
        return 0
    b = np.frombuffer(brackets.encode("ascii"), np.uint8)
    return int(np.cumsum(np.where((b == ord("[")) | (b == ord("{")), 1, -1)).max())


def parse_json(data: bytes | str, where: str) -> Any:
    """Parse untrusted JSON text with bounded depth and numbers; SafeIOError (one line) otherwise."""
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise SafeIOError(f"{where} is not a text file (not UTF-8)") from None
    else:
        text = data
    depth = json_depth(text)
    if depth > MAX_JSON_DEPTH:
        raise SafeIOError(f"{where} nests {depth:,} levels deep (at most {MAX_JSON_DEPTH} are allowed)")
    try:
        value = json.loads(text, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant)
        if "\\u" in text:  # an escape may spell half of a character ("\ud800"), which no file or screen takes
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        return value
    except UnicodeEncodeError:
        raise SafeIOError(f"{where} holds text that is not valid Unicode (half of a character, such as "
                          "\\ud800)") from None
    except json.JSONDecodeError as e:
        raise SafeIOError(f"{where} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}") from None
    except _NumberError as e:
        raise SafeIOError(f"{where}: {e}") from None
    except (RecursionError, ValueError, MemoryError) as e:  # belt and braces: never a traceback
        raise SafeIOError(f"{where} cannot be read as JSON ({type(e).__name__})") from None


def read_json(path: str | os.PathLike, what: str = "json") -> Any:
    """Read and parse a JSON file under the rules above."""
    return parse_json(read_bytes(path, what), f"{what} {os.fspath(path)}")


# --------------------------------------------------------------------------------------------
# JSON out
# --------------------------------------------------------------------------------------------
def to_jsonable(v: Any) -> Any:
    """Plain JSON values only: NaN and infinity (a loss that diverged, an empty set's accuracy)
    become null, because JSON has no literal for them and strict parsers reject `NaN`."""
    if isinstance(v, Mapping):
        return {str(k): to_jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [to_jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return to_jsonable(v.tolist())
    if isinstance(v, (float, np.floating)):
        f = float(v)
        return f if np.isfinite(f) else None
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.bool_):
        return bool(v)
    if v is None or isinstance(v, (str, int, bool)):
        return v
    return str(v)


def dumps(obj: Any, **kw: Any) -> str:
    """json.dumps that always produces standard JSON (see to_jsonable)."""
    return json.dumps(to_jsonable(obj), allow_nan=False, **kw)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------
def check_writable(path: str | os.PathLike, what: str, follow_links: bool = True) -> Path:
    """The file a write to `path` will replace or create (a symlink's target), checked now so a
    long run does not fail at the end: a regular file or a new name in an existing, writable folder.

    follow_links=False for names the tool makes up inside a folder the user chose (explain's
    overlays): a link found there was planted, not chosen, and must not lead the write elsewhere."""
    p = Path(path).expanduser()
    if p.is_symlink() and not follow_links:
        raise SafeIOError(f"{what} {printable(os.fspath(p))} is a link to {printable(os.readlink(p))}: only new or "
                          "regular files are written there; remove the link or choose another folder")
    target = Path(os.path.realpath(p)) if p.is_symlink() else p
    try:
        st = os.stat(target)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise SafeIOError(f"cannot write {what} {p}: {e.strerror or e}") from None
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise SafeIOError(f"{what} {p} is {_kind_text(st.st_mode)}: only regular files are written; give a new "
                          "file name")
    own = _own_file(target)
    if own is not None:
        raise SafeIOError(f"{what} {printable(os.fspath(p))} is {own}: give another name")
    if st is not None and not os.access(target, os.W_OK):  # replacing it would work, but it says "keep me"
        raise SafeIOError(f"cannot write {what} {p}: the file is read-only; make it writable or give another name")
    parent = target.parent
    if not parent.is_dir():
        raise SafeIOError(f"cannot write {what} {p}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise SafeIOError(f"cannot write {what} {p}: folder {parent} is not writable")
    return target


def _own_file(target: Path) -> str | None:
    """Which of the tool's own files a write to `target` would replace: the run store's database
    (every recorded run) or anything in the decode cache. They are written by their owners alone,
    never as a command's output."""
    real = os.path.realpath(target)
    if os.path.dirname(real) == os.path.realpath(store_dir()) and os.path.basename(real).startswith(STORE_FILE):
        return "the run store's database (the record of every training run)"
    if inside(real, cache_dir()):
        return "inside the decode cache"
    return None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(path: str | os.PathLike, data: bytes, what: str = "file", follow_links: bool = True) -> Path:
    """Write atomically: a temp file in the same folder, fsync, then os.replace. A crash or an
    error leaves the previous file as it was; a replaced file keeps its permission bits, a new one
    gets the usual umask permissions (mkstemp's private 0600 would surprise). Returns the target."""
    target = check_writable(path, what, follow_links)
    try:
        mode = os.stat(target).st_mode & 0o7777
    except OSError:
        mode = 0o666 & ~_umask()
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name[:80]}.", suffix=".tmp")
    except OSError as e:
        raise SafeIOError(f"cannot write {what} {path}: {e.strerror or e}") from None
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:  # the same rule again at the last moment: something else may have appeared meanwhile
            st = os.lstat(target)
            if not stat.S_ISREG(st.st_mode):
                raise SafeIOError(f"{what} {path} is {_kind_text(st.st_mode)}: only regular files are written")
        except FileNotFoundError:
            pass
        os.replace(tmp, target)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise SafeIOError(f"cannot write {what} {path}: {e.strerror or e}") from None
        raise
    return target


def write_text(path: str | os.PathLike, text: str, what: str = "file", follow_links: bool = True) -> Path:
    return write_bytes(path, text.encode("utf-8"), what, follow_links)


# --------------------------------------------------------------------------------------------
# Collisions
# --------------------------------------------------------------------------------------------
def _identity(path: str | os.PathLike) -> tuple[str, tuple[int, int] | None]:
    p = Path(path).expanduser()
    try:
        st = os.stat(p)
        ino: tuple[int, int] | None = (st.st_dev, st.st_ino)
    except OSError:
        ino = None
    return os.path.realpath(p), ino


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Do two paths name the same file or folder (same resolved path, or same inode: hard links,
    bind mounts)?"""
    ra, ia = _identity(a)
    rb, ib = _identity(b)
    return ra == rb or (ia is not None and ia == ib)


def inside(child: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Is `child` the folder itself or somewhere below it (after resolving links)?"""
    c, f = os.path.realpath(Path(child).expanduser()), os.path.realpath(Path(folder).expanduser())
    return c == f or c.startswith(f.rstrip(os.sep) + os.sep) or same_file(child, folder)


def check_distinct(paths: Mapping[str, str | os.PathLike | None], outputs: Iterable[str] = ()) -> None:
    """Refuse, before any work, two options that name the same file ({"--out": ..., "--log": ...}),
    and an output (a flag in `outputs`) that lies inside a folder another option names: a model or
    log written into --data would replace or add to the very images it was trained on."""
    items = [(flag, p) for flag, p in paths.items() if p is not None and os.fspath(p) != ""]
    for i, (fa, pa) in enumerate(items):
        for fb, pb in items[i + 1:]:
            if same_file(pa, pb):
                raise SafeIOError(f"{fa} and {fb} name the same file ({printable(os.fspath(pb))}): "
                                  "give each its own")
            if _identity(pa)[0].casefold() == _identity(pb)[0].casefold():  # one file on macOS/Windows disks
                raise SafeIOError(f"{fa} and {fb} differ only in upper/lower case ({printable(os.fspath(pa))}, "
                                  f"{printable(os.fspath(pb))}), the same file on many disks: give each its own name")
    outs = set(outputs)
    for fo, po in items:
        if fo not in outs:
            continue
        for fd, pd in items:
            if fd != fo and Path(pd).expanduser().is_dir() and inside(po, pd):
                raise SafeIOError(f"{fo} {printable(os.fspath(po))} lies inside {fd} {printable(os.fspath(pd))}: "
                                  "writing there would change that folder; choose a path outside it")


__all__ = [
    "MAX_BYTES", "MAX_JSON_DEPTH", "MAX_NUMBER_CHARS", "SafeIOError", "check_distinct", "check_writable", "dumps",
    "inside", "json_depth", "open_regular", "parse_json", "printable", "printable_lines", "read_bytes",
    "read_json", "same_file", "to_jsonable", "write_bytes", "write_text",
]
