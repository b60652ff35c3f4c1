"""Denoising tasks, their affinity, and interval clustering of timesteps by dynamic programming.

*Addressing Negative Transfer in Diffusion Models* (Go et al., 2023, arXiv:2306.00354) reads
diffusion training as multi-task learning: the denoising task at each step ``t`` is one task,
and all tasks share the network. It observes that (O1) the affinity between two denoising tasks
falls as the gap between their noise levels grows, and (O2) that training on all tasks at once
can hurt some of them (negative transfer). Multi-task methods need a loss or a gradient per
task, which is unaffordable for a thousand tasks, so the paper groups the steps into ``k``
*contiguous* intervals and treats each interval as one task. Choosing the intervals is interval
clustering (Section 4.1): minimise ``sum_i L_cluster(I_i)`` over the ``k - 1`` cut points, which
dynamic programming solves exactly in ``O(k n^2)`` given the cost of every interval.

Here the ``T`` steps are first binned into ``n`` equal bins (the tasks of the miniature):

- :func:`timestep_bins` and :func:`bin_of` define the bins;
- :func:`bin_gradients` takes one gradient of the DDPM loss per bin on a calibration batch,
  over every parameter of the network (all of them are shared by all steps);
- :func:`gradient_affinity` is the cosine between two bins' gradients. The paper's Figure 1
  plots a look-ahead affinity (how a step on task ``i`` changes task ``j``'s loss); to first
  order in the learning rate that change is ``lr * <g_i, g_j>``, so the cosine is its
  scale-free version, and the cosine is what the paper's gradient-based clustering cost uses;
- :func:`interval_costs` prices every contiguous interval of bins (one minus the mean pairwise
  affinity inside it, times its size, so splitting never costs more);
- :func:`interval_clusters` is the dynamic program; :func:`brute_force_clusters` enumerates
  every cut for the tests;
- :func:`continue_on_steps` and :func:`bin_losses` run and measure the short continuations of
  the negative-transfer experiment.

Shapes: B batch, n bins, P parameters, T training steps.
Section: chapter 08, "Negative transfer between denoising tasks".
"""

from __future__ import annotations

import copy
import itertools
import math

import torch
from torch.nn import functional as F

from labkit.validation import check_int, check_real

from .schedule import NoiseSchedule
from .train import DDPMResult
from .unet import TinyUNet

__all__ = ["bin_gradients", "bin_losses", "bin_of", "brute_force_clusters", "continue_on_steps",
           "gradient_affinity", "interval_costs", "interval_clusters", "timestep_bins"]


def timestep_bins(n_steps: int, n_bins: int) -> list[tuple[int, int]]:
    """Split steps ``0 .. n_steps-1`` into ``n_bins`` contiguous bins of (nearly) equal size.

    Returns:
        ``[(lo, hi), ...]``, half-open ``[lo, hi)``, covering every step once, in order.
    """
    check_int("n_steps", n_steps, 1)
    check_int("n_bins", n_bins, 1, n_steps)
    edges = [round(i * n_steps / n_bins) for i in range(n_bins + 1)]
    return [(edges[i], edges[i + 1]) for i in range(n_bins)]


def bin_of(t: torch.Tensor, bins: list[tuple[int, int]]) -> torch.Tensor:
    """The bin index of each step ``t`` (int64, same shape as ``t``)."""
    if not bins:
        raise ValueError("bins must name at least one bin, got []")
    starts = torch.tensor([lo for lo, _ in bins[1:]], dtype=torch.long, device=t.device)
    return torch.bucketize(t.long(), starts, right=True)


def _draw_steps(bins: list[tuple[int, int]], b: int, n: int, gen: torch.Generator) -> torch.Tensor:
    lo, hi = bins[b]
    return torch.randint(lo, hi, (n,), generator=gen)


