"""Decode attention over a low-rank KV cache: the PyTorch reference and its checks.

MatryoshkaKV (Lin et al., 2024, arXiv:2410.14731) stores, per layer and key-value head, the
keys and values projected onto the first ``r`` of ``d`` orthogonal directions: ``K~ = K P_k``
and ``V~ = V P_v`` with ``P_k = U_k[:, :r]`` (d x r). A decode step then never rebuilds the
full keys: the new query is projected once, ``q~ = q P_k``, the scores are ``q~ K~^T / sqrt(d)``
(the scale of the *full* head width, so that at ``r = d`` nothing changes), and the output
stays in the projected space, ``softmax(.) V~`` of width ``r``; the caller folds ``P_v^T`` into
the output projection. Each step reads ``2 T r`` cache entries per head instead of ``2 T d``:
decode is bound by that read, so its time should fall about as ``r / d``.

Grouped-query attention: ``Hq`` query heads share ``Hkv`` key-value heads, query head ``h``
reading key-value head ``h // (Hq / Hkv)`` (the order of ``repeat_interleave``, as in
:func:`torch.nn.functional.scaled_dot_product_attention` with ``enable_gqa=True``).

- :func:`projected_decode_attention`: the definition, for any ``1 <= r <= d`` (at ``r = d``
  with ``P_k`` the identity it is plain attention over the full cache, which the tests check
  against SDPA);
- :func:`lowrank_decode_reference`: the same after the checks of a *compressed* cache
  (``r < d``), the reference of the Triton kernel in :mod:`labkit.inference._kernels`;
- :data:`lowrank_decode`: the :class:`~labkit.backend.Op` that dispatches between them.

Shapes: B requests, Hq query heads, Hkv key-value heads, d head width, r kept rank, T cached
positions. q (B, Hq, 1, d), p_k (Hkv, d, r), k_lr and v_lr (B, Hkv, T, r) -> (B, Hq, 1, r).
Section: chapter 07, "MatryoshkaKV: trainable orthogonal KV projections".
"""

from __future__ import annotations

import math

import torch

from labkit.backend import Op
from labkit.validation import check_int, check_tensor

__all__ = ["check_lowrank_decode", "lowrank_decode", "lowrank_decode_reference", "projected_decode_attention"]

_FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def check_lowrank_decode(q: torch.Tensor, p_k: torch.Tensor, k_lr: torch.Tensor, v_lr: torch.Tensor, *,
                         full_rank: bool = False) -> tuple[int, int, int, int, int, int]:
    """Check the four operands of a low-rank decode step; return ``(B, Hq, Hkv, d, r, T)``.

    Args:
        q: the new token's queries (B, Hq, 1, d).
        p_k: each key-value head's key projection (Hkv, d, r).
        k_lr, v_lr: the projected cache (B, Hkv, T, r).
        full_rank: allow ``r = d`` (the definition's sanity case); a compressed cache needs ``r < d``.

    Raises:
        TypeError: an operand is not a floating-point tensor, or the dtypes differ.
        ValueError: a wrong number of dimensions, shapes that do not agree, ``r < 1``, ``r >= d``
            (``r > d`` with ``full_rank``), ``Hq`` not a multiple of ``Hkv``, an empty cache, or
            operands on different devices.
    """
    check_tensor("q", q, dims=4, dtype=_FLOATS, shape="(B, Hq, 1, d)")
    check_tensor("p_k", p_k, dims=3, dtype=_FLOATS, shape="(Hkv, d, r)")
    check_tensor("k_lr", k_lr, dims=4, dtype=_FLOATS, shape="(B, Hkv, T, r)")
    check_tensor("v_lr", v_lr, dims=4, dtype=_FLOATS, shape="(B, Hkv, T, r)")
    for name, t in (("p_k", p_k), ("k_lr", k_lr), ("v_lr", v_lr)):
        if t.dtype != q.dtype:
            raise TypeError(f"{name} must have the dtype of q ({q.dtype}), got {t.dtype}")
        if t.device != q.device:
            raise ValueError(f"{name} must be on the device of q ({q.device}), got {t.device}")
    batch, n_q, one, d = q.shape
    if one != 1:
        raise ValueError(f"q must hold one decode position, shape (B, Hq, 1, d), got {tuple(q.shape)}")
    n_kv, d_p, r = p_k.shape
    if d_p != d:
        raise ValueError(f"p_k must be (Hkv, d, r) with d = {d} (the width of q), got {tuple(p_k.shape)}")
    if r < 1 or r > d or (r == d and not full_rank):
        bound = "1 <= r <= d" if full_rank else "1 <= r < d (a compressed cache)"
        raise ValueError(f"the rank r (last dim of p_k) must satisfy {bound}, got r={r}, d={d}")
    if n_kv < 1 or n_q % n_kv:
        raise ValueError(f"the query heads Hq={n_q} must be a multiple of the key-value heads Hkv={n_kv} (p_k's "
                         "first dim)")
    if k_lr.shape[:2] != (batch, n_kv) or k_lr.shape[3] != r:
        raise ValueError(f"k_lr must be (B, Hkv, T, r) = ({batch}, {n_kv}, T, {r}), got {tuple(k_lr.shape)}")
    if v_lr.shape != k_lr.shape:
        raise ValueError(f"v_lr must have the shape of k_lr {tuple(k_lr.shape)}, got {tuple(v_lr.shape)}")
    context = k_lr.shape[2]
    if context < 1:
        raise ValueError("the cache must hold at least one position (T >= 1), got T=0")
    return batch, n_q, n_kv, d, r, context


