"""Minimum-entropy coupling and its bottlenecked encoder, EBIM, with brute-force checks.

Paper: "Minimum Entropy Coupling with Bottleneck", Ebrahimi, Chen and Khisti, NeurIPS 2024,
arXiv:2410.21666.

A *coupling* of two distributions ``p`` (over m symbols) and ``q`` (over n symbols) is a joint
``P`` (m, n) with row sums ``p`` and column sums ``q``; the minimum-entropy coupling (MEC)
problem asks for the one of least joint entropy ``H(P)``, i.e. the most deterministic way to
correlate the two. :func:`greedy_mec` is the classic greedy (couple the largest remaining masses
of the two sides, Kocaoglu et al. 2017), used by the paper for its decoder; any coupling's
entropy is at least ``H(p ^ q)``, the entropy of the greatest lower bound of ``p`` and ``q`` in
the majorisation lattice (:func:`majorisation_meet`), and the greedy is known to stay within one
bit of it (a tighter analysis gives about 0.53 bit; the looser, older bound is the one checked
here).

The paper's MEC-B splits lossy compression with a prescribed output distribution into an
encoder, *entropy-bounded information maximisation*

    EBIM:  max I(X; Z)  subject to  H(Z) <= R,

and a decoder that couples the code ``Z`` with the output distribution by MEC. For a
deterministic encoder ``Z = f(X)``, ``I(X; Z) = H(Z)``, so EBIM over deterministic maps asks for
the partition of X's symbols whose cell masses have the largest entropy not above ``R``.
:func:`greedy_ebim` is our greedy merge for it (the paper's own greedy and its stated guarantee
could not be checked offline here; ours is described in its docstring and measured against
:func:`brute_force_ebim`, which enumerates every partition). ``min(R, H(X))`` bounds every
encoder, deterministic or not, from above.

Entropies are in bits. Shapes: m symbols of ``p`` (or of X), n symbols of ``q``.
Section: chapter 16, "Minimum-entropy coupling with a bottleneck".
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

import numpy as np

from labkit.validation import check_real

__all__ = [
    "brute_force_ebim",
    "brute_force_mec",
    "check_distribution",
    "entropy",
    "greedy_ebim",
    "greedy_mec",
    "greedy_mec_batch",
    "majorisation_meet",
    "partition_masses",
]

_TOL = 1e-9


def check_distribution(name: str, p: object) -> np.ndarray:
    """Return ``p`` as a float64 vector if it is a probability distribution.

    Raises:
        TypeError: not array-like of real numbers.
        ValueError: not one-dimensional, empty, with negative or non-finite entries, or not
            summing to 1 (within 1e-6), naming the argument.
    """
    try:
        arr = np.asarray(p, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a vector of probabilities, got "
                        f"{type(p).__name__}") from err
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D vector of probabilities, "
                         f"got shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError(f"{name} must hold finite, non-negative probabilities")
    if abs(arr.sum() - 1.0) > 1e-6:
        raise ValueError(f"{name} must sum to 1, got {arr.sum():.6g}")
    return arr


def entropy(p: np.ndarray) -> float:
    """Entropy in bits of the masses ``p`` (any shape; zeros contribute nothing)."""
    flat = np.asarray(p, dtype=np.float64).ravel()
    flat = flat[flat > 0]
    return max(0.0, float(-(flat * np.log2(flat)).sum()))  # no -0.0


def greedy_mec(p: Sequence[float] | np.ndarray,
               q: Sequence[float] | np.ndarray) -> np.ndarray:
    """Greedy minimum-entropy coupling of ``p`` (m,) and ``q`` (n,): the joint (m, n).

    At each step the largest remaining mass of ``p`` and the largest of ``q`` are coupled with
    the smaller of the two, which is removed from both; at most m + n - 1 steps, since each
    empties a symbol of one side. Ties go to the lowest index, so the coupling is a
    deterministic function of ``(p, q)`` (a receiver can rebuild the sender's coupling).
    """
    p = check_distribution("p", p)
    q = check_distribution("q", q)
    joint = np.zeros((p.size, q.size))
    # show: start greedy
    rest_p, rest_q = p.copy(), q.copy()
    for _ in range(p.size + q.size - 1):
        i, j = int(np.argmax(rest_p)), int(np.argmax(rest_q))
        mass = min(rest_p[i], rest_q[j])
        if mass <= _TOL:
            break
        joint[i, j] += mass
        rest_p[i] -= mass
        rest_q[j] -= mass
    # show: end greedy
    return joint


def greedy_mec_batch(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """:func:`greedy_mec` for B pairs at once: ``p`` (B, m), ``q`` (B, n) -> joints (B, m, n).

    Rows are assumed to be distributions (not re-validated: this is the inner loop of the
    Markov coding game); the result equals the loop over :func:`greedy_mec`, row by row.
    """
    rest_p = np.array(p, dtype=np.float64)
    rest_q = np.array(q, dtype=np.float64)
    b, m = rest_p.shape
    n = rest_q.shape[1]
    joint = np.zeros((b, m, n))
    rows = np.arange(b)
    for _ in range(m + n - 1):
        i, j = rest_p.argmax(1), rest_q.argmax(1)
        mass = np.minimum(rest_p[rows, i], rest_q[rows, j])
        mass = np.where(mass > _TOL, mass, 0.0)
        joint[rows, i, j] += mass
        rest_p[rows, i] -= mass
        rest_q[rows, j] -= mass
    return joint


def majorisation_meet(p: Sequence[float] | np.ndarray,
                      q: Sequence[float] | np.ndarray) -> np.ndarray:
    """The greatest lower bound ``p ^ q`` of two distributions in the majorisation order.

    Sort both decreasingly (padding the shorter with zeros); the meet's partial sums are the
    smaller of the two partial sums at every length (a minimum of concave sequences is
    concave, so its steps are again sorted). Every coupling of ``p`` and ``q`` is majorised
    by it, hence ``H(P) >= H(p ^ q)`` for every coupling ``P``.
    """
    p = check_distribution("p", p)
    q = check_distribution("q", q)
    size = max(p.size, q.size)
    ps = np.zeros(size)
    qs = np.zeros(size)
    ps[:p.size] = np.sort(p)[::-1]
    qs[:q.size] = np.sort(q)[::-1]
    # show: start meet
    partial = np.minimum(np.cumsum(ps), np.cumsum(qs))
    meet = np.diff(partial, prepend=0.0)
    # show: end meet
    return np.clip(meet, 0.0, None)


def brute_force_mec(p: Sequence[float] | np.ndarray,
                    q: Sequence[float] | np.ndarray) -> tuple[float, np.ndarray]:
    """The exact minimum-entropy coupling, by enumerating the vertices of the coupling polytope.

    Entropy is concave, so its minimum over the polytope of couplings is at a vertex; every
    vertex is a basic solution whose support has at most m + n - 1 cells. Each such support
    is solved for and kept when non-negative and exact. Cost grows as C(mn, m + n - 1): meant
    for m + n <= 8 (checks only).

    Returns:
        the least entropy in bits and a coupling attaining it.
    """
    p = check_distribution("p", p)
    q = check_distribution("q", q)
    m, n = p.size, q.size
    if m + n > 8:
        raise ValueError(f"brute force is for m + n <= 8 symbols, got {m} + {n}")
    cells = [(i, j) for i in range(m) for j in range(n)]
    target = np.concatenate([p, q])
    best, best_joint = np.inf, np.zeros((m, n))
    for support in itertools.combinations(range(m * n), min(m + n - 1, m * n)):
        a = np.zeros((m + n, len(support)))
        for k, c in enumerate(support):
            i, j = cells[c]
            a[i, k] = 1.0
            a[m + j, k] = 1.0
        x, *_ = np.linalg.lstsq(a, target, rcond=None)
        if np.any(x < -_TOL) or np.abs(a @ x - target).max() > 1e-7:
            continue
        joint = np.zeros((m, n))
        for k, c in enumerate(support):
            joint[cells[c]] = max(x[k], 0.0)
        h = entropy(joint)
        if h < best:
            best, best_joint = h, joint
    return best, best_joint


def partition_masses(p: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Masses of the cells of a partition: ``out[z] = sum of p[x] with labels[x] == z``."""
    return np.bincount(np.asarray(labels), weights=p)


def _check_rate(r: object, p: np.ndarray) -> float:
    rate = check_real("r", r, 0.0)
    h = entropy(p)
    if rate > h + 1e-9:
        raise ValueError(f"r must be in [0, H(X)] = [0, {h:.4f}] bits, got {rate}")
    return rate


def _polish(p: np.ndarray, cells: list[list[int]], rate: float) -> list[list[int]]:
    """Move single symbols between cells (or into a new one) while ``H(Z)`` rises within
    ``rate``; first-improvement local search, ends at a partition no single move improves."""
    cells = [list(c) for c in cells]
    h = entropy(np.array([p[c].sum() for c in cells]))
    improved = True
    while improved:
        improved = False
        for a, x, b in itertools.product(range(len(cells)), range(p.size),
                                         range(len(cells) + 1)):
            if a >= len(cells) or x not in cells[a] or b == a:
                continue
            if b == len(cells) and len(cells[a]) == 1:
                continue
            trial = [list(c) for c in cells] + [[]]
            trial[a].remove(x)
            trial[b].append(x)
            trial = [c for c in trial if c]
            h_new = entropy(np.array([p[c].sum() for c in trial]))
            if rate + _TOL >= h_new > h + 1e-12:
                cells, h, improved = trial, h_new, True
                break
    return cells


def greedy_ebim(p_x: Sequence[float] | np.ndarray, r: float, *,
                polish: bool = True) -> np.ndarray:
    """A deterministic encoder for EBIM at rate ``r``: the label ``f(x)`` of every symbol.

    Greedy merge (ours): start from the identity code ``Z = X`` (``H(Z) = H(X)``); while
    ``H(Z) > r``, merge the two cells whose union loses the least entropy, except that when
    some merge already brings ``H(Z)`` within the budget, take the one among those that keeps
    ``H(Z)`` largest. With ``polish`` (default), single symbols are then moved between cells
    (or into a new cell) while that raises ``H(Z)`` within the budget. Each code is
    deterministic, so ``I(X; Z) = H(Z) <= r``. Labels are renumbered ``0 .. K-1`` by
    decreasing cell mass.

    Raises:
        ValueError: ``p_x`` is not a distribution, or ``r`` is outside ``[0, H(X)]``.
    """
    p = check_distribution("p_x", p_x)
    rate = _check_rate(r, p)
    labels = np.arange(p.size)
    # show: start ebim
    cells = [[x] for x in range(p.size)]
    mass = list(p)
    while entropy(np.array(mass)) > rate + _TOL and len(mass) > 1:
        scored = []  # (H(Z) after merging cells a and b, a, b)
        for a, b in itertools.combinations(range(len(mass)), 2):
            merged = [w for k, w in enumerate(mass) if k not in (a, b)]
            scored.append((entropy(np.array(merged + [mass[a] + mass[b]])),
                           a, b))
        fits = [s for s in scored if s[0] <= rate + _TOL]
        _, a, b = max(fits or scored)
        cells[a] += cells.pop(b)
        mass[a] += mass.pop(b)
    # show: end ebim
    if polish:
        cells = _polish(p, cells, rate)
        mass = [float(p[c].sum()) for c in cells]
    for z, k in enumerate(np.argsort(-np.array(mass), kind="stable")):
        labels[cells[k]] = z
    return labels


def _partitions(items: list[int]) -> Iterator[list[list[int]]]:
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for part in _partitions(rest):
        yield [[first]] + part
        for k in range(len(part)):
            yield part[:k] + [[first] + part[k]] + part[k + 1:]


def brute_force_ebim(p_x: Sequence[float] | np.ndarray, r: float) -> tuple[float, np.ndarray]:
    """The best deterministic EBIM encoder at rate ``r``, over every partition of X's symbols.

    Bell(m) partitions (203 for m = 6): meant for m <= 8 (checks only).

    Returns:
        the largest ``I(X; Z) = H(Z) <= r`` and the labels attaining it.
    """
    p = check_distribution("p_x", p_x)
    rate = _check_rate(r, p)
    if p.size > 8:
        raise ValueError(f"brute force is for at most 8 symbols, got {p.size}")
    best, best_labels = -1.0, np.zeros(p.size, dtype=np.int64)
    for part in _partitions(list(range(p.size))):
        h = entropy(np.array([p[c].sum() for c in part]))
        if h <= rate + _TOL and h > best:
            best = h
            best_labels = np.zeros(p.size, dtype=np.int64)
            for z, c in enumerate(part):
                best_labels[c] = z
    return best, best_labels
