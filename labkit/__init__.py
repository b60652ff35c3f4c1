"""labkit: the implementations behind the lab book on machine-learning systems.

Every chapter's notebook imports its mechanisms from here; nothing is defined in the notebooks.
The core used by every chapter is re-exported at the top level:

- :mod:`labkit.backend`: reference (PyTorch) / Triton dispatch,
- :mod:`labkit.tiers`: the ``ci`` / ``default`` / ``gpu`` sizes of a notebook,
- :mod:`labkit.runtime`: seeding and timing,
- :mod:`labkit.claims`: asserted, recorded claims,
- :mod:`labkit.plotting`: the book's figure style,
- :mod:`labkit.listing`: ``show(obj)``, library source rendered on the page,
- :mod:`labkit.cache`: where computed artefacts are kept,
- :mod:`labkit.artifacts`: trained lab animals, trained once and reused.

Topic subpackages (``labkit.graphs``, ``labkit.moe``, ...) hold the chapters' mechanisms;
``labkit.dist`` launches real multi-process runs; ``labkit.data`` builds datasets offline.

Glossary (same word, same meaning in every chapter): ``x`` node features, ``edge_index`` (2, M)
edge list, ``adj`` adjacency, ``n_experts``, ``top_k``, ``capacity_factor``, ``world_size``,
``rank``, ``n_parties``, ``bits``, ``group_size``, ``timesteps``.
"""

from .backend import BackendUnavailable, Op, resolve_backend, triton_available, use_backend
from .cache import cache_dir, cache_key
from .claims import ClaimFailed, ClaimLog
from .listing import show
from .runtime import Timing, progress_disabled, seed_everything, time_fn
from .tiers import TIERS, TierConfig, tier_config

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """``labkit.styled`` imports plotly on first use, so the kernels, tests and benchmarks run on
    a GPU host that has torch and Triton but no plotly."""
    if name == "styled":
        from .plotting import styled

        return styled
    raise AttributeError(f"module 'labkit' has no attribute {name!r}")

__all__ = [
    "TIERS",
    "BackendUnavailable",
    "ClaimFailed",
    "ClaimLog",
    "Op",
    "TierConfig",
    "Timing",
    "cache_dir",
    "cache_key",
    "progress_disabled",
    "resolve_backend",
    "seed_everything",
    "show",
    "styled",
    "tier_config",
    "time_fn",
    "triton_available",
    "use_backend",
]
