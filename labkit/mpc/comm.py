"""How parties talk: the message log and two transports (threads in one process, real processes).

Paper: PUMA: Secure Inference of LLaMA-7B in Five Minutes (Dong et al., 2023). The cost of
secure inference is communication, so the engine records every message: who sent it to
whom, why (an input share, an opening, correlated randomness from the dealer), how many
bytes, and in which round. :class:`MessageLog` turns the record into the counters of
:class:`labkit.mpc.cost.Cost` and, in debug mode, keeps the payloads so that a test can
check that no message carries a secret in the clear.

Two transports move flat int64 tensors with the same interface (``send`` never blocks,
``recv`` blocks until the message from that peer arrives, in order):

- :class:`ThreadTransport`: one FIFO queue per ordered pair of parties, for the simulator
  that runs the three parties as threads of one process; an abort flag wakes every waiting
  party when one of them fails, so nothing hangs;
- :class:`DistTransport`: ``torch.distributed`` ``isend``/``irecv`` over gloo between the
  processes started by :func:`labkit.dist.launch`; a dead peer surfaces as an error (gloo
  closes the connection, or the group's timeout fires) that the launcher reports.

What the miniature leaves out: a network (all traffic is on one machine, so time measures
software overhead, not latency), authentication and encryption of the channels (assumed
private), and batching of independent messages into one round (each protocol call is its
own round; PUMA/SPU schedules many in parallel).

Shapes: payloads are flat (n,) int64 tensors; the receiver knows ``n`` from the program.

Section: chapter 14, "Sharing secrets".
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from .cost import BYTES_PER_ELEMENT, Cost

__all__ = [
    "DEALER",
    "PHASES",
    "DistTransport",
    "MPCError",
    "MPCTimeout",
    "Message",
    "MessageLog",
    "ThreadTransport",
]

DEALER = 2  # rank of the dealer; ranks 0 and 1 compute
PHASES = ("online", "dealer")


class MPCError(RuntimeError):
    """A party of a secure computation failed (raised, died, or was aborted).

    Attributes:
        rank: the party at fault when known, else ``None``.
    """

    def __init__(self, message: str, *, rank: int | None = None) -> None:
        super().__init__(message)
        self.rank = rank


class MPCTimeout(MPCError, TimeoutError):
    """A party waited longer than the run's timeout for a message."""


@dataclass(frozen=True)
class Message:
    """One message of a run.

    Attributes:
        sender, receiver: ranks (0, 1 compute; 2 is the dealer).
        kind: ``"input"`` (a share of an input), ``"open"`` (masked values opened inside a
            protocol), ``"reveal"`` (an output opened on purpose) or ``"dealer"``.
        nbytes: payload size in bytes.
        round: online round index at the sender (for dealer messages: the dealer's own
            message counter, which is not a round of the online phase).
        phase: ``"online"`` (between P0 and P1) or ``"dealer"``.
        scope: the protocol path that sent it, e.g. ``"relu/msb/and"``.
        payload: a copy of the flat int64 payload when the run kept payloads, else ``None``.
    """

    sender: int
    receiver: int
    kind: str
    nbytes: int
    round: int
    phase: str
    scope: str
    payload: torch.Tensor | None = None


