"""A one-process simulator of n ranks running the collectives of :mod:`labkit.comm.collectives`.

Spawning 64 or 1024 processes is beyond a laptop, but the schedules are plain arithmetic: which
chunk goes where at which step. :func:`simulate` runs the very same schedules (it imports them
from :mod:`labkit.comm.collectives`) on a list of n tensors, one per simulated rank, with the
semantics of one synchronous step: every rank's outgoing message is taken before any incoming
one is applied. It returns the results (which must equal the sum, the gather or the transpose of
chunks), the bytes each rank sent and received, and the bytes of the largest message of every
step, from which :meth:`SimResult.time` predicts the run time under the alpha-beta model of
:mod:`labkit.comm.costmodel` (each step costs ``alpha + beta * largest message``, links being full
duplex and ranks sending one message per step). When n divides N, that sum equals
:func:`labkit.comm.costmodel.collective_time` exactly. :func:`bytes_per_rank` gives the same byte
counts in closed form, in O(n), for n = 1024 and beyond.

Follows the cost analysis of Thakur, Rabenseifner and Gropp, "Optimization of Collective
Communication Operations in MPICH" (2005). What it leaves out: contention (two messages sharing
a link), the overlap of a step's computation with the next step's transfer, and stragglers.

Shapes: n ranks (``world_size``), N elements per rank, S = N * itemsize bytes.
Section: chapter 11, "Collectives from send/recv".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .collectives import SUPPORTED_DTYPES, ag_send_chunk, chunk_sizes, rs_send_chunk, tree_peer, tree_rounds
from .costmodel import AlphaBeta, collective_time

__all__ = ["KINDS", "SimResult", "bytes_per_rank", "predict_times", "simulate"]

#: The collectives simulated, named as :func:`labkit.comm.costmodel.collective_time` names them.
KINDS: tuple[str, ...] = ("reduce_scatter", "all_gather", "ring_all_reduce", "tree_all_reduce", "all_to_all")


@dataclass(frozen=True)
class SimResult:
    """What a simulated collective produced and moved.

    Attributes:
        outputs: one tensor per rank, as the real function of :mod:`labkit.comm.collectives` returns.
        bytes_sent, bytes_received: payload bytes per rank.
        step_bytes: the largest message of each synchronous step (bytes).
    """

    outputs: list[torch.Tensor]
    bytes_sent: list[int]
    bytes_received: list[int]
    step_bytes: list[int]

    @property
    def steps(self) -> int:
        """Number of synchronous steps (rounds)."""
        return len(self.step_bytes)

    def time(self, link: AlphaBeta) -> float:
        """Predicted seconds: ``sum over steps of alpha + beta * largest message``."""
        if not isinstance(link, AlphaBeta):
            raise TypeError(f"link must be an AlphaBeta, got {type(link).__name__}")
        return sum(link.message(b) for b in self.step_bytes)


class _Ledger:
    """Byte counts of one simulated run."""

    def __init__(self, n: int) -> None:
        self.sent, self.received, self.step_bytes = [0] * n, [0] * n, []

    def step(self, messages: list[tuple[int, int, int]]) -> None:
        """Record one step's messages ``(src, dst, nbytes)`` (empty ones are not sent)."""
        messages = [m for m in messages if m[2] > 0]
        for src, dst, nbytes in messages:
            self.sent[src] += nbytes
            self.received[dst] += nbytes
        if messages:
            self.step_bytes.append(max(m[2] for m in messages))


def _check_tensors(tensors: Sequence[torch.Tensor]) -> tuple[int, int]:
    if not isinstance(tensors, (list, tuple)) or not all(isinstance(t, torch.Tensor) for t in tensors):
        raise TypeError("tensors must be a list of torch.Tensor, one per simulated rank")
    n = len(tensors)
    if n < 2:
        raise ValueError(f"world_size (len(tensors)) must be >= 2, got {n}")
    shape, dtype = tensors[0].shape, tensors[0].dtype
    bad = [r for r, t in enumerate(tensors) if t.shape != shape or t.dtype != dtype]
    if bad:
        raise ValueError(f"tensors must share shape and dtype: rank 0 has {tuple(shape)} {dtype}, rank {bad[0]} "
                         f"has {tuple(tensors[bad[0]].shape)} {tensors[bad[0]].dtype}")
    if dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"tensors' dtype must be one of {[str(d) for d in SUPPORTED_DTYPES]}, got {dtype}")
    return n, tensors[0].element_size()


def _ring(flats: list[torch.Tensor], n: int, it: int, ledger: _Ledger, *, reduce: bool, gather: bool) -> None:
    chunks = [list(f.tensor_split(n)) for f in flats]  # chunks[r][i]: rank r's view of chunk i
    if reduce:
        for step in range(n - 1):
            outgoing = [chunks[r][rs_send_chunk(r, step, n)].clone() for r in range(n)]  # snapshot
            ledger.step([(r, (r + 1) % n, outgoing[r].numel() * it) for r in range(n)])
            for r in range(n):  # rank r + 1 adds what rank r sent into the same chunk index
                chunks[(r + 1) % n][rs_send_chunk(r, step, n)].add_(outgoing[r])
    if gather:
        for step in range(n - 1):
            outgoing = [chunks[r][ag_send_chunk(r, step, n)].clone() for r in range(n)]
            ledger.step([(r, (r + 1) % n, outgoing[r].numel() * it) for r in range(n)])
            for r in range(n):
                chunks[(r + 1) % n][ag_send_chunk(r, step, n)].copy_(outgoing[r])


