"""Ready-made secure programs: importable, so they run in real processes as well as threads.

Paper: PUMA: Secure Inference of LLaMA-7B in Five Minutes (Dong et al., 2023): a client's
input and a model owner's weights meet only as shares; these programs are the smallest
versions of that setting.

Each takes the party context first, as :func:`labkit.mpc.run` calls it, then public
arguments (shapes, the operation's name). Private inputs come from ``ctx.private``: P0
(the client) owns ``x``, P1 (the model owner) owns ``y`` or the weights. Every program
labels its protocol steps with scopes, so ``run.cost(scope=...)`` isolates one of them.

- :func:`add_program`: share two tensors, add them (free), reveal the sum;
- :func:`op_program`: one operation on ``x`` (and ``y``): the cost-formula tests use it;
- :func:`mlp_program`: ``relu(x @ W1) @ W2``, revealed to the client only.

Section: chapter 14, "Multiplying in secret".
"""

from __future__ import annotations

from typing import Any

import torch

from .compare import argmax_along, max_along, msb, where
from .engine import Party

__all__ = ["OPS", "add_program", "mlp_program", "op_program", "private_part"]

OPS = ("add", "mul", "square", "matmul", "mul_public", "truncate", "msb", "relu", "lt", "where", "max", "argmax")


def private_part(ctx: Party, owner: int, key: str | None = None) -> Any:
    """``ctx.private`` (or its entry ``key``) at party ``owner``, ``None`` elsewhere."""
    if ctx.rank != owner or ctx.private is None:
        return None
    return ctx.private[key] if key is not None else ctx.private


def add_program(ctx: Party, shape: tuple[int, ...]) -> dict[str, Any]:
    """P0 shares ``x``, P1 shares ``y``; both add their shares (no message); the sum is revealed.

    Returns:
        ``{"sum": x + y, "x_share": this party's share of x}`` (the share shows that it
        looks like noise; ``None`` entries at the dealer).
    """
    x = ctx.input(0, private_part(ctx, 0), shape=shape)
    y = ctx.input(1, private_part(ctx, 1), shape=shape)
    with ctx.scope("add"):
        z = x + y  # each party adds its own shares: free
    return {"sum": ctx.reveal(z), "x_share": x.share}


def op_program(ctx: Party, op: str, shape_x: tuple[int, ...], shape_y: tuple[int, ...] | None = None,
               *, bits: int = 16) -> torch.Tensor | None:
    """Input ``x`` (P0) and, for binary ops, ``y`` (P1); apply ``op`` in scope ``op``; reveal.

    Args:
        op: one of :data:`OPS`. ``mul_public`` multiplies by 0.5, ``truncate`` divides by
            ``2^bits``, ``lt`` is ``x < y``, ``where`` selects ``x`` where ``x > y`` else
            ``y``, ``max`` and ``argmax`` reduce the last dimension.
        shape_x, shape_y: input shapes (``shape_y`` for add, mul, matmul, lt, where).

    Returns:
        The revealed result at P0 and P1 (``None`` at the dealer).
    """
    if op not in OPS:
        raise ValueError(f"op must be one of {OPS}, got {op!r}")
    x = ctx.input(0, private_part(ctx, 0), shape=shape_x)
    y = ctx.input(1, private_part(ctx, 1), shape=shape_y) if shape_y is not None else None
    binary = {"add", "mul", "matmul", "lt", "where"}
    if (op in binary) != (y is not None):
        raise ValueError(f"op {op!r} {'needs' if op in binary else 'takes no'} shape_y")
    with ctx.scope(op):
        if op == "add":
            z = x + y
        elif op == "mul":
            z = x * y
        elif op == "square":
            z = x.square()
        elif op == "matmul":
            z = x @ y
        elif op == "mul_public":
            z = x * 0.5
        elif op == "truncate":
            z = x.truncate(bits)
        elif op == "msb":
            z = msb(x)
        elif op == "relu":
            z = x.relu()
        elif op == "lt":
            z = x < y
        elif op == "where":
            z = where(x > y, x, y)
        elif op == "max":
            z = max_along(x, dim=-1)
        else:
            z = argmax_along(x, dim=-1)
    return ctx.reveal(z)


def mlp_program(ctx: Party, shape_x: tuple[int, ...], hidden: int, width_out: int) -> torch.Tensor | None:
    """A two-layer perceptron on a secret input with secret weights: ``relu(x @ W1) @ W2``.

    P0 owns ``x`` (shape ``(B, D)``); P1 owns ``{"w1": (D, hidden), "w2": (hidden, width_out)}``.
    The result is revealed to P0 only: the model owner learns nothing.

    Returns:
        The output ``(B, width_out)`` at P0, ``None`` at P1 and the dealer.
    """
    d = shape_x[-1]
    x = ctx.input(0, private_part(ctx, 0), shape=shape_x)
    w1 = ctx.input(1, private_part(ctx, 1, "w1"), shape=(d, hidden))
    w2 = ctx.input(1, private_part(ctx, 1, "w2"), shape=(hidden, width_out))
    with ctx.scope("layer1"):
        h = (x @ w1).relu()
    with ctx.scope("layer2"):
        y = h @ w2
    return ctx.reveal(y, to=0)
