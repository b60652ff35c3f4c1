"""labkit.moe.gating (reference path): gating, capacity, balancing loss, permutation, by hand and by invariant."""

from __future__ import annotations

import math

import pytest
import torch

from labkit.moe.gating import (
    capacity_mask,
    expert_capacity,
    expert_load,
    load_balancing_loss,
    permute_tokens,
    permute_tokens_reference,
    topk_gating,
    topk_gating_reference,
    unpermute_tokens,
)
from labkit.testing import assert_close


def test_topk_gating_by_hand() -> None:
    logits = torch.log(torch.tensor([[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]]))
    probs, weights, experts = topk_gating_reference(logits, 2, renormalize=False)
    assert_close(probs, torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1]]))
    assert experts.tolist() == [[3, 2], [0, 1]]
    assert_close(weights, torch.tensor([[0.4, 0.3], [0.4, 0.3]]))
    _, renormed, _ = topk_gating_reference(logits, 2)
    assert_close(renormed, torch.tensor([[4 / 7, 3 / 7], [4 / 7, 3 / 7]]))


@pytest.mark.parametrize("top_k", [1, 2, 5])
def test_topk_gating_invariants(top_k: int) -> None:
    logits = torch.randn(37, 5, generator=torch.Generator().manual_seed(top_k)).to(torch.float16)
    probs, weights, experts = topk_gating(logits, top_k, backend="reference")
    assert probs.dtype == weights.dtype == torch.float32 and experts.dtype == torch.int64
    assert_close(probs.sum(-1), torch.ones(37))
    assert_close(weights.sum(-1), torch.ones(37))  # renormalized
    assert bool((weights[:, :-1] >= weights[:, 1:]).all())  # largest first
    assert all(len(set(row)) == top_k for row in experts.tolist())  # distinct experts
    _, raw, experts_raw = topk_gating_reference(logits, top_k, renormalize=False)
    assert torch.equal(experts_raw, experts)
    assert_close(raw, probs.gather(1, experts))
    assert bool((raw.sum(-1) <= 1 + 1e-6).all())


def test_topk_gating_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="top_k=3 exceeds the number of experts n_experts=2"):
        topk_gating_reference(torch.zeros(4, 2), 3)
    with pytest.raises(ValueError, match="top_k must be >= 1"):
        topk_gating_reference(torch.zeros(4, 2), 0)
    with pytest.raises(TypeError, match="top_k must be an int"):
        topk_gating_reference(torch.zeros(4, 2), 1.0)
    with pytest.raises(ValueError, match="2-D float tensor"):
        topk_gating_reference(torch.zeros(4), 1)
    with pytest.raises(TypeError, match="2-D float tensor"):  # a wrong dtype is a TypeError
        topk_gating_reference(torch.zeros(4, 2, dtype=torch.int64), 1)
    with pytest.raises(TypeError, match=r"logits must be a 2-D float tensor \(N, E\), got list"):
        topk_gating_reference([[0.0, 1.0]], 1)


def test_expert_capacity_by_hand() -> None:
    assert expert_capacity(10, 4, 2, 1.0) == 5  # ceil(1.0 * 10 * 2 / 4)
    assert expert_capacity(10, 4, 2, 1.25) == 7  # ceil(6.25)
    assert expert_capacity(16, 4, 1, 1.0) == 4
    assert expert_capacity(0, 4, 1, 1.0) == 1  # at least one slot
    assert expert_capacity(3, 8, 1, 2) == 1  # an int factor is fine


@pytest.mark.parametrize("factor", [0.0, -1.0, math.inf, math.nan])
def test_expert_capacity_rejects_bad_factor(factor: float) -> None:
    with pytest.raises(ValueError, match="capacity_factor must be a finite number > 0"):
        expert_capacity(10, 4, 2, factor)


def test_expert_capacity_rejects_bad_arguments() -> None:
    with pytest.raises(TypeError, match="capacity_factor must be a number"):
        expert_capacity(10, 4, 2, "1.0")
    with pytest.raises(TypeError, match="capacity_factor must be a number"):
        expert_capacity(10, 4, 2, True)
    with pytest.raises(ValueError, match=r"top_k must be in \[1, 4\]"):
        expert_capacity(10, 4, 5, 1.0)
    with pytest.raises(ValueError, match="n_tokens must be >= 0"):
        expert_capacity(-1, 4, 1, 1.0)
    with pytest.raises(ValueError, match="n_experts must be >= 1"):
        expert_capacity(10, 0, 1, 1.0)


def test_capacity_mask_by_hand() -> None:
    # first choices are served before second ones: slots of expert 0 go to t0, t1 (t2, t3 dropped),
    # expert 1 to t3 (first choice), then t0 (second); t2's second choice finds expert 1 full
    experts = torch.tensor([[0, 1], [0, 2], [0, 1], [1, 0]])
    mask = capacity_mask(experts, 3, 2)
    assert mask.tolist() == [[True, True], [True, True], [False, False], [True, False]]
    assert expert_load(experts, 3, mask).tolist() == [2, 2, 1]
    assert expert_load(experts, 3).tolist() == [4, 3, 1]
    assert bool(capacity_mask(experts, 3, 4).all())


