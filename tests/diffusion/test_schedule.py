"""Noise schedules, the forward process and the DDIM step: hand-checked values and invariants."""

from __future__ import annotations

import math

import pytest
import torch

from labkit.diffusion import NoiseSchedule, ddim_step, ddim_timesteps


@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("n_steps", [1000, 50, 1])
def test_alphas_cumprod_decreases_inside_zero_one(kind, n_steps):
    s = NoiseSchedule(n_steps, kind)
    abar = s.alphas_cumprod
    assert abar.shape == s.betas.shape == s.alphas.shape == (n_steps,)
    assert bool(((abar > 0) & (abar < 1)).all())
    assert bool((abar[1:] < abar[:-1]).all())
    torch.testing.assert_close(s.alphas, 1 - s.betas)
    if n_steps == 1000:
        assert abar[-1] < 1e-4  # the chain ends in (almost) pure noise


def test_linear_schedule_is_ddpms():
    s = NoiseSchedule(1000, "linear")
    assert s.betas[0].item() == pytest.approx(1e-4)
    assert s.betas[-1].item() == pytest.approx(0.02)
    short = NoiseSchedule(100, "linear")  # endpoints scaled by 1000 / T
    assert short.betas[0].item() == pytest.approx(1e-3) and short.betas[-1].item() == pytest.approx(0.2)


def test_cosine_schedule_follows_cos_squared():
    s = NoiseSchedule(1000, "cosine")
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 250, 500):  # abar_t = f(t + 1) / f(0) with steps counted from 0
        assert s.alphas_cumprod[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-5)


def test_schedules_compare_by_their_fields():
    assert NoiseSchedule(1000, "linear") == NoiseSchedule()
    assert NoiseSchedule(1000, "cosine") != NoiseSchedule()
    assert len({NoiseSchedule(), NoiseSchedule()}) == 1


def test_bad_schedules_raise():
    with pytest.raises(ValueError, match="linear.*cosine"):
        NoiseSchedule(1000, "quadratic")
    with pytest.raises(ValueError, match="n_steps"):
        NoiseSchedule(0)
    with pytest.raises(TypeError, match="n_steps"):
        NoiseSchedule(10.0)


def test_abar_of_minus_one_is_the_clean_image():
    s = NoiseSchedule(1000)
    assert s.abar(-1).item() == 1.0
    assert s.abar(torch.tensor([0, 999])).tolist() == s.alphas_cumprod[[0, 999]].tolist()
    with pytest.raises(ValueError, match="t must be in"):
        s.abar(1000)


def test_q_sample_by_hand():
    s = NoiseSchedule(1000)
    x0, noise = torch.ones(2, 1, 2, 2), 2 * torch.ones(2, 1, 2, 2)
    # t = 0: abar = 1 - 1e-4, so x_t = sqrt(0.9999) * 1 + sqrt(1e-4) * 2 = 0.99995 + 0.02
    x = s.q_sample(x0, torch.tensor([0, 0]), noise)
    torch.testing.assert_close(x, torch.full_like(x0, math.sqrt(0.9999) + 0.02))
    t = torch.tensor([0, 500])
    x = s.q_sample(x0, t, noise)
    a = s.alphas_cumprod[500].item()
    torch.testing.assert_close(x[1], torch.full((1, 2, 2), math.sqrt(a) + 2 * math.sqrt(1 - a)))
    with pytest.raises(ValueError, match="noise"):
        s.q_sample(x0, t, noise[:1])
    with pytest.raises(ValueError, match="t must be"):
        s.q_sample(x0, torch.tensor([0]), noise)


def test_ddim_timesteps_by_hand():
    assert ddim_timesteps(10, 10).tolist() == list(range(9, -1, -1))
    assert ddim_timesteps(10, 4).tolist() == [9, 6, 3, 0]
    assert ddim_timesteps(8, 5).tolist() == [7, 5, 4, 2, 0]  # 0, 1.75, 3.5, 5.25, 7 rounded half up
    assert ddim_timesteps(1000, 1).tolist() == [999]
    ts = ddim_timesteps(1000, 50)
    assert ts.dtype == torch.int64 and len(ts) == 50 and ts[0] == 999 and ts[-1] == 0
    assert bool((ts[1:] < ts[:-1]).all())
    for n_sample in range(1, 31):  # never a repeated step
        assert len(set(ddim_timesteps(30, n_sample).tolist())) == n_sample


def test_ddim_timesteps_out_of_range():
    with pytest.raises(ValueError, match="n_sample"):
        ddim_timesteps(1000, 0)
    with pytest.raises(ValueError, match="n_sample"):
        ddim_timesteps(1000, 1001)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_step_with_the_true_noise_recovers_x0(eta):
    s = NoiseSchedule(1000)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(3, 1, 8, 8, generator=g) * 2 - 1
    eps = torch.randn(3, 1, 8, 8, generator=g)
    x_t = s.q_sample(x0, torch.full((3,), 700), eps)
    # to the clean image: sigma = 0 whatever eta, so the step is exact
    torch.testing.assert_close(ddim_step(x_t, eps, 700, -1, s, eta=eta), x0, rtol=1e-4, atol=1e-5)
    if eta == 0.0:  # to an intermediate step: exactly the forward process with the same noise
        torch.testing.assert_close(ddim_step(x_t, eps, 700, 300, s), s.q_sample(x0, torch.full((3,), 300), eps),
                                   rtol=1e-4, atol=1e-5)


def test_ddim_step_at_eta_one_has_ddpms_variance():
    s = NoiseSchedule(1000)
    t = 500
    zeros = torch.zeros(1, 1, 1, 1)
    sigma = ddim_step(zeros, zeros, t, t - 1, s, eta=1.0, noise=torch.ones_like(zeros)).item()
    a_t, a_prev, beta = s.alphas_cumprod[t].item(), s.alphas_cumprod[t - 1].item(), s.betas[t].item()
    # DDPM's posterior variance beta_tilde_t = (1 - abar_{t-1}) / (1 - abar_t) beta_t (DDPM eq. 7)
    assert sigma == pytest.approx(math.sqrt((1 - a_prev) / (1 - a_t) * beta), rel=1e-4)


def test_ddim_step_bad_arguments():
    s = NoiseSchedule(100)
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match="t_prev"):
        ddim_step(x, x, 10, 10, s)
    with pytest.raises(ValueError, match="t must be"):
        ddim_step(x, x, 100, 10, s)
    with pytest.raises(ValueError, match="eta"):
        ddim_step(x, x, 10, 5, s, eta=-0.5)
    with pytest.raises(ValueError, match="eps"):
        ddim_step(x, x[..., :1], 10, 5, s)
