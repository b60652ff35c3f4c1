"""Run one labkit function in N real processes joined by ``torch.distributed``.

The chapters on collectives, federated learning and secure multi-party computation show
mechanisms that only mean something across processes: an all-reduce, a round of client
updates, parties exchanging shares. :func:`launch` starts ``world_size`` Python processes
on this machine, joins them into one process group over TCP on ``127.0.0.1``, runs
``fn(rank, world_size, *args, **kwargs)`` in each, and hands back the per-rank return
values ordered by rank.

Why spawn and not fork: a forked child inherits the parent's torch state (OpenMP and
gloo thread pools, CUDA context, locks held by other threads at the moment of the fork),
which can deadlock or crash. Spawn starts a fresh interpreter instead, at the price of
importing torch again in every child (about a second each) and of one rule: the child
finds ``fn`` by importing it by name, so ``fn`` must live in an importable module, not in
a notebook cell, a ``__main__`` script, a lambda or another function. A script that
calls :func:`launch` must do so under ``if __name__ == "__main__":``, since each child
re-imports the script.

Every way a launch can go wrong ends the same way, with no child left behind:

- a rank raises: its traceback comes back at once and :class:`LaunchError` is raised,
  without waiting for the ranks still blocked in a collective with it;
- a rank dies without a word (killed, segfault, ``os._exit``): its exit code gives it
  away and :class:`LaunchError` is raised;
- the whole launch outlives ``timeout``: :class:`LaunchTimeout` names the ranks that had
  not finished.

In each case the survivors are terminated (then killed) and every child is joined.

One failure usually brings others: when a rank dies, its peers in a collective lose their
connection and raise "Connection reset by peer" or "Connection closed by peer". So after the
first failure the parent waits briefly (``_SETTLE_S``) for the other ranks to report or exit,
then blames the root cause: failures that are not a lost connection come first, earlier ones
before later ones; the others are listed after it. Each child's stderr goes to a file, because
gloo reports some errors only there: a collective whose ranks disagree on the message size
(say, shapes not checked) makes the receiving rank abort with "Received data size doesn't
match expected size" printed to stderr. The end of a dead rank's stderr is quoted in the
error, and every child's stderr is copied to the parent's once the launch is over.

What the miniature leaves out: several hosts, elastic restarts, and retrying when the
free port found here is taken by someone else before rank 0 binds it.

Used in chapters 11 (Collectives and the network), 13 (Decentralised, federated and
Byzantine-robust learning) and 15 (Secure multi-party inference).
"""

from __future__ import annotations

import functools
import math
import multiprocessing
import os
import pickle
import queue as queue_module
import re
import shutil
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch

__all__ = ["LaunchError", "LaunchTimeout", "launch"]

T = TypeVar("T")

_BACKENDS = ("gloo", "nccl")
_POLL_S = 0.05  # how often the parent looks for dead children while waiting
_GRACE_S = 2.0  # how long a terminated child gets before it is killed
_SETTLE_S = 2.0  # after a first failure, how long the other ranks get to report or exit
_STDERR_TAIL = 4000  # characters of a dead rank's stderr quoted in the error
# what a rank says when it lost a peer (gloo, TCP): the consequence of a failure elsewhere
_LOST_PEER = re.compile(r"connection (reset|closed) by peer|peer closed|broken pipe|connection refused",
                        re.IGNORECASE)


class LaunchError(RuntimeError):
    """A launched rank raised, died, or sent back something that cannot be read.

    Attributes:
        rank: the rank at fault, or ``None`` when the error is not one rank's.
        child_traceback: the child's formatted traceback, ``""`` when there is none.
        child_stderr: the end of that rank's stderr, ``""`` when it wrote nothing or is not known.
    """

    def __init__(self, message: str, *, rank: int | None = None, child_traceback: str = "",
                 child_stderr: str = "") -> None:
        super().__init__(message)
        self.rank = rank
        self.child_traceback = child_traceback
        self.child_stderr = child_stderr


class LaunchTimeout(LaunchError, TimeoutError):
    """The launch did not finish within its ``timeout``.

    Attributes:
        ranks: the ranks that had not finished, in order.
    """

    def __init__(self, message: str, *, ranks: list[int]) -> None:
        super().__init__(message)
        self.ranks = ranks


