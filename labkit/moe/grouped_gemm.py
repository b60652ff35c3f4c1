"""Grouped matrix multiplication over experts: one launch for every expert's GEMM.

After :func:`labkit.moe.gating.permute_tokens` the activations are sorted by expert, so
expert ``e`` multiplies rows ``offsets[e]:offsets[e+1]`` by its own weight ``weight[e]``.
The reference loops over experts (one small matmul each, which is what a naive MoE does);
the Triton path in :mod:`labkit.moe._kernels` runs all of them in one kernel whose programs
each own a tile of one expert's rows, so experts with few tokens do not cost a launch each.

Shapes: A sorted rows, E experts, D input width, F output width.
Section: chapter 05, "Top-k routing from scratch".
"""

from __future__ import annotations

import torch

from labkit.backend import Op

__all__ = ["grouped_mm", "grouped_mm_reference", "check_grouped"]


def check_grouped(x: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor) -> None:
    """Raise a clear ``ValueError`` unless ``x`` (A, D), ``weight`` (E, D, F), ``offsets`` (E + 1,) agree."""
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        raise ValueError(f"x must be a 2-D tensor (A, D), got {getattr(x, 'shape', type(x).__name__)}")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 3:
        raise ValueError(f"weight must be a 3-D tensor (E, D, F), got {getattr(weight, 'shape', type(weight).__name__)}")
    if x.shape[1] != weight.shape[1]:
        raise ValueError(f"x has width {x.shape[1]} but weight expects D={weight.shape[1]}")
    if x.dtype != weight.dtype:
        raise ValueError(f"x and weight must share a dtype, got {x.dtype} and {weight.dtype}")
    if not isinstance(offsets, torch.Tensor) or offsets.dtype != torch.int64 or offsets.shape != (weight.shape[0] + 1,):
        raise ValueError(f"offsets must be an int64 tensor of shape (E + 1,) = ({weight.shape[0] + 1},)")
    off = offsets.tolist()
    if off[0] != 0 or off[-1] != x.shape[0] or any(b < a for a, b in zip(off, off[1:])):
        raise ValueError(f"offsets must start at 0, be non-decreasing and end at A={x.shape[0]}, got {off}")


def grouped_mm_reference(x: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """``out[offsets[e]:offsets[e+1]] = x[offsets[e]:offsets[e+1]] @ weight[e]`` for every expert.

    Args:
        x: activations sorted by expert.
        weight: one (D, F) matrix per expert.
        offsets: row boundaries of each expert's group; empty groups are allowed.

    Returns:
        The grouped product, same dtype as ``x``; differentiable.

    Shapes:
        x (A, D), weight (E, D, F), offsets (E + 1,) -> (A, F).
    """
    check_grouped(x, weight, offsets)
    off = offsets.tolist()
    parts = [x[off[e]:off[e + 1]] @ weight[e] for e in range(weight.shape[0])]  # one GEMM per expert
    return torch.cat(parts, dim=0) if parts else x.new_zeros(0, weight.shape[2])


#: Grouped GEMM; Triton path in :mod:`labkit.moe._kernels`.
grouped_mm = Op("grouped_mm", reference=grouped_mm_reference, triton="labkit.moe._kernels:grouped_mm_triton")
