"""Argument checks shared by labkit's modules, so every error reads the same way."""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["check_finite_tensor", "check_int", "check_real"]


def check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    """Return ``value`` as an int if it is an integer (Python or NumPy, not bool) in ``[low, high]``.

    Raises:
        TypeError: not an integer.
        ValueError: below ``low`` or above ``high``, naming the argument and the range.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return int(value)


def check_real(name: str, value: object, low: float | None = None, *, strict: bool = False) -> float:
    """Return ``value`` as a float if it is a finite real number at least ``low``.

    Python and NumPy integers and floats count as real numbers; bool, strings and tensors do not.

    Args:
        name: the argument's name, for the message.
        value: what the caller passed.
        low: the smallest value allowed; None for no bound.
        strict: require ``value > low`` instead of ``value >= low``.

    Raises:
        TypeError: not a real number.
        ValueError: NaN or infinite, or below the bound, naming the argument and the value.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {value}")
    if low is not None and (number <= low if strict else number < low):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {low}, got {value}")
    return number


def check_finite_tensor(name: str, x: torch.Tensor, *, op: str | None = None) -> None:
    """Raise ``ValueError`` if the tensor ``x`` holds NaN or infinite values, saying how many.

    A finite tensor costs one ``torch.isfinite(x).all()`` (one device sync on a GPU); the values are
    counted only on the way to the error.

    Args:
        name: the argument's name, for the message.
        x: the tensor to check (integer tensors are always finite).
        op: the function checking, put in front of the message when given.
    """
    if bool(torch.isfinite(x).all()):
        return
    n_nan = int(torch.isnan(x).sum())
    n_inf = int(torch.isinf(x).sum())
    where, count = f"{op}: " if op else "", n_nan + n_inf
    raise ValueError(f"{where}{name} has {count} non-finite value{'s' if count > 1 else ''} of {x.numel()} "
                     f"({n_nan} NaN, {n_inf} infinite); every value must be finite")