def bin_gradients(model: TinyUNet, schedule: NoiseSchedule, images: torch.Tensor,
                  labels: torch.Tensor | None, bins: list[tuple[int, int]], *, batch: int = 64,
                  seed: int = 0) -> torch.Tensor:
    """One flattened gradient of the DDPM loss per bin, on a calibration batch drawn by ``seed``.

    Every bin sees the same ``batch`` images and the same noise; only the steps differ (drawn
    uniformly inside the bin), so two bins' gradients differ by the task alone.

    Returns:
        (n, P) float32, the gradient of ``|| eps - eps_theta(x_t, t) ||^2`` w.r.t. all parameters.

    Shapes:
        images: (N, C, H, W); labels: (N,) or None.
    """
    check_int("batch", batch, 1)
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, images.shape[0], (batch,), generator=gen)
    x0 = images[idx]
    y = labels[idx] if labels is not None else None
    noise = torch.randn(x0.shape, generator=gen)
    params = [p for p in model.parameters() if p.requires_grad]
    was_training = model.training
    model.train()
    rows = []
    for b in range(len(bins)):
        t = _draw_steps(bins, b, batch, gen)
        loss = F.mse_loss(model(schedule.q_sample(x0, t, noise), t, y), noise)
        grads = torch.autograd.grad(loss, params)
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    model.train(was_training)
    return torch.stack(rows)


def gradient_affinity(grads: torch.Tensor) -> torch.Tensor:
    """Cosine similarity between every pair of bins' gradients: (n, P) -> (n, n) float64, ones on the diagonal."""
    if not isinstance(grads, torch.Tensor) or grads.dim() != 2:
        raise ValueError(f"grads must be an (n, P) tensor, got {getattr(grads, 'shape', type(grads))}")
    # show: start affinity
    # A_ij = <g_i, g_j> / (|g_i| |g_j|): the look-ahead change of task j's
    # loss after a step on task i, to first order and without the step size
    g = grads.double()  # float64: P is large, the diagonal must be 1
    unit = g / g.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return unit @ unit.T
    # show: end affinity


def interval_costs(affinity: torch.Tensor) -> torch.Tensor:
    """``cost[a, b]``: the clustering cost of the interval of bins ``a .. b`` (inclusive).

    ``cost = m * (1 - mean_{i != j in I} A_ij)`` for an interval of ``m >= 2`` bins and 0 for a
    single bin: the dissimilarity inside the interval, summed over its members. Entries with
    ``b < a`` are ``inf``.

    Shapes:
        affinity: (n, n) symmetric; result: (n, n) float64.
    """
    if not isinstance(affinity, torch.Tensor) or affinity.dim() != 2 or affinity.shape[0] != affinity.shape[1]:
        raise ValueError(f"affinity must be a square (n, n) tensor, got {getattr(affinity, 'shape', None)}")
    a = affinity.double()
    n = a.shape[0]
    # 2-D prefix sums: S[i, j] = sum of a[:i, :j], so any block sum costs O(1)
    S = F.pad(a.cumsum(0).cumsum(1), (1, 0, 1, 0))
    cost = torch.full((n, n), math.inf, dtype=torch.float64)
    for lo in range(n):
        for hi in range(lo, n):
            m = hi - lo + 1
            if m == 1:
                cost[lo, hi] = 0.0
                continue
            block = S[hi + 1, hi + 1] - S[lo, hi + 1] - S[hi + 1, lo] + S[lo, lo]
            off = block - a.diagonal()[lo:hi + 1].sum()
            cost[lo, hi] = m * (1.0 - off / (m * (m - 1)))
    return cost


