"""Data-aware sharding of mixed-length sequences: a static 2-D mesh against a dynamic one.

ByteScale ("ByteScale: Efficient Scaling of LLM Training with a 2048K Context Length on More
Than 12,000 GPUs", Ge et al., 2025, arXiv:2502.21231) observes that long-context training
usually fixes a 2-D mesh: ``world_size / cp_size`` data-parallel groups, each of ``cp_size``
ranks that split every sequence along its length (context parallelism, CP). ``cp_size`` must be
large enough for the *longest* sequence the data can hold, yet most sequences of a real corpus
are short: they too get cut into ``cp_size`` pieces, padded, and pay the CP exchange of keys and
values (K/V) although one rank could hold them whole. ByteScale's hybrid data parallelism
instead decides per sequence: a short one stays whole on one rank (no communication), a long
one is split over just as many ranks as its length needs, and a balance scheduler assigns the
pieces so that every rank gets about the same compute.

This module simulates both on one batch: compute per rank from a measured (or stated) cost
model ``t(L) = linear * L + attention * L**2`` (attention's cost grows with the square of the
sequence length, the rest linearly), and the K/V exchange of every split sequence priced with
the chapter's alpha-beta model (:func:`~labkit.comm.costmodel.collective_time`, an all-gather
of the sequence's K/V over its ranks, what ring attention moves). A rank's load is its compute
plus its communication time, not overlapped.

Shapes: S sequences of lengths L_s; W ranks (``world_size``).

What the miniature leaves out: selective offloading of long sequences' activations, pipeline
and tensor parallelism, the memory limit of a rank across micro-batches (only each piece's
length is capped), overlap of communication with compute, and the fact that ranks sharing a
split sequence must work on it at the same time (loads are summed as if independent).

Section: chapter 11, "Datatypes and dynamic meshes: TEMPI and ByteScale".
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .costmodel import AlphaBeta, collective_time

__all__ = [
    "Assignment",
    "TokenCost",
    "dynamic_assignment",
    "measure_token_cost",
    "sample_lengths",
    "static_cp_size",
    "static_mesh_assignment",
]


@dataclass(frozen=True)
class TokenCost:
    """Seconds to process one sequence of L tokens: ``linear * L + attention * L**2``.

    Attributes:
        linear: seconds per token (projections and MLP).
        attention: seconds per squared token (attention scores and their weighted sum).
        kv_bytes_per_token: bytes of keys and values one token exchanges under CP.
    """

    linear: float
    attention: float
    kv_bytes_per_token: float

    def __post_init__(self) -> None:
        for name in ("linear", "attention", "kv_bytes_per_token"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"TokenCost: {name} must be a number >= 0, got {value!r}")

    def seconds(self, length: float) -> float:
        """Compute time of one whole sequence of ``length`` tokens."""
        return self.linear * length + self.attention * length * length


@dataclass(frozen=True)
class Assignment:
    """Where every sequence of a batch went, and what each rank pays.

    Attributes:
        strategy: ``"static"`` or ``"dynamic"``.
        ranks: per sequence, the ranks that share it (one rank: kept whole).
        padded: per sequence, its length after padding to a multiple of its rank count.
        compute: (W,) seconds of compute per rank.
        comm: (W,) seconds of K/V exchange per rank.
        comm_bytes: (W,) bytes each rank receives.
        redundant_bytes: bytes received for sequences that would have fit on one rank.
    """

    strategy: str
    ranks: tuple[tuple[int, ...], ...]
    padded: tuple[int, ...]
    compute: tuple[float, ...]
    comm: tuple[float, ...]
    comm_bytes: tuple[float, ...]
    redundant_bytes: float

    @property
    def load(self) -> tuple[float, ...]:
        """(W,) seconds per rank: compute plus communication, not overlapped."""
        return tuple(c + m for c, m in zip(self.compute, self.comm))

    @property
    def max_load(self) -> float:
        """The step time: the slowest rank's load."""
        return max(self.load)

    @property
    def total_comm_bytes(self) -> float:
        """Bytes received over all ranks."""
        return float(sum(self.comm_bytes))


