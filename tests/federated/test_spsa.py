"""Just One Byte: seeds, the byte codec, the shared step, real gloo peers against the simulator."""

from __future__ import annotations

import math
import time

import pytest
import torch

from labkit.dist import LaunchError, LaunchTimeout, launch
from labkit.federated.spsa import (
    SpsaConfig,
    batch_noise,
    decode_byte,
    encode_byte,
    eval_windows,
    params_sha256,
    perturbation_seed,
    rademacher,
    shared_step,
    simulate_spsa,
    spsa_estimate,
    spsa_peer,
)
from labkit.lm import GPT, GPTConfig

TINY = dict(n_layer=1, d_model=16, n_head=2, block_size=16, ffn="dense", d_ff=32)


def _model() -> dict:
    net = GPT(GPTConfig(**TINY), init_seed=3)
    return dict(config=GPTConfig(**TINY).as_dict(), state=net.state_dict())


def _tokens(n: int, seed: int) -> torch.Tensor:
    text = b"def f(x):\n    return x + 1  # add one\n" * 40
    gen = torch.Generator().manual_seed(seed)
    start = int(torch.randint(0, len(text) - n, (1,), generator=gen))
    return torch.frombuffer(bytearray(text[start:start + n]), dtype=torch.uint8)


CFG = SpsaConfig(steps=6, lr=1e-3, eps=1e-3, clip=4.0, batch_size=2, eval_every=3,
                 eval_windows=4, seed=1)


def test_seed_depends_on_peer_step_and_run() -> None:
    seeds = {perturbation_seed(i, t, seed=s) for i in range(3) for t in range(3) for s in range(2)}
    assert len(seeds) == 18
    assert perturbation_seed(2, 5) == perturbation_seed(2, 5)
    with pytest.raises(ValueError, match="peer"):
        perturbation_seed(-1, 0)
    with pytest.raises(TypeError, match="step"):
        perturbation_seed(0, 1.5)


def test_rademacher_is_reproducible_and_balanced() -> None:
    z = rademacher(10_000, 1, 7, seed=2)
    assert z.dtype == torch.float32 and set(z.unique().tolist()) == {-1.0, 1.0}
    assert abs(float(z.mean())) < 0.05
    assert torch.equal(z, rademacher(10_000, 1, 7, seed=2))
    assert not torch.equal(z, rademacher(10_000, 0, 7, seed=2))
    with pytest.raises(ValueError, match="numel"):
        rademacher(0, 0, 0)


def test_byte_codec_by_hand() -> None:
    assert encode_byte(0.5, 1.0).tolist() == [64]  # 63.5 rounds to 64
    assert encode_byte(5.0, 1.0).tolist() == [127]  # clipped
    assert encode_byte(-5.0, 1.0).tolist() == [-127]
    code = encode_byte(0.25, 2.0)
    assert code.dtype == torch.int8 and code.numel() * code.element_size() == 1
    assert decode_byte(code, 2.0) == pytest.approx(16 * 2.0 / 127)
    # the rounding error is at most half a level
    for g in torch.linspace(-3, 3, 41).tolist():
        assert abs(decode_byte(encode_byte(g, 3.0), 3.0) - g) <= 3.0 / 254 + 1e-9
    with pytest.raises(ValueError, match="clip"):
        encode_byte(1.0, 0.0)
    with pytest.raises(TypeError, match="code"):
        decode_byte(torch.tensor([3]), 1.0)
    with pytest.raises(ValueError, match="g"):
        encode_byte(math.nan, 1.0)


def test_spsa_estimate_is_exact_on_a_quadratic() -> None:
    theta = torch.tensor([1.0, -2.0, 0.5, 3.0])
    z = torch.tensor([1.0, 1.0, -1.0, -1.0])
    g, plus, minus = spsa_estimate(lambda v: float(0.5 * v.double().pow(2).sum()), theta, z, 1e-2)
    assert g == pytest.approx(float(theta @ z), abs=1e-4)  # central difference: exact
    assert plus < minus  # theta . z = -4.5: the loss falls along z
    assert torch.equal(theta, torch.tensor([1.0, -2.0, 0.5, 3.0]))  # untouched
    with pytest.raises(ValueError, match="eps"):
        spsa_estimate(lambda v: 0.0, theta, z, 0.0)