def simulate(kind: str, tensors: Sequence[torch.Tensor]) -> SimResult:
    """Run collective ``kind`` on n simulated ranks, one tensor each, step by step.

    Args:
        kind: one of :data:`KINDS`.
        tensors: n >= 2 tensors of equal shape and dtype (rank r's input is ``tensors[r]``; they are
            not modified).

    Returns:
        A :class:`SimResult`; ``outputs[r]`` matches what rank r gets from the real function:
        chunk r of the sum (1-D), the stacked gather ``(n, *shape)``, the sum (input shape), or
        the received all-to-all chunks (1-D).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    n, it = _check_tensors(tensors)
    shape = tensors[0].shape
    ledger = _Ledger(n)
    flats = [t.detach().reshape(-1).clone() for t in tensors]
    if kind == "reduce_scatter":
        _ring(flats, n, it, ledger, reduce=True, gather=False)
        outputs = [flats[r].tensor_split(n)[r].clone() for r in range(n)]
    elif kind == "ring_all_reduce":
        _ring(flats, n, it, ledger, reduce=True, gather=True)
        outputs = [f.view(shape) for f in flats]
    elif kind == "all_gather":
        stacked = [torch.zeros((n, flats[0].numel()), dtype=flats[0].dtype) for _ in range(n)]
        for r in range(n):
            stacked[r][r] = flats[r]
        _ring([s.reshape(-1) for s in stacked], n, it, ledger, reduce=False, gather=True)
        outputs = [s.view(n, *shape) for s in stacked]
    elif kind == "tree_all_reduce":
        rounds, nbytes = tree_rounds(n), flats[0].numel() * it
        for k in range(rounds):  # reduce, leaves first
            pairs = [(r, p[1]) for r in range(n) if (p := tree_peer(r, k, n)) and p[0] == "send"]
            ledger.step([(src, dst, nbytes) for src, dst in pairs])
            for src, dst in pairs:
                flats[dst].add_(flats[src])
        for k in reversed(range(rounds)):  # broadcast, root first
            pairs = [(r, p[1]) for r in range(n) if (p := tree_peer(r, k, n)) and p[0] == "recv"]
            ledger.step([(src, dst, nbytes) for src, dst in pairs])
            for src, dst in pairs:
                flats[dst].copy_(flats[src])
        outputs = [f.view(shape) for f in flats]
    else:  # all_to_all, pairwise: step s, rank r sends chunk r + s to rank r + s
        chunks = [f.tensor_split(n) for f in flats]
        for step in range(1, n):
            ledger.step([(r, (r + step) % n, chunks[r][(r + step) % n].numel() * it) for r in range(n)])
        outputs = [torch.cat([chunks[src][r] for src in range(n)]) for r in range(n)]
    return SimResult(outputs=outputs, bytes_sent=ledger.sent, bytes_received=ledger.received,
                     step_bytes=ledger.step_bytes)


def bytes_per_rank(kind: str, *, numel: int, world_size: int, itemsize: int = 4) -> tuple[list[int], list[int]]:
    """Closed-form ``(sent, received)`` payload bytes per rank, equal to :func:`simulate`'s counts.

    With chunk sizes ``c = chunk_sizes(N, n)`` and indices mod n, rank r sends
    ``(N - c[r])`` elements in a reduce-scatter or all-to-all, ``(n - 1) N`` in an all-gather of
    N-element pieces, ``2N - c[r] - c[r+1]`` in a ring all-reduce (``2 (n-1)/n N`` when n divides N),
    and ``N (1[r > 0] + children(r))`` in a binomial-tree all-reduce.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 2:
        raise ValueError(f"world_size must be an int >= 2, got {world_size!r}")
    if isinstance(itemsize, bool) or not isinstance(itemsize, int) or itemsize < 1:
        raise ValueError(f"itemsize must be an int >= 1, got {itemsize!r}")
    n, big = world_size, numel
    c = chunk_sizes(numel, n)
    if kind == "reduce_scatter":
        sent, recv = [big - c[r] for r in range(n)], [big - c[r - 1] for r in range(n)]
    elif kind == "ring_all_reduce":
        sent = [2 * big - c[r] - c[(r + 1) % n] for r in range(n)]
        recv = [2 * big - c[r - 1] - c[r] for r in range(n)]
    elif kind == "all_gather":
        sent = recv = [(n - 1) * big] * n
    elif kind == "all_to_all":
        sent, recv = [big - c[r] for r in range(n)], [(n - 1) * c[r] for r in range(n)]
    else:
        kids = [sum(1 for k in range(tree_rounds(n)) if (p := tree_peer(r, k, n)) and p[0] == "recv")
                for r in range(n)]
        sent = recv = [big * ((r > 0) + kids[r]) if big else 0 for r in range(n)]
    return [s * itemsize for s in sent], [s * itemsize for s in recv]


def predict_times(kinds: Sequence[str], *, sizes_bytes: Sequence[float], world_size: int,
                  link: AlphaBeta) -> dict[str, list[float]]:
    """Alpha-beta predicted seconds of each collective at each size (a thin loop over
    :func:`labkit.comm.costmodel.collective_time`, for n up to thousands of ranks).
    """
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise ValueError(f"kinds must be among {KINDS}, got {bad}")
    return {k: [collective_time(k, float(s), world_size, link) for s in sizes_bytes] for k in kinds}