def sample_lengths(n_seqs: int, *, seed: int, median: int = 512, sigma: float = 1.6, min_len: int = 16,
                   max_len: int = 32768) -> list[int]:
    """A seeded long-tailed batch of sequence lengths: log-normal, clipped to [min_len, max_len].

    Most sequences are near ``median`` tokens; ``sigma`` (the log-scale spread) sets how heavy
    the tail of long documents is.
    """
    for name, value, low in (("n_seqs", n_seqs, 1), ("median", median, 1), ("min_len", min_len, 1),
                             ("max_len", max_len, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if not min_len <= max_len:
        raise ValueError(f"min_len ({min_len}) must be <= max_len ({max_len})")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma!r}")
    rng = np.random.default_rng(seed)
    lengths = np.exp(rng.normal(math.log(median), sigma, size=n_seqs))
    return [int(v) for v in np.clip(np.round(lengths), min_len, max_len)]


def _check_lengths(lengths: Sequence[int], world_size: int, link: AlphaBeta, cost: TokenCost) -> list[int]:
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be an int >= 1, got {world_size!r}")
    if not isinstance(cost, TokenCost):
        raise TypeError(f"cost must be a TokenCost, got {type(cost).__name__}")
    if not isinstance(link, AlphaBeta):
        raise TypeError(f"link must be an AlphaBeta, got {type(link).__name__}")
    out = list(lengths)
    if not out or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in out):
        raise ValueError("lengths must be a non-empty sequence of ints >= 1")
    return [int(v) for v in out]


def static_cp_size(max_len: int, *, capacity: int, world_size: int) -> int:
    """The CP size a static mesh needs: the smallest divisor of ``world_size`` whose ranks hold
    ``max_len`` tokens at ``capacity`` tokens per rank.
    """
    if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
        raise ValueError(f"capacity must be an int >= 1, got {capacity!r}")
    need = math.ceil(max_len / capacity)
    for cp in range(need, world_size + 1):
        if world_size % cp == 0:
            return cp
    raise ValueError(f"max_len {max_len} needs {need} ranks of capacity {capacity}; world_size is {world_size}")


def _place(length: int, ranks: Sequence[int], *, cost: TokenCost, link: AlphaBeta,
           compute: list[float], comm: list[float], comm_bytes: list[float]) -> tuple[int, float]:
    """Charge a sequence split evenly over ``ranks``; returns (padded length, bytes received)."""
    k = len(ranks)
    padded = math.ceil(length / k) * k  # every piece equally long
    received = 0.0
    for r in ranks:
        # causal attention sharded in balanced chunks: each of the k ranks does 1/k of the work
        compute[r] += cost.seconds(padded) / k
        if k > 1:  # ring attention: each rank receives the other k - 1 shards of K/V
            kv = padded * cost.kv_bytes_per_token
            comm[r] += collective_time("all_gather", kv, k, link)
            comm_bytes[r] += (k - 1) / k * kv
            received += (k - 1) / k * kv
    return padded, received


def _finish(strategy: str, ranks: list[tuple[int, ...]], padded: list[int],
            compute: list[float], comm: list[float], comm_bytes: list[float], redundant: float) -> Assignment:
    return Assignment(strategy, tuple(ranks), tuple(padded), tuple(compute), tuple(comm), tuple(comm_bytes),
                      redundant)