@dataclass(frozen=True)
class MessageLog:
    """Every message of a run, ordered by phase, round and sender.

    Attributes:
        messages: the :class:`Message` records.
        secure: ``False`` when the run drew its randomness from a public ``insecure_seed``
            (then every party could reproduce every mask in this log).
    """

    messages: tuple[Message, ...] = ()
    secure: bool = True

    @staticmethod
    def merge(parts: Iterable[Iterable[Message]], *, secure: bool = True) -> MessageLog:
        """One log from the parties' own logs (each party records what it sends)."""
        msgs = [m for part in parts for m in part]
        msgs.sort(key=lambda m: (m.phase != "online", m.round, m.sender, m.receiver))
        return MessageLog(tuple(msgs), bool(secure))

    def select(self, *, scope: str | None = None, kind: str | None = None, phase: str | None = None) -> MessageLog:
        """The messages whose scope starts with ``scope`` (a path prefix), of that kind/phase."""
        if phase is not None and phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")

        def keep(m: Message) -> bool:
            if scope is not None and not (m.scope == scope or m.scope.startswith(scope + "/")):
                return False
            return (kind is None or m.kind == kind) and (phase is None or m.phase == phase)

        return MessageLog(tuple(m for m in self.messages if keep(m)), self.secure)

    def cost(self, *, scope: str | None = None) -> Cost:
        """Measured rounds and bytes (of the messages in ``scope``, or all of them).

        Rounds are the distinct online round indices among the selected messages.
        """
        sel = self.select(scope=scope).messages
        online = [0, 0]
        dealer = [0, 0]
        rounds = set()
        for m in sel:
            if m.phase == "online":
                online[m.sender] += m.nbytes
                rounds.add(m.round)
            else:
                dealer[m.receiver] += m.nbytes
        return Cost(len(rounds), (online[0], online[1]), (dealer[0], dealer[1]))

    def rows(self) -> list[dict]:
        """The log as a list of plain dicts (for a table), payloads left out."""
        return [dict(sender=f"P{m.sender}", receiver=f"P{m.receiver}", kind=m.kind, scope=m.scope,
                     phase=m.phase, round=m.round, bytes=m.nbytes) for m in self.messages]

    def containing(self, values: torch.Tensor, *,
                   kinds: tuple[str, ...] = ("input", "open", "dealer")) -> list[Message]:
        """Messages whose payload holds any of ``values`` (ring elements) verbatim.

        Needs a run with ``keep_payloads=True``. Use secrets whose encodings are not tiny
        integers (a bit opened inside a comparison is 0 or 1 by design, an input's shape
        header holds its sizes). Reveals are left out by default: revealing is the one
        message meant to carry a result.

        Raises:
            ValueError: the log holds no payloads.
        """
        if not isinstance(values, torch.Tensor) or values.dtype != torch.int64:
            raise TypeError("values must be an int64 tensor of ring elements (use labkit.mpc.encode)")
        if self.messages and all(m.payload is None for m in self.messages):
            raise ValueError("this log kept no payloads: run with keep_payloads=True")
        flat = torch.unique(values.reshape(-1))  # sorted once, then a binary search per payload
        if flat.numel() == 0:
            return []

        def hit(payload: torch.Tensor) -> bool:
            pos = torch.searchsorted(flat, payload.reshape(-1)).clamp_max(flat.numel() - 1)
            return bool((flat[pos] == payload.reshape(-1)).any())

        return [m for m in self.messages if m.kind in kinds and m.payload is not None and hit(m.payload)]

    def __len__(self) -> int:
        return len(self.messages)


class ThreadTransport:
    """In-memory channels between parties running as threads of one process.

    Args:
        rank: this party.
        queues: ``queues[(src, dst)]`` FIFO queues, shared by all parties of the run.
        abort: set by the simulator when any party failed; waiting parties then give up.
        timeout: seconds a ``recv`` may wait.
    """

    def __init__(self, rank: int, queues: dict[tuple[int, int], queue.Queue], abort: threading.Event,
                 timeout: float) -> None:
        self.rank, self.queues, self.abort, self.timeout = rank, queues, abort, timeout

    def send(self, dst: int, payload: torch.Tensor) -> None:
        self.queues[(self.rank, dst)].put(payload.clone())  # the receiver must not share our memory

    def recv(self, src: int, numel: int) -> torch.Tensor:
        deadline = time.monotonic() + self.timeout
        q = self.queues[(src, self.rank)]
        while True:
            if self.abort.is_set():
                raise MPCError(f"party {self.rank}: run aborted while waiting for party {src}")
            try:
                payload = q.get(timeout=0.05)
                break
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise MPCTimeout(f"party {self.rank}: no message from party {src} within "
                                     f"{self.timeout} s", rank=src) from None
        if payload.numel() != numel:
            raise MPCError(f"party {self.rank} expected {numel} elements from party {src}, got {payload.numel()} "
                           "(the parties are not running the same program)", rank=src)
        return payload

    def flush(self) -> None:
        """Nothing to wait for: queue puts complete at once."""


class DistTransport:
    """``torch.distributed`` point-to-point messages (gloo) between real processes.

    Sends are asynchronous (``isend``), so two parties can send to each other and then
    receive without deadlocking; :meth:`flush` waits for the outstanding sends.
    """

    def __init__(self, rank: int) -> None:
        import torch.distributed as dist

        if not dist.is_initialized():
            raise MPCError("DistTransport needs an initialised process group (use labkit.dist.launch)")
        self.rank, self._dist, self._pending = rank, dist, []

    def send(self, dst: int, payload: torch.Tensor) -> None:
        buf = payload.contiguous().clone()
        self._pending.append((buf, self._dist.isend(buf, dst)))  # keep buf alive until sent
        if len(self._pending) > 64:  # reap finished sends now and then
            self._pending = [(b, w) for b, w in self._pending if not w.is_completed()]

    def recv(self, src: int, numel: int) -> torch.Tensor:
        buf = torch.empty(numel, dtype=torch.int64)
        self._dist.recv(buf, src)
        return buf

    def flush(self) -> None:
        for _, work in self._pending:
            work.wait()
        self._pending = []


def payload_bytes(payload: torch.Tensor) -> int:
    """Bytes of a flat int64 payload."""
    return payload.numel() * BYTES_PER_ELEMENT
