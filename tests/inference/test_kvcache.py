"""The KV cache: cached decoding equals recomputing the full forward pass."""

from __future__ import annotations

import math

import pytest
import torch

from labkit.inference.kvcache import KVCache, cached_attention, decode_step, extend, prefill
from labkit.lm import GPT, GPTConfig
from tests.inference._models import perturbed_gpt

pytestmark = pytest.mark.usefixtures("one_thread")

CFG = GPTConfig(n_layer=3, n_head=2, d_model=16, d_ff=32, block_size=24)


@pytest.fixture
def model() -> GPT:
    return perturbed_gpt(CFG)


def _idx(seed: int, T: int, B: int = 2) -> torch.Tensor:
    return torch.randint(256, (B, T), generator=torch.Generator().manual_seed(seed))


def test_prefill_equals_forward(model: GPT) -> None:
    x = _idx(0, 10)
    logits, cache = prefill(model, x)
    torch.testing.assert_close(logits, model(x).logits, atol=1e-5, rtol=1e-5)
    assert cache.length == 10 and cache.keys[0].shape == (2, 2, 10, 8)
    assert cache.nbytes() == 2 * 3 * 2 * 10 * 16 * 4


def test_cached_greedy_decode_equals_full_forward(model: GPT) -> None:
    seq = _idx(1, 5)
    logits, cache = prefill(model, seq)
    last = logits[:, -1]
    for _ in range(15):
        ref = model(seq).logits[:, -1]  # recompute everything
        torch.testing.assert_close(last, ref, atol=1e-5, rtol=1e-5)
        nxt = last.argmax(-1)
        seq = torch.cat([seq, nxt[:, None]], dim=1)
        last = decode_step(model, cache, nxt)
    assert cache.length == 20
    torch.testing.assert_close(seq, model.generate(seq[:, :5], 15))


def test_chunked_extend_equals_forward(model: GPT) -> None:
    x = _idx(2, 16)
    _, cache = prefill(model, x[:, :6])
    out = extend(model, cache, x[:, 6:])
    torch.testing.assert_close(out, model(x).logits[:, 6:], atol=1e-5, rtol=1e-5)


def test_tree_mask_equals_explicit_sdpa(model: GPT) -> None:
    """New positions under a tree mask attend to the context and their ancestors only."""
    g = torch.Generator().manual_seed(3)
    attn = model.blocks[0].attn
    S, n, D, H = 5, 6, 16, 2
    ctx, new = torch.randn(1, S, D, generator=g), torch.randn(1, n, D, generator=g)
    parent = [-1, 0, 0, 1, 1, 2]  # node 0 the root, two children, three grandchildren
    tree = torch.eye(n, dtype=torch.bool)
    for i in range(n):
        j = parent[i]
        while j >= 0:
            tree[i, j], j = True, parent[j]
    _, pk, pv = cached_attention(attn, ctx, None, None)
    y, k, v = cached_attention(attn, new, pk, pv, tree)
    # reference: softmax(QK^T / sqrt(d) + explicit additive mask) V over context and tree
    q, kk, vv = attn.qkv(torch.cat([ctx, new], 1)).split(D, dim=2)
    q, kk, vv = (t.view(1, S + n, H, -1).transpose(1, 2) for t in (q, kk, vv))
    allowed = torch.cat([torch.ones(n, S, dtype=torch.bool), tree], dim=1)
    scores = q[:, :, S:] @ kk.transpose(-1, -2) / math.sqrt(D // H)
    probs = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
    ref = attn.proj((probs @ vv).transpose(1, 2).reshape(1, n, D))
    torch.testing.assert_close(y, ref, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(k, kk[:, :, S:])
    # a path through the tree equals decoding that path one token at a time
    toks = _idx(4, n, B=1)
    ctx_idx = _idx(5, S, B=1)
    _, cache = prefill(model, ctx_idx)
    depth = torch.tensor([0, 1, 1, 2, 2, 2]) + S
    tree_logits = extend(model, cache, toks, positions=depth, mask=tree)
    path = [0, 2, 5]
    seq = torch.cat([ctx_idx, toks[:, path]], dim=1)
    torch.testing.assert_close(tree_logits[:, path], model(seq).logits[:, S:], atol=1e-5, rtol=1e-5)
    # keeping the path's keys and values leaves the cache of sequential decoding
    cache.keep(S, path)
    assert cache.length == S + 3
    nxt = torch.tensor([7])
    torch.testing.assert_close(decode_step(model, cache, nxt),
                               model(torch.cat([seq, nxt[None]], 1)).logits[:, -1], atol=1e-5, rtol=1e-5)


def test_crop_rolls_back(model: GPT) -> None:
    x = _idx(6, 12)
    _, cache = prefill(model, x[:, :8])
    extend(model, cache, x[:, 8:])
    cache.crop(8)
    assert cache.length == 8
    torch.testing.assert_close(extend(model, cache, x[:, 8:]), model(x).logits[:, 8:], atol=1e-5, rtol=1e-5)


def test_errors(model: GPT) -> None:
    with pytest.raises(ValueError, match="block_size"):
        prefill(model, _idx(0, 25))
    _, cache = prefill(model, _idx(0, 24))
    with pytest.raises(ValueError, match="block_size"):
        decode_step(model, cache, torch.tensor([1, 2]))
    _, cache = prefill(model, _idx(0, 4))
    with pytest.raises(ValueError, match="block_size"):
        extend(model, cache, _idx(0, 2), positions=torch.tensor([5, 24]))
    with pytest.raises(ValueError, match="mask"):
        extend(model, cache, _idx(0, 2), mask=torch.zeros(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask"):
        extend(model, cache, _idx(0, 2), mask=torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(TypeError, match="model"):
        prefill(torch.nn.Linear(2, 2), _idx(0, 4))
    with pytest.raises(ValueError, match="length"):
        cache.crop(9)
    with pytest.raises(ValueError, match="rows"):
        cache.keep(2, [5])
    with pytest.raises(ValueError, match="block_size"):
        KVCache(3, 0)
    with pytest.raises(ValueError, match=r"mask must be \(2, 2\) or \(2, 6\)"):
        cached_attention(model.blocks[0].attn, torch.randn(2, 2, 16), *cache.past(0),
                         torch.ones(2, 5, dtype=torch.bool))
