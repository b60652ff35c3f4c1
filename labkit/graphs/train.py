"""Training recommenders the same way for every model: epochs, early stopping on validation
Recall@K, a wall-clock history, and the cost of one epoch measured on a few batches.

:func:`fit` takes a model that can hand out its final user and item embeddings and a function
that runs one training epoch; it evaluates after every ``eval_every`` epochs, keeps the best
weights by validation Recall@K, stops after ``patience`` evaluations without improvement, and
reports test metrics of the best weights. The history's clock counts training time only
(evaluation is excluded, and is the same work for every model), so curves of different models
can share one time axis. :func:`time_epoch` times a few steps and extrapolates to a full epoch,
for graphs where a whole epoch would not fit the time budget; :func:`loglog_slope` fits the
exponent of a cost that grows as a power of the size.

Section: chapter 01, "UltraGCN" and "GraphHash".
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from tqdm.auto import tqdm

from ..runtime import time_fn
from .interactions import Interactions
from .metrics import RankingMetrics, ranking_metrics

__all__ = ["EpochTiming", "FitResult", "HistoryPoint", "Recommender", "adam", "evaluate", "fit", "loglog_slope",
           "time_epoch"]


def adam(params: Iterable[torch.nn.Parameter], *, lr: float) -> torch.optim.Adam:
    """Adam with the fused kernel (one pass over all parameters, on CPU and CUDA).

    On a small CPU the default multi-tensor Adam can cost more than the model's own step.
    """
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    return torch.optim.Adam(list(params), lr=lr, fused=True)


class Recommender(Protocol):
    """What :func:`fit` needs of a model: final embeddings and its weights."""

    def user_item_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]: ...
    def state_dict(self) -> dict[str, torch.Tensor]: ...
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> object: ...


@dataclass(frozen=True)
class HistoryPoint:
    """One evaluation: training seconds so far, epochs done, validation Recall@K and NDCG@K."""

    seconds: float
    epoch: int
    recall: float
    ndcg: float


@dataclass
class FitResult:
    """The outcome of :func:`fit`.

    Attributes:
        history: one :class:`HistoryPoint` per evaluation, in order.
        best_epoch: epoch of the best validation Recall@K (its weights are loaded back).
        best_val: validation metrics at that epoch.
        test: test metrics of the best weights.
        train_seconds: training wall time (evaluation excluded).
        epochs: epochs run.
        stopped_early: whether patience ran out before ``max_epochs``.
    """

    history: list[HistoryPoint]
    best_epoch: int
    best_val: RankingMetrics
    test: RankingMetrics
    train_seconds: float
    epochs: int
    stopped_early: bool
    losses: list[float] = field(default_factory=list)

    @property
    def seconds_per_epoch(self) -> float:
        return self.train_seconds / max(self.epochs, 1)

    @property
    def seconds_to_best(self) -> float:
        """Training seconds until the best epoch was reached."""
        return next(p.seconds for p in self.history if p.epoch == self.best_epoch)


def evaluate(model: Recommender, data: Interactions, *, split: str = "val", k: int = 20) -> RankingMetrics:
    """Recall@K and NDCG@K on ``data.val`` or ``data.test``.

    Training items are excluded from the ranking; for the test split, validation items too
    (both are known interactions, not recommendations to find).
    """
    if split not in ("val", "test"):
        raise ValueError(f"split must be 'val' or 'test', got {split!r}")
    with torch.no_grad():
        users_emb, items_emb = model.user_item_embeddings()
        device = users_emb.device

        def scores(users: torch.Tensor) -> torch.Tensor:
            return users_emb[users.to(device)] @ items_emb.T  # (B, I)

        seen = data.train if split == "val" else torch.cat([data.train, data.val], dim=1)
        held = data.val if split == "val" else data.test
        return ranking_metrics(scores, seen, held, n_users=data.n_users, n_items=data.n_items, k=k)


def _sync(model: Recommender) -> None:
    first = next(iter(model.state_dict().values()), None)
    if first is not None and first.is_cuda:
        torch.cuda.synchronize(first.device)


def fit(model: Recommender, run_epoch: Callable[[int], float], data: Interactions, *, max_epochs: int,
        patience: int = 5, eval_every: int = 1, k: int = 20, disable: bool = True, desc: str = "train") -> FitResult:
    """Train with early stopping on validation Recall@K; load the best weights back.

    Args:
        model: anything with ``user_item_embeddings()`` and a state dict.
        run_epoch: ``run_epoch(epoch)`` trains one epoch and returns its mean loss.
        data: the split dataset.
        max_epochs: upper bound on epochs (>= 1).
        patience: evaluations without improvement before stopping (>= 1).
        eval_every: epochs between evaluations (>= 1).
        k: the K of Recall@K / NDCG@K.
        disable: silence the progress bar (the ci tier does).
        desc: progress bar label.

    Returns:
        :class:`FitResult`; the test metrics are those of the best validation epoch.
    """
    for name, value in (("max_epochs", max_epochs), ("patience", patience), ("eval_every", eval_every)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if not callable(run_epoch):
        raise TypeError(f"run_epoch must be callable, got {type(run_epoch).__name__}")
    history: list[HistoryPoint] = []
    losses: list[float] = []
    best_recall, best_epoch, best_state, best_val = -1.0, 0, None, None
    seconds, waited, epoch = 0.0, 0, 0
    bar = tqdm(range(1, max_epochs + 1), desc=desc, disable=disable, leave=False)
    for epoch in bar:
        _sync(model)
        t0 = time.perf_counter()
        losses.append(float(run_epoch(epoch)))
        _sync(model)
        seconds += time.perf_counter() - t0
        if epoch % eval_every and epoch != max_epochs:
            continue
        val = evaluate(model, data, split="val", k=k)
        history.append(HistoryPoint(seconds, epoch, val.recall, val.ndcg))
        bar.set_postfix(recall=f"{val.recall:.4f}", best=f"{max(best_recall, val.recall):.4f}")
        if val.recall > best_recall:
            best_recall, best_epoch, best_val, waited = val.recall, epoch, val, 0
            best_state = {name: t.detach().clone() for name, t in model.state_dict().items()}
        else:
            waited += 1
            if waited >= patience:
                break
    bar.close()
    assert best_state is not None and best_val is not None  # at least one evaluation ran
    model.load_state_dict(best_state)
    test = evaluate(model, data, split="test", k=k)
    return FitResult(history, best_epoch, best_val, test, seconds, epoch, epoch < max_epochs, losses)


@dataclass(frozen=True)
class EpochTiming:
    """Seconds per training step (median of the timed steps) and the epoch it extrapolates to."""

    seconds_per_step: float
    steps_per_epoch: int
    timed_steps: int

    @property
    def seconds_per_epoch(self) -> float:
        return self.seconds_per_step * self.steps_per_epoch

    @property
    def extrapolated(self) -> bool:
        """True when fewer steps were timed than an epoch has."""
        return self.timed_steps < self.steps_per_epoch


def time_epoch(step: Callable[[], object], *, steps_per_epoch: int, max_steps: int = 5, warmup: int = 1,
               device: torch.device | str = "cpu") -> EpochTiming:
    """Time ``min(steps_per_epoch, max_steps)`` training steps and extrapolate to one epoch.

    Args:
        step: runs one training step (sampling, forward, backward, optimiser update).
        steps_per_epoch: steps in a full epoch (>= 1).
        max_steps: most steps timed (>= 1); the median step time is multiplied by ``steps_per_epoch``.
        warmup: untimed steps first.
        device: where the step runs (CUDA events on a GPU).
    """
    for name, value in (("steps_per_epoch", steps_per_epoch), ("max_steps", max_steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    timed = min(steps_per_epoch, max_steps)
    timing = time_fn(step, repeats=timed, warmup=warmup, device=device)
    return EpochTiming(seconds_per_step=timing.median, steps_per_epoch=steps_per_epoch, timed_steps=timed)


def loglog_slope(sizes: Sequence[float], costs: Sequence[float]) -> float:
    """Least-squares slope of ``log(cost)`` against ``log(size)``: the exponent p of cost ~ size^p.

    A cost linear in the size has slope 1, a quadratic one slope 2.

    Args:
        sizes, costs: at least two positive numbers each, of the same length, with at least two
            distinct sizes.
    """
    if len(sizes) != len(costs) or len(sizes) < 2:
        raise ValueError(f"sizes and costs must have the same length >= 2, got {len(sizes)} and {len(costs)}")
    if any(not v > 0 for v in (*sizes, *costs)):
        raise ValueError("sizes and costs must all be > 0 (they are taken in logarithms)")
    log_x = torch.tensor([float(v) for v in sizes], dtype=torch.float64).log()
    log_y = torch.tensor([float(v) for v in costs], dtype=torch.float64).log()
    dx = log_x - log_x.mean()
    if float(dx.pow(2).sum()) == 0.0:
        raise ValueError("sizes must hold at least two distinct values")
    return float((dx * (log_y - log_y.mean())).sum() / dx.pow(2).sum())
