"""CommFormer: agents learn whom to listen to, as a sparse graph trained with the policy.

Paper: "Communication Learning in Multi-Agent Systems from Graph Modeling Perspective", Hu,
Shen, Zhang and Tao, 2024, arXiv:2411.00382.

The paper treats the communication architecture of N agents as a learnable directed graph.
Each possible edge j -> i has a logit alpha_ij; the graph used in a forward pass keeps, for
every receiving agent, its k largest logits, and messages travel by attention along the kept
edges only. The discrete choice is made differentiable with a relaxation, and the logits and
the network's weights are updated as a bi-level problem, in alternation.

Our reading, in miniature: a supervised task instead of reinforcement learning. Each of N
agents holds a private vector x_i; agent i must output the sum of the vectors of its planted
sources, a hidden sparse dependency graph. The relaxation is a *straight-through* top-k: the
forward pass uses the hard 0/1 mask of each row's k largest logits (no noise, no Gumbel),
the backward pass uses the gradient of sigmoid(alpha). The mask multiplies the attention's
exponentials, so the forward pass is exactly a softmax over the kept edges, and a dropped
edge still gets a gradient saying how much keeping it would lower the loss. Even batches
update the weights, odd batches the logits. Random k-edge, full and empty graphs are the
baselines, trained with the same weights and batches.

Shapes: B samples, N agents, D private dimensions, H hidden width; masks are (N, N) with
mask[i, j] = 1 when agent i listens to agent j.
Section: chapter 16, "CommFormer and Adversarial Cheap Talk".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from labkit.validation import check_int, check_real

__all__ = [
    "CommFormer",
    "GraphRun",
    "edge_precision",
    "planted_graph",
    "random_graph",
    "sample_task",
    "top_k_mask",
    "train_graph",
]


def _check_k(k: object, n_agents: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if k > n_agents - 1:
        raise ValueError(f"k must be at most N - 1 = {n_agents - 1} (an agent "
                         f"cannot listen to more than the others), got {k}")
    return check_int("k", k, 0, n_agents - 1)


def planted_graph(n_agents: int, k: int, *, seed: int = 0) -> torch.Tensor:
    """The hidden dependency graph: each agent depends on ``k`` others, drawn at random.

    Returns a float (N, N) 0/1 matrix, zero diagonal, ``k`` ones per row.
    """
    n_agents = check_int("n_agents", n_agents, 2)
    k = _check_k(k, n_agents)
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(n_agents, n_agents, generator=g)
    return top_k_mask(scores, k)


def random_graph(n_agents: int, k: int, *, seed: int = 0) -> torch.Tensor:
    """A baseline graph with ``k`` random in-edges per agent (same law as the planted one)."""
    return planted_graph(n_agents, k, seed=seed + 10_000)


def sample_task(graph: torch.Tensor, batch: int, dim: int, *,
                generator: torch.Generator | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Private vectors ``x`` (B, N, D) and targets ``y = graph @ x``: each agent's target is
    the sum of its planted sources' vectors."""
    batch = check_int("batch", batch, 1)
    dim = check_int("dim", dim, 1)
    x = torch.randn(batch, graph.shape[0], dim, generator=generator)
    return x, torch.einsum("ij,bjd->bid", graph, x)


