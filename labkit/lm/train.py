"""Training and evaluating the tiny GPT on the standard-library byte corpus.

:func:`train_gpt` runs AdamW with a short warm-up and cosine decay for a fixed number of
steps (a step budget, not a time budget, so that a seed gives the same weights on every
machine), evaluating on fixed validation batches every ``eval_every`` steps. :func:`pretrained_gpt`
wraps it in :func:`labkit.artifacts.load_or_train`, so each (config, training recipe, seed)
is trained once and reused by every notebook that asks for it.

Shapes: B batch, T block size, L layers, k top_k.
Section: chapter 05, "Top-k routing from scratch" (the lab animal).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import torch
from tqdm.auto import tqdm

from labkit.artifacts import load_or_train, state_shapes
from labkit.data.corpus import TextCorpus
from labkit.runtime import seed_everything
from labkit.validation import check_int

from .gpt import GPT, GPTConfig

#: Bump when a change to the model or the training code would change trained weights, so that
#: weights cached by an older version are not loaded for the new one.
WEIGHTS_VERSION = 2

__all__ = ["WEIGHTS_VERSION", "TrainConfig", "TrainResult", "evaluate", "pretrained_gpt", "routing_trace", "train_gpt"]


@dataclass(frozen=True)
class TrainConfig:
    """The training recipe.

    Attributes:
        steps: optimizer steps.
        batch_size: B windows per step.
        lr: peak learning rate of AdamW.
        warmup: linear warm-up steps.
        eval_every: evaluate every this many steps (and at the end).
        eval_batches: fixed validation batches per evaluation.
    """

    steps: int = 300
    batch_size: int = 32
    lr: float = 3e-3
    warmup: int = 20
    eval_every: int = 100
    eval_batches: int = 8

    def __post_init__(self) -> None:
        check_int("steps", self.steps, 1)
        check_int("batch_size", self.batch_size, 1)
        check_int("warmup", self.warmup, 0)
        check_int("eval_every", self.eval_every, 1)
        check_int("eval_batches", self.eval_batches, 1)
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


@dataclass
class TrainResult:
    """A trained model and its curves: ``history`` rows are (step, train loss, val loss, seconds)."""

    model: GPT
    history: list[tuple[int, float, float, float]] = field(default_factory=list)

    @property
    def val_loss(self) -> float:
        """Validation loss (nats per byte) at the end of training."""
        return self.history[-1][2]


def _lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))  # cosine to 10%


@torch.no_grad()
def evaluate(model: GPT, corpus: TextCorpus, *, split: str = "val", batches: int = 8, batch_size: int = 32,
             seed: int = 1234) -> float:
    """Mean cross-entropy (nats per byte) on ``batches`` windows drawn with a fixed ``seed``.

    The same seed gives the same windows, so two models are compared on identical text.
    """
    check_int("batches", batches, 1)
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    total = 0.0
    for _ in range(batches):
        x, y = corpus.get_batch(split, batch_size=batch_size, block_size=model.cfg.block_size, generator=gen, device=device)
        total += model(x, y).lm_loss.item()
    model.train(was_training)
    return total / batches


def train_gpt(cfg: GPTConfig, corpus: TextCorpus, train: TrainConfig, *, seed: int = 0,
              device: torch.device | str = "cpu", progress: bool = True) -> TrainResult:
    """Train a fresh :class:`GPT` of ``cfg`` with the recipe ``train``; deterministic for a seed on CPU.

    Args:
        cfg: architecture.
        corpus: byte corpus (``stdlib_corpus()``).
        train: recipe (steps, batch size, learning rate, evaluation cadence).
        seed: seeds the initialisation and the training batches.
        device: where to train.
        progress: show a tqdm bar.

    Returns:
        :class:`TrainResult` with the model (in eval mode) and its history.
    """
    if not isinstance(train, TrainConfig):
        raise TypeError(f"train must be a TrainConfig, got {type(train).__name__}")
    gen = seed_everything(seed)
    model = GPT(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=train.lr, betas=(0.9, 0.95), weight_decay=0.0)
    result = TrainResult(model=model)
    clock = 0.0
    bar = tqdm(range(train.steps), desc=f"train {cfg.ffn}/{cfg.router}", disable=not progress, leave=False)
    for step in bar:
        start = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, train)
        x, y = corpus.get_batch("train", batch_size=train.batch_size, block_size=cfg.block_size, generator=gen, device=device)
        out = model(x, y)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        clock += time.perf_counter() - start
        if (step + 1) % train.eval_every == 0 or step + 1 == train.steps:
            val = evaluate(model, corpus, batches=train.eval_batches, batch_size=train.batch_size)
            result.history.append((step + 1, out.lm_loss.detach().item(), val, clock))
            bar.set_postfix(val=f"{val:.3f}")
    model.eval()
    return result


def pretrained_gpt(cfg: GPTConfig, corpus: TextCorpus, train: TrainConfig, *, seed: int = 0,
                   device: torch.device | str = "cpu", progress: bool = True, verbose: bool = True) -> TrainResult:
    """Like :func:`train_gpt`, but trained once per (config, recipe, corpus, seed) and then loaded.

    The history travels with the weights, so a loaded model reports the curve it was trained with.
    A corpus with a ``source`` (e.g. :func:`labkit.data.corpus.stdlib_corpus`) is identified by
    how it was built, not by its bytes, so the weights committed with labkit (trained on one
    Python's standard library) are found on every Python version; their history is that of the
    machine that trained them. A corpus without one is identified by its content.
    """
    source = getattr(corpus, "source", "")
    data = {"corpus": source} if source else {"corpus": repr(corpus), "files": corpus.files_val[:5]}
    fields = {"cfg": cfg.as_dict(), "train": asdict(train), "seed": seed, "version": WEIGHTS_VERSION, **data}

    def run() -> dict:
        res = train_gpt(cfg, corpus, train, seed=seed, device=device, progress=progress)
        state = {k: v.detach().cpu() for k, v in res.model.state_dict().items()}
        state["__history__"] = torch.tensor(res.history, dtype=torch.float64)
        return state

    model = GPT(cfg)
    state = load_or_train("tiny_gpt", fields, run, expected={**state_shapes(model), "__history__": None},
                          verbose=verbose)
    history = state.pop("__history__")
    model.load_state_dict(state)
    model.to(device).eval()
    rows = [(int(r[0]), float(r[1]), float(r[2]), float(r[3])) for r in history.tolist()]
    return TrainResult(model=model, history=rows)


@torch.no_grad()
def routing_trace(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    """Experts chosen at every sparse block for every token of ``idx`` (B, T).

    Returns:
        (B * T, L_sparse, k) int64: the experts of each token in each MoE block, in block order
        (-1 where an assignment was dropped).
    """
    out = model(idx)
    chosen = [r.experts for r in out.routing if r is not None]
    if not chosen:
        raise ValueError("the model has no MoE blocks, so there is no routing to trace")
    return torch.stack(chosen, dim=1)
