"""The shared training loop: early stopping restores the best weights, the history's clock, the
epoch-time extrapolation, and bad arguments."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from labkit.graphs import synthetic_interactions
from labkit.graphs.train import adam, evaluate, fit, time_epoch


class Fixed(nn.Module):
    """Embeddings set from outside: one-hot communities (an oracle) or noise."""

    def __init__(self, n_users: int, n_items: int, dim: int) -> None:
        super().__init__()
        self.users = nn.Parameter(torch.zeros(n_users, dim))
        self.items = nn.Parameter(torch.zeros(n_items, dim))

    def user_item_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.users, self.items


@pytest.fixture(scope="module")
def data():
    return synthetic_interactions(80, 60, n_communities=4, avg_degree=10.0, p_in=0.95, seed=1)


def oracle(model: Fixed, data) -> None:
    with torch.no_grad():
        model.users.copy_(nn.functional.one_hot(data.user_group, 4).float())
        model.items.copy_(nn.functional.one_hot(data.item_group, 4).float())


def test_early_stopping_restores_the_best_epoch(data) -> None:
    model = Fixed(data.n_users, data.n_items, 4)
    gen = torch.Generator().manual_seed(0)

    def run_epoch(epoch: int) -> float:
        if epoch == 2:
            oracle(model, data)  # the good weights appear at epoch 2 ...
        else:
            with torch.no_grad():  # ... and are overwritten by noise afterwards
                model.users.copy_(torch.randn(model.users.shape, generator=gen))
                model.items.copy_(torch.randn(model.items.shape, generator=gen))
        return float(epoch)

    result = fit(model, run_epoch, data, max_epochs=20, patience=3)
    assert result.best_epoch == 2 and result.epochs == 5 and result.stopped_early
    assert [p.epoch for p in result.history] == [1, 2, 3, 4, 5]
    assert result.losses == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert torch.equal(model.users, nn.functional.one_hot(data.user_group, 4).float())  # best weights back
    assert result.best_val.recall == max(p.recall for p in result.history)
    assert result.test.recall == evaluate(model, data, split="test").recall
    seconds = [p.seconds for p in result.history]
    assert seconds == sorted(seconds) and result.seconds_to_best == seconds[1]


def test_eval_every_and_last_epoch(data) -> None:
    model = Fixed(data.n_users, data.n_items, 4)
    oracle(model, data)
    result = fit(model, lambda epoch: 0.0, data, max_epochs=7, eval_every=3, patience=10)
    assert [p.epoch for p in result.history] == [3, 6, 7] and not result.stopped_early


def test_oracle_beats_noise(data) -> None:
    model = Fixed(data.n_users, data.n_items, 4)
    oracle(model, data)
    good = evaluate(model, data, split="val")
    with torch.no_grad():
        model.users.normal_(generator=torch.Generator().manual_seed(0))
    assert good.recall > evaluate(model, data, split="val").recall


def test_time_epoch_extrapolates() -> None:
    calls = []
    timing = time_epoch(lambda: calls.append(1), steps_per_epoch=100, max_steps=3, warmup=2)
    assert len(calls) == 5 and timing.timed_steps == 3 and timing.extrapolated
    assert timing.seconds_per_epoch == pytest.approx(100 * timing.seconds_per_step)
    assert not time_epoch(lambda: None, steps_per_epoch=2, max_steps=5).extrapolated


def test_adam_is_fused() -> None:
    opt = adam([nn.Parameter(torch.zeros(3))], lr=0.1)
    assert opt.defaults["fused"] is True


def test_bad_arguments(data) -> None:
    model = Fixed(data.n_users, data.n_items, 4)
    with pytest.raises(ValueError, match="max_epochs must be an int >= 1"):
        fit(model, lambda e: 0.0, data, max_epochs=0)
    with pytest.raises(ValueError, match="patience must be an int >= 1"):
        fit(model, lambda e: 0.0, data, max_epochs=1, patience=0)
    with pytest.raises(TypeError, match="run_epoch must be callable"):
        fit(model, None, data, max_epochs=1)
    with pytest.raises(ValueError, match="split must be 'val' or 'test'"):
        evaluate(model, data, split="train")
    with pytest.raises(ValueError, match="steps_per_epoch must be an int >= 1"):
        time_epoch(lambda: None, steps_per_epoch=0)
    with pytest.raises(ValueError, match="lr must be > 0"):
        adam([nn.Parameter(torch.zeros(1))], lr=0.0)


def test_loglog_slope_by_hand_and_bad_input() -> None:
    from labkit.graphs.train import loglog_slope

    # cost = 3 size^2 exactly: slope 2; cost = 5 size: slope 1
    assert loglog_slope([1, 10, 100], [3, 300, 30_000]) == pytest.approx(2.0)
    assert loglog_slope([2, 8], [10, 40]) == pytest.approx(1.0)
    # noisy points: the least-squares line through (0, 0), (1, 1.1), (2, 1.9) in log2 has slope 0.95
    assert loglog_slope([1, 2, 4], [1, 2**1.1, 2**1.9]) == pytest.approx(0.95)
    with pytest.raises(ValueError, match="same length"):
        loglog_slope([1, 2], [1])
    with pytest.raises(ValueError, match="> 0"):
        loglog_slope([1, 2], [0, 1])
    with pytest.raises(ValueError, match="distinct"):
        loglog_slope([3, 3], [1, 2])
