"""1-bit Adam: compression, the two-hop compressed all-reduce (real ranks and simulator)."""

import math

import pytest
import torch

from labkit.comm._onebit_runs import (compressed_rounds, rank_momenta,
                                      simulate_training)
from labkit.comm.onebit import (ErrorFeedback, OneBitAdam, compress,
                                compressed_bytes, padded_size,
                                simulate_compressed_all_reduce, volume_ratio)
from labkit.dist import LaunchError, launch


def test_compress_by_hand():
    c = torch.tensor([3.0, -4.0, 0.0, 0.0])
    packed, scale, err = compress(c)
    assert scale.item() == pytest.approx(5.0 / 2.0)  # ||c|| = 5, sqrt(d) = 2
    assert packed.tolist() == [0b0010]  # only entry 1 negative; sign(0) = +1
    assert torch.allclose(err, torch.tensor([0.5, -1.5, -2.5, -2.5]))


def test_error_feedback_keeps_the_sum():
    """Invariant: what was sent plus what is kept equals everything put in."""
    gen = torch.Generator().manual_seed(0)
    ef = ErrorFeedback(37)
    total_in, total_sent = torch.zeros(37), torch.zeros(37)
    for _ in range(5):
        x = torch.randn(37, generator=gen)
        packed, scale = ef.compress(x)
        signs = 1 - 2 * ((packed[:, None] >> torch.arange(8)) & 1).reshape(-1)[:37]
        total_in += x
        total_sent += scale * signs
    assert torch.allclose(total_in, total_sent + ef.error, atol=1e-5)


def test_simulator_equals_real_ranks_bit_for_bit():
    n, numel, rounds = 2, 8 * 2 * 5, 3
    real = launch(compressed_rounds, n, timeout=60,
                  kwargs=dict(numel=numel, rounds=rounds, seed=1))
    xs = rank_momenta(n, numel=numel, rounds=rounds, seed=1)
    workers = [ErrorFeedback(numel) for _ in range(n)]
    servers = [ErrorFeedback(numel // n) for _ in range(n)]
    for k in range(rounds):
        sim = simulate_compressed_all_reduce([xs[r][k] for r in range(n)],
                                             workers, servers)
        for r in range(n):
            assert torch.equal(real[r]["outputs"][k], sim)
    assert real[0]["sent"] == rounds * compressed_bytes(numel, n)
    # the average is close to the exact mean once errors are fed back
    exact = sum(xs[r][0] for r in range(n)) / n
    assert (real[0]["outputs"][0] - exact).norm() < exact.norm()


def test_bytes_and_ratio_closed_forms():
    assert padded_size(10, 2) == 16
    # n = 4, d = 64: signs 2*3/4*64/8 = 12 bytes, scales 2*3*4 = 24
    assert compressed_bytes(64, 4) == 12 + 24
    big = 10**9
    assert volume_ratio(0.0, numel=big, world_size=2) == pytest.approx(32, rel=1e-6)
    expected = 1 / (0.17 + 0.83 / 32)
    assert volume_ratio(0.17, numel=big, world_size=2) == pytest.approx(expected, rel=1e-6)


def test_bad_arguments():
    with pytest.raises(ValueError, match="warmup"):
        volume_ratio(1.0, numel=8, world_size=2)
    with pytest.raises(ValueError, match="world_size"):
        padded_size(8, 1)
    with pytest.raises(ValueError, match="world_size"):
        simulate_compressed_all_reduce([torch.zeros(16)], [], [])
    with pytest.raises(ValueError, match="multiple of 8"):
        simulate_compressed_all_reduce([torch.zeros(12)] * 2,
                                       [ErrorFeedback(12)] * 2,
                                       [ErrorFeedback(6)] * 2)
    with pytest.raises(ValueError, match="warmup_steps"):
        OneBitAdam(8, lr=0.1, warmup_steps=0)
    with pytest.raises(ValueError, match="warmup"):
        simulate_training(2, dict(name="x", optimizer="onebit", warmup=-0.1),
                          model=dict(n_layer=1, n_head=1, d_model=8, d_ff=8,
                                     block_size=8),
                          steps=2, batch_size=2, lr=1e-3, seed=0)


def test_uint8_refused_by_a_reduction():
    with pytest.raises(LaunchError, match="dtype"):
        launch(_reduce_bytes, 2, timeout=60)


def _reduce_bytes(rank, world_size):
    from labkit.comm.collectives import ring_all_reduce
    return ring_all_reduce(torch.zeros(8, dtype=torch.uint8))


def test_training_simulator_matches_real_ranks():
    from labkit.comm._onebit_runs import onebit_training
    kw = dict(model=dict(n_layer=1, n_head=1, d_model=8, d_ff=16, block_size=8),
              steps=6, batch_size=2, lr=1e-2, seed=0, window=2)
    run = dict(name="1-bit", optimizer="onebit", warmup=0.5)
    real = launch(onebit_training, 2, timeout=90, kwargs=dict(runs=[run], **kw),
                  threads_per_rank=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the ranks' thread count: the same reductions
    try:
        sim = simulate_training(2, run, **kw)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(real[0][0]["params"], sim["params"])
    assert torch.equal(real[1][0]["params"], sim["params"])
    assert math.isfinite(sim["val_loss"])