def static_mesh_assignment(lengths: Sequence[int], *, world_size: int, cp_size: int, capacity: int,
                           cost: TokenCost, link: AlphaBeta) -> Assignment:
    """A fixed ``(world_size / cp_size) x cp_size`` mesh: every sequence is split over one CP group.

    Sequences go to data-parallel groups the way a token-balanced data loader deals them:
    longest first, each to the group holding the fewest tokens so far (tokens, not compute, since
    the static mesh has no model of attention's quadratic cost). ``capacity`` (tokens one rank
    holds) only decides which bytes count as redundant: those of sequences that fit one rank.
    """
    lens = _check_lengths(lengths, world_size, link, cost)
    if isinstance(cp_size, bool) or not isinstance(cp_size, int) or cp_size < 1 or world_size % cp_size:
        raise ValueError(f"cp_size must be an int >= 1 dividing world_size ({world_size}), got {cp_size!r}")
    if max(lens) > cp_size * capacity:
        raise ValueError(f"a sequence of {max(lens)} tokens does not fit cp_size * capacity = {cp_size * capacity}")
    w = world_size
    compute, comm, comm_bytes = [0.0] * w, [0.0] * w, [0.0] * w
    ranks: list[tuple[int, ...]] = [()] * len(lens)
    padded = [0] * len(lens)
    group_tokens = [0] * (w // cp_size)
    redundant = 0.0
    for s in sorted(range(len(lens)), key=lambda i: -lens[i]):
        g = min(range(len(group_tokens)), key=group_tokens.__getitem__)
        members = tuple(range(g * cp_size, (g + 1) * cp_size))
        padded[s], got = _place(lens[s], members, cost=cost, link=link,
                                compute=compute, comm=comm, comm_bytes=comm_bytes)
        ranks[s] = members
        group_tokens[g] += padded[s]
        redundant += got if lens[s] <= capacity else 0.0
    return _finish("static", ranks, padded, compute, comm, comm_bytes, redundant)


def dynamic_assignment(lengths: Sequence[int], *, world_size: int, capacity: int, cost: TokenCost,
                       link: AlphaBeta, piece_share: float = 0.5) -> Assignment:
    """ByteScale's data-aware sharding: each sequence gets ``ceil(L / capacity)`` ranks, no more.

    Balance scheduler (a greedy longest-processing-time bin packing): sequences in decreasing
    cost; a whole sequence goes to the least-loaded rank, a split one to the ``k`` least-loaded
    ranks. A sequence so heavy that one piece would exceed ``piece_share`` of a rank's fair share
    (the batch's compute over W) gets more ranks: greedy packing balances well only when no piece
    is large next to a bin. Only split sequences exchange K/V.
    """
    lens = _check_lengths(lengths, world_size, link, cost)
    if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
        raise ValueError(f"capacity must be an int >= 1, got {capacity!r}")
    if isinstance(piece_share, bool) or not isinstance(piece_share, (int, float)) or not piece_share > 0:
        raise ValueError(f"piece_share must be a number > 0, got {piece_share!r}")
    if max(lens) > world_size * capacity:
        raise ValueError(f"a sequence of {max(lens)} tokens does not fit world_size * capacity = "
                         f"{world_size * capacity}")
    w = world_size
    compute, comm, comm_bytes = [0.0] * w, [0.0] * w, [0.0] * w
    ranks: list[tuple[int, ...]] = [()] * len(lens)
    padded = [0] * len(lens)
    fair = sum(cost.seconds(n) for n in lens) / w  # each rank's share of the batch's compute
    for s in sorted(range(len(lens)), key=lambda i: -lens[i]):
        # as many ranks as the length needs; more only if a piece would exceed piece_share * fair
        k = min(w, max(math.ceil(lens[s] / capacity), math.ceil(cost.seconds(lens[s]) / (piece_share * fair))))
        chosen = tuple(sorted(sorted(range(w), key=lambda r: compute[r] + comm[r])[:k]))
        padded[s], _ = _place(lens[s], chosen, cost=cost, link=link,
                              compute=compute, comm=comm, comm_bytes=comm_bytes)
        ranks[s] = chosen
    return _finish("dynamic", ranks, padded, compute, comm, comm_bytes, 0.0)


def measure_token_cost(*, d_model: int = 64, n_heads: int = 4, lengths: Sequence[int] = (256, 512, 1024),
                       repeats: int = 3, seed: int = 0, bytes_per_element: int = 4) -> TokenCost:
    """Fit :class:`TokenCost` to one transformer block's forward pass timed on this CPU.

    Times causal attention (scores, softmax, weighted sum) and the linear part (Q/K/V/output
    projections and a 4x MLP) separately at each length; ``attention`` is the median of
    ``t_attn / L**2`` and ``linear`` the median of ``t_linear / L``. K/V bytes per token are
    ``2 * d_model * bytes_per_element`` (one layer).
    """
    if isinstance(d_model, bool) or not isinstance(d_model, int) or d_model < 1 or d_model % n_heads:
        raise ValueError(f"d_model must be a positive multiple of n_heads ({n_heads}), got {d_model!r}")
    if not lengths or any(not isinstance(v, int) or v < 2 for v in lengths):
        raise ValueError(f"lengths must be a non-empty sequence of ints >= 2, got {lengths!r}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an int >= 1, got {repeats!r}")
    g = torch.Generator().manual_seed(seed)
    d, h = d_model, n_heads
    w_qkv, w_o = torch.randn(d, 3 * d, generator=g) / d**0.5, torch.randn(d, d, generator=g) / d**0.5
    w_1, w_2 = torch.randn(d, 4 * d, generator=g) / d**0.5, torch.randn(4 * d, d, generator=g) / d**0.5

    def best(fn) -> float:
        fn()  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    per_sq, per_tok = [], []
    with torch.no_grad():
        for n in lengths:
            x = torch.randn(n, d, generator=g)
            q, k, v = (x @ w_qkv).view(n, 3, h, d // h).permute(1, 2, 0, 3)  # 3 x (H, L, d/H)
            attn = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            linear = lambda: (x @ w_qkv, x @ w_o, torch.relu(x @ w_1) @ w_2)
            per_sq.append(best(attn) / n**2)
            per_tok.append(best(linear) / n)
    return TokenCost(linear=float(np.median(per_tok)), attention=float(np.median(per_sq)),
                     kv_bytes_per_token=float(2 * d_model * bytes_per_element))
