"""labkit.moe.affinity: affinity counts, transfers and placements, by hand, by invariant, by bad input."""

from __future__ import annotations

import pytest
import torch

from labkit.moe.affinity import (
    affinity_counts,
    affinity_placement,
    conditional_affinity,
    device_loads,
    expert_paths,
    round_robin_placement,
    transfer_rate,
    two_alltoall_rate,
)
from labkit.testing import assert_close

# Three tokens, three layers, four experts.
PATHS = torch.tensor([[0, 1, 1], [0, 1, 2], [2, 3, 3]])


def _correlated_paths(n: int, n_layers: int, n_experts: int, seed: int, stay: float = 0.8) -> torch.Tensor:
    """Paths where expert j at layer l+1 follows expert pi_l(j) at layer l with probability ``stay``."""
    gen = torch.Generator().manual_seed(seed)
    perms = [torch.randperm(n_experts, generator=gen) for _ in range(n_layers - 1)]
    cols = [torch.randint(n_experts, (n,), generator=gen)]
    for perm in perms:
        follow = perm[cols[-1]]
        jump = torch.randint(n_experts, (n,), generator=gen)
        cols.append(torch.where(torch.rand(n, generator=gen) < stay, follow, jump))
    return torch.stack(cols, dim=1)


def test_counts_and_conditional_by_hand() -> None:
    counts = affinity_counts(PATHS, 4)
    assert counts.shape == (2, 4, 4)
    assert counts[0, 0, 1] == 2 and counts[0, 2, 3] == 1 and counts[0].sum() == 3
    assert counts[1, 1, 1] == 1 and counts[1, 1, 2] == 1 and counts[1, 3, 3] == 1
    cond = conditional_affinity(counts)
    assert_close(cond[1, 1], torch.tensor([0.0, 0.5, 0.5, 0.0], dtype=torch.float64))
    assert cond[0, 1].sum() == 0  # expert 1 of layer 0 got no token


def test_transfers_by_hand() -> None:
    rr = round_robin_placement(3, 4, 2)  # experts 0, 2 on device 0; 1, 3 on device 1
    assert rr.tolist() == [[0, 1, 0, 1]] * 3
    # token 0: d0 -> d1 -> d1; token 1: d0 -> d1 -> d0; token 2: d0 -> d1 -> d1
    assert_close(transfer_rate(PATHS, rr), torch.tensor([1.0, 1 / 3], dtype=torch.float64))
    home = torch.tensor([0, 1, 1])
    # layer 0 devices (0, 0, 0) vs home (0, 1, 1): two of three tokens leave and come back
    assert_close(two_alltoall_rate(PATHS, rr, home)[0], torch.tensor(4 / 3, dtype=torch.float64))


def test_expert_paths_takes_first_choice_and_drops() -> None:
    trace = torch.tensor([[[0, 1], [2, 3]], [[-1, 1], [2, 0]], [[3, 2], [1, -1]]])
    assert expert_paths(trace).tolist() == [[0, 2], [3, 1]]


@pytest.mark.parametrize("n_devices", [2, 4])
def test_exact_placement_is_optimal_and_balanced(n_devices: int) -> None:
    paths = _correlated_paths(400, 3, 8, seed=n_devices)
    counts = affinity_counts(paths, 8)
    exact = affinity_placement(counts, n_devices, method="exact")
    greedy = affinity_placement(counts, n_devices, method="greedy")
    for place in (exact, greedy):
        assert all(torch.bincount(row, minlength=n_devices).tolist() == [8 // n_devices] * n_devices for row in place)
    rr = round_robin_placement(3, 8, n_devices)
    t_exact, t_greedy, t_rr = (transfer_rate(paths, p).sum() for p in (exact, greedy, rr))
    assert t_exact <= t_greedy + 1e-12 and t_exact <= t_rr + 1e-12  # fitted on the same paths: exact is optimal
    assert t_exact < 0.6 * t_rr  # strong affinity is exploited


def test_exact_matches_brute_force_tiny() -> None:
    # Two layers, 4 experts, 2 devices: enumerate every pair of balanced placements.
    paths = _correlated_paths(50, 2, 4, seed=3, stay=0.6)
    counts = affinity_counts(paths, 4)
    states = [s for s in __import__("itertools").product(range(2), repeat=4) if sum(s) == 2]
    best = min(transfer_rate(paths, torch.tensor([a, b])).item() for a in states for b in states)
    assert transfer_rate(paths, affinity_placement(counts, 2, method="exact")).item() == pytest.approx(best)


def test_no_affinity_no_gain_on_fresh_paths() -> None:
    gen = torch.Generator().manual_seed(0)
    fit, test = (torch.randint(8, (4000, 4), generator=gen) for _ in range(2))
    place = affinity_placement(affinity_counts(fit, 8), 2)
    rr = round_robin_placement(4, 8, 2)
    # independent routing: about 1/2 of tokens move under any balanced placement
    assert abs(transfer_rate(test, place).mean() - transfer_rate(test, rr).mean()) < 0.03


def test_bad_inputs() -> None:
    with pytest.raises(TypeError, match="paths must be a 2-D int64 tensor"):  # a wrong dtype
        affinity_counts(torch.tensor([[0.0, 1.0]]), 2)
    with pytest.raises(ValueError, match="paths must be a 2-D int64 tensor"):
        affinity_counts(torch.tensor([0, 1]), 2)
    with pytest.raises(ValueError, match="two layers"):
        affinity_counts(torch.tensor([[0], [1]]), 2)
    with pytest.raises(ValueError, match="expert indices"):
        affinity_counts(torch.tensor([[0, 5]]), 4)
    with pytest.raises(ValueError, match="dropped"):
        affinity_counts(torch.tensor([[0, -1]]), 4)
    with pytest.raises(ValueError, match="divisible"):
        round_robin_placement(2, 6, 4)
    with pytest.raises(TypeError):
        round_robin_placement(2, 8, 2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="counts"):
        conditional_affinity(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="non-negative"):
        conditional_affinity(-torch.ones(1, 2, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="placement"):
        transfer_rate(PATHS, round_robin_placement(2, 4, 2))
    with pytest.raises(ValueError, match="home"):
        two_alltoall_rate(PATHS, round_robin_placement(3, 4, 2), torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="home"):
        two_alltoall_rate(PATHS, round_robin_placement(3, 4, 2), [0, 1, 0])
    with pytest.raises(ValueError, match="trace"):
        expert_paths(torch.zeros(2, 2, 2, 2, dtype=torch.int64))
    counts = affinity_counts(PATHS, 4)
    with pytest.raises(ValueError, match="method"):
        affinity_placement(counts, 2, method="ilp")
    with pytest.raises(ValueError, match="greedy"):
        affinity_placement(torch.zeros(1, 16, 16, dtype=torch.float64), 8, method="exact")
    with pytest.raises(ValueError, match="divisible"):
        affinity_placement(counts, 3)


def test_device_loads_by_hand() -> None:
    loads = device_loads(PATHS, round_robin_placement(3, 4, 2))
    assert_close(loads, torch.tensor([[1.0, 0.0], [0.0, 1.0], [1 / 3, 2 / 3]], dtype=torch.float64))
    with pytest.raises(TypeError, match="placement"):  # float devices: a wrong dtype
        device_loads(PATHS, torch.zeros(3, 4))
