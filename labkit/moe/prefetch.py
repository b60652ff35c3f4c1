"""An expert cache for memory-limited MoE serving: on-demand LRU versus pre-gated lookahead (Read-ME).

Paper: "Read-ME: Refactorizing LLMs as Router-Decoupled Mixture of Experts with System Co-Design"
(Cai et al., arXiv:2410.19123).

A device that cannot hold all ``L * E`` experts keeps a cache of ``C`` of them and loads the
others from host memory when a token needs them. With the usual layer-wise routers the expert
of layer ``l`` is known only once layer ``l`` runs, so the cache can only react: load on a
miss, evict the least recently used expert (LRU). Read-ME's pre-gating router reads the token
before the backbone, so a token's experts at *every* layer are known when it starts, and for a
known prompt (or a queue of requests) the routes of the following tokens too. A cache that sees
the future can evict the expert whose next use is farthest away, Belady's optimal rule, and it
can start each load before the layer that needs it (prefetch), hiding the transfer behind
compute. This module replays a routing trace through both caches, counting hits and loads
(expert transfers), and turns the loads into a decode time with a one-copy-engine timeline.

What the miniature leaves out: real transfers and their bandwidth (the timeline uses fixed
costs), expert-aware batching of many requests, the slot a prefetched expert occupies before it
is used (the timeline assumes it is free), and Read-ME's extraction of experts from a dense model.

Shapes: T tokens (in decode order), L sparse layers, k experts per token and layer,
R = L * k requests per token, E experts per layer, C cache capacity in experts.
Section: chapter 05, "Read-ME: routing before the backbone".
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

from labkit.validation import check_int, check_tensor

__all__ = ["CacheStats", "decode_time", "expert_requests", "simulate_cache"]

_POLICIES = ("lru", "belady")


@dataclass(frozen=True)
class CacheStats:
    """What a cache did with a request stream.

    Attributes:
        requests: expert requests served (dropped assignments are not requests).
        hits: requests found in the cache.
        loads: requests that had to load their expert (transfers), ``requests - hits``.
        loads_per_token: (T, L) int64 loads of each token at each layer.
    """

    requests: int
    hits: int
    loads: int
    loads_per_token: torch.Tensor

    @property
    def hit_rate(self) -> float:
        """Fraction of requests served from the cache."""
        return self.hits / self.requests if self.requests else 0.0


def expert_requests(routes: torch.Tensor, n_experts: int) -> torch.Tensor:
    """Number the experts of all layers ``l * E + e`` and lay a trace out as requests per token.

    Args:
        routes: (T, L, k) int64 experts per token, layer and choice (from
            :func:`labkit.lm.routing_trace` or :meth:`labkit.lm.GPT.pregate_routes`), -1 = dropped.
        n_experts: E.

    Returns:
        (T, L * k) int64 global expert ids in the order a decoder asks for them (layer by
        layer, choices in order), -1 where an assignment was dropped.
    """
    check_int("n_experts", n_experts, 1)
    check_tensor("routes", routes, dims=3, dtype=torch.int64, shape="(T, L, k)")
    if routes.numel() and (int(routes.min()) < -1 or int(routes.max()) >= n_experts):
        raise ValueError(f"routes must hold experts in [0, {n_experts}) or -1, "
                         f"got [{int(routes.min())}, {int(routes.max())}]")
    layer = torch.arange(routes.shape[1]).view(1, -1, 1) * n_experts  # (1, L, 1)
    ids = torch.where(routes >= 0, routes + layer, torch.full_like(routes, -1))  # (T, L, k)
    return ids.reshape(routes.shape[0], -1)


def _next_uses(flat: list[int]) -> list[int]:
    """For each position, the next position asking for the same expert (len(flat) if none)."""
    nxt, seen = [0] * len(flat), {}
    for pos in range(len(flat) - 1, -1, -1):
        nxt[pos] = seen.get(flat[pos], len(flat))
        seen[flat[pos]] = pos
    return nxt


def simulate_cache(requests: torch.Tensor, *, capacity: int, policy: str, n_layers: int,
                   lookahead: int | None = None) -> CacheStats:
    """Replay expert requests through a cache of ``capacity`` experts.

    ``policy="lru"``: on a miss evict the least recently used expert (a layer-wise router
    reveals nothing ahead). ``policy="belady"``: evict the cached expert whose next request is
    farthest away (Belady's MIN rule), looking only at the requests of the current token and the
    next ``lookahead - 1`` tokens; experts not requested within that window count as never used
    again and are evicted least recently used first. ``lookahead=1`` is what a pre-gating router
    knows while decoding (the current token's experts at every layer); a larger window is a known
    prompt or a queue of requests; ``None`` is the whole future (optimal; never more loads than
    LRU); ``0`` knows nothing and equals LRU.

    Args:
        requests: (T, R) int64 from :func:`expert_requests`; -1 entries are skipped.
        capacity: C >= 1 experts held at once.
        policy: ``"lru"`` or ``"belady"``.
        n_layers: L, to report loads per layer (R must be a multiple of L).
        lookahead: tokens of known future for ``"belady"`` (>= 0), or None for all of it.

    Returns:
        :class:`CacheStats`.
    """
    check_tensor("requests", requests, dims=2, dtype=torch.int64, shape="(T, R)")
    if requests.numel() and int(requests.min()) < -1:
        raise ValueError("requests must be expert ids >= 0, or -1 for a dropped assignment")
    check_int("capacity", capacity, 1)
    check_int("n_layers", n_layers, 1)
    if requests.shape[1] % n_layers:
        raise ValueError(f"requests per token R={requests.shape[1]} must be a multiple of n_layers={n_layers}")
    if policy not in _POLICIES:
        raise ValueError(f"policy must be one of {_POLICIES}, got {policy!r}")
    if lookahead is not None:
        check_int("lookahead", lookahead, 0)
    n_tokens, per_token = requests.shape
    keep = (requests >= 0).reshape(-1)
    flat = requests.reshape(-1)[keep].tolist()
    token_of = (torch.arange(n_tokens).repeat_interleave(per_token)[keep]).tolist()
    slot_of = (torch.arange(per_token).repeat(n_tokens)[keep] // (per_token // n_layers)).tolist()
    nxt = _next_uses(flat) if policy == "belady" else []
    never = len(flat)
    cache: OrderedDict[int, int] = OrderedDict()  # expert -> position of its next request; order = recency
    loads = torch.zeros(n_tokens, n_layers, dtype=torch.int64)
    hits = 0
    # show: start evict
    for pos, expert in enumerate(flat):
        if expert in cache:
            hits += 1
            cache.move_to_end(expert)
        else:
            loads[token_of[pos], slot_of[pos]] += 1
            if len(cache) >= capacity:
                if policy == "lru":
                    cache.popitem(last=False)
                else:
                    horizon = never if lookahead is None else _window_end(token_of, pos, lookahead, never)
                    # farthest known next use; ties (unknown = beyond the window) go to the least recent
                    victim, far = None, -1
                    for e, use in cache.items():  # iterates least recent first
                        dist = use if use < horizon else never
                        if dist > far:
                            victim, far = e, dist
                    del cache[victim]
        cache[expert] = nxt[pos] if nxt else 0
    # show: end evict
    return CacheStats(requests=len(flat), hits=hits, loads=len(flat) - hits, loads_per_token=loads)


def _window_end(token_of: list[int], pos: int, lookahead: int, never: int) -> int:
    """First request position beyond the known window (tokens token_of[pos] .. + lookahead - 1)."""
    if lookahead == 0:
        return pos + 1  # nothing ahead is known
    last_token = token_of[pos] + lookahead - 1
    lo, hi = pos, never  # binary search: token_of is non-decreasing
    while lo < hi:
        mid = (lo + hi) // 2
        if token_of[mid] <= last_token:
            lo = mid + 1
        else:
            hi = mid
    return lo


def decode_time(loads_per_token: torch.Tensor, *, compute_s: float, load_s: float, prefetch: bool) -> float:
    """Time to decode the tokens one after another, layer by layer, with one copy engine.

    On demand (``prefetch=False``) a layer's loads start only when the layer is reached (its
    router has just run), so compute waits for them: each layer takes ``loads * load_s +
    compute_s``. With a pre-gating router (``prefetch=True``) a token's loads for every layer
    are known when the token starts; the copy engine issues them back to back while earlier
    layers compute, and layer ``l`` starts when both layer ``l - 1`` and its own loads are done.

    Args:
        loads_per_token: (T, L) int64 expert loads of each token at each layer (:class:`CacheStats`).
        compute_s: seconds of compute per layer and token (> 0).
        load_s: seconds to move one expert to the device (>= 0).
        prefetch: overlap loads with compute (pre-gated) or not (layer-wise).

    Returns:
        Total seconds for the T tokens.
    """
    check_tensor("loads_per_token", loads_per_token, dims=2, dtype="integer", shape="(T, L)")
    if not compute_s > 0 or not load_s >= 0:
        raise ValueError(f"need compute_s > 0 and load_s >= 0, got {compute_s} and {load_s}")
    if not prefetch:
        return float(loads_per_token.sum()) * load_s + loads_per_token.numel() * compute_s
    clock = 0.0  # when the previous layer finished
    for row in loads_per_token.tolist():
        copy = clock  # the token's routes are known once it starts: the copy engine begins now
        for n_loads in row:
            copy += n_loads * load_s  # this layer's experts are in once the copy engine reaches them
            clock = max(clock, copy) + compute_s
    return clock
