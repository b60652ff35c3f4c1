"""Running a secure program: three threads in one process, or three real processes.

Paper: PUMA: Secure Inference of LLaMA-7B in Five Minutes (Dong et al., 2023), whose parties
are separate machines exchanging messages. The book runs the same program two ways:

- ``runtime="simulator"``: the parties P0, P1 and the dealer P2 are threads of this process
  talking through in-memory queues. Fast to start, works with programs defined anywhere
  (a notebook cell, a lambda); the teaching and testing workhorse.
- ``runtime="processes"``: three spawned processes joined by ``torch.distributed`` (gloo on
  127.0.0.1) through :func:`labkit.dist.launch`, each reading only its own private input
  from its own file. Real message passing, about a second or two of start-up per run; the
  program must be an importable module-level function (the children import it by name).

Both give the same :class:`MPCRun`: each party's return value, the merged message log and
times. A party that raises, dies or waits past ``timeout`` ends the run with an error, never
a hang.

Randomness is private by default: each party seeds its own generator from the OS inside its
thread or process (:class:`~labkit.mpc.prg.PRG`); nothing random is passed in, so two runs
of the same program send different messages and reveal the same result. To reproduce a run
bit for bit (the simulator against the processes), pass ``insecure_seed=``: every party's
generator then derives from that public integer and its rank, any party can replay any
other's masks, and the result and its log say ``secure=False``.

A program is ``program(ctx, *args, **kwargs)``: ``ctx`` is the party's
:class:`~labkit.mpc.engine.Party`; ``args``/``kwargs`` are public (the same everywhere);
``inputs={0: ..., 1: ...}`` are private, and party ``r`` sees its own as ``ctx.private``.

What the miniature leaves out: several machines, a network between them, and restarting a
failed party.

Section: chapter 14, "Sharing secrets".
"""

from __future__ import annotations

import math
import queue
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..validation import check_int
from ._parties import party_main
from .comm import DEALER, MessageLog, MPCError, MPCTimeout, ThreadTransport
from .cost import Cost
from .engine import Party
from .ring import DEFAULT_FRAC_BITS, check_frac_bits

__all__ = ["RUNTIMES", "MPCRun", "run"]

RUNTIMES = ("simulator", "processes")
N_PARTIES = 3  # P0, P1 compute; P2 deals


@dataclass(frozen=True)
class MPCRun:
    """The result of a secure run.

    Attributes:
        outputs: the program's return value at P0, P1 and the dealer (for the dealer,
            ``reveal`` gives ``None`` and a share is a zero placeholder).
        log: every message of the run (:class:`~labkit.mpc.comm.MessageLog`).
        runtime: ``"simulator"`` or ``"processes"``.
        wall_s: seconds for the whole run, start-up of threads/processes included.
        program_s: seconds each party spent in the program.
        session: the run's identifier.
        secure: ``False`` when the run used ``insecure_seed`` (reproducible, not secret).
        truncation_risk: with ``audit_truncation`` (simulator), the expected number of
            truncations of the run that failed: the sum over every truncated value ``x`` of
            ``|x| / 2^64`` (:func:`labkit.mpc.beaver.truncate_share`); ``None`` otherwise.
    """

    outputs: tuple[Any, Any, Any]
    log: MessageLog
    runtime: str
    wall_s: float
    program_s: tuple[float, float, float]
    session: str
    secure: bool
    truncation_risk: float | None = None

    @property
    def output(self) -> Any:
        """P0's return value (with ``reveal(..., to=None)`` P1 returns the same)."""
        return self.outputs[0]

    def cost(self, *, scope: str | None = None) -> Cost:
        """Measured rounds and bytes, of the whole run or of one scope (e.g. ``"mul"``)."""
        return self.log.cost(scope=scope)


