"""Overlapping a producer GEMM with its collective, chunk by chunk: a software miniature of T3.

Paper: *T3: Transparent Tracking & Triggering for Fine-grained Overlap of Compute & Collectives*
(Pati et al., ASPLOS 2024, arXiv:2401.16677).

In tensor parallelism a row-parallel linear layer leaves every rank with a *partial* output
``Y_r = X_r W_r``; the layer's output is the sum over ranks, so an all-reduce (or a
reduce-scatter) must finish before the next layer can start. Done serially, the whole
collective sits on the critical path. The idea T3 builds on: the output is produced in pieces,
so piece ``i`` can be on the wire while piece ``i + 1`` is computed, and only the last piece's
communication stays exposed. Here we split the output rows into C chunks, compute chunk ``i``
and start its all-reduce at once, asynchronously (:class:`CommEngine`; gloo's own thread does the
work, our analogue of a communication stream), while the main thread computes chunk ``i + 1``; at
the end we wait for every chunk.

What the miniature leaves out is what T3 is about: hardware. T3 tracks the producer's stores
to a configured address range and triggers the DMA of a chunk the moment it is complete, with no
software in the loop, and it does the reduction's additions near memory, so communication takes
neither compute units nor much memory bandwidth from the GEMM. Our software version pays a
separate GEMM call and collective call per chunk and, on a CPU, the gloo transfer (copies through
the loopback) and its reduction run on the same cores as the GEMM: exactly the resource
contention that the paper says limits software overlap. To separate the two effects, a collective
can run on a *modelled link* (``link``, an :class:`~labkit.comm.costmodel.AlphaBeta`): the data
still moves through gloo, and the step is not over until the alpha-beta time of a ring all-reduce
on that link has passed, with messages leaving one after the other, as if a slower network driven
by its own engine (a NIC, a DMA engine) carried them; waiting for that wire uses no CPU. We use
all-reduce, which gloo provides; a reduce-scatter would send half the bytes but overlaps the same
way.

Shapes: M output rows (tokens), K the local slice of the reduced dimension, N output features,
C chunks (C divides M), n ranks (``world_size``).

Section: chapter 11, "T3: overlapping a producer with its collective".
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
import torch.distributed as dist

from labkit.validation import check_int

from .costmodel import AlphaBeta, collective_time

__all__ = [
    "CommEngine", "chunk_rows", "link_all_reduce", "make_shards", "overlap_efficiency",
    "overlap_study", "overlapped_matmul_all_reduce", "overlapped_step", "paired_speedups",
    "serial_matmul_all_reduce", "serial_step",
]

Event = dict[str, Any]  # {"chunk": i, "kind": "compute" | "comm", "start": s, "end": s}


def chunk_rows(m: int, *, chunks: int) -> list[tuple[int, int]]:
    """Split M output rows into ``chunks`` equal, contiguous row ranges ``[start, stop)``.

    Raises:
        ValueError: ``chunks < 1`` or ``chunks`` does not divide ``m``.
    """
    m, chunks = check_int("m", m, 1), check_int("chunks", chunks, 1)
    if m % chunks:
        raise ValueError(f"chunks={chunks} must divide the m={m} output rows")
    step = m // chunks
    return [(i * step, (i + 1) * step) for i in range(chunks)]


def make_shards(rank: int, *, m: int, k: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's activations ``X_r`` [M, K] and weight slice ``W_r`` [K, N] of a row-parallel layer.

    Entries are small integers stored as float32, so every product and sum stays exact: a
    chunked GEMM and an all-reduce in any order give bit-identical results.
    """
    for value, name in ((m, "m"), (k, "k"), (n, "n")):
        check_int(name, value, 1)
    check_int("rank", rank, 0)
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + rank)
    x = torch.randint(-2, 3, (m, k), generator=gen).float()  # [M, K]
    w = torch.randint(-2, 3, (k, n), generator=gen).float()  # [K, N]
    return x, w


def link_all_reduce(tensor: torch.Tensor, *, link: AlphaBeta | None) -> tuple[float, float]:
    """Sum ``tensor`` over all ranks in place; on a modelled ``link``, last at least its ring time.

    With ``link=None`` this is a plain gloo all-reduce. With a link, the data still moves through
    gloo, then the call sleeps (using no CPU) until ``collective_time("ring_all_reduce", S, n,
    link)`` has passed since it started: the wire of a slower network, driven by its own engine.

    Returns:
        ``(start, end)``, ``time.perf_counter`` readings around the collective.
    """
    if not isinstance(tensor, torch.Tensor) or not tensor.is_contiguous():
        raise TypeError("link_all_reduce: tensor must be a contiguous torch.Tensor")
    start = time.perf_counter()
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    if link is not None:
        nbytes = tensor.numel() * tensor.element_size()
        modelled = collective_time("ring_all_reduce", nbytes, dist.get_world_size(), link)
        rest = start + modelled - time.perf_counter()
        if rest > 0:
            time.sleep(rest)
    return start, time.perf_counter()


