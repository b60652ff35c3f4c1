"""Tiers: one notebook, three sizes.

Every notebook has a ``tier`` parameter: ``"ci"`` (the test suite: about 30 s on 2 CPU cores),
``"default"`` (what the built book shows: at most 2 minutes on 2 cores) and ``"gpu"`` (larger,
runs the Triton kernels: at most 5 minutes on one H100). :func:`tier_config` validates the
tier, picks that tier's sizes and the device, so a notebook never edits sizes by hand.
Section: chapter 00, "How this book runs".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch

__all__ = ["TIERS", "TierConfig", "pick_device", "tier_config", "validate_tier"]

TIERS: tuple[str, ...] = ("ci", "default", "gpu")


def validate_tier(tier: object) -> str:
    """Return ``tier`` if it is one of :data:`TIERS`, else raise a clear error."""
    if not isinstance(tier, str):
        raise TypeError(f"tier must be a string, one of {TIERS}, got {type(tier).__name__}")
    if tier not in TIERS:
        raise ValueError(f"unknown tier {tier!r}; expected one of {TIERS}")
    return tier


def pick_device(tier: str) -> torch.device:
    """``cuda`` when a GPU is there (required by the ``gpu`` tier), else ``cpu``."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if validate_tier(tier) == "gpu":
        raise RuntimeError(
            "tier='gpu' needs a CUDA device and none is visible; use tier='default' on a CPU "
            "machine (on Colab: Runtime > Change runtime type > GPU)."
        )
    return torch.device("cpu")


@dataclass(frozen=True)
class TierConfig:
    """The sizes of one tier, read as attributes: ``cfg.n_nodes``.

    Attributes:
        tier: the validated tier name.
        device: where the notebook's tensors live.
        sizes: read-only mapping of size names to values.
    """

    tier: str
    device: torch.device
    sizes: Mapping[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        sizes = object.__getattribute__(self, "sizes")
        if name in sizes:
            return sizes[name]
        raise AttributeError(f"tier config has no size {name!r}; known: {sorted(sizes)}")

    def __str__(self) -> str:
        items = ", ".join(f"{k}={v}" for k, v in self.sizes.items())
        return f"tier={self.tier} on {self.device}: {items}"


def tier_config(
    tier: str,
    *,
    ci: Mapping[str, Any],
    default: Mapping[str, Any],
    gpu: Mapping[str, Any] | None = None,
    device: torch.device | str | None = None,
) -> TierConfig:
    """Pick the sizes for ``tier``; every tier must define the same size names.

    Args:
        tier: ``"ci"``, ``"default"`` or ``"gpu"``.
        ci, default, gpu: size name -> value for each tier; ``gpu`` falls back to ``default``.
        device: override the device choice (else :func:`pick_device`).

    Raises:
        TypeError: ``tier`` is not a string, or one tier's sizes are not a mapping (``gpu`` may be None).
        ValueError: unknown tier, or the tiers disagree on which sizes exist.
    """
    tier = validate_tier(tier)
    for name, sizes in (("ci", ci), ("default", default), ("gpu", gpu)):
        if not isinstance(sizes, Mapping) and not (name == "gpu" and sizes is None):
            fallback = " or None (then the default tier's)" if name == "gpu" else ""
            raise TypeError(f"tier_config: {name} must be a mapping of size names to values (the {name!r} tier's "
                            f"sizes){fallback}, got {type(sizes).__name__}")
    table = {"ci": dict(ci), "default": dict(default), "gpu": dict(default if gpu is None else gpu)}
    names = set(table["default"])
    for other in ("ci", "gpu"):
        if set(table[other]) != names:
            diff = sorted(set(table[other]) ^ names)
            raise ValueError(f"tier_config: tier {other!r} and 'default' must define the same sizes; differ in {diff}")
    dev = torch.device(device) if device is not None else pick_device(tier)
    return TierConfig(tier=tier, device=dev, sizes=MappingProxyType(table[tier]))
