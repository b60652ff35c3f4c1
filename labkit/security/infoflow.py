"""Permissive information-flow labels for a retrieval-augmented byte model (a kNN-LM).

Paper: "Permissive Information-Flow Analysis for Large Language Models" (Siddiqui et al.,
2024). Every input of a model carries a label from a lattice (here public ⊑ internal ⊑
secret). The classic propagator labels an output with the join of the labels of *all* its
inputs, which is safe and, once a model reads many documents, nearly always the top of the
lattice. The paper's permissive propagators keep only the labels of the inputs that
*influenced* the output: an output that the model would have produced from the public
documents alone may be labelled public, however many secret ones were retrieved beside them.

The miniature: the model is a kNN-LM (Khandelwal et al., 2020) on the tiny byte GPT. Its
datastore holds one entry per byte position of each labelled document: the key is the GPT's
final hidden state (the output of the last LayerNorm, read with a forward hook, so the model
and its cached weights are untouched), the value the next byte, the tag the document. The
next-byte distribution is

    p(y | x) = λ p_kNN(y | x) + (1 - λ) p_LM(y | x),
    p_kNN(y | x) ∝ Σ_{j in the K nearest entries, v_j = y} exp(-||h(x) - k_j||² / τ),

with the K nearest entries searched only among the documents a query retrieved. A query
retrieves k documents and generates a fixed number of bytes greedily; the propagators re-run
the generation on subsets of those documents:

- :func:`join_label`: the join of every retrieved label (the baseline);
- :func:`leave_one_out`: the join of the labels of the documents whose removal alone
  changes the output;
- :func:`minimal_subset`: drop documents one at a time, highest label first, while the
  output stays the same; the output's label is the join of what remains, a set that
  reproduces the output by construction.

Shapes: N datastore entries, D hidden width, Q queries, T context bytes, M documents.
Section: chapter 15, "Permissive information flow".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from labkit.lm import GPT

if TYPE_CHECKING:
    import plotly.graph_objects as go
from labkit.validation import check_int, check_real, check_tokens

__all__ = ["Datastore", "FlowResult", "LabelledCorpus", "Lattice", "build_datastore",
           "generate", "hidden_states", "join_label", "knn_lm_logprobs", "label_shares",
           "labelled_corpus", "leave_one_out", "minimal_subset", "propagate",
           "retrieve_documents", "shares_figure"]

#: ``run(allowed (Q, M) bool) -> (Q, n)``: the generation a propagator repeats on subsets
Runner = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Lattice:
    """A totally ordered label lattice: ``levels[0]`` ⊑ ``levels[1]`` ⊑ ...

    Attributes:
        levels: the label names, lowest first (at least one, no repeats).
    """

    levels: tuple[str, ...] = ("public", "internal", "secret")

    def __post_init__(self) -> None:
        if not self.levels or len(set(self.levels)) != len(self.levels):
            raise ValueError(f"levels must be distinct names, at least one, got {self.levels!r}")

    def rank(self, label: str) -> int:
        """The position of ``label`` in the lattice (0 is the bottom)."""
        if label not in self.levels:
            raise ValueError(f"label {label!r} is not in the lattice {self.levels}")
        return self.levels.index(label)

    def join(self, labels: Sequence[str]) -> str:
        """The least upper bound of ``labels`` (the bottom for none)."""
        return self.levels[max((self.rank(x) for x in labels), default=0)]

    def leq(self, a: str, b: str) -> bool:
        """Whether ``a`` ⊑ ``b``."""
        return self.rank(a) <= self.rank(b)


@dataclass(frozen=True)
class Datastore:
    """The kNN-LM's memory; build it with :func:`build_datastore`.

    Attributes:
        keys: (N, D) float hidden states.
        values: (N,) int64 next bytes.
        doc: (N,) int64 document of each entry.
        labels: the label of each document, in document order.
        lattice: the lattice the labels belong to.
    """

    keys: torch.Tensor
    values: torch.Tensor
    doc: torch.Tensor
    labels: tuple[str, ...]
    lattice: Lattice

    @property
    def n_docs(self) -> int:
        """How many documents the datastore holds."""
        return len(self.labels)


@torch.no_grad()
def hidden_states(model: GPT, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The GPT's final hidden states and next-byte log-probabilities for ``idx`` (B, T).

    The hidden state is the output of ``model.ln_f``, read by a forward hook for this call only.

    Returns:
        ``(h (B, T, D), logp (B, T, 256))``.
    """
    if not isinstance(model, GPT):
        raise TypeError(f"model must be a labkit GPT, got {type(model).__name__}")
    idx = check_tokens("idx", idx, dims=2, vocab_size=model.cfg.vocab_size)
    seen: list[torch.Tensor] = []
    handle = model.ln_f.register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        logits = model(idx).logits
    finally:
        handle.remove()
    return seen[0], logits.log_softmax(-1)


