"""Todyformer: time patches, an MPNN tokeniser and a transformer over each node's patches.

After "Todyformer: Towards Holistic Dynamic Graph Transformers with Structure-Aware
Tokenization" (Biparva et al., arXiv:2402.05944). A dynamic graph is a stream of events
(src, dst, t). Memory-less temporal message passing (TGAT and its kin) reads only recent
events, so a pair that meets again after a long pause looks new to it. Todyformer cuts a long
stretch of history into time patches, lets a message-passing layer turn each patch into one
token per node (local: structure inside the patch), then runs a transformer over each node's
patch tokens with a temporal positional encoding (global: across patches); local and global
blocks alternate.

The stream here is one seeded generator: every node has a partner it meets with a fixed period,
amid random noise events; some nodes arrive late and are never seen in training (the inductive
setting). The miniature leaves out the paper's packing, its many datasets and its negative
sampling schemes; one layer of temporal attention stands in for TGAT.

Shapes: E events, N nodes, F node features, D hidden, M patches, Q queries, K negatives.
Section: chapter 04, "Todyformer".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score
from torch import nn

from ..validation import check_int, check_real, check_tensor
from .edges import degree

__all__ = ["EventStream", "LinkModel", "LinkScores", "TemporalAttention", "TemporalSplit",
           "TimeEncoding", "Todyformer", "average_precision", "check_events",
           "link_scores", "mean_reciprocal_rank", "periodic_stream",
           "temporal_split", "time_patches", "train_link_predictor"]


def check_events(src: torch.Tensor, dst: torch.Tensor, t: torch.Tensor,
                 n_nodes: int) -> None:
    """Raise unless (src, dst, t) is a valid event stream sorted by time."""
    check_int("n_nodes", n_nodes, 1)
    for name, v in (("src", src), ("dst", dst)):
        check_tensor(name, v, dims=1, dtype="integer", shape="(E,)")
        if v.numel() and (int(v.min()) < 0 or int(v.max()) >= n_nodes):
            raise ValueError(f"{name} must hold node ids in [0, {n_nodes})")
    check_tensor("t", t, dims=1, dtype="float", shape="(E,)")
    if not src.shape == dst.shape == t.shape:
        raise ValueError(f"src, dst and t must have the same length, got "
                         f"{src.numel()}, {dst.numel()}, {t.numel()}")
    bad = torch.nonzero(t[1:] < t[:-1])
    if bad.numel():
        i = int(bad[0])
        raise ValueError(f"events must be sorted by time: t[{i}] = "
                         f"{float(t[i]):g} > t[{i + 1}] = {float(t[i + 1]):g}")


@dataclass(frozen=True)
class EventStream:
    """A time-sorted event stream with fixed node features.

    Attributes:
        src, dst: (E,) node ids; t: (E,) times, non-decreasing.
        x: (N, F) node features (random, fixed: they carry no label).
        gap: (E,) events since the same (src, dst) pair last occurred; -1 if never.
        planted: (E,) True for events of a periodic pair, False for noise.
    """

    src: torch.Tensor
    dst: torch.Tensor
    t: torch.Tensor
    x: torch.Tensor
    gap: torch.Tensor
    planted: torch.Tensor

    def __post_init__(self) -> None:
        check_tensor("x", self.x, dims=2, dtype="float", shape="(N, F)")
        check_events(self.src, self.dst, self.t, self.x.shape[0])
        for name, v in (("gap", self.gap), ("planted", self.planted)):
            if v.shape != self.t.shape:
                raise ValueError(f"{name} must have shape ({self.t.numel()},), "
                                 f"got {tuple(v.shape)}")

    @property
    def n_nodes(self) -> int:
        """N."""
        return self.x.shape[0]

    def __len__(self) -> int:
        return self.t.numel()


def _pair_gaps(src: torch.Tensor, dst: torch.Tensor, n_nodes: int) -> torch.Tensor:
    """For each event, events since its (src, dst) pair last occurred (-1: first time)."""
    last: dict[int, int] = {}
    gap = torch.full_like(src, -1)
    for i, key in enumerate((src * n_nodes + dst).tolist()):
        if key in last:
            gap[i] = i - last[key]
        last[key] = i
    return gap


def periodic_stream(n_nodes: int, *, periods: list[float], n_new: int = 0,
                    duration: float = 1000.0, noise_rate: float = 1.0,
                    new_after: float = 0.7, jitter: float = 0.05,
                    features: int = 16, seed: int = 0) -> EventStream:
    """A seeded stream: each node meets one partner with a fixed period, amid noise.

    Node u's pair (u -> partner) has a period drawn from ``periods`` (time units) and recurs
    with relative jitter ``jitter``; noise events join random nodes at ``noise_rate`` per time
    unit. The last ``n_new`` nodes (and their pairs) appear only after ``new_after`` of the
    duration, for the inductive setting.
    """
    check_int("n_nodes", n_nodes, 2)
    check_int("n_new", n_new, 0)
    check_int("features", features, 1)
    if not periods:
        raise ValueError("periods must not be empty")
    for p in periods:
        check_real("periods[i]", p, 0.0, strict=True)
    check_real("duration", duration, 0.0, strict=True)
    check_real("noise_rate", noise_rate, 0.0)
    check_real("jitter", jitter, 0.0)
    if not 0.0 <= new_after < 1.0:
        raise ValueError(f"new_after must be in [0, 1), got {new_after}")
    rng = np.random.default_rng(seed)
    total = n_nodes + n_new
    start = np.where(np.arange(total) >= n_nodes, new_after * duration, 0.0)
    src, dst, t, planted = [], [], [], []
    for u in range(total):
        period = float(rng.choice(periods))
        # a partner among the first n_nodes, never u itself
        partner = int(rng.integers(n_nodes - (u < n_nodes)))
        partner += int(u < n_nodes and partner >= u)
        k = np.arange(math.ceil(duration / period) + 1)
        times = start[u] + rng.uniform(0, period) + k * period
        times = times + rng.normal(0, jitter * period, times.shape)
        times = times[(times >= start[u]) & (times < duration)]
        src += [u] * len(times)
        dst += [partner] * len(times)
        t += times.tolist()
        planted += [True] * len(times)
    n_noise = rng.poisson(noise_rate * duration)
    times = rng.uniform(0, duration, n_noise)
    for time in times:
        alive = n_nodes + n_new * (time >= new_after * duration)
        a, b = rng.choice(alive, 2, replace=False)
        src.append(int(a))
        dst.append(int(b))
    t += times.tolist()
    planted += [False] * n_noise
    order = np.argsort(np.asarray(t), kind="stable")
    src_t = torch.tensor(src)[order]
    dst_t = torch.tensor(dst)[order]
    gen = torch.Generator().manual_seed(seed)
    return EventStream(src=src_t, dst=dst_t,
                       t=torch.tensor(t, dtype=torch.float32)[order],
                       x=torch.randn(total, features, generator=gen),
                       gap=_pair_gaps(src_t, dst_t, total),
                       planted=torch.tensor(planted)[order])


@dataclass(frozen=True)
class TemporalSplit:
    """Event indices of a time-respecting split.

    Attributes:
        train, val, test: (E_*,) event indices, every train event before every val event,
            every val event before every test event.
        seen: (N,) True for nodes that occur in a training event.
    """

    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    seen: torch.Tensor

    def inductive(self, stream: EventStream, index: torch.Tensor) -> torch.Tensor:
        """Mask over ``index``: events with a node never seen in training."""
        return ~(self.seen[stream.src[index]] & self.seen[stream.dst[index]])


def temporal_split(stream: EventStream, *, val: float = 0.15, test: float = 0.15,
                   span: tuple[float, float] | None = None) -> TemporalSplit:
    """Cut the stream by time: the last ``test`` share of its time span is test, before it val.

    Cutting at times (not event counts) keeps events of equal time on one side; with ``span``
    set to ``(0, duration)`` the cut lines up with :func:`periodic_stream`'s ``new_after``
    (default span: first to last event).
    """
    check_real("val", val, 0.0, strict=True)
    check_real("test", test, 0.0, strict=True)
    if val + test >= 1.0:
        raise ValueError(f"val + test must be below 1, got {val + test}")
    check_events(stream.src, stream.dst, stream.t, stream.n_nodes)
    if len(stream) == 0:
        raise ValueError("the stream has no events")
    lo, hi = span if span is not None else (float(stream.t[0]),
                                            float(stream.t[-1]))
    if not hi > lo:
        raise ValueError(f"span must be (start, end) with end > start, got {span}")
    t_val = lo + (1 - val - test) * (hi - lo)
    t_test = lo + (1 - test) * (hi - lo)
    idx = torch.arange(len(stream))
    train = idx[stream.t < t_val]
    seen = torch.zeros(stream.n_nodes, dtype=torch.bool)
    seen[stream.src[train]] = True
    seen[stream.dst[train]] = True
    return TemporalSplit(train=train,
                         val=idx[(stream.t >= t_val) & (stream.t < t_test)],
                         test=idx[stream.t >= t_test], seen=seen)


def time_patches(t: torch.Tensor, start: float, end: float,
                 patches: int) -> torch.Tensor:
    """Patch id of each event time: [start, end) cut into ``patches`` equal intervals."""
    check_int("patches", patches, 1)
    check_tensor("t", t, dims=1, dtype="float", shape="(E,)")
    if not end > start:
        raise ValueError(f"end must be after start, got [{start}, {end})")
    # show: start time_patches
    width = (end - start) / patches
    pid = torch.floor((t - start) / width).long()        # (E,) patch of each event
    return pid.clamp(0, patches - 1)
    # show: end time_patches


class TimeEncoding(nn.Module):
    """TGAT's functional time encoding: phi(dt) = cos(w dt + b), w learned per channel."""

    def __init__(self, dim: int, *, longest: float = 1000.0) -> None:
        super().__init__()
        check_int("dim", dim, 1)
        self.w = nn.Parameter(1.0 / torch.logspace(0, math.log10(longest), dim))
        self.b = nn.Parameter(torch.zeros(dim))

    def forward(self, dt: torch.Tensor) -> torch.Tensor:
        """(...,) time differences -> (..., dim)."""
        return torch.cos(dt.unsqueeze(-1) * self.w + self.b)


