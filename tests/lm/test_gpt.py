"""The tiny GPT: shapes, causality, configs, routing flow and bad arguments."""

from __future__ import annotations

import pytest
import torch

from labkit.lm import GPT, GPTConfig, routing_trace
from labkit.moe.layer import MoEFFN

SMALL = dict(n_layer=3, n_head=2, d_model=16, d_ff=24, block_size=12, n_experts=4, top_k=2)


@pytest.mark.parametrize("ffn,router", [("dense", "linear"), ("moe", "linear"), ("moe", "recurrent"), ("moe", "pregate")])
def test_forward_shapes_and_loss(ffn, router):
    torch.manual_seed(0)
    model = GPT(GPTConfig(ffn=ffn, router=router, **SMALL))
    idx, targets = torch.randint(0, 256, (2, 12)), torch.randint(0, 256, (2, 12))
    out = model(idx, targets)
    assert out.logits.shape == (2, 12, 256)
    # at initialisation the prediction is nearly uniform over 256 bytes: loss ~ ln 256
    assert abs(out.lm_loss.item() - torch.log(torch.tensor(256.0)).item()) < 0.3
    out.loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad), "every parameter learns"
    assert len(out.routing) == 3
    assert all((r is None) == (ffn == "dense") for r in out.routing)


def test_causal_future_tokens_do_not_change_the_past():
    torch.manual_seed(0)
    model = GPT(GPTConfig(ffn="moe", router="recurrent", **SMALL)).eval()
    a = torch.randint(0, 256, (1, 12))
    b = a.clone()
    b[0, 8:] = (b[0, 8:] + 1) % 256
    la, lb = model(a).logits, model(b).logits
    torch.testing.assert_close(la[0, :8], lb[0, :8])
    assert not torch.allclose(la[0, 8:], lb[0, 8:])


def test_active_parameters_match_a_dense_model_of_width_k_times_expert():
    moe = GPT(GPTConfig(ffn="moe", **SMALL))
    dense = GPT(GPTConfig(ffn="dense", **{**SMALL, "d_ff": SMALL["d_ff"] * SMALL["top_k"]}))
    routers = sum(b.ffn.router.gate.weight.numel() for b in moe.blocks)
    expert_bias = SMALL["n_layer"] * SMALL["top_k"] * SMALL["d_ff"]  # each active expert has its own up-bias
    dense_bias = SMALL["n_layer"] * (SMALL["top_k"] * SMALL["d_ff"] + SMALL["d_model"])  # up and down bias
    assert moe.n_params(active=True) - routers - expert_bias == dense.n_params() - dense_bias
    assert moe.n_params() > moe.n_params(active=True)


def test_moe_layers_makes_only_those_blocks_sparse():
    model = GPT(GPTConfig(ffn="moe", moe_layers=(1, 2), **SMALL))
    assert [isinstance(b.ffn, MoEFFN) for b in model.blocks] == [False, True, True]
    trace = routing_trace(model, torch.randint(0, 256, (2, 12)))
    assert trace.shape == (24, 2, 2)


def test_recurrent_router_shares_one_gru():
    model = GPT(GPTConfig(ffn="moe", router="recurrent", **SMALL))
    grus = {id(b.ffn.router.gru) for b in model.blocks}
    assert len(grus) == 1


def test_pregate_routes_known_before_the_backbone_runs():
    torch.manual_seed(0)
    model = GPT(GPTConfig(ffn="moe", router="pregate", **SMALL)).eval()
    idx = torch.randint(0, 256, (2, 12))
    torch.testing.assert_close(model.pregate_routes(idx), routing_trace(model, idx))
    with pytest.raises(ValueError, match="pregate"):
        GPT(GPTConfig(ffn="moe", **SMALL)).pregate_routes(idx)


def test_generate_is_greedy_and_deterministic():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**SMALL)).eval()
    idx = torch.randint(0, 256, (1, 4))
    a, b = model.generate(idx, 20), model.generate(idx, 20)
    assert a.shape == (1, 24) and torch.equal(a, b) and torch.equal(a[:, :4], idx)


@pytest.mark.parametrize("bad,match", [
    (dict(top_k=5, ffn="moe"), "top_k"),
    (dict(capacity_factor=0.0), "capacity_factor"),
    (dict(d_model=15), "divisible"),
    (dict(ffn="sparse"), "ffn"),
    (dict(router="gru"), "router"),
    (dict(moe_layers=(3,)), "moe_layers"),
])
def test_bad_configs_raise(bad, match):
    with pytest.raises(ValueError, match=match):
        GPTConfig(**{**SMALL, **bad})


