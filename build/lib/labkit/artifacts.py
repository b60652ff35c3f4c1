"""Trained lab animals: load weights when they exist, else train them once and keep them.

Chapters share small trained models (a tiny GPT, a tiny DDPM, ...). Each is identified by a name
and the fields that determine it (its config, the tier, the seed). :func:`load_or_train` looks,
in order, in

1. ``labkit/weights/<name>-<key>.pt``: weights committed with the package. Allowed only for
   files of at most :data:`MAX_COMMITTED_BYTES` whose training code is in labkit, and only with a
   test that retrains at the ``ci`` tier and checks the quality reached;
2. labkit's cache, ``cache_dir("weights", name)``;

and otherwise calls ``train()`` and stores its result in the cache. Everything is keyed by
:func:`labkit.cache.cache_key` of the identifying fields, so a changed config never loads stale
weights.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from .cache import cache_dir, cache_key

__all__ = ["COMMITTED_DIR", "MAX_COMMITTED_BYTES", "artifact_key", "load_or_train"]

COMMITTED_DIR = Path(__file__).parent / "weights"
MAX_COMMITTED_BYTES = 2 * 1024 * 1024

State = dict[str, Any]


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not name or not all(c.isalnum() or c in "_-" for c in name):
        raise ValueError(f"artifact name must be letters, digits, '_' or '-', got {name!r}")
    return name


def artifact_key(name: str, fields: Mapping[str, Any]) -> str:
    """File stem for an artifact: ``<name>-<hash of the identifying fields>``."""
    if not isinstance(fields, Mapping):
        raise TypeError(f"fields must be a mapping, got {type(fields).__name__}")
    return f"{_check_name(name)}-{cache_key(**dict(fields))}"


def load_or_train(name: str, fields: Mapping[str, Any], train: Callable[[], State], *,
                  committed_dir: Path | None = None, verbose: bool = True) -> State:
    """Weights of the lab animal ``name`` identified by ``fields``; trained once when absent.

    Args:
        name: the animal, e.g. ``"tiny_gpt"``.
        fields: everything that determines the weights: config (a dict or dataclass ``asdict``),
            ``tier``, ``seed``, training budget.
        train: zero-argument callable that trains and returns a state dict (tensors on CPU).
        committed_dir: where committed weights live (default :data:`COMMITTED_DIR`).
        verbose: print where the weights came from.

    Returns:
        The state dict (a fresh copy loaded from disk, or what ``train`` returned).
    """
    if not callable(train):
        raise TypeError(f"train must be callable, got {type(train).__name__}")
    stem = artifact_key(name, fields)
    committed = (committed_dir or COMMITTED_DIR) / f"{stem}.pt"
    cached = cache_dir("weights", name) / f"{stem}.pt"
    for path, where in ((committed, "committed"), (cached, "cache")):
        if path.exists():
            if verbose:
                print(f"{name}: loaded {where} weights {path.name}")
            return torch.load(path, map_location="cpu", weights_only=True)
    state = train()
    if not isinstance(state, dict):
        raise TypeError(f"train() must return a state dict, got {type(state).__name__}")
    tmp = cached.with_suffix(".pt.tmp")
    torch.save(state, tmp)
    tmp.replace(cached)
    if verbose:
        print(f"{name}: trained and cached as {cached}")
    return state
