"""Training the tiny GPT: it learns, it is deterministic, and the cache returns the same model."""

from __future__ import annotations

import pytest
import torch

from labkit.data.corpus import stdlib_corpus
from labkit.lm import GPTConfig, TrainConfig, evaluate, pretrained_gpt, train_gpt

CFG = GPTConfig(n_layer=1, n_head=2, d_model=16, d_ff=32, block_size=16, ffn="moe", n_experts=4, top_k=1)
RECIPE = TrainConfig(steps=30, batch_size=8, lr=1e-2, warmup=5, eval_every=15, eval_batches=2)


@pytest.fixture(scope="module")
def corpus():
    return stdlib_corpus(max_bytes=200_000)


def test_training_lowers_the_loss_and_is_deterministic(corpus):
    a = train_gpt(CFG, corpus, RECIPE, seed=3, progress=False)
    b = train_gpt(CFG, corpus, RECIPE, seed=3, progress=False)
    assert [h[0] for h in a.history] == [15, 30]
    assert a.val_loss < 5.0 < torch.log(torch.tensor(256.0)).item()  # well below uniform (5.55)
    assert [h[:3] for h in a.history] == [h[:3] for h in b.history]  # the clock (h[3]) may differ
    assert evaluate(a.model, corpus, batches=2, batch_size=8) == evaluate(b.model, corpus, batches=2, batch_size=8)


def test_pretrained_trains_once_then_loads(corpus, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LABKIT_CACHE_DIR", str(tmp_path))
    first = pretrained_gpt(CFG, corpus, RECIPE, seed=1, progress=False)
    second = pretrained_gpt(CFG, corpus, RECIPE, seed=1, progress=False)
    assert "trained and cached" in capsys.readouterr().out
    assert first.history == second.history
    for (k, v), w in zip(first.model.state_dict().items(), second.model.state_dict().values()):
        assert torch.equal(v, w), k


def test_bad_recipe_raises():
    with pytest.raises(ValueError, match="lr"):
        TrainConfig(lr=0.0)
    with pytest.raises(ValueError, match="steps"):
        TrainConfig(steps=0)
    with pytest.raises(TypeError, match="TrainConfig"):
        train_gpt(CFG, None, dict(steps=1))
