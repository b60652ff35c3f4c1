"""Duo GPT: routes, the one-big-layer oracle, routers and the compute count."""

from __future__ import annotations

import pytest
import torch

from labkit.inference.duo import (BIG, SKIP, SMALL, DuoConfig, DuoGPT, LayerRouters, oracle_routes, route_macs)

CFG = DuoConfig(n_layer=3, n_head=2, d_model=16, block_size=12, d_small=8, d_big=32)


@pytest.fixture
def model() -> DuoGPT:
    torch.manual_seed(0)
    m = DuoGPT(CFG).eval()
    with torch.no_grad():  # non-zero output layers, so the routes differ
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(256, (2, 12), generator=g), torch.randint(256, (2, 12), generator=g)


def test_fixed_routes_match_per_token_routes(model: DuoGPT) -> None:
    x, y = _batch()
    route = torch.tensor([BIG, SMALL, SKIP])
    a = model(x, route, targets=y)[1]
    b = model(x, route.expand(2, 12, 3).clone(), targets=y)[1]
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, model(x, torch.tensor([SMALL, SMALL, SKIP]), targets=y)[1])


def test_skip_everywhere_is_attention_only(model: DuoGPT) -> None:
    x, _ = _batch()
    for block in model.blocks:  # zeroing both FFNs must not change an all-skip pass
        ref = model(x, torch.full((3,), SKIP))[0]
        for p in list(block.small.parameters()) + list(block.big.parameters()):
            p.data.zero_()
    torch.testing.assert_close(model(x, torch.full((3,), SKIP))[0], ref)


def test_decide_sees_each_layer(model: DuoGPT) -> None:
    x, y = _batch()
    seen = []

    def decide(layer: int, h: torch.Tensor) -> torch.Tensor:
        seen.append((layer, tuple(h.shape)))
        return torch.full(h.shape[:2], BIG)
    torch.testing.assert_close(model(x, decide=decide, targets=y)[1], model(x, targets=y)[1])
    assert seen == [(i, (2, 12, 16)) for i in range(3)]


def test_oracle_is_per_token_minimum(model: DuoGPT) -> None:
    x, y = _batch(1)
    o = oracle_routes(model, x, y)
    assert o.losses.shape == (4, 2, 12) and o.choice.min() >= -1 and o.choice.max() <= 2
    assert o.loss <= float(o.losses.mean((1, 2)).min()) + 1e-6
    # the chosen candidate's route has exactly one big layer, or none
    bigs = (o.routes == BIG).sum(-1)
    assert torch.equal(bigs, (o.choice >= 0).long())
    torch.testing.assert_close(o.losses.gather(0, (o.choice + 1)[None])[0].mean(), torch.tensor(o.loss))


def test_route_macs_by_hand() -> None:
    # big, small, skip at D=16: 2*16*32 + 2*16*8 + 0 = 1280
    assert route_macs(CFG, torch.tensor([BIG, SMALL, SKIP])) == 1280.0
    assert route_macs(CFG, torch.tensor([[BIG, BIG, BIG], [SKIP, SKIP, SKIP]])) == 3 * 1024 / 2


def test_router_threshold_extremes(model: DuoGPT) -> None:
    r = LayerRouters(CFG)
    h = torch.randn(2, 12, 16)
    assert (r.decider(0.0)(0, h) == BIG).all()
    with pytest.raises(ValueError, match="threshold"):
        r.decider(1.0)


def test_bad_arguments(model: DuoGPT) -> None:
    x, _ = _batch()
    with pytest.raises(ValueError, match="routes"):
        model(x, torch.tensor([BIG, BIG]))
    with pytest.raises(ValueError, match="routes"):
        model(x, torch.tensor([BIG, BIG, 3]))
    with pytest.raises(TypeError, match="routes"):
        model(x, torch.tensor([2.0, 2.0, 2.0]))
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 13, dtype=torch.long))
    with pytest.raises(ValueError, match="d_small"):
        DuoConfig(d_small=64, d_big=64)
    with pytest.raises(TypeError, match="cfg"):
        DuoGPT("big")
    with pytest.raises(ValueError, match="n_layer"):
        route_macs(CFG, torch.tensor([1, 1]))


def test_train_duo_learns_and_checks_its_arguments() -> None:
    from labkit.data.corpus import TextCorpus
    from labkit.inference.duo import routed_loss, train_duo

    text = ("def f(x):\n    return x + 1\n" * 200).encode()
    data = torch.tensor(list(text), dtype=torch.uint8)
    corpus = TextCorpus(train=data, val=data.clone(), files_train=("a",), files_val=("a",))
    m0 = DuoGPT(CFG).eval()
    m = train_duo(CFG, corpus, steps=40, batch_size=4, progress=False)
    before = routed_loss(m0, corpus, batches=2, batch_size=4)[0]
    after, macs = routed_loss(m, corpus, batches=2, batch_size=4)
    assert after < before - 1.0  # a repeated line is easy to learn
    assert macs == route_macs(CFG, torch.full((3,), BIG))
    with pytest.raises(ValueError, match="route_probs"):
        train_duo(CFG, corpus, steps=1, route_probs=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="steps"):
        train_duo(CFG, corpus, steps=0)