def launch(
    fn: Callable[..., T],
    world_size: int,
    *,
    args: tuple = (),
    kwargs: dict[str, Any] | None = None,
    backend: str = "gloo",
    timeout: float = 60.0,
    threads_per_rank: int = 1,
) -> list[T]:
    """Run ``fn(rank, world_size, *args, **kwargs)`` in ``world_size`` spawned processes.

    Each child sets ``OMP_NUM_THREADS`` and ``torch.set_num_threads`` to
    ``threads_per_rank``, joins the process group with
    ``init_process_group(backend, init_method="tcp://127.0.0.1:<free port>")`` (its
    timeout, which gloo also applies to each collective, is ``timeout``), calls ``fn``,
    sends the result back (tensors moved to CPU) and destroys the process group.

    Args:
        fn: a function importable by name (module level of an importable module); it
            receives ``rank`` and ``world_size`` first.
        world_size: number of processes, at least 1.
        args: further positional arguments for ``fn``, the same for every rank.
        kwargs: keyword arguments for ``fn``, the same for every rank.
        backend: ``"gloo"`` (CPU) or ``"nccl"`` (one CUDA device per rank).
        timeout: wall-clock seconds allowed for the whole launch, start-up included.
        threads_per_rank: intra-op threads per child; keep ``world_size *
            threads_per_rank`` at most the number of cores.

    Returns:
        The ``world_size`` return values of ``fn``, ordered by rank. They must be
        picklable.

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: ``fn`` is not importable by name, or an argument is out of range,
            or ``backend="nccl"`` without a CUDA device per rank.
        LaunchError: a rank raised (message and ``child_traceback`` carry its
            traceback) or died without reporting (message and ``child_stderr`` quote the
            end of its stderr); when several failed, the first that is not a lost
            connection to a peer.
        LaunchTimeout: the launch outlived ``timeout``; ``ranks`` lists the laggards.

    Used in chapter 11 (Collectives and the network) and the chapters after it.
    """
    payload = _check_arguments(fn, world_size, args, kwargs, backend, timeout, threads_per_rank)
    deadline = time.monotonic() + timeout
    ctx = multiprocessing.get_context("spawn")
    inbox = ctx.Queue()
    port = _free_port()
    procs: list[Any] = []
    stderr_dir = tempfile.mkdtemp(prefix="labkit-launch-")
    stderr_paths = [os.path.join(stderr_dir, f"rank{rank}.stderr") for rank in range(world_size)]
    try:
        with _child_environment(threads_per_rank):
            for rank in range(world_size):
                proc = ctx.Process(
                    target=_run_rank,
                    args=(payload, rank, world_size, backend, port, timeout, threads_per_rank, inbox,
                          stderr_paths[rank]),
                    name=f"labkit-rank-{rank}",
                )
                proc.start()
                procs.append(proc)
        results = _collect(procs, inbox, deadline, timeout, stderr_paths)
        _join_all(procs, deadline, timeout)
        return [results[rank] for rank in range(world_size)]
    finally:
        _reap(procs)
        inbox.close()
        inbox.cancel_join_thread()
        _echo_stderr(stderr_paths)
        shutil.rmtree(stderr_dir, ignore_errors=True)


