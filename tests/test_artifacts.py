"""labkit.artifacts: committed, cached or trained once."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from labkit.artifacts import COMMITTED_DIR, MAX_COMMITTED_BYTES, artifact_key, load_or_train


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LABKIT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_trains_once_then_loads_from_cache(cache: Path, tmp_path: Path) -> None:
    calls = []

    def train() -> dict:
        calls.append(1)
        return {"w": torch.arange(3.0)}

    fields = {"d": 4, "tier": "ci", "seed": 0}
    first = load_or_train("toy", fields, train, committed_dir=tmp_path / "none")
    second = load_or_train("toy", fields, train, committed_dir=tmp_path / "none")
    assert calls == [1] and torch.equal(first["w"], second["w"])
    assert (cache / "weights" / "toy" / f"{artifact_key('toy', fields)}.pt").exists()
    load_or_train("toy", {**fields, "seed": 1}, train, committed_dir=tmp_path / "none")
    assert calls == [1, 1], "other fields, other weights"


def test_committed_weights_win(cache: Path, tmp_path: Path) -> None:
    fields = {"tier": "ci"}
    committed = tmp_path / "committed"
    committed.mkdir()
    torch.save({"w": torch.ones(2)}, committed / f"{artifact_key('toy', fields)}.pt")
    state = load_or_train("toy", fields, lambda: pytest.fail("must not train"), committed_dir=committed)
    assert torch.equal(state["w"], torch.ones(2))


@pytest.mark.parametrize("name", ["", "a b", "../x", 3])
def test_bad_names(name) -> None:
    with pytest.raises(ValueError, match="artifact name"):
        artifact_key(name, {})


def test_bad_train_and_fields(cache: Path) -> None:
    with pytest.raises(TypeError, match="callable"):
        load_or_train("toy", {}, None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="state dict"):
        load_or_train("toy", {"x": 1}, lambda: [1])  # type: ignore[arg-type, return-value]
    with pytest.raises(TypeError, match="mapping"):
        artifact_key("toy", [1])  # type: ignore[arg-type]


def test_committed_weights_respect_the_size_limit() -> None:
    for path in COMMITTED_DIR.glob("*.pt"):
        assert path.stat().st_size <= MAX_COMMITTED_BYTES, f"{path.name} is above 2 MB"
