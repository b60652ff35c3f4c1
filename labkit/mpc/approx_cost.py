"""What PUMA's approximations cost, in closed form, and running one of them in secret.

Every approximation of :mod:`labkit.mpc.approx` is a fixed sequence of the engine's protocols
(products, squares, comparisons), so its rounds and bytes follow from :mod:`labkit.mpc.cost`
without running it; the chapter checks each formula against the message log of a real run.
:func:`secure_approx` runs one approximation on a secret input with the engine.

Paper: PUMA: Secure Inference of LLaMA-7B in Five Minutes (Dong et al., 2023).

Section: chapter 14, "Non-linearities the PUMA way".
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..validation import check_int
from . import approx, cost
from .approx import reciprocal_guess, rsqrt_thresholds

__all__ = ["approx_program", "exp_cost", "gelu_cost", "layer_norm_cost", "poly_cost", "reciprocal_cost",
           "rsqrt_cost", "secure_approx", "softmax_cost"]


# ----- closed-form costs (checked against the engine's message log) ----------------------------
def poly_cost(n: int, degree: int) -> Any:
    """Cost of the powers ``t^2 .. t^degree`` of ``n`` values (the coefficients are public: free).

    Round 1 squares ``t``; each later round multiplies the top power (``n`` values) by ``m``
    lower ones at once: ``mul_cost(n, m n, m n)``.
    """
    n, d = check_int("n", n, 0), check_int("degree", degree, 0, 16)
    total, top = cost.Cost(), 1
    while top < d:
        m = min(top, d - top)
        total = total + (cost.square_cost(n) if top == 1 else cost.mul_cost(n, m * n, m * n))
        top += m
    return total


def gelu_cost(n: int, *, degree_low: int = 3, degree_high: int = 8) -> Any:
    """:func:`gelu` on ``n`` values: one comparison of ``3 n`` values, two polynomials, one select."""
    return (cost.msb_cost(3 * n) + poly_cost(n, degree_low) + poly_cost(n, degree_high)
            + cost.mul_cost(3 * n, 3 * n, 3 * n))


def exp_cost(n: int, *, squarings: int = 7) -> Any:
    """:func:`exp` on ``n`` values: the cut comparison, ``squarings`` squares, one bit product."""
    return cost.msb_cost(n) + cost.square_cost(n) * check_int("squarings", squarings, 1, 14) + cost.mul_cost(n)


def reciprocal_cost(n: int, *, iterations: int = 7) -> Any:
    """:func:`reciprocal` on ``n`` values: two products per Newton step."""
    return cost.mul_cost(n) * (2 * check_int("iterations", iterations, 0, 30))


def rsqrt_cost(n: int, *, low: float = 2.0**-6, high: float = 2.0**12, iterations: int = 3) -> Any:
    """:func:`rsqrt` on ``n`` values: one batched comparison with every threshold, three products per step."""
    thresholds, _ = rsqrt_thresholds(low, high)
    guess = cost.msb_cost(len(thresholds) * n) if thresholds else cost.Cost()
    return guess + cost.mul_cost(n) * (3 * check_int("iterations", iterations, 0, 30))


def softmax_cost(shape: tuple[int, ...], *, squarings: int = 7, iterations: int | None = None) -> Any:
    """:func:`softmax` over the last dimension of ``shape``: max tree, exp, reciprocal, product."""
    n, t = math.prod(shape), shape[-1]
    rows = n // t
    if iterations is None:
        e0 = reciprocal_guess(1.0, float(max(t, 2)))[2]
        iterations = max(0, math.ceil(math.log2(math.log(1e-6) / math.log(e0))))
    return (cost.max_cost(tuple(shape), -1) + exp_cost(n, squarings=squarings)
            + reciprocal_cost(rows, iterations=iterations) + cost.mul_cost(n, rows, n))


def layer_norm_cost(shape: tuple[int, ...], *, shared_weight: bool = True, var_low: float = 2.0**-12,
                    var_high: float = 2.0**6, iterations: int = 3) -> Any:
    """:func:`layer_norm` over the last dimension of ``shape``: a square, the rsqrt of each row,
    the normalising product and (when the weight is secret) the product by the weight."""
    n, d = math.prod(shape), shape[-1]
    rows = n // d
    out = (cost.square_cost(n) + rsqrt_cost(rows, low=d * var_low, high=d * var_high, iterations=iterations)
           + cost.mul_cost(n, rows, n))
    return out + cost.mul_cost(n, d, n) if shared_weight else out


# ----- running one approximation in secret --------------------------------------------------
_FUNCTIONS = ("gelu", "gelu_global_poly", "gelu_relu", "exp", "reciprocal", "rsqrt", "softmax", "layer_norm")


def approx_program(ctx: Any, name: str, shape: tuple[int, ...], kwargs: dict[str, Any]) -> Any:
    """Secure program: P0 inputs ``x`` of ``shape``, both parties compute ``name(x, **kwargs)``
    inside scope ``name`` and the result is revealed to both (importable: runs in processes)."""
    if name not in _FUNCTIONS:
        raise ValueError(f"name must be one of {_FUNCTIONS}, got {name!r}")
    x = ctx.input(0, ctx.private, shape=tuple(shape))
    with ctx.scope(name):
        y = getattr(approx, name)(x, **kwargs)
    return ctx.reveal(y)


def secure_approx(name: str, x: torch.Tensor, *, insecure_seed: int | None = None, frac_bits: int = 16,
                  runtime: str = "simulator", audit_truncation: bool = False, **kwargs: Any) -> Any:
    """Evaluate approximation ``name`` on a secret ``x`` (owned by P0) with the engine.

    The parties draw private randomness (``insecure_seed`` and ``audit_truncation`` as in
    :func:`labkit.mpc.run`).

    Returns:
        The :class:`~labkit.mpc.MPCRun`: ``.output`` the revealed float64 result,
        ``.cost(scope=name)`` its measured cost.
    """
    from .runtime import run

    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    return run(approx_program, args=(name, tuple(x.shape), kwargs), inputs={0: x}, insecure_seed=insecure_seed,
               frac_bits=frac_bits, runtime=runtime, audit_truncation=audit_truncation)
