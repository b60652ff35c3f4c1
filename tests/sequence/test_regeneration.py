"""Tests for the predictive-then-generative enhancement of StoRM (labkit.sequence.regeneration)."""

import math

import pytest
import torch

from labkit.diffusion.schedule import NoiseSchedule
from labkit.sequence import regeneration as rg
from labkit.sequence.features import si_snr


@pytest.fixture(scope="module")
def data():
    return rg.make_enhancement_data(6, seed=3)


def test_compressed_stft_round_trip_and_compression(data):
    c = rg.compress_stft(data.clean)
    assert c.shape == (6, 65, 63) and c.is_complex()
    back = rg.decompress_istft(c, data.clean.shape[-1])
    assert torch.allclose(back, data.clean, atol=1e-4)
    # alpha = 0.5: the compressed magnitude is beta * sqrt(|X|)
    x = torch.stft(data.clean, 128, 64, window=torch.hann_window(128), return_complex=True)
    assert torch.allclose(c.abs(), 0.3 * x.abs().sqrt(), atol=1e-5)
    assert torch.equal(rg.from_channels(rg.to_channels(c)), c)


def test_errors_name_the_problem(data):
    with pytest.raises(ValueError, match="shorter than one STFT frame"):
        rg.compress_stft(torch.zeros(2, 100))
    with pytest.raises(TypeError, match="complex"):
        rg.decompress_istft(torch.zeros(2, 65, 10), 640)
    with pytest.raises(ValueError, match="frequency bins"):
        rg.decompress_istft(torch.zeros(2, 33, 10, dtype=torch.complex64), 640)
    with pytest.raises(ValueError, match="hop"):
        rg.SpecConfig(n_fft=64, hop=65)
    with pytest.raises(ValueError, match="shapes differ"):
        rg.silent_energy_db(data.noisy, data.clean[:, :100], data.silent)
    with pytest.raises(ValueError, match="no sample"):
        rg.silent_energy_db(data.noisy, data.clean, torch.zeros_like(data.silent))
    y = rg.to_channels(rg.compress_stft(data.noisy))
    with pytest.raises(ValueError, match="y and x0 shapes differ"):
        rg.train_predictor(y, y[:, :, :5], steps=1)
    s = NoiseSchedule(20, "cosine")
    net = rg.train_score(y, y, s, steps=1, hidden=8, layers=1)
    with pytest.raises(ValueError, match="n_steps"):
        rg.regenerate(net, s, y, 0)
    with pytest.raises(ValueError, match="t_start"):
        rg.regenerate(net, s, y, 1, t_start=20)
    with pytest.raises(ValueError, match="y_hat must be given exactly"):
        rg.regenerate(net, s, y, 2, y_hat=y, t_start=5)


def test_data_is_noisier_than_its_target_and_has_pauses(data):
    assert data.noisy.shape == data.clean.shape == data.silent.shape == (6, 4000)
    assert data.kind == ["white", "babble"] * 3
    assert torch.allclose(data.noisy.pow(2).mean(-1), torch.ones(6), atol=1e-3)
    assert bool(data.silent.any())
    snr = si_snr(data.noisy, data.clean)
    assert bool((snr < 12.0).all()) and bool((snr > -5.0).all())
    # the target is quiet in its pauses, the noisy input is not
    assert rg.silent_energy_db(data.clean, data.clean, data.silent) < -35.0
    assert rg.silent_energy_db(data.noisy, data.clean, data.silent) > -25.0


def test_untrained_heads_start_from_the_identity(data):
    y = rg.to_channels(rg.compress_stft(data.noisy))
    net = rg.ConvNet(65, hidden=8, layers=2)
    assert torch.equal(net(y), y)
    other = torch.randn_like(y)
    timed = rg.ConvNet(65, n_extra=2, hidden=8, layers=2, timed=True)
    out = timed(y, torch.cat([y, other], 1), torch.zeros(6, dtype=torch.long), other)
    assert torch.equal(out, other)


def test_storm_sampler_with_a_perfect_denoiser_returns_its_answer(data):
    """With D returning the true x0 every step, the drift correction makes every path land on
    x0 exactly, whatever the start, the number of steps or the noise."""
    y = rg.to_channels(rg.compress_stft(data.noisy))
    x0 = rg.to_channels(rg.compress_stft(data.clean))
    s = NoiseSchedule(50, "cosine")

    class Oracle(rg.ConvNet):
        def forward(self, y, extra=None, t=None, base=None):
            return x0

    for n_extra, y_hat, t_start in ((1, None, None), (2, y, 20)):
        oracle = Oracle(65, n_extra=n_extra, hidden=4, layers=1, timed=True)
        for steps in (1, 3, 7):
            out = rg.regenerate(oracle, s, y, steps, y_hat=y_hat, t_start=t_start, seed=1)
            assert torch.allclose(out, x0, atol=2e-3)


def test_storm_training_noises_the_drifting_mean(data, monkeypatch):
    """At t = t_max the training input is q_sample of y_hat, not of x0."""
    y = rg.to_channels(rg.compress_stft(data.noisy))
    x0 = rg.to_channels(rg.compress_stft(data.clean))
    y_hat = 0.5 * (x0 + y)
    s = NoiseSchedule(30, "cosine")
    seen = []
    real = NoiseSchedule.q_sample

    def spy(self, mean, t, eps):
        seen.append((mean.clone(), t.clone()))
        return real(self, mean, t, eps)

    monkeypatch.setattr(NoiseSchedule, "q_sample", spy)
    rg.train_score(y, x0, s, y_hat=y_hat, steps=3, batch=6, hidden=4, layers=1, t_max=10)
    assert seen
    for mean, t in seen:
        w = (t.float() / 10).view(-1, 1, 1, 1)
        # row i is x0[j] + w_i (y_hat[j] - x0[j]) for the utterance j it was drawn from
        lines = x0[None] + w * (y_hat - x0)[None]  # [batch, utterances, 2F, K]
        dist = (mean[:, None] - lines).flatten(2).abs().amax(-1).min(1).values
        assert bool((dist < 1e-5).all())


def test_a_short_training_beats_the_input_and_is_seeded():
    tr = rg.make_enhancement_data(48, seed=0)
    te = rg.make_enhancement_data(16, seed=1)
    spec = lambda w: rg.to_channels(rg.compress_stft(w))  # noqa: E731
    y, x0, yt = spec(tr.noisy), spec(tr.clean), spec(te.noisy)
    a = rg.train_predictor(y, x0, steps=60, hidden=32, layers=2, seed=0)
    b = rg.train_predictor(y, x0, steps=60, hidden=32, layers=2, seed=0)
    with torch.no_grad():
        est = a(yt)
        assert torch.equal(est, b(yt))
    wave = rg.decompress_istft(rg.from_channels(est), 4000)
    gain = float((si_snr(wave, te.clean) - si_snr(te.noisy, te.clean)).mean())
    assert gain > 0.3 and math.isfinite(gain)
