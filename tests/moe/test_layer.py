"""The MoE layer and its routers: equivalences, capacity, gradients and bad arguments."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from labkit.moe import DenseFFN, LinearRouter, MoEFFN, PreGateRouter, RecurrentRouter


def _layer(n_experts=4, top_k=2, capacity_factor=None, d=8, f=6):
    torch.manual_seed(0)
    return MoEFFN(d, f, LinearRouter(d, n_experts), top_k=top_k, capacity_factor=capacity_factor)


def test_single_expert_equals_a_dense_mlp():
    layer = _layer(n_experts=1, top_k=1)
    dense = DenseFFN(8, 6)
    with torch.no_grad():
        dense.up.weight.copy_(layer.w_up[0].t())
        dense.up.bias.copy_(layer.b_up[0])
        dense.down.weight.copy_(layer.w_down[0].t())
        dense.down.bias.zero_()
    x = torch.randn(3, 5, 8)
    y, _, routing = layer(x)
    torch.testing.assert_close(y, dense(x)[0])
    assert routing.dropped == 0.0


def test_output_is_the_gate_weighted_sum_of_experts():
    layer = _layer()
    x = torch.randn(7, 8)
    y, _, r = layer(x)
    manual = torch.zeros_like(x)
    for i in range(7):
        for j in range(2):
            e = r.experts[i, j]
            h = nn.functional.gelu(x[i] @ layer.w_up[e] + layer.b_up[e])
            manual[i] += r.weights[i, j] * (h @ layer.w_down[e])
    torch.testing.assert_close(y, manual, rtol=1e-5, atol=1e-6)


def test_capacity_drops_and_dropped_tokens_get_no_update():
    layer = _layer(capacity_factor=0.25)
    x = torch.randn(40, 8)
    y, _, r = layer(x)
    assert 0 < r.dropped < 1
    fully_dropped = (r.experts < 0).all(dim=1)
    assert torch.all(y[fully_dropped] == 0)
    assert torch.bincount(r.experts[r.experts >= 0], minlength=4).max() <= 5  # ceil(0.25 * 40 * 2 / 4)


def test_gradients_reach_router_and_experts():
    layer = _layer()
    y, _, r = layer(torch.randn(10, 8))
    (y.sum() + r.aux_loss).backward()
    assert layer.router.gate.weight.grad.abs().sum() > 0
    assert layer.w_up.grad.abs().sum() > 0 and layer.w_down.grad.abs().sum() > 0


def test_recurrent_router_carries_state():
    gru = nn.GRUCell(4, 4)
    r1, r2 = RecurrentRouter(8, 3, gru), RecurrentRouter(8, 3, gru)
    h = torch.randn(5, 8)
    logits1, s1 = r1(h, None)
    logits2a, _ = r2(h, s1)
    logits2b, _ = r2(h, torch.zeros_like(s1))
    assert logits1.shape == (5, 3) and s1.shape == (5, 4)
    assert not torch.allclose(logits2a, logits2b)  # the previous layer's state matters
    with pytest.raises(ValueError, match="routing state"):
        r2(h, torch.zeros(5, 3))
    with pytest.raises(TypeError, match="GRUCell"):
        RecurrentRouter(8, 3, nn.GRU(4, 4))
    with pytest.raises(ValueError, match="R -> R"):
        RecurrentRouter(8, 3, nn.GRUCell(3, 4))


def test_pregate_router_ignores_the_hidden_state():
    router = PreGateRouter(8, 3)
    e = torch.randn(5, 8)
    a, _ = router(torch.randn(5, 8), e)
    b, _ = router(torch.randn(5, 8), e)
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="embeddings"):
        router(e, None)


@pytest.mark.parametrize("kwargs,err,match", [
    (dict(top_k=5), ValueError, "top_k"),
    (dict(top_k=0), ValueError, "top_k"),
    (dict(capacity_factor=0.0), ValueError, "capacity_factor"),
    (dict(capacity_factor=-1.0), ValueError, "capacity_factor"),
])
def test_bad_arguments(kwargs, err, match):
    with pytest.raises(err, match=match):
        MoEFFN(8, 6, LinearRouter(8, 4), **kwargs)


def test_bad_router_and_shapes():
    with pytest.raises(TypeError, match="Router"):
        MoEFFN(8, 6, nn.Linear(8, 4))
    with pytest.raises(ValueError, match="last dimension"):
        _layer()(torch.randn(3, 7))
