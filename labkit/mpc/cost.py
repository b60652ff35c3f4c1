"""Closed-form communication cost of every protocol of the engine: rounds and bytes.

Paper: PUMA: Secure Inference of LLaMA-7B in Five Minutes (Dong et al., 2023), whose cost
tables count, per operator, the rounds (sequential message exchanges: latency) and the
bytes (bandwidth) that secure inference spends. Here the same bookkeeping is a formula per
protocol, and the engine's message log is checked against it *exactly*.

Counting rules (the engine follows them message by message):

- a *round* is one step in which the computing parties P0, P1 send at the same time and
  then wait for what they receive; a one-way send (an input share, a reveal to one party)
  is a round too;
- online bytes are what P0 and P1 send each other (8 bytes per ring element, int64);
- dealer bytes are what the dealer P2 sends to P0 and to P1; they do not depend on the
  inputs and could be sent before the inputs exist (offline phase), so they are kept apart;
- local steps (addition, multiplication by a public integer, truncation) cost nothing.

Costs for ``n`` elements (words per party; times 8 for bytes):

==============  ======  =====================  ==========================
protocol        rounds  online, each party     dealer -> each party
==============  ======  =====================  ==========================
input           1       n + 9 (owner only)     0
reveal          1       n (to one: sender)     0
mul x*y         1       n_x + n_y              n_x + n_y + n_out
square          1       n                      2n
matmul X@Y      1       |X| + |Y|              |X| + |Y| + |XY|
msb / compare   8       20 n                   33 n
relu            9       22 n                   36 n
max (per level) 9       22 p  (p pairs)        36 p
==============  ======  =====================  ==========================

input: the owner's message starts with a 9-word header (the rank of the shape, then up to 8
sizes, zero-padded) that the receiver checks against the shape it declared.

msb: one AND round for the generate bits ``G = a AND b``, log2(64) = 6 prefix levels of the
Kogge-Stone adder (levels 1-5 open the propagate word once and two words against it: 3 n;
the last level needs only the generate update: 2 n), and one round to convert the bit to an
arithmetic share (n). The dealer sends 3 words per AND of n words, 5 per level with two
ANDs sharing a left operand, and 2 per converted bit (its XOR and its additive share).

What the miniature leaves out: compressing dealer traffic with seeds (a PRG seed that the
dealer draws privately and sends to one party once, a logged message, replaces that party's
triple shares, halving the dealer's traffic), sending single bits as bits
(we send them in 64-bit words), and latency/bandwidth numbers for a real network.

Shapes: ``shape_x``, ``shape_y`` are tensor shapes; ``n`` counts elements.

Section: chapter 14, "Multiplying in secret".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..validation import check_int
from .ring import broadcast_shape

__all__ = [
    "ADDER_LEVELS",
    "BYTES_PER_ELEMENT",
    "MAX_INPUT_DIMS",
    "MSB_DEALER_WORDS",
    "MSB_ONLINE_WORDS",
    "MSB_ROUNDS",
    "SHAPE_HEADER_WORDS",
    "Cost",
    "argmax_cost",
    "input_cost",
    "matmul_cost",
    "max_cost",
    "msb_cost",
    "mul_cost",
    "relu_cost",
    "reveal_cost",
    "square_cost",
    "truncate_cost",
    "where_cost",
]

BYTES_PER_ELEMENT = 8  # one int64 ring element
MAX_INPUT_DIMS = 8  # an input's shape travels in a fixed header: its rank, then up to 8 sizes
SHAPE_HEADER_WORDS = 1 + MAX_INPUT_DIMS
ADDER_LEVELS = 6  # log2(64) prefix levels of the Kogge-Stone adder
MSB_ROUNDS = 1 + ADDER_LEVELS + 1  # generate bits, prefix levels, bit-to-arithmetic conversion
MSB_ONLINE_WORDS = 2 + 3 * (ADDER_LEVELS - 1) + 2 + 1  # = 20 words per element per party
MSB_DEALER_WORDS = 3 + 5 * (ADDER_LEVELS - 1) + 3 + 2  # = 33 words per element per party


@dataclass(frozen=True)
class Cost:
    """Communication of a protocol run: what the log measures and the formulas predict.

    Attributes:
        rounds: online rounds (sequential exchanges between P0 and P1).
        online_bytes: bytes sent by P0 and by P1 (to each other).
        dealer_bytes: bytes the dealer sent to P0 and to P1 (offline, input-independent).

    ``a + b`` is the cost of running ``a`` then ``b`` (rounds and bytes add).
    """

    rounds: int = 0
    online_bytes: tuple[int, int] = (0, 0)
    dealer_bytes: tuple[int, int] = (0, 0)

    def __add__(self, other: Cost) -> Cost:
        if not isinstance(other, Cost):
            return NotImplemented
        return Cost(self.rounds + other.rounds,
                    (self.online_bytes[0] + other.online_bytes[0], self.online_bytes[1] + other.online_bytes[1]),
                    (self.dealer_bytes[0] + other.dealer_bytes[0], self.dealer_bytes[1] + other.dealer_bytes[1]))

    def __mul__(self, times: int) -> Cost:
        k = check_int("times", times, 0)
        return Cost(self.rounds * k, (self.online_bytes[0] * k, self.online_bytes[1] * k),
                    (self.dealer_bytes[0] * k, self.dealer_bytes[1] * k))

    __rmul__ = __mul__

    @property
    def total_online_bytes(self) -> int:
        """Bytes P0 and P1 sent together."""
        return sum(self.online_bytes)

    @property
    def total_dealer_bytes(self) -> int:
        """Bytes the dealer sent to both parties together."""
        return sum(self.dealer_bytes)


def _words(online: int, dealer: int, rounds: int) -> Cost:
    b = BYTES_PER_ELEMENT
    return Cost(rounds, (online * b, online * b), (dealer * b, dealer * b))


def _n(name: str, n: int) -> int:
    return check_int(name, n, 0)


def _numel(name: str, shape: tuple[int, ...] | torch.Size) -> int:
    if not isinstance(shape, (tuple, list, torch.Size)):
        raise TypeError(f"{name} must be a shape (tuple of ints), got {type(shape).__name__}")
    return math.prod(check_int(f"{name}[{i}]", d, 0) for i, d in enumerate(shape))


def input_cost(n: int, *, owner: int = 0) -> Cost:
    """Secret-sharing an input of ``n`` elements: the owner sends the other party one share.

    Returns:
        1 round; ``8 (n + 9)`` bytes sent by the owner (the share and its shape header).
    """
    k = (_n("n", n) + SHAPE_HEADER_WORDS) * BYTES_PER_ELEMENT
    o = check_int("owner", owner, 0, 1)
    return Cost(1, (k, 0) if o == 0 else (0, k))


def reveal_cost(n: int, *, to: int | None = None) -> Cost:
    """Opening ``n`` elements: to both (each sends its share) or to one party (the other sends).

    Returns:
        1 round; ``8 n`` bytes per sender.
    """
    k = _n("n", n) * BYTES_PER_ELEMENT
    if to is None:
        return Cost(1, (k, k))
    t = check_int("to", to, 0, 1)
    return Cost(1, (0, k) if t == 0 else (k, 0))


def mul_cost(n_x: int, n_y: int | None = None, n_out: int | None = None) -> Cost:
    """Beaver elementwise product (with broadcasting): open ``x - a`` and ``y - b`` in one round.

    Args:
        n_x, n_y, n_out: elements of the operands and of the (broadcast) result; ``n_y`` and
            ``n_out`` default to ``n_x``.
    """
    nx = _n("n_x", n_x)
    ny = nx if n_y is None else _n("n_y", n_y)
    nz = max(nx, ny) if n_out is None else _n("n_out", n_out)
    return _words(nx + ny, nx + ny + nz, 1)


def square_cost(n: int) -> Cost:
    """Beaver square with a pair ``(a, a^2)``: only ``x - a`` is opened."""
    k = _n("n", n)
    return _words(k, 2 * k, 1)


def matmul_cost(shape_x: tuple[int, ...], shape_y: tuple[int, ...]) -> Cost:
    """Beaver matrix product ``X @ Y``: open ``X - A`` and ``Y - B`` (one round).

    Shapes: ``shape_x`` (..., M, K) and ``shape_y`` (K, N) or (..., K, N) (broadcast batch).
    """
    nx, ny = _numel("shape_x", shape_x), _numel("shape_y", shape_y)
    if len(shape_x) < 2 or len(shape_y) < 2 or shape_x[-1] != shape_y[-2]:
        raise ValueError(f"matmul_cost: shapes {tuple(shape_x)} and {tuple(shape_y)} do not chain")
    out = broadcast_shape(tuple(shape_x[:-2]), tuple(shape_y[:-2]), what="@") + (shape_x[-2], shape_y[-1])
    return _words(nx + ny, nx + ny + math.prod(out), 1)


def truncate_cost(n: int) -> Cost:
    """SecureML's local truncation: each party shifts its own share, no message."""
    _n("n", n)
    return Cost()


