"""DiLoCo and Streaming DiLoCo: quantiser, bytes, schedule, outer step and training runs."""

import pytest
import torch

from labkit.comm.diloco import (fragment_schedule, outer_step, quantize_outer, run_training,
                                sync_bytes)

TINY = dict(n_layer=1, n_head=2, d_model=16, d_ff=32, block_size=16)


def test_quantize_by_hand():
    x = torch.tensor([1.0, -0.6, 0.25, 0.0])
    # s = 1/7: codes 7, round(-4.2) = -4, round(1.75) = 2, 0
    expect = torch.tensor([7.0, -4.0, 2.0, 0.0]) / 7
    assert torch.allclose(quantize_outer(x, bits=4, group=4), expect)


def test_quantize_error_bound_and_identity():
    x = torch.randn(640, generator=torch.Generator().manual_seed(0))
    q = quantize_outer(x, bits=4, group=64)
    scale = x.view(-1, 64).abs().amax(1, keepdim=True) / 7
    assert ((q - x).view(-1, 64).abs() <= scale / 2 + 1e-6).all()
    assert torch.equal(quantize_outer(x, bits=32), x)
    assert quantize_outer(torch.zeros(64)).eq(0).all()


def test_quantize_bad_inputs():
    with pytest.raises(ValueError, match="group"):
        quantize_outer(torch.zeros(10), group=4)
    with pytest.raises(TypeError, match="delta"):
        quantize_outer(torch.zeros(8, dtype=torch.int64), group=4)
    with pytest.raises(ValueError, match="bits"):
        quantize_outer(torch.zeros(8), bits=1, group=4)


def test_sync_bytes_by_hand():
    assert sync_bytes(64, 2, bits=4, group=64) == 32 + 4
    assert sync_bytes(64, 4) == 2 * 3 / 4 * 256
    with pytest.raises(ValueError, match="world_size"):
        sync_bytes(64, 1)


def test_fragment_schedule_staggers():
    assert fragment_schedule(20, 10, 2) == {10: [0], 5: [1], 15: [1], 20: [0]}
    plan = fragment_schedule(40, 8, 4)
    assert sorted(plan) == [2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30, 32,
                            34, 36, 38, 40]
    assert all(len(v) == 1 for v in plan.values())  # never two fragments at once
    with pytest.raises(ValueError, match="fragments"):
        fragment_schedule(20, 4, 5)


def test_outer_step_by_hand_and_averaging():
    theta, u = torch.tensor([1.0]), torch.zeros(1)
    outer_step(theta, u, [torch.tensor([0.2]), torch.tensor([0.4])], lr=0.5, mu=0.5)
    # delta = 0.3, u = 0.3, theta = 1 - 0.5 * (0.3 + 0.15)
    assert torch.allclose(theta, torch.tensor([0.775]))
    assert torch.allclose(u, torch.tensor([0.3]))
    # outer lr 1 without momentum: the new parameters are the workers' average
    theta, u = torch.randn(64), torch.zeros(64)
    locals_ = [torch.randn(64) for _ in range(3)]
    expect = torch.stack(locals_).mean(0)
    outer_step(theta, u, [theta - p for p in locals_], lr=1.0, mu=0.0)
    assert torch.allclose(theta, expect, atol=1e-6)


def test_run_training_bytes_and_shapes():
    kw = dict(model=TINY, steps=8, workers=2, batch_size=2, every=4, bits=4)
    full = run_training("diloco", **kw)
    four = run_training("diloco", fragments=4, delay=1, alpha=0.5, **kw)
    assert len(full["losses"]) == len(four["bytes"]) == 8
    assert max(four["bytes"]) * 4 == max(full["bytes"])  # peak per sync: full / P
    assert sum(four["bytes"]) == sum(full["bytes"])
    assert sum(b > 0 for b in full["bytes"]) == 2
    single = run_training("single", model=TINY, steps=3, batch_size=2)
    assert sum(single["bytes"]) == 0
    ddp = run_training("ddp", model=TINY, steps=3, batch_size=2)
    assert ddp["bytes"] == [sync_bytes(ddp["numel"], 2)] * 3


def test_run_training_bad_inputs():
    with pytest.raises(ValueError, match="method"):
        run_training("adam", model=TINY, steps=2)
    with pytest.raises(ValueError, match="fragments"):
        run_training("diloco", model=TINY, steps=2, every=2, fragments=3)
    with pytest.raises(ValueError, match="delay"):
        run_training("diloco", model=TINY, steps=2, every=2, delay=2)
    with pytest.raises(ValueError, match="alpha"):
        run_training("diloco", model=TINY, steps=2, alpha=1.5)
