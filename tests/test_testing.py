"""labkit.testing: tolerances per dtype and backend."""

from __future__ import annotations

import pytest
import torch

from labkit.testing import assert_close, max_abs_error, tolerances


def test_tolerances() -> None:
    assert tolerances(torch.int64) == (0.0, 0.0)
    r, a = tolerances(torch.float32)
    assert tolerances(torch.float32, backend="triton") == (4 * r, 4 * a)
    assert tolerances(torch.bfloat16)[0] > tolerances(torch.float16)[0] > r


@pytest.mark.parametrize("args, err", [((torch.float32,), None), (("float32",), TypeError), ((torch.complex64,), ValueError)])
def test_tolerances_bad_input(args, err) -> None:
    if err is None:
        tolerances(*args)
    else:
        with pytest.raises(err):
            tolerances(*args)
    with pytest.raises(ValueError, match="backend"):
        tolerances(torch.float32, backend="cuda")


def test_max_abs_error_and_assert_close() -> None:
    a = torch.tensor([1.0, 2.0, 3.0])
    assert max_abs_error(a, a + torch.tensor([0.0, 0.5, -1.0])) == 1.0
    assert_close(a, a + 1e-7)
    with pytest.raises(AssertionError):
        assert_close(a, a + 1e-3)
    with pytest.raises(ValueError, match="shape"):
        max_abs_error(a, a[:2])
