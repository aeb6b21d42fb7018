"""`python -m engine.cli ARGS` as a process of its own, without paying each time for the interpreter's
start and NumPy's import (~0.25 s of CPU, most of a refusal's cost; tests/test_hostile_cli.py runs
the CLI some 260 times).

How: one server process starts as `python -m engine.cli` would up to the point where the CLI's code
runs (same interpreter, environment, warning settings, and the modules engine/cli.py imports), then
forks one child per command. The child takes the caller's stdin and fresh stdout/stderr pipes, the
command's working folder, environment and address-space limit, and runs engine/cli.py as __main__
with the command's arguments, as `-m` does (sys.argv, sys.path[0] = the working folder); its exit
code is the command's. The caller gets what subprocess.run gives: a CompletedProcess, or
TimeoutExpired with the child killed. The server's own stderr must stay empty: a warning printed while
importing would otherwise never reach the stderr the tests read.

Run as a script, this file is the server: `python cli_server.py SOCKET`.
"""

from __future__ import annotations

import json
import locale
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

_LEN = struct.Struct("q")


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise EOFError("the CLI server closed the connection")
        data += chunk
    return data


def serve(path: str) -> None:
    import resource
    import runpy

    import engine
    import engine.cli  # noqa: F401 - what `python -m engine.cli` has imported before its main() runs

    # `-m` runs the file as __main__ and never imports it as engine.cli: each command does the same
    del sys.modules["engine.cli"]
    delattr(engine, "cli")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen()
    print("ready", flush=True)
    sys.stderr.flush()
    waiting = selectors.DefaultSelector()
    waiting.register(listener, selectors.EVENT_READ)
    waiting.register(sys.stdin, selectors.EVENT_READ)  # closed when the tests end, however they end
    while True:
        if any(key.fileobj is sys.stdin for key, _ in waiting.select()):
            waiting.close()
            listener.close()
            return
        conn, _ = listener.accept()
        head, fds, _, _ = socket.recv_fds(conn, _LEN.size, 3)
        head += _recv_exact(conn, _LEN.size - len(head))
        req = json.loads(_recv_exact(conn, _LEN.unpack(head)[0]))
        pid = os.fork()
        if pid == 0:
            try:
                waiting.close()
                listener.close()
                conn.close()
                for target, fd in enumerate(fds):
                    os.dup2(fd, target)
                    os.close(fd)
                os.chdir(req["cwd"])
                os.environ.clear()
                os.environ.update(req["env"])
                if req["mem"]:
                    resource.setrlimit(resource.RLIMIT_AS, (req["mem"], req["mem"]))
                sys.argv = ["-m", *req["args"]]
                sys.path[0] = os.getcwd()
            except BaseException:
                os._exit(97)
            runpy.run_module("engine.cli", run_name="__main__", alter_sys=True)
            sys.exit(0)
        for fd in fds:
            os.close(fd)
        with conn:
            try:
                conn.sendall(_LEN.pack(pid))
            finally:
                _, status = os.waitpid(pid, 0)
            try:
                conn.sendall(_LEN.pack(os.waitstatus_to_exitcode(status)))
            except OSError:  # the caller gave up waiting (a timeout) and killed the child
                pass


class CliServer:
    """The server process; `run` is subprocess.run([python, -m, engine.cli, *args], capture_output=True,
    text=True, ...) for one command."""

    def __init__(self, folder: Path) -> None:
        """`folder`: an empty folder for the server's socket and stderr (a short path: a socket's is
        limited to ~100 characters)."""
        self.folder = folder
        self.socket = str(self.folder / "s")
        self.errors = self.folder / "stderr"
        with open(self.errors, "wb") as err:
            self.proc = subprocess.Popen([sys.executable, __file__, self.socket], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=err, text=True, cwd=self.folder,
                                         env=dict(os.environ, PYTHONWARNINGS="default"))
        try:
            ready = self.proc.stdout.readline()
            assert ready == "ready\n", self.errors.read_text()
            self.check_quiet()
        except BaseException:
            self.proc.kill()
            self.proc.wait()
            raise

    def check_quiet(self) -> None:
        """Nothing printed by the server itself: an import-time warning would otherwise go unseen."""
        assert self.errors.read_text() == "", self.errors.read_text()

    def run(self, args: list[str], cwd: Path, env: dict[str, str], timeout: float,
            mem: int | None = None) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "engine.cli", *args]
        payload = json.dumps({"args": args, "cwd": str(cwd), "env": env, "mem": mem}).encode()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        deadline = time.monotonic() + timeout
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn, selectors.DefaultSelector() as sel:
            conn.connect(self.socket)
            socket.send_fds(conn, [_LEN.pack(len(payload))], [0, out_w, err_w])
            conn.sendall(payload)
            os.close(out_w)
            os.close(err_w)
            pid = _LEN.unpack(_recv_exact(conn, _LEN.size))[0]
            chunks = {out_r: [], err_r: []}
            for fd in chunks:
                sel.register(fd, selectors.EVENT_READ)
            sel.register(conn, selectors.EVENT_READ)
            code = None
            status = b""
            while sel.get_map():
                left = deadline - time.monotonic()
                if left <= 0:
                    os.kill(pid, signal.SIGKILL)
                    for fd in chunks:
                        os.close(fd)
                    raise subprocess.TimeoutExpired(cmd, timeout)
                for key, _ in sel.select(left):
                    if key.fileobj is conn:
                        status += conn.recv(_LEN.size - len(status))
                        if len(status) == _LEN.size:
                            code = _LEN.unpack(status)[0]
                            sel.unregister(conn)
                        continue
                    data = os.read(key.fd, 1 << 16)
                    if data:
                        chunks[key.fd].append(data)
                    else:
                        sel.unregister(key.fd)
                        os.close(key.fd)
        out, err = (_text(b"".join(chunks[fd])) for fd in (out_r, err_r))
        return subprocess.CompletedProcess(cmd, code, out, err)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)
        self.proc.stdout.close()
        self.check_quiet()


def _text(data: bytes) -> str:
    """As subprocess's text mode decodes."""
    return data.decode(locale.getpreferredencoding(False)).replace("\r\n", "\n").replace("\r", "\n")


if __name__ == "__main__":
    serve(sys.argv[1])