def run(program: Callable[..., Any], *, runtime: str = "simulator", args: tuple = (),
        kwargs: dict[str, Any] | None = None, inputs: dict[int, Any] | None = None,
        insecure_seed: int | None = None, frac_bits: int = DEFAULT_FRAC_BITS, keep_payloads: bool = False,
        audit_truncation: bool = False, timeout: float = 60.0) -> MPCRun:
    """Run ``program(ctx, *args, **kwargs)`` at P0, P1 and the dealer P2.

    Args:
        program: the secure program (module-level function for ``runtime="processes"``).
        runtime: ``"simulator"`` (threads) or ``"processes"`` (spawned, gloo).
        args, kwargs: public arguments, passed to every party.
        inputs: private inputs by party, ``{0: ..., 1: ...}``; party r reads ``ctx.private``.
        insecure_seed: ``None`` (default): every party draws private randomness from the OS.
            An int: every party's generator derives from it (bit-identical reruns, no
            secrecy: the result is marked ``secure=False``).
        frac_bits: fixed-point fractional bits ``f`` (1..30).
        keep_payloads: keep a copy of every payload in the log (for leak checks; memory).
        audit_truncation: simulator only: compute :attr:`MPCRun.truncation_risk` (an observer
            that sees both parties' shares, for analysis; memory).
        timeout: seconds allowed (processes: start-up included).

    Returns:
        An :class:`MPCRun`.

    Raises:
        ValueError, TypeError: bad arguments; errors a party raises in the simulator come
            back as raised (with a note naming the party).
        MPCError: a party failed in the processes runtime (``rank`` names it when known).
        MPCTimeout: the run outlived ``timeout``.
    """
    if not callable(program):
        raise TypeError(f"program must be callable, got {type(program).__name__}")
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    if not isinstance(args, (tuple, list)):
        raise TypeError(f"args must be a tuple, got {type(args).__name__}")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise TypeError(f"kwargs must be a dict or None, got {type(kwargs).__name__}")
    inputs = {} if inputs is None else inputs
    if not isinstance(inputs, dict) or any(k not in (0, 1) or isinstance(k, bool) for k in inputs):
        raise ValueError("inputs must be a dict keyed by the computing parties 0 and 1 (the dealer has no inputs)")
    if insecure_seed is not None:
        check_int("insecure_seed", insecure_seed, 0)
    check_frac_bits(frac_bits)
    if audit_truncation and runtime != "simulator":
        raise ValueError("audit_truncation needs runtime='simulator' (both parties' shares in one process)")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not (
            timeout > 0 and math.isfinite(timeout)):
        raise ValueError(f"timeout must be a finite number of seconds > 0, got {timeout!r}")
    common = dict(args=tuple(args), kwargs=dict(kwargs or {}), inputs=inputs, insecure_seed=insecure_seed,
                  frac_bits=frac_bits,
                  keep_payloads=bool(keep_payloads), timeout=float(timeout), session=uuid.uuid4().hex[:8])
    if runtime == "simulator":
        return _simulate(program, audit_truncation=bool(audit_truncation), **common)
    return _processes(program, **common)


class _Aborted(MPCError):
    """A party stopped because another one failed (not the cause of the failure)."""