def msb_cost(n: int) -> Cost:
    """Most significant bit (sign) of ``n`` shared values: A2B + Kogge-Stone adder + B2A.

    ``x < y`` and ``x > y`` cost the same (the difference is local).
    """
    k = _n("n", n)
    return _words(MSB_ONLINE_WORDS * k, MSB_DEALER_WORDS * k, MSB_ROUNDS)


def relu_cost(n: int) -> Cost:
    """``relu(x) = x * (1 - msb(x))``: the sign, then one Beaver product (no truncation)."""
    k = _n("n", n)
    return msb_cost(k) + mul_cost(k)


def where_cost(n_cond: int, n_branch: int | None = None, n_out: int | None = None) -> Cost:
    """``where(c, a, b) = b + c * (a - b)`` for a shared bit ``c``: one Beaver product."""
    return mul_cost(n_cond, n_branch, n_out)


def _reduced(fn: str, shape: tuple[int, ...], dim: int) -> tuple[int, int]:
    """(length of the reduced dimension ``dim``, number of elements across the others)."""
    total = _numel("shape", shape)
    if len(shape) == 0:
        raise ValueError(f"{fn}: shape must have at least one dimension")
    d = check_int("dim", dim, -len(shape), len(shape) - 1)
    if shape[d] < 1:
        raise ValueError(f"{fn}: dimension {d} is empty")
    return shape[d], total // shape[d]


