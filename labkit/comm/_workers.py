"""Worker functions that :func:`labkit.dist.launch` runs in each process for chapter 11, section 1.

They live in a module because spawned children import a worker by name. Each takes ``rank`` and
``world_size`` first. :func:`check_collectives` runs every algorithm of
:mod:`labkit.comm.collectives` against gloo's own collectives; :func:`time_collectives` times our
ring all-reduce against ``dist.all_reduce``; :func:`wrong_shape_on_rank` makes one rank pass a
tensor of another shape, so a test can see the error surface. Inputs are drawn from
``seed + rank`` so the parent can rebuild every rank's tensor for the simulator.

Section: chapter 11, "Collectives from send/recv".
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

from .collectives import (
    ByteCounter, all_to_all, ring_all_gather, ring_all_reduce, ring_reduce_scatter, tree_all_reduce,
)

__all__ = ["check_collectives", "check_collectives_sizes", "rank_input", "time_collectives", "wrong_shape_on_rank"]


def rank_input(rank: int, *, numel: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Rank ``rank``'s input: ``numel`` standard normals from ``seed * 1000 + rank`` (ints: -9..9)."""
    gen = torch.Generator().manual_seed(seed * 1000 + rank)
    if dtype.is_floating_point:
        return torch.randn(numel, generator=gen, dtype=torch.float64).to(dtype)
    return torch.randint(-9, 10, (numel,), generator=gen, dtype=dtype)


def check_collectives(rank: int, world_size: int, *, numel: int, seed: int, dtype: torch.dtype = torch.float32,
                      shape: Sequence[int] | None = None, keep_outputs: bool = True) -> dict[str, Any]:
    """Run each of our collectives and gloo's counterpart on the same input; compare.

    The input is :func:`rank_input`, reshaped to ``shape`` when given (its product must be ``numel``).

    Returns:
        ``{"max_error": {name: float}, "bytes": {name: (sent, received)}, "outputs": {name: tensor}}``
        for names ``reduce_scatter``, ``all_gather``, ``ring_all_reduce``, ``tree_all_reduce`` and
        ``all_to_all``; the error is the max absolute difference from gloo's result on this rank.
        ``outputs`` is empty unless ``keep_outputs``.
    """
    x = rank_input(rank, numel=numel, seed=seed, dtype=dtype)
    if shape is not None:
        x = x.reshape(tuple(shape))
    reference = x.clone()
    dist.all_reduce(reference)
    ref_chunks = reference.reshape(-1).tensor_split(world_size)
    gathered = [torch.empty_like(x) for _ in range(world_size)]
    dist.all_gather(gathered, x)
    splits = [c.numel() for c in x.reshape(-1).tensor_split(world_size)]
    received = torch.empty(world_size * splits[rank], dtype=dtype)
    dist.all_to_all_single(received, x.reshape(-1), output_split_sizes=[splits[rank]] * world_size,
                           input_split_sizes=splits)

    expected = {
        "reduce_scatter": ref_chunks[rank], "all_gather": torch.stack(gathered),
        "ring_all_reduce": reference, "tree_all_reduce": reference, "all_to_all": received,
    }
    functions = {
        "reduce_scatter": lambda t, c: ring_reduce_scatter(t, counter=c),
        "all_gather": lambda t, c: ring_all_gather(t, counter=c),
        "ring_all_reduce": lambda t, c: ring_all_reduce(t.clone(), counter=c),
        "tree_all_reduce": lambda t, c: tree_all_reduce(t.clone(), counter=c),
        "all_to_all": lambda t, c: all_to_all(t, counter=c),
    }
    errors, counts, outputs = {}, {}, {}
    for name, fn in functions.items():
        counter = ByteCounter()
        out = fn(x, counter)
        if out.shape != expected[name].shape:
            raise AssertionError(f"{name}: shape {tuple(out.shape)} != expected {tuple(expected[name].shape)}")
        errors[name] = (out.double() - expected[name].double()).abs().max().item() if out.numel() else 0.0
        counts[name] = (counter.sent, counter.received)
        if keep_outputs:
            outputs[name] = out
    return {"max_error": errors, "bytes": counts, "outputs": outputs}


def check_collectives_sizes(rank: int, world_size: int, *, numels: Sequence[int], seed: int) -> list[dict[str, Any]]:
    """:func:`check_collectives` (float32, no outputs kept) at each of ``numels``, in one launch."""
    return [check_collectives(rank, world_size, numel=n, seed=seed, keep_outputs=False) for n in numels]


def wrong_shape_on_rank(rank: int, world_size: int, *, bad_rank: int, numel: int,
                        check_shapes: bool = True) -> list[float]:
    """Every rank ring-all-reduces ``numel`` ones, except ``bad_rank``, which passes ``numel + 1``.

    With ``check_shapes=False`` the mismatch is left for gloo to find, mid-collective.
    """
    x = torch.ones(numel + (rank == bad_rank))
    return ring_all_reduce(x, check_shapes=check_shapes).tolist()


def time_collectives(rank: int, world_size: int, *, sizes_bytes: Sequence[int], repeats: int,
                     warmup: int = 1) -> list[dict[str, Any]] | None:
    """Time our ring all-reduce and gloo's ``dist.all_reduce`` on float32 tensors of each size.

    Each measurement starts after a barrier and ends when this rank's call returns; the time of
    one run is the slowest rank's (gathered with a max all-reduce, outside the timed region). The
    two algorithms alternate within each repeat, so a burst of load from elsewhere on the machine
    hits both and the per-repeat ratio ``gloo / ring`` (a paired comparison) cancels most of it.

    Returns:
        On rank 0, one dict per size: ``nbytes``, ``ring_s`` and ``gloo_s`` (median seconds), and
        ``ring_runs``, ``gloo_runs`` (every repeat, in order); ``None`` on the other ranks.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats}, {warmup}")
    runs = {
        "ring_s": lambda t: ring_all_reduce(t, check_shapes=False),  # shapes equal by construction
        "gloo_s": lambda t: dist.all_reduce(t),
    }
    table = []
    for nbytes in sizes_bytes:
        x = torch.ones(max(1, int(nbytes) // 4))
        times: dict[str, list[float]] = {name: [] for name in runs}
        for i in range(warmup + repeats):
            order = list(runs.items()) if i % 2 == 0 else list(runs.items())[::-1]  # no order bias
            for name, fn in order:
                dist.barrier()
                start = time.perf_counter()
                fn(x)
                elapsed = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
                dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
                if i >= warmup:
                    times[name].append(elapsed.item())
                x.fill_(1.0)  # keep values bounded
        table.append({"nbytes": x.numel() * 4, **{k: statistics.median(v) for k, v in times.items()},
                      **{k.replace("_s", "_runs"): v for k, v in times.items()}})
    return table if rank == 0 else None
