"""Fused scaled add, ``out = alpha * x + y`` (BLAS's *axpy*): the smallest honest kernel.

Eager PyTorch computes ``alpha * x`` into a temporary, then adds ``y``: it reads ``x``, writes
the temporary, reads it and ``y`` back, and writes ``out`` (5 passes over memory). A fused
kernel reads ``x`` and ``y`` once and writes ``out`` once (3 passes), so on a GPU, where this op
is bound by memory bandwidth, it should approach 5/3 of eager's speed. The reference below is
what the Triton kernel in ``_kernels.py`` must reproduce, element for element.

Shapes: any shape; ``x`` and ``y`` must match.
Section: chapter 00, "How this book runs".
"""

from __future__ import annotations

import torch

from ..backend import Op

__all__ = ["scaled_add", "scaled_add_reference"]


def _check(x: torch.Tensor, y: torch.Tensor, alpha: float) -> None:
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError("scaled_add: x and y must be tensors")
    if x.shape != y.shape:
        raise ValueError(f"scaled_add: x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.dtype != y.dtype or not x.dtype.is_floating_point:
        raise TypeError(f"scaled_add: x and y must share one floating dtype, got {x.dtype} and {y.dtype}")
    if x.device != y.device:
        raise ValueError(f"scaled_add: x and y must be on one device, got {x.device} and {y.device}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"scaled_add: alpha must be a Python number, got {type(alpha).__name__}")


def scaled_add_reference(x: torch.Tensor, y: torch.Tensor, *, alpha: float = 1.0) -> torch.Tensor:
    """``alpha * x + y`` in eager PyTorch (the reference).

    Args:
        x, y: tensors of the same shape, floating dtype and device.
        alpha: the scale of ``x``.

    Returns:
        A new tensor like ``x``.
    """
    _check(x, y, alpha)
    return alpha * x + y


#: ``scaled_add(x, y, alpha=..., backend=None)``: reference or Triton, see :mod:`labkit.backend`.
scaled_add = Op("scaled_add", reference=scaled_add_reference, triton="labkit.intro._kernels:scaled_add_triton")