def interval_clusters(cost: torch.Tensor, k: int) -> tuple[list[tuple[int, int]], float]:
    """Split bins ``0 .. n-1`` into ``k`` contiguous intervals of least total cost (exact, O(k n^2)).

    Args:
        cost: (n, n), ``cost[a, b]`` the cost of the interval ``a .. b`` inclusive.
        k: number of intervals, in ``[1, n]``.

    Returns:
        ``([(lo, hi), ...], total)``: inclusive bin ranges in order, and their summed cost.
    """
    if not isinstance(cost, torch.Tensor) or cost.dim() != 2 or cost.shape[0] != cost.shape[1]:
        raise ValueError(f"cost must be a square (n, n) tensor, got {getattr(cost, 'shape', None)}")
    n = cost.shape[0]
    check_int("k", k, 1, n)
    c = cost.double().tolist()
    # show: start dp
    # D[j][m]: least cost of splitting the first m bins into j intervals;
    # the last interval is bins i .. m-1, after the best j-1 split of i bins
    D = [[math.inf] * (n + 1) for _ in range(k + 1)]
    cut = [[0] * (n + 1) for _ in range(k + 1)]
    D[0][0] = 0.0
    for j in range(1, k + 1):
        for m in range(j, n + 1):
            for i in range(j - 1, m):
                v = D[j - 1][i] + c[i][m - 1]
                if v < D[j][m]:
                    D[j][m], cut[j][m] = v, i
    intervals, m = [], n
    for j in range(k, 0, -1):  # walk the cuts back from the end
        i = cut[j][m]
        intervals.append((i, m - 1))
        m = i
    # show: end dp
    return intervals[::-1], D[k][n]


def brute_force_clusters(cost: torch.Tensor, k: int) -> tuple[list[tuple[int, int]], float]:
    """Like :func:`interval_clusters` by trying every set of ``k - 1`` cut points (for checking)."""
    if not isinstance(cost, torch.Tensor) or cost.dim() != 2 or cost.shape[0] != cost.shape[1]:
        raise ValueError(f"cost must be a square (n, n) tensor, got {getattr(cost, 'shape', None)}")
    n = cost.shape[0]
    check_int("k", k, 1, n)
    best, best_cost = None, math.inf
    for cuts in itertools.combinations(range(1, n), k - 1):
        edges = (0, *cuts, n)
        parts = [(edges[i], edges[i + 1] - 1) for i in range(k)]
        total = sum(float(cost[lo, hi]) for lo, hi in parts)
        if total < best_cost:
            best, best_cost = parts, total
    return best, best_cost


def bin_losses(model: TinyUNet, schedule: NoiseSchedule, images: torch.Tensor, labels: torch.Tensor | None,
               bins: list[tuple[int, int]], *, per_bin: int = 256, seed: int = 0) -> torch.Tensor:
    """The DDPM loss of each bin on a fixed evaluation batch (same images and noise for every bin).

    Returns:
        (n,) float64, the mean loss over ``per_bin`` draws with steps spread evenly over the bin.
    """
    check_int("per_bin", per_bin, 1)
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, images.shape[0], (per_bin,), generator=gen)
    x0 = images[idx]
    y = labels[idx] if labels is not None else None
    noise = torch.randn(x0.shape, generator=gen)
    out = []
    with torch.no_grad():
        for lo, hi in bins:
            t = torch.linspace(lo, hi - 1, per_bin).round().long()
            out.append(F.mse_loss(model(schedule.q_sample(x0, t, noise), t, y), noise).item())
    return torch.tensor(out, dtype=torch.float64)


def continue_on_steps(base: DDPMResult, images: torch.Tensor, labels: torch.Tensor | None, *, steps: int,
                      t_range: tuple[int, int] | None = None, batch: int = 64, lr: float = 3e-4,
                      seed: int = 0) -> TinyUNet:
    """A copy of ``base.model`` trained ``steps`` more AdamW steps with ``t`` drawn from ``t_range``.

    ``t_range = (lo, hi)`` restricts training to steps ``lo <= t < hi`` (one cluster of tasks);
    None trains on every step, as DDPM does. The base model is not modified.

    Returns:
        the trained copy, in eval mode.
    """
    check_int("steps", steps, 1)
    check_int("batch", batch, 1)
    check_real("lr", lr, 0.0, strict=True)
    T = base.schedule.n_steps
    lo, hi = (0, T) if t_range is None else t_range
    check_int("t_range[0]", lo, 0, T - 1)
    check_int("t_range[1]", hi, lo + 1, T)
    model = copy.deepcopy(base.model).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, images.shape[0], (batch,), generator=gen)
        t = torch.randint(lo, hi, (batch,), generator=gen)
        noise = torch.randn((batch, *images.shape[1:]), generator=gen)
        y = labels[idx] if labels is not None else None
        loss = F.mse_loss(model(base.schedule.q_sample(images[idx], t, noise), t, y), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return model.eval()
