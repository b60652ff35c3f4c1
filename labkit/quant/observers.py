"""Calibration observers: the range ``[lo, hi]`` a quantizer should cover, from sample data.

Weights are known ahead of time, so their ranges come from the weights themselves. Activations
are not: post-training quantization runs a few *calibration* batches through the model and lets
an observer at each quantized input watch the values go by. Three classic choices:

- :class:`MinMaxObserver` covers everything seen. No value is ever clipped, but a single outlier
  stretches the scale for all the others.
- :class:`PercentileObserver` covers the central ``pct`` percent of the values seen and clips
  the rest: less rounding error for the many, large clipping error for the few.
- :class:`MSEObserver` searches the clipping range that minimises the mean squared quantization
  error on the values seen: the trade-off made explicitly.

The percentile and MSE observers keep a seeded, bounded random sample of the values (a
reservoir) instead of everything, so calibration memory does not grow with the data.

Every observer refuses a batch holding NaN or inf (one such value would make the range, and so
every scale, non-finite) and records nothing from an empty batch.

What the miniature leaves out: histogram-based KL calibration (TensorRT's entropy calibrator) and
per-channel activation ranges.

Section: chapter 10, "Quantization from first principles".
"""

from __future__ import annotations

import torch

from ..validation import check_finite_tensor, check_int
from .quantizers import QSpec, fake_quantize

__all__ = ["OBSERVERS", "MSEObserver", "MinMaxObserver", "Observer", "PercentileObserver", "make_observer"]


class Observer:
    """Watches tensors with :meth:`update`; :meth:`range` returns the per-tensor ``(lo, hi)``."""

    def __init__(self, spec: QSpec) -> None:
        if spec.granularity != "tensor":
            raise ValueError(f"activation observers are per tensor, got granularity={spec.granularity!r}")
        self.spec = spec
        self.count = 0

    def update(self, x: torch.Tensor) -> None:
        """Record one batch of values; an empty batch records nothing.

        Raises:
            TypeError: ``x`` is not a float tensor.
            ValueError: ``x`` holds NaN or inf (the message counts them); nothing is recorded.
        """
        if not x.is_floating_point():
            raise TypeError(f"observers watch float tensors, got {x.dtype}")
        check_finite_tensor("x", x, op=f"{type(self).__name__}.update")
        if x.numel() == 0:
            return
        self.count += x.numel()
        self._update(x.detach().float().reshape(-1))

    def _update(self, values: torch.Tensor) -> None:
        raise NotImplementedError

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(lo, hi)`` as tensors of shape (1,)."""
        if self.count == 0:
            raise RuntimeError(f"{type(self).__name__} has seen no data: run calibration batches first")
        lo, hi = self._range()
        return torch.tensor([float(lo)]), torch.tensor([float(hi)])

    def _range(self) -> tuple[float, float]:
        raise NotImplementedError


class MinMaxObserver(Observer):
    """The smallest and largest value ever seen."""

    def __init__(self, spec: QSpec) -> None:
        super().__init__(spec)
        self.lo, self.hi = float("inf"), float("-inf")

    def _update(self, values: torch.Tensor) -> None:
        self.lo = min(self.lo, float(values.min()))
        self.hi = max(self.hi, float(values.max()))

    def _range(self) -> tuple[float, float]:
        return self.lo, self.hi


class _SampleObserver(Observer):
    """Keeps a uniform random sample of at most ``max_samples`` of the values seen."""

    def __init__(self, spec: QSpec, *, max_samples: int = 200_000, seed: int = 0) -> None:
        super().__init__(spec)
        self.max_samples = check_int("max_samples", max_samples, 16)
        self.gen = torch.Generator().manual_seed(seed)
        self.sample = torch.empty(0)
        self.lo, self.hi = float("inf"), float("-inf")

    def _update(self, values: torch.Tensor) -> None:
        self.lo = min(self.lo, float(values.min()))
        self.hi = max(self.hi, float(values.max()))
        pool = torch.cat([self.sample, values.cpu()])
        if pool.numel() > self.max_samples:
            # keep each value with the same probability max_samples / count (a reservoir in bulk)
            keep = torch.randperm(pool.numel(), generator=self.gen)[: self.max_samples]
            pool = pool[keep]
        self.sample = pool


class PercentileObserver(_SampleObserver):
    """The ``(100 - pct)/2`` and ``(100 + pct)/2`` percentiles: the central ``pct`` percent."""

    def __init__(self, spec: QSpec, *, pct: float = 99.9, max_samples: int = 200_000, seed: int = 0) -> None:
        super().__init__(spec, max_samples=max_samples, seed=seed)
        if not 50.0 < pct <= 100.0:
            raise ValueError(f"pct must be in (50, 100], got {pct}")
        self.pct = pct

    def _range(self) -> tuple[float, float]:
        tail = (100.0 - self.pct) / 200.0
        qs = torch.quantile(self.sample, torch.tensor([tail, 1.0 - tail]))
        return float(qs[0]), float(qs[1])


class MSEObserver(_SampleObserver):
    """The clipping range ``alpha [lo, hi]`` whose quantization MSE on the sample is least.

    ``alpha`` runs over ``grid`` evenly spaced ratios in ``[min_ratio, 1]`` of the min-max range.
    """

    def __init__(self, spec: QSpec, *, grid: int = 50, min_ratio: float = 0.2, max_samples: int = 200_000,
                 seed: int = 0) -> None:
        super().__init__(spec, max_samples=max_samples, seed=seed)
        self.grid = check_int("grid", grid, 2)
        if not 0.0 < min_ratio < 1.0:
            raise ValueError(f"min_ratio must be in (0, 1), got {min_ratio}")
        self.min_ratio = min_ratio

    def _range(self) -> tuple[float, float]:
        best, best_err = (self.lo, self.hi), float("inf")
        for alpha in torch.linspace(self.min_ratio, 1.0, self.grid).tolist():
            lo, hi = torch.tensor([alpha * self.lo]), torch.tensor([alpha * self.hi])
            err = float((fake_quantize(self.sample, self.spec, lo=lo, hi=hi) - self.sample).pow(2).mean())
            if err < best_err:
                best, best_err = (alpha * self.lo, alpha * self.hi), err
        return best


OBSERVERS = {"minmax": MinMaxObserver, "percentile": PercentileObserver, "mse": MSEObserver}


def make_observer(name: str, spec: QSpec, **kwargs) -> Observer:
    """An observer by name: ``"minmax"``, ``"percentile"`` or ``"mse"`` (kwargs go to it)."""
    if name not in OBSERVERS:
        raise ValueError(f"unknown observer {name!r}; expected one of {tuple(OBSERVERS)}")
    return OBSERVERS[name](spec, **kwargs)
