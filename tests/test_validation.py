"""labkit.validation: the integer, real-number and finite-tensor checks shared by every module."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from labkit.validation import check_finite_tensor, check_int, check_real


def test_accepts_python_and_numpy_ints() -> None:
    assert check_int("n", 3, 1) == 3
    assert check_int("n", np.int64(5), 0, 5) == 5 and isinstance(check_int("n", np.int32(2), 0), int)


@pytest.mark.parametrize("value, low, high, err, msg", [
    (True, 0, None, TypeError, "n must be an int, got bool"),
    (1.0, 0, None, TypeError, "got float"),
    (0, 1, None, ValueError, "n must be >= 1, got 0"),
    (9, 1, 8, ValueError, r"n must be in \[1, 8\], got 9"),
])
def test_rejects(value, low, high, err, msg) -> None:
    with pytest.raises(err, match=msg):
        check_int("n", value, low, high)


def test_real_accepts_python_and_numpy_numbers() -> None:
    assert check_real("t", 3) == 3.0 and isinstance(check_real("t", 3), float)
    assert check_real("t", np.float32(0.5), 0.0) == 0.5 and check_real("t", np.int64(2), 2) == 2.0
    assert check_real("t", 1e-9, 0.0, strict=True) == 1e-9 and check_real("t", -4.0) == -4.0


@pytest.mark.parametrize("value, low, strict, err, msg", [
    (True, None, False, TypeError, "t must be a real number, got bool"),
    ("1000", None, False, TypeError, "got str"),
    (torch.tensor(1.0), None, False, TypeError, "got Tensor"),
    (float("nan"), None, False, ValueError, "t must be a finite number, got nan"),
    (np.float64("-inf"), None, False, ValueError, "finite number, got -inf"),
    (-1, 0.0, False, ValueError, "t must be >= 0.0, got -1"),
    (0.0, 0.0, True, ValueError, "t must be > 0.0, got 0.0"),
])
def test_real_rejects(value, low, strict, err, msg) -> None:
    with pytest.raises(err, match=msg):
        check_real("t", value, low, strict=strict)


def test_finite_tensor_passes_finite_and_integer_tensors() -> None:
    check_finite_tensor("x", torch.randn(5, 3))
    check_finite_tensor("x", torch.empty(0))
    check_finite_tensor("x", torch.arange(4))


def test_finite_tensor_counts_what_is_wrong() -> None:
    x = torch.tensor([1.0, float("nan"), float("inf"), float("-inf"), 2.0])
    with pytest.raises(ValueError, match=r"^f: x has 3 non-finite values of 5 \(1 NaN, 2 infinite\)"):
        check_finite_tensor("x", x, op="f")
    with pytest.raises(ValueError, match=r"^w has 1 non-finite value of 2 "):
        check_finite_tensor("w", torch.tensor([0.0, float("nan")], dtype=torch.bfloat16))