def test_bad_inputs_raise():
    model = GPT(GPTConfig(**SMALL))
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 13, dtype=torch.long))
    with pytest.raises(ValueError, match="B, T"):
        model(torch.zeros(12, dtype=torch.long))
    with pytest.raises(TypeError):
        GPT(SMALL)


def test_variants_share_the_initialisation_of_shared_parameters():
    dense = GPT(GPTConfig(**SMALL), init_seed=5)
    rmoe = GPT(GPTConfig(ffn="moe", router="recurrent", **SMALL), init_seed=5)
    moe = dict(GPT(GPTConfig(ffn="moe", **SMALL), init_seed=5).named_parameters())
    shared = 0
    for name, p in dense.named_parameters():
        if "ffn" not in name:
            assert torch.equal(p, dict(rmoe.named_parameters())[name]), name
            shared += 1
    assert shared > 10
    for name, p in rmoe.named_parameters():
        if "router" not in name and name in moe:
            assert torch.equal(p, moe[name]), name
    other = GPT(GPTConfig(**SMALL), init_seed=6)
    assert not torch.equal(dense.tok.weight, other.tok.weight)
    assert torch.equal(dense.blocks[0].ln1.weight, torch.ones(16))


def test_inputs_embeds_equal_the_token_path_and_leave_the_default_alone():
    model = GPT(GPTConfig(**SMALL), init_seed=3).eval()
    idx = torch.randint(0, 256, (2, 7), generator=torch.Generator().manual_seed(0))
    plain = model(idx).logits
    via = model(None, inputs_embeds=model.tok(idx)).logits
    torch.testing.assert_close(via, plain)
    targets = torch.roll(idx, -1, 1)
    assert torch.isclose(model(idx, targets).loss, model(None, targets, inputs_embeds=model.tok(idx)).loss)
    # the opt-in adds no parameter and no config field, so cached weights keep their keys
    assert "inputs_embeds" not in GPTConfig(**SMALL).as_dict()
    assert set(model.state_dict()) == set(GPT(GPTConfig(**SMALL)).state_dict())
    with pytest.raises(ValueError, match="exactly one"):
        model(idx, inputs_embeds=model.tok(idx))
    with pytest.raises(ValueError, match="exactly one"):
        model(None)
    with pytest.raises(ValueError, match="inputs_embeds must be"):
        model(None, inputs_embeds=torch.zeros(2, 7, 5))


def test_non_causal_opt_in_sees_the_future_and_keeps_the_cache_key():
    keys = ["vocab_size", "block_size", "n_layer", "n_head", "d_model", "d_ff", "ffn", "n_experts",
            "top_k", "capacity_factor", "router", "router_dim", "moe_layers", "aux_loss_weight"]
    assert list(GPTConfig(**SMALL).as_dict()) == keys  # the key of every cached causal model
    assert GPTConfig(**SMALL, causal=False).as_dict()["causal"] is False
    causal = GPT(GPTConfig(**SMALL), init_seed=1).eval()
    bidir = GPT(GPTConfig(**SMALL, causal=False), init_seed=1).eval()
    # same parameters by name and value: only the attention mask differs
    for (n1, p1), (n2, p2) in zip(causal.state_dict().items(), bidir.state_dict().items(), strict=True):
        assert n1 == n2 and torch.equal(p1, p2)
    idx = torch.randint(0, 256, (1, 8), generator=torch.Generator().manual_seed(0))
    changed = idx.clone()
    changed[0, -1] = (idx[0, -1] + 1) % 256
    torch.testing.assert_close(causal(idx).logits[:, 0], causal(changed).logits[:, 0])
    assert not torch.allclose(bidir(idx).logits[:, 0], bidir(changed).logits[:, 0])
    # with one layer the last position reads the same keys under both masks
    one = {**SMALL, "n_layer": 1}
    last = [GPT(GPTConfig(**one, causal=c), init_seed=1).eval()(idx).logits[:, -1] for c in (True, False)]
    torch.testing.assert_close(last[0], last[1])
    with pytest.raises(TypeError, match="causal"):
        GPTConfig(causal=1)
