"""Structure attacks on node classification, and STABLE's unsupervised structure refinement.

Li, Liu, Ao, Chi, Feng, Yang & He, "Reliable Representations Make A Stronger Defender:
Unsupervised Structure Refinement for Robust GNN" (arXiv:2207.00012). A GCN averages over
neighbours, so an attacker who inserts edges between classes mixes the classes' features and
the accuracy falls. STABLE defends in three steps:

1. learn node embeddings *without labels*, by contrasting two randomly perturbed views of the
   graph (a node's embedding in one view must pick out the same node in the other), so that
   the embeddings depend on what survives random edge changes, mostly the features and the
   bulk of the honest structure;
2. refine the graph: drop every edge whose endpoints' embeddings have cosine similarity below a
   threshold, and add each node's top-k most similar nodes as new neighbours;
3. train a GCN on the refined graph with the paper's modified aggregation. As the authors'
   public code (repository ``likuanppd/STABLE``, its adjacency normalisation) computes it: with
   ``A~ = A + I`` and ``d = A~ 1``, scale ``A~`` by ``d_i^alpha d_j^alpha`` and, unless
   ``alpha = -1/2`` (plain GCN's symmetric normalisation), normalise each row to sum to one, so
   ``A_hat[i, j] = A~[i, j] d_j^alpha / sum_k A~[i, k] d_k^alpha``. With ``alpha > 0`` (the
   code's default is 0.5) a node listens more to its high-degree neighbours, whose own average
   a few inserted edges barely move. The paper tunes its hyper-parameters per dataset.

The attacks: random insertion (the control, it barely hurts), DICE (delete edges inside classes,
connect across them; Waniek et al., "Hiding individuals and communities in a social network",
arXiv:1608.00375) and degree-targeted cross-class insertion, which points the inserted edges at
low-degree nodes, whose averages a few edges overturn. The gradient attack follows Metattack
(Zügner & Günnemann, "Adversarial Attacks on Graph Neural Networks via Meta Learning",
arXiv:1902.08412), its Meta-Self variant: a linearised two-layer GCN ``softmax(A_hat^2 X W)``
is trained for a few differentiable gradient steps on the labelled nodes, its loss on the
unlabelled nodes against self-training labels is differentiated through those steps with
respect to the dense adjacency (the meta-gradient), and the pairs whose flip raises that loss
most are flipped greedily, several per step here for speed; the paper flips one per step and
adds a degree-distribution test we leave out.

Shapes: N nodes, M directed edges (both directions of each undirected edge), F features,
D embedding size, C classes.
Section: chapter 02, "STABLE".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..validation import check_int, check_real
from .edges import check_edge_index, to_csr
from .linkpred import undirected, unique_pairs
from .sparse import spmm

__all__ = ["NodeClassResult", "RefinedGraph", "contrastive_embeddings", "degree_targeted_insertion",
           "dice_attack", "inserted_mask", "meta_self_attack", "random_insertion", "refine_structure",
           "robust_adjacency", "stable_defence", "surrogate_loss", "train_node_gcn"]


def _check_ratio(ratio: float) -> float:
    ratio = check_real("ratio", ratio, 0.0)
    if ratio > 1.0:
        raise ValueError(f"ratio must be in [0, 1], got {ratio}")
    return ratio


def _random_non_edges(taken: set[int], n: int, count: int, gen: torch.Generator,
                      first: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> list[int]:
    """``count`` new keys ``lo * n + hi``; ``first`` samples the first endpoint, and with
    ``labels`` the second endpoint is drawn from another class."""
    out: list[int] = []
    while len(out) < count:
        size = 2 * (count - len(out)) + 16
        a = (torch.multinomial(first, size, replacement=True, generator=gen) if first is not None
             else torch.randint(0, n, (size,), generator=gen))
        b = torch.randint(0, n, (size,), generator=gen)
        ok = a != b
        if labels is not None:
            ok &= labels[a] != labels[b]
        lo, hi = torch.minimum(a, b)[ok], torch.maximum(a, b)[ok]
        for key in (lo * n + hi).tolist():
            if key not in taken:
                taken.add(key)
                out.append(key)
                if len(out) == count:
                    break
    return out


def _from_keys(keys: list[int] | torch.Tensor, n: int) -> torch.Tensor:
    keys = torch.as_tensor(keys, dtype=torch.int64)
    return torch.stack([keys // n, keys % n])


def random_insertion(edge_index: torch.Tensor, num_nodes: int, ratio: float, *, seed: int = 0) -> torch.Tensor:
    """Add ``ratio * E`` uniformly random non-edges (E undirected edges); (2, M') both directions."""
    ratio = _check_ratio(ratio)
    pairs = unique_pairs(edge_index, num_nodes)
    taken = set((pairs[0] * num_nodes + pairs[1]).tolist())
    gen = torch.Generator().manual_seed(seed)
    new = _from_keys(_random_non_edges(taken, num_nodes, round(ratio * pairs.shape[1]), gen), num_nodes)
    return undirected(torch.cat([pairs, new], dim=1))


def dice_attack(edge_index: torch.Tensor, labels: torch.Tensor, ratio: float, *, seed: int = 0) -> torch.Tensor:
    """DICE: ``ratio * E`` changes, half deleting same-class edges, half adding cross-class ones."""
    ratio = _check_ratio(ratio)
    n = labels.numel()
    pairs = unique_pairs(edge_index, n)
    gen = torch.Generator().manual_seed(seed)
    n_changes = round(ratio * pairs.shape[1])
    inside = torch.nonzero(labels[pairs[0]] == labels[pairs[1]]).squeeze(1)
    n_del = min(n_changes // 2, inside.numel())
    drop = inside[torch.randperm(inside.numel(), generator=gen)[:n_del]]
    keep = torch.ones(pairs.shape[1], dtype=torch.bool)
    keep[drop] = False
    taken = set((pairs[0] * n + pairs[1]).tolist())
    new = _from_keys(_random_non_edges(taken, n, n_changes - n_del, gen, labels=labels), n)
    return undirected(torch.cat([pairs[:, keep], new], dim=1))


def degree_targeted_insertion(edge_index: torch.Tensor, labels: torch.Tensor, ratio: float, *,
                              seed: int = 0) -> torch.Tensor:
    """Add ``ratio * E`` cross-class edges whose first endpoint is drawn with probability
    proportional to ``1 / degree``: the attack concentrates on the nodes easiest to flip."""
    ratio = _check_ratio(ratio)
    n = labels.numel()
    pairs = unique_pairs(edge_index, n)
    deg = torch.bincount(pairs.flatten(), minlength=n).float()
    gen = torch.Generator().manual_seed(seed)
    taken = set((pairs[0] * n + pairs[1]).tolist())
    new = _from_keys(_random_non_edges(taken, n, round(ratio * pairs.shape[1]), gen,
                                       first=1.0 / deg.clamp(min=1), labels=labels), n)
    return undirected(torch.cat([pairs, new], dim=1))


def _dense_gcn_norm(adj: torch.Tensor) -> torch.Tensor:
    """``D~^{-1/2} (A + I) D~^{-1/2}`` of a dense (N, N) adjacency, differentiable in ``adj``."""
    a = adj + torch.eye(adj.shape[0], device=adj.device, dtype=adj.dtype)
    d = a.sum(1).rsqrt()
    return d[:, None] * a * d[None, :]


def _train_linear_gcn(ax: torch.Tensor, labels: torch.Tensor, train: torch.Tensor, n_classes: int,
                      steps: int, lr: float, seed: int, *, create_graph: bool) -> torch.Tensor:
    """Logits of ``ax @ W`` after ``steps`` of SGD with momentum 0.9 on the labelled nodes.

    With ``create_graph`` every step stays differentiable, so the returned logits carry the
    meta-gradient back to ``ax`` (and through it to the adjacency)."""
    gen = torch.Generator().manual_seed(seed)
    w = (torch.randn(ax.shape[1], n_classes, generator=gen) / ax.shape[1] ** 0.5).to(ax)
    w.requires_grad_(True)
    velocity = torch.zeros_like(w)
    for _ in range(steps):
        loss = nn.functional.cross_entropy(ax[train] @ w, labels[train])
        (grad,) = torch.autograd.grad(loss, w, create_graph=create_graph)
        velocity = 0.9 * velocity + grad
        w = w - lr * velocity
        if not create_graph:
            w = w.detach().requires_grad_(True)
            velocity = velocity.detach()
    return ax @ w


def _dense_adjacency(edge_index: torch.Tensor, n: int, device: torch.device) -> torch.Tensor:
    pairs = unique_pairs(edge_index, n)
    adj = torch.zeros(n, n, device=device)
    adj[pairs[0], pairs[1]] = adj[pairs[1], pairs[0]] = 1.0
    return adj


def surrogate_loss(x: torch.Tensor, edge_index: torch.Tensor, labels: torch.Tensor,
                   train: torch.Tensor, *, steps: int = 100, lr: float = 0.1, seed: int = 0) -> float:
    """Cross-entropy on the unlabelled nodes (``~train``, true labels) of the linearised GCN
    ``A_hat^2 X W`` trained on ``edge_index``: the quantity a poisoning attack drives up."""
    n = x.shape[0]
    check_edge_index(edge_index, n)
    steps = check_int("steps", steps, 1)
    a_hat = _dense_gcn_norm(_dense_adjacency(edge_index, n, x.device))
    logits = _train_linear_gcn(a_hat @ (a_hat @ x), labels, train, int(labels.max()) + 1, steps, lr,
                               seed, create_graph=False)
    return nn.functional.cross_entropy(logits[~train], labels[~train]).item()


def meta_self_attack(x: torch.Tensor, edge_index: torch.Tensor, labels: torch.Tensor,
                     train: torch.Tensor, ratio: float, *, inner_steps: int = 50, lr: float = 0.1,
                     flips_per_step: int = 1, no_singletons: bool = True, seed: int = 0) -> torch.Tensor:
    """Metattack's Meta-Self structure poisoning (module docstring): ``round(ratio * E)`` flips.

    Args:
        x: (N, F) features; the attack runs on ``x.device``.
        edge_index: (2, M) the clean undirected graph, both directions.
        labels: (N,) classes; only ``labels[train]`` is used (the rest get self-training labels).
        train: (N,) bool, the labelled nodes.
        ratio: flips as a share of the clean graph's E undirected edges, in [0, 1].
        inner_steps: differentiable training steps of the surrogate per meta-gradient.
        flips_per_step: pairs flipped per meta-gradient (1 is the paper's greedy step).
        no_singletons: never remove a node's last edge.

    Returns:
        (2, M') the poisoned graph, both directions; each flipped pair differs from the clean
        graph (a pair is flipped at most once) and exactly ``round(ratio * E)`` pairs differ.
    """
    ratio = _check_ratio(ratio)
    n = x.shape[0]
    check_edge_index(edge_index, n)
    if labels.shape != (n,) or train.shape != (n,) or train.dtype != torch.bool:
        raise ValueError(f"labels and train must have shape ({n},), train of dtype bool")
    inner_steps = check_int("inner_steps", inner_steps, 1)
    flips_per_step = check_int("flips_per_step", flips_per_step, 1)
    lr = check_real("lr", lr, 0.0, strict=True)
    dev, c = x.device, int(labels.max()) + 1
    labels, train = labels.to(dev), train.to(dev)
    adj = _dense_adjacency(edge_index, n, dev)
    budget = round(ratio * (int(adj.sum().item()) // 2))  # <= E <= N (N - 1) / 2 pairs
    a_hat = _dense_gcn_norm(adj)
    clean = _train_linear_gcn(a_hat @ (a_hat @ x), labels, train, c, 2 * inner_steps, lr, seed,
                              create_graph=False)
    target = torch.where(train, labels, clean.argmax(1)).detach()  # self-training labels
    flipped = torch.zeros(n, n, dtype=torch.bool, device=dev)
    upper = torch.ones(n, n, dtype=torch.bool, device=dev).triu(1)
    done = 0
    while done < budget:
        # show: start meta
        var = adj.clone().requires_grad_(True)
        sym = (var + var.T) / 2  # one gradient for both directions of a pair
        a_hat = _dense_gcn_norm(sym)
        logits = _train_linear_gcn(a_hat @ (a_hat @ x), labels, train, c, inner_steps, lr, seed,
                                   create_graph=True)  # W_T(A): T differentiable SGD steps
        attack_loss = nn.functional.cross_entropy(logits[~train], target[~train])
        (meta_grad,) = torch.autograd.grad(attack_loss, var)
        score = meta_grad * (1 - 2 * adj)  # > 0: flipping (i, j) raises the loss
        score[~upper | flipped] = float("-inf")  # each pair once, no self loops
        if no_singletons:
            deg = adj.sum(1)
            lonely = (adj > 0) & ((deg[:, None] <= 1) | (deg[None, :] <= 1))
            score[lonely] = float("-inf")  # removing it would isolate a node
        take = min(flips_per_step, budget - done)
        best = torch.topk(score.flatten(), take).indices
        i, j = best // n, best % n
        # show: end meta
        if no_singletons:  # two removals at one node in the same step: keep the first
            deg, keep = adj.sum(1), []
            for a, b, k in zip(i.tolist(), j.tolist(), range(take)):
                if adj[a, b] > 0:
                    if deg[a] <= 1 or deg[b] <= 1:
                        continue
                    deg[a] -= 1
                    deg[b] -= 1
                keep.append(k)
            i, j = i[keep], j[keep]
        if i.numel() == 0 or not torch.isfinite(score[i, j]).all():
            raise RuntimeError(f"no admissible flip left after {done} of {budget}")
        adj[i, j] = adj[j, i] = 1 - adj[i, j]
        flipped[i, j] = True
        done += i.numel()
    rows, cols = torch.nonzero(torch.triu(adj, 1), as_tuple=True)
    return undirected(torch.stack([rows, cols]).cpu())


def robust_adjacency(edge_index: torch.Tensor, num_nodes: int, *, alpha: float = -0.5) -> torch.Tensor:
    """STABLE's aggregation as (N, N) CSR (module docstring, step 3); ``alpha = -1/2`` is GCN's
    ``D~^{-1/2} (A + I) D~^{-1/2}``, any other ``alpha`` the row-normalised
    ``D~^alpha (A + I) D~^alpha``."""
    check_edge_index(edge_index, num_nodes)
    alpha = check_real("alpha", alpha)
    # show: start robust-norm
    deg = torch.bincount(edge_index[0], minlength=num_nodes).float() + 1.0  # d = (A + I) 1
    loops = torch.arange(num_nodes).repeat(2, 1)
    ei = torch.cat([edge_index, loops], dim=1)  # A + I
    w = deg[ei[0]] ** alpha * deg[ei[1]] ** alpha  # d_i^alpha d_j^alpha
    if alpha != -0.5:  # each receiving row (ei[1]) sums to one: its d^alpha cancels
        w = w / torch.zeros(num_nodes).index_add_(0, ei[1], w)[ei[1]]
    # show: end robust-norm
    return to_csr(ei, num_nodes, w)


class _Encoder(nn.Module):
    def __init__(self, in_features: int, hidden: int, out: int) -> None:
        super().__init__()
        self.lin1, self.lin2 = nn.Linear(in_features, hidden), nn.Linear(hidden, out)

    def forward(self, x: torch.Tensor, adj: torch.Tensor, dropout: float = 0.0) -> torch.Tensor:
        h = torch.relu(spmm(adj, self.lin1(x)))
        h = nn.functional.dropout(h, dropout, self.training)
        return spmm(adj, self.lin2(h))


def _drop_view(edge_index: torch.Tensor, n: int, drop: float, gen: torch.Generator) -> torch.Tensor:
    pairs = unique_pairs(edge_index, n)
    keep = torch.rand(pairs.shape[1], generator=gen) >= drop
    return robust_adjacency(undirected(pairs[:, keep]), n)


def contrastive_embeddings(x: torch.Tensor, edge_index: torch.Tensor, *, dim: int = 32, epochs: int = 100,
                           drop: float = 0.3, feature_mask: float = 0.2, tau: float = 0.5, lr: float = 0.01,
                           seed: int = 0) -> torch.Tensor:
    """Unsupervised node embeddings from two perturbed views (STABLE step 1), (N, D), unit norm.

    Each epoch draws two views (a ``drop`` share of edges removed, a ``feature_mask`` share of
    feature columns zeroed), encodes both with one 2-layer GCN and minimises InfoNCE: node i's
    embedding in view 1 must be most similar to node i's in view 2, among all N nodes.
    """
    n = x.shape[0]
    check_edge_index(edge_index, n)
    epochs = check_int("epochs", epochs, 1)
    for name, v in (("drop", drop), ("feature_mask", feature_mask)):
        if check_real(name, v, 0.0) >= 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {v}")
    tau = check_real("tau", tau, 0.0, strict=True)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    enc = _Encoder(x.shape[1], 2 * dim, dim)
    opt = torch.optim.Adam(enc.parameters(), lr=lr)
    target = torch.arange(n)
    for _ in range(epochs):
        # show: start contrast
        views = []
        for _ in range(2):  # two random perturbations of the same graph
            mask = (torch.rand(x.shape[1], generator=gen) >= feature_mask).float()
            adj = _drop_view(edge_index, n, drop, gen)
            views.append(nn.functional.normalize(enc(x * mask, adj), dim=1))
        sim = views[0] @ views[1].T / tau  # (N, N): row i should peak at column i
        loss = 0.5 * (nn.functional.cross_entropy(sim, target)
                      + nn.functional.cross_entropy(sim.T, target))
        # show: end contrast
        opt.zero_grad()
        loss.backward()
        opt.step()
    enc.eval()
    with torch.no_grad():
        return nn.functional.normalize(enc(x, robust_adjacency(edge_index, n)), dim=1)


@dataclass(frozen=True)
class RefinedGraph:
    """STABLE's refined structure.

    Attributes:
        edge_index: (2, M') the refined graph, both directions.
        pruned: (2, P) the undirected edges removed (each once, ``i < j``).
        added: (2, Q) the undirected edges added.
    """

    edge_index: torch.Tensor
    pruned: torch.Tensor
    added: torch.Tensor


def refine_structure(z: torch.Tensor, edge_index: torch.Tensor, *, threshold: float = 0.1,
                     k: int = 1) -> RefinedGraph:
    """Prune edges whose endpoints' cosine similarity is below ``threshold``; add each node's
    ``k`` most similar non-neighbours (STABLE step 2). ``z`` (N, D) must have unit rows."""
    n = z.shape[0]
    check_edge_index(edge_index, n)
    k = check_int("k", k, 0)
    threshold = float(check_real("threshold", threshold, -1.0))
    pairs = unique_pairs(edge_index, n)
    # show: start refine
    sim = (z[pairs[0]] * z[pairs[1]]).sum(1)  # cosine of each edge's endpoints
    keep = sim >= threshold
    pruned, kept = pairs[:, ~keep], pairs[:, keep]
    added = torch.empty(2, 0, dtype=torch.int64)
    if k > 0:
        all_sim = z @ z.T
        all_sim[pairs[0], pairs[1]] = all_sim[pairs[1], pairs[0]] = -2.0  # no existing edges
        all_sim.fill_diagonal_(-2.0)
        top = torch.topk(all_sim, k, dim=1).indices  # (N, k) nearest non-neighbours
        src = torch.arange(n).repeat_interleave(k)
        added = unique_pairs(undirected(torch.stack([src, top.flatten()])), n)
    # show: end refine
    refined = unique_pairs(undirected(torch.cat([kept, added], dim=1)), n)
    return RefinedGraph(undirected(refined), pruned, added)


@dataclass(frozen=True)
class NodeClassResult:
    """Test accuracy at the epoch of best validation accuracy, and that epoch."""

    test_acc: float
    valid_acc: float
    best_epoch: int


def train_node_gcn(x: torch.Tensor, adj: torch.Tensor, labels: torch.Tensor, masks: tuple[torch.Tensor, ...], *,
                   hidden: int = 32, epochs: int = 200, lr: float = 0.01, weight_decay: float = 5e-4,
                   dropout: float = 0.5, seed: int = 0) -> NodeClassResult:
    """A 2-layer GCN classifier trained full-batch on ``adj`` (N, N) CSR.

    Args:
        masks: boolean (train, valid, test) masks of shape (N,).
    """
    if adj.layout != torch.sparse_csr:
        raise TypeError(f"adj must be a torch.sparse_csr tensor, got layout {adj.layout}")
    epochs = check_int("epochs", epochs, 1)
    train, valid, test = masks
    torch.manual_seed(seed)
    model = _Encoder(x.shape[1], hidden, int(labels.max()) + 1)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    best = NodeClassResult(0.0, -1.0, 0)
    for epoch in range(1, epochs + 1):
        model.train()
        loss = nn.functional.cross_entropy(model(x, adj, dropout)[train], labels[train])
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.eval()
        with torch.no_grad():
            pred = model(x, adj).argmax(1)
        va = (pred[valid] == labels[valid]).float().mean().item()
        if va > best.valid_acc:
            best = NodeClassResult((pred[test] == labels[test]).float().mean().item(), va, epoch)
    return best


def inserted_mask(pairs: torch.Tensor, clean_edge_index: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """(P,) bool: which of the undirected ``pairs`` (2, P) are not edges of the clean graph."""
    clean = unique_pairs(clean_edge_index, num_nodes)
    lo, hi = torch.minimum(pairs[0], pairs[1]), torch.maximum(pairs[0], pairs[1])
    return ~torch.isin(lo * num_nodes + hi, clean[0] * num_nodes + clean[1])


def stable_defence(x: torch.Tensor, edge_index: torch.Tensor, labels: torch.Tensor,
                   masks: tuple[torch.Tensor, ...], *, threshold: float = 0.2, k: int = 1,
                   alpha: float = -0.5, contrast_epochs: int = 100, epochs: int = 100,
                   seed: int = 0) -> tuple[NodeClassResult, RefinedGraph, torch.Tensor]:
    """STABLE end to end: embeddings without labels, refined graph, GCN trained on it.

    ``alpha`` is the aggregation's degree exponent (:func:`robust_adjacency`); the default -1/2
    trains plain GCN on the refined graph, 0.5 is the authors' code's default.

    Returns:
        ``(result, refined, z)``: the classifier's accuracies, the refined graph and the (N, D)
        embeddings it was refined with.
    """
    z = contrastive_embeddings(x, edge_index, epochs=contrast_epochs, seed=seed)
    refined = refine_structure(z, edge_index, threshold=threshold, k=k)
    adj = robust_adjacency(refined.edge_index, x.shape[0], alpha=alpha)
    return train_node_gcn(x, adj, labels, masks, epochs=epochs, seed=seed), refined, z