def _check_arguments(
    fn: Any,
    world_size: Any,
    args: Any,
    kwargs: Any,
    backend: Any,
    timeout: Any,
    threads_per_rank: Any,
) -> bytes:
    """Validate the arguments of :func:`launch`; return ``(fn, args, kwargs)`` pickled."""
    if not callable(fn):
        raise TypeError(f"launch: fn must be callable, got {type(fn).__name__}")
    _check_importable(fn)
    if isinstance(world_size, bool) or not isinstance(world_size, int):
        raise TypeError(f"launch: world_size must be an int, got {type(world_size).__name__}")
    if world_size < 1:
        raise ValueError(f"launch: world_size must be >= 1, got {world_size}")
    if not isinstance(args, (tuple, list)):
        raise TypeError(f"launch: args must be a tuple (or list), got {type(args).__name__}")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise TypeError(f"launch: kwargs must be a dict or None, got {type(kwargs).__name__}")
    if backend not in _BACKENDS:
        raise ValueError(f"launch: backend must be one of {_BACKENDS}, got {backend!r}")
    if not torch.distributed.is_available():
        raise ValueError("launch: this torch build has no torch.distributed")
    if backend == "nccl":
        n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n_gpus < world_size:
            raise ValueError(
                f"launch: backend='nccl' needs one CUDA device per rank; world_size={world_size} "
                f"but {n_gpus} device(s) are available (use backend='gloo')"
            )
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"launch: timeout must be a number of seconds, got {type(timeout).__name__}")
    if not (timeout > 0 and math.isfinite(timeout)):
        raise ValueError(f"launch: timeout must be a finite number of seconds > 0, got {timeout}")
    if isinstance(threads_per_rank, bool) or not isinstance(threads_per_rank, int):
        raise TypeError(f"launch: threads_per_rank must be an int, got {type(threads_per_rank).__name__}")
    if threads_per_rank < 1:
        raise ValueError(f"launch: threads_per_rank must be >= 1, got {threads_per_rank}")
    try:
        return pickle.dumps((fn, tuple(args), dict(kwargs or {})))
    except Exception as exc:  # pickle raises several types (PicklingError, TypeError, AttributeError)
        raise TypeError(f"launch: fn, args and kwargs must be picklable to reach the children: {exc}") from exc


def _check_importable(fn: Any) -> None:
    """Raise ``ValueError`` unless a spawned child can import ``fn`` by its name."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    if not hasattr(fn, "__qualname__"):  # a callable instance: its class must be importable
        fn = type(fn)
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", "")
    if module == "__main__" or module is None or "<locals>" in qualname or "<lambda>" in qualname:
        raise ValueError(
            f"launch: fn must be defined at module level of an importable module, got "
            f"{module}.{qualname}. Spawned children import fn by name, so a function from "
            f"a notebook cell or __main__ script fails there with \"Can't get attribute\", "
            f"and lambdas or nested functions cannot be pickled. Put it in a labkit module "
            f"(e.g. labkit/dist/_demo_workers.py) and import it."
        )


def _free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it when binding port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def _child_environment(threads_per_rank: int) -> Iterator[None]:
    """Set ``OMP_NUM_THREADS`` while children start, so they inherit it, then restore it.

    OpenMP reads the variable when it is loaded, which in a spawned child happens while
    unpickling ``fn`` (it imports torch), before any code of ours runs there.
    """
    previous = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(threads_per_rank)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = previous


def _run_rank(
    payload: bytes,
    rank: int,
    world_size: int,
    backend: str,
    port: int,
    timeout: float,
    threads_per_rank: int,
    outbox: Any,
    stderr_path: str,
) -> None:
    """Child entry point: join the group, run ``fn``, report ``("ok"|"error", rank, data)``.

    ``data`` is the pickled result, or ``(traceback, time.time())`` for an error. The report
    goes out before ``destroy_process_group`` so that the parent hears of an error even if
    tearing down the group blocks on peers stuck in a collective. Everything written to
    stderr from here on (by Python or by C++ code such as gloo) goes to ``stderr_path``.
    """
    _redirect_stderr(stderr_path)
    dist = torch.distributed
    os.environ["OMP_NUM_THREADS"] = str(threads_per_rank)
    torch.set_num_threads(threads_per_rank)
    try:
        fn, args, kwargs = pickle.loads(payload)
        if backend == "nccl":
            torch.cuda.set_device(rank)
        dist.init_process_group(
            backend,
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=world_size,
            timeout=timedelta(seconds=timeout),
        )
        result = fn(rank, world_size, *args, **kwargs)
        # plain pickle, not the queue's: torch's queue pickler would share tensor memory
        # with the parent through this process, which is about to exit
        outbox.put(("ok", rank, pickle.dumps(_to_cpu(result))))
    except BaseException:  # noqa: BLE001 - every failure, SystemExit included, is reported
        outbox.put(("error", rank, (traceback.format_exc(), time.time())))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _to_cpu(value: Any) -> Any:
    """Move tensors found in ``value`` (and in its lists, tuples and dicts) to the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if type(value) is dict:
        return {key: _to_cpu(item) for key, item in value.items()}
    if type(value) in (list, tuple):  # not named tuples or subclasses: rebuilding them may fail
        return type(value)(_to_cpu(item) for item in value)
    return value


