"""Federated lottery tickets: SynFlow pruning at initialisation and a sign supermask.

HideNseek (Vallapuram et al., "HideNseek: Federated Lottery Ticket via Server-side Pruning
and Sign Supermask", arXiv:2206.04385) never trains a weight. The server prunes a randomly
initialised network once, without data, by synaptic flow (SynFlow, Tanaka et al. 2020): with
every weight replaced by its absolute value and an all-ones input, the network's summed
output R = 1^T (prod_l |W_l|) 1 measures how much "flow" passes through each weight, and the
saliency |theta * dR/dtheta| ranks the weights; pruning in many small steps, recomputing R
each time, keeps the layers from being cut off. Each client then learns one sign per kept
weight: the effective weight is s * theta_0 with s in {-1, +1}, the sign of a real score
trained through a straight-through estimator. A client uploads its signs, one bit per kept
weight, and the server combines them. How the paper's server combines the signs is read here
as a per-weight majority vote (ties keep the previous sign): the abstract says that the
clients learn one sign mask together, and a vote is the aggregate of one-bit messages that
returns one bit.

Baselines on the same protocol: a {0, 1} supermask over the same kept weights (one bit each,
as FedMask-style methods send), the sign supermask over a random mask of the same size, and
dense FedAvg, which uploads every parameter as float32.

What the miniature leaves out: the paper's personalisation (clients keep their own scores
and only part of the model is shared), its batch-norm handling, its larger models and
non-i.i.d. splits, and the download direction (counted here only for uploads).

Shapes: K clients, P kept weights, B images (1 x 8 x 8).
Section: chapter 13, "Federated lottery tickets: HideNseek".
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from labkit.runtime import one_thread
from labkit.validation import check_int, check_real

__all__ = [
    "FederatedConfig",
    "FederatedRun",
    "iid_split",
    "kept_count",
    "majority_vote",
    "masked_logits",
    "pack_bits",
    "prunable_weights",
    "random_masks",
    "run_fedavg",
    "run_supermask",
    "supermask_figure",
    "supermask_weights",
    "synflow_masks",
    "synflow_saliency",
    "unpack_bits",
]

MASK_KINDS: tuple[str, ...] = ("sign", "binary")


def _check_density(density: object) -> float:
    value = check_real("density", density)
    if not 0.0 < value <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    return value


def prunable_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights a mask covers: every parameter with two or more dimensions.

    Biases are left out (the supermask runs keep them at their initial value, zero for
    ``DigitClassifier``).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    weights = {n: p for n, p in model.named_parameters() if p.dim() >= 2}
    if not weights:
        raise ValueError("model has no weight with two or more dimensions to prune")
    return weights


def kept_count(masks: dict[str, torch.Tensor]) -> int:
    """P, the number of weights a mask keeps."""
    return int(sum(int(m.sum()) for m in masks.values()))


# show: start synflow
def synflow_saliency(model: nn.Module, masks: dict[str, torch.Tensor],
                     input_shape: tuple[int, ...],
                     ) -> dict[str, torch.Tensor]:
    """SynFlow's data-free saliency |theta * dR/dtheta| of each prunable weight.

    R = 1^T (prod_l |W_l|) 1 is the network's summed output for an all-ones
    input once every parameter is replaced by its absolute value (masked
    weights by zero). Computed in float64.
    """
    params = {n: p.detach().double().abs()
              for n, p in model.named_parameters()}
    for name, mask in masks.items():  # pruned weights carry no flow
        params[name] = (params[name] * mask).requires_grad_(True)
    ones = torch.ones((1, *input_shape), dtype=torch.float64)
    with torch.enable_grad():
        flow = functional_call(model, params, (ones,)).sum()  # R
        grads = torch.autograd.grad(flow, [params[n] for n in masks])
    return {n: (params[n] * g).abs().detach()  # |theta * dR/dtheta|
            for n, g in zip(masks, grads)}
# show: end synflow


def synflow_masks(model: nn.Module, density: float, *, iterations: int = 50,
                  input_shape: tuple[int, ...] = (1, 8, 8)) -> dict[str, torch.Tensor]:
    """Iterated SynFlow pruning of ``model``'s weights down to ``density`` (global ranking).

    The kept fraction falls geometrically, density^(k / iterations) after step k, and the
    saliency is recomputed on the surviving network at every step.

    Args:
        model: the network at initialisation (its weights are not changed).
        density: rho in (0, 1], the fraction of prunable weights kept.
        iterations: pruning steps (the paper of SynFlow uses 100).
        input_shape: one input's shape, without the batch dimension.

    Returns:
        ``{name: bool mask}`` of the shapes of :func:`prunable_weights`.
    """
    density = _check_density(density)
    iterations = check_int("iterations", iterations, 1)
    weights = prunable_weights(model)
    masks = {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}
    total = sum(w.numel() for w in weights.values())
    # show: start iterate
    for k in range(1, iterations + 1):
        keep = max(1, round(total * density ** (k / iterations)))
        scores = synflow_saliency(model, masks, input_shape)
        flat = torch.cat([s.flatten() for s in scores.values()])  # (total,)
        order = torch.argsort(flat, descending=True, stable=True)
        chosen = torch.zeros(total, dtype=torch.bool)
        chosen[order[:keep]] = True  # the keep most salient weights survive
        parts = torch.split(chosen, [w.numel() for w in weights.values()])
        masks = {n: m.view_as(weights[n]) for n, m in zip(weights, parts)}
    # show: end iterate
    return masks


def random_masks(model: nn.Module, density: float, *, seed: int = 0) -> dict[str, torch.Tensor]:
    """A uniformly random mask keeping ``round(density * total)`` weights (global draw).

    Args:
        model: the network whose :func:`prunable_weights` are masked.
        density: rho in (0, 1].
        seed: seed of the draw.
    """
    density = _check_density(density)
    check_int("seed", seed, 0)
    weights = prunable_weights(model)
    sizes = [w.numel() for w in weights.values()]
    total = sum(sizes)
    gen = torch.Generator().manual_seed(seed)
    chosen = torch.zeros(total, dtype=torch.bool)
    chosen[torch.randperm(total, generator=gen)[:max(1, round(total * density))]] = True
    return {n: m.view_as(w) for (n, w), m in zip(weights.items(), torch.split(chosen, sizes))}


def masked_logits(model: nn.Module, masks: dict[str, torch.Tensor],
                  x: torch.Tensor) -> torch.Tensor:
    """Logits of the pruned network at initialisation (every kept weight with sign +1)."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        params.update({n: params[n] * m for n, m in masks.items()})
        return functional_call(model, params, (x,))


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """Pack a flat bool tensor of P bits into ceil(P / 8) bytes (uint8), first bit highest."""
    if not isinstance(bits, torch.Tensor) or bits.dtype != torch.bool or bits.dim() != 1:
        raise TypeError("bits must be a one-dimensional bool tensor")
    return torch.from_numpy(np.packbits(bits.numpy()))


