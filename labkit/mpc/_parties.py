"""Worker functions for running a secure program in real processes, and misbehaving programs.

:func:`party_main` is what :func:`labkit.dist.launch` runs in each of the three spawned
processes (ranks 0 and 1 compute, rank 2 deals): it reads only its own private input from
disk, builds the :class:`~labkit.mpc.engine.Party` on a ``torch.distributed`` transport,
runs the program and sends back its output, its message log and its time. The failing
programs (:func:`raise_at_party`, :func:`exit_at_party`) let the tests check that a party
that raises or dies ends the run with an error instead of a hang.

Section: chapter 14, "Sharing secrets".
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .engine import Party

__all__ = ["exit_at_party", "party_main", "raise_at_party", "secrecy_probe"]


def party_main(rank: int, world_size: int, program: Callable[..., Any], args: tuple, kwargs: dict,
               input_dir: str, insecure_seed: int | None, frac_bits: int, keep_payloads: bool,
               session: str) -> dict[str, Any]:
    """Run ``program(ctx, *args, **kwargs)`` as party ``rank`` of a 3-process run.

    Args:
        rank, world_size: from the launcher (world_size is 3).
        program: an importable module-level function.
        args, kwargs: the program's public arguments (the same at every party).
        input_dir: folder where ``party<rank>.pt`` holds this party's private input, if any.
        insecure_seed, frac_bits, keep_payloads, session: as in :func:`labkit.mpc.runtime.run`
            (without ``insecure_seed`` the party seeds its generator here, in its own process).

    Returns:
        ``{"output": ..., "messages": [Message, ...], "program_s": float}``.
    """
    import torch.distributed as dist

    from .comm import DistTransport

    if world_size != 3:
        raise ValueError(f"a secure run needs 3 processes (P0, P1, dealer), got world_size={world_size}")
    path = Path(input_dir) / f"party{rank}.pt"
    private = torch.load(path, weights_only=False) if path.exists() else None  # only its own file
    ctx = Party(rank, DistTransport(rank), frac_bits=frac_bits, session=session, insecure_seed=insecure_seed,
                private=private, keep_payloads=keep_payloads)
    start = time.perf_counter()
    output = program(ctx, *args, **kwargs)
    ctx.transport.flush()
    elapsed = time.perf_counter() - start
    dist.barrier()  # nobody tears the group down while a peer still reads its last message
    return {"output": output, "messages": ctx.messages, "program_s": elapsed}


def raise_at_party(ctx: Party, bad_rank: int, shape: tuple[int, ...] = (4,)) -> Any:
    """A program whose party ``bad_rank`` raises in the middle of a product."""
    x = ctx.input(0, torch.ones(shape), shape=shape)
    if ctx.rank == bad_rank:
        raise RuntimeError(f"party {bad_rank} fails on purpose")
    return ctx.reveal(x * x)


def exit_at_party(ctx: Party, bad_rank: int, shape: tuple[int, ...] = (4,)) -> Any:
    """A program whose party ``bad_rank`` dies without a word (``os._exit``) mid-protocol."""
    x = ctx.input(0, torch.ones(shape), shape=shape)
    if ctx.rank == bad_rank:
        os._exit(3)
    return ctx.reveal(x * x)


def secrecy_probe(ctx: Party, shape: tuple[int, ...] = (64,)) -> dict[str, Any]:
    """A product and a ReLU of P0's ``x`` and P1's ``y``, revealed; each party also returns its
    generator's seed and every payload it received (run with ``keep_payloads=True``).

    For tests of secrecy only: an honest party never hands out its seed.
    """
    x = ctx.input(0, ctx.private, shape=shape)
    y = ctx.input(1, ctx.private, shape=shape)
    out = ctx.reveal((x * y).relu())
    return {"seed": ctx.generator.seed, "received": list(ctx.received), "x_share": x.share, "secure": ctx.secure,
            "output": out}
