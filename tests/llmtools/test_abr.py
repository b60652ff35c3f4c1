import numpy as np
import pytest
import torch

from labkit.lm.gpt import GPT, GPTConfig
from labkit.llmtools.abr import (BITRATES_KBPS, N_CHUNKS, REGIMES, NetLLMPolicy, Observation, bba, chunk_qoe,
                                 experience, make_traces, mpc, rate_based, simulate, train_netllm)

SMALL = GPTConfig(n_layer=1, n_head=2, d_model=16, d_ff=32, block_size=24)


def test_traces_are_seeded_positive_and_regimes_differ():
    a = make_traces("broadband", 5, seed=3)
    assert a.shape == (5, N_CHUNKS) and (a > 0).all()
    assert np.array_equal(a, make_traces("broadband", 5, seed=3))
    assert make_traces("congested", 200, seed=0).mean() < make_traces("broadband", 200, seed=0).mean()
    with pytest.raises(ValueError, match="regime"):
        make_traces("lunar", 2, seed=0)


def test_qoe_and_simulator_follow_the_buffer_by_hand():
    # a constant 1.2 Mbit/s trace and always level 2 (1.2 Mbit/s): every chunk takes 4 s
    traces = np.full((1, N_CHUNKS), 1.2)
    roll = simulate(lambda obs: np.full(1, 2), traces)
    # first chunk: empty buffer -> 4 s stall, switch from level 0 (0.3 -> 1.2)
    assert roll.rebuffer_s[0, 0] == pytest.approx(4.0)
    assert roll.qoe[0, 0] == pytest.approx(1.2 - 4.3 * 4.0 - 0.9)
    assert np.allclose(roll.rebuffer_s[0, 1:], 0.0) and np.allclose(roll.qoe[0, 1:], 1.2)
    assert chunk_qoe(np.array([5]), np.array([0]), np.array([0.0]))[0] == pytest.approx(4.3 - 4.0)


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="shorter than the video"):
        simulate(bba, np.ones((2, N_CHUNKS - 1)))
    with pytest.raises(ValueError, match="unknown bitrate level 6"):
        simulate(lambda obs: np.full(2, len(BITRATES_KBPS)), np.ones((2, N_CHUNKS)))
    with pytest.raises(ValueError, match="unknown bitrate level -1"):
        chunk_qoe(np.array([-1]), np.array([0]), np.array([0.0]))


def test_baselines_react_as_designed():
    obs = Observation(3, np.array([[0.2, 0.2, 0.2], [9.0, 9.0, 9.0]]), np.array([1.0, 40.0]),
                      np.zeros(2, dtype=np.int64))
    assert bba(obs).tolist() == [0, 5]
    assert rate_based(obs).tolist() == [0, 5]
    assert mpc(obs).tolist()[0] == 0 and mpc(obs).tolist()[1] >= 4
    tr = make_traces("broadband", 24, seed=0)
    assert simulate(mpc, tr).session_qoe.mean() > simulate(lambda o: np.zeros(24, dtype=np.int64),
                                                           tr).session_qoe.mean()


def test_returns_to_go_are_suffix_sums_of_normalised_rewards():
    roll = simulate(bba, make_traces("cellular", 3, seed=1))
    pool = experience([roll])
    reward = (roll.qoe - roll.qoe.min()) / (roll.qoe.max() - roll.qoe.min())
    assert np.allclose(pool["returns"][:, 0].numpy(), reward.sum(1) / 10, atol=1e-5)
    assert np.allclose(pool["returns"][:, -1].numpy(), reward[:, -1] / 10, atol=1e-5)
    assert (pool["returns"][:, :-1] >= pool["returns"][:, 1:]).all()


@pytest.mark.parametrize("answer", ["head", "token"])
def test_policy_trains_the_adapter_only_and_answers(answer):
    gpt = GPT(SMALL, init_seed=0)
    before = {k: v.clone() for k, v in gpt.state_dict().items()}
    pool = experience([simulate(p, make_traces("broadband", 6, seed=0)) for p in (bba, mpc)])
    pol = NetLLMPolicy(gpt, window=4, rank=2, answer=answer)
    losses = train_netllm(pol, pool, steps=40, batch_size=8, lr=1e-2)
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    assert all(torch.equal(before[k], v) for k, v in gpt.state_dict().items())
    assert any(u.abs().sum() > 0 for u in pol.lora_up)
    invalid: list[int] = []
    roll = simulate(pol.controller(1.0, float(pool["r_min"]), float(pool["r_max"]), invalid),
                    make_traces("congested", 4, seed=2))
    assert len(invalid) == N_CHUNKS
    assert ((roll.levels >= 0) & (roll.levels < len(BITRATES_KBPS))).all()
    if answer == "head":
        assert sum(invalid) == 0


def test_token_answers_outside_the_digits_are_marked_invalid():
    pol = NetLLMPolicy(GPT(SMALL, init_seed=0), window=2, answer="token")
    scores = torch.full((3, 256), -1.0)
    scores[0, ord("3")] = 5.0
    scores[1, ord("9")] = 5.0
    scores[2, ord("a")] = 5.0
    assert pol.decide(scores).tolist() == [3, -1, -1]


def test_policy_arguments_are_checked():
    with pytest.raises(ValueError, match="block_size"):
        NetLLMPolicy(GPT(SMALL, init_seed=0), window=9)
    with pytest.raises(ValueError, match="answer"):
        NetLLMPolicy(GPT(SMALL, init_seed=0), answer="text")
    with pytest.raises(TypeError, match="GPT"):
        NetLLMPolicy(torch.nn.Linear(2, 2))
    assert set(REGIMES) >= {"broadband", "cellular", "congested"}