def top_k_mask(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Hard 0/1 mask of each row's ``k`` largest off-diagonal entries (no gradient)."""
    n = logits.shape[-1]
    k = _check_k(k, n)
    eye = torch.eye(n, dtype=torch.bool, device=logits.device)
    scores = logits.detach().masked_fill(eye, float("-inf"))
    mask = torch.zeros_like(scores)
    if k > 0:
        mask.scatter_(-1, scores.topk(k, dim=-1).indices, 1.0)
    return mask


def edge_precision(learned: torch.Tensor, planted: torch.Tensor) -> float:
    """Share of the learned graph's edges that are planted edges."""
    if learned.shape != planted.shape:
        raise ValueError(f"learned and planted must have one shape, got "
                         f"{tuple(learned.shape)} and {tuple(planted.shape)}")
    kept = float(learned.sum())
    if kept == 0:
        raise ValueError("learned has no edges: precision is undefined")
    return float((learned * planted).sum()) / kept


class CommFormer(nn.Module):
    """Agents that embed their private vector, attend along a graph's edges, and predict.

    ``edge_logits`` are the learnable graph (used when ``fixed`` is None); a fixed 0/1 mask
    turns the same network into a baseline with a given graph.
    """

    def __init__(self, n_agents: int, dim: int, k: int, *, hidden: int = 32,
                 fixed: torch.Tensor | None = None) -> None:
        super().__init__()
        self.n, self.k = check_int("n_agents", n_agents, 2), _check_k(k, n_agents)
        dim, hidden = check_int("dim", dim, 1), check_int("hidden", hidden, 1)
        self.embed = nn.Linear(dim + n_agents, hidden)  # private vector + id
        self.query = nn.Linear(hidden, hidden, bias=False)
        self.key = nn.Linear(hidden, hidden, bias=False)
        self.value = nn.Linear(hidden, hidden, bias=False)
        self.head = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.Tanh(),
                                  nn.Linear(hidden, dim))
        self.edge_logits = nn.Parameter(0.01 * torch.randn(n_agents, n_agents))
        self.register_buffer("fixed", fixed)

    def graph(self) -> torch.Tensor:
        """The graph of a forward pass: the fixed mask or the straight-through top-k."""
        if self.fixed is not None:
            return self.fixed
        # show: start relax
        alpha = self.edge_logits
        hard = top_k_mask(alpha, self.k)  # k largest logits per receiving row
        soft = torch.sigmoid(alpha)
        return hard + soft - soft.detach()  # forward: hard; backward: d sigmoid
        # show: end relax

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Predictions (B, N, D) for private vectors ``x`` (B, N, D)."""
        ids = torch.eye(self.n, device=x.device).expand(x.shape[0], -1, -1)
        h = torch.tanh(self.embed(torch.cat([x, ids], -1)))  # (B, N, H)
        # show: start attend
        m = self.graph()  # (N, N), m[i, j] = 1: i listens to j
        q, key, v = self.query(h), self.key(h), self.value(h)
        s = q @ key.transpose(-1, -2) / h.shape[-1] ** 0.5  # (B, N, N)
        e = m * torch.exp(s - s.amax(-1, keepdim=True).detach())
        w = e / e.sum(-1, keepdim=True).clamp_min(1e-9)  # masked softmax
        msg = w @ v  # zero for an agent that listens to nobody
        return self.head(torch.cat([h, msg], -1))
        # show: end attend


@dataclass
class GraphRun:
    """One training run: the final graph, the held-out loss and the loss curve."""

    graph: torch.Tensor
    test_loss: float
    curve: list[float]


def train_graph(planted: torch.Tensor, k: int, *, dim: int = 4,
                steps: int = 600, batch: int = 128, lr: float = 1e-2,
                edge_lr: float = 5e-2, fixed: torch.Tensor | None = None,
                seed: int = 0, n_test: int = 2048) -> GraphRun:
    """Train a :class:`CommFormer` on the planted task; the graph is learned unless ``fixed``.

    Learned graphs alternate: even batches step the weights, odd batches the edge logits
    (bi-level, one step each). A fixed graph steps its weights on every batch: at equal
    batches the baselines get twice the weight updates, which favours them.
    """
    n = planted.shape[0]
    k = _check_k(k, n)
    steps = check_int("steps", steps, 1)
    lr, edge_lr = check_real("lr", lr, 0, strict=True), check_real(
        "edge_lr", edge_lr, 0, strict=True)
    torch.manual_seed(seed)
    net = CommFormer(n, dim, k, fixed=fixed)
    weights = [p for name, p in net.named_parameters() if name != "edge_logits"]
    opt_w = torch.optim.Adam(weights, lr=lr)
    opt_a = torch.optim.Adam([net.edge_logits], lr=edge_lr)
    gen = torch.Generator().manual_seed(seed + 1)
    curve = []
    # show: start bilevel
    for step in range(steps):
        x, y = sample_task(planted, batch, dim, generator=gen)
        loss = (net(x) - y).pow(2).mean()
        learn_edges = fixed is None and step % 2 == 1
        opt = opt_a if learn_edges else opt_w  # alternate: logits, weights
        opt_w.zero_grad()
        opt_a.zero_grad()
        loss.backward()
        opt.step()
        curve.append(float(loss.detach()))
    # show: end bilevel
    xt, yt = sample_task(planted, n_test, dim,
                         generator=torch.Generator().manual_seed(seed + 2))
    with torch.no_grad():
        test = float((net(xt) - yt).pow(2).mean())
        graph = net.graph().detach().round()
    return GraphRun(graph, test, curve)
