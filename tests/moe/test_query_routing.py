"""labkit.moe.query_routing: prompt features, expert and cost-aware routers, frontier margins, MoGU."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from labkit.moe.model_routing import fit_ngram
from labkit.moe.query_routing import (MoGURouter, fit_gain_predictor, frontier_margins, make_safety_task, mogu_logits,
                                      prompt_features, safety_metrics, threshold_routing, train_classifier,
                                      train_expert_router, train_mogu_router)
from labkit.testing import assert_close


def test_prompt_features_by_hand() -> None:
    tokens = torch.tensor([[0, 0, 1, 1, 9, 9], [5, 5, 5, 5, 0, 1]])
    feats = prompt_features(tokens, prompt_len=4)
    assert feats.shape == (2, 257) and feats.dtype == torch.float32
    assert_close(feats[0, [0, 1]], torch.full((2,), math.sqrt(0.5)))
    assert float(feats[0, 9]) == 0.0  # after the prompt: not read
    assert_close(feats[1, 5], torch.tensor(1.0))
    assert_close(feats[:, :256].norm(dim=1), torch.ones(2))  # root frequencies: unit vectors
    assert_close(feats[:, -1], torch.ones(2))
    model = fit_ngram(torch.tensor([0, 1, 0, 1, 5, 5], dtype=torch.uint8), order=2)
    with_lm = prompt_features(tokens, prompt_len=4, models=[model])
    assert with_lm.shape == (2, 258)
    assert_close(with_lm[:, 256], (model.bits_per_byte(tokens[:, :4]) / 8).float())


def test_prompt_features_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="prompt_len must be in"):
        prompt_features(torch.zeros(2, 3, dtype=torch.long), prompt_len=4)
    with pytest.raises(TypeError, match="2-D integer tensor"):  # float tokens: a wrong dtype
        prompt_features(torch.zeros(2, 3), prompt_len=2)
    with pytest.raises(ValueError, match="2-D integer tensor"):
        prompt_features(torch.zeros(3, dtype=torch.long), prompt_len=2)
    with pytest.raises(TypeError, match="NGramLM"):
        prompt_features(torch.zeros(2, 3, dtype=torch.long), prompt_len=2, models=["bigram"])


def test_expert_router_learns_separable_choices() -> None:
    gen = torch.Generator().manual_seed(0)
    best = torch.randint(0, 3, (90,), generator=gen)
    features = torch.cat([nn.functional.one_hot(best, 3).float() + 0.1 * torch.randn(90, 3, generator=gen),
                          torch.ones(90, 1)], dim=1)  # (Q, 4)
    losses = 2.0 - nn.functional.one_hot(best, 3).double()  # (Q, E): the labelled expert is 1 bit better
    router = train_expert_router(features, losses)
    assert router.n_params == 4 * 3
    assert torch.equal(router.route(features), best)
    with pytest.raises(ValueError, match="4 columns"):
        router.route(torch.zeros(2, 5))


def test_expert_router_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="features must be a non-empty 2-D float tensor"):
        train_expert_router(torch.zeros(4, dtype=torch.float32), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="losses must have 4 rows"):
        train_expert_router(torch.zeros(4, 3), torch.zeros(5, 2))
    with pytest.raises(ValueError, match="at least two experts"):
        train_expert_router(torch.zeros(4, 3), torch.zeros(4, 1))
    with pytest.raises(ValueError, match="l2 must be >= 0"):
        train_expert_router(torch.zeros(4, 3), torch.zeros(4, 2), l2=-1.0)


def test_gain_predictor_recovers_a_linear_rule() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(200, 5, generator=gen)
    w = torch.tensor([0.5, -1.0, 0.0, 2.0, 0.25])
    torch.testing.assert_close(fit_gain_predictor(x, x @ w, l2=1e-6), w, atol=1e-4, rtol=1e-4)
    shrunk = fit_gain_predictor(x, x @ w, l2=1e4)
    assert float(shrunk.norm()) < float(w.norm())  # ridge shrinks towards zero
    with pytest.raises(ValueError, match="l2 must be > 0"):
        fit_gain_predictor(x, x @ w, l2=0.0)
    with pytest.raises(ValueError, match=r"gain must be a tensor of shape \(200,\)"):
        fit_gain_predictor(x, torch.zeros(3))


def test_threshold_routing_by_hand() -> None:
    predicted = torch.tensor([1.0, 0.0, 0.5, -1.0])
    kw = dict(loss_cheap=torch.full((4,), 2.0), loss_dear=torch.tensor([1.0, 2.0, 1.5, 3.0]), cost_cheap=1.0,
              cost_dear=3.0)
    curve = threshold_routing(predicted, thresholds=torch.tensor([0.25, -5.0, 5.0]), **kw)
    assert_close(curve.share, torch.tensor([0.5, 1.0, 0.0], dtype=torch.float64))
    assert_close(curve.loss, torch.tensor([(1 + 2 + 1.5 + 2) / 4, 7.5 / 4, 2.0], dtype=torch.float64))
    assert_close(curve.cost, torch.tensor([2.0, 3.0, 1.0], dtype=torch.float64))
    # the mean cost is linear in the share sent to the dear model
    assert_close(curve.cost, 1.0 + 2.0 * curve.share)
    with_router = threshold_routing(predicted, thresholds=torch.tensor([0.25]), router_cost=0.5, **kw)
    assert_close(with_router.cost, torch.tensor([2.5], dtype=torch.float64))


def test_threshold_routing_rejects_bad_input() -> None:
    kw = dict(loss_cheap=torch.zeros(2), loss_dear=torch.zeros(2), cost_cheap=1.0, cost_dear=2.0,
              thresholds=torch.zeros(1))
    with pytest.raises(ValueError, match="predicted_gain"):
        threshold_routing(torch.zeros(2, 1), **kw)
    with pytest.raises(ValueError, match=r"loss_dear must be a tensor of shape \(2,\)"):
        threshold_routing(torch.zeros(2), **{**kw, "loss_dear": torch.zeros(3)})
    with pytest.raises(ValueError, match="cost_cheap < cost_dear"):
        threshold_routing(torch.zeros(2), **{**kw, "cost_dear": 1.0})
    with pytest.raises(ValueError, match="thresholds"):
        threshold_routing(torch.zeros(2), **{**kw, "thresholds": torch.zeros(0)})


def test_frontier_margins_by_hand() -> None:
    costs, losses = torch.tensor([1.0, 3.0, 9.0]), torch.tensor([2.0, 1.0, 0.5])
    m = frontier_margins(2.0, 1.25, single_costs=costs, single_losses=losses)
    assert (m.below, m.above) == (0, 1)
    assert math.isclose(m.dominance, 2.0 - 1.25) and math.isclose(m.interpolation, 1.5 - 1.25)
    worse = frontier_margins(2.0, 1.75, single_costs=costs, single_losses=losses)
    assert worse.interpolation < 0 < worse.dominance  # better than the cheaper model, below the line
    cheapest = frontier_margins(0.5, 3.0, single_costs=costs, single_losses=losses)
    assert cheapest.dominance == math.inf and math.isnan(cheapest.interpolation) and cheapest.below == -1
    with pytest.raises(ValueError, match="single_losses"):
        frontier_margins(2.0, 1.0, single_costs=costs, single_losses=torch.zeros(2))
    with pytest.raises(ValueError, match="single_costs"):
        frontier_margins(2.0, 1.0, single_costs=torch.zeros(0), single_losses=torch.zeros(0))


def test_safety_task_regions() -> None:
    task = make_safety_task(dim=6, n_classes=3, harmful_rate=0.25, seed=0)
    assert task.refuse == task.n_classes == 3
    x, label, harmful = task.sample(20_000, generator=torch.Generator().manual_seed(0))
    assert x.shape == (20_000, 6) and label.max() < 3 and harmful.dtype == torch.bool
    assert abs(float(harmful.double().mean()) - 0.25) < 0.02
    wider = task.flagged(x, margin=0.5)
    assert bool((wider | ~harmful).all()) and int(wider.sum()) > int(harmful.sum())  # a superset
    with pytest.raises(ValueError, match="harmful_rate"):
        make_safety_task(harmful_rate=1.0)
    with pytest.raises(ValueError, match="n_classes must be >="):
        make_safety_task(n_classes=1)


def test_mogu_mixture_and_weights() -> None:
    usable, safe = nn.Linear(3, 4), nn.Linear(3, 4)
    router = MoGURouter(3, hidden=5)
    x = torch.randn(7, 3, generator=torch.Generator().manual_seed(0))
    logits, weights = mogu_logits(x, usable, safe, router)
    assert_close(weights.sum(dim=1), torch.ones(7))
    with torch.no_grad():
        router.net[-1].weight.zero_()
        router.net[-1].bias.copy_(torch.tensor([30.0, -30.0]))  # all weight on the usable variant
        assert_close(mogu_logits(x, usable, safe, router)[0], usable(x))


def test_mogu_end_to_end_small() -> None:
    task = make_safety_task(dim=4, n_classes=3, seed=1)
    gen = torch.Generator().manual_seed(1)
    x, label, harmful = task.sample(1500, generator=gen)
    xr, label_r, harmful_r = task.sample(600, generator=gen)
    xt, label_t, harmful_t = task.sample(1500, generator=gen)
    usable = train_classifier(x, label, n_outputs=4, epochs=150, seed=1)
    safe = train_classifier(x, torch.where(task.flagged(x, margin=0.5), task.refuse, label), n_outputs=4,
                            refuse_weight=3.0, epochs=150, seed=1)
    router = train_mogu_router(xr, label_r, harmful_r, usable, safe, refuse=task.refuse, epochs=150, seed=1)
    with torch.no_grad():
        s_usable = safety_metrics(usable(xt), label_t, harmful_t, refuse=task.refuse)
        s_safe = safety_metrics(safe(xt), label_t, harmful_t, refuse=task.refuse)
        s_mogu = safety_metrics(mogu_logits(xt, usable, safe, router)[0], label_t, harmful_t, refuse=task.refuse)
    assert s_usable.harmful_refusal < 0.05 and s_safe.harmful_refusal > 0.95
    assert s_safe.benign_refusal > 0.1  # over-cautious by construction
    assert s_mogu.harmful_refusal > 0.85 and s_mogu.benign_accuracy > s_safe.benign_accuracy + 0.05


def test_safety_metrics_by_hand() -> None:
    logits = torch.eye(3)[[0, 2, 1, 2]]  # predictions 0, 2, 1, 2 (2 = refuse)
    m = safety_metrics(logits, torch.tensor([0, 1, 1, 0]), torch.tensor([False, False, True, True]), refuse=2)
    assert (m.harmful_refusal, m.benign_accuracy, m.benign_refusal) == (0.5, 0.5, 0.5)
    with pytest.raises(ValueError, match="both harmful and benign"):
        safety_metrics(logits, torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.bool), refuse=2)
    with pytest.raises(ValueError, match="harmful must be a bool tensor"):
        safety_metrics(logits, torch.zeros(4, dtype=torch.long), torch.ones(4), refuse=2)
    with pytest.raises(ValueError, match="refuse must be in"):
        safety_metrics(logits, torch.zeros(4, dtype=torch.long), torch.tensor([True, False] * 2), refuse=3)


def test_training_rejects_bad_input() -> None:
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match=r"target classes must lie in \[0, n_outputs=3\)"):
        train_classifier(x, torch.tensor([0, 1, 2, 3]), n_outputs=3)
    with pytest.raises(ValueError, match="target must be an integer tensor"):
        train_classifier(x, torch.zeros(4), n_outputs=3)
    with pytest.raises(ValueError, match="refuse_weight"):
        train_classifier(x, torch.zeros(4, dtype=torch.long), n_outputs=3, refuse_weight=0.0)
    with pytest.raises(ValueError, match="harmful must be a bool tensor"):
        train_mogu_router(x, torch.zeros(4, dtype=torch.long), torch.zeros(4), nn.Linear(2, 3), nn.Linear(2, 3),
                          refuse=2)
    with pytest.raises(ValueError, match="supervise"):
        train_mogu_router(x, torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.bool), nn.Linear(2, 3),
                          nn.Linear(2, 3), refuse=2, supervise=-1.0)
