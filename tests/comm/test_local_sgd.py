"""CO2: the stale outer step, local-SGD training in process, real timed rounds."""

import math

import pytest
import torch

from labkit.comm.costmodel import AlphaBeta, collective_time
from labkit.comm.local_sgd import (co2_figure, co2_outer_step, round_times,
                                   round_timing, step_seconds, train_local_sgd)
from labkit.dist import launch

MODEL = dict(n_layer=1, n_head=2, d_model=16, d_ff=32, block_size=16)
TINY = dict(model=MODEL, batch_size=2, lr=1e-2, seed=0)


def test_outer_step_penalty_by_hand():
    x_prev, x = torch.zeros(3), torch.tensor([0.0, 1.0, 3.0])
    m = torch.zeros(3)
    nxt = co2_outer_step(x, x_prev, m, torch.ones(3), lr=1.0, beta=0.0, clip=None)
    # lambda = 1 / (1 + gap / mean|delta|) with mean|delta| = 1
    assert torch.allclose(x - nxt, torch.tensor([1.0, 0.5, 0.25]))
    assert torch.allclose(m, torch.tensor([1.0, 0.5, 0.25]))  # updated in place


def test_outer_step_without_remedies_is_momentum_sgd():
    gen = torch.Generator().manual_seed(0)
    x, prev, d = (torch.randn(10, generator=gen) for _ in range(3))
    m = torch.randn(10, generator=gen)
    m0 = m.clone()
    nxt = co2_outer_step(x, prev, m, d, lr=0.3, beta=0.9, penalty=False, clip=None)
    assert torch.allclose(nxt, x - 0.3 * (0.9 * m0 + d))


def test_clipping_bounds_the_momentum():
    """Invariant: after the step, |m| <= c |avg_delta|, whatever came before."""
    gen = torch.Generator().manual_seed(1)
    d = torch.randn(20, generator=gen)
    m = 100 * torch.randn(20, generator=gen)
    x = torch.zeros(20)
    co2_outer_step(x, x, m, d, lr=1.0, beta=0.9, penalty=False, clip=2.0)
    assert float(m.norm()) == pytest.approx(2.0 * float(d.norm()), rel=1e-5)
    small = torch.zeros(20)  # already below the bound: untouched
    co2_outer_step(x, x, small, d, lr=1.0, beta=0.0, penalty=False, clip=2.0)
    assert torch.equal(small, d)


@pytest.mark.parametrize("kw, match", [
    (dict(lr=0.0), "lr"), (dict(beta=1.0), "beta"), (dict(beta=-0.1), "beta"),
    (dict(clip=0.0), "clip"), (dict(lr="1"), "lr"),
])
def test_outer_step_bad_arguments(kw, match):
    z = torch.zeros(4)
    args = dict(lr=1.0, beta=0.5) | kw
    with pytest.raises((ValueError, TypeError), match=match):
        co2_outer_step(z, z, z.clone(), z, **args)


def test_outer_step_shape_mismatch():
    z = torch.zeros(4)
    with pytest.raises(ValueError, match="avg_delta"):
        co2_outer_step(z, z, z.clone(), torch.zeros(5), lr=1.0, beta=0.5)


def test_one_worker_one_step_rounds_equal_ddp():
    """With M = 1, H = 1, alpha = 1, beta = 0 and no remedies, local SGD and CO2 (one round
    late, its own round carried) both reduce to plain AdamW: the same losses as DDP."""
    ddp = train_local_sgd("ddp", workers=1, steps=6, **TINY)
    plain = dict(workers=1, steps=6, local_steps=1, outer_lr=1.0, outer_momentum=0.0,
                 penalty=False, clip=None, **TINY)
    local = train_local_sgd("local", **plain)
    co2 = train_local_sgd("co2", **plain)
    assert local["losses"] == pytest.approx(ddp["losses"], abs=1e-5)
    assert co2["losses"] == pytest.approx(ddp["losses"], abs=1e-5)
    assert co2["val_loss"] == pytest.approx(ddp["val_loss"], abs=1e-4)


def test_co2_trains_and_the_delay_matters():
    kw = dict(workers=2, steps=8, local_steps=2, **TINY)
    run = train_local_sgd("co2", **kw)
    assert len(run["losses"]) == 8 and all(map(math.isfinite, run["losses"]))
    local = train_local_sgd("local", **kw)
    assert local["losses"][:2] == pytest.approx(run["losses"][:2])  # same first round
    assert local["losses"][4:] != pytest.approx(run["losses"][4:])  # then apart


@pytest.mark.parametrize("kw, match", [
    (dict(method="adam"), "method"), (dict(workers=0), "workers"),
    (dict(steps=5, local_steps=2), "multiple"), (dict(local_steps=0), "local_steps"),
])
def test_training_bad_arguments(kw, match):
    args = dict(method="co2", workers=2, steps=4, local_steps=2) | kw
    method = args.pop("method")
    with pytest.raises(ValueError, match=match):
        train_local_sgd(method, **args, **TINY)


def test_round_times_by_hand():
    assert round_times(2.0, 1.0, 3) == {"sync": 9.0, "co2": 7.0}
    assert round_times(1.0, 2.0, 3) == {"sync": 9.0, "co2": 7.0}
    with pytest.raises(ValueError, match="compute"):
        round_times(0.0, 1.0, 3)
    with pytest.raises(ValueError, match="rounds"):
        round_times(1.0, 1.0, 0)


def test_step_seconds_by_hand():
    assert step_seconds(3, local_steps=1, step=1.0, comm=2.0, method="ddp") == [3.0, 6.0, 9.0]
    assert step_seconds(4, local_steps=2, step=1.0, comm=3.0, method="sync") == [1, 2, 6, 7]
    assert step_seconds(4, local_steps=2, step=1.0, comm=3.0, method="co2") == [1, 2, 4, 5]
    with pytest.raises(ValueError, match="method"):
        step_seconds(1, local_steps=1, step=1.0, comm=1.0, method="x")


def test_figure_has_one_slider_step_per_h():
    ddp = dict(losses=[3.0, 2.0, 1.0, 0.5])
    runs = {1: dict(losses=[3.0, 2.5, 1.5, 1.0]), 2: dict(losses=[3.0, 2.4, 1.4, 0.9])}
    fig = co2_figure(ddp, runs, step=0.01, comm=0.02)
    assert len(fig.layout.sliders[0].steps) == 2
    assert len(fig.data) == 12


def test_round_timing_outside_a_launch():
    with pytest.raises(ValueError, match="launch"):
        round_timing(0, 2, model=MODEL, local_steps=1, rounds=2, batch_size=2,
                     link=AlphaBeta(alpha=1e-3, beta=1e-6), seed=0)


def test_real_rounds_overlap_on_a_slow_link():
    """Real processes: an all-reduce of the order of a round's compute is hidden by CO2 (the
    round lasts about max(compute, comm)) and exposed by the synchronous schedule (the sum)."""
    link = AlphaBeta(alpha=0.025, beta=1e-9)  # a 50 ms all-reduce on 2 ranks
    out = launch(round_timing, 2, timeout=120,
                 kwargs=dict(model=MODEL, local_steps=4, rounds=5, batch_size=2, link=link,
                             seed=0))
    comm = collective_time("ring_all_reduce", 4 * 1000, 2, link)
    for r in out:
        assert r["step"] > 0
        assert r["co2"] >= comm * 0.95
        assert r["sync"] - r["co2"] > 0.1 * min(4 * r["step"], comm)
