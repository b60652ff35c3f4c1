"""Adversarial cheap talk: the vectorised victims, the games, evolution strategies, errors."""

from __future__ import annotations

import pytest
import torch

from labkit.infocomm import cheap_talk as ct


@pytest.mark.parametrize("game", [ct.bandit(3, 3), ct.gridworld(3)])
def test_vectorised_victims_equal_loop_reference(game: ct.Game) -> None:
    gen = torch.Generator().manual_seed(0)
    noise = ct.victim_noise(game, 3, 5, 4, gen)
    msgs = torch.randn(3, game.n_states, 2, generator=gen)
    fast = ct.train_victims(game, msgs, noise, lr=0.7)
    slow = ct.train_victims_loop(game, msgs, noise, lr=0.7)
    assert fast.shape == (3, 5)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=0)
    # the victims learn something: returns vary across updates
    assert fast.std() > 0


def test_gridworld_moves_and_goal() -> None:
    g = ct.gridworld(3)
    s = torch.tensor([0, 0, 4, 5, 7])
    a = torch.tensor([0, 3, 1, 1, 3])  # up at the wall, right, down, down, right
    nxt, r, done = g.step(s, a)
    assert nxt.tolist() == [0, 1, 7, 8, 8]
    assert r.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]
    assert done.tolist() == [False, False, False, True, True]


def test_bandit_rewards_the_matching_action() -> None:
    g = ct.bandit(4, 2)
    nxt, r, done = g.step(torch.tensor([0, 1, 2, 3]), torch.tensor([0, 0, 0, 1]))
    assert r.tolist() == [1.0, 0.0, 1.0, 1.0]
    assert bool(done.all())


def test_victims_learn_the_bandit_with_a_silent_channel() -> None:
    g = ct.bandit()
    curves = ct.learning_curves(g, None, 32, 30, 8, torch.Generator().manual_seed(1))
    early, late = curves[:, :3].mean(), curves[:, -5:].mean()
    assert early < 0.4  # chance is 1/4
    assert late > early + 0.15


def test_odd_messages_are_symmetric() -> None:
    # victims start at zero weights, so f and -f give identical learning
    g = ct.bandit()
    phi = torch.randn(4, 2, generator=torch.Generator().manual_seed(2))
    a = ct.learning_curves(g, phi, 4, 6, 4, torch.Generator().manual_seed(3))
    b = ct.learning_curves(g, -phi, 4, 6, 4, torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)


def test_victim_return_scores_each_adversary_on_the_same_victims() -> None:
    g = ct.bandit()
    phis = torch.randn(3, 4, 2, generator=torch.Generator().manual_seed(4))
    phis[2] = phis[0]
    score = ct.victim_return(g, phis, 5, 4, 4, torch.Generator().manual_seed(5))
    assert score.shape == (3,)
    assert score[0] == score[2]
    one = ct.learning_curves(g, phis[1], 5, 4, 4, torch.Generator().manual_seed(5))
    assert float(score[1]) == pytest.approx(float(one.mean()), abs=1e-6)


@pytest.mark.parametrize("maximise", [True, False])
def test_es_improves_a_toy_objective(maximise: bool) -> None:
    target = torch.tensor([1.0, -2.0, 0.5])

    def objective(x: torch.Tensor) -> torch.Tensor:
        sign = -1.0 if maximise else 1.0
        return sign * ((x - target) ** 2).sum(-1)

    start = torch.zeros(3)
    phi, hist = ct.evolve(objective, start, population=16, generations=60, sigma=0.3,
                          lr=0.1, maximise=maximise, generator=torch.Generator().manual_seed(6))
    assert len(hist) == 60
    assert float((phi - target).norm()) < 0.25 * float((start - target).norm())


def test_errors() -> None:
    g = ct.bandit()
    with pytest.raises(ValueError, match="population"):
        ct.evolve(lambda x: x.sum(-1), torch.zeros(2), population=1, generations=1)
    with pytest.raises(ValueError, match="population"):
        ct.evolve(lambda x: x.sum(-1), torch.zeros(2), population=3, generations=1)
    with pytest.raises(TypeError, match="population"):
        ct.evolve(lambda x: x.sum(-1), torch.zeros(2), population=2.0, generations=1)
    with pytest.raises(ValueError, match="sigma"):
        ct.evolve(lambda x: x.sum(-1), torch.zeros(2), population=2, generations=1, sigma=0)
    with pytest.raises(ValueError, match="kind"):
        ct.Game("maze", 4, 4, 1)
    with pytest.raises(ValueError, match="size"):
        ct.gridworld(1)
    noise = ct.victim_noise(g, 2, 2, 2, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="msgs"):
        ct.train_victims(g, torch.zeros(3, 4, 1), noise)
    with pytest.raises(ValueError, match="lr"):
        ct.train_victims(g, torch.zeros(2, 4, 1), noise, lr=-1.0)
    with pytest.raises(ValueError, match="n_episodes"):
        ct.victim_noise(g, 2, 2, 1, torch.Generator())
    with pytest.raises(TypeError, match="phi"):
        ct.learning_curves(g, torch.zeros(4), 2, 2, 2, torch.Generator())
