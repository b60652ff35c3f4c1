"""Hidden transfer: pseudo states, the candidate tree, and lossless decoding."""

from __future__ import annotations

import pytest
import torch

from labkit.inference.hidden_transfer import (TransferMaps, accept_path, build_tree, draft_accuracy,
                                              draft_loss, greedy_decode, hidden_transfer_decode, train_transfer,
                                              transfer_logits)
from labkit.inference.hooks import hooked_forward
from labkit.inference.kvcache import prefill
from labkit.lm import GPT, GPTConfig

pytestmark = pytest.mark.usefixtures("one_thread")

CFG = GPTConfig(n_layer=3, n_head=2, d_model=16, d_ff=32, block_size=40)


def _model() -> GPT:
    """A seeded GPT pushed far enough from its initialisation that greedy decoding varies."""
    torch.manual_seed(0)
    m = GPT(CFG, init_seed=0).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return m


def _maps(k: int = 3, seed: int = 1) -> TransferMaps:
    maps = TransferMaps(16, k)
    with torch.no_grad():
        maps.weight.add_(0.3 * torch.randn(maps.weight.shape, generator=torch.Generator().manual_seed(seed)))
    return maps


def _prompt(seed: int, T: int = 6) -> torch.Tensor:
    return torch.randint(256, (T,), generator=torch.Generator().manual_seed(seed))


def test_transfer_maps_start_as_copies() -> None:
    maps = TransferMaps(16, 3)
    h = torch.randn(2, 5, 16)
    out = maps(h)
    assert out.shape == (2, 5, 3, 16)
    torch.testing.assert_close(out, h[:, :, None].expand(-1, -1, 3, -1))
    with pytest.raises(ValueError, match="k must be"):
        TransferMaps(16, 0)


def test_build_tree_by_hand() -> None:
    tree = build_tree(5, torch.tensor([[1, 2], [3, 4]]))
    assert tree.tokens.tolist() == [5, 1, 2, 3, 4, 3, 4]
    assert tree.parent == [-1, 0, 0, 1, 1, 2, 2]
    assert tree.depth.tolist() == [0, 1, 1, 2, 2, 2, 2]
    assert tree.mask[6].tolist() == [True, False, True, False, False, False, True]  # root, node 2, itself
    assert tree.mask.sum().item() == 1 + 2 * 2 + 4 * 3
    chain = build_tree(5, torch.tensor([[1], [3]]))
    assert chain.tokens.tolist() == [5, 1, 3] and chain.mask.tolist() == torch.ones(3, 3).tril().bool().tolist()


def test_accept_path_by_hand() -> None:
    tree = build_tree(5, torch.tensor([[1, 2], [3, 4]]))
    # greedy after the root is 2, after node 2 is 4 (node 6), after node 6 anything
    greedy = torch.tensor([2, 9, 4, 9, 9, 9, 0])
    assert accept_path(tree, greedy) == [0, 2, 6]
    assert accept_path(tree, torch.tensor([7, 0, 0, 0, 0, 0, 0])) == [0]  # no draft matches


