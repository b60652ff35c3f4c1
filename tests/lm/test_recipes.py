"""The shared dense tiny GPT of each tier: the ci recipe by hand, what every tier keeps, bad tiers."""

from __future__ import annotations

import pytest

from labkit.lm import GPTConfig, TrainConfig, tiny_gpt_recipe
from labkit.tiers import TIERS


def test_ci_recipe_by_hand() -> None:
    cfg, recipe = tiny_gpt_recipe("ci")
    assert (cfg.n_layer, cfg.d_model, cfg.n_head, cfg.block_size, cfg.ffn, cfg.d_ff) == (2, 64, 4, 64, "dense", 256)
    assert (recipe.steps, recipe.batch_size, recipe.eval_every, recipe.eval_batches) == (150, 16, 25, 8)  # 150 // 6


def test_every_tier_is_a_dense_model_growing_with_the_tier() -> None:
    recipes = {tier: tiny_gpt_recipe(tier) for tier in TIERS}
    for cfg, recipe in recipes.values():
        assert isinstance(cfg, GPTConfig) and isinstance(recipe, TrainConfig)
        assert cfg.ffn == "dense" and cfg.d_ff == 4 * cfg.d_model and cfg.d_model % cfg.n_head == 0
        assert recipe.eval_every == max(recipe.steps // 6, 1)
    sizes = [recipes[t][0].n_layer * recipes[t][0].d_model ** 2 for t in ("ci", "default", "gpu")]
    steps = [recipes[t][1].steps for t in ("ci", "default", "gpu")]
    assert sizes == sorted(sizes) and steps == sorted(steps)
    assert tiny_gpt_recipe("ci") == tiny_gpt_recipe("ci")  # equal configs: the same cached weights


def test_bad_tiers() -> None:
    with pytest.raises(ValueError, match="unknown tier 'fast'"):
        tiny_gpt_recipe("fast")
    with pytest.raises(TypeError, match="tier must be a string"):
        tiny_gpt_recipe(0)


def test_deep_recipe_is_deeper_than_the_tiny_one() -> None:
    from labkit.lm import deep_gpt_recipe

    cfg, recipe = deep_gpt_recipe("ci")
    assert (cfg.n_layer, cfg.d_model, cfg.block_size, cfg.ffn) == (6, 64, 64, "dense")
    assert (recipe.steps, recipe.batch_size, recipe.eval_every) == (200, 16, 50)  # 200 // 4
    for tier in TIERS:
        assert deep_gpt_recipe(tier)[0].n_layer > tiny_gpt_recipe(tier)[0].n_layer
    with pytest.raises(ValueError, match="unknown tier"):
        deep_gpt_recipe("fast")
