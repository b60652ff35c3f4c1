"""The alpha-beta cost model of communication, and the standard collective costs under it.

Sending a message of S bytes between two ranks costs ``alpha + S * beta``: a latency alpha
(seconds per message) plus a per-byte time beta (the inverse of the link bandwidth). With n ranks
and a message of S bytes per rank, the classic algorithms cost (Thakur, Rabenseifner & Gropp,
"Optimization of Collective Communication Operations in MPICH", 2005):

- ring reduce-scatter or all-gather: ``(n - 1) * alpha + (n - 1) / n * S * beta``,
- ring all-reduce (reduce-scatter then all-gather): ``2 (n - 1) alpha + 2 (n - 1) / n * S * beta``,
- binary-tree all-reduce (reduce then broadcast): ``2 ceil(log2 n) (alpha + S beta)``,
- pairwise all-to-all: ``(n - 1) * alpha + (n - 1) / n * S * beta``.

*Algorithm bandwidth* is ``S / t``; *bus bandwidth* rescales it by the bytes each rank must move
so that it compares with the link's bandwidth whatever n is: ``busbw = algbw * 2 (n - 1) / n``
for all-reduce, ``algbw * (n - 1) / n`` for reduce-scatter, all-gather and all-to-all, and
``algbw`` itself for broadcast and reduce (the convention of NVIDIA's nccl-tests;
:func:`bus_factor_table` lists the factors and what S is for each).

Shapes: n ranks (``world_size``), S bytes per rank.
Section: chapter 11, "Collectives from send/recv".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ..validation import check_real

__all__ = ["AlphaBeta", "BUS_FACTORS", "BusFactor", "bus_bandwidth", "bus_factor_table",
           "collective_time", "fit_alpha_beta"]

#: busbw / algbw per collective, for n ranks.
BUS_FACTORS = {
    "all_reduce": lambda n: 2 * (n - 1) / n,
    "reduce_scatter": lambda n: (n - 1) / n,
    "all_gather": lambda n: (n - 1) / n,
    "all_to_all": lambda n: (n - 1) / n,
    "broadcast": lambda n: 1.0,
    "reduce": lambda n: 1.0,
}

#: (formula of busbw / algbw, what S is) per collective, as nccl-tests counts it.
_BUS_MEANING = {
    "all_reduce": ("2(n-1)/n", "each rank's tensor, input and output alike"),
    "reduce_scatter": ("(n-1)/n", "each rank's full input; it keeps S/n of the sum"),
    "all_gather": ("(n-1)/n", "the gathered output; each rank brings S/n"),
    "all_to_all": ("(n-1)/n", "each rank's input, n chunks of S/n, one per rank"),
    "broadcast": ("1", "the root's tensor, received by every rank"),
    "reduce": ("1", "each rank's tensor; the root receives the sum"),
}


@dataclass(frozen=True)
class BusFactor:
    """One row of the bus-bandwidth table: ``busbw = algbw * factor``.

    The factor is also the least number of bytes, in units of S, that the busiest rank (or
    link) must move for the collective, so a bus bandwidth equal to the link's bandwidth means
    the algorithm is bandwidth-optimal.
    """

    collective: str
    formula: str
    factor: float
    bytes_per_rank: float
    meaning_of_s: str


def bus_factor_table(world_size: int, *, nbytes: float = 1.0) -> list[BusFactor]:
    """The nccl-tests bus-bandwidth factor of each collective for ``world_size`` ranks.

    Args:
        world_size: n >= 2.
        nbytes: S in bytes (>= 0); ``bytes_per_rank`` is ``factor * nbytes``.

    Returns:
        One :class:`BusFactor` per collective of :data:`BUS_FACTORS`, in that order.
    """
    n = _check_world(world_size)
    check_real("nbytes", nbytes, 0.0)
    rows = []
    for name, factor in BUS_FACTORS.items():
        formula, meaning = _BUS_MEANING[name]
        value = float(factor(n))
        rows.append(BusFactor(name, formula, value, value * nbytes, meaning))
    return rows


@dataclass(frozen=True)
class AlphaBeta:
    """A link: ``alpha`` seconds per message, ``beta`` seconds per byte (1 / bandwidth).

    Both are finite real numbers >= 0 (Python or NumPy ints and floats, not bool).
    """

    alpha: float
    beta: float

    def __post_init__(self) -> None:
        check_real("alpha", self.alpha)
        check_real("beta", self.beta)
        if self.alpha < 0 or self.beta < 0:
            raise ValueError(f"alpha and beta must be >= 0, got {self.alpha}, {self.beta}")

    def message(self, nbytes: float) -> float:
        """Time of one point-to-point message of ``nbytes``."""
        check_real("nbytes", nbytes, 0.0)
        return self.alpha + nbytes * self.beta

    @property
    def bandwidth(self) -> float:
        """Bytes per second (infinite when beta is 0)."""
        return math.inf if self.beta == 0 else 1.0 / self.beta


def _check_world(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"world_size must be an int >= 2, got {n!r}")
    return n


def collective_time(kind: str, nbytes: float, world_size: int, link: AlphaBeta) -> float:
    """Predicted seconds of a collective on ``world_size`` ranks with ``nbytes`` per rank.

    Args:
        kind: ``ring_all_reduce``, ``tree_all_reduce``, ``reduce_scatter``, ``all_gather`` or ``all_to_all``.
        nbytes: S, bytes of each rank's tensor.
        world_size: n >= 2.
        link: the alpha-beta parameters of every link.

    Raises:
        TypeError: ``nbytes`` is not a real number or ``link`` not an :class:`AlphaBeta`.
        ValueError: ``nbytes`` negative, NaN or infinite; ``world_size`` below 2; unknown ``kind``.
    """
    n = _check_world(world_size)
    check_real("nbytes", nbytes, 0.0)
    if not isinstance(link, AlphaBeta):
        raise TypeError(f"link must be an AlphaBeta, got {type(link).__name__}")
    a, b = link.alpha, link.beta
    if kind == "ring_all_reduce":
        return 2 * (n - 1) * a + 2 * (n - 1) / n * nbytes * b
    if kind == "tree_all_reduce":
        return 2 * math.ceil(math.log2(n)) * (a + nbytes * b)
    if kind in ("reduce_scatter", "all_gather", "all_to_all"):
        return (n - 1) * a + (n - 1) / n * nbytes * b
    raise ValueError(f"unknown collective {kind!r}")


def bus_bandwidth(collective: str, nbytes: float, seconds: float, world_size: int) -> float:
    """Bus bandwidth in bytes/s of a measured collective (nccl-tests' convention).

    ``nbytes`` (finite, >= 0) and ``seconds`` (finite, > 0) are real numbers, not bool.
    """
    n = _check_world(world_size)
    if collective not in BUS_FACTORS:
        raise ValueError(f"collective must be one of {sorted(BUS_FACTORS)}, got {collective!r}")
    check_real("nbytes", nbytes, 0.0)
    check_real("seconds", seconds, 0.0, strict=True)
    return nbytes / seconds * BUS_FACTORS[collective](n)


def fit_alpha_beta(nbytes: Sequence[float], seconds: Sequence[float], *, kind: str = "ring_all_reduce",
                   world_size: int = 2) -> AlphaBeta:
    """Least-squares alpha and beta from measured times of one collective at several sizes.

    The model is linear in (alpha, beta): ``t = c_a alpha + c_b S beta`` with the coefficients
    of :func:`collective_time`; negative estimates are clipped to 0. Every size and time must be
    a finite real number >= 0: one NaN would turn both estimates into NaN.
    """
    if len(nbytes) != len(seconds) or len(nbytes) < 2:
        raise ValueError("need at least two (nbytes, seconds) pairs of equal length")
    for i, (size, t) in enumerate(zip(nbytes, seconds)):
        check_real(f"nbytes[{i}]", size, 0.0)
        check_real(f"seconds[{i}]", t, 0.0)
    unit = collective_time(kind, 0.0, world_size, AlphaBeta(1.0, 0.0))   # c_a
    per_byte = collective_time(kind, 1.0, world_size, AlphaBeta(0.0, 1.0))  # c_b
    xs = [(unit, per_byte * s) for s in nbytes]
    # normal equations of the 2-parameter least squares, weighted by 1/t so small sizes count too
    w = [1.0 / max(t, 1e-12) ** 2 for t in seconds]
    saa = sum(wi * x[0] * x[0] for wi, x in zip(w, xs))
    sab = sum(wi * x[0] * x[1] for wi, x in zip(w, xs))
    sbb = sum(wi * x[1] * x[1] for wi, x in zip(w, xs))
    sat = sum(wi * x[0] * t for wi, x, t in zip(w, xs, seconds))
    sbt = sum(wi * x[1] * t for wi, x, t in zip(w, xs, seconds))
    det = saa * sbb - sab * sab
    if det <= 0:
        raise ValueError("sizes must differ to separate alpha from beta")
    alpha = (sat * sbb - sbt * sab) / det
    beta = (saa * sbt - sab * sat) / det
    return AlphaBeta(max(alpha, 0.0), max(beta, 0.0))