def unpack_bits(packed: torch.Tensor, n_bits: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: the first ``n_bits`` bits of ``packed`` as bools."""
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint8 or packed.dim() != 1:
        raise TypeError("packed must be a one-dimensional uint8 tensor")
    n_bits = check_int("n_bits", n_bits, 0, 8 * packed.numel())
    return torch.from_numpy(np.unpackbits(packed.numpy(), count=n_bits).astype(bool))


# show: start supermask
def supermask_weights(init: dict[str, torch.Tensor],
                      masks: dict[str, torch.Tensor],
                      scores: dict[str, torch.Tensor],
                      kind: str) -> dict[str, torch.Tensor]:
    """Effective weights m * q(score) * theta_0, straight-through estimator.

    ``kind="sign"``: q = sign(score) in {-1, +1} (HideNseek);
    ``kind="binary"``: q = 1 where score > 0, else 0 (a {0, 1} supermask).
    The forward pass uses q; the backward pass treats q as the identity of
    the score, so dLoss/dscore = dLoss/dw * m * theta_0. Nothing is
    rescaled: SynFlow's subnetwork keeps the signal's scale by itself.
    """
    out = {}
    for name, theta in init.items():
        s = scores[name]
        if kind == "sign":
            q = torch.where(s >= 0, 1.0, -1.0)
        else:
            q = (s > 0).float()
        q = q + s - s.detach()  # straight-through: forward q, gradient 1
        out[name] = theta * masks[name] * q
    return out


def majority_vote(bits: torch.Tensor,
                  previous: torch.Tensor) -> torch.Tensor:
    """The server's aggregate of K clients' bits: the per-position majority.

    A tie keeps the bit in ``previous``.

    Shapes: bits (K, P) bool, previous (P,) bool -> (P,) bool.
    """
    votes = bits.sum(0) * 2 - bits.shape[0]  # (P,) yes minus no
    return torch.where(votes == 0, previous, votes > 0)
# show: end supermask


@dataclass(frozen=True)
class FederatedConfig:
    """One federated training recipe, shared by every method so they compare fairly.

    Attributes:
        rounds: communication rounds.
        local_steps: optimiser steps per client per round.
        batch_size: images per local step.
        lr: Adam's step size (on weights for FedAvg, on scores for supermasks).
        score_init: magnitude |score| each round starts from (the sign comes from the server).
    """

    rounds: int = 20
    local_steps: int = 5
    batch_size: int = 16
    lr: float = 3e-3
    score_init: float = 0.02


@dataclass
class FederatedRun:
    """Test accuracy after each round and the bytes one client uploads per round."""

    method: str
    accuracy: list[float] = field(default_factory=list)
    bytes_per_round: int = 0
    kept: int = 0

    @property
    def final_accuracy(self) -> float:
        """Test accuracy after the last round."""
        return self.accuracy[-1]

    def late_accuracy(self, rounds: int) -> float:
        """Mean test accuracy over the last ``rounds`` rounds (less noisy than the last one)."""
        rounds = check_int("rounds", rounds, 1, len(self.accuracy))
        return sum(self.accuracy[-rounds:]) / rounds


def iid_split(x: torch.Tensor, y: torch.Tensor, n_clients: int, *,
              seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffle the rows and deal them into ``n_clients`` near-equal shards (i.i.d. clients)."""
    n_clients = check_int("n_clients", n_clients, 2, len(y))
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    return [(x[idx], y[idx]) for idx in order.tensor_split(n_clients)]


def _accuracy(model: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor,
              y: torch.Tensor) -> float:
    with torch.no_grad():
        return (functional_call(model, params, (x,)).argmax(1) == y).float().mean().item()


def _train_clients(loss_fn, start: dict[str, torch.Tensor],
                   clients: list[tuple[torch.Tensor, torch.Tensor]], config: "FederatedConfig",
                   gen: torch.Generator, state: dict | None = None) -> dict[str, torch.Tensor]:
    """``local_steps`` Adam steps on every client at once (the K clients vectorised by vmap).

    ``start`` holds each trained tensor stacked over clients, (K, ...); ``loss_fn(params, x, y)``
    is one client's loss. Each client samples its batches from its own shard. ``state``, if
    given, carries the clients' Adam moments from one call to the next (filled on first use).
    """
    k = len(clients)
    n_max = max(len(y) for _, y in clients)
    xs = torch.stack([F.pad(x, (0, 0, 0, 0, 0, 0, 0, n_max - len(x))) for x, _ in clients])
    ys = torch.stack([F.pad(y, (0, n_max - len(y))) for _, y in clients])  # (K, n_max)
    lens = torch.tensor([len(y) for _, y in clients]).unsqueeze(1)  # (K, 1)
    grad_fn = torch.func.vmap(torch.func.grad(loss_fn))
    params = {n: t.detach().clone() for n, t in start.items()}
    state = {} if state is None else state
    if not state:
        state.update(m1={n: torch.zeros_like(t) for n, t in params.items()},
                     m2={n: torch.zeros_like(t) for n, t in params.items()}, step=0)
    m1, m2 = state["m1"], state["m2"]
    b1, b2, eps = 0.9, 0.999, 1e-8
    rows = torch.arange(k).unsqueeze(1)  # (K, 1)
    with one_thread():  # tiny per-client batches: one thread is faster
        for _ in range(config.local_steps):
            state["step"] += 1
            step = state["step"]
            idx = (torch.rand(k, config.batch_size, generator=gen) * lens).long()  # (K, B)
            grads = grad_fn(params, xs[rows, idx], ys[rows, idx])
            for n, g in grads.items():  # Adam, per client and coordinate
                m1[n].mul_(b1).add_(g, alpha=1 - b1)
                m2[n].mul_(b2).addcmul_(g, g, value=1 - b2)
                denom = (m2[n] / (1 - b2 ** step)).sqrt_().add_(eps)
                params[n] -= config.lr * (m1[n] / (1 - b1 ** step)) / denom
    return params


def _check_fed(model, clients, test, config):
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(clients, (list, tuple)) or len(clients) < 2:
        raise ValueError("clients must be a list of at least 2 (images, labels) shards")
    if not isinstance(test, (list, tuple)) or len(test) != 2:
        raise TypeError("test must be an (images, labels) pair")
    if not isinstance(config, FederatedConfig):
        raise TypeError(f"config must be a FederatedConfig, got {type(config).__name__}")
    check_int("config.rounds", config.rounds, 1)
    check_int("config.local_steps", config.local_steps, 1)
    check_int("config.batch_size", config.batch_size, 1)
    check_real("config.lr", config.lr, 0.0, strict=True)
    check_real("config.score_init", config.score_init, 0.0, strict=True)


def run_supermask(model: nn.Module, masks: dict[str, torch.Tensor],
                  clients: list[tuple[torch.Tensor, torch.Tensor]],
                  test: tuple[torch.Tensor, torch.Tensor], *, kind: str = "sign",
                  config: FederatedConfig = FederatedConfig(), seed: int = 0,
                  name: str | None = None) -> FederatedRun:
    """Federated training of a sign (or {0, 1}) supermask over ``model``'s kept initial weights.

    Each client keeps real-valued scores (all ``+score_init`` at the start) and its Adam
    moments from round to round. A round: every client sets its scores' signs to the global
    bits (keeping their magnitudes), takes ``local_steps`` Adam steps, packs its P bits
    (q(score) = +1, or 1 for ``binary``) into ceil(P / 8) bytes and uploads them; the server
    takes the per-weight majority vote. Weights and biases never change.

    Args:
        model: the network at initialisation (left unchanged).
        masks: ``{name: bool mask}`` from :func:`synflow_masks` or :func:`random_masks`.
        clients: K shards of (images, labels).
        test: held-out (images, labels) on which the global model is scored each round.
        kind: ``"sign"`` (HideNseek) or ``"binary"`` (a {0, 1} supermask).
        config: the shared recipe.
        seed: seeds the clients' batches.
        name: the run's label (default: ``kind``).
    """
    _check_fed(model, clients, test, config)
    if kind not in MASK_KINDS:
        raise ValueError(f"kind must be one of {MASK_KINDS}, got {kind!r}")
    weights = prunable_weights(model)
    if set(masks) != set(weights) or any(masks[n].shape != w.shape for n, w in weights.items()):
        raise ValueError("masks must have one bool tensor per prunable weight, of its shape")
    init = {n: w.detach() for n, w in weights.items()}
    fixed = {n: p.detach() for n, p in model.named_parameters() if n not in init}
    kept = kept_count(masks)
    run = FederatedRun(name or kind, kept=kept)
    gen = torch.Generator().manual_seed(seed)
    global_bits = torch.ones(kept, dtype=torch.bool)  # start from the pruned initial network

    def as_scores(bits: torch.Tensor) -> dict[str, torch.Tensor]:
        scores = {n: torch.zeros_like(w) for n, w in init.items()}
        start = 0
        for n, m in masks.items():  # scatter the P kept bits back into the layers
            k = int(m.sum())
            scores[n][m] = (bits[start:start + k].float() * 2 - 1) * config.score_init
            start += k
        return scores

    def loss_fn(scores: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        params = {**fixed, **supermask_weights(init, masks, scores, kind)}
        return F.cross_entropy(functional_call(model, params, (x,)), y)

    scores = as_scores(global_bits)  # every client starts at +score_init
    local = {n: s.expand(len(clients), *s.shape).clone() for n, s in scores.items()}
    adam: dict = {}
    # show: start round
    for _ in range(config.rounds):
        signs = {n: torch.where(s >= 0, 1.0, -1.0)
                 for n, s in as_scores(global_bits).items()}
        # each client keeps its scores' magnitudes and takes the global signs
        start = {n: signs[n] * local[n].abs() for n in local}
        local = _train_clients(loss_fn, start, clients, config, gen, adam)
        uploads = []
        for c in range(len(clients)):  # q(score) = +1 (sign) or 1 (binary)
            bits = torch.cat([local[n][c][m] > 0 if kind == "binary"
                              else local[n][c][m] >= 0
                              for n, m in masks.items()])  # (P,)
            uploads.append(pack_bits(bits))  # ceil(P / 8) bytes
        run.bytes_per_round = uploads[0].numel()
        received = torch.stack([unpack_bits(u, kept) for u in uploads])
        global_bits = majority_vote(received, global_bits)  # (P,)
        # show: end round
        final = {**fixed, **supermask_weights(init, masks, as_scores(global_bits), kind)}
        run.accuracy.append(_accuracy(model, final, *test))
    return run


def run_fedavg(model: nn.Module, clients: list[tuple[torch.Tensor, torch.Tensor]],
               test: tuple[torch.Tensor, torch.Tensor], *,
               config: FederatedConfig = FederatedConfig(), seed: int = 0) -> FederatedRun:
    """Dense FedAvg: clients train every parameter with Adam, upload them as float32.

    The server averages the clients' parameters weighted by their number of images.
    """
    _check_fed(model, clients, test, config)
    global_params = {n: p.detach().clone() for n, p in model.named_parameters()}
    n_values = sum(p.numel() for p in global_params.values())
    run = FederatedRun("FedAvg (float32)", bytes_per_round=4 * n_values, kept=n_values)
    gen = torch.Generator().manual_seed(seed)
    total = sum(len(y) for _, y in clients)
    def loss_fn(params: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(model, params, (x,)), y)

    weight = torch.tensor([len(y) / total for _, y in clients])  # (K,)
    for _ in range(config.rounds):
        start = {n: p.expand(len(clients), *p.shape) for n, p in global_params.items()}
        trained = _train_clients(loss_fn, start, clients, config, gen)  # (K, ...)
        global_params = {n: torch.tensordot(weight, t, dims=1) for n, t in trained.items()}
        run.accuracy.append(_accuracy(model, global_params, *test))
    return run


def supermask_figure(runs: dict[float, list[FederatedRun]], dense: FederatedRun):
    """Test accuracy against cumulative bytes uploaded per client; a slider picks rho.

    ``runs[rho]`` holds the masked runs at density rho; ``dense`` (FedAvg) shows at every rho.
    """
    import plotly.graph_objects as go

    from labkit.plotting import PALETTE, styled

    def curve(run: FederatedRun, colour: str, visible: bool) -> go.Scatter:
        sent = [run.bytes_per_round * (r + 1) for r in range(len(run.accuracy))]
        return go.Scatter(x=sent, y=run.accuracy, mode="lines+markers", visible=visible,
                          name=f"{run.method} ({run.bytes_per_round:,} B/round)",
                          line=dict(color=colour))

    fig = go.Figure()
    densities = list(runs)
    for i, rho in enumerate(densities):
        for j, run in enumerate(runs[rho]):
            fig.add_trace(curve(run, PALETTE[(j + 1) % len(PALETTE)], i == 0))
    fig.add_trace(curve(dense, PALETTE[0], True))
    per = len(runs[densities[0]])
    steps = [dict(label=f"{rho:g}", method="update",
                  args=[{"visible": [k // per == i for k in range(per * len(densities))]
                         + [True]}])
             for i, rho in enumerate(densities)]
    fig.update_xaxes(type="log")
    fig.update_layout(sliders=[dict(active=0, steps=steps, currentvalue=dict(
        prefix="density rho = "), pad=dict(t=50))], margin=dict(b=140))
    return styled(fig, title="Test accuracy against upload, per density",
                  x_title="bytes uploaded per client (cumulative, log scale)",
                  y_title="test accuracy (fraction of 360 digits)")