def build_datastore(model: GPT, documents: Sequence[bytes], labels: Sequence[str], *,
                    lattice: Lattice | None = None) -> Datastore:
    """One entry per byte position of each document that has a next byte.

    Each document is read in windows of the model's ``block_size`` (every window after the
    first starts half a block earlier, so each entry sees at least half a block of context).

    Args:
        model: the GPT whose hidden states are the keys.
        documents: the texts, each at least two bytes.
        labels: one label of ``lattice`` per document.
        lattice: default ``Lattice()`` (public, internal, secret).
    """
    lattice = Lattice() if lattice is None else lattice
    if len(documents) != len(labels) or not documents:
        raise ValueError(f"documents and labels must be non-empty and of equal length, got "
                         f"{len(documents)} and {len(labels)}")
    for label in labels:
        lattice.rank(label)
    block = model.cfg.block_size
    spans = []  # (document, window start, first stored position, stop)
    for d, text in enumerate(documents):
        if not isinstance(text, bytes) or len(text) < 2:
            raise ValueError(f"documents[{d}] must be bytes of length >= 2")
        start, first = 0, 0  # `first`: the first position of this window not stored yet
        while first < len(text) - 1:
            stop = min(start + block, len(text) - 1)  # positions with a next byte
            spans.append((d, start, first, stop))
            first, start = stop, stop - block // 2
    # one batch: windows padded on the right, which a causal model never reads
    windows = torch.zeros(len(spans), block, dtype=torch.int64)
    for i, (d, start, _, _) in enumerate(spans):
        chunk = documents[d][start:start + block]
        windows[i, :len(chunk)] = torch.tensor(list(chunk))
    h = torch.cat([hidden_states(model, w)[0] for w in windows.split(256)])
    keys, values, docs = [], [], []
    for i, (d, start, first, stop) in enumerate(spans):
        keys.append(h[i, first - start: stop - start])
        values.append(torch.tensor(list(documents[d][first + 1: stop + 1])))
        docs.append(torch.full((stop - first,), d, dtype=torch.int64))
    return Datastore(torch.cat(keys), torch.cat(values), torch.cat(docs), tuple(labels), lattice)


def _check_allowed(store: Datastore, allowed: torch.Tensor, batch: int) -> torch.Tensor:
    if not isinstance(allowed, torch.Tensor) or allowed.dtype != torch.bool:
        raise TypeError("allowed must be a bool tensor (Q, M)")
    if allowed.shape != (batch, store.n_docs):
        raise ValueError(f"allowed must be ({batch}, {store.n_docs}), got {tuple(allowed.shape)}")
    return allowed


# show: start knn-lm
def knn_lm_logprobs(store: Datastore, h: torch.Tensor, logp_lm: torch.Tensor,
                    allowed: torch.Tensor, *, lam: float, k_entries: int = 8,
                    temperature: float = 1.0, d2: torch.Tensor | None = None) -> torch.Tensor:
    """log p = log(λ p_kNN + (1 - λ) p_LM) for hidden states ``h`` (Q, D).

    Only entries of documents with ``allowed`` (Q, M) True are searched; a query with no
    allowed entry falls back to the LM alone. ``d2`` (Q, N), if given, holds the squared
    distances from ``h`` to every key, computed earlier.
    """
    lam = check_real("lam", lam, 0.0)
    if lam > 1:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    check_int("k_entries", k_entries, 1)
    temperature = check_real("temperature", temperature, 0.0, strict=True)
    allowed = _check_allowed(store, allowed, h.shape[0])
    if d2 is None:
        d2 = torch.cdist(h, store.keys).square()  # (Q, N) squared distances
    d2 = d2.masked_fill(~allowed[:, store.doc], float("inf"))
    near, j = d2.topk(min(k_entries, d2.shape[1]), largest=False)  # (Q, K)
    w = (-near / temperature).softmax(-1).nan_to_num(0.0)  # no entry: all weights 0
    p_knn = torch.zeros_like(logp_lm).scatter_add_(1, store.values[j], w)
    has = torch.isfinite(near[:, :1])  # (Q, 1): any allowed entry at all
    mix = torch.where(has, lam * p_knn + (1 - lam) * logp_lm.exp(), logp_lm.exp())
    return mix.clamp_min(1e-12).log()