def test_transfer_logits_keep_the_model_exact() -> None:
    model, maps = _model(), _maps()
    x = torch.randint(256, (2, 12), generator=torch.Generator().manual_seed(2))
    logits, pseudo = transfer_logits(model, maps, x, layer=1)
    torch.testing.assert_close(logits, hooked_forward(model, x), atol=1e-5, rtol=1e-5)
    assert pseudo.shape == (2, 12, 3, 256)
    # pseudo state j of position t depends on tokens <= t only
    x2 = x.clone()
    x2[:, 8:] = (x2[:, 8:] + 1) % 256
    _, pseudo2 = transfer_logits(model, maps, x2, layer=1)
    torch.testing.assert_close(pseudo2[:, :8], pseudo[:, :8], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(pseudo2[:, 8:], pseudo[:, 8:])
    with pytest.raises(ValueError, match="layer"):
        transfer_logits(model, maps, x, layer=3)
    with pytest.raises(ValueError, match="sources"):
        transfer_logits(model, maps, x, layer=1, sources=torch.tensor([12]))
    with pytest.raises(ValueError, match="block_size"):
        transfer_logits(model, maps, torch.zeros(1, 41, dtype=torch.long), layer=1)
    with pytest.raises(TypeError, match="maps"):
        transfer_logits(model, torch.nn.Linear(16, 16), x, layer=1)


def test_greedy_equality_over_20_seeded_prompts() -> None:
    model, maps = _model(), _maps()
    accepted = []
    for seed in range(20):
        prompt = _prompt(seed)
        ref = model.generate(prompt[None], 20)[0, 6:]  # recomputes the full forward every token
        assert torch.equal(greedy_decode(model, prompt, 20).tokens, ref)
        for width in (1, 2, 3):
            res = hidden_transfer_decode(model, maps, prompt, 20, layer=1, width=width)
            assert torch.equal(res.tokens, ref), (seed, width)
            assert res.passes == 1 + len(res.accepted) and 1 + sum(res.accepted) >= 20
            assert all(1 <= a <= 4 for a in res.accepted)
            assert res.tree_sizes[0] == sum(width ** d for d in range(4))
            accepted += res.accepted
    assert min(accepted) == 1 and max(accepted) > 1  # both rejections and accepted drafts occur


def test_drafts_from_the_cache_equal_the_full_pass() -> None:
    """The pseudo states of a chain verified against the cache equal those of one full pass."""
    from labkit.inference.hidden_transfer import _transfer_pass
    model, maps = _model(), _maps()
    x = torch.randint(256, (1, 10), generator=torch.Generator().manual_seed(3))
    _, full = transfer_logits(model, maps, x, layer=2)
    _, cache = prefill(model, x[:, :6])
    chain = torch.ones(4, 4, dtype=torch.bool).tril()
    _, pseudo, _ = _transfer_pass(model, maps, x[:, 6:], torch.arange(6, 10), chain, 2, torch.arange(4), cache)
    torch.testing.assert_close(pseudo, full[:, 6:], atol=1e-5, rtol=1e-5)


def test_train_transfer_learns_and_leaves_the_model() -> None:
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(4)
    text = torch.arange(40).repeat(3) % 7 + 97  # a periodic text: its future is predictable

    def batches():
        while True:
            s = torch.randint(0, 60, (8,), generator=g)
            yield torch.stack([text[i:i + 32] for i in s.tolist()])

    maps, losses = train_transfer(model, batches(), k=2, layer=1, steps=40, lr=1e-2)
    assert len(losses) == 40 and losses[-1] < 0.7 * losses[0]
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert all(p.requires_grad for p in model.parameters())
    acc = draft_accuracy(model, maps, next(batches()), layer=1, width=2)
    ident = draft_accuracy(model, TransferMaps(16, 2), next(batches()), layer=1, width=2)
    assert acc.shape == (2,) and (acc > ident).all()
    x = next(batches())
    loss = draft_loss(model, maps, x, layer=1)
    assert loss.shape == (2,) and (loss < draft_loss(model, TransferMaps(16, 2), x, layer=1)).all()
    # by hand: the loss of pseudo state 1 at position 0 is the cross-entropy against token 2
    _, pseudo = transfer_logits(model, maps, x[:1, :3], layer=1)
    one = draft_loss(model, maps, x[:1, :3], layer=1)[0]
    torch.testing.assert_close(one, torch.nn.functional.cross_entropy(pseudo[0, 0, :1], x[0, 2:3]))
    with pytest.raises(ValueError, match="steps"):
        train_transfer(model, batches(), k=2, layer=1, steps=0)
    with pytest.raises(ValueError, match="k must be"):
        train_transfer(model, batches(), k=0, layer=1, steps=1)


def test_decode_errors() -> None:
    model, maps = _model(), _maps()
    with pytest.raises(ValueError, match="width"):
        hidden_transfer_decode(model, maps, _prompt(0), 5, layer=1, width=0)
    with pytest.raises(ValueError, match="block_size"):
        hidden_transfer_decode(model, maps, _prompt(0, 30), 8, layer=1, width=2)
    with pytest.raises(ValueError, match="block_size"):
        greedy_decode(model, _prompt(0, 30), 12)
    with pytest.raises(ValueError, match="prompt"):
        hidden_transfer_decode(model, maps, torch.zeros(2, 3, dtype=torch.long), 5, layer=1, width=1)
    with pytest.raises(ValueError, match="n_new"):
        hidden_transfer_decode(model, maps, _prompt(0), 0, layer=1, width=1)
    with pytest.raises(ValueError, match="maps are for width 32"):
        hidden_transfer_decode(model, TransferMaps(32, 2), _prompt(0), 5, layer=1, width=1)
