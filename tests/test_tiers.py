"""labkit.tiers: sizes per tier, device choice and validation."""

from __future__ import annotations

import pytest
import torch

from labkit.tiers import TIERS, pick_device, tier_config, validate_tier

SIZES = dict(ci=dict(n=10, k=2), default=dict(n=100, k=4), gpu=dict(n=1000, k=8))


@pytest.mark.parametrize("tier", ["ci", "default"])
def test_picks_that_tiers_sizes(tier: str) -> None:
    cfg = tier_config(tier, **SIZES)
    assert cfg.tier == tier and cfg.n == SIZES[tier]["n"] and cfg.k == SIZES[tier]["k"]
    assert cfg.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert f"tier={tier}" in str(cfg)


def test_gpu_falls_back_to_default_sizes() -> None:
    cfg = tier_config("default", ci=dict(n=1), default=dict(n=2), device="cpu")
    assert cfg.n == 2


def test_sizes_are_read_only() -> None:
    cfg = tier_config("ci", **SIZES)
    with pytest.raises(TypeError):
        cfg.sizes["n"] = 5  # type: ignore[index]


def test_unknown_size_is_an_attribute_error_naming_known_sizes() -> None:
    with pytest.raises(AttributeError, match=r"\['k', 'n'\]"):
        tier_config("ci", **SIZES).m


@pytest.mark.parametrize("bad", ["CI", "fast", ""])
def test_unknown_tier(bad: str) -> None:
    with pytest.raises(ValueError, match="unknown tier"):
        tier_config(bad, **SIZES)


def test_tier_must_be_str() -> None:
    with pytest.raises(TypeError, match="string"):
        validate_tier(1)


def test_tiers_must_agree_on_names() -> None:
    with pytest.raises(ValueError, match=r"differ in \['k'\]"):
        tier_config("ci", ci=dict(n=1), default=dict(n=2, k=3))


def test_all_tiers_known() -> None:
    assert TIERS == ("ci", "default", "gpu")


def test_gpu_tier_needs_a_gpu() -> None:
    if torch.cuda.is_available():
        assert pick_device("gpu").type == "cuda"
        return
    with pytest.raises(RuntimeError, match="needs a CUDA device"):
        pick_device("gpu")


@pytest.mark.parametrize("which, bad", [("ci", None), ("default", None), ("gpu", [("n", 1)]), ("ci", 5)])
def test_each_tiers_sizes_must_be_a_mapping(which: str, bad: object) -> None:
    sizes = {**SIZES, which: bad}
    with pytest.raises(TypeError, match=rf"tier_config: {which} must be a mapping .* got {type(bad).__name__}"):
        tier_config("ci", **sizes)