# show: end knn-lm


@torch.no_grad()
def retrieve_documents(model: GPT, store: Datastore, queries: torch.Tensor, k: int, *,
                       last: int = 16) -> torch.Tensor:
    """The ``k`` documents nearest each query (Q, T): a document's distance is the sum, over
    the query's ``last`` positions, of the squared distance to its nearest entry.

    Returns:
        (Q, M) bool, True for the retrieved documents.
    """
    check_int("k", k, 1, store.n_docs)
    check_int("last", last, 1)
    h, _ = hidden_states(model, queries)
    h = h[:, -last:]  # (Q, P, D)
    d2 = torch.cdist(h.reshape(-1, h.shape[-1]), store.keys).square()  # (Q*P, N)
    per_doc = torch.full((d2.shape[0], store.n_docs), float("inf"))
    per_doc = per_doc.scatter_reduce(1, store.doc.expand_as(d2), d2, "amin")
    score = per_doc.reshape(h.shape[0], h.shape[1], -1).sum(1)  # (Q, M)
    chosen = score.topk(k, largest=False).indices
    return torch.zeros_like(score, dtype=torch.bool).scatter_(1, chosen, True)


@torch.no_grad()
def generate(model: GPT, store: Datastore, queries: torch.Tensor, allowed: torch.Tensor, *,
             n_bytes: int = 16, lam: float = 0.5, k_entries: int = 8,
             temperature: float = 1.0, cache: dict | None = None) -> torch.Tensor:
    """Greedy kNN-LM continuation of each query (Q, T) from its ``allowed`` documents (Q, M).

    ``cache`` (a dict the caller keeps between calls) remembers the GPT's last hidden state
    and log-probabilities per context, so runs that differ only in their documents share
    the GPT's work wherever their outputs agree.

    Returns:
        (Q, n_bytes) int64, the generated bytes.
    """
    check_int("n_bytes", n_bytes, 1)
    queries = check_tokens("queries", queries, dims=2, vocab_size=model.cfg.vocab_size)
    if cache is not None and not isinstance(cache, dict):
        raise TypeError(f"cache must be a dict or None, got {type(cache).__name__}")
    idx = queries
    for _ in range(n_bytes):
        ctx = idx[:, -model.cfg.block_size:]
        h, logp, d2 = _last_states(model, store, ctx, {} if cache is None else cache)
        out = knn_lm_logprobs(store, h, logp, allowed, lam=lam, k_entries=k_entries,
                              temperature=temperature, d2=d2)
        idx = torch.cat([idx, out.argmax(-1, keepdim=True)], 1)
    return idx[:, queries.shape[1]:]


def _last_states(model: GPT, store: Datastore, ctx: torch.Tensor,
                 cache: dict) -> tuple[torch.Tensor, ...]:
    """The last position's hidden state (Q, D), log-probabilities (Q, V) and squared
    distances to the keys (Q, N), via ``cache``."""
    keys = [bytes(row.tolist()) for row in ctx.to(torch.uint8)]
    miss = sorted({i for i, key in enumerate(keys) if key not in cache})
    if miss:
        h, logp = hidden_states(model, ctx[miss])
        d2 = torch.cdist(h[:, -1], store.keys).square()
        for n, i in enumerate(miss):
            cache[keys[i]] = (h[n, -1], logp[n, -1], d2[n])
    return tuple(torch.stack([cache[key][j] for key in keys]) for j in range(3))


def join_label(store: Datastore, docs: torch.Tensor) -> list[str]:
    """The join of the labels of the documents marked in each row of ``docs`` (Q, M)."""
    return [store.lattice.join([store.labels[d] for d in row.nonzero().flatten().tolist()])
            for row in docs]


# show: start propagators
def leave_one_out(run: Runner, store: Datastore, retrieved: torch.Tensor) -> torch.Tensor:
    """Documents whose removal *alone* changes the output: (Q, M) bool.

    ``run(allowed)`` generates from the documents ``allowed`` (Q, M) and returns (Q, n).
    """
    out = run(retrieved)
    influential = torch.zeros_like(retrieved)
    for slot in range(int(retrieved.sum(1).max())):
        doc = _nth(retrieved, slot)  # (Q,) the slot-th retrieved document, or -1
        has = doc >= 0
        without = retrieved.clone()
        without[has, doc[has]] = False
        changed = (run(without) != out).any(1) & has
        influential[changed, doc[changed]] = True
    return influential


