"""Reading a router: how confident, how diverse and how layer-dependent its choices are.

Three numbers describe what a trained router does with a batch of tokens:

- *token entropy* ``H(p_i)``, averaged over tokens: how sure the router is of each token's
  experts (0 = certain, ``log E`` = undecided);
- *selection entropy* ``H(f)`` of the load ``f_e`` (share of assignments per expert): how many
  experts the layer actually uses (``log E`` = all equally, 0 = one);
- *inter-layer mutual information* ``I(e_l; e_{l+1})`` between the (first-choice) experts of
  consecutive layers: how much a token's expert at one layer tells about its expert at the next.
  Independent routers can still show some (tokens of one kind go to related experts), and
  RMoE's recurrent router (arXiv:2408.06793) is built to use it; ExFlow exploits it for placement.

All entropies are in nats.

Shapes: N tokens, E experts, L layers, k top_k.
Section: chapter 05, "RMoE: routers with memory".
"""

from __future__ import annotations

import math

import torch

from labkit.validation import check_int

__all__ = ["layer_mutual_information", "max_entropy", "mutual_information", "selection_entropy", "token_entropy"]


def token_entropy(probs: torch.Tensor) -> float:
    """Mean over tokens of the entropy of each token's router distribution, probs (N, E) -> nats."""
    if not isinstance(probs, torch.Tensor) or probs.dim() != 2:
        raise ValueError("probs must be a 2-D tensor (N, E)")
    p = probs.double().clamp_min(1e-30)
    return float(-(p * p.log()).sum(-1).mean())


def selection_entropy(experts: torch.Tensor, n_experts: int) -> float:
    """Entropy of the share of assignments per expert; experts (N, k) with -1 = dropped (ignored)."""
    check_int("n_experts", n_experts, 1)
    chosen = experts[experts >= 0].reshape(-1)
    if chosen.numel() == 0:
        raise ValueError("no assignment to measure")
    f = torch.bincount(chosen, minlength=n_experts).double() / chosen.numel()
    f = f[f > 0]
    return float(-(f * f.log()).sum())


def mutual_information(a: torch.Tensor, b: torch.Tensor, n_a: int, n_b: int) -> float:
    """Plug-in estimate of ``I(A; B)`` in nats from paired samples of two discrete variables.

    Args:
        a, b: paired labels, 1-D int64 of equal length, in ``[0, n_a)`` and ``[0, n_b)``.
        n_a, n_b: number of values of each.

    Returns:
        ``sum_xy p(x, y) log(p(x, y) / (p(x) p(y)))``, between 0 and ``min(log n_a, log n_b)``.
        With few samples per cell the plug-in estimate is biased upwards; compare estimates
        made from the same number of samples.
    """
    check_int("n_a", n_a, 1)
    check_int("n_b", n_b, 1)
    if a.dim() != 1 or a.shape != b.shape:
        raise ValueError(f"a and b must be 1-D of equal length, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.numel() == 0:
        raise ValueError("need at least one sample")
    if int(a.min()) < 0 or int(a.max()) >= n_a or int(b.min()) < 0 or int(b.max()) >= n_b:
        raise ValueError("labels out of range")
    joint = torch.bincount(a * n_b + b, minlength=n_a * n_b).double().reshape(n_a, n_b) / a.numel()
    pa, pb = joint.sum(1, keepdim=True), joint.sum(0, keepdim=True)
    nz = joint > 0
    return float((joint[nz] * (joint[nz] / (pa @ pb)[nz]).log()).sum())


def layer_mutual_information(trace: torch.Tensor, n_experts: int) -> list[float]:
    """``I(e_l; e_{l+1})`` of the first-choice experts for each pair of consecutive layers.

    Args:
        trace: experts per token per layer, (N, L, k) as from :func:`labkit.lm.routing_trace`;
            only ``trace[:, :, 0]`` (the first choice) is used. Tokens whose first choice was
            dropped (-1) at either layer are left out of that pair.
        n_experts: E.

    Returns:
        L - 1 values in nats; the largest possible is ``log E`` (``math.log(n_experts)``).
    """
    if trace.dim() != 3:
        raise ValueError(f"trace must be (N, L, k), got {tuple(trace.shape)}")
    first = trace[:, :, 0]
    out = []
    for layer in range(first.shape[1] - 1):
        a, b = first[:, layer], first[:, layer + 1]
        ok = (a >= 0) & (b >= 0)
        out.append(mutual_information(a[ok], b[ok], n_experts, n_experts))
    return out


def max_entropy(n_experts: int) -> float:
    """``log E``: the entropy of a uniform choice among ``n_experts``."""
    return math.log(check_int("n_experts", n_experts, 1))
