"""Tolerances and comparisons shared by tests and notebooks: one place per dtype and backend.

Triton kernels may reorder floating-point sums (blocked reductions), so they get slightly looser
tolerances than the reference compared with itself; integer results must match exactly.
"""

from __future__ import annotations

import torch

__all__ = ["assert_close", "max_abs_error", "tolerances"]

_FLOAT_TOL: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (1e-5, 1e-6),
    torch.float16: (1e-3, 1e-3),
    torch.bfloat16: (1.6e-2, 1e-2),
}


def tolerances(dtype: torch.dtype, *, backend: str = "reference") -> tuple[float, float]:
    """``(rtol, atol)`` for comparing results of ``dtype`` produced by ``backend``.

    Integers and booleans compare exactly (0, 0). The Triton backend gets 4x the float tolerances.
    """
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype, got {type(dtype).__name__}")
    if backend not in ("reference", "triton"):
        raise ValueError(f"backend must be 'reference' or 'triton', got {backend!r}")
    if dtype.is_complex:
        raise ValueError(f"no tolerance defined for {dtype}")
    if not dtype.is_floating_point:
        return 0.0, 0.0
    if dtype not in _FLOAT_TOL:
        raise ValueError(f"no tolerance defined for {dtype}")
    rtol, atol = _FLOAT_TOL[dtype]
    scale = 4.0 if backend == "triton" else 1.0
    return rtol * scale, atol * scale


def max_abs_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest absolute difference, computed in float64 on CPU; shapes must match."""
    if actual.shape != expected.shape:
        raise ValueError(f"shape mismatch: {tuple(actual.shape)} vs {tuple(expected.shape)}")
    if actual.numel() == 0:
        return 0.0
    return (actual.detach().double().cpu() - expected.detach().double().cpu()).abs().max().item()


def assert_close(actual: torch.Tensor, expected: torch.Tensor, *, backend: str = "reference") -> None:
    """``torch.testing.assert_close`` with the tolerances of :func:`tolerances`."""
    rtol, atol = tolerances(expected.dtype, backend=backend)
    torch.testing.assert_close(actual.cpu(), expected.cpu(), rtol=rtol, atol=atol)
