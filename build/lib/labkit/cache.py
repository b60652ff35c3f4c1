"""Where labkit keeps what it computes once and reuses: corpora, trained weights, records.

The cache lives in ``$LABKIT_CACHE_DIR`` when that is set, else in ``~/.cache/labkit``.
Nothing here downloads anything; callers fill the cache from local sources.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

__all__ = ["cache_dir", "cache_key"]


def cache_dir(*parts: str, create: bool = True) -> Path:
    """Return (and by default create) a folder inside labkit's cache.

    Args:
        *parts: sub-folder names, e.g. ``cache_dir("weights", "tiny_gpt")``.
        create: make the folder when it does not exist.

    Raises:
        ValueError: a part is empty, absolute or climbs out of the cache (``..``).
    """
    root = Path(os.environ.get("LABKIT_CACHE_DIR") or Path.home() / ".cache" / "labkit")
    for part in parts:
        if not isinstance(part, str) or not part or Path(part).is_absolute() or ".." in Path(part).parts:
            raise ValueError(f"cache_dir: each part must be a relative folder name, got {part!r}")
    path = root.joinpath(*parts)
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def cache_key(**fields: Any) -> str:
    """A short stable hash of keyword fields (a config, a tier, a seed) for cache file names.

    >>> cache_key(tier="ci", seed=0) == cache_key(seed=0, tier="ci")
    True
    """
    blob = json.dumps(fields, sort_keys=True, default=repr).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
