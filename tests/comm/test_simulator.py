"""The one-process simulator of n ranks: results, byte counts and step times."""

from __future__ import annotations

import math

import pytest
import torch

from labkit.comm.costmodel import AlphaBeta, collective_time
from labkit.comm.simulator import KINDS, SimResult, bytes_per_rank, predict_times, simulate


def _inputs(n: int, numel: int, dtype: torch.dtype = torch.float64) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(n * 100 + numel)
    return [torch.randint(-9, 10, (numel,), generator=gen).to(dtype) for _ in range(n)]


def test_hand_checked_two_ranks():
    # chunks of N=3 over 2 ranks: [2, 1] elements; rank 0 sends chunk 1 then chunk 0 ... 3 elements
    res = simulate("ring_all_reduce", [torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0, 20.0, 30.0])])
    assert [o.tolist() for o in res.outputs] == [[11.0, 22.0, 33.0]] * 2
    assert res.bytes_sent == [3 * 4, 3 * 4]  # 2N - c0 - c1 = 6 - 2 - 1 elements of 4 bytes
    assert res.steps == 2
    rs = simulate("reduce_scatter", [torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0, 20.0, 30.0])])
    assert rs.outputs[0].tolist() == [11.0, 22.0] and rs.outputs[1].tolist() == [33.0]


@pytest.mark.parametrize("n,numel", [(2, 5), (3, 2), (4, 7), (5, 13), (8, 64)])
def test_every_kind_matches_its_definition_and_closed_form(n, numel):
    xs = _inputs(n, numel)
    total = torch.stack(xs).sum(0)
    for kind in KINDS:
        res = simulate(kind, xs)
        for r, out in enumerate(res.outputs):
            if kind in ("ring_all_reduce", "tree_all_reduce"):
                expected = total
            elif kind == "reduce_scatter":
                expected = total.tensor_split(n)[r]
            elif kind == "all_gather":
                expected = torch.stack(xs)
            else:
                expected = torch.cat([xs[src].tensor_split(n)[r] for src in range(n)])
            assert torch.equal(out, expected), (kind, r)
        sent, received = bytes_per_rank(kind, numel=numel, world_size=n, itemsize=8)
        assert res.bytes_sent == sent and res.bytes_received == received, kind
        assert sum(res.bytes_sent) == sum(res.bytes_received)
    assert all(torch.equal(a, b) for a, b in zip(xs, _inputs(n, numel)))  # inputs untouched


def test_ring_bytes_are_two_n_minus_one_over_n():
    n, numel = 8, 8 * 1000
    sent, _ = bytes_per_rank("ring_all_reduce", numel=numel, world_size=n, itemsize=4)
    assert sent == [2 * (n - 1) * numel * 4 // n] * n
    sent, _ = bytes_per_rank("ring_all_reduce", numel=1024 * 1024 + 3, world_size=1024)  # n = 1024, no tensors
    assert max(sent) - min(sent) == 2 * 4 and len(sent) == 1024


@pytest.mark.parametrize("n", [2, 3, 4, 7, 16])
def test_step_times_equal_the_cost_model_when_n_divides_numel(n):
    link = AlphaBeta(alpha=5e-6, beta=1e-9)
    xs = _inputs(n, 4 * n * 3, dtype=torch.float32)
    nbytes = xs[0].numel() * 4
    for kind in KINDS:
        res = simulate(kind, xs)
        size = nbytes * n if kind == "all_gather" else nbytes  # all-gather: S is the output's bytes
        assert res.time(link) == pytest.approx(collective_time(kind, size, n, link), rel=1e-12), kind
    assert simulate("tree_all_reduce", xs).steps == 2 * math.ceil(math.log2(n))
    assert simulate("ring_all_reduce", xs).steps == 2 * (n - 1)


def test_predict_times_scales_to_1024_ranks():
    link = AlphaBeta(alpha=1e-5, beta=1e-10)
    times = predict_times(["ring_all_reduce", "tree_all_reduce"], sizes_bytes=[1e3, 1e9], world_size=1024, link=link)
    assert times["tree_all_reduce"][0] < times["ring_all_reduce"][0]  # latency-bound: tree wins
    assert times["ring_all_reduce"][1] < times["tree_all_reduce"][1]  # bandwidth-bound: ring wins


def test_bad_inputs():
    x = torch.zeros(4)
    with pytest.raises(ValueError, match="kind must be one of"):
        simulate("butterfly", [x, x])
    with pytest.raises(ValueError, match="world_size"):
        simulate("ring_all_reduce", [x])
    with pytest.raises(ValueError, match="share shape and dtype"):
        simulate("ring_all_reduce", [x, torch.zeros(5)])
    with pytest.raises(TypeError, match="dtype must be one of"):
        simulate("ring_all_reduce", [x.bool(), x.bool()])
    with pytest.raises(TypeError, match="list of torch.Tensor"):
        simulate("ring_all_reduce", [x, [0.0] * 4])
    with pytest.raises(TypeError, match="AlphaBeta"):
        SimResult([x], [0], [0], [4]).time((1e-6, 1e-9))
    with pytest.raises(ValueError, match="world_size must be an int >= 2"):
        bytes_per_rank("ring_all_reduce", numel=4, world_size=1)
    with pytest.raises(ValueError, match="numel must be an int >= 0"):
        bytes_per_rank("ring_all_reduce", numel=-1, world_size=2)
    with pytest.raises(ValueError, match="itemsize"):
        bytes_per_rank("ring_all_reduce", numel=4, world_size=2, itemsize=0)
    with pytest.raises(ValueError, match="kinds must be among"):
        predict_times(["ring"], sizes_bytes=[1.0], world_size=2, link=AlphaBeta(0.0, 0.0))
