"""labkit.cache: folders under LABKIT_CACHE_DIR and stable keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from labkit.cache import cache_dir, cache_key


def test_cache_dir_under_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABKIT_CACHE_DIR", str(tmp_path))
    p = cache_dir("weights", "tiny")
    assert p == tmp_path / "weights" / "tiny" and p.is_dir()
    assert not cache_dir("nope", create=False).exists()


@pytest.mark.parametrize("bad", ["", "..", "/abs", "a/../../b"])
def test_cache_dir_rejects_escapes(bad: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABKIT_CACHE_DIR", str(tmp_path))
    with pytest.raises(ValueError, match="relative folder"):
        cache_dir(bad)


def test_cache_key_is_order_free_and_distinguishes_values() -> None:
    assert cache_key(tier="ci", seed=0) == cache_key(seed=0, tier="ci")
    assert cache_key(tier="ci", seed=0) != cache_key(tier="ci", seed=1)
    assert len(cache_key(a=1)) == 16
