"""Data parallelism over two processes: `enable_workers(model, 2)`.

Why processes: a training step is dozens of NumPy calls on arrays of a few megabytes, so Python
threads serialise on the GIL, and a multi-threaded BLAS spends more time waking its threads than
computing (and collapses when the two cores are shared with anything else). Two processes with a
one-thread BLAS each, each computing half of every batch, use both cores fully.

How: the main process keeps the model and the optimizer; one helper process holds a replica of the
same spec. For each batch the main process writes the second half of the inputs and the current
parameters into memory-mapped files both processes share (in /dev/shm; unlinked as soon as the
helper has mapped them, so nothing is left behind even after a crash), the helper computes the
gradient of its half while the main process computes its own, and the main process adds the two
gradients (each scaled by its share of the batch, so the sum is exactly the full-batch mean
gradient). Dropout masks are drawn for the whole batch from a per-step seed and sliced, so a split
batch sees the same mask as a whole one. BatchNorm is synchronised (as PyTorch's SyncBatchNorm):
at each BatchNorm layer both processes add up their per-channel count and sum, then their sums of
squared deviations from the global mean, and in the backward pass the two per-channel gradient sums,
through a small shared slot and a counter each process raises and the other waits on (see
_Exchange); every share is thus normalised with the whole batch's statistics. Results equal the
single-process ones up to float rounding.

Robustness: the helper is a plain subprocess (safe from a Qt thread; no fork of a GUI, no re-import of the
caller's __main__), exits when its stdin closes (its parent died or closed it), and any failure of the helper makes the
main process finish the step alone and drop back to single-process mode.
"""

from __future__ import annotations

import math
import os
import platform
import select
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from typing import Any

import numpy as np

from engine.blas import blas_threads
from engine.errors import EngineError
from engine.model import Model
from engine.spec import Spec
from engine.subproc import Pipe, caller_pipe, helper_pipe, start_helper


# ----------------------------------------------------------------------------------------------
# Shared buffers
# ----------------------------------------------------------------------------------------------
def _shm_dir() -> str | None:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


class _SharedFile:
    """A memory-mapped scratch file both processes map; unlinked once the helper has it open."""

    def __init__(self, nbytes: int):
        fd, self.path = tempfile.mkstemp(prefix="cnnd-dp-", suffix=".buf", dir=_shm_dir())
        try:
            os.ftruncate(fd, max(nbytes, 1))
        finally:
            os.close(fd)
        self.nbytes = max(nbytes, 1)
        self.mm = np.memmap(self.path, dtype=np.uint8, mode="r+", shape=(self.nbytes,))
        self.unlinked = False

    def unlink(self) -> None:
        if not self.unlinked:
            self.unlinked = True
            try:
                os.unlink(self.path)
            except OSError:
                pass


def _sync_size(model: Model) -> int:
    """Floats one process puts in the BatchNorm exchange slot at most (2 per channel + the count)."""
    return max((2 * v.size + 1 for v in model.buffers().values()), default=1)


