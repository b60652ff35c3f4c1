"""Encoder propagation: key-step presets and checks, the Amdahl bound, and the sampler against plain DDIM."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from labkit.diffusion import NoiseSchedule, TinyUNet, UNetConfig, ddim_step, ddim_timesteps, sample
from labkit.diffusion.faster import (PAPER_INJECTION, PAPER_KEY_STEPS_50, amdahl_speedup, check_key_steps,
                                     key_groups, paper_key_steps, sample_propagated, skipped_fraction,
                                     uniform_key_steps)
from labkit.diffusion.unet import Features

SCHEDULE = NoiseSchedule(100)
SMALL = UNetConfig(base_channels=8, groups=4, time_dim=16)


def randomised(seed: int = 0, cfg: UNetConfig = SMALL) -> TinyUNet:
    model = TinyUNet(cfg, init_seed=0)
    randomised_(model, seed=seed, scale=0.1)
    return model.eval()


class Probe(TinyUNet):
    """Predicts as noise the image its encoder saw, and counts calls: reuse is visible in the output."""

    def __init__(self) -> None:
        super().__init__(SMALL, init_seed=0)
        self.calls: list[tuple[str, int]] = []

    def encode(self, x, t, y=None):
        self.calls.append(("encode", x.shape[0]))
        return Features(h=x, skips=[], emb=self.embed(t, y))

    def decode(self, feats, emb=None):
        emb = feats.emb if emb is None else emb
        self.calls.append(("decode", emb.shape[0]))
        return feats.h  # eps = the x_t of the key step


class NoiseLike(TinyUNet):
    """A random UNet plus its input: predicts roughly the noise, so samples stay inside [-1, 1]."""

    def __init__(self) -> None:
        super().__init__(SMALL, init_seed=0)
        randomised_(self, seed=1, scale=0.1)

    def encode(self, x, t, y=None):
        feats = super().encode(x, t, y)
        return Features(h=feats.h, skips=[*feats.skips, x], emb=feats.emb)

    def decode(self, feats, emb=None):
        inner = Features(h=feats.h, skips=feats.skips[:-1], emb=feats.emb)
        return feats.skips[-1] + 0.1 * super().decode(inner, emb)


def randomised_(model: TinyUNet, *, seed: int, scale: float) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)


def test_presets_by_hand():
    assert uniform_key_steps(10, every=3) == (0, 3, 6, 9)
    assert uniform_key_steps(4, every=1) == (0, 1, 2, 3)
    assert uniform_key_steps(7, every=7) == (0,)
    assert paper_key_steps(50) == PAPER_KEY_STEPS_50 == (0, 1, 2, 3, 5, 10, 15, 25, 35)
    assert paper_key_steps(20) == (0, 1, 2, 4, 6, 10, 14)
    assert paper_key_steps(1) == (0,)
    assert key_groups((0, 3), 5) == [(0, 1, 2), (3, 4)]
    assert key_groups(range(3), 3) == [(0,), (1,), (2,)]
    assert check_key_steps(torch.tensor([0, 2]), 3) == check_key_steps(np.array([0, 2]), 3) == (0, 2)
    assert skipped_fraction((0, 3), 5) == pytest.approx(0.6)
    assert amdahl_speedup(0.25, 0.8) == pytest.approx(1.25)
    assert amdahl_speedup(0.0, 1.0) == 1.0


@pytest.mark.parametrize("steps", [1, 2, 7, 20, 50, 100])
def test_presets_are_valid_and_front_loaded(steps):
    keys = paper_key_steps(steps)
    assert check_key_steps(keys, steps) == keys
    gaps = [b - a for a, b in zip(keys, keys[1:])]
    assert not gaps or gaps[0] <= gaps[-1]  # denser at the start (noisiest steps)
    groups = key_groups(keys, steps)
    assert [i for g in groups for i in g] == list(range(steps))  # every step once, in order


@pytest.mark.parametrize("keys,steps,err", [
    ((), 5, ValueError), ((0, 5), 5, ValueError), ((0, 3, 2), 5, ValueError), ((0, 2, 2), 5, ValueError),
    ((1, 2), 5, ValueError), ((0, -1), 5, ValueError), ("012", 5, TypeError), ((0, 1.5), 5, TypeError),
    (3, 5, TypeError), ((0,), 0, ValueError),
])
def test_bad_key_steps(keys, steps, err):
    with pytest.raises(err):
        check_key_steps(keys, steps)


def test_bad_preset_and_bound_arguments():
    with pytest.raises(ValueError):
        uniform_key_steps(5, every=0)
    with pytest.raises(ValueError):
        uniform_key_steps(5, every=6)
    with pytest.raises(TypeError):
        uniform_key_steps(5.0, every=1)
    with pytest.raises(ValueError):
        paper_key_steps(0)
    with pytest.raises(ValueError):
        amdahl_speedup(1.0, 0.5)
    with pytest.raises(ValueError):
        amdahl_speedup(0.2, 1.5)
    with pytest.raises(TypeError):
        amdahl_speedup("0.2", 0.5)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_all_key_steps_is_plain_ddim(eta):
    model = randomised()
    a = sample(model, SCHEDULE, n=6, steps=7, eta=eta, generator=torch.Generator().manual_seed(3))
    b = sample_propagated(model, SCHEDULE, n=6, steps=7, key_steps=range(7), eta=eta,
                          generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_reuse_by_hand_two_steps():
    probe = Probe()
    x_T = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    t0, t1 = ddim_timesteps(SCHEDULE.n_steps, 2).tolist()
    out = sample_propagated(probe, SCHEDULE, n=3, steps=2, key_steps=(0,), x_T=x_T)
    assert probe.calls == [("encode", 3), ("decode", 3), ("decode", 3)]
    # step 0: eps = x_T; step 1 reuses the key step's features, so eps is x_T again (not x_1)
    x1 = ddim_step(x_T, x_T, t0, t1, SCHEDULE)
    a1 = float(SCHEDULE.abar(t1))
    expected = ((x1 - math.sqrt(1 - a1) * x_T) / math.sqrt(a1)).clamp(-1, 1)
    torch.testing.assert_close(out, expected)
    probe.calls.clear()
    par = sample_propagated(probe, SCHEDULE, n=3, steps=2, key_steps=(0,), x_T=x_T, parallel=True)
    assert probe.calls == [("encode", 3), ("decode", 6)]  # one decoder call for both steps
    torch.testing.assert_close(par, expected)


def test_parallel_decoding_matches_sequential_and_reuse_changes_the_result():
    model = NoiseLike().eval()
    x_T = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    keys = (0, 1, 4)
    seq = sample_propagated(model, SCHEDULE, n=5, steps=9, key_steps=keys, x_T=x_T)
    par = sample_propagated(model, SCHEDULE, n=5, steps=9, key_steps=keys, x_T=x_T, parallel=True)
    torch.testing.assert_close(par, seq, rtol=1e-5, atol=1e-5)
    full = sample(model, SCHEDULE, n=5, steps=9, x_T=x_T)
    assert (seq.abs() < 1).float().mean() > 0.5  # mostly unclamped, so the comparison means something
    assert (seq - full).abs().max() > 1e-3


def test_noise_injection_only_below_its_threshold():
    model = randomised(2)
    x_T = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    kw = dict(n=4, steps=6, key_steps=(0, 3), x_T=x_T)
    plain = sample_propagated(model, SCHEDULE, **kw)
    never = sample_propagated(model, SCHEDULE, **kw, injection=0.5, injection_below=0)
    assert torch.equal(plain, never)
    injected = sample_propagated(model, SCHEDULE, **kw, injection=PAPER_INJECTION)
    assert not torch.equal(plain, injected)
    assert (injected - plain).abs().max() < 0.2  # a small nudge


def test_bad_sampler_arguments():
    model = randomised()
    with pytest.raises(TypeError):
        sample_propagated(object(), SCHEDULE, n=2, steps=3)
    with pytest.raises(TypeError):
        sample_propagated(model, "schedule", n=2, steps=3)
    with pytest.raises(ValueError):
        sample_propagated(model, SCHEDULE, n=0, steps=3)
    with pytest.raises(ValueError):
        sample_propagated(model, SCHEDULE, n=2, steps=101)
    with pytest.raises(ValueError):
        sample_propagated(model, SCHEDULE, n=2, steps=3, key_steps=(1,))
    with pytest.raises(TypeError):
        sample_propagated(model, SCHEDULE, n=2, steps=3, parallel=1)
    with pytest.raises(ValueError):
        sample_propagated(model, SCHEDULE, n=2, steps=3, injection=-0.1)
    with pytest.raises(ValueError):
        sample_propagated(model, SCHEDULE, n=2, steps=3, injection_below=101)
    with pytest.raises(ValueError):
        sample_propagated(model, SCHEDULE, n=2, steps=3, eta=-1.0)
    with pytest.raises(ValueError):
        sample_propagated(model, SCHEDULE, n=2, steps=3, x_T=torch.zeros(3, 1, 8, 8))
    with pytest.raises(ValueError):
        sample_propagated(model, SCHEDULE, n=2, steps=3, labels=torch.zeros(3, dtype=torch.long))
    uncond = randomised(cfg=UNetConfig(base_channels=8, groups=4, time_dim=16, n_classes=None))
    with pytest.raises(ValueError):
        sample_propagated(uncond, SCHEDULE, n=2, steps=3, labels=torch.zeros(2, dtype=torch.long))
    assert sample_propagated(uncond, SCHEDULE, n=2, steps=3, parallel=True).shape == (2, 1, 8, 8)
