"""Additive and XOR secret sharing, in plain tensors, and the tests that shares hide the secret.

Paper: PUMA: Secure Inference of LLaMA-7B in Five Minutes (Dong et al., 2023). PUMA keeps the
model weights and the prompt as *shares*: pieces that individually look like noise and only
add up to the secret.

Intuition: to share ``x`` in Z_2^64 between ``P`` parties, draw ``P - 1`` shares uniformly and
set the last one to ``x - (sum of the others)``. Any ``P - 1`` shares are independent uniform
words whatever ``x`` is (the map from one share to the next is a bijection of the ring), so a
party holding fewer than all shares learns nothing; all ``P`` add up to ``x`` mod 2^64.
Boolean (XOR) sharing is the same idea in the group of 64-bit words under XOR; comparisons
use it (see :mod:`labkit.mpc.compare`).

This module works on plain tensors held in one process: it is what the notebooks use to
show the idea and to test it statistically. The engine (:mod:`labkit.mpc.engine`) uses the
same two-party split, with the owner's private generator, when a party inputs a secret.

Two tests: :func:`chi_square_uniform` (one share looks like uniform words) and
:func:`ks_two_sample`, which asks the question the security definition asks: are the shares
of one secret distributed like the shares of another? A test with ``N`` samples only sees
differences above its resolution (about ``sqrt(2 / N)`` in distribution distance): it catches
gross mistakes (a short mask), while the guarantee itself is the bijection argument above.

What the miniature leaves out: replicated sharing (PUMA's ABY3 protocol gives each of 3
parties two of the 3 shares) and Shamir's threshold sharing; pseudo-random share generation
from a short seed (which would let the owner send nothing for one of the shares).

Shapes: ``x`` any shape S; a list of ``P`` shares, each of shape S.

Section: chapter 14, "Sharing secrets".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..validation import check_int
from .prg import PRG
from .ring import check_ring, random_ring

__all__ = [
    "TwoSampleTest",
    "UniformityTest",
    "chi_square_uniform",
    "ks_two_sample",
    "reconstruct",
    "reconstruct_xor",
    "share",
    "share_xor",
]


def share(x: torch.Tensor, *, n_parties: int = 2, generator: PRG | torch.Generator) -> list[torch.Tensor]:
    """Split ring elements ``x`` into ``n_parties`` additive shares mod 2^64.

    Shares ``1 .. P-1`` are uniform draws; share 0 is ``x - sum(others)`` (wrapping).

    Args:
        x: int64 tensor (already fixed-point encoded, see :func:`labkit.mpc.ring.encode`).
        n_parties: number of shares P, at least 2.
        generator: the owner's private :class:`~labkit.mpc.prg.PRG` (or a seeded
            ``torch.Generator`` for a reproducible demonstration).

    Returns:
        ``P`` int64 tensors of ``x``'s shape that add up to ``x`` mod 2^64.
    """
    check_ring("x", x)
    n = check_int("n_parties", n_parties, 2)
    # show: start share
    # shares 1 .. P-1: uniform words from the owner's private generator
    others = [random_ring(x.shape, generator=generator) for _ in range(n - 1)]
    first = x.clone()
    for s in others:
        first = first - s  # x_0 = x - sum of the others, wrapping mod 2^64
    return [first, *others]
    # show: end share


def reconstruct(shares: Sequence[torch.Tensor]) -> torch.Tensor:
    """Add additive shares mod 2^64: the secret back.

    Raises:
        ValueError: fewer than 2 shares, or shares of different shapes.
    """
    _check_shares(shares)
    # show: start reconstruct
    out = shares[0].clone()
    for s in shares[1:]:
        out = out + s  # x = x_0 + x_1 + ... mod 2^64
    return out
    # show: end reconstruct


def share_xor(x: torch.Tensor, *, n_parties: int = 2, generator: PRG | torch.Generator) -> list[torch.Tensor]:
    """Split 64-bit words ``x`` into ``n_parties`` XOR shares (each bit shared in Z_2).

    Returns:
        ``P`` int64 tensors whose XOR is ``x``.
    """
    check_ring("x", x)
    n = check_int("n_parties", n_parties, 2)
    others = [random_ring(x.shape, generator=generator) for _ in range(n - 1)]
    first = x.clone()
    for s in others:
        first = first ^ s
    return [first, *others]


def reconstruct_xor(shares: Sequence[torch.Tensor]) -> torch.Tensor:
    """XOR the shares together: the words back."""
    _check_shares(shares)
    out = shares[0].clone()
    for s in shares[1:]:
        out = out ^ s
    return out


def _check_shares(shares: Sequence[torch.Tensor]) -> None:
    if isinstance(shares, torch.Tensor) or not isinstance(shares, Sequence):
        raise TypeError("shares must be a list or tuple of int64 tensors")
    if len(shares) < 2:
        raise ValueError(f"need at least 2 shares to reconstruct, got {len(shares)}")
    for i, s in enumerate(shares):
        check_ring(f"shares[{i}]", s)
        if s.shape != shares[0].shape:
            raise ValueError(f"shares must have one shape: shares[0] is {tuple(shares[0].shape)}, "
                             f"shares[{i}] is {tuple(s.shape)}")


@dataclass(frozen=True)
class UniformityTest:
    """Pearson's chi-square test of "these integers are uniform over ``0 .. bins-1``".

    Attributes:
        statistic: the chi-square statistic, sum over bins of (observed - expected)^2 / expected.
        dof: degrees of freedom, ``bins - 1``.
        pvalue: probability of a statistic at least this large if the data were uniform.
        n: number of samples.
    """

    statistic: float
    dof: int
    pvalue: float
    n: int


def chi_square_uniform(values: torch.Tensor, *, bins: int) -> UniformityTest:
    """Chi-square goodness-of-fit test of ``values`` against the uniform law on ``0..bins-1``.

    The p-value is the upper tail of the chi-square law with ``bins - 1`` degrees of freedom,
    ``Q((bins - 1) / 2, statistic / 2)`` (regularised upper incomplete gamma). Use at least 5
    expected samples per bin.

    Args:
        values: integer tensor with entries in ``[0, bins)`` (e.g. :func:`~labkit.mpc.ring.top_byte`).
        bins: number of equally likely outcomes, at least 2.

    Returns:
        A :class:`UniformityTest`.

    Raises:
        ValueError: values out of range, or fewer than 5 expected samples per bin.
    """
    k = check_int("bins", bins, 2)
    if not isinstance(values, torch.Tensor) or values.dtype.is_floating_point or values.dtype == torch.bool:
        raise TypeError("values must be an integer tensor")
    v = values.reshape(-1).to(torch.int64)
    n = v.numel()
    if n < 5 * k:
        raise ValueError(f"chi_square_uniform needs >= 5 samples per bin: {n} samples for {k} bins")
    if int(v.min()) < 0 or int(v.max()) >= k:
        raise ValueError(f"values must lie in [0, {k}), got range [{int(v.min())}, {int(v.max())}]")
    counts = torch.bincount(v, minlength=k).to(torch.float64)
    expected = n / k
    stat = float(((counts - expected) ** 2 / expected).sum())
    dof = k - 1
    p = float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64),
                                      torch.tensor(stat / 2, dtype=torch.float64)))
    return UniformityTest(statistic=stat, dof=dof, pvalue=p, n=n)


@dataclass(frozen=True)
class TwoSampleTest:
    """Two-sample Kolmogorov-Smirnov test of "both samples come from one distribution".

    Attributes:
        statistic: ``D``, the largest gap between the two empirical distribution functions.
        pvalue: probability of a gap at least this large if both samples had one law
            (Kolmogorov's asymptotic distribution with Stephens' small-sample correction).
        n, m: the two sample sizes.
    """

    statistic: float
    pvalue: float
    n: int
    m: int


def _kolmogorov_sf(lam: float) -> float:
    """``P(K > lam)`` for Kolmogorov's distribution: ``2 sum_k (-1)^(k-1) exp(-2 k^2 lam^2)``."""
    if lam < 0.2:  # the series converges slowly there, and the tail is 1 to 9 digits
        return 1.0
    total = sum((-1) ** (k - 1) * math.exp(-2.0 * k * k * lam * lam) for k in range(1, 101))
    return min(1.0, max(0.0, 2.0 * total))


