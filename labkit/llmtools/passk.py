"""The unbiased pass@k estimator (Chen et al., 2021; used by VerilogEval).

Draw ``n`` candidates for a problem, ``c`` of which pass. pass@k, the chance that at least one
of ``k`` candidates passes, is estimated without bias by the fraction of the ``C(n, k)``
k-subsets that hold a passing candidate::

    pass@k = 1 - C(n - c, k) / C(n, k) = 1 - prod_{i = n - c + 1}^{n} (1 - k / i)

The product form never forms a binomial coefficient, so it stays exact in floating point for
any ``n``. :func:`pass_at_k_enumerated` counts the subsets one by one, the check of the formula.

Section: chapter 18, "VerilogEval: spec-to-RTL evaluation".
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import numpy as np

from labkit.validation import check_int

__all__ = ["pass_at_k", "pass_at_k_enumerated", "mean_pass_at_k"]


def _check(n: int, c: int, k: int) -> None:
    check_int("n", n, 1)
    check_int("c", c, 0)
    check_int("k", k, 1)
    if c > n:
        raise ValueError(f"c must be <= n, got c={c}, n={n}")
    if k > n:
        raise ValueError(f"k must be <= n (cannot pick {k} of {n} candidates), got k={k}, n={n}")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` candidates of which ``c`` pass.

    Raises:
        ValueError: ``n < 1``, ``k < 1``, ``k > n`` or ``c`` outside ``[0, n]``.
    """
    # show: start passk
    _check(n, c, k)
    if n - c < k:  # every k-subset holds a passing candidate
        return 1.0
    # C(n-c, k) / C(n, k) = prod over the c passing slots of (1 - k / i), i = n-c+1 .. n
    i = np.arange(n - c + 1, n + 1, dtype=np.float64)
    return float(1.0 - np.prod(1.0 - k / i))
    # show: end passk


def pass_at_k_enumerated(outcomes: Sequence[bool], k: int) -> float:
    """pass@k by listing every k-subset of ``outcomes`` (pass/fail per candidate); small n only."""
    n = len(outcomes)
    _check(n, sum(bool(o) for o in outcomes), k)
    subsets = list(combinations(range(n), k))
    return sum(any(outcomes[j] for j in s) for s in subsets) / len(subsets)


def mean_pass_at_k(n: int, passes: Sequence[int], k: int) -> float:
    """pass@k averaged over problems, each with ``n`` candidates and ``passes[p]`` passing."""
    if len(passes) == 0:
        raise ValueError("passes must hold at least one problem")
    return float(np.mean([pass_at_k(n, int(c), k) for c in passes]))
