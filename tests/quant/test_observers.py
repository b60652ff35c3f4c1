"""labkit.quant.observers: min-max, percentile and MSE-optimal ranges."""

from __future__ import annotations

import pytest
import torch

from labkit.quant import MinMaxObserver, MSEObserver, PercentileObserver, QSpec, fake_quantize, make_observer


def heavy_tailed(n: int = 20_000, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g)
    x[:5] = torch.tensor([30.0, -25.0, 28.0, 40.0, -33.0])
    return x


def test_minmax_covers_everything_across_batches():
    obs = MinMaxObserver(QSpec(8))
    obs.update(torch.tensor([-1.0, 2.0]))
    obs.update(torch.tensor([[0.5, 3.0]]))
    lo, hi = obs.range()
    assert (lo.item(), hi.item()) == (-1.0, 3.0)


def test_percentile_clips_the_tails():
    x = heavy_tailed()
    obs = PercentileObserver(QSpec(8), pct=99.0)
    obs.update(x)
    lo, hi = obs.range()
    assert -3.5 < lo.item() < -2.0 and 2.0 < hi.item() < 3.5


def test_mse_observer_beats_minmax_on_heavy_tails_at_4_bits():
    x, spec = heavy_tailed(), QSpec(4)
    errs = {}
    for name in ("minmax", "mse"):
        obs = make_observer(name, spec)
        obs.update(x)
        lo, hi = obs.range()
        errs[name] = float((fake_quantize(x, spec, lo=lo, hi=hi) - x).pow(2).mean())
    assert errs["mse"] < 0.5 * errs["minmax"]


def test_reservoir_is_bounded_and_seeded():
    a, b = (PercentileObserver(QSpec(8), max_samples=100, seed=3) for _ in range(2))
    for obs in (a, b):
        for i in range(5):
            obs.update(torch.arange(100.0) + 100 * i)
    assert a.sample.numel() == 100 and torch.equal(a.sample, b.sample)


def test_bad_arguments():
    with pytest.raises(RuntimeError, match="no data"):
        MinMaxObserver(QSpec()).range()
    with pytest.raises(ValueError, match="per tensor"):
        MinMaxObserver(QSpec(granularity="channel"))
    with pytest.raises(ValueError, match="pct"):
        PercentileObserver(QSpec(), pct=20.0)
    with pytest.raises(ValueError, match="min_ratio"):
        MSEObserver(QSpec(), min_ratio=1.5)
    with pytest.raises(ValueError, match="unknown observer"):
        make_observer("kl", QSpec())
    with pytest.raises(TypeError, match="float"):
        MinMaxObserver(QSpec()).update(torch.arange(3))


@pytest.mark.parametrize("name", ["minmax", "percentile", "mse"])
def test_a_non_finite_batch_is_an_error_and_leaves_the_observer_unchanged(name):
    obs = make_observer(name, QSpec(8))
    obs.update(torch.tensor([-1.0, 2.0]))
    bad = torch.tensor([[0.5, float("nan")], [float("inf"), 1.0]])
    cls = type(obs).__name__
    with pytest.raises(ValueError, match=rf"^{cls}.update: x has 2 non-finite values of 4 \(1 NaN, 1 infinite\)"):
        obs.update(bad)
    assert obs.count == 2
    lo, hi = obs.range()
    assert torch.isfinite(lo).all() and torch.isfinite(hi).all() and -1.0 <= lo.item() <= hi.item() <= 2.0


@pytest.mark.parametrize("name", ["minmax", "percentile", "mse"])
def test_an_empty_batch_is_observed_as_nothing(name):
    obs = make_observer(name, QSpec(8))
    obs.update(torch.empty(0, 3))
    with pytest.raises(RuntimeError, match="no data"):
        obs.range()
    obs.update(torch.tensor([-1.0, 3.0]))
    obs.update(torch.empty(0))
    assert obs.count == 2 and obs.range()[0].item() <= 0.0 < obs.range()[1].item()
