"""Tests of labkit.mpc.runtime: the simulator and real processes agree under the insecure seed;
without it every party's randomness is private; failures end the run.

Each process test costs one or two launches (three spawned interpreters, a few seconds each)."""

from __future__ import annotations

import time

import pytest
import torch

import labkit.mpc as mpc
from labkit.mpc import _parties
from labkit.mpc.prg import insecure_prg
from labkit.mpc.programs import mlp_program


def _mlp_inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 6, generator=g)
    w = {"w1": torch.randn(6, 8, generator=g) / 2, "w2": torch.randn(8, 3, generator=g) / 2}
    return x, w, (x @ w["w1"]).relu() @ w["w2"]


@pytest.mark.timeout(120)
def test_processes_and_simulator_compute_the_same_bits() -> None:
    x, w, ref = _mlp_inputs()
    kw = dict(args=((4, 6), 8, 3), inputs={0: x, 1: w}, insecure_seed=3)
    sim = mpc.run(mlp_program, **kw)
    real = mpc.run(mlp_program, runtime="processes", timeout=90, **kw)
    assert real.runtime == "processes" and sim.runtime == "simulator"
    assert not real.secure and not sim.secure and not real.log.secure  # the opt-in is marked everywhere
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


def _holds(blob: torch.Tensor, seed: bytes) -> bool:
    """Whether the seed's bytes appear anywhere in the tensor's memory (any alignment)."""
    return seed in blob.contiguous().numpy().tobytes()


@pytest.mark.timeout(150)
def test_no_party_can_reproduce_another_partys_randomness_in_processes() -> None:
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(64, generator=g), torch.randn(64, generator=g)
    kw = dict(runtime="processes", args=((64,),), inputs={0: x, 1: y}, keep_payloads=True, timeout=100)
    runs = [mpc.run(_parties.secrecy_probe, **kw) for _ in range(2)]
    for r in runs:
        assert r.secure and r.log.secure and all(out["secure"] for out in r.outputs)
        seeds = [out["seed"] for out in r.outputs]
        assert len(set(seeds)) == 3 and all(len(s) == 32 for s in seeds)
        for i, seed in enumerate(seeds):
            assert not any(_holds(m.payload, seed) for m in r.log.messages)  # never sent
            for j, out in enumerate(r.outputs):  # never in what another party holds
                if j != i:
                    assert not any(_holds(p, seed) for _, p in out["received"])
                    assert not _holds(out["x_share"], seed)
            assert seed != insecure_prg(0, i).seed  # not the public derivation either
        plain = (x.double() * y.double()).relu()
        assert float((r.output["output"] - plain).abs().max()) < 1e-3
    first, second = runs
    assert not set(o["seed"] for o in first.outputs) & set(o["seed"] for o in second.outputs)
    assert not torch.equal(first.outputs[1]["x_share"], second.outputs[1]["x_share"])  # fresh shares


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
