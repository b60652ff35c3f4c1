"""Tests of labkit.mpc.runtime: the simulator and real processes agree; failures end the run.

The process test costs one launch (three spawned interpreters, a few seconds)."""

from __future__ import annotations

import time

import pytest
import torch

import labkit.mpc as mpc
from labkit.mpc.programs import mlp_program


def _mlp_inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 6, generator=g)
    w = {"w1": torch.randn(6, 8, generator=g) / 2, "w2": torch.randn(8, 3, generator=g) / 2}
    return x, w, (x @ w["w1"]).relu() @ w["w2"]


@pytest.mark.timeout(120)
def test_processes_and_simulator_compute_the_same_bits() -> None:
    x, w, ref = _mlp_inputs()
    kw = dict(args=((4, 6), 8, 3), inputs={0: x, 1: w}, seed=3)
    sim = mpc.run(mlp_program, **kw)
    real = mpc.run(mlp_program, runtime="processes", timeout=90, **kw)
    assert real.runtime == "processes" and sim.runtime == "simulator"
    assert float((real.output - ref).abs().max()) < 1e-3
    assert real.outputs[1] is None and real.outputs[2] is None  # revealed to the client only
    assert torch.equal(real.output, sim.output)
    assert real.cost() == sim.cost()
    assert [m.scope for m in real.log.messages] == [m.scope for m in sim.log.messages]
    expected = (mpc.input_cost(24) + mpc.input_cost(48, owner=1) + mpc.input_cost(24, owner=1)
                + mpc.matmul_cost((4, 6), (6, 8)) + mpc.relu_cost(32) + mpc.matmul_cost((4, 8), (8, 3))
                + mpc.reveal_cost(12, to=0))
    assert real.cost() == expected
    assert len(real.program_s) == 3 and real.wall_s > 0


def test_processes_need_an_importable_program() -> None:
    with pytest.raises(ValueError, match="module level"):
        mpc.run(lambda ctx: None, runtime="processes")


def test_simulator_surfaces_the_failing_party_without_hanging() -> None:
    def program(ctx):
        x = ctx.input(0, torch.ones(3), shape=(3,))
        if ctx.rank == 1:
            raise KeyError("party 1 breaks")
        return ctx.reveal(x * x)

    start = time.monotonic()
    with pytest.raises(KeyError, match="party 1 breaks") as info:
        mpc.run(program, timeout=30)
    assert time.monotonic() - start < 10
    assert any("P1" in note for note in info.value.__notes__)


def test_simulator_times_out_when_parties_disagree() -> None:
    def program(ctx):
        x = ctx.input(0, torch.ones(2), shape=(2,))
        if ctx.rank == 0:
            ctx.exchange([x.share])  # P1 never answers
        return None

    start = time.monotonic()
    with pytest.raises(mpc.MPCTimeout):
        mpc.run(program, timeout=0.5)
    assert time.monotonic() - start < 5
    with pytest.raises(ValueError, match="timeout"):
        mpc.run(program, timeout=0)
