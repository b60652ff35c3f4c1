"""PUMA's non-linearities: GeLU, exp, reciprocal, inverse square root, softmax and LayerNorm
from the operations that secret sharing offers (additions, products, comparisons).

Paper: PUMA: Secure Inference of LLaMA-7B in Five Minutes (Dong et al., 2023), Section 4:
GeLU as a piecewise polynomial selected by comparisons, softmax with the maximum subtracted
and exp computed as a limit, division and LayerNorm's ``1/sqrt`` by Newton iterations.

Intuition: under MPC a product costs one round and a few words; a comparison costs an adder
circuit (8 rounds, 20 words per value here). Nothing else is available, so every smooth
function must become polynomials glued by comparisons, and the art is to spend as few
comparisons and as low a degree as the accuracy allows. Each function below is written
ONCE, for any value type: a ``torch.Tensor`` (float64 plaintext, to measure the
approximation error) or a :class:`labkit.mpc.Shared` (the secure run, where fixed point adds
its own error). The two differ only in the few primitives of :class:`PlainOps` /
:class:`SecureOps` (``less``, ``max``, ``stack``, ``scope``), picked by :func:`ops_for`.

Our choices (the paper's numbers are not copied; coefficients are fitted here):

- GeLU: 0 below ``left = -4``, a cubic on ``[-4, -1.5]``, a degree-8 polynomial on
  ``[-1.5, 4]``, ``x`` above 4; each polynomial is fitted by least squares at Chebyshev
  nodes in a variable ``t`` mapped to ``[-1, 1]`` so that no coefficient is tiny (a ``1e-5``
  coefficient of ``x^8`` would lose most of its digits to 16-bit fixed point);
- exp for ``x <= 0``: ``(1 + x / 2^n)^(2^n)`` by ``n = 7`` squarings (about the best ``n``
  for 16 fractional bits), 0 below ``cut = -12`` (``e^-12 = 6e-6``, below half a
  fixed-point step; below ``-2^(n+1)`` the limit diverges);
- ``1/x`` on ``[low, high]``: Newton ``y <- y (2 - x y)`` from the best *linear* guess
  ``y0 = a - b x`` (Chebyshev: ``1 - x y0`` equioscillates), no comparison needed;
- ``1/sqrt(x)`` on ``[low, high]``: a staircase guess from comparisons with ``low 2^j``
  (all in one batched comparison; the guess is within ``2^(1/4)`` of the answer), then
  Newton ``y <- y (3 - x y^2) / 2``;
- softmax: public causal mask applied by a multiplication and an addition, maximum by a
  comparison tree, exp, one reciprocal per row;
- LayerNorm: ``1/sqrt`` of the *sum* of squares (not the mean: more significant bits).

What the miniature leaves out: PUMA's SPU evaluates comparisons and polynomials in parallel
rounds and uses ABY3's 3-party protocols; its reciprocal and ``1/sqrt`` normalise the input
by its bit length first. Plaintext inputs are checked against each function's domain;
shared inputs cannot be, and out-of-domain secrets give wrong results silently.

Shapes: ``x`` any shape S (softmax, LayerNorm: (..., D)); bits from ``less`` are (k, *S).

Section: chapter 14, "Non-linearities the PUMA way".
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from ..validation import check_int

__all__ = ["GELU_CUTS", "PlainOps", "PolyFit", "SecureOps", "exp", "fit_gelu", "gelu", "gelu_exact", "gelu_global_poly",
           "gelu_relu", "layer_norm", "ops_for", "reciprocal", "reciprocal_guess", "rsqrt", "rsqrt_thresholds",
           "softmax"]

GELU_CUTS = (-4.0, -1.5, 4.0)  # left, mid, right: our segments of GeLU


# ----- the primitives that differ between plaintext and secure values ----------------------------
class PlainOps:
    """Primitives on plain ``torch.Tensor`` values (bits are 0./1. of the value's dtype)."""

    def less(self, x: torch.Tensor, cuts: Sequence[float]) -> torch.Tensor:
        """``[x < c]`` for each public ``c``, stacked: (k, *S)."""
        c = torch.tensor(list(cuts), dtype=x.dtype, device=x.device).view(-1, *([1] * x.dim()))
        return (x.unsqueeze(0) < c).to(x.dtype)

    def max(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        return x.amax(dim=dim, keepdim=True)

    def relu(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x)

    def stack(self, values: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.stack(list(values))

    def scope(self, name: str) -> Any:
        return nullcontext()


class SecureOps:
    """The same primitives on :class:`~labkit.mpc.Shared` values of party ``ctx`` (bits are
    integer shares). ``less`` runs ONE batched comparison for all cuts (8 rounds whatever
    their number); ``max`` is the engine's comparison tree; ``scope`` labels the messages."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx

    def less(self, x: Any, cuts: Sequence[float]) -> Any:
        from .compare import msb

        c = torch.tensor(list(cuts), dtype=torch.float64).view(-1, *([1] * x.ndim))
        with self.ctx.scope("lt"):
            return msb(x.unsqueeze(0) - c)  # sign of x - c: 1 where x < c

    def max(self, x: Any, dim: int) -> Any:
        from .compare import max_along

        return max_along(x, dim=dim, keepdim=True)

    def relu(self, x: Any) -> Any:
        return x.relu()

    def stack(self, values: Sequence[Any]) -> Any:
        from .shared import stack

        return stack(list(values))

    def scope(self, name: str) -> Any:
        return self.ctx.scope(name)


def ops_for(x: Any) -> PlainOps | SecureOps:
    """The primitives for ``x``: :class:`PlainOps` for a tensor, :class:`SecureOps` for a Shared."""
    if isinstance(x, torch.Tensor):
        if not x.is_floating_point():
            raise TypeError(f"plaintext approximations need a floating-point tensor, got {x.dtype}")
        return PlainOps()
    from .shared import Shared

    if isinstance(x, Shared):
        return SecureOps(x.ctx)
    raise TypeError(f"expected a torch.Tensor or a labkit.mpc.Shared, got {type(x).__name__}")


def _check_domain(x: Any, name: str, low: float, high: float) -> None:
    """Plaintext inputs must lie in the approximation's domain (secrets cannot be checked)."""
    if isinstance(x, torch.Tensor) and x.numel():
        lo, hi = float(x.min()), float(x.max())
        if not (lo >= low and hi <= high) or math.isnan(lo) or math.isnan(hi):
            raise ValueError(f"{name}: inputs must lie in [{low:g}, {high:g}], got values in [{lo:.4g}, {hi:.4g}]")


def _check_range(name: str, low: float, high: float) -> tuple[float, float]:
    for what, v in (("low", low), ("high", high)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise TypeError(f"{name}: {what} must be a finite number, got {v!r}")
    if not 0 < low < high:
        raise ValueError(f"{name}: need 0 < low < high, got low={low}, high={high}")
    return float(low), float(high)


# ----- polynomials -------------------------------------------------------------------------
@dataclass(frozen=True)
class PolyFit:
    """A polynomial ``sum_k coeffs[k] t^k`` in ``t = (x - center) / half`` on ``[low, high]``.

    Attributes:
        low, high: the segment; ``center``, ``half``: its midpoint and half-width.
        coeffs: coefficients in ``t``, lowest degree first.
        max_error: max |p(x) - f(x)| on the segment, float64, on a 20001-point grid.
    """

    low: float
    high: float
    coeffs: tuple[float, ...]
    max_error: float

    @property
    def center(self) -> float:
        return (self.low + self.high) / 2

    @property
    def half(self) -> float:
        return (self.high - self.low) / 2

    @property
    def degree(self) -> int:
        return len(self.coeffs) - 1


def gelu_exact(x: torch.Tensor) -> torch.Tensor:
    """GeLU ``x Phi(x)`` with the Gaussian CDF (PyTorch's exact ``gelu``), in ``x``'s dtype."""
    return 0.5 * x * (1.0 + torch.special.erf(x / math.sqrt(2.0)))


@functools.lru_cache(maxsize=64)
def fit_gelu(low: float, high: float, degree: int, *, nodes: int = 512) -> PolyFit:
    """Least-squares polynomial fit of GeLU on ``[low, high]`` at ``nodes`` Chebyshev nodes, in
    the variable ``t`` that maps the segment to [-1, 1] (cached: fitted once per segment).

    Chebyshev nodes crowd at the ends, which keeps the least-squares error close to the
    best max-error (minimax) polynomial without an exchange algorithm.

    Returns:
        A :class:`PolyFit`; ``fit_gelu(-1.5, 4.0, 8).max_error`` is 9.1e-4.
    """
    d = check_int("degree", degree, 0, 16)
    n = check_int("nodes", nodes, d + 1)
    lo, hi = float(low), float(high)
    if not hi > lo:
        raise ValueError(f"fit_gelu: need low < high, got [{lo}, {hi}]")
    t = torch.cos(math.pi * (torch.arange(n, dtype=torch.float64) + 0.5) / n)  # Chebyshev nodes
    x = (lo + hi) / 2 + (hi - lo) / 2 * t
    vander = t.unsqueeze(1) ** torch.arange(d + 1, dtype=torch.float64)  # (n, d + 1)
    coeffs = torch.linalg.lstsq(vander, gelu_exact(x).unsqueeze(1)).solution.squeeze(1)
    grid = torch.linspace(-1, 1, 20001, dtype=torch.float64)
    approx = (grid.unsqueeze(1) ** torch.arange(d + 1, dtype=torch.float64)) @ coeffs
    err = (approx - gelu_exact((lo + hi) / 2 + (hi - lo) / 2 * grid)).abs().max()
    return PolyFit(lo, hi, tuple(coeffs.tolist()), float(err))


def _powers(t: Any, degree: int, ops: PlainOps | SecureOps) -> list[Any]:
    """``[t, t^2, ..., t^degree]`` in ``ceil(log2 degree)`` rounds: each round multiplies the
    highest power so far by all the lower ones at once (one broadcast product)."""
    pw = [t]
    while len(pw) < degree:
        top = len(pw)  # pw holds t^1 .. t^top
        m = min(top, degree - top)
        if top == 1:
            pw.append(t.square())
        else:
            prod = pw[top - 1].unsqueeze(0) * ops.stack(pw[:m])  # (m, *S): t^(top + j) for j = 1..m
            pw.extend(prod[j] for j in range(m))
    return pw


def _polyval(x: Any, fit: PolyFit, ops: PlainOps | SecureOps) -> Any:
    t = (x - fit.center) * (1.0 / fit.half)  # public affine map to [-1, 1] on the segment
    if fit.degree == 0:
        return t * 0.0 + fit.coeffs[0]
    pw = ops.stack(_powers(t, fit.degree, ops))  # (d, *S)
    c = torch.tensor(fit.coeffs[1:], dtype=torch.float64).view(-1, *([1] * (pw.ndim - 1)))
    return (pw * c).sum(0) + fit.coeffs[0]


# ----- GeLU ---------------------------------------------------------------------------------
def gelu(x: Any, *, cuts: tuple[float, float, float] = GELU_CUTS, degree_low: int = 3,
         degree_high: int = 8) -> Any:
    """PUMA's piecewise GeLU: ``0 | p_low | p_high | x`` on the segments cut at ``left < mid < right``.

    One batched comparison gives the three bits ``b_L, b_M, b_R`` (``x < cut``); then
    ``x + b_R (p_high - x) + b_M (p_low - p_high) - b_L p_low`` telescopes to the right
    piece, computed with one product of the stacked bits and differences.

    Args:
        x: tensor (plaintext, domain [-8, 8]) or Shared.
        cuts: ``(left, mid, right)``, increasing.
        degree_low, degree_high: degrees of the polynomials on ``[left, mid]`` and ``[mid, right]``.

    Returns:
        GeLU(x) approximately, same type and shape. Float64 max error on [-8, 8] with the
        defaults: 9.1e-4 (the fits), see the section for fixed point.
    """
    left, mid, right = _check_cuts(cuts)
    lo = fit_gelu(left, mid, check_int("degree_low", degree_low, 1, 16))
    hi = fit_gelu(mid, right, check_int("degree_high", degree_high, 1, 16))
    ops = ops_for(x)
    _check_domain(x, "gelu", -8.0, 8.0)
    # show: start select
    with ops.scope("gelu"):
        # b_L, b_M, b_R = [x < cut]: one batched comparison, (3, *S)
        bits = ops.less(x, (left, mid, right))
        p_lo, p_hi = _polyval(x, lo, ops), _polyval(x, hi, ops)
        # aligned with b_L, b_M, b_R; one product of bits and differences
        diffs = ops.stack([-p_lo, p_lo - p_hi, p_hi - x])
        return x + (bits * diffs).sum(0)
    # show: end select


def _check_cuts(cuts: Any) -> tuple[float, float, float]:
    if not isinstance(cuts, (tuple, list)) or len(cuts) != 3:
        raise TypeError(f"cuts must be a tuple (left, mid, right), got {cuts!r}")
    left, mid, right = (float(c) for c in cuts)
    if not left < mid < right:
        raise ValueError(f"cuts must be increasing, got {cuts}")
    return left, mid, right


def gelu_global_poly(x: Any, *, degree: int = 8, bound: float = 5.0) -> Any:
    """The naive alternative: ONE polynomial of ``degree`` fitted on ``[-bound, bound]``, no comparison.

    Cheap (no comparison), accurate only on ``[-bound, bound]``: outside it the polynomial
    explodes. Inputs are deliberately not checked, so that the explosion can be shown.
    """
    if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not bound > 0:
        raise ValueError(f"gelu_global_poly: bound must be a number > 0, got {bound!r}")
    fit = fit_gelu(-float(bound), float(bound), check_int("degree", degree, 1, 16))
    ops = ops_for(x)
    with ops.scope("gelu_poly"):
        return _polyval(x, fit, ops)


def gelu_relu(x: Any) -> Any:
    """The crudest substitute: ReLU (one comparison and one product; max error 0.17 at x = -0.75)."""
    ops = ops_for(x)
    with ops.scope("gelu_relu"):
        return ops.relu(x)


# ----- exp, reciprocal, 1/sqrt ----------------------------------------------------------------
def exp(x: Any, *, squarings: int = 7, cut: float = -12.0) -> Any:
    """``e^x`` for ``x <= 0`` as ``(1 + x / 2^n)^(2^n)``, and 0 below ``cut`` (PUMA's exp).

    Args:
        x: tensor (plaintext, ``x <= 0``) or Shared.
        squarings: ``n``, at least 1 (``n`` rounds).
        cut: below it the result is 0; must be ``>= -2^(n+1)`` (beyond, the base is below -1).

    Returns:
        Approximately ``exp(x)``; float64 max error 2.1e-3 at ``n = 7`` (halved by each
        squaring), 6.1e-6 from the cut. In fixed point ``x / 2^n`` keeps only ``f - n``
        fractional bits, an error that the squarings multiply by ``2^n``: at ``f = 16`` the
        total is smallest near ``n = 7``.
    """
    n = check_int("squarings", squarings, 1, 14)
    if isinstance(cut, bool) or not isinstance(cut, (int, float)) or not -(2.0 ** (n + 1)) <= cut < 0:
        raise ValueError(f"exp: cut must be a number in [-2^(n+1), 0) = [{-(2.0 ** (n + 1)):g}, 0), got {cut!r}")
    ops = ops_for(x)
    _check_domain(x, "exp", -math.inf, 0.0)
    # show: start limit
    with ops.scope("exp"):
        below = ops.less(x, (float(cut),))[0]  # [x < cut]: one comparison
        y = x * (1.0 / 2**n) + 1.0  # 2^-n is exact in fixed point for n <= f
        for _ in range(n):
            y = y.square()  # (1 + x/2^n)^(2^k) after k rounds
        return y * (1 - below)  # bit times value: no truncation
    # show: end limit


def reciprocal_guess(low: float, high: float) -> tuple[float, float, float]:
    """The linear guess ``y0 = a - b x`` minimising ``max |1 - x y0|`` on ``[low, high]``.

    ``1 - a x + b x^2`` is the Chebyshev polynomial ``T_2`` mapped to ``[low, high]`` and scaled
    to 1 at ``x = 0``. With ``s = high + low``, ``w = high - low``: ``a = 8 s / (2 s^2 - w^2)``,
    ``b = 8 / (2 s^2 - w^2)`` and the initial error is ``e0 = w^2 / (2 s^2 - w^2)``.

    Returns:
        ``(a, b, e0)``; after ``k`` Newton steps the relative error is ``e0^(2^k)``.
    """
    lo, hi = _check_range("reciprocal", low, high)
    s, w = hi + lo, hi - lo
    d = 2 * s * s - w * w
    return 8 * s / d, 8 / d, w * w / d


def reciprocal(x: Any, *, low: float = 1.0, high: float = 64.0, iterations: int = 7) -> Any:
    """``1 / x`` for ``x`` in ``[low, high]`` by Newton's ``y <- y (2 - x y)`` (2 rounds each).

    Args:
        x: tensor (plaintext: in ``[low, high]``) or Shared.
        low, high: the input range, ``0 < low < high``.
        iterations: Newton steps; the relative error is at most ``e0^(2^k)`` (see
            :func:`reciprocal_guess`): on [1, 64], 7 steps give 1.8e-7 (the error squares
            each step: 8 give 3e-14). In fixed point the floor is about ``high 2^-f``
            relative (``1/high`` has few significant bits).
    """
    a, b, _ = reciprocal_guess(low, high)
    k = check_int("iterations", iterations, 0, 30)
    ops = ops_for(x)
    _check_domain(x, "reciprocal", low, high)
    # show: start newton
    with ops.scope("reciprocal"):
        y = x * (-b) + a  # linear guess: local
        for _ in range(k):
            y = y * (2.0 - x * y)  # Newton for f(y) = 1/y - x: error squares
        return y
    # show: end newton


def rsqrt_thresholds(low: float, high: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The staircase guess of :func:`rsqrt`: thresholds ``low 2^j`` and the guess in each bucket.

    Bucket ``j`` is ``[low 2^j, low 2^(j+1))``; its guess is ``1/sqrt`` of its geometric midpoint,
    so ``x y0^2`` lies in ``[2^-1/2, 2^1/2]`` and Newton starts within 19% of the answer.

    Returns:
        ``(thresholds, guesses)`` with ``len(guesses) = len(thresholds) + 1``.
    """
    lo, hi = _check_range("rsqrt", low, high)
    buckets = max(1, math.ceil(math.log2(hi / lo) - 1e-12))
    thresholds = tuple(lo * 2.0**j for j in range(1, buckets))
    guesses = tuple(1.0 / math.sqrt(lo * 2.0**j * math.sqrt(2.0)) for j in range(buckets))
    return thresholds, guesses


def rsqrt(x: Any, *, low: float = 2.0**-6, high: float = 2.0**12, iterations: int = 3) -> Any:
    """``1 / sqrt(x)`` for ``x`` in ``[low, high]``: staircase guess, then Newton (3 rounds each).

    The guess is ``g_0 + sum_j [x >= low 2^j] (g_j - g_(j-1))``: all thresholds in ONE batched
    comparison (8 rounds, whatever their number), the weighted sum of bits is local.
    Newton: ``y <- y (3 - x y^2) / 2``, with ``x y^2`` computed as ``(x y) y`` (a small ``y``
    squared would keep few fixed-point digits); float64 relative error 3.4e-5 after 3 steps,
    1.8e-9 after 4.

    Args:
        x: tensor (plaintext: in ``[low, high]``) or Shared.
        low, high: the input range, ``0 < low < high``.
        iterations: Newton steps.
    """
    thresholds, guesses = rsqrt_thresholds(low, high)
    k = check_int("iterations", iterations, 0, 30)
    ops = ops_for(x)
    _check_domain(x, "rsqrt", low, high)
    with ops.scope("rsqrt"):
        if thresholds:
            bits = 1 - ops.less(x, thresholds)  # (J - 1, *S): [x >= low 2^j]
            steps = torch.tensor([g1 - g0 for g0, g1 in zip(guesses, guesses[1:])], dtype=torch.float64)
            y = (bits * steps.view(-1, *([1] * (bits.ndim - 1)))).sum(0) + guesses[0]  # bit x public: local
        else:
            y = x * 0.0 + guesses[0]
        for _ in range(k):
            # Newton for f(y) = 1/y^2 - x; (x y) y, not x y^2: y^2 of a small y loses its digits
            y = y * (1.5 - 0.5 * ((x * y) * y))
        return y


# ----- softmax and LayerNorm ------------------------------------------------------------------
MASK_FILL = 64  # masked scores become -64: below any real score, so the max ignores them


def softmax(x: Any, *, mask: torch.Tensor | None = None, squarings: int = 7, cut: float = -12.0,
            iterations: int | None = None) -> Any:
    """Softmax over the last dimension, PUMA's way: ``e^(x - max) / sum``.

    The public ``mask`` (1 = keep) is applied twice: ``x * mask - 64 (1 - mask)`` before the
    max (masked scores cannot win it) and ``e * mask`` after exp (exact zeros); both are
    local. The row sums lie in ``[1, T]`` (the maximum contributes ``e^0 = 1``), which is the
    range of the reciprocal.

    Args:
        x: (..., T) tensor (plaintext) or Shared.
        mask: public 0/1 (or bool) tensor broadcastable to ``x``, or None.
        squarings, cut: of :func:`exp`.
        iterations: Newton steps of the reciprocal; ``None`` picks the fewest with
            ``e0^(2^k) <= 1e-6`` on ``[1, T]``.

    Shapes:
        x (..., T) -> (..., T).
    """
    ops = ops_for(x)
    t = x.shape[-1]
    if t < 1:
        raise ValueError("softmax: the last dimension is empty")
    if iterations is None:
        e0 = reciprocal_guess(1.0, float(max(t, 2)))[2]
        iterations = max(0, math.ceil(math.log2(math.log(1e-6) / math.log(e0))))
    if mask is not None:
        m = torch.as_tensor(mask).to(torch.int64)
        if not bool(((m == 0) | (m == 1)).all()):
            raise ValueError("softmax: mask must hold 0/1 (or bool) values")
        x = x * m + (m - 1) * MASK_FILL  # public integer mask: free
    with ops.scope("softmax"):
        with ops.scope("max"):
            shifted = x - ops.max(x, -1)
        e = exp(shifted, squarings=squarings, cut=cut)
        if mask is not None:
            e = e * m
        total = e.sum(-1, keepdim=True)
        return e * reciprocal(total, low=1.0, high=float(max(t, 2)), iterations=iterations)


def layer_norm(x: Any, weight: Any, bias: Any, *, eps: float = 1e-5, var_low: float = 2.0**-12,
               var_high: float = 2.0**6, iterations: int = 3) -> Any:
    """LayerNorm ``(x - mean) / sqrt(var + eps) * weight + bias`` over the last dimension.

    The inverse square root is taken of ``sum (x - mean)^2 + D eps`` (= ``D (var + eps)``)
    and multiplied by ``sqrt(D)``: the sum keeps ``log2 D`` more significant bits than the
    mean in fixed point.

    Args:
        x: (..., D) tensor or Shared.
        weight, bias: (D,) tensors or Shared (the model owner's parameters).
        eps: LayerNorm's epsilon.
        var_low, var_high: the range of the per-row variance (plaintext inputs are checked).
        iterations: Newton steps of :func:`rsqrt`.
    """
    ops = ops_for(x)
    d = x.shape[-1]
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or eps < 0:
        raise ValueError(f"layer_norm: eps must be a number >= 0, got {eps!r}")
    with ops.scope("layernorm"):
        xc = x - x.mean(-1, keepdim=True)
        ss = xc.square().sum(-1, keepdim=True) + d * float(eps)  # (..., 1)
        root = math.isqrt(d)
        scale = root if root * root == d else math.sqrt(d)  # an int multiplies for free
        r = rsqrt(ss, low=d * var_low, high=d * var_high, iterations=iterations) * scale
        return (xc * r) * weight + bias
