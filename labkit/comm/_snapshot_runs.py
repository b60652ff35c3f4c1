"""Training runs with erasure-coded in-memory snapshots: real ranks, a simulator, timings.

A small MLP regresses a noisy teacher, trained data-parallel with the optimiser state sharded
ZeRO-style: every rank computes a gradient on its own batch, the ranks average the gradients
(gathered and summed in rank order, so the simulator can repeat the arithmetic), each rank runs
Adam on its slice of the flat parameter vector with its own moments, and the slices are
gathered back. A rank's shard of the training state is its parameter slice, its Adam moments,
its RNG state (input noise) and its data position; every ``every`` steps it is serialised and
handed to a :class:`~labkit.comm.snapshot.SnapshotWriter`, whose thread encodes the parity and
writes the rank's store.

Section: chapter 12, "In-memory fault tolerance".
"""

from __future__ import annotations

import hashlib
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from ..plotting import PALETTE
from ..runtime import one_thread
from .report import slider_figure
from .snapshot import (SnapshotWriter, encode_snapshot, latest_common_step, load_snapshot,
                       pack_state, rebuild_shards, snapshot_root, unpack_state)

DIM, N_DATA, BATCH, NOISE = 16, 512, 32, 0.05


def _model(width: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(DIM, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(),
                         nn.Linear(width, 1))


def _data(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(N_DATA, DIM, generator=g)
    y = torch.tanh(x @ torch.randn(DIM, 1, generator=g)) + 0.1 * torch.randn(N_DATA, 1, generator=g)
    return x, y


def _bounds(d: int, world_size: int, rank: int) -> tuple[int, int]:
    per = -(-d // world_size)
    return min(rank * per, d), min((rank + 1) * per, d)


class _Rank:
    """One rank's training state: the full parameters, and its own shard of the rest."""

    def __init__(self, rank: int, world_size: int, width: int, seed: int, lr: float) -> None:
        self.rank, self.world_size, self.lr = rank, world_size, lr
        self.model = _model(width, seed)
        self.x, self.y = _data(seed)
        self.theta = parameters_to_vector(self.model.parameters()).detach().clone()
        self.lo, self.hi = _bounds(self.theta.numel(), world_size, rank)
        self.exp_avg = torch.zeros(self.hi - self.lo)
        self.exp_avg_sq = torch.zeros(self.hi - self.lo)
        self.gen = torch.Generator().manual_seed(1000 * seed + rank)
        self.data_pos = rank * BATCH
        self.step = 0

    def grad(self) -> tuple[torch.Tensor, float]:
        """Gradient of the mean squared error on the next batch (noisy inputs)."""
        idx = (self.data_pos + torch.arange(BATCH)) % N_DATA
        self.data_pos += self.world_size * BATCH
        x = self.x[idx] + NOISE * torch.randn(BATCH, DIM, generator=self.gen)
        vector_to_parameters(self.theta, self.model.parameters())
        self.model.zero_grad()
        loss = ((self.model(x) - self.y[idx]) ** 2).mean()
        loss.backward()
        return parameters_to_vector(p.grad for p in self.model.parameters()), loss.item()

    def adam(self, grad: torch.Tensor, b1: float = 0.9, b2: float = 0.999) -> torch.Tensor:
        """Adam on this rank's slice; returns the new slice."""
        g = grad[self.lo:self.hi]
        t = self.step + 1
        self.exp_avg.mul_(b1).add_(g, alpha=1 - b1)
        self.exp_avg_sq.mul_(b2).addcmul_(g, g, value=1 - b2)
        m_hat = self.exp_avg / (1 - b1 ** t)
        v_hat = self.exp_avg_sq / (1 - b2 ** t)
        return self.theta[self.lo:self.hi] - self.lr * m_hat / (v_hat.sqrt() + 1e-8)

    def shard(self) -> dict[str, Any]:
        """This rank's part of the training state, as a snapshot records it."""
        return dict(step=self.step, data_pos=self.data_pos, rng=self.gen.get_state(),
                    theta=self.theta[self.lo:self.hi].clone(), exp_avg=self.exp_avg.clone(),
                    exp_avg_sq=self.exp_avg_sq.clone())

    def restore(self, shards: Sequence[dict[str, Any]]) -> None:
        """Load this rank's shard and the parameter slices of all ranks."""
        own = shards[self.rank]
        self.theta = torch.cat([s["theta"] for s in shards])
        self.step, self.data_pos = own["step"], own["data_pos"]
        self.gen.set_state(own["rng"])
        self.exp_avg, self.exp_avg_sq = own["exp_avg"], own["exp_avg_sq"]


# How many complete snapshots each rank keeps. One snapshot is in flight per rank, and the
# all-gather of every step keeps the ranks within one snapshot of each other: when a job dies,
# one rank may have finished snapshot k + 1 (and, keeping two, dropped k - 1) while a slower
# one is still writing k, its newest complete one being k - 1. Keeping three leaves k - 1 on
# every rank, so the survivors always share a complete snapshot.
KEEP = 3


def _average(grads: Sequence[torch.Tensor]) -> torch.Tensor:
    total = grads[0].clone()
    for g in grads[1:]:  # rank order, as in the simulator
        total += g
    return total / len(grads)


def _gather(obj: Any, world_size: int) -> list[Any]:
    out: list[Any] = [None] * world_size
    dist.all_gather_object(out, obj)
    return out


def snapshot_training(rank: int, world_size: int, *, steps: int, every: int, m: int,
                      root: str, width: int = 32, seed: int = 0, lr: float = 3e-3,
                      crash: tuple[int, int] | None = None, resume: bool = False) -> dict:
    """Worker for :func:`labkit.dist.launch`: train, snapshotting every ``every`` steps.

    Args:
        root: the folder holding one snapshot folder per rank, ``rank<r>``.
        crash: ``(rank, step)``: that rank ends with ``os._exit(3)`` before that step.
        resume: rebuild the latest common snapshot (lost ranks' folders may be gone) first.

    Returns:
        ``theta`` (final parameters), ``losses`` (this rank's), ``resumed_from`` (step or
        ``None``), ``rebuilt`` (SHA-256 hex of every rebuilt shard, by rank).
    """
    me = _Rank(rank, world_size, width, seed, lr)
    dirs = [Path(root) / f"rank{r}" for r in range(world_size)]
    resumed_from, rebuilt = None, {}
    if resume:
        resumed_from = latest_common_step(dirs)
        stores = [load_snapshot(d, resumed_from) for d in dirs]
        shards = rebuild_shards(stores, m)
        rebuilt = {r: hashlib.sha256(shards[r]).hexdigest()
                   for r, st in enumerate(stores) if st is None}
        me.restore([unpack_state(s) for s in shards])
        # every rank has read the snapshots before any writer creates its (empty) folder:
        # a rebuilt rank's new folder must not hide the common snapshot from a slower rank
        dist.barrier()
    writer = SnapshotWriter(dirs[rank], keep=KEEP)
    losses = []
    while me.step < steps:
        if crash is not None and rank == crash[0] and me.step == crash[1]:
            os._exit(3)
        grad, loss = me.grad()
        losses.append(loss)
        new = me.adam(_average(_gather(grad, world_size)))
        me.theta = torch.cat(_gather(new, world_size))
        me.step += 1
        if me.step % every == 0:
            blobs = _gather(pack_state(me.shard()), world_size)
            writer.submit(me.step, lambda b=blobs: encode_snapshot(b, m)[rank])
    writer.close()
    return dict(theta=me.theta, losses=losses, resumed_from=resumed_from, rebuilt=rebuilt)


def simulate_training(world_size: int, *, steps: int, width: int = 32, seed: int = 0,
                      lr: float = 3e-3) -> dict:
    """The same training for ``world_size`` ranks in this process, never interrupted."""
    with one_thread():
        ranks = [_Rank(r, world_size, width, seed, lr) for r in range(world_size)]
        losses = []
        for _ in range(steps):
            out = [r.grad() for r in ranks]
            losses.append(sum(loss for _, loss in out) / world_size)
            avg = _average([g for g, _ in out])
            theta = torch.cat([r.adam(avg) for r in ranks])
            for r in ranks:
                r.theta, r.step = theta, r.step + 1
    return dict(theta=theta, losses=losses, shards=[pack_state(r.shard()) for r in ranks])


def _median_time(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """Median and median absolute deviation of ``repeats`` timings of ``fn()``, in seconds."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return med, statistics.median(abs(t - med) for t in times)


def overhead_study(widths: Sequence[int], *, repeats: int = 7, world_size: int = 4,
                   m: int = 2, disk_dir: str | None = None) -> list[dict]:
    """Per width: the blocking cost of a snapshot, of a disk checkpoint, and of a step.

    Times one training step of the MLP (one rank holding the whole state), the blocking part of
    a snapshot (copying the state: parameters, moments, RNG state), the background part
    (serialising it, encoding the stores of ``world_size`` such shards and writing one rank's
    to the snapshot root), and a disk checkpoint (``torch.save`` to a file in ``disk_dir``
    plus ``fsync``, all blocking). Medians of
    ``repeats`` timings, in seconds; ``disk_mad`` is the checkpoint's median absolute deviation
    and ``timer_noise`` the jitter of an empty interval.
    """
    rows = []
    with one_thread(), tempfile.TemporaryDirectory(dir=disk_dir) as tmp:
        for width in widths:
            me = _Rank(0, 1, width, 0, 1e-3)

            def step() -> None:
                me.theta = me.adam(me.grad()[0])

            def checkpoint() -> None:
                with open(Path(tmp) / "ckpt.pt", "wb") as f:
                    torch.save(me.shard(), f)
                    f.flush()
                    os.fsync(f.fileno())

            blob = pack_state(me.shard())

            def background() -> None:
                packed = pack_state(me.shard())
                store = encode_snapshot([packed] * world_size, m)[0]
                with tempfile.TemporaryDirectory(dir=snapshot_root()) as shm:
                    for name, data in store.items():
                        (Path(shm) / name).write_bytes(data)

            step()
            t_step, _ = _median_time(step, repeats)
            t_snap, _ = _median_time(me.shard, repeats)
            t_bg, _ = _median_time(background, max(2, repeats // 3))
            t_disk, mad_disk = _median_time(checkpoint, repeats)
            rows.append(dict(width=width, params=me.theta.numel(), state_bytes=len(blob),
                             step=t_step, snapshot=t_snap, background=t_bg, disk=t_disk,
                             disk_mad=mad_disk, timer_noise=timer_noise()))
    return rows


def timer_noise(samples: int = 101) -> float:
    """The 90th percentile of timings of an empty interval (seconds): the timer's own jitter."""
    times = []
    for _ in range(samples):
        t0 = time.perf_counter()
        times.append(time.perf_counter() - t0)
    return sorted(times)[int(0.9 * (samples - 1))]


def overhead_figure(rows: Sequence[dict], ks: Sequence[int]) -> go.Figure:
    """Overhead (blocking time / training time) vs the interval k; a slider picks the model."""
    panels, labels, titles = [], [], []
    for row in rows:
        traces = [go.Scatter(x=list(ks), y=[100 * row[key] / (k * row["step"]) for k in ks],
                             mode="lines+markers", name=name, line=dict(color=color))
                  for key, name, color in (("snapshot", "in-memory snapshot", PALETTE[0]),
                                           ("disk", "torch.save + fsync", PALETTE[1]))]
        traces.append(go.Scatter(x=[ks[0], ks[-1]], y=[5, 5], mode="lines", name="5 %",
                                 line=dict(color=PALETTE[7], dash="dot")))
        panels.append(traces)
        labels.append(f"{row['params']:,}")
        titles.append(f"Blocking overhead vs snapshot interval, MLP of {row['params']:,} "
                      "parameters (%)")
    fig = slider_figure(panels, labels, titles, active=len(rows) - 1, prefix="parameters: ",
                        x_title="interval k (steps between snapshots)",
                        y_title="overhead (% of training time)")
    fig.update_xaxes(type="log")
    fig.update_yaxes(type="log")
    return fig