def ks_two_sample(a: torch.Tensor, b: torch.Tensor) -> TwoSampleTest:
    """Two-sample Kolmogorov-Smirnov test on integer samples (e.g. ring elements, signed order).

    ``D = max_v |F_a(v) - F_b(v)|`` over every observed value; the p-value is Kolmogorov's
    tail at ``(sqrt(n_e) + 0.12 + 0.11 / sqrt(n_e)) D`` with ``n_e = n m / (n + m)``.

    Args:
        a, b: integer tensors (any shapes; flattened), at least 20 values each.

    Returns:
        A :class:`TwoSampleTest`.

    Raises:
        TypeError: a sample is not an integer tensor.
        ValueError: a sample holds fewer than 20 values.
    """
    samples = []
    for name, t in (("a", a), ("b", b)):
        if not isinstance(t, torch.Tensor) or t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
            raise TypeError(f"{name} must be an integer tensor, got {getattr(t, 'dtype', type(t).__name__)}")
        if t.numel() < 20:
            raise ValueError(f"ks_two_sample needs at least 20 values in {name}, got {t.numel()}")
        samples.append(torch.sort(t.reshape(-1).to(torch.int64)).values)
    sa, sb = samples
    n, m = sa.numel(), sb.numel()
    points = torch.cat([sa, sb])
    fa = torch.searchsorted(sa, points, right=True).to(torch.float64) / n  # empirical CDFs at every value
    fb = torch.searchsorted(sb, points, right=True).to(torch.float64) / m
    d = float((fa - fb).abs().max())
    ne = n * m / (n + m)
    lam = (math.sqrt(ne) + 0.12 + 0.11 / math.sqrt(ne)) * d
    return TwoSampleTest(statistic=d, pvalue=_kolmogorov_sf(lam), n=n, m=m)
