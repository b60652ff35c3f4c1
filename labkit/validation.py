"""Argument checks shared by labkit's modules, so every error reads the same way."""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["check_finite_tensor", "check_int", "check_real", "check_tensor", "check_tokens", "describe"]


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


# --- Tensors: type, dtype and rank; token ids ----------------------------------------------------
# One wording for "what was passed" and one split of the errors: TypeError when the argument is not
# a tensor or has a dtype that is not allowed, ValueError when its rank or its values are wrong.

_DTYPE_KINDS = {"float": "float", "integer": "integer"}


def describe(value: object) -> str:
    """How an argument looks, for error messages: a tensor's shape and dtype, else its type's name."""
    if isinstance(value, torch.Tensor):
        return f"tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    return type(value).__name__


def _dtype_ok(t: torch.Tensor, dtype: str | torch.dtype | tuple[torch.dtype, ...]) -> bool:
    if dtype == "float":
        return t.is_floating_point()
    if dtype == "integer":
        return not t.is_floating_point() and not t.is_complex() and t.dtype != torch.bool
    return t.dtype in (dtype if isinstance(dtype, tuple) else (dtype,))


def _expected(dims: int | tuple[int, ...] | None, dtype: str | torch.dtype | tuple[torch.dtype, ...] | None,
              shape: str) -> str:
    """``"a 2-D float tensor (N, E)"``, ``"an int64 tensor"``, ...: what an argument must be."""
    words = []
    if dims is not None:
        words.append(" or ".join(f"{d}-D" for d in (dims if isinstance(dims, tuple) else (dims,))))
    if dtype is not None:
        names = dtype if isinstance(dtype, (str, tuple)) else (dtype,)
        words.append(names if isinstance(names, str) else "/".join(str(d).removeprefix("torch.") for d in names))
    words.append("tensor" + (f" {shape}" if shape else ""))
    phrase = " ".join(words)
    return ("an " if phrase[0] in "aeio" else "a ") + phrase


def check_tensor(name: str, value: object, *, dims: int | tuple[int, ...] | None = None,
                 dtype: str | torch.dtype | tuple[torch.dtype, ...] | None = None, shape: str = "") -> torch.Tensor:
    """Return ``value`` if it is a tensor of an allowed dtype and number of dimensions.

    Reads no values, so it never waits for a device. The message names the argument and what it
    must be, e.g. ``logits must be a 2-D float tensor (N, E), got tensor of shape (4,) and dtype
    torch.int64``.

    Args:
        name: the argument's name, for the message.
        value: what the caller passed.
        dims: the number of dimensions, or a tuple of the numbers allowed; None for any.
        dtype: ``"float"`` (any floating-point dtype), ``"integer"`` (any integer dtype, not bool),
            one dtype or a tuple of dtypes; None for any.
        shape: the expected shape in the module's letters, for the message (e.g. ``"(N, E)"``).

    Raises:
        TypeError: not a tensor, or a dtype that is not allowed.
        ValueError: a number of dimensions that is not allowed.
    """
    if dtype is not None and isinstance(dtype, str) and dtype not in _DTYPE_KINDS:
        raise ValueError(f"dtype must be 'float', 'integer', a torch.dtype or a tuple of them, got {dtype!r}")
    if not isinstance(value, torch.Tensor) or (dtype is not None and not _dtype_ok(value, dtype)):
        raise TypeError(f"{name} must be {_expected(dims, dtype, shape)}, got {describe(value)}")
    if dims is not None and value.dim() not in (dims if isinstance(dims, tuple) else (dims,)):
        raise ValueError(f"{name} must be {_expected(dims, dtype, shape)}, got {describe(value)}")
    return value


def check_tokens(name: str, value: object, *, dims: int | tuple[int, ...], vocab_size: int = 256, shape: str = "",
                 min_length: int = 0) -> torch.Tensor:
    """Return ``value`` as int64 if it is an integer tensor of token ids in ``[0, vocab_size)``.

    Bytes are the ids of ``vocab_size=256``. A non-empty tensor costs one ``min`` and one ``max``
    (one device sync each on a GPU), so check once at the public entry, not in a training step.

    Args:
        name: the argument's name, for the message.
        value: what the caller passed.
        dims: the number of dimensions, or a tuple of the numbers allowed.
        vocab_size: the number of token values.
        shape: the expected shape, for the message (e.g. ``"(Q, L)"``).
        min_length: the fewest tokens allowed along the last dimension.

    Raises:
        TypeError: not an integer tensor.
        ValueError: a number of dimensions not allowed, a last dimension shorter than
            ``min_length``, or an id outside ``[0, vocab_size)``.
    """
    check_int("vocab_size", vocab_size, 1)
    check_int("min_length", min_length, 0)
    tokens = check_tensor(name, value, dims=dims, dtype="integer", shape=shape)
    if tokens.dim() and tokens.shape[-1] < min_length:
        raise ValueError(f"{name} must hold at least {min_length} token(s) along its last dimension, "
                         f"got shape {tuple(tokens.shape)}")
    if tokens.numel():
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= vocab_size:
            raise ValueError(f"{name} must be integers in [0, {vocab_size - 1}] (token ids), got values in "
                             f"[{lo}, {hi}]")
    return tokens.long()
