"""MatryoshkaKV: projected attention, PCA bases, training and the rank search."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from labkit.data.corpus import stdlib_corpus
from labkit.inference.matryoshka import (KVProjection, check_ranks, greedy_allocation, kv_states,
                                         pca_projection, project_kv, projected_attention,
                                         projected_logits, projection_kl, train_projection)
from labkit.lm import GPTConfig

from ._models import perturbed_gpt

CFG = GPTConfig(n_layer=2, n_head=2, d_model=16, d_ff=32, block_size=16)  # head width 8


@pytest.fixture(scope="module")
def model():
    return perturbed_gpt(CFG)


@pytest.fixture(scope="module")
def idx():
    return torch.randint(0, 256, (3, 12), generator=torch.Generator().manual_seed(0))


def _random_bases(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.linalg.qr(torch.randn(2, 2, 8, 8, generator=g))[0] for _ in "kv")


def test_full_rank_equals_full_attention(model, idx):
    uk, uv = _random_bases()
    full = model(idx).logits
    torch.testing.assert_close(projected_logits(model, idx, (uk, uv), 8), full, atol=1e-5, rtol=1e-5)
    blk = model.blocks[0]
    x = blk.ln1(model.tok(idx) + model.pos(torch.arange(idx.shape[1])))
    ones = torch.ones(2, 8)
    torch.testing.assert_close(projected_attention(blk.attn, x, uk[0], uv[0], ones, ones), blk.attn(x),
                               atol=1e-5, rtol=1e-5)


def test_low_rank_matches_hand_computed_head(model, idx):
    """The masked form equals attention computed by hand from K U[:, :r] and V U[:, :r]."""
    uk, uv = _random_bases(1)
    r = 3
    blk = model.blocks[0]
    x = blk.ln1(model.tok(idx) + model.pos(torch.arange(idx.shape[1])))
    B, T, D = x.shape
    q, k, v = (t.view(B, T, 2, 8).transpose(1, 2) for t in blk.attn.qkv(x).split(D, dim=2))
    kl, vl = project_kv(k, uk[0], r), project_kv(v, uv[0], r)          # (B, H, T, r)
    assert kl.shape == (B, 2, T, r)
    scores = (q @ uk[0][:, :, :r]) @ kl.transpose(-1, -2) / 8 ** 0.5
    scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    o = scores.softmax(-1) @ vl @ uv[0][:, :, :r].transpose(-1, -2)
    want = blk.attn.proj(o.transpose(1, 2).reshape(B, T, D))
    keep = (torch.arange(8) < r).float().expand(2, 8)
    torch.testing.assert_close(projected_attention(blk.attn, x, uk[0], uv[0], keep, keep), want,
                               atol=1e-5, rtol=1e-5)


def test_lower_rank_changes_output_and_ranks_per_head(model, idx):
    uk, uv = _random_bases()
    full = model(idx).logits
    assert (projected_logits(model, idx, (uk, uv), 2) - full).abs().max() > 1e-3
    table = [[8, 8], [8, 2]]  # only one head of the last block is cut
    mixed = projected_logits(model, idx, (uk, uv), table, 8)
    assert (mixed - full).abs().max() > 1e-4
    assert (mixed - projected_logits(model, idx, (uk, uv), 2)).abs().max() > 1e-4


def test_pca_bases_are_orthogonal_and_sorted(model, idx):
    proj = pca_projection(model, idx)
    uk, uv = proj.bases()
    eye = torch.eye(8).expand(2, 2, 8, 8)
    torch.testing.assert_close(uk.transpose(-1, -2) @ uk, eye, atol=1e-5, rtol=0)
    torch.testing.assert_close(uv.transpose(-1, -2) @ uv, eye, atol=1e-5, rtol=0)
    keys, _ = kv_states(model, idx)                   # (L, H, N, d)
    energy = ((keys @ uk) ** 2).mean(-2)              # (L, H, d), energy per column
    assert (energy[..., :-1] >= energy[..., 1:] - 1e-6).all()
    # PCA is the best rank-r basis for the keys: it keeps more energy than a random one
    rand = _random_bases(3)[0]
    assert ((keys @ uk[..., :2]) ** 2).sum() > ((keys @ rand[..., :2]) ** 2).sum()


def test_pca_of_known_directions():
    """Keys along one axis only: the first PCA column is that axis."""
    m = perturbed_gpt(CFG)
    with torch.no_grad():
        w = m.blocks[0].attn.qkv.weight  # rows D..2D are the keys
        w[CFG.d_model:2 * CFG.d_model] = 0
        w[CFG.d_model + 5] = 1.0  # head 0, coordinate 5
        m.blocks[0].attn.qkv.bias.zero_()
    idx = torch.randint(0, 256, (2, 10), generator=torch.Generator().manual_seed(1))
    uk, _ = pca_projection(m, idx).bases()
    assert abs(abs(float(uk[0, 0, 5, 0].detach())) - 1) < 1e-5


def test_training_keeps_orthogonality_and_lowers_kl(model):
    corpus = stdlib_corpus(max_bytes=20_000)
    x, _ = corpus.get_batch("val", batch_size=4, block_size=16, generator=torch.Generator().manual_seed(2))
    proj = KVProjection(*_random_bases(4))
    before = projection_kl(model, x, proj, 2)
    hist = train_projection(model, proj, corpus, steps=25, ranks=(2,), batch_size=8, lr=3e-2, seed=0)
    assert len(hist) == 25
    uk, uv = proj.bases()
    eye = torch.eye(8).expand(2, 2, 8, 8)
    torch.testing.assert_close(uk.transpose(-1, -2) @ uk, eye, atol=1e-5, rtol=0)
    torch.testing.assert_close(uv.transpose(-1, -2) @ uv, eye, atol=1e-5, rtol=0)
    assert projection_kl(model, x, proj, 2) < 0.8 * before
    assert all(p.requires_grad for p in model.parameters())  # the model is given back unfrozen
    assert not any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_greedy_allocation_meets_budget_and_beats_uniform(model, idx):
    proj = KVProjection(*_random_bases(5))
    alloc = greedy_allocation(model, idx, proj, budget=4, ranks=(2, 4, 6, 8))
    assert alloc.mean <= 4 and alloc.mean > 3
    assert set(torch.cat([alloc[0].flatten(), alloc[1].flatten()]).tolist()) <= {2, 4, 6, 8}
    assert projection_kl(model, idx, proj, *alloc) <= projection_kl(model, idx, proj, 4)
    full = greedy_allocation(model, idx, proj, budget=8, ranks=(2, 4, 6, 8))
    assert (full[0] == 8).all() and (full[1] == 8).all()


def test_kl_is_zero_at_full_rank(model, idx):
    assert projection_kl(model, idx, _random_bases(), 8) < 1e-6
    logits = projected_logits(model, idx, _random_bases(), 8)
    assert F.kl_div(logits.log_softmax(-1), model(idx).logits.log_softmax(-1), log_target=True,
                    reduction="batchmean") < 1e-6


@pytest.mark.parametrize("bad", [0, 9, -1, [[8, 8], [8, 0]], [[8, 8], [8, 9]]])
def test_rank_out_of_range(model, idx, bad):
    with pytest.raises(ValueError, match="rank_k"):
        projected_logits(model, idx, _random_bases(), bad)


def test_bad_arguments(model, idx):
    uk, uv = _random_bases()
    with pytest.raises(ValueError, match="shape"):
        check_ranks("r", [[8, 8]], 2, 2, 8)
    with pytest.raises(TypeError, match="r must"):
        check_ranks("r", 2.5, 2, 2, 8)
    with pytest.raises(TypeError, match="integers"):
        check_ranks("r", torch.ones(2, 2), 2, 2, 8)
    with pytest.raises(ValueError, match="rank"):
        project_kv(torch.randn(1, 2, 3, 8), uk[0], 9)
    with pytest.raises(ValueError, match="rank"):
        project_kv(torch.randn(1, 2, 3, 8), uk[0], 0)
    with pytest.raises(ValueError, match="orthogonal"):
        KVProjection(torch.ones(2, 2, 8, 8), uv)
    with pytest.raises(ValueError, match="neither"):
        KVProjection(uk)
    with pytest.raises(TypeError, match="proj"):
        projected_logits(model, idx, uk, 4)
    with pytest.raises(ValueError, match="bases"):
        projected_logits(model, idx, (uk[:1], uv[:1]), 4)
    with pytest.raises(TypeError, match="model"):
        pca_projection("gpt", idx)
    with pytest.raises(ValueError, match="dense"):
        projected_logits(perturbed_gpt(GPTConfig(n_layer=1, n_head=2, d_model=16, d_ff=8, ffn="moe",
                                                 n_experts=2, top_k=1, block_size=16)), idx, (uk, uv), 4)
    with pytest.raises(ValueError, match="budget"):
        greedy_allocation(model, idx, (uk, uv), budget=9, ranks=(2, 4, 8))
    with pytest.raises(ValueError, match="budget"):
        greedy_allocation(model, idx, (uk, uv), budget=1, ranks=(2, 4, 8))
    with pytest.raises(ValueError, match="ranks"):
        greedy_allocation(model, idx, (uk, uv), budget=4, ranks=(2, 12))
    corpus = stdlib_corpus(max_bytes=20_000)
    with pytest.raises(TypeError, match="proj"):
        train_projection(model, (uk, uv), corpus, steps=1)
    with pytest.raises(ValueError, match="proj has shape"):
        train_projection(model, KVProjection(n_layer=1, n_head=2, head_dim=8), corpus, steps=1)
    with pytest.raises(ValueError, match="steps"):
        train_projection(model, KVProjection(uk, uv), corpus, steps=-1)