def test_shared_step_by_hand() -> None:
    theta = torch.zeros(5)
    codes = [torch.tensor([127], dtype=torch.int8), torch.tensor([-127], dtype=torch.int8)]
    out = shared_step(theta, codes, 4, lr=2.0, clip=1.0, seed=3)
    z0, z1 = rademacher(5, 0, 4, seed=3), rademacher(5, 1, 4, seed=3)
    assert torch.allclose(out, -(2.0 / 2) * (z0 - z1))
    # every peer computes it alone and gets the same bits
    assert params_sha256(out) == params_sha256(shared_step(theta, codes, 4, lr=2.0, clip=1.0, seed=3))


def test_sha256_and_windows_validate() -> None:
    with pytest.raises(TypeError, match="theta"):
        params_sha256(torch.zeros(3, dtype=torch.float64))
    x, y = eval_windows(torch.arange(100, dtype=torch.uint8), 5, 8)
    assert x.shape == y.shape == (5, 8) and torch.equal(x[:, 1:], y[:, :-1])
    with pytest.raises(ValueError, match="tokens"):
        eval_windows(torch.arange(5, dtype=torch.uint8), 2, 8)
    first, last = torch.tensor([3.0, 3.0, 3.2]), torch.tensor([2.9, 3.0, 3.0])
    mean, se = batch_noise(first, last)
    assert mean == pytest.approx(0.1, abs=1e-6) and se > 0


def test_simulator_validates_its_arguments() -> None:
    kwargs = dict(model=_model(), train=_tokens(400, 0), held_out=_tokens(200, 1))
    with pytest.raises(ValueError, match="world_size"):
        simulate_spsa(1, cfg=CFG, **kwargs)
    with pytest.raises(TypeError, match="cfg"):
        simulate_spsa(2, cfg=dict(steps=3), **kwargs)
    with pytest.raises(ValueError, match="held_out"):
        simulate_spsa(2, cfg=CFG, model=kwargs["model"], train=kwargs["train"],
                      held_out=_tokens(10, 0))
    with pytest.raises(ValueError, match="steps"):
        SpsaConfig(steps=0)
    with pytest.raises(ValueError, match="eps"):
        SpsaConfig(eps=-1.0)
    with pytest.raises(ValueError, match="spsa_peer runs under"):
        spsa_peer(0, 2, cfg=CFG, **kwargs)


def test_simulator_steps_move_the_parameters_and_log_one_byte() -> None:
    out = simulate_spsa(3, model=_model(), train=_tokens(400, 0), held_out=_tokens(200, 1),
                        cfg=CFG, hash_at=(0, 6))
    assert len(out["log"]) == CFG.steps
    assert all(row["message_bytes"] == 1 and len(row["codes"]) == 3 for row in out["log"])
    assert out["hashes"][0] != out["hashes"][6] == out["sha256"]
    assert [t for t, _ in out["held_out"]] == [0, 3, 6]


@pytest.mark.timeout(120)
def test_real_peers_stay_identical_and_equal_the_simulator() -> None:
    kwargs = dict(model=_model(), train=_tokens(400, 0), held_out=_tokens(200, 1), cfg=CFG,
                  hash_at=(3, 6))
    real = launch(spsa_peer, 3, timeout=90, kwargs=kwargs)
    sim = simulate_spsa(3, **kwargs)
    assert len({r["sha256"] for r in real}) == 1
    assert real[0]["hashes"] == real[2]["hashes"] == sim["hashes"]
    assert real[1]["sha256"] == sim["sha256"]
    assert [row["codes"] for row in real[0]["log"]] == [row["codes"] for row in sim["log"]]
    # one byte per peer and step; the ring all-gather forwards the other two
    assert all(row["message_bytes"] == 1 and row["sent"] == 2 for r in real for row in r["log"])
    assert real[1]["held_out"] == []  # evaluated on peer 0 only
    assert real[0]["held_out"] == sim["held_out"]


@pytest.mark.timeout(120)
def test_a_peer_that_dies_surfaces_as_launch_error() -> None:
    timeout = 90.0
    start = time.monotonic()
    with pytest.raises(LaunchError) as info:
        launch(spsa_peer, 2, timeout=timeout, kwargs=dict(
            model=_model(), train=_tokens(400, 0), held_out=_tokens(200, 1), cfg=CFG,
            die_at=(1, 2)))
    assert not isinstance(info.value, LaunchTimeout)
    assert info.value.rank == 1
    assert time.monotonic() - start < timeout / 2
    with pytest.raises(ValueError, match="die_at peer"):
        spsa_peer(0, 2, model=_model(), train=_tokens(400, 0), held_out=_tokens(200, 1),
                  cfg=CFG, die_at=(2, 1))