def _redirect_stderr(path: str) -> None:
    """Point this process's file descriptor 2 (and so ``sys.stderr``) at a new file ``path``."""
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(fd, 2)
    os.close(fd)


def _stderr_tail(path: str) -> str:
    """The last ``_STDERR_TAIL`` characters of a child's stderr file, from a line start; ``""`` if none."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - _STDERR_TAIL))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    if len(text) >= _STDERR_TAIL and "\n" in text:
        text = text[text.index("\n") + 1:]  # drop the partial first line
    return text.strip()


def _echo_stderr(paths: list[str]) -> None:
    """Copy what the children wrote to stderr to the parent's stderr (file descriptor 2), rank by rank."""
    sys.stderr.flush()
    for path in paths:
        try:
            with open(path, "rb") as f:
                while chunk := f.read(1 << 16):
                    os.write(2, chunk)
        except OSError:  # never started, or nowhere to write: nothing to copy
            pass


@dataclass(frozen=True)
class _Failure:
    """One rank's failure: it raised (``text`` is its traceback) or died (``text`` is the end of its stderr).

    Attributes:
        rank: the rank.
        at: when it happened, in ``time.time()`` seconds: sent by a rank that raised; for one that
            died, when its stderr was last written (else when its death was noticed).
        raised: it raised and reported, rather than dying without a word.
        text: its traceback, or the end of its stderr (possibly ``""``).
        exitcode: the exit code of a rank that died.
    """

    rank: int
    at: float
    raised: bool
    text: str
    exitcode: int | None = None

    @property
    def last_line(self) -> str:
        """The exception line of a traceback, or the last line of a stderr."""
        lines = [line.strip() for line in self.text.splitlines() if line.strip()]
        return lines[-1] if lines else ""

    @property
    def lost_peer(self) -> bool:
        """It only lost its connection to a peer: most likely the consequence of a failure elsewhere."""
        return bool(_LOST_PEER.search(self.last_line))

    def describe(self) -> str:
        """The error message when this failure is the one blamed."""
        if self.raised:
            return f"launch: rank {self.rank} raised an exception:\n{self.text}"
        if self.text:
            return (f"launch: rank {self.rank} died without reporting (exit code {self.exitcode}); "
                    f"the end of its stderr:\n{self.text}")
        return (f"launch: rank {self.rank} died without reporting (exit code {self.exitcode}; "
                "it wrote nothing to stderr)")

    def headline(self) -> str:
        """One line about this failure, for the list of the others (a lost peer is not quoted, so
        that the message holds only the blamed rank's words for one)."""
        what = "raised" if self.raised else f"died (exit code {self.exitcode})"
        if self.lost_peer:
            kind = self.last_line.split(":", 1)[0] if self.raised else "its stderr says so"
            return f"rank {self.rank} {what}: it lost its connection to a peer ({kind})"
        line = self.last_line
        return f"rank {self.rank} {what}: {line[:300] + ('...' if len(line) > 300 else '')}"


def _died(rank: int, exitcode: int | None, stderr_path: str) -> _Failure:
    """The failure of a rank that exited without reporting, dated by its last stderr write."""
    text = _stderr_tail(stderr_path)
    at = time.time()
    if text:
        try:
            at = min(at, os.stat(stderr_path).st_mtime)
        except OSError:
            pass
    return _Failure(rank=rank, at=at, raised=False, text=text, exitcode=exitcode)


