"""Greedy minimum-entropy coupling, the majorisation meet and the EBIM encoders."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from labkit.infocomm import coupling as cp


def test_greedy_mec_by_hand() -> None:
    # p = (0.6, 0.4), q = (0.5, 0.5): 0.5 on (0, 0), then 0.4 on (1, 1), 0.1 on (0, 1)
    joint = cp.greedy_mec([0.6, 0.4], [0.5, 0.5])
    assert joint == pytest.approx(np.array([[0.5, 0.1], [0.0, 0.4]]))
    # a distribution coupled with itself: the diagonal, entropy H(p)
    p = np.array([0.5, 0.25, 0.125, 0.125])
    assert cp.greedy_mec(p, p) == pytest.approx(np.diag(p))
    assert cp.entropy(cp.greedy_mec(p, p)) == pytest.approx(1.75)


def test_entropy_matches_scipy() -> None:
    p = np.random.default_rng(0).dirichlet(np.ones(7))
    assert cp.entropy(p) == pytest.approx(stats.entropy(p, base=2))


def test_meet_by_hand_and_is_a_lower_bound() -> None:
    # partial sums (0.6, 1.0, 1.0) and (0.5, 0.8, 1.0): meet (0.5, 0.3, 0.2)
    meet = cp.majorisation_meet([0.6, 0.4], [0.5, 0.3, 0.2])
    assert meet == pytest.approx([0.5, 0.3, 0.2])
    assert cp.majorisation_meet([0.2, 0.8], [0.8, 0.2]) == pytest.approx(
        [0.8, 0.2])


@pytest.mark.parametrize("seed", range(12))
def test_greedy_mec_against_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = [(2, 3), (3, 3), (2, 4), (3, 4)][seed % 4]
    p, q = rng.dirichlet(np.ones(shape[0])), rng.dirichlet(np.ones(shape[1]))
    joint = cp.greedy_mec(p, q)
    # a coupling: the marginals are p and q
    assert joint.sum(1) == pytest.approx(p) and joint.sum(0) == pytest.approx(q)
    best, best_joint = cp.brute_force_mec(p, q)
    assert best_joint.sum(1) == pytest.approx(p)
    assert best_joint.sum(0) == pytest.approx(q)
    low = cp.entropy(cp.majorisation_meet(p, q))
    greedy = cp.entropy(joint)
    # meet <= optimum <= greedy <= meet + 1 bit
    assert low <= best + 1e-9 <= greedy + 2e-9 <= low + 1.0 + 2e-9
    assert stats.entropy(joint.ravel(), base=2) == pytest.approx(greedy)


def test_brute_force_mec_by_hand() -> None:
    # p = q = (1/2, 1/2): the diagonal, 1 bit; the independent coupling has 2
    best, joint = cp.brute_force_mec([0.5, 0.5], [0.5, 0.5])
    assert best == pytest.approx(1.0)
    assert np.count_nonzero(joint > 1e-12) == 2


def test_batch_matches_loop() -> None:
    rng = np.random.default_rng(1)
    p, q = rng.dirichlet(np.ones(5), 20), rng.dirichlet(np.ones(3), 20)
    batch = cp.greedy_mec_batch(p, q)
    for k in range(20):
        assert batch[k] == pytest.approx(cp.greedy_mec(p[k], q[k]), abs=1e-12)


def test_ebim_by_hand() -> None:
    p = [0.5, 0.25, 0.125, 0.125]  # H = 1.75
    # at R = H(X) the identity; at R = 1.5 merge the two smallest; at 1: halves
    assert len(set(cp.greedy_ebim(p, 1.75))) == 4
    assert cp.entropy(cp.partition_masses(np.array(p), cp.greedy_ebim(p, 1.5))) \
        == pytest.approx(1.5)
    assert cp.entropy(cp.partition_masses(np.array(p), cp.greedy_ebim(p, 1.0))) \
        == pytest.approx(1.0)
    assert set(cp.greedy_ebim(p, 0.0)) == {0}
    # at R = 1.2 the best partition is {0.5, 0.25}, {0.125}, {0.125}
    best = 0.75 * np.log2(1 / 0.75) + 2 * 0.125 * 3
    assert cp.brute_force_ebim(p, 1.2)[0] == pytest.approx(best)


@pytest.mark.parametrize("seed", range(10))
def test_greedy_ebim_against_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(6) * 0.7)
    for r in np.linspace(0.0, cp.entropy(p), 6):
        labels = cp.greedy_ebim(p, r)
        got = cp.entropy(cp.partition_masses(p, labels))
        best, best_labels = cp.brute_force_ebim(p, r)
        assert got <= r + 1e-9 and best <= r + 1e-9
        assert got <= best + 1e-9
        assert cp.entropy(cp.partition_masses(p, best_labels)) == pytest.approx(best)
        # measured over 350 random cases: the polished greedy stays within 0.53 bit
        assert best - got < 0.6


def test_polish_never_hurts() -> None:
    rng = np.random.default_rng(5)
    for _ in range(10):
        p = rng.dirichlet(np.ones(6) * 0.7)
        r = 0.5 * cp.entropy(p)
        raw = cp.entropy(cp.partition_masses(p, cp.greedy_ebim(p, r, polish=False)))
        pol = cp.entropy(cp.partition_masses(p, cp.greedy_ebim(p, r)))
        assert raw <= pol + 1e-12 <= r + 1e-9


@pytest.mark.parametrize("bad, match", [
    ([0.5, 0.6], "sum to 1"), ([1.2, -0.2], "non-negative"), ([], "non-empty"),
    ([[0.5, 0.5]], "1-D"), ([np.nan, 1.0], "finite"),
])
def test_invalid_distributions(bad: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        cp.greedy_mec(bad, [1.0])
    with pytest.raises(ValueError, match=match):
        cp.greedy_ebim(bad, 0.0)


def test_rate_outside_range() -> None:
    with pytest.raises(ValueError, match=r"r must be in \[0, H\(X\)\]"):
        cp.greedy_ebim([0.5, 0.5], 1.5)
    with pytest.raises(ValueError, match="r must be >= 0"):
        cp.greedy_ebim([0.5, 0.5], -0.1)
    with pytest.raises(TypeError, match="r must be a real number"):
        cp.brute_force_ebim([0.5, 0.5], "1")
    with pytest.raises(TypeError, match="p must be"):
        cp.greedy_mec(object(), [1.0])
