"""CO2: local AdamW steps with the outer all-reduce one round late, fully overlapped.

*CO2: Efficient Distributed Training with Full Communication-Computation Overlap* (``co2``).
Each of M workers runs H local AdamW steps from the shared point ``x_t``; its pseudo-gradient
``delta_i = x_t - x_{t,H}^i`` goes into an all-reduce that runs during the NEXT round, so the
average of round ``t - 1`` is applied at the end of round ``t``:

    m_t     = beta * m_{t-1} + lam * avg_delta_{t-1}      (staleness gap penalty lam)
    m_t     = m_t * min(1, c * |avg_delta_{t-1}| / |m_t|)  (outer momentum clipping)
    x_{t+1} = x_t - alpha * m_t

with the penalty ``lam_j = 1 / (1 + |x_t - x_{t-1}|_j / mean|avg_delta_{t-1}|)``: the stale
update was measured at ``x_{t-1}``, and the further the model has moved since, the less of it
is applied. :func:`train_local_sgd` trains a tiny GPT with in-process workers (CO2, or DDP's
synchronous AdamW as the baseline); :func:`round_timing` is a worker for
:func:`labkit.dist.launch` that times real rounds, synchronous or overlapped, on a modelled link.

Section: chapter 12, "CO2".
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
import torch.distributed as dist

from labkit.comm.costmodel import AlphaBeta
from labkit.comm.overlap import CommEngine, link_all_reduce
from labkit.data import stdlib_corpus
from labkit.lm import GPT, GPTConfig, evaluate
from labkit.validation import check_int, check_real

__all__ = ["co2_figure", "co2_outer_step", "round_times", "round_timing", "step_seconds",
           "train_local_sgd"]

_CORPUS_BYTES = 400_000
_EVAL_BATCHES = 4


def co2_outer_step(x: torch.Tensor, prev_x: torch.Tensor, momentum: torch.Tensor,
                   avg_delta: torch.Tensor, *, lr: float, beta: float,
                   penalty: bool = True, clip: float | None = 1.0) -> torch.Tensor:
    """One outer step with a pseudo-gradient one round stale; updates ``momentum`` in place.

    Args:
        x: the current shared point x_t, [d].
        prev_x: x_{t-1}, where ``avg_delta`` was measured, [d].
        momentum: the outer momentum m, [d] (updated in place).
        avg_delta: the workers' mean pseudo-gradient of round t - 1, [d].
        lr: outer learning rate alpha > 0.
        beta: outer momentum in [0, 1).
        penalty: apply the staleness gap penalty.
        clip: c, the most the momentum's norm may exceed |avg_delta| by; None: no clipping.

    Returns:
        x_{t+1}, a new tensor.
    """
    lr = check_real("lr", lr, 0.0, strict=True)
    beta = check_real("beta", beta, 0.0)
    if not beta < 1.0:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    if clip is not None:
        clip = check_real("clip", clip, 0.0, strict=True)
    for name, t in (("prev_x", prev_x), ("momentum", momentum), ("avg_delta", avg_delta)):
        if not isinstance(t, torch.Tensor) or t.shape != x.shape:
            raise ValueError(f"{name} must be a tensor of x's shape {tuple(x.shape)}")
    # show: start outer
    update = avg_delta
    if penalty:  # the stale update was measured at prev_x; we now stand at x
        gap = (x - prev_x).abs()
        scale = avg_delta.abs().mean().clamp_min(1e-12)
        update = avg_delta / (1.0 + gap / scale)
    momentum.mul_(beta).add_(update)
    if clip is not None:  # the momentum may not outrun one round's update
        limit = clip * float(avg_delta.norm())
        norm = float(momentum.norm())
        if norm > limit > 0.0:
            momentum.mul_(limit / norm)
    return x - lr * momentum
    # show: end outer


def _flat(net: GPT) -> torch.Tensor:
    return torch.nn.utils.parameters_to_vector(net.parameters()).detach().clone()


@torch.no_grad()
def _load(net: GPT, x: torch.Tensor) -> None:
    start = 0
    for p in net.parameters():  # copy: the parameters must not alias x
        p.copy_(x[start:start + p.numel()].view_as(p))
        start += p.numel()


@torch.no_grad()
def _val_loss(net: GPT, corpus: Any, x: torch.Tensor, batch_size: int) -> float:
    _load(net, x)
    return evaluate(net, corpus, batches=_EVAL_BATCHES, batch_size=batch_size, seed=12345)


def _local_step(net: GPT, opt: torch.optim.Optimizer, corpus: Any, gen: torch.Generator,
                batch_size: int) -> float:
    xb, yb = corpus.get_batch("train", batch_size=batch_size, block_size=net.cfg.block_size,
                              generator=gen)
    opt.zero_grad(set_to_none=True)
    loss = net(xb, yb).loss
    loss.backward()
    opt.step()
    return float(loss.detach())


def train_local_sgd(method: str, *, workers: int, steps: int, local_steps: int = 1,
                    model: dict, batch_size: int, lr: float, seed: int,
                    outer_lr: float = 0.7, outer_momentum: float = 0.5,
                    penalty: bool = True, clip: float | None = 1.0) -> dict:
    """Train a tiny GPT with ``workers`` in-process data-parallel workers.

    ``method="ddp"``: every step averages the workers' gradients (one batch of
    ``workers * batch_size``) and takes one AdamW step. ``method="co2"``: rounds of
    ``local_steps`` (H) AdamW steps per worker, then :func:`co2_outer_step` with the average
    pseudo-gradient of the previous round. ``method="local"``: synchronous local SGD, the
    same rounds with this round's average applied at once (outer momentum, no penalty or
    clipping). Both see ``steps * workers * batch_size`` sequences.

    Returns:
        ``losses`` (mean training loss per step), ``val_loss`` (held-out, at the end), ``numel``.
    """
    if method not in ("ddp", "local", "co2"):
        raise ValueError(f"method must be 'ddp', 'local' or 'co2', got {method!r}")
    m_workers = check_int("workers", workers, 1)
    check_int("steps", steps, 1)
    h = check_int("local_steps", local_steps, 1)
    if steps % h:
        raise ValueError(f"steps ({steps}) must be a multiple of local_steps ({h})")
    corpus = stdlib_corpus(max_bytes=_CORPUS_BYTES, seed=0)
    torch.manual_seed(seed)
    cfg = GPTConfig(**model)
    nets = [GPT(cfg) for _ in range(1 if method == "ddp" else m_workers)]
    x = _flat(nets[0])
    for net in nets[1:]:
        _load(net, x)
    opts = [torch.optim.AdamW(net.parameters(), lr=lr) for net in nets]
    gens = [torch.Generator().manual_seed(1000 * seed + r) for r in range(m_workers)]
    losses: list[float] = []
    if method == "ddp":
        gen = torch.Generator().manual_seed(1000 * seed)
        for _ in range(steps):
            losses.append(_local_step(nets[0], opts[0], corpus, gen, m_workers * batch_size))
        x = _flat(nets[0])
    else:
        prev_x, mom, pending = x.clone(), torch.zeros_like(x), None
        own = [torch.zeros_like(x) for _ in nets]
        for _ in range(steps // h):
            round_losses = torch.zeros(h)
            deltas = []
            for i, (net, opt, gen) in enumerate(zip(nets, opts, gens)):
                # the shared point, plus this worker's round still in flight
                start = x - own[i] if method == "co2" else x
                _load(net, start)
                for k in range(h):
                    round_losses[k] += _local_step(net, opt, corpus, gen, batch_size)
                deltas.append(start - _flat(net))
            own = deltas
            losses += (round_losses / m_workers).tolist()
            if method == "local":  # synchronous: this round's average, at once
                x = co2_outer_step(x, x, mom, torch.stack(deltas).mean(0), lr=outer_lr,
                                   beta=outer_momentum, penalty=False, clip=None)
                continue
            if pending is not None:  # last round's average has arrived
                x, prev_x = co2_outer_step(x, prev_x, mom, pending, lr=outer_lr,
                                           beta=outer_momentum, penalty=penalty,
                                           clip=clip), x
            pending = torch.stack(deltas).mean(0)  # in flight during the next round
            if not math.isfinite(losses[-1]):
                break
        if pending is not None and math.isfinite(losses[-1]):  # wait for the last one
            x = co2_outer_step(x, prev_x, mom, pending, lr=outer_lr, beta=outer_momentum,
                               penalty=penalty, clip=clip)
    return dict(losses=losses, val_loss=_val_loss(nets[0], corpus, x, batch_size),
                numel=x.numel())


def round_times(compute: float, comm: float, rounds: int) -> dict[str, float]:
    """Modelled seconds for ``rounds`` rounds: synchronous (compute, then the all-reduce) and
    CO2 (the all-reduce of round t under the compute of round t + 1; only the last is exposed).
    """
    compute = check_real("compute", compute, 0.0, strict=True)
    comm = check_real("comm", comm, 0.0)
    n = check_int("rounds", rounds, 1)
    return dict(sync=n * (compute + comm),
                co2=n * max(compute, comm) + min(compute, comm))


def round_timing(rank: int, world_size: int, *, model: dict, local_steps: int, rounds: int,
                 batch_size: int, link: AlphaBeta, seed: int) -> dict:
    """Worker for :func:`labkit.dist.launch`: time real rounds of H AdamW steps on this rank,
    first synchronous (the all-reduce of the pseudo-gradient after the compute), then CO2
    (submitted to a :class:`~labkit.comm.overlap.CommEngine`, waited for a round later).

    Returns per-step compute times and the seconds per round of each mode (median).
    """
    check_int("world_size", world_size, 2)
    h = check_int("local_steps", local_steps, 1)
    n = check_int("rounds", rounds, 2)
    if not dist.is_initialized():
        raise ValueError("round_timing runs under labkit.dist.launch")
    corpus = stdlib_corpus(max_bytes=_CORPUS_BYTES, seed=0)
    torch.manual_seed(seed)
    net = GPT(GPTConfig(**model))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed + rank)
    steps: list[float] = []
    out: dict[str, Any] = {}
    for mode in ("sync", "co2"):
        engine: CommEngine | None = None
        ends = []
        dist.barrier()
        for _ in range(n):
            x0 = _flat(net)
            for _ in range(h):
                t0 = time.perf_counter()
                _local_step(net, opt, corpus, gen, batch_size)
                steps.append(time.perf_counter() - t0)
            delta = (x0 - _flat(net)).contiguous()
            if mode == "sync":
                link_all_reduce(delta, link=link)
            else:
                if engine is not None:
                    engine.wait_all()  # last round's average: needed now
                engine = CommEngine(link=link)
                engine.submit(delta, chunk=0)
            ends.append(time.perf_counter())
        if engine is not None:
            engine.wait_all()
        gaps = sorted(b - a for a, b in zip(ends, ends[1:]))
        out[mode] = gaps[len(gaps) // 2]
    steps.sort()
    out["step"] = steps[len(steps) // 2]
    return out


def step_seconds(n_steps: int, *, local_steps: int, step: float, comm: float,
                 method: str) -> list[float]:
    """Modelled wall time at the end of each of ``n_steps`` steps: ``"ddp"`` pays the
    all-reduce after every step, ``"sync"`` after every round, ``"co2"`` only where a round's
    compute is shorter than the previous round's all-reduce."""
    h = check_int("local_steps", local_steps, 1)
    if method == "ddp":
        return [(i + 1) * (step + comm) for i in range(n_steps)]
    if method not in ("sync", "co2"):
        raise ValueError(f"method must be 'ddp', 'sync' or 'co2', got {method!r}")
    per_round = h * step + comm if method == "sync" else max(h * step, comm)
    return [(i // h) * per_round + (i % h + 1) * step for i in range(n_steps)]


def co2_figure(ddp: dict, runs: dict[int, dict], *, step: float, comm: float,
               rounds_shown: int = 3) -> Any:
    """Timeline of a few rounds (top) and training loss against modelled seconds (bottom),
    one slider position per H in ``runs`` (``{H: train_local_sgd(...) result}``)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from labkit.plotting import PALETTE
    fig = make_subplots(rows=2, cols=1, vertical_spacing=0.18, row_heights=[0.35, 0.65],
                        subplot_titles=("rounds on the modelled link",
                                        "training loss against modelled time"))
    hs = sorted(runs)
    per = 6
    for j, h in enumerate(hs):
        vis = j == len(hs) // 2
        for row, mode in ((1, "sync"), (0, "co2")):
            comp_x: list[float | None] = []
            comm_x: list[float | None] = []
            t = 0.0
            for _ in range(rounds_shown):
                comp_x += [t, t + h * step, None]
                start = t + h * step
                comm_x += [start, start + comm, None]
                t = start + comm if mode == "sync" else t + max(h * step, comm)
            name = "synchronous" if mode == "sync" else "CO2"
            for xs, what, color in ((comp_x, "compute", PALETTE[0]),
                                    (comm_x, "all-reduce", PALETTE[1])):
                y = [row + (0.15 if what == "all-reduce" and mode == "co2" else 0.0)
                     if x is not None else None for x in xs]
                fig.add_trace(go.Scatter(
                    x=[1e3 * x if x is not None else None for x in xs], y=y, mode="lines",
                    line=dict(color=color, width=10), name=f"{name}: {what}",
                    visible=vis, showlegend=False), row=1, col=1)
        n = len(runs[h]["losses"])
        fig.add_trace(go.Scatter(
            x=step_seconds(len(ddp["losses"]), local_steps=1, step=step, comm=comm,
                           method="ddp"), y=ddp["losses"], name="DDP (all-reduce every step)",
            line=dict(color=PALETTE[2]), visible=vis), row=2, col=1)
        fig.add_trace(go.Scatter(
            x=step_seconds(n, local_steps=h, step=step, comm=comm, method="co2"),
            y=runs[h]["losses"], name="CO2", line=dict(color=PALETTE[3]), visible=vis),
            row=2, col=1)
    steps = []
    for j, h in enumerate(hs):
        mask = [False] * (per * len(hs))
        mask[per * j:per * (j + 1)] = [True] * per
        steps.append(dict(method="update", label=f"H = {h}", args=[{"visible": mask}]))
    fig.update_layout(sliders=[dict(active=len(hs) // 2, steps=steps, pad=dict(t=50))])
    fig.update_yaxes(tickvals=[0, 1], ticktext=["CO2", "sync"], title_text="schedule",
                     row=1, col=1)
    fig.update_xaxes(title_text="time (ms)", row=1, col=1)
    fig.update_xaxes(title_text="modelled time (s)", row=2, col=1)
    fig.update_yaxes(title_text="training loss (nats)", row=2, col=1)
    return fig