def minimal_subset(run: Runner, store: Datastore, retrieved: torch.Tensor) -> torch.Tensor:
    """A subset of the retrieved documents that alone reproduces the output: (Q, M) bool.

    Documents are tried highest label first; one is dropped for good when the output
    without it is unchanged.
    """
    out = run(retrieved)
    ranks = torch.tensor([store.lattice.rank(x) for x in store.labels])
    order = ranks.float() + torch.linspace(0, 0.5, store.n_docs)  # ties: a fixed order
    keep = retrieved.clone()
    for slot in range(int(retrieved.sum(1).max())):
        doc = _nth(retrieved, slot, order=-order)  # highest label first
        has = doc >= 0
        trial = keep.clone()
        trial[has, doc[has]] = False
        same = (run(trial) == out).all(1) & has
        keep[same, doc[same]] = False
    return keep
# show: end propagators


def _nth(mask: torch.Tensor, slot: int, order: torch.Tensor | None = None) -> torch.Tensor:
    """The ``slot``-th marked column of each row of ``mask`` (Q, M) by ``order``, or -1."""
    key = torch.arange(mask.shape[1], dtype=torch.float32) if order is None else order
    ranked = torch.where(mask, key, torch.inf).argsort(dim=1, stable=True)  # marked ones first
    doc = ranked[:, slot] if slot < mask.shape[1] else torch.full((mask.shape[0],), -1)
    return torch.where(mask.sum(1) > slot, doc, -1)


@dataclass(frozen=True)
class LabelledCorpus:
    """Labelled documents with planted near-duplicates, and queries that paraphrase them.

    Attributes:
        documents: the texts.
        labels: one label per document.
        duplicate_of: for a planted near-duplicate, the document it copies; else -1.
        queries: (Q, T) uint8-valued int64 query prefixes (edited passages of documents).
        continuations: (Q, C) the bytes that follow each query in its source document.
        source: (Q,) the document each query was cut from.
    """

    documents: tuple[bytes, ...]
    labels: tuple[str, ...]
    duplicate_of: tuple[int, ...]
    queries: torch.Tensor
    continuations: torch.Tensor
    source: torch.Tensor


def _edit(text: bytes, rate: float, gen: torch.Generator) -> bytes:
    """Replace a share ``rate`` of the letters of ``text`` by other lowercase letters."""
    out = bytearray(text)
    for i in torch.nonzero(torch.rand(len(out), generator=gen) < rate).flatten().tolist():
        if chr(out[i]).isalpha():
            out[i] = ord("a") + (out[i] - ord("a") + 1 + int(torch.randint(25, (), generator=gen))) % 26
    return bytes(out)


def labelled_corpus(text: torch.Tensor, *, n_docs: int = 40, doc_bytes: int = 256,
                    n_duplicates: int = 8, n_queries: int = 40, query_bytes: int = 48,
                    continuation: int = 16, edit_rate: float = 0.05,
                    shares: tuple[float, float, float] = (0.4, 0.3, 0.3), seed: int = 0,
                    lattice: Lattice | None = None) -> LabelledCorpus:
    """Cut ``n_docs`` documents from ``text`` (uint8), label them, plant near-duplicates.

    The last ``n_duplicates`` documents are copies of earlier ones with ``edit_rate`` of their
    letters changed: half of them carry the original's label (both secret when the original
    is), half another label. Each query is an edited passage of a random original document:
    ``query_bytes`` bytes, followed in the source by ``continuation`` true bytes.
    """
    lattice = Lattice() if lattice is None else lattice
    check_int("n_docs", n_docs, 2)
    check_int("n_duplicates", n_duplicates, 0, n_docs - 1)
    check_int("n_queries", n_queries, 1)
    check_int("doc_bytes", doc_bytes, query_bytes + continuation + 1)
    if len(shares) != len(lattice.levels) or min(shares) < 0 or sum(shares) <= 0:
        raise ValueError(f"shares must give one non-negative weight per level, got {shares}")
    gen = torch.Generator().manual_seed(seed)
    n_orig = n_docs - n_duplicates
    if text.numel() < n_orig * doc_bytes:
        raise ValueError(f"text has {text.numel()} bytes, fewer than {n_orig} x {doc_bytes}")
    stride = text.numel() // n_orig
    docs = [bytes(text[i * stride: i * stride + doc_bytes].tolist()) for i in range(n_orig)]
    levels = torch.multinomial(torch.tensor(shares, dtype=torch.float), n_orig, True, generator=gen)
    labels = [lattice.levels[i] for i in levels.tolist()]
    dup = [-1] * n_orig
    top = lattice.levels[-1]
    secret = [i for i in range(n_orig) if labels[i] == top] or list(range(n_orig))
    for j in range(n_duplicates):
        pool = secret if j % 2 == 0 else range(n_orig)
        src = list(pool)[int(torch.randint(len(pool), (), generator=gen))]
        same = j % 2 == 0
        label = labels[src] if same else lattice.levels[(lattice.rank(labels[src]) + 1) % len(lattice.levels)]
        docs.append(_edit(docs[src], edit_rate, gen))
        labels.append(label)
        dup.append(src)
    queries, conts, source = [], [], []
    for _ in range(n_queries):
        d = int(torch.randint(n_orig, (), generator=gen))
        at = int(torch.randint(doc_bytes - query_bytes - continuation + 1, (), generator=gen))
        passage = docs[d][at: at + query_bytes + continuation]
        queries.append(list(_edit(passage[:query_bytes], edit_rate, gen)))
        conts.append(list(passage[query_bytes:]))
        source.append(d)
    return LabelledCorpus(tuple(docs), tuple(labels), tuple(dup), torch.tensor(queries),
                          torch.tensor(conts), torch.tensor(source))


