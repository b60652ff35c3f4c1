"""SynFlow pruning, sign supermasks and their federated rounds (labkit.federated.supermask)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from labkit.diffusion.quality import DigitClassifier
from labkit.federated.supermask import (
    FederatedConfig,
    iid_split,
    kept_count,
    majority_vote,
    pack_bits,
    prunable_weights,
    random_masks,
    run_fedavg,
    run_supermask,
    supermask_weights,
    synflow_masks,
    synflow_saliency,
    unpack_bits,
)


def _two_layer() -> nn.Sequential:
    net = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, -2.0], [3.0, 0.5]]))
        net[1].weight.copy_(torch.tensor([[-4.0, 1.0]]))
    return net


def test_synflow_saliency_by_hand():
    # R = 1^T |W2| |W1| 1 = 4 * (1 + 2) + 1 * (3 + 0.5) = 15.5
    # dR/d|W1_ij| = |W2_i|, so saliency(W1_ij) = |W1_ij| |W2_i|: [[4, 8], [3, 0.5]]
    # dR/d|W2_i| = sum_j |W1_ij|, so saliency(W2) = [4 * 3, 1 * 3.5] = [12, 3.5]
    net = _two_layer()
    masks = {n: torch.ones_like(w, dtype=torch.bool) for n, w in prunable_weights(net).items()}
    sal = synflow_saliency(net, masks, (2,))
    assert torch.allclose(sal["0.weight"], torch.tensor([[4.0, 8.0], [3.0, 0.5]], dtype=torch.float64))
    assert torch.allclose(sal["1.weight"], torch.tensor([[12.0, 3.5]], dtype=torch.float64))
    # a pruned weight carries no flow: cutting W1_01 removes 2 from unit 0's input
    masks["0.weight"][0, 1] = False
    sal = synflow_saliency(net, masks, (2,))
    assert sal["0.weight"][0, 1] == 0 and sal["1.weight"][0, 0] == 4.0


def test_synflow_saliency_works_under_no_grad():
    net = _two_layer()
    masks = {n: torch.ones_like(w, dtype=torch.bool) for n, w in prunable_weights(net).items()}
    with torch.no_grad():
        sal = synflow_saliency(net, masks, (2,))
    assert sal["1.weight"][0, 0] == 12.0


@pytest.mark.parametrize("density", [0.1, 0.3, 1.0])
def test_masks_keep_the_requested_count_and_every_layer(density):
    model = DigitClassifier(init_seed=0)
    total = sum(w.numel() for w in prunable_weights(model).values())
    before = {n: p.clone() for n, p in model.state_dict().items()}
    for masks in (synflow_masks(model, density, iterations=10), random_masks(model, density)):
        assert kept_count(masks) == round(total * density)
        assert all(m.dtype == torch.bool and m.any() for m in masks.values())
    assert all(torch.equal(before[n], p) for n, p in model.state_dict().items())


def test_synflow_avoids_layer_collapse_where_it_is_iterated():
    # the smallest layer (conv1, 144 weights) keeps most of its weights at 5 % density,
    # while the largest (fc) is thinned below the global density
    model = DigitClassifier(init_seed=0)
    masks = synflow_masks(model, 0.05, iterations=20)
    assert masks["conv1.weight"].float().mean() > 0.5
    assert masks["fc.weight"].float().mean() < 0.05


@pytest.mark.parametrize("density", [0, 0.0, -0.5, 1.5, float("nan")])
def test_density_outside_unit_interval_is_rejected(density):
    model = DigitClassifier(init_seed=0)
    with pytest.raises(ValueError, match="density"):
        synflow_masks(model, density)
    with pytest.raises(ValueError, match="density"):
        random_masks(model, density)


def test_bad_types_are_rejected():
    with pytest.raises(TypeError, match="density"):
        synflow_masks(DigitClassifier(), "0.1")
    with pytest.raises(TypeError, match="model"):
        prunable_weights("not a model")
    with pytest.raises(TypeError, match="bits"):
        pack_bits(torch.ones(3))
    with pytest.raises(ValueError, match="n_bits"):
        unpack_bits(torch.zeros(1, dtype=torch.uint8), 9)


def test_pack_bits_by_hand_and_round_trip():
    bits = torch.tensor([1, 0, 1, 0, 0, 0, 0, 0, 1], dtype=torch.bool)
    assert pack_bits(bits).tolist() == [0b10100000, 0b10000000]
    gen = torch.Generator().manual_seed(0)
    for n in (1, 7, 8, 9, 2155):
        bits = torch.rand(n, generator=gen) > 0.5
        packed = pack_bits(bits)
        assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(n / 8)
        assert torch.equal(unpack_bits(packed, n), bits)


def test_majority_vote_by_hand():
    bits = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 1], [0, 1, 0, 0], [1, 0, 1, 1]], dtype=torch.bool)
    previous = torch.tensor([0, 1, 1, 0], dtype=torch.bool)
    # column votes 3:1 yes, 2:2 tie, 1:3 no, 2:2 tie -> yes, keep 1, no, keep 0
    assert majority_vote(bits, previous).tolist() == [True, True, False, False]


def test_supermask_forward_and_straight_through_gradient():
    init = {"w": torch.tensor([[2.0, -3.0, 0.5]])}
    masks = {"w": torch.tensor([[True, True, False]])}
    scores = {"w": torch.tensor([[0.1, -0.2, 0.3]], requires_grad=True)}
    sign = supermask_weights(init, masks, scores, "sign")["w"]
    assert sign.tolist() == [[2.0, 3.0, 0.0]]
    (grad,) = torch.autograd.grad(sign.sum(), scores["w"])
    assert grad.tolist() == [[2.0, -3.0, 0.0]]  # d w / d score = m * theta_0
    binary = supermask_weights(init, masks, scores, "binary")["w"]
    assert binary.tolist() == [[2.0, 0.0, 0.0]]


def _tiny_task(n_clients=3):
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(90, 1, 8, 8, generator=gen) * 2 - 1
    y = torch.randint(10, (90,), generator=gen)
    return iid_split(x[:60], y[:60], n_clients, seed=0), (x[60:], y[60:])


def test_run_supermask_uploads_ceil_kept_over_8_bytes_and_never_trains_weights():
    model = DigitClassifier(init_seed=0)
    before = {n: p.clone() for n, p in model.state_dict().items()}
    clients, test = _tiny_task()
    masks = synflow_masks(model, 0.1, iterations=5)
    config = FederatedConfig(rounds=2, local_steps=2, batch_size=8)
    for kind in ("sign", "binary"):
        run = run_supermask(model, masks, clients, test, kind=kind, config=config)
        assert len(run.accuracy) == 2 and all(0 <= a <= 1 for a in run.accuracy)
        assert run.kept == kept_count(masks)
        assert run.bytes_per_round == math.ceil(kept_count(masks) / 8)
    assert all(torch.equal(before[n], p) for n, p in model.state_dict().items())


def test_run_supermask_learns_a_separable_task():
    # two classes told apart by the mean pixel: a few rounds of sign flips must beat chance
    gen = torch.Generator().manual_seed(1)
    y = torch.randint(2, (200,), generator=gen)
    x = (torch.rand(200, 1, 8, 8, generator=gen) - 0.5) + (y.float() * 2 - 1).view(-1, 1, 1, 1) * 0.5
    clients = iid_split(x[:150], y[:150], 3, seed=0)
    model = DigitClassifier(init_seed=0)
    config = FederatedConfig(rounds=6, local_steps=5, batch_size=16, lr=1e-2)
    run = run_supermask(model, synflow_masks(model, 0.3, iterations=5), clients, (x[150:], y[150:]),
                        config=config)
    assert max(run.accuracy) > 0.8


def test_run_fedavg_counts_float32_bytes_and_learns():
    clients, test = _tiny_task()
    model = DigitClassifier(init_seed=0)
    n_params = sum(p.numel() for p in model.parameters())
    run = run_fedavg(model, clients, (clients[0][0], clients[0][1]),
                     config=FederatedConfig(rounds=3, local_steps=5, batch_size=8, lr=1e-2))
    assert run.bytes_per_round == 4 * n_params
    assert run.accuracy[-1] > 0.3  # memorises a client's own (random) labels beyond chance


def test_run_arguments_are_checked():
    model = DigitClassifier(init_seed=0)
    clients, test = _tiny_task()
    masks = random_masks(model, 0.5)
    with pytest.raises(ValueError, match="kind"):
        run_supermask(model, masks, clients, test, kind="ternary")
    with pytest.raises(ValueError, match="clients"):
        run_supermask(model, masks, clients[:1], test)
    with pytest.raises(ValueError, match="masks"):
        run_supermask(model, {"fc.weight": masks["fc.weight"]}, clients, test)
    with pytest.raises(ValueError, match="config.lr"):
        run_fedavg(model, clients, test, config=FederatedConfig(lr=0.0))
    with pytest.raises(TypeError, match="config"):
        run_fedavg(model, clients, test, config={"rounds": 2})


def test_iid_split_deals_every_row_once():
    x = torch.arange(23.0).view(23, 1)
    y = torch.arange(23)
    shards = iid_split(x, y, 4, seed=3)
    assert sorted(len(s[1]) for s in shards) == [5, 6, 6, 6]
    assert sorted(torch.cat([s[1] for s in shards]).tolist()) == list(range(23))
    with pytest.raises(ValueError, match="n_clients"):
        iid_split(x, y, 1)
