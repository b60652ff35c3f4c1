"""labkit.moe.grouped_gemm (reference path): a hand-checked example, per-row equivalence, gradients, errors."""

from __future__ import annotations

import pytest
import torch

from labkit.moe.grouped_gemm import check_grouped, grouped_mm, grouped_mm_reference
from labkit.testing import assert_close


def test_grouped_mm_by_hand() -> None:
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    weight = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [1.0, 0.0]]])
    offsets = torch.tensor([0, 1, 3])  # row 0 -> expert 0, rows 1-2 -> expert 1
    assert grouped_mm_reference(x, weight, offsets).tolist() == [[1.0, 2.0], [1.0, 0.0], [1.0, 1.0]]


@pytest.mark.parametrize("counts", [[10, 0, 30, 34, 0], [0, 0, 0], [5]])
def test_grouped_mm_equals_per_row_product(counts: list[int]) -> None:
    g = torch.Generator().manual_seed(len(counts))
    offsets = torch.tensor([0] + counts).cumsum(0)
    x = torch.randn(sum(counts), 7, generator=g)
    weight = torch.randn(len(counts), 7, 3, generator=g)
    expert_of_row = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    expected = torch.einsum("ad,adf->af", x, weight[expert_of_row])
    out = grouped_mm(x, weight, offsets, backend="reference")
    assert out.shape == (sum(counts), 3) and out.dtype == x.dtype
    assert_close(out, expected)


def test_grouped_mm_is_differentiable() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 4, 2, generator=g, dtype=torch.float64, requires_grad=True)
    offsets = torch.tensor([0, 2, 2, 6])
    assert torch.autograd.gradcheck(lambda a, b: grouped_mm_reference(a, b, offsets), (x, weight))


def test_check_grouped_rejects_bad_inputs() -> None:
    x, weight, offsets = torch.zeros(5, 4), torch.zeros(2, 4, 3), torch.tensor([0, 3, 5])
    check_grouped(x, weight, offsets)  # the good case passes
    bad = [
        ((torch.zeros(5), weight, offsets), "x must be a 2-D tensor"),
        ((x, torch.zeros(4, 3), offsets), "weight must be a 3-D tensor"),
        ((torch.zeros(5, 6), weight, offsets), "x has width 6 but weight expects D=4"),
        ((x.half(), weight, offsets), "must share a dtype"),
        ((x, weight, torch.tensor([0, 5])), r"shape \(E \+ 1,\)"),
        ((x, weight, offsets.int()), "int64"),
        ((x, weight, torch.tensor([1, 3, 5])), "start at 0"),
        ((x, weight, torch.tensor([0, 4, 3])), "non-decreasing"),
        ((x, weight, torch.tensor([0, 3, 4])), "end at A=5"),
    ]
    for args, message in bad:
        with pytest.raises(ValueError, match=message):
            grouped_mm_reference(*args)