class CommEngine:
    """Issues the chunks' all-reduces without blocking the producer, and keeps the link's schedule.

    Each :meth:`submit` starts an asynchronous gloo all-reduce (``async_op=True``: gloo's own
    thread moves and adds the data) and returns at once. With a modelled ``link`` the engine also
    plays the wire: messages leave one at a time, in order, each when it is issued or when the
    previous one has left, whichever is later, and take the ring all-reduce time of the link;
    :meth:`wait_all` returns when both the data and the modelled wire are done. Every rank must
    submit the same tensors in the same order (collectives match by order).

    Args:
        link: the modelled link of :func:`link_all_reduce`, or ``None`` for plain gloo.
    """

    def __init__(self, *, link: AlphaBeta | None = None) -> None:
        if link is not None and not isinstance(link, AlphaBeta):
            raise TypeError(f"link must be an AlphaBeta or None, got {type(link).__name__}")
        self.link = link
        self._pending: list[tuple[int, float, float, Any]] = []
        self._wire_free = 0.0

    def submit(self, tensor: torch.Tensor, *, chunk: int) -> None:
        """Start the in-place all-reduce of ``tensor`` (a contiguous chunk)
        and return at once."""
        if not isinstance(tensor, torch.Tensor) or not tensor.is_contiguous():
            raise TypeError(
                "CommEngine.submit: tensor must be a contiguous torch.Tensor")
        issued = time.perf_counter()
        work = dist.all_reduce(tensor, op=dist.ReduceOp.SUM, async_op=True)
        # when gloo is done
        finished = work.get_future().then(lambda _: time.perf_counter())
        start = issued
        if self.link is not None:
            # the wire: first in, first out, one message at a time
            start = max(issued, self._wire_free)
            nbytes = tensor.numel() * tensor.element_size()
            self._wire_free = start + collective_time(
                "ring_all_reduce", nbytes, dist.get_world_size(), self.link)
        end = self._wire_free if self.link is not None else issued
        self._pending.append((chunk, start, end, finished))

    def wait_all(self) -> list[Event]:
        """Wait for every submitted chunk; return one comm event per chunk (absolute times)."""
        events = []
        for chunk, start, wire_end, finished in self._pending:
            events.append(_event(chunk, "comm", start, max(finished.wait(), wire_end)))
        self._pending.clear()
        rest = max((e["end"] for e in events), default=0.0) - time.perf_counter()
        if rest > 0:
            time.sleep(rest)  # the modelled wire is still busy: the step is not over
        return events


def serial_matmul_all_reduce(x: torch.Tensor, w: torch.Tensor, *, link: AlphaBeta | None = None,
                             events: list[Event] | None = None) -> torch.Tensor:
    """``sum_r X_r W_r`` the serial way: the whole GEMM, then one all-reduce on the critical path.

    Shapes: x [M, K], w [K, N] -> [M, N]. ``events`` (if given) receives one compute and one comm
    event with absolute ``perf_counter`` times.
    """
    _check_operands(x, w)
    t0 = time.perf_counter()
    y = x @ w  # [M, N], this rank's partial sum
    t1 = time.perf_counter()
    start, end = link_all_reduce(y, link=link)
    if events is not None:
        events += [_event(0, "compute", t0, t1), _event(0, "comm", start, end)]
    return y


def overlapped_matmul_all_reduce(x: torch.Tensor, w: torch.Tensor, *,
                                 chunks: int, link: AlphaBeta | None = None,
                                 events: list[Event] | None = None
                                 ) -> torch.Tensor:
    """``sum_r X_r W_r`` with chunk ``i``'s all-reduce in flight while chunk
    ``i + 1`` is computed.

    The row blocks of the output are independent (row ``j`` of ``XW`` needs
    only row ``j`` of X), so each chunk can be reduced as soon as it is
    written; only the last chunk's communication is exposed.
    Shapes: x [M, K], w [K, N] -> [M, N], in C = ``chunks`` blocks of M / C
    rows.
    """
    _check_operands(x, w)
    ranges = chunk_rows(x.shape[0], chunks=chunks)
    engine = CommEngine(link=link)
    y = torch.empty(x.shape[0], w.shape[1], dtype=x.dtype)  # [M, N]
    # show: start chunk-loop
    for i, (lo, hi) in enumerate(ranges):
        t0 = time.perf_counter()
        torch.matmul(x[lo:hi], w, out=y[lo:hi])  # [M/C, N] block, contiguous
        t1 = time.perf_counter()
        engine.submit(y[lo:hi], chunk=i)  # trigger: the chunk is complete
        if events is not None:
            events.append(_event(i, "compute", t0, t1))
    comm_events = engine.wait_all()  # only the last chunk's comm is exposed
    # show: end chunk-loop
    if events is not None:
        events += comm_events
    return y


