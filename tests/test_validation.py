"""labkit.validation: the integer, real-number and finite-tensor checks shared by every module."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from labkit.validation import check_finite_tensor, check_int, check_real, check_tensor, check_tokens, describe


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


# --- tensors and token ids ---------------------------------------------------------------------


def test_describe_by_hand() -> None:
    assert describe(torch.zeros(2, 3, dtype=torch.int8)) == "tensor of shape (2, 3) and dtype torch.int8"
    assert describe([1, 2]) == "list" and describe(None) == "NoneType"


def test_check_tensor_returns_the_tensor_it_accepts() -> None:
    x = torch.zeros(4, 3)
    assert check_tensor("x", x, dims=2, dtype="float") is x
    assert check_tensor("x", x, dims=(1, 2)) is x and check_tensor("x", x) is x
    ids = torch.arange(3, dtype=torch.int32)
    assert check_tensor("ids", ids, dims=1, dtype="integer") is ids
    assert check_tensor("ids", ids, dtype=(torch.int32, torch.int64)) is ids


@pytest.mark.parametrize("value, kw, err, msg", [
    ([1.0], dict(dims=2, dtype="float", shape="(N, E)"), TypeError,
     r"^x must be a 2-D float tensor \(N, E\), got list$"),
    (torch.zeros(2, 2, dtype=torch.int64), dict(dims=2, dtype="float"), TypeError, "x must be a 2-D float tensor, got "
     r"tensor of shape \(2, 2\) and dtype torch.int64"),
    (torch.zeros(3), dict(dims=2, dtype="float"), ValueError, r"got tensor of shape \(3,\)"),
    (torch.zeros(3), dict(dims=(2, 3), dtype=torch.int64), TypeError, "x must be a 2-D or 3-D int64 tensor"),
    (torch.zeros(3, dtype=torch.int64), dict(dims=(2, 3), dtype=torch.int64), ValueError, "2-D or 3-D int64"),
    (torch.zeros(3, dtype=torch.bool), dict(dtype="integer"), TypeError, "x must be an integer tensor"),
    (torch.zeros(3, dtype=torch.int16), dict(dtype=(torch.uint8, torch.int8)), TypeError, "a uint8/int8 tensor"),
])
def test_check_tensor_rejects(value, kw, err, msg) -> None:
    with pytest.raises(err, match=msg):
        check_tensor("x", value, **kw)


def test_check_tensor_rejects_an_unknown_dtype_kind() -> None:
    with pytest.raises(ValueError, match="dtype must be 'float', 'integer'"):
        check_tensor("x", torch.zeros(1), dtype="real")


def test_check_tokens_by_hand() -> None:
    out = check_tokens("tokens", torch.tensor([[0, 255], [7, 1]], dtype=torch.uint8), dims=2)
    assert out.dtype == torch.int64 and out.tolist() == [[0, 255], [7, 1]]
    assert check_tokens("t", torch.tensor([3, 4]), dims=1, vocab_size=5).tolist() == [3, 4]
    assert check_tokens("t", torch.zeros(0, dtype=torch.int64), dims=1).numel() == 0  # empty: nothing to range-check


@pytest.mark.parametrize("value, kw, err, msg", [
    (torch.zeros(2, 3), dict(dims=2, shape="(Q, L)"), TypeError, r"tokens must be a 2-D integer tensor \(Q, L\)"),
    (torch.zeros(3, dtype=torch.long), dict(dims=2), ValueError, "tokens must be a 2-D integer tensor"),
    (torch.zeros(2, 0, dtype=torch.long), dict(dims=2, min_length=1), ValueError, "at least 1 token"),
    (torch.tensor([[256]]), dict(dims=2), ValueError, r"tokens must be integers in \[0, 255\] \(token ids\), "
     r"got values in \[256, 256\]"),
    (torch.tensor([-1, 2]), dict(dims=1, vocab_size=3), ValueError, r"in \[0, 2\]"),
    (torch.tensor([1]), dict(dims=1, vocab_size=0), ValueError, "vocab_size must be >= 1"),
])
def test_check_tokens_rejects(value, kw, err, msg) -> None:
    with pytest.raises(err, match=msg):
        check_tokens("tokens", value, **kw)
