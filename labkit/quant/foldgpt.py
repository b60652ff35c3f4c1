"""FoldGPT: remove the blocks that learned gates find least useful, fold the rest into shared groups.

The paper: *FoldGPT: Simple and Effective Large Language Model Compression Scheme*.

Intuition. The outputs of neighbouring transformer blocks are often alike, so a model is
redundant in depth. FoldGPT compresses depth in three steps:

1. **Rank the blocks with learnable gates.** Each block's residual branches are multiplied by
   a scalar gate ``g_l`` (``x + g_l attn(ln(x))``, then ``x + g_l ffn(ln(x))``); only the gates
   are trained, against the language-model loss plus an L1 penalty ``lambda sum |g_l|`` that
   pushes them towards zero. Blocks the model can do without end with small gates. Because all
   gates learn together, the ranking accounts for how blocks stand in for each other, which
   scoring each block alone would miss. The blocks with the smallest gates are removed.
2. **Share weights within groups.** The remaining blocks are cut into groups of adjacent
   blocks, and every block of a group runs the weights of one of them (here the member with the
   lowest calibration loss, :func:`choose_owners`; the paper's rule is not reproduced): the
   group's parameters are stored once. As light per-block adaptation, every
   *borrowing* block keeps its own two LayerNorms and gets two learnable per-channel scales on
   its attention and feed-forward outputs (``6 D`` parameters per borrower).
3. **Cure.** A short fine-tune of the folded model with the language-model loss plus a
   distillation from the original model's tail: the KL divergence from its next-byte
   distribution and the mean squared error to its last hidden state (the input of the final
   LayerNorm), normalised by that state's mean square.

The naive baseline removes the last (or first) blocks, with no cure or with the same cure.

What the miniature leaves out: the paper's billion-parameter models and benchmarks, its exact
gate parameterisation and removal schedule, its choice of which member's weights a group keeps,
and any latency measurement.

Shapes: L blocks of the original model, P positions of the folded model, U distinct weight
blocks, B batch, T tokens, D width, V vocabulary.
Section: chapter 10, "BitStack and FoldGPT: size control by residual stacks and folded blocks".
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from labkit.data.corpus import TextCorpus
from labkit.lm.gpt import GPT, GPTOutput
from labkit.validation import check_int

__all__ = ["FoldPlan", "FoldedGPT", "choose_owners", "cure", "drop_plan", "fold_plan", "learn_block_gates"]


@dataclass(frozen=True)
class FoldPlan:
    """Which original block each position of a folded model is, and whose weights it runs.

    Attributes:
        kept: the original blocks kept, in order (P of them).
        source: for each position, the original block whose weights it runs (its group's owner).
    """

    kept: tuple[int, ...]
    source: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.kept or len(self.kept) != len(self.source):
            raise ValueError("a plan needs at least one kept block and one source per kept block")
        object.__setattr__(self, "kept", tuple(int(k) for k in self.kept))
        object.__setattr__(self, "source", tuple(int(k) for k in self.source))
        if min(self.kept) < 0 or list(self.kept) != sorted(set(self.kept)):
            raise ValueError(f"kept blocks must be distinct and in order, got {self.kept}")
        if not set(self.source) <= set(self.kept):
            raise ValueError("every source must be a kept block")

    @property
    def n_unique(self) -> int:
        """U, the weight blocks stored."""
        return len(set(self.source))

    @property
    def borrowers(self) -> tuple[int, ...]:
        """Positions that run another block's weights."""
        return tuple(p for p, (k, s) in enumerate(zip(self.kept, self.source)) if k != s)


def drop_plan(n_layer: int, n_keep: int, *, drop: str = "last") -> FoldPlan:
    """The naive baseline: keep the first (``drop="last"``) or last (``drop="first"``) ``n_keep`` blocks."""
    check_int("n_layer", n_layer, 1)
    check_int("n_keep", n_keep, 1, n_layer)
    if drop not in ("last", "first"):
        raise ValueError(f"drop must be 'last' or 'first', got {drop!r}")
    kept = tuple(range(n_keep)) if drop == "last" else tuple(range(n_layer - n_keep, n_layer))
    return FoldPlan(kept=kept, source=kept)


def fold_plan(gates: torch.Tensor, *, n_keep: int, group_size: int) -> FoldPlan:
    """FoldGPT's plan: keep the ``n_keep`` blocks with the largest gates, share within adjacent groups.

    Groups are cut from the deep end (the first kept blocks, which read the embeddings and differ
    most from the rest, are the ones left alone when ``n_keep`` is not a multiple of
    ``group_size``); each group starts out running the weights of its member with the largest gate
    (:func:`choose_owners` can pick better ones on calibration data).

    Args:
        gates: (L,) learned gates (:func:`learn_block_gates`).
        n_keep: blocks kept after removal.
        group_size: kept blocks per group (1: removal only).

    Returns:
        :class:`FoldPlan`.
    """
    if not isinstance(gates, torch.Tensor) or gates.dim() != 1:
        raise ValueError("gates must be a 1-D tensor (L,)")
    check_int("n_keep", n_keep, 1, gates.numel())
    check_int("group_size", group_size, 1, n_keep)
    score = gates.detach().abs().cpu()
    kept = sorted(torch.topk(score, n_keep).indices.tolist())
    source: list[int] = []
    for end in range(n_keep, 0, -group_size):
        group = kept[max(0, end - group_size):end]
        owner = max(group, key=lambda b: score[b].item())
        source = [owner] * len(group) + source
    return FoldPlan(kept=tuple(kept), source=tuple(source))


@torch.no_grad()
def choose_owners(model: GPT, plan: FoldPlan, calib_idx: torch.Tensor, calib_targets: torch.Tensor) -> FoldPlan:
    """For each group, the member whose weights the group should run: the lowest calibration loss.

    Groups are visited in order; each tries every member as owner with the other groups as
    already chosen (a few forward passes). Our stand-in for the paper's choice of shared weights.

    Args:
        model: the original GPT.
        plan: a plan whose groups are runs of equal ``source``.
        calib_idx, calib_targets: a calibration batch (B, T) from the training split.

    Returns:
        The plan with the best owner per group.
    """
    if calib_idx.dim() != 2 or calib_idx.shape != calib_targets.shape:
        raise ValueError("calib_idx and calib_targets must both be (B, T)")
    source = list(plan.source)
    starts = [p for p in range(len(source)) if p == 0 or source[p] != source[p - 1]]
    for a, b in zip(starts, starts[1:] + [len(source)]):
        if b - a == 1:
            continue
        losses = {}
        for owner in plan.kept[a:b]:
            trial = FoldPlan(kept=plan.kept, source=tuple(source[:a] + [owner] * (b - a) + source[b:]))
            losses[owner] = FoldedGPT(model, trial)(calib_idx, calib_targets).lm_loss.item()
        source[a:b] = [min(losses, key=losses.__getitem__)] * (b - a)
    return FoldPlan(kept=plan.kept, source=tuple(source))


class _Position(nn.Module):
    """A borrowing position's own LayerNorms and per-channel output scales."""

    def __init__(self, block: nn.Module, d_model: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = copy.deepcopy(block.ln1), copy.deepcopy(block.ln2)
        self.attn_scale = nn.Parameter(torch.ones(d_model))
        self.ffn_scale = nn.Parameter(torch.ones(d_model))


class FoldedGPT(nn.Module):
    """A tiny GPT with some blocks removed and others sharing weights, built from a trained :class:`GPT`.

    ``forward(idx, targets)`` returns a :class:`labkit.lm.GPTOutput`, so
    :func:`labkit.lm.evaluate` works on it. The original model is not modified.

    Args:
        model: the trained dense GPT.
        plan: a :class:`FoldPlan`.
    """

    def __init__(self, model: GPT, plan: FoldPlan) -> None:
        super().__init__()
        if not isinstance(model, GPT):
            raise TypeError(f"model must be a labkit.lm.GPT, got {type(model).__name__}")
        if not isinstance(plan, FoldPlan):
            raise TypeError(f"plan must be a FoldPlan, got {type(plan).__name__}")
        if max(plan.kept) >= model.cfg.n_layer:
            raise ValueError(f"the plan keeps block {max(plan.kept)} of a {model.cfg.n_layer}-block model")
        if model.cfg.ffn != "dense":
            raise ValueError("FoldedGPT folds dense tiny GPTs only")
        self.cfg, self.plan = model.cfg, plan
        self.tok, self.pos = copy.deepcopy(model.tok), copy.deepcopy(model.pos)
        self.ln_f = copy.deepcopy(model.ln_f)
        self.head = nn.Linear(model.cfg.d_model, model.cfg.vocab_size, bias=False)
        self.head.weight = self.tok.weight  # tied, as in the original
        self.shared = nn.ModuleDict({str(s): copy.deepcopy(model.blocks[s]) for s in sorted(set(plan.source))})
        self.adapters = nn.ModuleDict({str(p): _Position(model.blocks[plan.kept[p]], model.cfg.d_model)
                                       for p in plan.borrowers})

    def n_params(self) -> int:
        """Stored parameters, shared weights counted once."""
        return sum(p.numel() for p in self.parameters())

    def hidden(self, idx: torch.Tensor, gates: torch.Tensor | None = None) -> torch.Tensor:
        """The last hidden state (B, T, D), before the final LayerNorm.

        Args:
            idx: (B, T) token ids.
            gates: optional (P,) scalars on every position's two residual branches (FoldGPT's gates).
        """
        if idx.dim() != 2 or idx.shape[1] > self.cfg.block_size:
            raise ValueError(f"idx must be (B, T) with T <= {self.cfg.block_size}, got {tuple(idx.shape)}")
        if gates is not None and gates.shape != (len(self.plan.kept),):
            raise ValueError(f"gates must have shape ({len(self.plan.kept)},), got {tuple(gates.shape)}")
        T = idx.shape[1]
        x = self.tok(idx) + self.pos(torch.arange(T, device=idx.device))  # (B, T, D)
        for p, src in enumerate(self.plan.source):
            block, own = self.shared[str(src)], self.adapters[str(p)] if str(p) in self.adapters else None
            g = 1.0 if gates is None else gates[p]
            norms = own if own is not None else block  # a borrower keeps its own LayerNorms
            a = block.attn(norms.ln1(x))
            x = x + g * (a * own.attn_scale if own is not None else a)  # x + g_l attn(ln(x))
            f = block.ffn(norms.ln2(x))[0]
            x = x + g * (f * own.ffn_scale if own is not None else f)  # x + g_l ffn(ln(x))
        return x

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> GPTOutput:
        logits = self.head(self.ln_f(self.hidden(idx)))  # (B, T, V)
        if targets is None:
            return GPTOutput(logits=logits)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return GPTOutput(logits=logits, loss=loss, lm_loss=loss)


def learn_block_gates(model: GPT, corpus: TextCorpus, *, steps: int = 60, l1: float = 0.02, lr: float = 0.05,
                      batch_size: int = 16, seed: int = 0, progress: bool = False) -> torch.Tensor:
    """Learn one gate per block of the frozen ``model``: LM loss + ``l1 * sum |g|`` (FoldGPT, step 1).

    Args:
        model: the trained GPT (not modified).
        corpus: the byte corpus (training split).
        steps, lr, batch_size: Adam on the gates only, from ``g = 1``.
        l1: weight of the sparsity penalty.
        seed: seeds the batches.
        progress: show a progress bar.

    Returns:
        (L,) the learned gates; smaller means more removable.
    """
    check_int("steps", steps, 1)
    check_int("batch_size", batch_size, 1)
    if not l1 >= 0 or not lr > 0:
        raise ValueError(f"l1 must be >= 0 and lr > 0, got l1={l1}, lr={lr}")
    L = model.cfg.n_layer
    full = FoldedGPT(model, FoldPlan(kept=tuple(range(L)), source=tuple(range(L))))
    full.requires_grad_(False)
    device = next(model.parameters()).device
    full.to(device)
    gates = nn.Parameter(torch.ones(L, device=device))
    opt = torch.optim.Adam([gates], lr=lr)
    gen = torch.Generator().manual_seed(seed)
    for _ in tqdm(range(steps), desc="block gates", disable=not progress, leave=False):
        x, y = corpus.get_batch("train", batch_size=batch_size, block_size=model.cfg.block_size, generator=gen,
                                device=device)
        logits = full.head(full.ln_f(full.hidden(x, gates)))
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten()) + l1 * gates.abs().sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return gates.detach().cpu()


def cure(student: FoldedGPT, teacher: GPT, corpus: TextCorpus, *, steps: int = 60, lr: float = 1e-3,
         batch_size: int = 16, distill: float = 1.0, seed: int = 0, progress: bool = False) -> list[float]:
    """Fine-tune ``student`` in place with LM loss + tail distillation from ``teacher`` (FoldGPT, step 3).

    The loss is ``CE + distill * (KL(teacher || student) + MSE(h_s, h_t) / mean(h_t^2))`` with
    ``h`` the last hidden state; ``distill=0`` is a plain fine-tune.

    Args:
        student: the folded model (trained in place, left in eval mode).
        teacher: the original GPT (frozen).
        corpus: the byte corpus (training split).
        steps, lr, batch_size: AdamW with a cosine decay to 10%.
        distill: weight of the distillation terms.
        seed: seeds the batches.
        progress: show a progress bar.

    Returns:
        The training loss of every step.
    """
    if not isinstance(student, FoldedGPT):
        raise TypeError(f"student must be a FoldedGPT, got {type(student).__name__}")
    check_int("steps", steps, 1)
    check_int("batch_size", batch_size, 1)
    if not lr > 0 or not distill >= 0:
        raise ValueError(f"lr must be > 0 and distill >= 0, got lr={lr}, distill={distill}")
    device = next(student.parameters()).device
    caught: list[torch.Tensor] = []
    hook = teacher.ln_f.register_forward_hook(lambda mod, args, out: caught.append(args[0]))
    opt = torch.optim.AdamW(student.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / steps)))  # cosine to 10%
    gen = torch.Generator().manual_seed(seed)
    student.train()
    losses = []
    try:
        for _ in tqdm(range(steps), desc="cure", disable=not progress, leave=False):
            x, y = corpus.get_batch("train", batch_size=batch_size, block_size=student.cfg.block_size,
                                    generator=gen, device=device)
            with torch.no_grad():
                caught.clear()
                t_logits = teacher(x).logits  # (B, T, V)
                t_hidden = caught[0]  # (B, T, D), the input of the teacher's ln_f
            h = student.hidden(x)
            logits = student.head(student.ln_f(h))
            loss = nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())
            if distill > 0:
                kl = nn.functional.kl_div(logits.log_softmax(-1).flatten(0, 1), t_logits.log_softmax(-1).flatten(0, 1),
                                          log_target=True, reduction="batchmean")
                mse = (h - t_hidden).pow(2).mean() / t_hidden.pow(2).mean()
                loss = loss + distill * (kl + mse)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(loss.item())
    finally:
        hook.remove()
        student.eval()
    return losses
