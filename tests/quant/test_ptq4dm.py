"""labkit.quant.ptq4dm: float trajectories, calibration sets by strategy, WxAy PTQ, per-step ranges."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from labkit.diffusion import NoiseSchedule, TinyUNet, UNetConfig, ddim_timesteps, sample
from labkit.quant import QuantWrapper, quant_layers
from labkit.quant.ptq4dm import (STRATEGIES, CalibrationSet, calibrate, calibration_set, calibration_steps,
                                 ptq_model, sample_fidelity, sampling_pool, timestep_ranges)

SCHED = NoiseSchedule(n_steps=50)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is fastest


def tiny_unet() -> TinyUNet:
    """A small class-conditional UNet whose zero-initialised layers are perturbed, so every layer matters."""
    model = TinyUNet(UNetConfig(base_channels=8, time_dim=16, groups=4), init_seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    return model.eval()


@pytest.fixture(scope="module")
def model() -> TinyUNet:
    return tiny_unet()


@pytest.fixture(scope="module")
def pool(model):
    return sampling_pool(model, SCHED, n=12, steps=5, generator=torch.Generator().manual_seed(0))


def test_pool_holds_the_sampler_inputs(model, pool):
    x_T = torch.randn(12, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    _, traj = sample(model, SCHED, n=12, steps=5, x_T=x_T, return_trajectory=True)
    assert pool.x.shape == (5, 12, 1, 8, 8) and pool.steps == 5 and pool.n == 12
    assert torch.equal(pool.x, torch.stack(traj[:-1]))  # the input of step i is the state before it
    assert torch.equal(pool.t, ddim_timesteps(50, 5)) and pool.t.tolist() == [49, 37, 25, 12, 0]
    assert pool.y.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]


def test_calibration_steps_by_hand():
    assert calibration_steps("first", size=3, steps=5, n_train=50).tolist() == [0, 0, 0]
    assert calibration_steps("last", size=2, steps=5, n_train=50).tolist() == [4, 4]
    assert calibration_steps("uniform", size=5, steps=9, n_train=50).tolist() == [0, 2, 4, 6, 8]
    # visited steps of 5-step DDIM over T = 50: [49, 37, 25, 12, 0]; t = round(50 * mean), nearest visited
    tiny = dict(size=4, steps=5, n_train=50, std=1e-9)
    assert calibration_steps("normal", mean=0.5, **tiny).tolist() == [2] * 4  # t = 25
    assert calibration_steps("normal", mean=0.7, **tiny).tolist() == [1] * 4  # t = 35 -> 37
    assert calibration_steps("normal", mean=-1.0, **tiny).tolist() == [4] * 4  # clamped to t = 0
    assert calibration_steps("normal", mean=3.0, **tiny).tolist() == [0] * 4  # clamped to t = 49


def test_normal_strategy_piles_the_tails_on_the_ends():
    # T = S = 1000 visits every step: index = 999 - t, t = clamp(round(1000 (0.4 + 0.4 z)), 0, 999)
    idx = calibration_steps("normal", size=20000, steps=1000, n_train=1000, generator=torch.Generator().manual_seed(0))
    t = 999 - idx
    assert abs(float((t == 0).float().mean()) - 0.159) < 0.01  # P(z <= -1)
    assert abs(float((t == 999).float().mean()) - 0.067) < 0.01  # P(z >= 1.5)
    assert abs(float(t.float().median()) - 400) < 15  # clamping the tails keeps the median, T * mean


def test_calibration_set_takes_one_trajectory_per_sample(pool):
    for strategy in STRATEGIES:
        cs = calibration_set(pool, strategy, size=10, generator=torch.Generator().manual_seed(3))
        idx = calibration_steps(strategy, size=10, steps=5, n_train=50, generator=torch.Generator().manual_seed(3))
        assert len(cs) == 10 and cs.strategy == strategy
        for j in range(10):
            assert torch.equal(cs.x[j], pool.x[idx[j], j]) and int(cs.t[j]) == int(pool.t[idx[j]])
        assert torch.equal(cs.y, pool.y[:10])


def test_flatten_is_every_step_of_every_trajectory(pool):
    flat = pool.flatten()
    assert len(flat) == 60 and flat.strategy == "all"
    for k in (0, 13, 59):
        s, b = divmod(k, 12)
        assert torch.equal(flat.x[k], pool.x[s, b]) and int(flat.t[k]) == int(pool.t[s]) and flat.y[k] == pool.y[b]
    assert [len(b[0]) for b in flat.batches(25)] == [25, 25, 10]


def test_ptq_model_wraps_everything_and_calibrates_minmax(model, pool):
    cs = calibration_set(pool, "uniform", size=12)
    q = ptq_model(model, cs, w_bits=6, a_bits=5, keep=("conv_in", "conv_out"))
    layers = quant_layers(q)
    n_layers = sum(isinstance(m, (nn.Linear, nn.Conv2d)) for m in model.modules())
    assert len(layers) == n_layers and not any(isinstance(m, QuantWrapper) for m in model.modules())
    assert all(w.mode == "quant" for w in layers.values())
    assert layers["conv_in"].w_spec.bits == 8 and layers["conv_in"].a_spec.bits == 8
    assert layers["conv_out"].a_spec.bits == 8 and layers["down.0.0.conv1"].a_spec.bits == 5
    assert layers["down.0.0.conv1"].w_spec.bits == 6 and layers["down.0.0.conv1"].w_spec.granularity == "channel"
    # conv_in reads the images themselves: its min-max range is the calibration set's
    assert float(layers["conv_in"].a_lo) == float(cs.x.min()) and float(layers["conv_in"].a_hi) == float(cs.x.max())


def test_more_bits_track_the_float_model_closer(model, pool):
    cs = calibration_set(pool, "first", size=12)  # pure noise: the untrained model's later states blow up
    x, t, y = cs.x, cs.t, cs.y
    with torch.no_grad():
        ref = model(x, t, y)
        errs = [float((ptq_model(model, cs, w_bits=b, a_bits=b)(x, t, y) - ref).pow(2).mean()) for b in (3, 5, 8)]
    assert errs[0] > errs[1] > errs[2] and errs[2] < 1e-3 * float(ref.pow(2).mean())


def test_timestep_ranges_by_hand(model, pool):
    tr = timestep_ranges(model, pool)
    i = tr.layers.index("conv_in")
    assert tr.lo.shape == (len(tr.layers), 5) and torch.equal(tr.t, pool.t)
    for s in range(5):  # conv_in reads x_t itself
        assert float(tr.lo[i, s]) == float(pool.x[s].min()) and float(tr.hi[i, s]) == float(pool.x[s].max())
    j = tr.layers.index("time_mlp.0")  # reads the sinusoidal embedding
    assert float(tr.lo[j].min()) >= -1.0 and float(tr.hi[j].max()) <= 1.0
    assert (tr.width > 0).all() and (tr.drift() >= 1.0).all()


def test_sample_fidelity_of_identical_and_different_sets():
    from labkit.diffusion import DigitClassifier
    judge = DigitClassifier(init_seed=0)
    imgs = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    labels = torch.arange(8)
    same = sample_fidelity(imgs, imgs, labels=labels, classifier=judge, reference=imgs)
    assert same.deviation == 0.0 and same.agreement == 1.0 and same.frechet < 1e-6
    other = sample_fidelity(-imgs, imgs, labels=labels, classifier=judge, reference=imgs)
    assert other.deviation == pytest.approx(float(imgs.abs().mean()) * 2)
    with pytest.raises(ValueError, match="labels"):
        sample_fidelity(imgs, imgs, labels=labels[:3], classifier=judge, reference=imgs)


def test_bad_arguments(model, pool):
    cs = calibration_set(pool, "last", size=4)
    with pytest.raises(ValueError, match="unknown strategy"):
        calibration_steps("middle", size=4, steps=5, n_train=50)
    with pytest.raises(ValueError, match="unknown strategy"):
        calibration_set(pool, "all", size=4)
    with pytest.raises(ValueError, match="size"):
        calibration_steps("first", size=0, steps=5, n_train=50)
    with pytest.raises(ValueError, match="n_train"):
        calibration_steps("first", size=2, steps=5, n_train=3)
    with pytest.raises(ValueError, match="std"):
        calibration_steps("normal", size=2, steps=5, n_train=50, std=0.0)
    with pytest.raises(ValueError, match="trajectories"):
        calibration_set(pool, "uniform", size=13)
    with pytest.raises(ValueError, match="size"):
        calibration_set(pool, "uniform", size=0)
    with pytest.raises(ValueError, match="w_bits"):
        ptq_model(model, cs, w_bits=9, a_bits=8)
    with pytest.raises(ValueError, match="a_bits"):
        ptq_model(model, cs, w_bits=8, a_bits=1)
    with pytest.raises(TypeError, match="w_bits"):
        ptq_model(model, cs, w_bits=4.0, a_bits=8)
    with pytest.raises(ValueError, match="keep"):
        ptq_model(model, cs, w_bits=4, a_bits=4, keep=("conv_nope",))
    with pytest.raises(TypeError, match="CalibrationSet"):
        ptq_model(model, (cs.x, cs.t, cs.y), w_bits=8, a_bits=8)
    empty = CalibrationSet(x=cs.x[:0], t=cs.t[:0], y=cs.y[:0], strategy="last")
    with pytest.raises(ValueError, match="empty"):
        ptq_model(model, empty, w_bits=8, a_bits=8)
    with pytest.raises(ValueError, match="empty"):
        calibrate(model, empty)
    with pytest.raises(ValueError, match="n"):
        sampling_pool(model, SCHED, n=0, steps=5)
    with pytest.raises(ValueError, match="Linear or nn.Conv2d"):
        timestep_ranges(nn.Sequential(nn.ReLU()), pool)
