"""Decoding many files into one array, in this thread or in helper processes.

Decoding small files is dominated by Python overhead and threads fight over the GIL, so large
folders are decoded by helper processes (plain subprocesses, never forked: the GUI has threads;
see engine.subproc). Long decodes report progress through a callback and can be cancelled
(`cancel` is an Event or a callable), because the GUI runs them in a worker thread.
"""

from __future__ import annotations

import os
import select
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.errors import EngineError
from engine.preprocess import ImageError, Preprocessing, decode_chunk, decode_image
from engine.subproc import caller_pipe, helper_pipe, start_helper

#: Folders at least this large are decoded by helper processes; smaller ones in the calling thread.
PARALLEL_THRESHOLD = 4000

ProgressFn = Callable[[int, int], None]


class LoadCancelled(EngineError):
    """Loading was cancelled by the caller (the GUI's Cancel button)."""


def is_cancelled(cancel: Any) -> bool:
    if cancel is None:
        return False
    if isinstance(cancel, threading.Event):
        return cancel.is_set()
    return bool(cancel())


@dataclass
class Decoding:
    """Files to decode and where their results go: paths[i] -> images[i], ok[i], reasons[i].

    `total` and `done` count for progress; they include files the caller had already (cached)."""

    paths: Sequence[str]
    images: np.ndarray  # uint8 (N, C, H, W), filled in place
    ok: np.ndarray  # bool (N,)
    reasons: list[str]
    prep: Preprocessing
    max_pixels: int
    progress: ProgressFn | None = None
    cancel: Any = None
    done: int = 0
    total: int = 0

    def run(self, todo: list[int], workers: int | None = None, parallel_threshold: int = PARALLEL_THRESHOLD) -> None:
        """Decode the files at indices `todo`; raises LoadCancelled when cancelled."""
        self._report()
        if not todo:
            return
        nworkers = workers if workers is not None else min(2, os.cpu_count() or 1)
        if nworkers > 1 and len(todo) >= parallel_threshold:
            self._parallel(todo, nworkers)
        else:
            self._here(todo)

    def _report(self) -> None:
        if self.progress:
            self.progress(self.done, self.total)

    def _check_cancel(self) -> None:
        if is_cancelled(self.cancel):
            raise LoadCancelled("loading cancelled")

    def _here(self, todo: list[int]) -> None:
        p = self.prep
        last = time.perf_counter()
        for k, i in enumerate(todo):
            self._check_cancel()
            try:
                self.images[i] = decode_image(self.paths[i], p.color, p.height, p.width, self.max_pixels)
                self.ok[i] = True
            except ImageError as e:
                self.reasons[i] = str(e).removeprefix(self.paths[i] + ": ")
            self.done += 1
            if time.perf_counter() - last > 0.05 or k == len(todo) - 1:
                last = time.perf_counter()
                self._report()

    def _store(self, part: list[int], arr: np.ndarray, good: Any, why: list[str]) -> None:
        idx = np.asarray(part)
        self.images[idx] = arr
        self.ok[idx] = np.asarray(good, bool)
        for i, r in zip(part, why, strict=True):
            self.reasons[i] = r
        self.done += len(part)
        self._report()

    def _chunk(self, part: list[int]) -> tuple[np.ndarray, Any, list[str]]:
        p = self.prep
        return decode_chunk([self.paths[i] for i in part], p.color, p.height, p.width, self.max_pixels)

    def _parallel(self, todo: list[int], nworkers: int) -> None:
        p = self.prep
        c, h, w = p.channels, p.height, p.width
        # chunks big enough to amortise the round trip, small enough for steady progress and bounded
        # memory (at most ~16 MB of pixels in flight per helper, whatever the image size)
        chunk = max(4, min(500, max(32, len(todo) // (nworkers * 8)), (16 << 20) // (c * h * w)))
        chunks = [todo[k:k + chunk] for k in range(0, len(todo), chunk)]
        workers: list[_DecodeWorker] = []
        try:
            try:
                workers = [_DecodeWorker() for _ in range(nworkers)]
            except OSError:
                pass
            pos = 0
            for wk in workers:  # one chunk in flight per helper: it is always reading when we write
                if pos < len(chunks):
                    wk.send(chunks[pos], self)
                    pos += 1
            busy = [wk for wk in workers if wk.part is not None]
            while busy:
                self._check_cancel()
                ready, _, _ = select.select([wk.proc.stdout for wk in busy], [], [], 0.1)
                for wk in busy:
                    if wk.proc.stdout not in ready:
                        continue
                    part = wk.part
                    try:
                        arr, good, why = wk.receive(c, h, w)
                    except (EOFError, OSError, ValueError):  # a dead helper: its chunk is decoded here instead
                        arr, good, why = self._chunk(part)
                        workers.remove(wk)
                        wk.close()
                    wk.part = None
                    self._store(part, arr, good, why)
                    if wk in workers and pos < len(chunks):
                        wk.send(chunks[pos], self)
                        pos += 1
                busy = [wk for wk in workers if wk.part is not None]
            rest = [i for part in chunks[pos:] for i in part]  # left over if every helper died
            if rest:
                self._here(rest)
        finally:
            for wk in workers:
                wk.close()


class _DecodeWorker:
    """One helper process decoding chunks of files (protocol: _worker_main)."""

    def __init__(self) -> None:
        self.proc = start_helper("engine.decoding")
        self.pipe = caller_pipe(self.proc)
        self.part: list[int] | None = None  # indices of the chunk in flight

    def send(self, part: list[int], job: Decoding) -> None:
        p = job.prep
        self.pipe.send({"paths": [job.paths[i] for i in part], "color": p.color, "height": p.height,
                        "width": p.width, "max_pixels": job.max_pixels})
        self.part = part

    def receive(self, c: int, h: int, w: int) -> tuple[np.ndarray, list[bool], list[str]]:
        head = self.pipe.recv()
        n = head["n"]
        raw = self.pipe.recv_bytes(n * c * h * w)
        return np.frombuffer(raw, np.uint8).reshape(n, c, h, w), head["ok"], head["reasons"]

    def close(self) -> None:
        # Close both pipes first: a helper blocked writing a chunk nobody will read then gets a
        # broken pipe and exits at once, instead of holding up a cancel or a window close.
        for pipe in (self.proc.stdin, self.proc.stdout):
            try:
                pipe.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _worker_main() -> None:
    """Helper process: for each request (a chunk of paths and the target format) answer with the
    count, ok flags and reasons, followed by the raw uint8 pixels; exit at end of input."""
    pipe = helper_pipe()
    while True:
        try:
            req = pipe.recv()
        except EOFError:
            return
        imgs, good, why = decode_chunk(req["paths"], req["color"], req["height"], req["width"], req["max_pixels"])
        pipe.send({"n": len(good), "ok": good.tolist(), "reasons": why}, imgs.tobytes())