@dataclass(frozen=True)
class FlowResult:
    """The outputs of one retrieval depth and the labels each propagator gives them.

    Attributes:
        k: documents retrieved per query.
        retrieved: (Q, M) bool, the retrieved documents.
        output: (Q, n) the generated bytes.
        labels: propagator name -> one label per query.
        kept: propagator name -> (Q, M) bool, the documents whose labels it joins.
        joint_changed: propagator name -> (Q,) bool, whether generating from the kept
            documents alone (all others removed at once) changes the output.
    """

    k: int
    retrieved: torch.Tensor
    output: torch.Tensor
    labels: dict[str, list[str]]
    kept: dict[str, torch.Tensor]
    joint_changed: dict[str, torch.Tensor]


def propagate(model: GPT, store: Datastore, queries: torch.Tensor, k: int, *,
              cache: dict | None = None, **knn) -> FlowResult:
    """Retrieve ``k`` documents per query, generate, and label the output three ways.

    ``knn`` goes to :func:`generate` (``n_bytes``, ``lam``, ``k_entries``, ``temperature``).
    The propagators are ``"join"`` (every retrieved label), ``"leave-one-out"`` and
    ``"minimal subset"``; for each, the joint-removal check regenerates from its kept
    documents alone.
    """
    cache = {} if cache is None else cache
    retrieved = retrieve_documents(model, store, queries, k)

    def run(allowed: torch.Tensor) -> torch.Tensor:
        return generate(model, store, queries, allowed, cache=cache, **knn)

    output = run(retrieved)
    kept = {"join": retrieved, "leave-one-out": leave_one_out(run, store, retrieved),
            "minimal subset": minimal_subset(run, store, retrieved)}
    labels = {name: join_label(store, docs) for name, docs in kept.items()}
    joint = {name: (run(docs) != output).any(1) for name, docs in kept.items()
             if name != "join"}
    joint["join"] = torch.zeros(len(queries), dtype=torch.bool)  # it keeps every document
    return FlowResult(k, retrieved, output, labels, kept, joint)


def label_shares(result: FlowResult, lattice: Lattice) -> dict[str, list[float]]:
    """Propagator -> the share of outputs at each level of ``lattice``, lowest first."""
    return {name: [labels.count(level) / len(labels) for level in lattice.levels]
            for name, labels in result.labels.items()}


def shares_figure(results: Sequence[FlowResult], lattice: Lattice, *,
                  active: int = 0) -> "go.Figure":
    """Stacked bars of :func:`label_shares` per propagator, one dropdown entry per k."""
    import plotly.graph_objects as go

    from labkit.plotting import PALETTE, styled

    fig = go.Figure()
    for r_i, result in enumerate(results):
        shares = label_shares(result, lattice)
        for l_i, level in enumerate(lattice.levels):
            fig.add_bar(x=list(shares), y=[100 * s[l_i] for s in shares.values()], name=level,
                        marker_color=PALETTE[l_i % len(PALETTE)], visible=r_i == active,
                        showlegend=True)
    n = len(lattice.levels)
    buttons = [dict(label=f"k = {r.k}", method="update",
                    args=[{"visible": [i // n == j for i in range(n * len(results))]}])
               for j, r in enumerate(results)]
    fig.update_layout(barmode="stack", updatemenus=[dict(buttons=buttons, active=active,
                                                         x=1.0, y=1.18)])
    return styled(fig, title="Output labels per propagator (dropdown: documents "
                             "retrieved, k)",
                  x_title="propagator", y_title="share of outputs (%)")
