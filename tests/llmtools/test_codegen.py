"""The code model: corpus encoding, fill-in-the-middle examples, training and generation."""

from __future__ import annotations

import random

import pytest
import torch

from labkit.lm.gpt import GPT, GPTConfig
from labkit.lm.train import TrainConfig
from labkit.llmtools.codegen import (EOT, MID, PRE, SUF, CodeRecipe, code_corpus, code_gpt_recipe, complete,
                                     fill_in_the_middle, fim_example, train_code_gpt)

DOCS = [f"module m{i}(input a, output y);\n  assign y = ~a;\nendmodule\n" for i in range(10)]


def test_recipe_is_two_blocks_with_a_256_byte_context():
    for tier in ("ci", "default", "gpu"):
        recipe = code_gpt_recipe(tier)
        assert recipe.gpt.block_size == 256 and recipe.gpt.n_layer == 2
        assert recipe.fim_rate == 0.5
    with pytest.raises(ValueError, match="tier"):
        code_gpt_recipe("huge")


def test_fim_example_puts_the_middle_last_and_keeps_every_byte():
    doc = "line0\nline1\nline2\nline3\n"
    for seed in range(20):
        ex = fim_example(doc, random.Random(seed))
        assert ex.startswith(PRE) and ex.endswith(EOT)
        prefix, rest = ex[1:].split(SUF)
        suffix, middle = rest.split(MID)
        middle = middle[:-1]
        assert prefix + middle + suffix == doc
        assert 1 <= middle.count("\n") <= 3


def test_corpus_rate_split_and_sentinels():
    corpus = code_corpus(DOCS, fim_rate=0.0, seed=0)
    assert corpus.n_fim == 0
    assert len(corpus.starts_val) == 1 and len(corpus.starts_train) == 9
    text = bytes(corpus.train.tolist()).decode()
    assert text.count(EOT) == 9 and PRE not in text
    full = code_corpus(DOCS, fim_rate=1.0, seed=0)
    assert full.n_fim == 10
    # starts point at example boundaries
    assert all(full.train[s].item() == ord(PRE) for s in full.starts_train.tolist())
    x, y = full.get_batch("train", batch_size=4, block_size=16, generator=torch.Generator().manual_seed(0))
    assert x.shape == (4, 16) and torch.equal(x[:, 1:], y[:, :-1])


def test_corpus_bad_inputs():
    with pytest.raises(TypeError, match="documents"):
        code_corpus("module", 0.5)
    with pytest.raises(ValueError, match="at least 2"):
        code_corpus(["a"], 0.5)
    with pytest.raises(ValueError, match="sentinel"):
        code_corpus(["a" + EOT, "b"], 0.5)
    with pytest.raises(ValueError, match="ASCII"):
        code_corpus(["caf\u00e9", "b"], 0.5)
    with pytest.raises(ValueError, match="fim_rate"):
        code_corpus(DOCS, 1.5)
    with pytest.raises(ValueError, match="split"):
        code_corpus(DOCS).get_batch("test", batch_size=1, block_size=4, generator=torch.Generator())


def _tiny_recipe(steps: int = 200) -> CodeRecipe:
    # a 64-byte context keeps the test cheap; the API does not depend on the width of the context
    gpt = GPTConfig(block_size=64, n_layer=2, n_head=2, d_model=32, d_ff=64)
    return CodeRecipe(gpt=gpt, train=TrainConfig(steps=steps, batch_size=8, lr=1e-2, warmup=5, eval_every=steps,
                                                 eval_batches=1), fim_rate=0.5)


def test_training_learns_a_memorised_template_left_to_right_and_in_the_middle():
    docs = ["begin\n  x = 1;\nend\n"] * 12
    result = train_code_gpt(docs, _tiny_recipe(), seed=0)
    assert result.history[-1][2] < 0.3  # nats per byte on held-out copies
    assert complete(result.model, "begin\n", max_new_tokens=20) == ["  x = 1;\nend\n"]
    assert fill_in_the_middle(result.model, "begin\n", "end\n", max_new_tokens=20) == ["  x = 1;\n"]


def test_generation_stops_samples_and_validates():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=256, n_layer=1, n_head=1, d_model=8, d_ff=8)).eval()
    outs = complete(model, "abc", max_new_tokens=5, temperature=1.0, n=3, seed=1)
    assert len(outs) == 3 and all(len(o) <= 5 for o in outs)
    assert complete(model, "abc", max_new_tokens=5, temperature=1.0, n=3, seed=1) == outs
    greedy = complete(model, "abc", max_new_tokens=5, n=2)
    assert greedy[0] == greedy[1]
    long_prefix = fill_in_the_middle(model, "x" * 400, "y" * 400, max_new_tokens=4)
    assert len(long_prefix) == 1
    with pytest.raises(TypeError, match="model"):
        complete("gpt", "abc")
    with pytest.raises(ValueError, match="temperature"):
        complete(model, "abc", temperature=-1.0)
    with pytest.raises(ValueError, match="n must"):
        complete(model, "abc", n=0)
    with pytest.raises(ValueError, match="sentinel"):
        complete(model, "abc" + MID)
    with pytest.raises(TypeError, match="recipe"):
        train_code_gpt(DOCS, "ci")
