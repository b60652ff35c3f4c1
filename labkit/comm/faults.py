"""Spotting a slow rank from collective timings, and a real job with one delayed rank.

Paper: "Boosting Large-scale Parallel Training Efficiency with C4: A Communication-Driven
Approach" (2024).

Intuition. Training repeats the same collectives every iteration, on every rank, with the same
sizes: the timings are periodic and homogeneous, so a rank that breaks the pattern points at a
fault. A collective cannot finish before its last rank joins, so every rank leaves it at about
the same moment; the time a rank spends *inside* the collective is therefore its own idle wait
plus the transfer. A rank slowed before the collective (a throttled GPU, a sleep) arrives last
and waits the least: it is the rank the others wait for. Its statistic is the *lateness*
``median_r(d[i, :]) - d[i, r]`` of its in-collective duration ``d``, a difference taken inside
one process, so clocks need not agree across machines. The median over iterations ignores a
one-off hiccup; a median/MAD z-score across ranks says whether one rank stands out. A slow
*link* slows everyone alike, so there the per-connection transfer time is the statistic (C4
monitors connections in its collective library). Traffic planning, C4's second half, is
:func:`labkit.comm.topology.route_flows` with ``scheme="greedy"``.

What the miniature leaves out: C4's per-connection monitoring inside the collective library,
its root-causing across jobs, isolation and restart, and real network congestion.

Shapes: I iterations, n ranks (``world_size``); timings are ``(I, n)`` arrays in seconds.

Section: chapter 11, "C4: reading faults off the collectives".
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from ..validation import check_int
from .costmodel import AlphaBeta

__all__ = ["Detection", "RingTimings", "delayed_all_reduce", "detect_slow_rank", "simulate_ring_timings"]

FAULT_KINDS: tuple[str, ...] = ("none", "compute", "link")


@dataclass(frozen=True)
class RingTimings:
    """Per-iteration, per-rank timings of a ring all-reduce (seconds, each rank's own clock).

    Attributes:
        enter: ``(I, n)`` when rank r called the collective (after its compute).
        exit: ``(I, n)`` when rank r got the result.
        link: ``(I, n)`` median time of one message on the connection r -> r + 1.
    """

    enter: np.ndarray
    exit: np.ndarray
    link: np.ndarray

    @property
    def duration(self) -> np.ndarray:
        """``(I, n)`` time each rank spent inside the collective: idle wait plus transfer."""
        return self.exit - self.enter


@dataclass(frozen=True)
class Detection:
    """The outcome of :func:`detect_slow_rank`.

    Attributes:
        rank: the flagged rank, or ``None`` when no rank stands out.
        kind: ``"compute"`` (arrives late), ``"link"`` (slow connection) or ``"none"``.
        z: the flagged statistic's robust z-score (the largest one when nothing is flagged).
        lateness_z: ``(n,)`` robust z of each rank's lateness.
        link_z: ``(n,)`` robust z of each connection's message time (zeros without link data).
    """

    rank: int | None
    kind: str
    z: float
    lateness_z: np.ndarray
    link_z: np.ndarray


def simulate_ring_timings(*, world_size: int, iterations: int, nbytes: float, link: AlphaBeta,
                          compute_s: float, noise: float = 0.05, fault: str = "none", slow_rank: int = 0,
                          slowdown: float = 1.0, seed: int = 0) -> RingTimings:
    """Simulate I iterations of compute followed by a ring all-reduce, step by step.

    Every rank computes ``compute_s`` (times ``1 + noise * |N(0,1)|``), then runs the
    ``2 (n - 1)`` steps of a ring all-reduce on chunks of ``nbytes / n``: at step t rank r sends
    once it has the chunk of step t - 1, and the message takes ``link.message(chunk)`` (times its
    own noise) on the connection r -> r + 1. So each step waits for the slowest rank or link, and
    the total matches :func:`labkit.comm.costmodel.collective_time` when nothing is slow.

    Args:
        world_size: n >= 2 ranks.
        iterations: I >= 1.
        nbytes: bytes per rank in the all-reduce (>= 0).
        link: alpha-beta parameters of every connection.
        compute_s: compute time per iteration (>= 0).
        noise: relative jitter (>= 0) of compute and of each message.
        fault: ``"none"``, ``"compute"`` (``slow_rank`` computes ``slowdown`` times longer, like a
            throttled GPU or a sleep) or ``"link"`` (its outgoing connection is ``slowdown`` times slower).
        slow_rank: the faulty rank.
        slowdown: factor >= 1.
        seed: seed of the noise.
    """
    n = check_int("world_size", world_size, 2)
    n_iter = check_int("iterations", iterations, 1)
    for name, value in (("nbytes", nbytes), ("compute_s", compute_s), ("noise", noise)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    if not isinstance(link, AlphaBeta):
        raise TypeError(f"link must be an AlphaBeta, got {type(link).__name__}")
    if fault not in FAULT_KINDS:
        raise ValueError(f"unknown fault {fault!r}; expected one of {FAULT_KINDS}")
    if not 0 <= check_int("slow_rank", slow_rank, 0) < n:
        raise ValueError(f"slow_rank must be in [0, {n}), got {slow_rank}")
    if not slowdown >= 1:
        raise ValueError(f"slowdown must be >= 1, got {slowdown}")
    rng = np.random.default_rng(seed)
    steps = 2 * (n - 1)
    compute_scale = np.ones(n)
    link_scale = np.ones(n)
    if fault == "compute":
        compute_scale[slow_rank] = slowdown
    elif fault == "link":
        link_scale[slow_rank] = slowdown
    message = link.message(nbytes / n)
    enter = np.empty((n_iter, n))
    leave = np.empty((n_iter, n))
    link_med = np.empty((n_iter, n))
    clock = np.zeros(n)
    for i in range(n_iter):
        enter[i] = clock + compute_s * compute_scale * (1 + noise * np.abs(rng.standard_normal(n)))
        # msg[t, r]: one message on connection r -> r + 1 at step t
        msg = message * link_scale * (1 + noise * np.abs(rng.standard_normal((steps, n))))
        have = enter[i].copy()  # when rank r holds what it must send next
        for t in range(steps):
            arrive = np.roll(have + msg[t], 1)  # rank r receives from r - 1
            have = np.maximum(have, arrive)  # it forwards once it has both its data and the chunk
        leave[i] = have
        link_med[i] = np.median(msg, axis=0)
        clock = leave[i]
    return RingTimings(enter=enter, exit=leave, link=link_med)


def _robust_z(values: np.ndarray, min_scale: float) -> np.ndarray:
    """``(x - median) / max(1.4826 MAD, min_scale)``: the z-score one outlier cannot inflate."""
    centre = np.median(values)
    scale = max(1.4826 * float(np.median(np.abs(values - centre))), min_scale)
    return (values - centre) / scale


def detect_slow_rank(duration: np.ndarray, *, link: np.ndarray | None = None, threshold: float = 5.0,
                     min_scale_s: float = 1e-4, min_link_rel: float = 0.02,
                     min_share: float = 0.5) -> Detection:
    """Flag the rank the others wait for, or the slow connection, from collective timings.

    Statistic (compute faults): lateness ``l[i, r] = median_r(d[i, :]) - d[i, r]`` of the
    in-collective duration ``d``; its median over iterations per rank, then a robust z across
    ranks. The latest arrival waits least, so it has the largest lateness. With ``link`` given
    (per-connection message times), its per-connection median gets the same robust z; the larger
    of the two maxima above ``threshold`` decides, if the rank is also the worst one in at least
    ``min_share`` of the iterations.

    Args:
        duration: ``(I, n)`` seconds each rank spent inside the collective.
        link: optional ``(I, n)`` seconds per message on connection r -> r + 1.
        threshold: robust z above which a rank is flagged (> 0).
        min_scale_s: floor of the MAD scale in seconds (> 0), so that near-identical healthy ranks
            do not turn microsecond jitter into huge z-scores.
        min_link_rel: floor of the link statistic's scale, relative to the median message time
            (>= 0): a connection 2% off its peers is jitter, not a fault.
        min_share: a fault persists: the flagged rank must also be the latest arrival (or the
            slowest connection) in at least this share of the iterations (in [0, 1]); a healthy
            rank is last in about 1 / n of them by chance.
    """
    d = _check_timings("duration", duration)
    if not 0 <= min_share <= 1:
        raise ValueError(f"min_share must be in [0, 1], got {min_share}")
    if not threshold > 0 or not min_scale_s > 0 or not min_link_rel >= 0:
        raise ValueError(f"threshold and min_scale_s must be > 0 and min_link_rel >= 0, got "
                         f"{threshold}, {min_scale_s}, {min_link_rel}")
    # show: start lateness
    # lateness l[i, r] = median_r d[i, :] - d[i, r]: the late rank waits least
    lateness = np.median(d, axis=1, keepdims=True) - d  # (I, n)
    late = np.median(lateness, axis=0)  # (n,) one hiccup does not count
    worst = {"compute": lateness.argmax(axis=1)}  # (I,) latest per iteration
    # z_r = (late_r - median) / max(1.4826 MAD, floor), robust across ranks
    lateness_z = _robust_z(late, min_scale_s)
    # show: end lateness
    link_z = np.zeros(d.shape[1])
    if link is not None:
        lk = _check_timings("link", link)
        if lk.shape != d.shape:
            raise ValueError(f"link must have the shape of duration {d.shape}, "
                             f"got {lk.shape}")
        per_link = np.median(lk, axis=0)
        worst["link"] = lk.argmax(axis=1)
        link_scale = max(min_link_rel * float(np.median(per_link)), 1e-12)
        link_z = _robust_z(per_link, link_scale)
    # show: start decide
    best_late, best_link = int(np.argmax(lateness_z)), int(np.argmax(link_z))
    if lateness_z[best_late] >= link_z[best_link]:
        rank, kind, z = best_late, "compute", float(lateness_z[best_late])
    else:
        rank, kind, z = best_link, "link", float(link_z[best_link])
    # flag only a persistent outlier: z above threshold and the worst rank
    # in at least min_share of the iterations
    if z < threshold or float(np.mean(worst[kind] == rank)) < min_share:
        return Detection(None, "none", z, lateness_z, link_z)
    return Detection(rank, kind, z, lateness_z, link_z)
    # show: end decide


def delayed_all_reduce(rank: int, world_size: int, *, delayed_rank: int, delay_s: float, iterations: int,
                       numel: int = 1024, fail_rank: int | None = None) -> dict[str, list[float]]:
    """Worker for :func:`labkit.dist.launch`: ``iterations`` all-reduces, one rank sleeping first.

    Before each all-reduce, ``delayed_rank`` sleeps ``delay_s`` (a stand-in for a throttled GPU),
    every rank records ``time.perf_counter()`` just before and just after the collective, and
    checks the sum. ``fail_rank`` raises on that rank instead (to test that a failure surfaces).

    Returns:
        ``{"enter": [...], "exit": [...]}``: I timestamps each, on this process's own clock.
    """
    if not 0 <= delayed_rank < world_size:
        raise ValueError(f"delayed_rank must be in [0, {world_size}), got {delayed_rank}")
    if not delay_s >= 0:
        raise ValueError(f"delay_s must be >= 0, got {delay_s}")
    if rank == fail_rank:
        raise RuntimeError(f"rank {rank} failed on purpose")
    x = torch.full((numel,), float(rank + 1))
    enter, leave = [], []
    dist.barrier()
    for _ in range(check_int("iterations", iterations, 1)):
        if rank == delayed_rank:
            time.sleep(delay_s)
        y = x.clone()
        enter.append(time.perf_counter())
        dist.all_reduce(y)
        leave.append(time.perf_counter())
        if y[0].item() != world_size * (world_size + 1) / 2:
            raise RuntimeError(f"rank {rank}: all_reduce returned {y[0].item()}")
    return {"enter": enter, "exit": leave}



def _check_timings(name: str, value: object) -> np.ndarray:
    arr = np.asarray(value, dtype=float)
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 2:
        raise ValueError(f"{name} must be an (iterations, ranks) array with >= 2 ranks, got shape {arr.shape}")
    if not np.isfinite(arr).all() or (arr < 0).any():
        raise ValueError(f"{name} must hold finite times >= 0")
    return arr