def _cache_lines(nbytes: int) -> int:
    """nbytes rounded up to whole 64-byte cache lines, so every array in a shared file starts on
    a line of its own."""
    return -(-nbytes // 64) * 64


def _layout(max_batch: int, sample: int, out_size: int, itemsize: int, n_buffers: int = 0,
            sync: int = 1) -> dict[str, tuple[int, int]]:
    """Byte offsets of the arrays in the batch file: x, y (int64), out, buffers (BatchNorm running
    statistics), sync (float64: 2 alternating slots x 2 processes x `sync`) and flags (int64: each
    process's exchange counter, on a cache line of its own: _Exchange). The parameters and
    gradients live in a file of their own, made once (`_param_views`): the helper's model computes
    in them directly."""
    out, off = {}, 0
    for name, count, size in (("x", max_batch * sample, itemsize), ("y", max_batch, 8),
                              ("out", max_batch * out_size, itemsize), ("buffers", n_buffers, itemsize),
                              ("sync", 4 * sync, 8), ("flags", 16, 8)):
        out[name] = (off, count)
        off += _cache_lines(count * size)
    out["_total"] = (off, 0)
    return out


def _views(mm: np.ndarray, layout: dict, dtype: np.dtype, sample_shape: tuple[int, ...], max_batch: int) -> dict:
    def arr(name, dt):
        off, count = layout[name]
        return np.ndarray((count,), dtype=dt, buffer=mm, offset=off)

    return {"x": arr("x", dtype).reshape(max_batch, *sample_shape), "y": arr("y", np.int64),
            "out": arr("out", dtype).reshape(max_batch, -1), "buffers": arr("buffers", dtype),
            "sync": arr("sync", np.float64).reshape(2, 2, -1), "flags": arr("flags", np.int64)}


def _param_views(mm: np.ndarray, n_params: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """(parameters, gradients) in the parameter file: the helper's model's own flat buffers."""
    half = _cache_lines(n_params * dtype.itemsize)
    return (np.ndarray((n_params,), dtype, buffer=mm, offset=0),
            np.ndarray((n_params,), dtype, buffer=mm, offset=half))


def _param_file_size(n_params: int, dtype: np.dtype) -> int:
    return 2 * _cache_lines(n_params * dtype.itemsize)


class _HelperLost(Exception):
    """The other process broke off in the middle of a synchronised step."""


def spin_supported() -> bool:
    """Whether the exchanges can wait by spinning on a counter in shared memory: the processor must
    make one process's stores visible to the other in the order they were made (x86-64's TSO), so
    that a raised counter means the slot written before it is there. Elsewhere they wait on the pipe."""
    return platform.machine().lower() in ("x86_64", "amd64")


class _Exchange:
    """BatchNorm's sums over both processes' shares of a batch. Each process writes its vector into
    its slot and signals; when the other's signal is there, both add the two slots in the same
    order, so both get bit-identical totals. Calls alternate between two pairs of slots: a process
    can run ahead by at most one exchange, so it never overwrites a slot still being read.

    The signal is the process's exchange counter in the shared file (`flags`), raised after its
    slot is written, and the other spins on it. A pipe message each way (the fallback where
    spin_supported() is False) wakes the blocked reader late: valid_bn32, 12 exchanges in a step,
    spent 2.1-4.6 ms of a ~40 ms step of 64 images in them (now 0.3-0.7 ms), and the same two
    halves with no waiting at all ran ~4 ms faster. While spinning it calls `check` every 1,024
    turns (is the other process still there? it raises _HelperLost if not) and lets other threads
    have the GIL, and after 16,384 turns (a millisecond or two: the other process descheduled by a
    busy machine) it sleeps 50 us a turn to give the core back."""

    def __init__(self, me: int, send: Any, recv: Any, check: Any = None):
        self.me, self.send, self.recv, self.check = me, send, recv, check
        self.sync: np.ndarray | None = None
        #: the counters (int64, this process's at 8 * me), or None to signal through the pipe
        self.flags: np.ndarray | None = None
        self.seq = 0
        self.calls = 0

    def use(self, views: dict, spin: bool) -> None:
        """Exchange through a newly mapped batch file (its counters start at zero)."""
        self.sync = views["sync"]
        self.flags = views["flags"] if spin else None
        self.seq = 0

    def __call__(self, v: np.ndarray) -> np.ndarray:
        k = v.size
        slots = self.sync[self.calls % 2]
        self.calls += 1
        slots[self.me, :k] = v
        if self.flags is not None:
            self.seq += 1
            self.flags[8 * self.me] = self.seq
            self._wait()
        else:
            try:
                self.send()
                ok = self.recv()
            except (EOFError, OSError, ValueError) as e:
                raise _HelperLost(str(e)) from None
            if not ok:
                raise _HelperLost("the other process did not take part in the exchange")
        return slots[0, :k] + slots[1, :k]

    def _wait(self) -> None:
        f, other, seq = self.flags, 8 * (1 - self.me), self.seq
        turns, since = 0, 0.0
        while f[other] < seq:
            turns += 1
            if turns & 1023:
                if turns > 16384:
                    time.sleep(50e-6)
                continue
            if turns == 1024:
                since = time.monotonic()
            if self.check is not None:
                self.check(since)
            # let another thread of this process run (the app's window, while training runs in a
            # thread of its own): the spin holds the GIL between these
            time.sleep(0)


# ----------------------------------------------------------------------------------------------
# The helper process
# ----------------------------------------------------------------------------------------------
def _worker_main() -> None:
    """Helper loop (`python -c "from engine.parallel import _worker_main; _worker_main()"`): a replica
    model with a one-thread BLAS computing the gradients of the batch share it is sent. It exits when
    its stdin closes, i.e. when the main process closes it or dies."""
    blas_threads(1)
    pipe = helper_pipe()
    hello = pipe.recv()
    spec = Spec.from_dict(hello["spec"])
    dtype = np.dtype(hello["dtype"])
    pm = np.memmap(hello["params_path"], dtype=np.uint8, mode="r+", shape=(hello["params_nbytes"],))
    # the main process writes the parameters straight into this model's buffer and reads its
    # gradients out of it: nothing is copied on this side
    model = Model(spec, seed=hello["seed"], dtype=dtype, flat=_param_views(pm, hello["n_params"], dtype))
    views: dict | None = None
    parent = os.getppid()

    def check(_since: float) -> None:
        """The main process is still there and has not written (it writes nothing mid-step unless
        it gave up on this step: a stop, or end of file)."""
        if os.getppid() != parent or select.select([sys.stdin], [], [], 0)[0]:
            raise _HelperLost("the main process broke off the step")

    exchange = _Exchange(1, lambda: pipe.send({"sum": True}), lambda: pipe.recv().get("cmd") == "sum", check)
    pipe.send({"ready": True})
    while True:
        try:
            msg = pipe.recv()
        except (EOFError, OSError, ValueError):
            return
        cmd = msg.get("cmd")
        if cmd == "stop":
            return
        try:
            if cmd == "map":
                mm = np.memmap(msg["path"], dtype=np.uint8, mode="r+", shape=(msg["nbytes"],))
                views = _views(mm, {k: tuple(v) for k, v in msg["layout"].items()}, model.dtype,
                               tuple(model.spec.input_shape), msg["max_batch"])
                exchange.use(views, bool(msg.get("spin")))
                pipe.send({"mapped": True})
            elif cmd == "step" and views is not None:
                n, total, lo = msg["n"], msg["total"], msg["lo"]
                exchange.calls = 0
                with model.dropout_share(msg["seeds"], lo, total), model.batchnorm_share(exchange):
                    loss_sum, correct = model.loss_and_grad(views["x"][:n], views["y"][:n], scale=n / total)
                pipe.send({"loss_sum": loss_sum, "correct": correct})
            elif cmd == "infer" and views is not None:
                n = msg["n"]
                _unflatten(views["buffers"], model.buffers().values())
                x = views["x"][:n]
                out = model.logits(x) if msg["head"] else model.forward(x)
                views["out"][:n] = out.reshape(n, -1)
                pipe.send({"done": True})
            else:
                pipe.send({"error": f"unexpected command {cmd!r}"})
        except (EOFError, BrokenPipeError, _HelperLost):
            return
        except Exception as e:  # report and keep serving; the main process decides what to do
            pipe.send({"error": f"{type(e).__name__}: {e}"})


def _unflatten(flat: np.ndarray, arrays: Any) -> None:
    off = 0
    for a in arrays:
        a.reshape(-1)[...] = flat[off:off + a.size]
        off += a.size


def parallel_unsupported_reason(model: Model) -> str | None:
    """Why a model cannot be split over processes with identical results, or None (every layer
    type can be: BatchNorm is synchronised)."""
    return None


def enable_workers(model: Model, workers: int = 2) -> str | None:
    """Split every training batch of `model` over `workers` processes (only 1 or 2). Returns the
    note for the user when a split asked for cannot be made (a model with BatchNorm, a helper that
    failed to start: training stays in one process), else None. `model.close()` ends the split."""
    model.close()
    if workers <= 1:
        return None
    reason = parallel_unsupported_reason(model)
    if reason is not None:
        return f"training in one process: {reason}"
    try:
        model.attach_workers(DataParallel(model))
    except (EngineError, OSError) as e:
        return f"training in one process: {e}"
    return None


def _recv_with_timeout(pipe: Pipe, timeout: float) -> dict:
    try:
        return pipe.recv(timeout=timeout)
    except TimeoutError:
        raise OSError(f"no answer within {timeout:.0f} s") from None


class DataParallel:
    """Main-process side: owns the helper process and the shared files."""

    #: a helper that has not answered for this many seconds (or 20x as long as this process has
    #: been busy with the same request, if longer) is taken for hung: it is ended and training
    #: goes on in one process, with a note saying so (Model.workers_note)
    hang_seconds = 30.0

    def __init__(self, model: Model, start_timeout: float = 60.0):
        self.model = model
        # one exchange at a time: a GUI thread may ask for predictions while a training thread steps
        self.lock = threading.RLock()
        self._blas: Any = None
        self.sample_shape = tuple(model.spec.input_shape)
        self.sample = math.prod(self.sample_shape)
        self.max_batch = 0
        self.file: _SharedFile | None = None
        self.views: dict | None = None
        #: why the helper is gone (one line for the user), once it is
        self.note: str | None = None
        self._asked_at = time.monotonic()
        n_params = model.flat_params.size
        self.param_file = _SharedFile(_param_file_size(n_params, model.dtype))
        self._files: list = [self.param_file]
        self.params, self.grads = _param_views(self.param_file.mm, n_params, model.dtype)
        self.proc = start_helper("engine.parallel")
        # unbuffered: a reply is waited for with a deadline, which a read-ahead buffer would hide
        self.pipe = Pipe(self.proc.stdout.raw, self.proc.stdin)
        self._finalizer = weakref.finalize(self, DataParallel._cleanup, self.proc, self._files)
        try:
            self.pipe.send({"spec": model.spec.to_dict(), "seed": model.seed, "dtype": model.dtype.str,
                            "params_path": self.param_file.path, "params_nbytes": self.param_file.nbytes,
                            "n_params": int(n_params)})
            ready = _recv_with_timeout(self.pipe, start_timeout)
        except (EOFError, OSError, ValueError) as e:
            self._finalizer()
            raise EngineError(f"the helper process failed to start ({e})") from None
        if not ready.get("ready"):
            self._finalizer()
            raise EngineError(f"the helper process failed to start: {ready.get('error')}")
        self.param_file.unlink()  # both processes have it mapped; nothing to leave behind
        self._blas = blas_threads(1)
        self.exchange = _Exchange(0, lambda: self.pipe.send({"cmd": "sum"}), self._summed, self._check_helper)
        self.spin = spin_supported()

    def _recv(self) -> dict:
        """The helper's next message. OSError when it ended (end of file) or hung (no message within
        `hang_seconds`, or 20x the time since the request if longer): a hung helper is ended here,
        so nothing waits on it again. `note` says which, in one line."""
        limit = self._hang_limit(time.monotonic())
        try:
            return self.pipe.recv(timeout=limit)
        except TimeoutError:
            raise OSError(self._stop_hung(limit)) from None
        except (EOFError, OSError, ValueError) as e:
            self._lost(f"the helper process ended unexpectedly ({self._exit_code() or e})")
            raise OSError(self.note) from None

    def _hang_limit(self, since: float) -> float:
        """Seconds without an answer, waited from `since`, after which the helper is taken for hung:
        `hang_seconds`, or 20x as long as this process had been busy with the request by then."""
        return max(self.hang_seconds, 20 * (since - self._asked_at))

    def _stop_hung(self, limit: float) -> str:
        """End a helper that did not answer for `limit` seconds; the note saying so."""
        self.proc.kill()
        self._lost(f"the helper process did not answer for {limit:.{0 if limit >= 10 else 1}f} s and was stopped")
        return self.note

    def _exit_code(self) -> str | None:
        """"exit code N" of a helper whose pipe closed (it is exiting: wait for it briefly), or None."""
        try:
            return f"exit code {self.proc.wait(2)}"
        except subprocess.TimeoutExpired:
            return None

    def _lost(self, why: str) -> None:
        if self.note is None:
            self.note = f"{why}; training goes on in one process"

    def _check_helper(self, since: float) -> None:
        """While waiting (since `since`) for the helper in an exchange: it is still running, has
        not written (mid-step it writes only to report a failure) and has not kept us waiting past
        the hang limit of _recv."""
        if self.proc.poll() is not None:
            raise _HelperLost(self._exit_code() or "it ended")
        if select.select([self.pipe.r], [], [], 0)[0]:
            try:  # a failure report (it notes why) or end of file
                self._summed()
            except OSError as e:
                raise _HelperLost(str(e)) from None
            raise _HelperLost("an unexpected message in an exchange")
        limit = self._hang_limit(since)
        if time.monotonic() - since > limit:
            raise _HelperLost(self._stop_hung(limit))

    def _summed(self) -> bool:
        reply = self._recv()
        if "error" in reply:
            self._lost(f"the helper process failed ({reply['error']})")
            raise OSError(reply["error"])
        return bool(reply.get("sum"))

    @staticmethod
    def _cleanup(proc: Any, files: list) -> None:
        try:
            if proc.poll() is None:
                try:
                    caller_pipe(proc).send({"cmd": "stop"})
                except (OSError, ValueError):
                    pass
                for stream in (proc.stdin, proc.stdout):
                    try:
                        stream.close()
                    except OSError:
                        pass
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(2)
        except (OSError, subprocess.TimeoutExpired):
            pass
        for f in files:
            f.unlink()
        files.clear()

    def _ensure_capacity(self, n: int) -> bool:
        """Room for n images in the batch file; False (and one process from now on) if the helper
        could not map a bigger one."""
        if n <= self.max_batch:
            return True
        self.max_batch = max(n, 64)
        dt = self.model.dtype
        out_size = math.prod(self.model.output_shape)
        n_buffers = sum(v.size for v in self.model.buffers().values())
        layout = _layout(self.max_batch, self.sample, out_size, dt.itemsize, n_buffers, _sync_size(self.model))
        old = self.file
        self.file = _SharedFile(layout["_total"][0])
        self._files.append(self.file)
        self.views = _views(self.file.mm, layout, dt, self.sample_shape, self.max_batch)
        self.exchange.use(self.views, self.spin)
        ok = self._send({"cmd": "map", "path": self.file.path, "nbytes": self.file.nbytes,
                         "layout": {k: list(v) for k, v in layout.items()}, "max_batch": self.max_batch,
                         "spin": self.spin})
        ok = ok and self._reply() is not None
        self.file.unlink()  # both processes have it mapped; nothing to leave behind
        if old is not None:
            old.unlink()
        return ok

    def loss_and_grad(self, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
        with self.lock:
            return self._loss_and_grad(x, y)

    def _loss_and_grad(self, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
        m = self.model
        n = len(x)
        seeds = m.draw_dropout_seeds()
        k = n // 2  # fixed, not adapted to timing: the same seed must give the same weights
        if k == 0 or not self._usable():
            return self._alone(x, y, seeds)
        xs, y = m.check_batch(x, y)
        if not self._ensure_capacity(n - 1):
            return self._alone(x, y, seeds)
        v = self.views
        v["x"][:n - k] = xs[k:]
        v["y"][:n - k] = y[k:]
        self.params[...] = m.flat_params
        if not self._send({"cmd": "step", "n": n - k, "total": n, "lo": k, "seeds": seeds}):
            return self._alone(x, y, seeds)
        bufs = m._buffer_list
        saved = [b.copy() for b in bufs]
        self.exchange.calls = 0
        try:
            with m.dropout_share(seeds, 0, n), m.batchnorm_share(self.exchange):
                loss_a, correct_a = m.loss_and_grad(xs[:k], y[:k], scale=k / n)
        except _HelperLost as e:  # the helper died mid-step: undo the running statistics, redo alone
            self._lost(f"the helper process ended unexpectedly ({self._exit_code() or e})")
            self._fail()
            for b, old in zip(bufs, saved, strict=True):
                b[...] = old
            return self._alone(x, y, seeds)
        except BaseException:
            self._fail()  # the helper may be waiting in an exchange: it cannot go on
            raise
        reply = self._reply()
        if reply is None:
            return self._alone(x, y, seeds)
        m.flat_grads += self.grads
        return loss_a + reply["loss_sum"], correct_a + reply["correct"]

    def infer(self, x: np.ndarray, head: bool, local: Any) -> np.ndarray:
        """Inference on both processes: the helper runs the second half while `local(x)` runs the
        first. `head` picks the logits (before a final Softmax/Sigmoid) instead of the full output."""
        with self.lock:
            return self._infer(x, head, local)

    def _infer(self, x: np.ndarray, head: bool, local: Any) -> np.ndarray:
        n = len(x)
        k = n // 2
        if k < 16 or not self._usable() or not self._ensure_capacity(n - k):
            return local(x)
        v = self.views
        v["x"][:n - k] = x[k:]
        self.params[...] = self.model.flat_params
        bufs = self.model._buffer_list
        if bufs:
            v["buffers"][...] = np.concatenate([b.reshape(-1) for b in bufs])
        if not self._send({"cmd": "infer", "n": n - k, "head": head}):
            return local(x)
        first = local(x[:k])
        if self._reply() is None:
            return np.concatenate([first, local(x[k:])])
        return np.concatenate([first, v["out"][:n - k].reshape(n - k, *first.shape[1:])])

    def _send(self, msg: dict) -> bool:
        """Send a request; on failure the helper is shut down (single-process from now on)."""
        try:
            self._asked_at = time.monotonic()
            self.pipe.send(msg)
            return True
        except (OSError, ValueError) as e:
            self._lost(f"the helper process ended unexpectedly ({self._exit_code() or e})")
            self._fail()
            return False

    def _reply(self) -> dict | None:
        """The helper's answer, or None (and single-process from now on) if it failed, died or hung."""
        try:
            reply = self._recv()
        except OSError:
            self._fail()
            return None
        if "error" in reply:
            self._lost(f"the helper process failed ({reply['error']})")
            self._fail()
            return None
        return reply

    def _alone(self, x, y, seeds) -> tuple[float, int]:
        with self.model.dropout_share(seeds, 0, len(x)):
            return self.model.loss_and_grad(x, y)

    def _usable(self) -> bool:
        """The helper is there to take a request (if it ended since the last one, say so and stop)."""
        if not self._finalizer.alive:
            return False
        code = self.proc.poll()
        if code is None:
            return True
        self._lost(f"the helper process ended unexpectedly (exit code {code})")
        self._fail()
        return False

    @property
    def alive(self) -> bool:
        return self._finalizer.alive and self.proc.poll() is None

    def _fail(self) -> None:
        self._finalizer()

    def sync_buffers(self) -> None:
        """Parameters and running statistics travel with every request: nothing to do."""

    def close(self) -> None:
        with self.lock:
            self._finalizer()
        if self._blas is not None:
            self._blas.restore_original_limits()
            self._blas = None
