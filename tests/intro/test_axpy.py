"""labkit.intro: scaled add, reference and Triton (the launch grid is in test_grid.py)."""

from __future__ import annotations

import pytest
import torch

from labkit.intro import scaled_add, scaled_add_reference
from labkit.testing import assert_close


def test_reference_by_hand() -> None:
    x, y = torch.tensor([1.0, -2.0, 4.0]), torch.tensor([0.5, 0.5, 0.5])
    assert torch.equal(scaled_add_reference(x, y, alpha=2.0), torch.tensor([2.5, -3.5, 8.5]))


def test_reference_invariant_alpha_zero_is_y() -> None:
    y = torch.randn(5, 7)
    assert torch.equal(scaled_add(torch.randn(5, 7), y, alpha=0.0, backend="reference"), y)


@pytest.mark.parametrize("x, y, alpha, err, msg", [
    (torch.ones(3), torch.ones(4), 1.0, ValueError, "same shape"),
    (torch.ones(3), torch.ones(3, dtype=torch.float64), 1.0, TypeError, "floating dtype"),
    (torch.ones(3, dtype=torch.int32), torch.ones(3, dtype=torch.int32), 1, TypeError, "floating dtype"),
    (torch.ones(3), torch.ones(3), torch.tensor(1.0), TypeError, "alpha"),
    ([1.0], torch.ones(1), 1.0, TypeError, "tensors"),
])
def test_reference_bad_inputs(x, y, alpha, err, msg) -> None:
    with pytest.raises(err, match=msg):
        scaled_add_reference(x, y, alpha=alpha)


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(1,), (37, 53), (3, 1, 129), (0,)])
@pytest.mark.parametrize("block_size", [16, 128])
def test_triton_matches_reference(triton_kernels, device: str, shape: tuple[int, ...], block_size: int) -> None:
    kernels = triton_kernels("labkit.intro._kernels")
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(shape, generator=g).to(device), torch.randn(shape, generator=g).to(device)
    out = kernels.scaled_add_triton(x, y, alpha=-0.3, block_size=block_size)
    assert out.shape == x.shape
    assert_close(out, scaled_add_reference(x, y, alpha=-0.3), backend="triton")


@pytest.mark.gpu
def test_triton_through_the_dispatcher_on_non_contiguous_input(triton_kernels, device: str) -> None:
    triton_kernels("labkit.intro._kernels")
    x = torch.randn(40, 30, device=device).t()  # a transposed, non-contiguous view
    y = torch.randn(30, 40, device=device)
    assert_close(scaled_add(x, y, alpha=2.0, backend="triton"), 2.0 * x + y, backend="triton")


@pytest.mark.gpu
def test_triton_rejects_bad_block_size(triton_kernels, device: str) -> None:
    kernels = triton_kernels("labkit.intro._kernels")
    x = torch.ones(4, device=device)
    with pytest.raises(ValueError, match="power of two"):
        kernels.scaled_add_triton(x, x, block_size=100)
