"""Ring, tree and all-to-all collectives from send/recv, run in real gloo processes."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from labkit.comm._workers import check_collectives, rank_input, wrong_shape_on_rank
from labkit.comm.collectives import (
    ByteCounter, all_to_all, chunk_sizes, ring_all_gather, ring_all_reduce, ring_reduce_scatter, tree_all_reduce,
)
from labkit.comm.simulator import KINDS, bytes_per_rank, simulate
from labkit.dist import LaunchError, launch

ALL = (ring_reduce_scatter, ring_all_gather, ring_all_reduce, tree_all_reduce, all_to_all)


def test_chunk_sizes_by_hand():
    assert chunk_sizes(7, 4) == [2, 2, 2, 1]
    assert chunk_sizes(2, 3) == [1, 1, 0]
    assert chunk_sizes(12, 4) == [3, 3, 3, 3]
    assert [t.numel() for t in torch.zeros(7).tensor_split(4)] == chunk_sizes(7, 4)  # same rule as torch
    with pytest.raises(ValueError, match="world_size must be an int >= 1"):
        chunk_sizes(7, 0)
    with pytest.raises(ValueError, match="numel"):
        chunk_sizes(-1, 2)


def test_byte_counter_reset():
    counter = ByteCounter(sent=4, received=8, messages_sent=1, messages_received=2)
    counter.reset()
    assert counter == ByteCounter()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("world_size,numel,dtype,shape", [
    (2, 12, torch.int64, (3, 4)), (4, 7, torch.float32, None), (3, 2, torch.float32, None),
])
def test_real_processes_match_gloo_and_the_simulator(world_size, numel, dtype, shape):
    kwargs = dict(numel=numel, seed=3, dtype=dtype, shape=shape)
    results = launch(check_collectives, world_size, kwargs=kwargs, timeout=60)
    inputs = [rank_input(r, numel=numel, seed=3, dtype=dtype).reshape(shape or (numel,)) for r in range(world_size)]
    itemsize = inputs[0].element_size()
    for kind in KINDS:
        sim = simulate(kind, inputs)
        sent, received = bytes_per_rank(kind, numel=numel, world_size=world_size, itemsize=itemsize)
        for rank, res in enumerate(results):
            # integers: exact; float32: the same sum in another order
            assert res["max_error"][kind] <= (0 if dtype == torch.int64 else 1e-5), (kind, rank)
            assert res["bytes"][kind] == (sent[rank], received[rank]), (kind, rank)  # exact
            assert torch.allclose(res["outputs"][kind], sim.outputs[rank].reshape(res["outputs"][kind].shape),
                                  atol=1e-5), (kind, rank)
    if numel % world_size == 0:
        ring = [res["bytes"]["ring_all_reduce"][0] for res in results]
        assert ring == [2 * (world_size - 1) * numel * itemsize // world_size] * world_size


@pytest.mark.timeout(60)
def test_a_rank_with_the_wrong_shape_surfaces_as_a_clear_error():
    expected = r"shapes and dtypes must be equal on every rank.*rank 1: torch.float32 \(6,\)"
    with pytest.raises(LaunchError, match=expected):
        launch(wrong_shape_on_rank, 2, kwargs=dict(bad_rank=1, numel=5), timeout=45)


def test_not_initialised():
    if dist.is_initialized():
        pytest.skip("a process group is already initialised here")
    for fn in ALL:
        with pytest.raises(ValueError, match="process group is not initialised"):
            fn(torch.zeros(4))


@pytest.fixture
def one_rank_group(tmp_path):
    if dist.is_initialized():
        pytest.skip("a process group is already initialised here")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_bad_inputs(one_rank_group):
    for fn in ALL:
        with pytest.raises(ValueError, match="world_size must be >= 2"):
            fn(torch.zeros(4))
        with pytest.raises(TypeError, match="dtype must be one of"):
            fn(torch.zeros(4, dtype=torch.bool))
        with pytest.raises(TypeError, match="tensor must be a torch.Tensor"):
            fn([1.0, 2.0])
        with pytest.raises(TypeError, match="counter must be a ByteCounter"):
            fn(torch.zeros(4), counter={"sent": 0})
    with pytest.raises(ValueError, match="at most 8 dimensions"):
        ring_all_reduce(torch.zeros([1] * 9))
