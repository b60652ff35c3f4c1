"""Data-parallel training of a tiny GPT with Adam or 1-bit Adam, on real or simulated ranks.

The worker :func:`onebit_training` runs under :func:`labkit.dist.launch`; the simulator
:func:`simulate_training` runs the same loop for ``n`` ranks in one process, with the same
arithmetic in the same order (ring all-reduce through :func:`labkit.comm.simulate`), so that
both end with bit-identical parameters when run with one thread.

Section: chapter 12, "1-bit Adam".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go
import torch
import torch.distributed as dist
from plotly.subplots import make_subplots

from labkit.comm.collectives import ByteCounter, ring_all_reduce
from labkit.comm.onebit import (ErrorFeedback, OneBitAdam, compressed_all_reduce,
                                compressed_bytes, padded_size,
                                simulate_compressed_all_reduce)
from labkit.comm.simulator import bytes_per_rank, simulate
from labkit.data import stdlib_corpus
from labkit.lm import GPT, GPTConfig, evaluate
from labkit.validation import check_int, check_real

__all__ = ["compressed_rounds", "loss_figure", "onebit_training", "rank_momenta", "simulate_training"]

_CORPUS_BYTES = 400_000
_EVAL_BATCHES = 4


def _setup(model: dict, seed: int) -> tuple[GPT, Any, torch.Tensor]:
    corpus = stdlib_corpus(max_bytes=_CORPUS_BYTES, seed=0)
    torch.manual_seed(seed)
    net = GPT(GPTConfig(**model))
    return net, corpus, torch.nn.utils.parameters_to_vector(net.parameters()).detach()


def _flat_grad(net: GPT, d_pad: int) -> torch.Tensor:
    out = torch.zeros(d_pad)
    out[:sum(p.numel() for p in net.parameters())] = torch.cat(
        [p.grad.reshape(-1) for p in net.parameters()])
    return out


def _loss_grad(net: GPT, corpus: Any, params: torch.Tensor, gen: torch.Generator,
               batch_size: int, d_pad: int) -> tuple[float, torch.Tensor]:
    d = sum(p.numel() for p in net.parameters())
    torch.nn.utils.vector_to_parameters(params[:d], net.parameters())
    x, y = corpus.get_batch("train", batch_size=batch_size, block_size=net.cfg.block_size,
                            generator=gen)
    net.zero_grad(set_to_none=True)
    loss = net(x, y).loss
    loss.backward()
    return float(loss.detach()), _flat_grad(net, d_pad)


@torch.no_grad()
def _val_loss(net: GPT, corpus: Any, params: torch.Tensor, batch_size: int) -> float:
    d = sum(p.numel() for p in net.parameters())
    torch.nn.utils.vector_to_parameters(params[:d], net.parameters())
    return evaluate(net, corpus, batches=_EVAL_BATCHES, batch_size=batch_size, seed=12345)


def _check_run(run: dict, steps: int) -> int:
    """The number of exact (Adam) steps of ``run``."""
    if run["optimizer"] == "adam":
        return steps
    w = check_real("warmup", run["warmup"], 0.0)
    if not w < 1.0:
        raise ValueError(f"warmup must be in [0, 1), got {w}")
    return max(1, round(w * steps))


def _loop(n: int, ranks: Sequence[int], run: dict, *, model: dict, steps: int,
          batch_size: int, lr: float, seed: int, window: int, rank: int | None) -> dict:
    """One training run; ``rank`` is None in the simulator (all ``ranks`` in-process)."""
    net, corpus, params = _setup(model, seed)
    d = params.numel()
    d_pad = padded_size(d, n)
    params = torch.cat([params, torch.zeros(d_pad - d)])
    opt = OneBitAdam(d_pad, lr=lr, warmup_steps=_check_run(run, steps))
    ef = run.get("error_feedback", True)
    gens = {r: torch.Generator().manual_seed(1000 * seed + r) for r in ranks}
    workers = {r: ErrorFeedback(d_pad) for r in range(n)}
    servers = {r: ErrorFeedback(d_pad // n) for r in range(n)}
    counter = ByteCounter()
    dense, _ = bytes_per_rank("ring_all_reduce", numel=d_pad, world_size=n)
    sim_bytes = 0
    losses, sent, v_change = [], [], []
    v_prev = None
    for t in range(1, steps + 1):
        out = {r: _loss_grad(net, corpus, params, gens[r], batch_size, d_pad) for r in ranks}
        grads = {r: g for r, (_, g) in out.items()}
        if rank is None:
            def average(_g: torch.Tensor) -> torch.Tensor:
                return simulate("ring_all_reduce", [grads[r] for r in range(n)]).outputs[0] / n

            def compressed(_m: torch.Tensor) -> torch.Tensor:
                local = [opt.betas[0] * opt.m + (1 - opt.betas[0]) * grads[r] for r in range(n)]
                return simulate_compressed_all_reduce(
                    local, [workers[r] for r in range(n)], [servers[r] for r in range(n)],
                    enabled=ef)
            my_grad = grads[0]
            sim_bytes += dense[0] if t <= opt.warmup_steps else compressed_bytes(d_pad, n)
        else:
            def average(g: torch.Tensor) -> torch.Tensor:
                return ring_all_reduce(g.clone(), counter=counter, check_shapes=False) / n

            def compressed(m: torch.Tensor) -> torch.Tensor:
                return compressed_all_reduce(m, workers[rank], servers[rank], counter=counter,
                                             enabled=ef)
            my_grad = grads[rank]
        opt.step(params, my_grad, average=average, compressed_average=compressed)
        losses.append(sum(loss for loss, _ in out.values()) / len(out))
        if not math.isfinite(losses[-1]):  # diverged: the rest would be NaN too
            sent.append(counter.sent if rank is not None else sim_bytes)
            break
        sent.append(counter.sent if rank is not None else sim_bytes)
        if t % window == 0 and t <= opt.warmup_steps:
            if v_prev is not None:
                v_change.append(float((opt.v - v_prev).norm() / v_prev.norm()))
            v_prev = opt.v.clone()
    return dict(name=run["name"], losses=losses, bytes=sent, v_change=v_change,
                val_loss=_val_loss(net, corpus, params, batch_size), params=params[:d].clone(),
                numel=d, padded=d_pad, warmup_steps=opt.warmup_steps)


def _check_common(world_size: int, runs: Sequence[dict], steps: int, window: int) -> None:
    check_int("world_size", world_size, 2)
    check_int("steps", steps, 1)
    check_int("window", window, 1)
    for run in runs:
        if run.get("optimizer") not in ("adam", "onebit"):
            raise ValueError(f"run optimizer must be 'adam' or 'onebit', got {run.get('optimizer')!r}")


def onebit_training(rank: int, world_size: int, *, runs: Sequence[dict], model: dict, steps: int,
                    batch_size: int, lr: float, seed: int, window: int = 10) -> list[dict]:
    """Worker for :func:`labkit.dist.launch`: every run of ``runs`` in turn, on this rank.

    A run is ``dict(name=..., optimizer="adam" | "onebit", warmup=w, error_feedback=True)``.
    Returns per run the mean training loss over this rank's batch, cumulative bytes sent by
    this rank, the validation loss and the final parameters.
    """
    _check_common(world_size, runs, steps, window)
    if not dist.is_initialized():
        raise ValueError("onebit_training runs under labkit.dist.launch")
    return [_loop(world_size, [rank], run, model=model, steps=steps, batch_size=batch_size,
                  lr=lr, seed=seed, window=window, rank=rank) for run in runs]


def simulate_training(world_size: int, run: dict, *, model: dict, steps: int, batch_size: int,
                      lr: float, seed: int, window: int = 10) -> dict:
    """:func:`onebit_training` for ``world_size`` simulated ranks in this process (one run).

    Losses are averaged over the simulated ranks' batches; bytes are those of one rank.
    """
    _check_common(world_size, [run], steps, window)
    return _loop(world_size, list(range(world_size)), run, model=model, steps=steps,
                 batch_size=batch_size, lr=lr, seed=seed, window=window, rank=None)


def rank_momenta(world_size: int, *, numel: int, rounds: int, seed: int) -> list[list[torch.Tensor]]:
    """``rounds`` random float32 tensors per rank (``[rank][round]``), the same on every path."""
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(numel, generator=gen) for _ in range(rounds)] for _ in range(world_size)]


def compressed_rounds(rank: int, world_size: int, *, numel: int, rounds: int, seed: int,
                      error_feedback: bool = True) -> dict:
    """Worker: ``rounds`` compressed all-reduces of :func:`rank_momenta`, one error state.

    Returns the outputs, and the bytes this rank sent and received.
    """
    xs = rank_momenta(world_size, numel=numel, rounds=rounds, seed=seed)[rank]
    worker, server = ErrorFeedback(numel), ErrorFeedback(numel // world_size)
    counter = ByteCounter()
    outs = [compressed_all_reduce(x, worker, server, counter=counter, enabled=error_feedback)
            for x in xs]
    return dict(outputs=outs, sent=counter.sent, received=counter.received)


def _smooth(xs: Sequence[float], k: int) -> list[float]:
    return [sum(xs[max(0, i - k + 1):i + 1]) / (i + 1 - max(0, i - k + 1)) for i in range(len(xs))]


def loss_figure(reference: dict, runs: Sequence[dict], *, smooth: int = 10) -> go.Figure:
    """Training loss against step (left) and MB sent per rank (right), one run per dropdown entry.

    ``reference`` (Adam) is drawn in every view; NaN losses (a diverged run) are not drawn.
    """
    from labkit.plotting import PALETTE, styled

    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1)
    owner: list[int] = []
    for i, run in enumerate([reference, *runs]):
        y = _smooth(run["losses"], smooth)
        for col, x in ((1, list(range(1, len(y) + 1))), (2, [b / 2**20 for b in run["bytes"]])):
            fig.add_trace(go.Scatter(x=x, y=y, name=run["name"], showlegend=col == 1,
                                     line=dict(color=PALETTE[i % len(PALETTE)]),
                                     visible=i <= 1), row=1, col=col)
            owner.append(i)
    buttons = [dict(label=run["name"], method="update",
                    args=[{"visible": [o in (0, j + 1) for o in owner]}])
               for j, run in enumerate(runs)]
    fig.update_layout(updatemenus=[dict(buttons=buttons, x=0.0, y=-0.22, xanchor="left",
                                        direction="up")])
    fig.update_xaxes(title_text="step", row=1, col=1)
    fig.update_xaxes(title_text="MB sent per rank", row=1, col=2)
    fig.update_yaxes(title_text="training loss (nats per byte)", row=1, col=1)
    return styled(fig, title=f"Training loss ({smooth}-step mean) against steps and bytes",
                  height=460)
