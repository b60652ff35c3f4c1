"""The rate-limited Markov coding game: policy, codes, and the coupled message channel."""

from __future__ import annotations

import numpy as np
import pytest

from labkit.infocomm import coupling as cp
from labkit.infocomm import mcg


def test_corridor_by_hand() -> None:
    mdp = mcg.Corridor(n_states=3)
    s, r = mdp.step(np.array([0, 0, 1, 2, 2]), np.array([0, 2, 2, 1, 2]))
    # left into the wall, right, right to the goal, stay at goal, right into the wall
    assert s.tolist() == [0, 1, 2, 2, 2]
    assert r.tolist() == [-0.5, 0.0, 1.0, 1.0, 0.5]


def test_soft_policy_temperature() -> None:
    mdp = mcg.Corridor()
    cold, hot = mcg.soft_policy(mdp, 0.05), mcg.soft_policy(mdp, 100.0)
    assert cold.sum(1) == pytest.approx(np.ones(5))
    assert cold[:4, 2] == pytest.approx(np.ones(4), abs=1e-3)  # walk right
    assert cold[4, 1] == pytest.approx(1.0, abs=1e-3)  # then stay
    assert hot == pytest.approx(np.full((5, 3), 1 / 3), abs=0.01)
    with pytest.raises(ValueError, match="beta must be > 0"):
        mcg.soft_policy(mdp, 0.0)


def test_zipf_and_quantiser() -> None:
    p = mcg.zipf(4)
    assert p == pytest.approx(np.array([12, 6, 4, 3]) / 25)
    assert set(mcg.uniform_quantiser(p, 0.0)) == {0}
    assert mcg.uniform_quantiser(p, cp.entropy(p)).tolist() == [0, 1, 2, 3]
    labels = mcg.uniform_quantiser(mcg.zipf(16), 1.0)
    assert labels.tolist() == [0] * 8 + [1] * 8
    with pytest.raises(ValueError, match=r"r must be in \[0, H\(M\)\]"):
        mcg.uniform_quantiser(p, 5.0)
    with pytest.raises(ValueError, match="n must be >= 1"):
        mcg.zipf(0)


def test_game_keeps_the_policy_and_decodes() -> None:
    mdp = mcg.Corridor()
    pi = mcg.soft_policy(mdp, 1.0)
    p = mcg.zipf(16)
    res = mcg.play(mdp, pi, p, mcg.ebim_code(p, 2.0), 4000, seed=0)
    # every coupling's action marginal is pi(. | s) exactly
    assert res.marginal_error < 1e-9
    # and the actions taken follow pi in every visited state
    freq = res.action_counts / res.action_counts.sum(1, keepdims=True)
    busy = res.action_counts.sum(1) > 2000
    assert np.abs(freq[busy] - pi[busy]).max() < 0.03
    # a constant code carries nothing: the receiver guesses the likeliest message
    zero = mcg.play(mdp, pi, p, np.zeros(16, dtype=np.int64), 4000, seed=0)
    assert abs(zero.accuracy - p[0]) < 3 * zero.accuracy_se
    assert res.accuracy > zero.accuracy + 5 * res.accuracy_se
    # the reward does not depend on the code (same policy, same uniforms)
    assert abs(res.reward - zero.reward) < 3 * res.reward_se


def test_identity_code_with_many_steps_is_exact() -> None:
    # near-uniform policy for 40 steps: about 60 bits, enough to pin down 4 messages
    mdp = mcg.Corridor(horizon=40)
    pi = mcg.soft_policy(mdp, 100.0)
    p = mcg.zipf(4)
    res = mcg.play(mdp, pi, p, np.arange(4), 500, seed=1)
    assert res.accuracy == 1.0


def test_play_bad_arguments() -> None:
    mdp = mcg.Corridor()
    pi = mcg.soft_policy(mdp, 1.0)
    p = mcg.zipf(4)
    with pytest.raises(ValueError, match="labels must give"):
        mcg.play(mdp, pi, p, np.arange(3), 10)
    with pytest.raises(ValueError, match="pi must have shape"):
        mcg.play(mdp, pi[:2], p, np.arange(4), 10)
    with pytest.raises(ValueError, match="n_episodes must be >= 2"):
        mcg.play(mdp, pi, p, np.arange(4), 1)
    with pytest.raises(ValueError, match="p_m must sum to 1"):
        mcg.play(mdp, pi, [0.5, 0.6], np.arange(2), 10)
