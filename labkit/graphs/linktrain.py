"""Training and evaluating link predictors on a leakage-free split.

Every model here has ``score(x, graph, pairs) -> logits``. Training is binary cross-entropy on
the training edges (label 1) and as many uniformly drawn pairs (label 0), in mini-batches; with
``remove_targets`` each batch's positive edges are taken out of the graph the model sees for
that step (NCN's target link removal). Evaluation scores the held-out pairs on the training
graph only, and the test Hits@K reported is the one at the epoch of best validation Hits@K.

Shapes: N nodes, F features, P pairs.
Section: chapter 02, "Link prediction with common neighbours".
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..validation import check_int, check_real
from .gcn import LinkGraph, link_graph
from .linkpred import LinkSplit, hits_at_k, undirected

__all__ = ["LinkResult", "drop_edges", "evaluate_link_model", "removal_sweep", "train_link_model"]


@dataclass
class LinkResult:
    """What one training run measured.

    Attributes:
        valid_hits, test_hits: Hits@K at the epoch of best validation Hits@K.
        best_epoch: that epoch (1-based; 0 = before training).
        seconds: training wall time, evaluation excluded.
        history: (epoch, validation Hits@K) at every evaluation.
    """

    valid_hits: float
    test_hits: float
    best_epoch: int
    seconds: float
    history: list[tuple[int, float]] = field(default_factory=list)


def drop_edges(pairs: torch.Tensor, ratio: float, *, seed: int = 0) -> torch.Tensor:
    """Keep a random ``1 - ratio`` share of the (2, E) ``pairs`` (the observed graph loses edges)."""
    ratio = check_real("ratio", ratio, 0.0)
    if ratio > 1.0:
        raise ValueError(f"ratio must be in [0, 1], got {ratio}")
    keep = torch.randperm(pairs.shape[1], generator=torch.Generator().manual_seed(seed))
    return pairs[:, keep[: round((1.0 - ratio) * pairs.shape[1])].sort().values]


@torch.no_grad()
def evaluate_link_model(model: nn.Module, x: torch.Tensor, graph: LinkGraph, pos: torch.Tensor,
                        neg: torch.Tensor, *, k: int = 20) -> float:
    """Hits@K of ``model`` on positives ``pos`` against the shared negatives ``neg``."""
    model.eval()
    return hits_at_k(model.score(x, graph, pos), model.score(x, graph, neg), k)


def train_link_model(model: nn.Module, x: torch.Tensor, split: LinkSplit, *, train_pairs: torch.Tensor | None = None,
                     epochs: int = 50, lr: float = 0.01, batch_size: int = 1024, k: int = 20,
                     remove_targets: bool = False, eval_every: int = 5, seed: int = 0,
                     make_graph: Callable[[torch.Tensor, int], LinkGraph] = link_graph) -> LinkResult:
    """Train ``model`` on the split's training edges (or ``train_pairs``, a subset of them).

    Args:
        model: has ``score(x, graph, pairs)``; its trainable parameters are optimised with Adam.
        x: (N, F) node features.
        split: the split; only its training edges are ever propagated over.
        train_pairs: (2, E) observed training edges (default: ``split.train``).
        remove_targets: take each batch's positives out of the graph for that step.
        make_graph: builds the model's view of a (2, M) edge list (default :func:`link_graph`).
    """
    epochs = check_int("epochs", epochs, 1)
    batch_size = check_int("batch_size", batch_size, 1)
    eval_every = check_int("eval_every", eval_every, 1)
    lr = check_real("lr", lr, 0.0, strict=True)
    pairs = split.train if train_pairs is None else train_pairs
    n = split.num_nodes
    graph = make_graph(undirected(pairs), n)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    loss_fn = nn.BCEWithLogitsLoss()
    best = LinkResult(evaluate_link_model(model, x, graph, split.valid, split.valid_neg, k=k),
                      evaluate_link_model(model, x, graph, split.test, split.test_neg, k=k), 0, 0.0)
    best.history.append((0, best.valid_hits))
    seconds = 0.0
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        model.train()
        for batch in torch.randperm(pairs.shape[1], generator=gen).split(batch_size):
            pos = pairs[:, batch]
            neg = torch.randint(0, n, pos.shape, generator=gen)
            seen = graph
            if remove_targets and batch.numel() < pairs.shape[1]:
                rest = torch.ones(pairs.shape[1], dtype=torch.bool)
                rest[batch] = False
                seen = make_graph(undirected(pairs[:, rest]), n)
            logits = model.score(x, seen, torch.cat([pos, neg], dim=1))
            labels = torch.cat([torch.ones(pos.shape[1]), torch.zeros(neg.shape[1])])
            loss = loss_fn(logits, labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
        seconds += time.perf_counter() - t0
        if epoch % eval_every == 0 or epoch == epochs:
            valid = evaluate_link_model(model, x, graph, split.valid, split.valid_neg, k=k)
            best.history.append((epoch, valid))
            if valid > best.valid_hits:
                best.valid_hits, best.best_epoch = valid, epoch
                best.test_hits = evaluate_link_model(model, x, graph, split.test, split.test_neg, k=k)
    best.seconds = seconds
    return best


def removal_sweep(x: torch.Tensor, split: LinkSplit, ratios: list[float], *, hidden: int = 32,
                  epochs: int = 30, lr: float = 0.01, batch_size: int = 512, min_prob: float = 0.9,
                  k: int = 20, seed: int = 0) -> list[dict[str, float]]:
    """GAE, NCN and NCNC trained on the split's training graph with a share of its edges removed.

    For each ratio the observed graph keeps ``1 - ratio`` of the training edges; GAE and NCN
    train for ``epochs`` from scratch, NCNC starts from that NCN and trains ``epochs // 2`` more
    (it completes with a frozen copy of the NCN). Returns one row per ratio: test Hits@K of each
    model (key = model name), and its training seconds (key = name + " s").
    """
    from .gcn import GAE
    from .ncn import NCN, NCNC

    rows = []
    for ratio in ratios:
        observed = drop_edges(split.train, ratio, seed=seed + 1)
        kw = dict(train_pairs=observed, lr=lr, batch_size=batch_size, k=k, seed=seed)
        row: dict[str, float] = {"ratio": ratio, "edges": observed.shape[1]}
        torch.manual_seed(seed)
        gae = GAE(x.shape[1], hidden)
        torch.manual_seed(seed)
        ncn = NCN(x.shape[1], hidden)
        for name, model, n_epochs, remove in (("GAE", gae, epochs, False), ("NCN", ncn, epochs, True)):
            res = train_link_model(model, x, split, epochs=n_epochs, remove_targets=remove, **kw)
            row[name], row[name + " s"] = res.test_hits, res.seconds
        ncnc = NCNC.from_ncn(ncn, min_prob=min_prob)
        res = train_link_model(ncnc, x, split, epochs=max(1, epochs // 2), remove_targets=True, **kw)
        row["NCNC"], row["NCNC s"] = res.test_hits, res.seconds
        rows.append(row)
    return rows
