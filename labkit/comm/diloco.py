"""DiLoCo and Streaming DiLoCo: rare outer steps, synced one fragment at a time.

DiLoCo lets each of M workers take ``H`` inner AdamW steps on its own data, then averages the
*outer gradients* (pseudo-gradients) ``delta_m = theta_global - theta_m`` and applies them to the
global parameters with Nesterov momentum (outer learning rate ``outer_lr``, momentum ``mu``);
every worker then restarts from the new global parameters. Streaming DiLoCo (Douillard et al.,
"Streaming DiLoCo with overlapping communication", eq. 1-3 and Algorithm 1) cuts the parameters
into ``P`` fragments that sync in turn, fragment ``p`` at steps ``t = kH - pH/P``, so that a
sync carries ``1/P`` of the parameters; the averaged result of a sync arrives ``tau`` steps
later, while the workers keep training, and is merged as
``theta_m <- alpha * theta_m + (1 - alpha) * theta_global``; the outer gradients travel in
4 bits.

Here the workers are simulated in one process (same model object, their own parameters,
AdamW states and data streams); the bytes are those a ring all-reduce of each sync's payload
would send per worker. Fragments are equal slices of the flattened parameter vector, which is
in layer order, so each covers consecutive layers.

Section: chapter 12, "Streaming DiLoCo".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go
import torch

from labkit.comm._onebit_runs import _loss_grad
from labkit.data import stdlib_corpus
from labkit.lm import GPT, GPTConfig, evaluate
from labkit.validation import check_int, check_real, check_tensor

__all__ = ["fragment_schedule", "outer_step", "quantize_outer", "run_training", "sync_bytes",
           "bytes_figure"]

_CORPUS_BYTES = 400_000
_EVAL_BATCHES = 8


# show: start quantize
def quantize_outer(delta: torch.Tensor, bits: int = 4, group: int = 64) -> torch.Tensor:
    """Round ``delta`` to ``bits``-bit signed integers with one float32 scale per ``group``.

    Symmetric and round-to-nearest: ``q = round(x / s)`` in ``[-(2^(b-1) - 1), 2^(b-1) - 1]``
    with ``s = max|x| / (2^(b-1) - 1)`` per group; returns the dequantised tensor ``q * s``.
    ``bits=32`` returns ``delta`` unchanged. ``delta.numel()`` must be a multiple of ``group``.
    """
    check_tensor("delta", delta, dims=1, dtype=torch.float32)
    check_int("bits", bits, 2, 32)
    check_int("group", group, 1)
    if bits == 32:
        return delta
    if delta.numel() % group:
        raise ValueError(f"delta's length {delta.numel()} must be a multiple of group={group}")
    levels = 2 ** (bits - 1) - 1
    x = delta.view(-1, group)
    scale = x.abs().amax(dim=1, keepdim=True) / levels
    q = torch.round(x / scale.clamp_min(1e-30)).clamp(-levels, levels)
    return (q * scale).view(-1)
# show: end quantize


def sync_bytes(numel: int, world_size: int, bits: int = 32, group: int = 64) -> float:
    """Bytes one worker sends in a ring all-reduce of ``numel`` outer-gradient entries.

    ``2 (M - 1) / M`` times the payload: ``numel * bits / 8`` plus a float32 scale per
    ``group`` entries when ``bits < 32``.
    """
    check_int("numel", numel, 0)
    check_int("world_size", world_size, 2)
    check_int("bits", bits, 2, 32)
    check_int("group", group, 1)
    payload = numel * bits / 8 + (4 * math.ceil(numel / group) if bits < 32 else 0)
    return 2 * (world_size - 1) / world_size * payload


def fragment_schedule(steps: int, every: int, fragments: int) -> dict[int, list[int]]:
    """The steps (1-based) at which each fragment syncs: ``{step: [fragment, ...]}``.

    Fragment ``p`` syncs at ``t = k * every - p * every // fragments`` for ``k >= 1``.
    """
    check_int("steps", steps, 1)
    check_int("every", every, 1)
    check_int("fragments", fragments, 1, every)
    plan: dict[int, list[int]] = {}
    for p in range(fragments):
        offset = p * every // fragments
        for t in range(every - offset, steps + 1, every):
            plan.setdefault(t, []).append(p)
    return plan


# show: start outer
def outer_step(theta: torch.Tensor, momentum: torch.Tensor, deltas: Sequence[torch.Tensor], *,
               lr: float, mu: float, bits: int = 32, group: int = 64) -> None:
    """One outer Nesterov step on ``theta`` (a fragment of the global parameters), in place.

    The workers' outer gradients ``delta_m = theta - theta_m`` are quantised, averaged, and
    applied as ``u <- mu u + delta``, ``theta <- theta - lr (delta + mu u)``.
    """
    delta = torch.stack([quantize_outer(d, bits, group) for d in deltas]).mean(0)
    momentum.mul_(mu).add_(delta)
    theta.sub_(lr * (delta + mu * momentum))
# show: end outer


def _setup(model: dict, seed: int) -> tuple[GPT, Any, torch.Tensor]:
    corpus = stdlib_corpus(max_bytes=_CORPUS_BYTES, seed=0)
    torch.manual_seed(seed)
    net = GPT(GPTConfig(**model))
    return net, corpus, torch.nn.utils.parameters_to_vector(net.parameters()).detach()


def _grad(net: GPT, corpus: Any, params: torch.Tensor, gen: torch.Generator,
          batch_size: int) -> tuple[float, torch.Tensor]:
    """Loss and flat gradient of one training batch at ``params`` (the 1-bit Adam runs' helper)."""
    return _loss_grad(net, corpus, params, gen, batch_size, d_pad=params.numel())


@torch.no_grad()
def _val_loss(net: GPT, corpus: Any, params: torch.Tensor, batch_size: int) -> float:
    d = sum(p.numel() for p in net.parameters())
    torch.nn.utils.vector_to_parameters(params[:d], net.parameters())
    return evaluate(net, corpus, batches=_EVAL_BATCHES, batch_size=batch_size, seed=12345)


def _adamw(params: torch.Tensor, lr: float) -> tuple[torch.nn.Parameter, torch.optim.AdamW]:
    p = torch.nn.Parameter(params.clone())
    return p, torch.optim.AdamW([p], lr=lr, betas=(0.9, 0.95), weight_decay=0.0)


def run_training(method: str, *, model: dict, steps: int, workers: int = 2, batch_size: int = 8,
                 lr: float = 3e-3, every: int = 10, fragments: int = 1, delay: int = 0,
                 alpha: float = 0.0, bits: int = 32, outer_lr: float = 0.7, mu: float = 0.9,
                 seed: int = 0, group: int = 64) -> dict:
    """Train a tiny GPT with ``method`` "ddp", "single" or "diloco" (streaming when
    ``fragments > 1`` or ``delay > 0``), all workers simulated in this process.

    "ddp" averages the M workers' gradients every step (one AdamW); "single" trains on worker
    0's data alone. "diloco" runs ``H = every`` inner AdamW steps per fragment sync with
    ``fragments`` fragments, results applied ``delay`` steps late, mixed with weight ``alpha``
    on the local parameters, outer gradients sent in ``bits`` bits.

    Returns the mean training loss per step, the bytes one worker sent at each step, the
    held-out loss of the final global parameters (each fragment as of its last outer step;
    a result still in flight at the end is applied) and the padded parameter count.
    """
    if method not in ("ddp", "single", "diloco"):
        raise ValueError(f"method must be 'ddp', 'single' or 'diloco', got {method!r}")
    check_int("steps", steps, 1)
    check_int("workers", workers, 2)
    check_int("batch_size", batch_size, 1)
    check_int("every", every, 1)
    check_int("fragments", fragments, 1, every)
    check_int("delay", delay, 0, every - 1)
    check_int("bits", bits, 2, 32)
    check_int("group", group, 1)
    lr = check_real("lr", lr, 0.0, strict=True)
    outer_lr = check_real("outer_lr", outer_lr, 0.0, strict=True)
    alpha, mu = check_real("alpha", alpha, 0.0), check_real("mu", mu, 0.0)
    if alpha > 1 or mu >= 1:
        raise ValueError(f"alpha must be in [0, 1] and mu in [0, 1), got {alpha}, {mu}")
    net, corpus, init = _setup(model, seed)
    d = init.numel()
    unit = fragments * group
    d_pad = -(-d // unit) * unit
    theta = torch.cat([init, torch.zeros(d_pad - d)])
    gens = [torch.Generator().manual_seed(1000 * seed + m) for m in range(workers)]
    losses, sent = [], []
    if method in ("ddp", "single"):
        ranks = range(workers) if method == "ddp" else range(1)
        p, opt = _adamw(theta, lr)
        per_step = sync_bytes(d, workers) if method == "ddp" else 0.0
        for _ in range(steps):
            out = [_grad(net, corpus, p.detach(), gens[m], batch_size) for m in ranks]
            p.grad = torch.stack([g for _, g in out]).mean(0)
            opt.step()
            losses.append(sum(loss for loss, _ in out) / len(out))
            sent.append(per_step)
        theta = p.detach()
    else:
        size = d_pad // fragments
        local = [_adamw(theta, lr) for _ in range(workers)]
        momentum = torch.zeros(d_pad)
        plan = fragment_schedule(steps, every, fragments)
        pending: dict[int, list[int]] = {}
        for t in range(1, steps + 1):
            out = []
            for (p, opt), gen in zip(local, gens):
                out.append(_grad(net, corpus, p.detach(), gen, batch_size))
                p.grad = out[-1][1]
                opt.step()
            losses.append(sum(loss for loss, _ in out) / len(out))
            # show: start stream
            arrived = pending.pop(t, [])
            syncs = plan.get(t, [])
            with torch.no_grad():
                for f in syncs:
                    s = slice(f * size, (f + 1) * size)
                    outer_step(theta[s], momentum[s], [theta[s] - p[s] for p, _ in local],
                               lr=outer_lr, mu=mu, bits=bits, group=group)
                    if delay and t + delay <= steps:
                        pending.setdefault(t + delay, []).append(f)
                    else:
                        arrived.append(f)
                for f in arrived:  # merge: theta_m <- alpha theta_m + (1 - alpha) theta
                    s = slice(f * size, (f + 1) * size)
                    mix = alpha if delay else 0.0
                    for p, _ in local:
                        p[s] = mix * p[s] + (1 - mix) * theta[s]
            # show: end stream
            sent.append(len(syncs) * sync_bytes(size, workers, bits, group))
    return dict(method=method, losses=losses, bytes=sent, numel=d, padded=d_pad,
                val_loss=_val_loss(net, corpus, theta, batch_size))


def bytes_figure(runs: dict[str, dict], reference: dict) -> go.Figure:
    """Bytes sent per worker at each step: one run per dropdown entry, with ``reference``
    (DDP) as a dashed line; log scale."""
    from labkit.plotting import PALETTE, styled

    fig = go.Figure()
    names = list(runs)
    for k, name in enumerate(names):
        ys = [b if b > 0 else None for b in runs[name]["bytes"]]
        fig.add_trace(go.Bar(x=list(range(1, len(ys) + 1)), y=ys, name=name, visible=k == 0,
                             marker_color=PALETTE[k % len(PALETTE)]))
    ref = reference["bytes"]
    fig.add_trace(go.Scatter(x=list(range(1, len(ref) + 1)), y=ref, name="DDP, every step",
                             mode="lines", line=dict(dash="dash", color="gray")))
    buttons = [dict(label=name, method="update",
                    args=[{"visible": [j == k for j in range(len(names))] + [True]}])
               for k, name in enumerate(names)]
    fig.update_layout(updatemenus=[dict(buttons=buttons, x=1.0, y=1.15, xanchor="right")],
                      yaxis_type="log", bargap=0.0)
    return styled(fig, title="Bytes sent per worker at each step", x_title="step",
                  y_title="bytes (log scale)")
