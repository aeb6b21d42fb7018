"""The engine's helper processes (parallel image decoding, data-parallel training): how one is
started and the one message format both speak over its stdin/stdout."""

from __future__ import annotations

import json
import os
import select
import struct
import subprocess
import sys
import time
from typing import Any, BinaryIO


def start_helper(module: str, function: str = "_worker_main") -> subprocess.Popen:
    """Run `module.function()` in a fresh interpreter, talking over its stdin/stdout pipes.

    A plain subprocess rather than multiprocessing: nothing re-imports the caller's __main__ (the
    GUI, a script without a main guard), nothing is forked from a process that has threads, and
    the helper sees end-of-file on stdin the moment the caller goes away, so no orphans remain.
    Each helper gets one BLAS thread: the helpers themselves are the parallelism.

    The helper searches modules where this process does: it starts with this process's sys.path,
    passed as an argument, so it imports the very `engine` this process imported, however that was
    found (an installed wheel, an editable install, a checkout on PYTHONPATH, a test runner's
    rootdir), with no path worked out from where a file lies.
    """
    env = dict(os.environ)
    for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[k] = "1"
    code = f"import json, sys; sys.path[:] = json.loads(sys.argv[1]); from {module} import {function}; {function}()"
    return subprocess.Popen(
        [sys.executable, "-c", code, json.dumps(sys.path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, close_fds=True,
    )


class Pipe:
    """Messages over a pair of byte streams: a 4-byte little-endian length, that many bytes of JSON,
    then optionally raw bytes whose size the JSON states (so pixels need no encoding).

    JSON rather than pickle: a message can only ever become data. File names that are not valid
    UTF-8 survive as surrogate escapes (json.dumps writes them as \\udcXX)."""

    def __init__(self, rfile: BinaryIO | Any, wfile: BinaryIO | Any):
        self.r, self.w = rfile, wfile

    def send(self, obj: dict, payload: bytes | memoryview = b"") -> None:
        data = json.dumps(obj).encode()
        self.w.write(struct.pack("<I", len(data)) + data)
        if len(payload):
            self.w.write(payload)
        self.w.flush()

    def recv(self, timeout: float | None = None) -> dict:
        """The next message; with `timeout` (seconds, for the whole message) TimeoutError when it
        has not arrived by then. A timeout needs an unbuffered reader (a pipe's `.raw`): data
        already in a buffer is invisible to the readiness check."""
        deadline = None if timeout is None else time.monotonic() + timeout
        (size,) = struct.unpack("<I", self.recv_bytes(4, deadline))
        return json.loads(self.recv_bytes(size, deadline))

    def recv_bytes(self, n: int, deadline: float | None = None) -> bytes:
        parts, got = [], 0
        while got < n:  # an unbuffered reader returns what has arrived so far
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self.r], [], [], left)[0]:
                    raise TimeoutError("no message in time")
            data = self.r.read(n - got)
            if not data:
                raise EOFError("pipe closed")
            parts.append(data)
            got += len(data)
        return parts[0] if len(parts) == 1 else b"".join(parts)


def helper_pipe() -> Pipe:
    """The helper's side: its stdin/stdout as a Pipe; print() goes to stderr from now on, since
    nothing else may write into the message stream."""
    pipe = Pipe(sys.stdin.buffer, sys.stdout.buffer)
    sys.stdout = sys.stderr
    return pipe


def caller_pipe(proc: subprocess.Popen) -> Pipe:
    """The caller's side of a helper started by start_helper."""
    return Pipe(proc.stdout, proc.stdin)
