"""Ferret: blocks, shared bases, unbiased reconstruction, its error, FedAvg and Ferret runs."""

from __future__ import annotations

import pytest
import torch

from labkit.federated.projection import (
    FedConfig,
    basis,
    coordinate_count,
    expected_error,
    parameter_blocks,
    project,
    project_on,
    rebuild_from,
    reconstruct,
    round_bases,
    run_federated,
)
from labkit.lm import GPT, GPTConfig

TINY = dict(n_layer=1, d_model=16, n_head=2, block_size=16, ffn="dense", d_ff=32)


def _model() -> dict:
    net = GPT(GPTConfig(**TINY), init_seed=3)
    return dict(config=GPTConfig(**TINY).as_dict(), state=net.state_dict())


def _tokens(n: int) -> torch.Tensor:
    text = (b"def f(x):\n    return x + 1  # add one\n" * 60)[:n]
    return torch.frombuffer(bytearray(text), dtype=torch.uint8)


def test_blocks_by_hand() -> None:
    assert parameter_blocks([3, 4, 5]) == [(0, 3), (3, 7), (7, 12)]
    assert parameter_blocks([3, 4, 5, 1], min_size=6) == [(0, 7), (7, 13)]
    assert parameter_blocks([3, 4], min_size=100) == [(0, 7)]
    with pytest.raises(ValueError, match="sizes"):
        parameter_blocks([])
    with pytest.raises(ValueError, match="min_size"):
        parameter_blocks([3], min_size=0)
    assert coordinate_count([(0, 3), (3, 10)], 4) == 3 + 4


def test_bases_are_shared_and_scaled() -> None:
    v = basis(400, 300, seed=1, round_=2, block=0)
    assert v.shape == (300, 400)
    assert torch.equal(v, basis(400, 300, seed=1, round_=2, block=0))  # shared randomness
    assert not torch.equal(v, basis(400, 300, seed=1, round_=3, block=0))
    assert abs(float(v.pow(2).sum(1).mean()) - 1.0) < 0.02  # entries N(0, 1/d): unit rows
    with pytest.raises(ValueError, match="k"):
        basis(10, 11, seed=0, round_=0, block=0)


def test_full_k_on_one_block_recovers_through_the_expectation() -> None:
    # with k = d orthogonal-ish bases: the error is (d + 1) / d ||Delta||^2 on average
    delta = torch.randn(50, generator=torch.Generator().manual_seed(0))
    blocks = [(0, 50)]
    err = [float((reconstruct(project(delta, blocks, 50, seed=0, round_=r), blocks, seed=0,
                              round_=r) - delta).pow(2).sum()) for r in range(200)]
    predicted = expected_error(delta, blocks, 50)
    assert predicted == pytest.approx(51 / 50 * float(delta.pow(2).sum()), rel=1e-6)
    assert sum(err) / len(err) == pytest.approx(predicted, rel=0.15)


def test_reconstruction_is_unbiased() -> None:
    gen = torch.Generator().manual_seed(1)
    delta = torch.randn(60, generator=gen)
    blocks = parameter_blocks([10, 20, 30])
    mean = torch.zeros(60)
    rounds = 4000
    for r in range(rounds):
        mean += reconstruct(project(delta, blocks, 3, seed=5, round_=r), blocks, seed=5, round_=r)
    mean /= rounds
    # each coordinate of one reconstruction has std ~ sqrt((d_b + 1) / k) |Delta_b| / sqrt(d_b)
    rel = float((mean - delta).norm() / delta.norm())
    assert rel < 0.15
    # and a single reconstruction is far off: the average is what is right
    one = reconstruct(project(delta, blocks, 3, seed=5, round_=0), blocks, seed=5, round_=0)
    assert float((one - delta).norm() / delta.norm()) > 1.0


def test_error_falls_as_one_over_k() -> None:
    delta = torch.randn(2000, generator=torch.Generator().manual_seed(2))
    blocks = parameter_blocks([500, 1500])
    measured = {}
    for k in (4, 64):
        errs = [float((reconstruct(project(delta, blocks, k, seed=1, round_=r), blocks, seed=1,
                                   round_=r) - delta).pow(2).sum()) for r in range(40)]
        measured[k] = sum(errs) / len(errs)
        assert measured[k] == pytest.approx(expected_error(delta, blocks, k), rel=0.3)
    assert measured[4] / measured[64] > 8