def _scatter_mean(values: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    out = values.new_zeros(n, values.shape[1]).index_add_(0, index, values)
    return out / degree(index, n).clamp(min=1).unsqueeze(1).to(values.dtype)


def _both_ways(src: torch.Tensor, dst: torch.Tensor,
               t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.cat([src, dst]), torch.cat([dst, src]), torch.cat([t, t])


class LinkModel(nn.Module):
    """What both models share: ``context`` past events read, and a bilinear link score.

    A subclass sets ``context`` and implements ``embed(x, src, dst, t, now) -> (N, D)`` from
    the ``context`` events before ``now``.
    """

    context: int

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.left = nn.Linear(hidden, hidden)
        self.right = nn.Linear(hidden, hidden)

    def embed(self, x: torch.Tensor, src: torch.Tensor, dst: torch.Tensor,
              t: torch.Tensor, now: float) -> torch.Tensor:
        raise NotImplementedError

    def score(self, h: torch.Tensor, u: torch.Tensor,
              v: torch.Tensor) -> torch.Tensor:
        """(N, D) embeddings, (...,) pairs -> (...,) logits."""
        return (self.left(h[u]) * self.right(h[v])).sum(-1)


class TemporalAttention(LinkModel):
    """The baseline: one layer of TGAT-like attention over the last ``window`` events.

    A node attends over the neighbours it met in the window, each key and value made of the
    neighbour's features and the time encoding of how long ago they met. It keeps no memory:
    an event older than the window is gone.
    """

    def __init__(self, features: int, hidden: int = 32, *, window: int = 64,
                 time_dim: int = 8) -> None:
        super().__init__(hidden)
        check_int("features", features, 1)
        check_int("hidden", hidden, 1)
        self.context = check_int("window", window, 1)
        self.time = TimeEncoding(time_dim)
        self.query = nn.Linear(features + time_dim, hidden)
        self.key = nn.Linear(features + time_dim, hidden)
        self.value = nn.Linear(features + time_dim, hidden)
        self.out = nn.Sequential(nn.Linear(features + hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden))

    def embed(self, x: torch.Tensor, src: torch.Tensor, dst: torch.Tensor,
              t: torch.Tensor, now: float) -> torch.Tensor:
        """(N, D) node embeddings at time ``now`` from the window's events."""
        n = x.shape[0]
        # show: start temporal_attention
        s, d, te = _both_ways(src, dst, t)
        q = self.query(torch.cat([x, self.time(x.new_zeros(n))], 1))   # (N, D)
        kv = torch.cat([x[s], self.time(now - te)], 1)                 # (2E, F+T)
        k, v = self.key(kv), self.value(kv)
        logit = (q[d] * k).sum(1) / math.sqrt(q.shape[1])             # (2E,)
        # softmax over each node's incoming messages
        top = logit.new_full((n,), -math.inf).scatter_reduce(
            0, d, logit, "amax")
        w = torch.exp(logit - top[d])
        norm = w.new_zeros(n).index_add_(0, d, w).clamp(min=1e-9)
        att = v.new_zeros(n, v.shape[1]).index_add_(
            0, d, w.unsqueeze(1) * v)
        return self.out(torch.cat([x, att / norm.unsqueeze(1)], 1))
        # show: end temporal_attention


class Todyformer(LinkModel):
    """Patches of history, an MPNN tokeniser per patch, a transformer over patch tokens.

    Args:
        features: F.
        hidden: D.
        span: past events read (the history cut into patches).
        patches: M.
        blocks: alternating local (MPNN) and global (transformer) block pairs.
        heads: attention heads of the global blocks.
        time_dim: size of the time encoding.
    """

    def __init__(self, features: int, hidden: int = 32, *, span: int = 512,
                 patches: int = 4, blocks: int = 2, heads: int = 2,
                 time_dim: int = 8) -> None:
        super().__init__(hidden)
        check_int("features", features, 1)
        check_int("hidden", hidden, 1)
        self.context = check_int("span", span, 1)
        self.patches = check_int("patches", patches, 1)
        check_int("blocks", blocks, 1)
        self.time = TimeEncoding(time_dim)
        self.inp = nn.Linear(features, hidden)
        self.msg = nn.ModuleList(nn.Linear(hidden + time_dim, hidden)
                                 for _ in range(blocks))
        self.self_lin = nn.ModuleList(nn.Linear(hidden, hidden)
                                      for _ in range(blocks))
        self.pos = nn.ModuleList(nn.Linear(time_dim, hidden)
                                 for _ in range(blocks))
        self.glob = nn.ModuleList(nn.TransformerEncoderLayer(
            hidden, heads, 2 * hidden, dropout=0.0, batch_first=True)
            for _ in range(blocks))
        self.norm = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(blocks))
        self.out = nn.Linear(2 * hidden, hidden)

    def embed(self, x: torch.Tensor, src: torch.Tensor, dst: torch.Tensor,
              t: torch.Tensor, now: float) -> torch.Tensor:
        """(N, D) node embeddings at time ``now`` from the span's events."""
        n, m = x.shape[0], self.patches
        begin = float(t[0]) if t.numel() else now - 1.0
        end = max(now, begin + 1e-6)
        pid = time_patches(t, begin, end, m)
        centre = begin + (torch.arange(m) + 0.5) * (end - begin) / m
        base = self.inp(x)                                           # (N, D)
        # show: start todyformer
        s, d, te = _both_ways(src, dst, t)
        p = torch.cat([pid, pid])
        # token (v, p) lives at row v * M + p; a patch's events link its tokens,
        # a pair met twice in one patch counts once (at its latest time)
        key, inv = torch.unique(s * n * m + d * m + p, return_inverse=True)
        te = te.new_full(key.shape, -math.inf).scatter_reduce(
            0, inv, te, "amax")
        s_tok, d_tok = key // (n * m) * m + key % m, key % (n * m)
        p = key % m
        patch_end = begin + (p + 1).float() * (end - begin) / m
        dt = self.time(patch_end - te)                               # (U, T)
        h = base.unsqueeze(1).expand(n, m, -1).reshape(n * m, -1)    # (NM, D)
        for msg, lin, pos, glob, norm in zip(self.msg, self.self_lin, self.pos,
                                             self.glob, self.norm):
            # local block: message passing inside each patch (the tokeniser)
            agg = _scatter_mean(msg(torch.cat([h[s_tok], dt], 1)), d_tok,
                                n * m)
            h = norm(h + F.relu(lin(h) + agg))
            # global block: transformer over each node's M patch tokens, with
            # the time from each patch's centre to now as positional encoding
            seq = h.view(n, m, -1) + pos(self.time(now - centre))     # (N, M, D)
            h = glob(seq).reshape(n * m, -1)
        tokens = h.view(n, m, -1)                                    # (N, M, D)
        # show: end todyformer
        return self.out(torch.cat([base, tokens.mean(1)], 1))


@dataclass(frozen=True)
class LinkScores:
    """Scores of Q query events and K sampled negatives each.

    Attributes:
        index: (Q,) event index of each query.
        pos: (Q,) logit of the true (src, dst).
        neg: (Q, K) logits of (src, random dst).
    """

    index: torch.Tensor
    pos: torch.Tensor
    neg: torch.Tensor

    def subset(self, mask: torch.Tensor) -> "LinkScores":
        """The queries where ``mask`` holds."""
        return LinkScores(self.index[mask], self.pos[mask], self.neg[mask])


def _negatives(stream: EventStream, index: torch.Tensor, k: int,
               gen: torch.Generator) -> torch.Tensor:
    """(Q, K) destinations drawn among nodes already present at each query."""
    n = stream.n_nodes
    first = torch.full((n,), len(stream), dtype=torch.long)
    idx = torch.arange(len(stream))
    first.scatter_reduce_(0, stream.src, idx, "amin")
    first.scatter_reduce_(0, stream.dst, idx, "amin")
    order = torch.argsort(first)
    count = torch.searchsorted(first[order], index, right=True).clamp(min=2)
    draw = (torch.rand(index.numel(), k, generator=gen)
            * count.unsqueeze(1)).long()
    neg = order[draw]
    # never the true destination: step to the next present node instead
    hit = neg == stream.dst[index].unsqueeze(1)
    neg[hit] = order[(draw[hit] + 1) % count.unsqueeze(1).expand_as(draw)[hit]]
    return neg


def _blocks(index: torch.Tensor, batch: int) -> list[tuple[int, torch.Tensor]]:
    """Queries grouped by stream block of ``batch`` events: (block start, queries)."""
    start = (index // batch) * batch
    return [(int(b), index[start == b]) for b in torch.unique(start)]


def link_scores(model: LinkModel, stream: EventStream, index: torch.Tensor, *,
                negatives: int = 10, batch: int = 32, seed: int = 0) -> LinkScores:
    """Score each query event against ``negatives`` random destinations.

    Queries are grouped in blocks of ``batch`` consecutive events; a block's queries see the
    ``model.context`` events before the block and nothing after.
    """
    _check_run(model, stream, "index", index)
    check_int("negatives", negatives, 1)
    check_int("batch", batch, 1)
    gen = torch.Generator().manual_seed(seed)
    pos, neg = [], []
    index = torch.sort(index).values
    with torch.no_grad():
        for b0, q in _blocks(index, batch):
            h = _embed_before(model, stream, b0)
            u = stream.src[q]
            pos.append(model.score(h, u, stream.dst[q]))
            nv = _negatives(stream, q, negatives, gen)
            neg.append(model.score(h, u.unsqueeze(1).expand_as(nv), nv))
    return LinkScores(index, torch.cat(pos), torch.cat(neg))


def _check_run(model: object, stream: object, name: str,
               index: object) -> None:
    if not isinstance(model, LinkModel):
        raise TypeError(f"model must be a LinkModel (Todyformer, TemporalAttention), "
                        f"got {type(model).__name__}")
    if not isinstance(stream, EventStream):
        raise TypeError(f"stream must be an EventStream, got {type(stream).__name__}")
    check_tensor(name, index, dims=1, dtype="integer", shape="(Q,)")
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= len(stream)):
        raise ValueError(f"{name} must hold event indices in [0, {len(stream)})")


def _embed_before(model: LinkModel, stream: EventStream, b0: int,
                  x: torch.Tensor | None = None) -> torch.Tensor:
    lo = max(0, b0 - model.context)
    now = float(stream.t[b0])
    return model.embed(stream.x if x is None else x, stream.src[lo:b0],
                       stream.dst[lo:b0], stream.t[lo:b0], now)


def train_link_predictor(model: LinkModel, stream: EventStream,
                         train: torch.Tensor, *, epochs: int = 3,
                         batch: int = 32, lr: float = 3e-3,
                         fresh_features: bool = True,
                         seed: int = 0) -> list[float]:
    """Adam on binary cross-entropy, one negative per event, blocks in time order.

    With ``fresh_features`` every block draws new random node features: features then name
    nodes only for the moment, so a model cannot memorise who meets whom and must read it from
    the history, which is what lets it score nodes it never saw.

    Returns the mean loss of each epoch.
    """
    _check_run(model, stream, "train", train)
    check_int("epochs", epochs, 1)
    check_int("batch", batch, 1)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    blocks = [(b0, q) for b0, q in _blocks(train, batch) if b0 > 0]
    losses = []
    for _ in range(epochs):
        total = 0.0
        for b0, q in blocks:
            x = (torch.randn(stream.x.shape, generator=gen)
                 if fresh_features else None)
            h = _embed_before(model, stream, b0, x)
            u = stream.src[q]
            nv = _negatives(stream, q, 1, gen)[:, 0]
            logits = torch.cat([model.score(h, u, stream.dst[q]),
                                model.score(h, u, nv)])
            target = torch.cat([torch.ones(q.numel()), torch.zeros(q.numel())])
            loss = F.binary_cross_entropy_with_logits(logits, target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach())
        losses.append(total / max(len(blocks), 1))
    return losses


def average_precision(scores: LinkScores) -> float:
    """AP of positives against the first negative of each (one negative per positive)."""
    if scores.pos.numel() == 0:
        return float("nan")
    y = np.r_[np.ones(scores.pos.numel()), np.zeros(scores.pos.numel())]
    s = torch.cat([scores.pos, scores.neg[:, 0]]).numpy()
    return float(average_precision_score(y, s))


def mean_reciprocal_rank(scores: LinkScores) -> float:
    """Mean of 1 / rank of the positive among itself and its K negatives (ties count half)."""
    if scores.pos.numel() == 0:
        return float("nan")
    above = (scores.neg > scores.pos.unsqueeze(1)).sum(1).float()
    ties = (scores.neg == scores.pos.unsqueeze(1)).sum(1).float()
    return float((1.0 / (1.0 + above + 0.5 * ties)).mean())