def test_capacity_mask_never_exceeds_capacity() -> None:
    experts = torch.topk(torch.randn(50, 6, generator=torch.Generator().manual_seed(0)), 2).indices
    cap = expert_capacity(50, 6, 2, 1.0)
    mask = capacity_mask(experts, 6, cap)
    load = expert_load(experts, 6, mask)
    assert bool((load <= cap).all())
    assert torch.equal(load, torch.minimum(expert_load(experts, 6), torch.tensor(cap)))  # fills what it can


def test_capacity_mask_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match=r"expert indices must lie in \[0, 3\)"):
        capacity_mask(torch.tensor([[0, 3]]), 3, 2)
    with pytest.raises(TypeError, match="2-D int64"):
        capacity_mask(torch.tensor([[0, 1]], dtype=torch.int32), 3, 2)
    with pytest.raises(ValueError, match="2-D int64"):
        capacity_mask(torch.tensor([0, 1]), 3, 2)
    with pytest.raises(ValueError, match="capacity must be >= 1"):
        capacity_mask(torch.tensor([[0, 1]]), 3, 0)


def test_load_balancing_loss_by_hand() -> None:
    n, e = 8, 4
    uniform = torch.full((n, e), 1 / e)
    spread = torch.arange(n * 2).reshape(n, 2) % e  # every expert chosen 4 times
    assert_close(load_balancing_loss(uniform, spread), torch.tensor(1.0))
    collapsed = torch.zeros(n, e)
    collapsed[:, 0] = 1.0
    assert_close(load_balancing_loss(collapsed, torch.zeros(n, 1, dtype=torch.int64)), torch.tensor(float(e)))


def test_load_balancing_loss_gradient_flows_to_probs_only() -> None:
    logits = torch.randn(10, 4, generator=torch.Generator().manual_seed(1), requires_grad=True)
    probs, _, experts = topk_gating_reference(logits, 2)
    load_balancing_loss(probs, experts).backward()
    assert logits.grad is not None and bool(torch.isfinite(logits.grad).all())


def test_load_balancing_loss_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="probs and experts disagree on N"):
        load_balancing_loss(torch.full((3, 2), 0.5), torch.zeros(4, 1, dtype=torch.int64))
    with pytest.raises(ValueError, match="probs must be a 2-D tensor"):
        load_balancing_loss(torch.ones(3), torch.zeros(3, 1, dtype=torch.int64))
    with pytest.raises(TypeError, match="probs must be a 2-D tensor"):
        load_balancing_loss(None, torch.zeros(3, 1, dtype=torch.int64))


def test_permute_tokens_by_hand() -> None:
    experts = torch.tensor([[2, 0], [0, -1], [2, 1]])  # flat: 2 0 0 -1 2 1
    order, offsets = permute_tokens_reference(experts, 3)
    assert order.tolist() == [1, 2, 5, 0, 4]  # expert 0: flat 1, 2; expert 1: 5; expert 2: 0, 4
    assert offsets.tolist() == [0, 2, 3, 5]
    order4, offsets4 = permute_tokens(experts, 4, backend="reference")  # a fourth expert, unused
    assert order4.tolist() == order.tolist() and offsets4.tolist() == [0, 2, 3, 5, 5]


def test_permute_then_unpermute_is_the_weighted_sum() -> None:
    g = torch.Generator().manual_seed(2)
    n, e, k, d = 37, 5, 2, 6
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    _, weights, experts = topk_gating_reference(torch.randn(n, e, generator=g), k)
    order, offsets = permute_tokens_reference(experts, e)
    assert sorted(order.tolist()) == list(range(n * k)) and int(offsets[-1]) == n * k
    assert bool((experts.reshape(-1)[order].diff() >= 0).all())  # sorted by expert
    x_sorted = x[order // k]  # identity experts
    # renormalized weights sum to 1 (up to float32 rounding, hence the exact sum as the factor)
    assert_close(unpermute_tokens(x_sorted, order, weights), x * weights.double().sum(-1, keepdim=True))
    assert_close(unpermute_tokens(x_sorted.float(), order, weights), x.float())
    dropped = experts.clone()
    dropped[::3, 1] = -1
    order, _ = permute_tokens_reference(dropped, e)
    kept_weight = (weights.double() * (dropped >= 0)).sum(-1, keepdim=True)
    assert_close(unpermute_tokens(x[order // k], order, weights), x * kept_weight)


def test_permutation_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="expert index 3 >= n_experts=3"):
        permute_tokens_reference(torch.tensor([[0, 3]]), 3)
    with pytest.raises(ValueError, match="2-D int64"):
        permute_tokens_reference(torch.tensor([0, 1]), 3)
    with pytest.raises(ValueError, match="n_experts must be >= 1"):
        permute_tokens_reference(torch.tensor([[0]]), 0)
    with pytest.raises(ValueError, match="must agree"):
        unpermute_tokens(torch.zeros(3, 2), torch.arange(4), torch.ones(2, 2))