def overlap_efficiency(*, serial: float, overlapped: float, compute: float, comm: float) -> float:
    """Share of the hideable time actually hidden: ``(serial - overlapped) / min(compute, comm)``.

    1 means the overlapped step took ``max(compute, comm)`` (perfect overlap of serial
    ``compute + comm``); 0 means no gain; negative means overlapping made it slower.
    """
    for value, name in ((serial, "serial"), (overlapped, "overlapped"), (compute, "compute"), (comm, "comm")):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    return (serial - overlapped) / min(compute, comm)


def paired_speedups(rows: list[list[float]], counts: tuple[int, ...]) -> dict[int, float]:
    """Median over repeats of ``serial / overlapped`` measured in the *same* repeat, per chunk count.

    A slow spell of a shared machine slows a repeat's serial and overlapped steps alike, so the
    ratio within a repeat is steadier than the ratio of the two medians.

    Args:
        rows: one row per repeat, ``[compute, comm, serial, overlapped(C) for C in counts]``.
        counts: the chunk counts of the overlapped columns.
    """
    if any(len(row) != 3 + len(counts) for row in rows) or not rows:
        raise ValueError(f"rows must be non-empty, each [compute, comm, serial] + {len(counts)} overlapped times")
    return {c: statistics.median(row[2] / row[3 + j] for row in rows) for j, c in enumerate(counts)}


# ---------------------------------------------------------------- workers for labkit.dist.launch


def serial_step(rank: int, world_size: int, *, m: int, k: int, n: int, repeats: int, seed: int,
                link: AlphaBeta | None = None) -> dict[str, Any]:
    """Worker: time the serial GEMM + all-reduce ``repeats`` times; return output, times, events.

    Returns:
        ``{"output": [M, N] tensor, "times": [s, ...] (max over ranks), "median": s,
        "events": rank-relative events of the median run}``.
    """
    return _one_variant(rank, world_size, m=m, k=k, n=n, repeats=repeats, seed=seed, link=link, chunks=None)


def overlapped_step(rank: int, world_size: int, *, m: int, k: int, n: int, repeats: int, seed: int,
                    chunks: int, link: AlphaBeta | None = None) -> dict[str, Any]:
    """Worker: like :func:`serial_step`, for the overlapped version with ``chunks`` chunks."""
    return _one_variant(rank, world_size, m=m, k=k, n=n, repeats=repeats, seed=seed, link=link,
                        chunks=chunks)