def max_cost(shape: tuple[int, ...], dim: int = -1) -> Cost:
    """Maximum along ``dim`` by a tree of comparisons: ceil(log2(size)) levels.

    A level of size ``m`` compares ``p = m // 2`` pairs (``msb`` of the differences, then a
    ``where``), carrying the odd element over; its cost is ``relu_cost(p * rest)`` where
    ``rest`` is the number of elements across the other dimensions.
    """
    size, rest = _reduced("max_cost", shape, dim)
    cost = Cost()
    while size > 1:
        pairs = size // 2
        cost = cost + relu_cost(pairs * rest)
        size = pairs + size % 2
    return cost


def argmax_cost(shape: tuple[int, ...], dim: int = -1) -> Cost:
    """Index of the maximum along ``dim`` (:func:`labkit.mpc.compare.argmax_along`).

    The tree of :func:`max_cost`, whose select multiplies each comparison bit by two
    differences at once (value and index): ``msb_cost(p) + mul_cost(p, 2 p, 2 p)`` per level
    of ``p`` pairs, the same rounds as the maximum.
    """
    size, rest = _reduced("argmax_cost", shape, dim)
    cost = Cost()
    while size > 1:
        p = size // 2 * rest
        cost = cost + msb_cost(p) + mul_cost(p, 2 * p, 2 * p)
        size = size // 2 + size % 2
    return cost
