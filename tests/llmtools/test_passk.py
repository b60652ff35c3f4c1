"""The unbiased pass@k estimator against hand values and subset enumeration."""

from __future__ import annotations

import math
import random

import pytest

from labkit.llmtools.passk import mean_pass_at_k, pass_at_k, pass_at_k_enumerated


def test_hand_values():
    assert pass_at_k(10, 0, 1) == 0.0
    assert pass_at_k(10, 10, 5) == 1.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    # 1 - C(2, 2) / C(4, 2) = 1 - 1/6
    assert pass_at_k(4, 2, 2) == pytest.approx(5 / 6)
    assert pass_at_k(5, 1, 5) == 1.0


def test_matches_binomials_and_enumeration_and_is_monotone():
    rng = random.Random(0)
    for _ in range(30):
        n = rng.randint(1, 9)
        outcomes = [rng.random() < 0.4 for _ in range(n)]
        c = sum(outcomes)
        values = [pass_at_k(n, c, k) for k in range(1, n + 1)]
        for k, v in enumerate(values, start=1):
            assert v == pytest.approx(pass_at_k_enumerated(outcomes, k), abs=1e-12)
            assert v == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-12)
        assert all(a <= b + 1e-12 for a, b in zip(values, values[1:]))


def test_large_n_stays_finite():
    value = pass_at_k(5000, 7, 100)
    assert value == pytest.approx(1 - math.comb(4993, 100) / math.comb(5000, 100), rel=1e-9)


def test_mean_and_bad_inputs():
    assert mean_pass_at_k(4, [0, 4], 1) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="k must be <= n"):
        pass_at_k(3, 1, 4)
    with pytest.raises(ValueError, match="n must be >= 1"):
        pass_at_k(0, 0, 1)
    with pytest.raises(ValueError, match="c must be <= n"):
        pass_at_k(3, 4, 1)
    with pytest.raises(TypeError, match="k must be an int"):
        pass_at_k(3, 1, 1.5)
    with pytest.raises(ValueError, match="passes"):
        mean_pass_at_k(3, [], 1)