def test_cached_and_regenerated_bases_agree() -> None:
    delta = torch.randn(30, generator=torch.Generator().manual_seed(3))
    blocks = parameter_blocks([10, 20])
    bases = round_bases(blocks, 4, seed=2, round_=1)
    coords = project_on(delta, blocks, bases)
    assert all(torch.equal(a, b) for a, b in zip(coords, project(delta, blocks, 4, seed=2, round_=1)))
    assert torch.equal(rebuild_from(coords, blocks, bases),
                       reconstruct(coords, blocks, seed=2, round_=1))
    assert [c.numel() for c in coords] == [4, 4]


def test_projection_validates() -> None:
    delta = torch.randn(30)
    blocks = parameter_blocks([10, 20])
    with pytest.raises(ValueError, match="K"):
        project(delta, blocks, 0, seed=0, round_=0)
    with pytest.raises(ValueError, match="K"):
        project(delta, blocks, 31, seed=0, round_=0)
    with pytest.raises(ValueError, match="blocks"):
        project(delta, [(0, 10), (12, 30)], 2, seed=0, round_=0)
    with pytest.raises(TypeError, match="delta"):
        project(delta.double(), blocks, 2, seed=0, round_=0)
    with pytest.raises(ValueError, match="coords"):
        reconstruct([torch.zeros(2)], blocks, seed=0, round_=0)
    with pytest.raises(ValueError, match="blocks"):
        round_bases([], 2, seed=0, round_=0)


def test_fedavg_and_ferret_runs_count_bytes() -> None:
    cfg = FedConfig(rounds=2, clients=2, local_steps=2, lr=0.05, server_lr=1.0, batch_size=2,
                    eval_windows=4)
    kwargs = dict(model=_model(), train=_tokens(1200), held_out=_tokens(300))
    fedavg = run_federated("fedavg", cfg=cfg, **kwargs)
    d = fedavg["coordinates"]
    assert d == sum(t.numel() for t in GPT(GPTConfig(**TINY)).parameters())
    assert fedavg["bytes"] == [0, 4 * d, 8 * d] and len(fedavg["held_out"]) == 3
    assert fedavg["held_out"][-1] < fedavg["held_out"][0]  # it learns the repeated line
    ferret = run_federated("ferret", cfg=cfg, k=3, **kwargs)
    per_round = 4 * coordinate_count(ferret["blocks"], 3)
    assert ferret["bytes"] == [0, per_round, 2 * per_round]
    assert len(ferret["relative_error"]) == 2 and min(ferret["relative_error"]) > 1.0
    with pytest.raises(ValueError, match="k is required"):
        run_federated("ferret", cfg=cfg, **kwargs)
    with pytest.raises(ValueError, match="K"):
        run_federated("ferret", cfg=cfg, k=d + 1, **kwargs)
    with pytest.raises(ValueError, match="method"):
        run_federated("fedsgd", cfg=cfg, **kwargs)
    with pytest.raises(ValueError, match="clients"):
        FedConfig(clients=1)
    with pytest.raises(ValueError, match="server_lr"):
        FedConfig(server_lr=0.0)


def test_loss_at_bytes_and_the_figure() -> None:
    from labkit.federated._spsa_runs import loss_at_bytes, loss_bytes_figure

    assert loss_at_bytes([0, 100, 200], [3.0, 2.9, 2.8], 150) == 2.9
    assert loss_at_bytes([0, 100, 200], [3.0, 2.9, 2.8], 200) == 2.8
    with pytest.raises(ValueError, match="within"):
        loss_at_bytes([10, 20], [3.0, 2.9], 5)
    with pytest.raises(ValueError, match="equal length"):
        loss_at_bytes([0, 1], [3.0], 5)
    fig = loss_bytes_figure(([0, 50, 100], [3.0, 2.95, 2.9]), ([0, 1000], [3.0, 2.7]),
                            {1: ([0, 10], [3.0, 2.99]), 4: ([0, 40], [3.0, 2.97])})
    assert [t.name for t in fig.data] == ["Just One Byte", "FedAvg", "Ferret, K = 1",
                                          "Ferret, K = 4"]
    assert [t.visible for t in fig.data[2:]] == [False, True]  # the largest K first
    assert fig.layout.sliders[0].steps[0].args[0]["visible"] == [True, True, True, False]
    assert list(fig.data[0].x) == [50, 100]  # the zero point is the dotted line