def _attend(q: torch.Tensor, p_k: torch.Tensor, k_lr: torch.Tensor, v_lr: torch.Tensor) -> torch.Tensor:
    """The computation itself, in float32 (float64 stays float64), cast back to q's dtype."""
    batch, n_q, _, d = q.shape
    n_kv, _, r = p_k.shape
    group = n_q // n_kv
    work = torch.float64 if q.dtype == torch.float64 else torch.float32
    # show: start reference
    # query head h = kv * group + g reads key-value head kv
    qg = q.to(work).reshape(batch, n_kv, group, d)
    q_lr = qg @ p_k.to(work)  # (B, Hkv, G, r): q~ = q P_k
    # (B, Hkv, G, T) scores, scaled by the full width d
    scores = q_lr @ k_lr.to(work).transpose(-1, -2) / math.sqrt(d)
    probs = torch.softmax(scores, dim=-1)
    out = probs @ v_lr.to(work)  # (B, Hkv, G, r): still projected
    # show: end reference
    return out.reshape(batch, n_q, 1, r).to(q.dtype)


def projected_decode_attention(q: torch.Tensor, p_k: torch.Tensor, k_lr: torch.Tensor,
                               v_lr: torch.Tensor) -> torch.Tensor:
    """``softmax(q P_k K~^T / sqrt(d)) V~`` per query head, for any rank ``1 <= r <= d``.

    The definition of decode attention over a projected cache. With ``r = d`` and ``P_k`` the
    identity (or any orthogonal matrix applied to both sides) it is ordinary attention over the
    full cache. Computed in float32 and returned in q's dtype; differentiable.

    Shapes:
        q (B, Hq, 1, d), p_k (Hkv, d, r), k_lr and v_lr (B, Hkv, T, r) -> (B, Hq, 1, r).
    """
    check_lowrank_decode(q, p_k, k_lr, v_lr, full_rank=True)
    return _attend(q, p_k, k_lr, v_lr)


def lowrank_decode_reference(q: torch.Tensor, p_k: torch.Tensor, k_lr: torch.Tensor, v_lr: torch.Tensor,
                             splits: int | None = None) -> torch.Tensor:
    """Decode attention over a compressed (``r < d``) low-rank cache, in plain PyTorch.

    Args:
        q: the new token's queries.
        p_k: the key projection of each key-value head (the first r columns of ``U_k``).
        k_lr, v_lr: the cache of projected keys and values.
        splits: the Triton path's number of context chunks (``None``: its own choice); the
            reference reads the whole context at once, so the value is only checked.

    Returns:
        The attention output in the projected value space, q's dtype.

    Shapes:
        q (B, Hq, 1, d), p_k (Hkv, d, r), k_lr and v_lr (B, Hkv, T, r) -> (B, Hq, 1, r).
    """
    if splits is not None:
        check_int("splits", splits, 1)
    check_lowrank_decode(q, p_k, k_lr, v_lr)
    return _attend(q, p_k, k_lr, v_lr)


#: Low-rank decode attention; Triton path (split context, online softmax) in :mod:`labkit.inference._kernels`.
lowrank_decode = Op("lowrank_decode", reference=lowrank_decode_reference,
                    triton="labkit.inference._kernels:lowrank_decode_triton")