def _launch_error(failures: dict[int, _Failure], stderr_paths: list[str] | None = None) -> LaunchError:
    """The error for a set of failures: the root cause (not a lost peer, then the earliest) and the rest."""
    ordered = sorted(failures.values(), key=lambda f: (f.lost_peer, f.at, f.rank))
    cause, others = ordered[0], ordered[1:]
    message = cause.describe()
    if others:
        listed = "\n".join(f"  {f.headline()}" for f in others)
        message += f"\n\nOther ranks failed too, most likely as a consequence:\n{listed}"
    stderr = cause.text if not cause.raised else (_stderr_tail(stderr_paths[cause.rank]) if stderr_paths else "")
    return LaunchError(message, rank=cause.rank, child_traceback=cause.text if cause.raised else "",
                       child_stderr=stderr)


def _collect(procs: list[Any], inbox: Any, deadline: float, timeout: float, stderr_paths: list[str]) -> dict[int, Any]:
    """Gather every rank's result; raise soon after a rank fails, or when time runs out.

    After the first failure the other ranks get ``_SETTLE_S`` seconds (within the deadline) to
    report or exit, so that the error can blame the root cause rather than whichever failure
    happened to arrive first.
    """
    results: dict[int, Any] = {}
    pending = set(range(len(procs)))  # ranks with no result yet
    failures: dict[int, _Failure] = {}
    settle_until = math.inf
    while pending - failures.keys():
        now = time.monotonic()
        if now >= settle_until:
            break
        try:
            message = inbox.get(timeout=max(0.0, min(_POLL_S, deadline - now, settle_until - now)))
        except queue_module.Empty:
            message = None
        if message is not None:
            _accept(message, results, pending, failures)
        elif time.monotonic() >= deadline:
            if failures:
                break
            ranks = sorted(pending)
            raise LaunchTimeout(
                f"launch: rank(s) {ranks} of {len(procs)} had not finished after timeout={timeout} s",
                ranks=ranks,
            )
        else:
            dead = [rank for rank in sorted(pending - failures.keys()) if procs[rank].exitcode is not None]
            if dead:
                # a child that exited has flushed its report, if any, into the pipe: drain it
                for message in _drain(inbox):
                    _accept(message, results, pending, failures)
                for rank in dead:
                    if rank in pending and rank not in failures:
                        failures[rank] = _died(rank, procs[rank].exitcode, stderr_paths[rank])
        if failures and settle_until == math.inf:
            settle_until = time.monotonic() + _SETTLE_S
    if failures:
        raise _launch_error(failures, stderr_paths)
    return results


def _drain(inbox: Any) -> Iterator[Any]:
    """Yield every message already waiting in ``inbox`` without blocking."""
    while True:
        try:
            yield inbox.get(block=False)
        except queue_module.Empty:
            return


def _accept(message: tuple[str, int, Any], results: dict[int, Any], pending: set[int],
            failures: dict[int, _Failure]) -> None:
    """Record one child's report: a result, or a failure in ``failures``."""
    status, rank, data = message
    if status == "error":
        text, at = data
        failures.setdefault(rank, _Failure(rank=rank, at=at, raised=True, text=text))
        return
    try:
        results[rank] = pickle.loads(data)
    except Exception as exc:  # whatever unpickling a foreign object raises
        raise LaunchError(f"launch: the result of rank {rank} could not be unpickled: {exc!r}", rank=rank) from exc
    pending.discard(rank)


def _join_all(procs: list[Any], deadline: float, timeout: float) -> None:
    """Join every child (all have reported) by ``deadline``; check each exited cleanly."""
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
    late = [rank for rank, proc in enumerate(procs) if proc.exitcode is None]
    if late:
        raise LaunchTimeout(
            f"launch: rank(s) {late} returned but had not exited after timeout={timeout} s",
            ranks=late,
        )
    for rank, proc in enumerate(procs):
        if proc.exitcode != 0:
            raise LaunchError(f"launch: rank {rank} returned but exited with code {proc.exitcode}", rank=rank)


def _reap(procs: list[Any]) -> None:
    """Terminate, then kill, every child still alive, and join them all (no zombies)."""
    for proc in procs:
        if proc.exitcode is None:
            proc.terminate()
    give_up = time.monotonic() + _GRACE_S
    for proc in procs:
        proc.join(max(0.0, give_up - time.monotonic()))
    for proc in procs:
        if proc.exitcode is None:
            proc.kill()
            proc.join()
