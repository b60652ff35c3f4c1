"""Tests of labkit.mpc.transformer: the tiny GPT evaluated on shares.

A one-block GPT of width 16 keeps each run well under a second in the simulator; one test
launches the three real processes (a few seconds) and checks they compute the same bits."""

from __future__ import annotations

import pytest
import torch

import labkit.mpc as mpc
from labkit.lm import GPT, GPTConfig
from labkit.mpc import transformer as TR

CFG = GPTConfig(n_layer=1, n_head=2, d_model=16, d_ff=32, block_size=8)


@pytest.fixture(scope="module")
def model() -> GPT:
    m = GPT(CFG, init_seed=3).eval()
    with torch.no_grad():  # a little larger than the init, so the logits are not all ~0
        m.tok.weight.mul_(5.0)
    return m


@pytest.fixture(scope="module")
def idx() -> torch.Tensor:
    return torch.tensor([list(b"def f(x"), list(b"import ")], dtype=torch.int64)  # (2, 7)


def test_weights_are_oriented_for_x_at_w_and_the_head_is_tied(model) -> None:
    shapes = TR.weight_shapes(CFG)
    assert shapes["tok"] == (256, 16) and shapes["blocks.0.attn.qkv.w"] == (16, 48)
    assert shapes["blocks.0.ffn.down.w"] == (32, 16) and "head" not in shapes
    w = TR.gpt_weights(model)
    assert list(w) == list(shapes) and all(tuple(w[k].shape) == s for k, s in shapes.items())
    assert torch.equal(w["blocks.0.attn.qkv.w"], model.blocks[0].attn.qkv.weight.T.double())
    assert torch.equal(w["tok"], model.head.weight.double())


def test_plain_forward_with_approximations_is_close_to_the_model(model, idx) -> None:
    with torch.no_grad():
        ref = model(idx).logits.double()
    exact = TR.ApproxConfig(exact=("gelu", "softmax", "layer_norm"))
    assert float((TR.plain_logits(model, idx, approx=exact) - ref).abs().max()) < 1e-5  # same network as GPT
    assert float((TR.plain_logits(model, idx) - ref).abs().max()) < 2e-2


def test_secure_logits_match_plaintext_and_the_cost_formula(model, idx) -> None:
    res = TR.secure_logits(model, idx, runtime="simulator")
    plain = TR.plain_logits(model, idx)
    assert res.logits.shape == (2, 7, 256) and res.run.secure
    assert float((res.logits - plain).abs().max()) < 1e-2  # fixed point on top of the approximations
    assert res.run.outputs[1]["logits"] is None and res.run.outputs[2]["logits"] is None  # to the user P0 only
    assert torch.equal(res.next_token, res.logits[:, -1].argmax(-1))
    assert res.run.cost() == TR.gpt_cost(CFG, 2, 7)
    parts = TR.cost_by_category(res.run.log)
    assert set(parts) <= set(TR.CATEGORIES.values())
    assert sum(c.total_online_bytes for c in parts.values()) == res.run.cost().total_online_bytes
    assert parts["GeLU"].rounds == mpc.Cost().rounds + TR.gelu_cost(2 * 7 * 32).rounds
    assert "block0/attn" in res.times and "embed" in res.times


def test_revealing_only_the_next_token(model, idx) -> None:
    res = TR.secure_logits(model, idx, runtime="simulator", reveal="next_token")
    assert res.logits is None and res.next_token.dtype == torch.int64 and res.next_token.shape == (2,)
    plain = TR.plain_logits(model, idx)[:, -1]
    top2 = plain.topk(2, -1).values
    assert bool((top2[:, 0] - top2[:, 1] > 0.05).all())  # clear winners: fixed point cannot flip them
    assert torch.equal(res.next_token, plain.argmax(-1))
    assert res.run.cost() == TR.gpt_cost(CFG, 2, 7, reveal="next_token")
    opened = res.run.log.select(scope="reveal")
    assert opened.cost().total_online_bytes == 8 * 2  # two token ids, not 2 x 7 x 256 logits
    assert all(m.receiver == 0 for m in opened.messages)
    full = TR.gpt_cost(CFG, 2, 7)
    assert res.run.cost().rounds == full.rounds + mpc.argmax_cost((2, 256)).rounds
    assert "argmax" in TR.cost_by_category(res.run.log) and "argmax" in res.times


def test_no_message_carries_a_weight_in_the_clear(model, idx) -> None:
    res = TR.secure_logits(model, idx, runtime="simulator", keep_payloads=True)
    flat = torch.cat([t.reshape(-1) for t in TR.gpt_weights(model).values()])
    enc = mpc.encode(flat)
    enc = enc[enc.abs() > 1000]  # skip tiny encodings (0/1 bits are opened on purpose)
    assert res.run.log.containing(enc) == []


@pytest.mark.timeout(180)
def test_real_processes_compute_the_same_bits_as_the_simulator(model, idx) -> None:
    real = TR.secure_logits(model, idx[:1, :4], runtime="processes", insecure_seed=5, timeout=150)
    sim = TR.secure_logits(model, idx[:1, :4], runtime="simulator", insecure_seed=5)
    assert real.run.runtime == "processes" and not real.run.secure and not sim.run.secure
    assert torch.equal(real.logits, sim.logits)
    assert real.run.cost() == sim.run.cost()


@pytest.mark.parametrize(("call", "error", "match"), [
    (lambda m, i: TR.plain_logits(m, i.to(torch.int32)), TypeError, "int64"),
    (lambda m, i: TR.plain_logits(m, torch.zeros(1, 9, dtype=torch.int64)), ValueError, "1..8 tokens"),
    (lambda m, i: TR.plain_logits(m, i + 250), ValueError, "token ids"),
    (lambda m, i: TR.plain_logits(torch.nn.Linear(2, 2), i), TypeError, "labkit.lm.GPT"),
    (lambda m, i: TR.plain_logits(m, i, approx={"exp_squarings": 4}), TypeError, "ApproxConfig"),
    (lambda m, i: TR.weight_shapes(GPTConfig(ffn="moe")), ValueError, "dense"),
    (lambda m, i: TR.ApproxConfig(exact=("relu",)), ValueError, "exact"),
    (lambda m, i: TR.secure_logits(m, i, runtime="simulator", approx=TR.ApproxConfig(exact=("gelu",))), TypeError,
     "plaintext tensors only"),
    (lambda m, i: TR.gpt_cost(CFG, 1, 9), ValueError, "length"),
    (lambda m, i: TR.secure_logits(m, i, runtime="cloud"), ValueError, "runtime"),
    (lambda m, i: TR.secure_logits(m, i, runtime="simulator", reveal="probs"), ValueError, "reveal"),
    (lambda m, i: TR.gpt_cost(CFG, 1, 4, reveal="probs"), ValueError, "reveal"),
])
def test_bad_arguments_raise_clearly(model, idx, call, error, match) -> None:
    with pytest.raises(error, match=match):
        call(model, idx)