def overlap_study(rank: int, world_size: int, *, m: int, k: int, n: int, repeats: int, seed: int,
                  chunk_counts: tuple[int, ...], links: dict[str, AlphaBeta | None],
                  warmup: int = 1, fail_rank: int | None = None) -> dict[str, Any]:
    """Worker: measure everything of the section in one launch, interleaved repeat by repeat.

    For each named link (``None`` = plain gloo on this machine) and each repeat: compute alone,
    communication alone, serial, and overlapped for every chunk count. Each time is the wall clock
    between a barrier and the end of the step, the maximum over ranks; the result reports medians
    over ``repeats`` (after ``warmup`` untimed rounds) and checks the overlapped output is exactly
    the serial one. ``torch.set_num_threads(1)``: one GEMM thread per rank, so the two ranks' GEMMs
    and gloo's threads share the machine's cores as predictably as possible.

    Args:
        rank, world_size: given by :func:`labkit.dist.launch`; ``world_size >= 2``.
        m, k, n: sizes of each rank's X_r [M, K] and W_r [K, N].
        repeats, warmup: timed and untimed rounds.
        seed: seed of :func:`make_shards`.
        chunk_counts: the values of C to time; each must divide ``m``.
        links: name -> modelled link, or ``None`` for the machine's own loopback.
        fail_rank: this rank raises where the overlapped step starts, leaving its peer waiting in
            a collective (to show that a failure surfaces cleanly); ``None`` in normal use.

    Returns:
        ``{"sizes": {...}, "modes": {name: {"compute", "comm", "serial": s, "overlapped":
        {C: s}, "paired_speedup": {C: median over repeats of serial / overlapped of the same
        repeat}, "events": {C: events of rank 0's median run}, "serial_events": events,
        "exact": bool}}, "output": [M, N] tensor}``.
    """
    _check_world(world_size)
    counts = tuple(check_int("chunk_counts", c, 1) for c in chunk_counts)
    if not counts:
        raise ValueError("chunk_counts must hold at least one chunk count")
    for c in counts:
        chunk_rows(m, chunks=c)
    repeats = check_int("repeats", repeats, 1)
    warmup = check_int("warmup", warmup, 0)
    if not isinstance(links, dict) or not links:
        raise TypeError("links must be a non-empty dict of name -> AlphaBeta or None")
    for name, link in links.items():
        if link is not None and not isinstance(link, AlphaBeta):
            raise TypeError(f"links[{name!r}] must be an AlphaBeta or None, got {type(link).__name__}")
    torch.set_num_threads(1)
    x, w = make_shards(rank, m=m, k=k, n=n, seed=seed)
    reference = serial_matmul_all_reduce(x, w)
    modes: dict[str, Any] = {}
    for name, link in links.items():
        rows: list[list[float]] = []
        runs: list[dict[int, list[Event]]] = []
        exact = True
        for r in range(warmup + repeats):
            times: list[float] = []
            dist.barrier()
            t0 = time.perf_counter()
            x @ w  # compute alone
            times.append(time.perf_counter() - t0)
            scratch = reference.clone()
            dist.barrier()
            start, end = link_all_reduce(scratch, link=link)  # communication alone
            times.append(end - start)
            serial_events: list[Event] = []
            dist.barrier()
            t0 = time.perf_counter()
            y = serial_matmul_all_reduce(x, w, link=link, events=serial_events)
            times.append(time.perf_counter() - t0)
            exact &= torch.equal(y, reference)
            run: dict[int, list[Event]] = {0: _relative(serial_events, t0)}  # key 0: serial
            for c in counts:
                events: list[Event] = []
                dist.barrier()
                t0 = time.perf_counter()
                if fail_rank == rank:  # its peer is left waiting in chunk 0's all-reduce
                    raise RuntimeError(f"rank {rank} failed on purpose while its peer communicates")
                y = overlapped_matmul_all_reduce(x, w, chunks=c, link=link, events=events)
                times.append(time.perf_counter() - t0)
                exact &= torch.equal(y, reference)
                run[c] = _relative(events, t0)
            slowest = torch.tensor(times, dtype=torch.float64)
            dist.all_reduce(slowest, op=dist.ReduceOp.MAX)  # a step lasts until its slowest rank ends
            if r >= warmup:
                rows.append(slowest.tolist())
                runs.append(run)
        medians = [statistics.median(col) for col in zip(*rows)]
        paired = paired_speedups(rows, counts)
        mode: dict[str, Any] = {"compute": medians[0], "comm": medians[1], "serial": medians[2],
                                "overlapped": dict(zip(counts, medians[3:])), "paired_speedup": paired,
                                "exact": exact, "events": {}}
        for j, c in enumerate((0, *counts)):
            column = [row[2 + j] for row in rows]
            median_run = min(range(len(rows)), key=lambda i: abs(column[i] - statistics.median(column)))
            mode["events"][c] = runs[median_run][c]
        mode["serial_events"] = mode["events"].pop(0)
        modes[name] = mode
    return {"sizes": {"m": m, "k": k, "n": n, "world_size": world_size, "repeats": repeats},
            "modes": modes, "output": reference}


def _one_variant(rank: int, world_size: int, *, m: int, k: int, n: int, repeats: int, seed: int,
                 link: AlphaBeta | None, chunks: int | None) -> dict[str, Any]:
    _check_world(world_size)
    repeats = check_int("repeats", repeats, 1)
    if chunks is not None:
        chunk_rows(m, chunks=chunks)
    torch.set_num_threads(1)
    x, w = make_shards(rank, m=m, k=k, n=n, seed=seed)
    times, runs = [], []
    for _ in range(repeats):
        events: list[Event] = []
        dist.barrier()
        t0 = time.perf_counter()
        if chunks is None:
            y = serial_matmul_all_reduce(x, w, link=link, events=events)
        else:
            y = overlapped_matmul_all_reduce(x, w, chunks=chunks, link=link, events=events)
        slowest = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
        times.append(slowest.item())
        runs.append(_relative(events, t0))
    median = statistics.median(times)
    pick = min(range(repeats), key=lambda i: abs(times[i] - median))
    return {"output": y, "times": times, "median": median, "events": runs[pick]}


def _check_world(world_size: int) -> None:
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 2:
        raise ValueError(f"world_size must be an int >= 2 (overlap needs a collective), got {world_size!r}")


def _check_operands(x: torch.Tensor, w: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or not isinstance(w, torch.Tensor):
        raise TypeError("x and w must be torch.Tensors")
    if x.dim() != 2 or w.dim() != 2 or x.shape[1] != w.shape[0]:
        raise ValueError(f"x [M, K] and w [K, N] must agree on K, got {tuple(x.shape)} and {tuple(w.shape)}")


def _event(chunk: int, kind: str, start: float, end: float) -> Event:
    return {"chunk": chunk, "kind": kind, "start": start, "end": end}


def _relative(events: list[Event], t0: float) -> list[Event]:
    return [{**e, "start": e["start"] - t0, "end": e["end"] - t0} for e in events]