def _simulate(program: Callable[..., Any], *, args: tuple, kwargs: dict, inputs: dict, insecure_seed: int | None,
              frac_bits: int, keep_payloads: bool, timeout: float, session: str,
              audit_truncation: bool = False) -> MPCRun:
    queues = {(i, j): queue.Queue() for i in range(N_PARTIES) for j in range(N_PARTIES) if i != j}
    abort = threading.Event()
    outputs: list[Any] = [None] * N_PARTIES
    times = [0.0] * N_PARTIES
    parties: list[Party | None] = [None] * N_PARTIES
    errors: list[tuple[int, BaseException]] = []
    lock = threading.Lock()

    def body(rank: int) -> None:
        start = time.perf_counter()
        try:
            transport = ThreadTransport(rank, queues, abort, timeout)
            ctx = Party(rank, transport, frac_bits=frac_bits, session=session, insecure_seed=insecure_seed,
                        private=inputs.get(rank), keep_payloads=keep_payloads,
                        audit_truncation=audit_truncation)  # draws its own seed here
            parties[rank] = ctx
            outputs[rank] = program(ctx, *args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - reported to the caller below
            if isinstance(exc, MPCError) and abort.is_set() and not isinstance(exc, MPCTimeout):
                exc = _Aborted(str(exc))
            with lock:
                errors.append((rank, exc))
            abort.set()
        times[rank] = time.perf_counter() - start

    start = time.perf_counter()
    threads = [threading.Thread(target=body, args=(r,), name=f"mpc-party-{r}", daemon=True) for r in range(N_PARTIES)]
    for t in threads:
        t.start()
    deadline = start + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.perf_counter()))
    wall = time.perf_counter() - start
    late = [r for r, t in enumerate(threads) if t.is_alive()]
    if late:
        abort.set()
        raise MPCTimeout(f"simulator: party/parties {late} still running after timeout={timeout} s")
    causes = [(r, e) for r, e in errors if not isinstance(e, _Aborted)] or errors
    if causes:
        rank, exc = causes[0]
        if isinstance(exc, Exception):
            exc.add_note(f"(raised at party P{rank} of the simulated run {session})")
            raise exc
        raise MPCError(f"party {rank} failed: {exc!r}", rank=rank) from exc
    secure = insecure_seed is None
    log = MessageLog.merge((p.messages for p in parties if p is not None), secure=secure)
    risk = None
    if audit_truncation:  # pair the two parties' pre-truncation shares, in program order
        risk = sum(float(((z0 + z1).to(torch.float64).abs() / 2.0**64).sum())
                   for z0, z1 in zip(parties[0].audit, parties[1].audit))
    return MPCRun(tuple(outputs), log, "simulator", wall, tuple(times), session, secure, risk)


def _check_importable(program: Callable[..., Any]) -> None:
    module = getattr(program, "__module__", None)
    qualname = getattr(program, "__qualname__", "")
    if module in (None, "__main__") or "<locals>" in qualname or "<lambda>" in qualname:
        raise ValueError(
            f"runtime='processes' needs a program defined at module level of an importable module, got "
            f"{module}.{qualname}: the spawned parties import it by name. Define it in a labkit module "
            f"(e.g. labkit.mpc.programs) or use runtime='simulator', which runs any function.")


def _processes(program: Callable[..., Any], *, args: tuple, kwargs: dict, inputs: dict, insecure_seed: int | None,
               frac_bits: int, keep_payloads: bool, timeout: float, session: str) -> MPCRun:
    from ..dist import LaunchError, LaunchTimeout, launch

    _check_importable(program)
    with tempfile.TemporaryDirectory(prefix="labkit-mpc-") as folder:
        for rank, value in inputs.items():
            torch.save(value, Path(folder) / f"party{rank}.pt")  # each party reads only its own file
        start = time.perf_counter()
        try:
            reports = launch(party_main, N_PARTIES, args=(program, args, kwargs, folder, insecure_seed, frac_bits,
                                                         keep_payloads, session), timeout=timeout)
        except LaunchTimeout as exc:
            raise MPCTimeout(f"processes: parties {exc.ranks} had not finished after timeout={timeout} s") from exc
        except LaunchError as exc:
            who = "a party" if exc.rank is None else ("the dealer" if exc.rank == DEALER else f"party {exc.rank}")
            hint = ""
            if "Connection closed by peer" in str(exc):  # this rank only saw another one vanish
                hint = " (its peer's connection closed: another party probably died first)"
            raise MPCError(f"processes: {who} failed{hint}: {exc}", rank=exc.rank) from exc
        wall = time.perf_counter() - start
    secure = insecure_seed is None
    log = MessageLog.merge((r["messages"] for r in reports), secure=secure)
    return MPCRun(tuple(r["output"] for r in reports), log, "processes", wall,
                  tuple(r["program_s"] for r in reports), session, secure)
