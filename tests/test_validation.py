"""labkit.validation: one integer check for every module."""

from __future__ import annotations

import numpy as np
import pytest

from labkit.validation import check_int


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
