"""Composition of Experts: a router that sends each query to one of several small expert models.

Paper: "SambaNova SN40L: Scaling the AI Memory Wall with Dataflow and Composition of Experts".

A Composition of Experts (CoE) replaces one big model by many small ones, each good at one kind
of input, and a router that reads the query and picks the expert that answers it. Each query pays
for one expert, yet the composition as a whole knows what all of them know. The price moves to
memory: every expert must be stored somewhere, and the one a query needs must be in fast memory
when it runs. SN40L's answer is a third memory tier: experts live in a large DDR and are copied
into the accelerator's HBM when a query asks for them, at DDR speed instead of over PCIe.

The miniature: the experts are byte-level n-gram language models (interpolated absolute
discounting, Ney et al.), each counted on one kind of text from the standard library (prose of
docstrings and comments, code, character-map tables of ``encodings/``) and pruned to a budget of
stored entries; quality is bits per byte on a held-out query's continuation, cost is the stored
entries. The routers live in :mod:`labkit.moe.query_routing`. :func:`coe_serving_time` is a
cost model of serving a CoE from HBM only, from DDR + HBM, or from host memory over PCIe.

What the miniature leaves out: neural experts (an n-gram's lookup cost does not grow with its
table, so "cost" here is memory, the resource SN40L is about), SN40L's dataflow fusion and SRAM
tier, the router being itself an LLM, and every measured hardware number (the serving model uses
bandwidths the caller states).

Shapes: Q queries, L query length in bytes, P prompt bytes, F features, E experts, N stream.
Section: chapter 05, "Routing whole models: Composition of Experts, MoGU and query routing".
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass

import torch

from labkit.data.corpus import FILE_SEPARATOR, TextCorpus
from labkit.validation import check_int, check_tokens

__all__ = ["DOMAINS", "DomainCorpus", "MemoryTier", "NGramLM", "QuerySet", "ServingCost", "coe_serving_time",
           "domain_corpus", "fit_ngram", "mixed_queries"]

#: The kinds of text the corpus is split into, one expert each.
DOMAINS: tuple[str, ...] = ("prose", "code", "tables")
_MAX_ORDER = 7  # context ids of order 7 use 48 bits; a key (context, byte) 56 bits of an int64
_SEPARATOR = re.compile(re.escape(FILE_SEPARATOR).replace(re.escape("{path}"), "(.+?)").encode())


@dataclass(frozen=True, eq=False)
class DomainCorpus:
    """Bytes of each domain, split by file into expert training text and held-out text.

    Attributes:
        names: the domains, in :data:`DOMAINS` order.
        train: domain -> uint8 tensor (L,) that the experts are counted on.
        held_out: domain -> uint8 tensor (L,) of files no expert saw; queries come from here.
    """

    names: tuple[str, ...]
    train: dict[str, torch.Tensor]
    held_out: dict[str, torch.Tensor]


def _split_lines(path: bytes, text: bytes) -> dict[str, list[bytes]]:
    """Sort the non-blank lines of one file into prose, code and tables (a line rule, no parser)."""
    out: dict[str, list[bytes]] = {name: [] for name in DOMAINS}
    table_file, in_doc = path.startswith(b"encodings/"), False
    for line in text.split(b"\n"):
        stripped = line.strip()
        if not stripped:
            continue
        quotes = line.count(b'"""') + line.count(b"'''")
        if table_file and b"0x" in line:
            out["tables"].append(stripped)
        elif (in_doc or quotes or stripped.startswith(b"#")) and not stripped.startswith(b">>>"):
            out["prose"].append(stripped)
        else:
            out["code"].append(line)
        in_doc ^= quotes % 2 == 1  # an odd number of triple quotes opens or closes a docstring
    return out


def domain_corpus(corpus: TextCorpus, *, held_out: float = 0.2, seed: int = 0) -> DomainCorpus:
    """Split every file of ``corpus`` (both of its splits) into the :data:`DOMAINS`, by line.

    A line of a file under ``encodings/`` that contains ``0x`` is a table row; a comment line or a
    line of a docstring (but not a ``>>>`` example) is prose; any other non-blank line is code.
    Table and prose lines lose their indentation; code keeps it. Per domain, the files are
    shuffled with ``seed`` and the first ones, about ``held_out`` of the domain's bytes, are held
    out, so every domain has unseen files to draw queries from.

    Args:
        corpus: the byte corpus, e.g. ``stdlib_corpus()``.
        held_out: share of each domain's bytes held out, in (0, 0.5].
        seed: seed of the file shuffle.

    Returns:
        A :class:`DomainCorpus`.
    """
    if not isinstance(corpus, TextCorpus):
        raise TypeError(f"corpus must be a TextCorpus, got {type(corpus).__name__}")
    if isinstance(held_out, bool) or not isinstance(held_out, (int, float)) or not 0 < held_out <= 0.5:
        raise ValueError(f"held_out must be a float in (0, 0.5], got {held_out!r}")
    check_int("seed", seed, 0)
    files = []
    for split in ("train", "val"):
        parts = _SEPARATOR.split(corpus.split(split).numpy().tobytes())
        files += [_split_lines(name, text) for name, text in zip(parts[1::2], parts[2::2])]
    gen = torch.Generator().manual_seed(seed)
    train, held = {}, {}
    for name in DOMAINS:
        chunks = [b"\n".join(f[name]) + b"\n" for f in files if f[name]]
        if len(chunks) < 2:
            raise ValueError(f"the corpus has fewer than two files with {name} lines; use a larger corpus")
        order = torch.randperm(len(chunks), generator=gen).tolist()
        total, taken, n_held = sum(map(len, chunks)), 0, 0
        while n_held < len(chunks) - 1 and taken < held_out * total:
            taken += len(chunks[order[n_held]])
            n_held += 1
        held[name] = _bytes(b"".join(chunks[i] for i in order[:n_held]))
        train[name] = _bytes(b"".join(chunks[i] for i in order[n_held:]))
    return DomainCorpus(names=DOMAINS, train=train, held_out=held)


def _bytes(blob: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(blob), dtype=torch.uint8) if blob else torch.zeros(0, dtype=torch.uint8)


def _contexts(tokens: torch.Tensor, k: int) -> torch.Tensor:
    """Id of the k - 1 bytes before each position t >= k - 1: (..., L) -> (..., L - k + 1) int64."""
    length = tokens.shape[-1]
    ids = torch.zeros(tokens.shape[:-1] + (length - k + 1,), dtype=torch.int64)
    for j in range(k - 1, 0, -1):  # oldest byte first, so ids are base-256 numbers
        ids = ids * 256 + tokens[..., k - 1 - j: length - j]
    return ids


@dataclass(frozen=True, eq=False)
class NGramLM:
    """A byte n-gram model with interpolated absolute discounting; build it with :func:`fit_ngram`.

    Per order k (context of k - 1 bytes) it keeps the sorted keys ``context * 256 + byte`` with
    their counts, and per context its total count T(h) and back-off weight gamma(h).

    Attributes:
        order: the longest n-gram, context of ``order - 1`` bytes.
        discount: the absolute discount D in (0, 1).
        tables: per order, ``(keys, counts, contexts, totals, backoff)``, 1-D tensors.
    """

    order: int
    discount: float
    tables: tuple[tuple[torch.Tensor, ...], ...]

    @property
    def n_params(self) -> int:
        """Stored (context, byte) entries over all orders: the model's size, its cost here."""
        return sum(int(t[0].numel()) for t in self.tables)

    def truncate(self, order: int) -> NGramLM:
        """The same counts up to a lower ``order`` (a cheaper model, no recounting)."""
        check_int("order", order, 1, self.order)
        return NGramLM(order=order, discount=self.discount, tables=self.tables[:order])

    def prune(self, max_params: int) -> NGramLM:
        """Keep the most frequent n-grams of orders >= 2 so that at most ``max_params`` entries remain.

        Entries whose count is at or below a threshold are dropped (all of order 1 stay); each
        context keeps its total count and its back-off weight grows by the dropped mass, so every
        distribution still sums to one. A budget below the order-1 entries raises.
        """
        check_int("max_params", max_params, self.tables[0][0].numel())
        if self.n_params <= max_params:
            return self
        counts = torch.cat([t[1] for t in self.tables[1:]])
        budget = max_params - self.tables[0][0].numel()
        cut = float(counts.sort(descending=True).values[budget]) if budget < counts.numel() else -1.0
        tables = [self.tables[0]]
        for keys, cnt, contexts, totals, _ in self.tables[1:]:
            kept = cnt > cut
            tables.append(_table(keys[kept], cnt[kept], self.discount, totals=(contexts, totals)))
        return NGramLM(order=self.order, discount=self.discount, tables=tuple(tables))

    def log2_probs(self, tokens: torch.Tensor) -> torch.Tensor:
        """log2 p(x_t | the bytes of the same row before t), for every position.

        Interpolated absolute discounting, from order 1 up:
        ``p_k(w|h) = max(c(h,w) - D, 0) / T(h) + gamma(h) * p_{k-1}(w|h')`` with
        ``gamma(h) = 1 - sum_w max(c(h,w) - D, 0) / T(h)`` (``D u(h) / T(h)`` before pruning, u the
        number of distinct next bytes); an unseen context keeps ``p_{k-1}``, and ``p_0 = 1/256``.
        A position with fewer than k - 1 earlier bytes keeps the lower order.

        Args:
            tokens: (Q, L) integer bytes in [0, 255].

        Returns:
            (Q, L) float64 log2 probabilities.
        """
        return self._log2_probs(check_tokens("tokens", tokens, dims=2, shape="(Q, L) of bytes", min_length=1))

    def _log2_probs(self, tokens: torch.Tensor) -> torch.Tensor:
        """:meth:`log2_probs` of tokens already checked (int64 bytes, (Q, L))."""
        prob = torch.full(tokens.shape, 1 / 256, dtype=torch.float64)
        for k, (keys, counts, contexts, totals, backoff) in enumerate(self.tables, start=1):
            if k > tokens.shape[1] or contexts.numel() == 0:
                break
            ctx = _contexts(tokens, k)  # (Q, L - k + 1)
            key = ctx * 256 + tokens[:, k - 1:]
            i = torch.searchsorted(keys, key).clamp(max=keys.numel() - 1)
            c = torch.where(keys[i] == key, counts[i], 0.0)
            j = torch.searchsorted(contexts, ctx).clamp(max=contexts.numel() - 1)
            seen = contexts[j] == ctx
            lower = prob[:, k - 1:]
            higher = torch.clamp(c - self.discount, min=0) / totals[j] + backoff[j] * lower
            prob[:, k - 1:] = torch.where(seen, higher, lower)
        return torch.log2(prob)

    def bits_per_byte(self, tokens: torch.Tensor, *, start: int = 0) -> torch.Tensor:
        """Mean bits per byte of each row from position ``start`` on (the prompt before it is context).

        Returns:
            (Q,) float64.
        """
        tokens = check_tokens("tokens", tokens, dims=2, shape="(Q, L) of bytes", min_length=1)
        check_int("start", start, 0, tokens.shape[1] - 1)
        return -self._log2_probs(tokens)[:, start:].mean(dim=1)


def _table(keys: torch.Tensor, counts: torch.Tensor, discount: float,
           totals: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, ...]:
    """Per-context totals and back-off weights of sorted ``keys``; ``totals`` keeps pre-pruning totals."""
    contexts, per_context = torch.unique_consecutive(keys // 256, return_counts=True)  # keys are sorted
    owner = torch.repeat_interleave(torch.arange(contexts.numel()), per_context)
    if totals is None:
        total = torch.zeros(contexts.numel(), dtype=torch.float64).index_add_(0, owner, counts)
    else:  # look the surviving contexts up among the original ones
        total = totals[1][torch.searchsorted(totals[0], contexts)]
    kept = torch.zeros(contexts.numel(), dtype=torch.float64).index_add_(0, owner, (counts - discount).clamp(min=0))
    return keys, counts, contexts, total, 1 - kept / total  # gamma(h): the mass left for the lower order


def fit_ngram(data: torch.Tensor, *, order: int, discount: float = 0.75, max_params: int | None = None) -> NGramLM:
    """Count the n-grams of orders 1..``order`` of one byte stream.

    Args:
        data: (L,) bytes (uint8 or int64), L > order.
        order: longest n-gram, in [1, 7].
        discount: absolute discount D in (0, 1); 0.75 is the usual choice.
        max_params: if given, prune to at most this many entries (:meth:`NGramLM.prune`).

    Returns:
        An :class:`NGramLM`; ``truncate(k)`` gives the order-k model of the same counts.
    """
    check_int("order", order, 1, _MAX_ORDER)
    x = check_tokens("data", data, dims=1, shape="of bytes")
    if x.numel() <= order:
        raise ValueError(f"data must be longer than order={order}, got {x.numel()} bytes")
    if isinstance(discount, bool) or not isinstance(discount, (int, float)) or not 0 < discount < 1:
        raise ValueError(f"discount must be in (0, 1), got {discount!r}")
    tables = []
    for k in range(1, order + 1):
        keys, counts = torch.unique(_contexts(x[None], k)[0] * 256 + x[k - 1:], return_counts=True)
        tables.append(_table(keys, counts.double(), float(discount)))
    model = NGramLM(order=order, discount=float(discount), tables=tuple(tables))
    return model if max_params is None else model.prune(max_params)


@dataclass(frozen=True, eq=False)
class QuerySet:
    """Queries drawn from the held-out text of every domain.

    Attributes:
        tokens: (Q, L) int64 bytes; the first ``prompt_len`` are the prompt the router reads,
            the rest the continuation the models are scored on.
        domain: (Q,) int64 index into ``names``.
        router_train: (Q,) bool, True for queries a router may train on (the first half of each
            domain's held-out text); the others are the test queries.
        names: the domain names.
        prompt_len: P.
    """

    tokens: torch.Tensor
    domain: torch.Tensor
    router_train: torch.Tensor
    names: tuple[str, ...]
    prompt_len: int


def mixed_queries(domains: DomainCorpus, *, length: int = 144, prompt_len: int = 48,
                  per_domain: int | None = None) -> QuerySet:
    """Cut non-overlapping windows from each domain's held-out text.

    The held-out text of each domain is halved: windows from the first half are router-training
    queries, windows from the second half test queries, so routers are always evaluated on text
    they never saw (and the experts never saw any of it).

    Args:
        domains: a :class:`DomainCorpus`.
        length: L, bytes per query.
        prompt_len: P, bytes the router may read, in [1, L - 1].
        per_domain: at most this many windows per domain and half (None: all of them, so the
            mix follows the domains' sizes).

    Returns:
        A :class:`QuerySet`.
    """
    if not isinstance(domains, DomainCorpus):
        raise TypeError(f"domains must be a DomainCorpus, got {type(domains).__name__}")
    check_int("length", length, 2)
    check_int("prompt_len", prompt_len, 1, length - 1)
    if per_domain is not None:
        check_int("per_domain", per_domain, 1)
    tokens, label, train = [], [], []
    for e, name in enumerate(domains.names):
        text = domains.held_out[name].long()
        half = text.numel() // 2
        for first, part in ((True, text[:half]), (False, text[half:])):
            n = part.numel() // length if per_domain is None else min(per_domain, part.numel() // length)
            if n == 0:
                raise ValueError(f"domain {name!r} has no window of {length} bytes in half of its held-out text")
            tokens.append(part[: n * length].view(n, length))  # (n, L)
            label += [e] * n
            train += [first] * n
    return QuerySet(tokens=torch.cat(tokens), domain=torch.tensor(label), router_train=torch.tensor(train),
                    names=domains.names, prompt_len=prompt_len)


@dataclass(frozen=True)
class MemoryTier:
    """Where expert weights can sit: a capacity and the bandwidth to read out of it.

    Attributes:
        name: e.g. "HBM", "DDR", "host DRAM over PCIe".
        capacity_gb: how many GB of weights fit.
        bandwidth_gbs: GB/s at which weights stream out of it (into HBM, or into compute for HBM).
    """

    name: str
    capacity_gb: float
    bandwidth_gbs: float

    def __post_init__(self) -> None:
        if not self.capacity_gb > 0 or not self.bandwidth_gbs > 0:
            raise ValueError(f"MemoryTier {self.name!r}: capacity_gb and bandwidth_gbs must be > 0")


@dataclass(frozen=True)
class ServingCost:
    """Modelled cost of serving a query stream.

    Attributes:
        fits: False when the experts do not fit the tiers (HBM-only out of memory).
        seconds_per_query: mean modelled time per query (inf when it does not fit).
        switch_fraction: share of the time spent copying experts into HBM.
        loads: expert copies into HBM.
    """

    fits: bool
    seconds_per_query: float
    switch_fraction: float
    loads: int


def coe_serving_time(experts: torch.Tensor, *, n_experts: int, expert_gb: float, hbm: MemoryTier,
                     store: MemoryTier | None, batch_size: int, tokens_per_query: int) -> ServingCost:
    """Model the time to serve a stream of routed queries from a two- or three-tier memory.

    Queries come in batches of ``batch_size``. For each distinct expert of a batch, in order: if it
    is not in HBM it is copied there from ``store`` (``expert_gb / store.bandwidth_gbs`` seconds,
    evicting the least recently used expert when the HBM slots are full), then its queries decode
    ``tokens_per_query`` tokens together, each step reading the expert's weights from HBM once
    (``expert_gb / hbm.bandwidth_gbs``, the memory-bound decode). With ``store=None`` every expert
    must be resident in HBM (``n_experts * expert_gb <= hbm.capacity_gb``), else it does not fit.

    Args:
        experts: (N,) int64 expert of each query, in arrival order, in [0, n_experts).
        n_experts: E, experts the system hosts.
        expert_gb: weights of one expert in GB.
        hbm: the fast tier.
        store: the tier the experts live in (DDR, host memory), or None for HBM only.
        batch_size: queries per batch.
        tokens_per_query: tokens each query decodes.

    Returns:
        A :class:`ServingCost`.
    """
    check_int("n_experts", n_experts, 1)
    check_int("batch_size", batch_size, 1)
    check_int("tokens_per_query", tokens_per_query, 1)
    if not isinstance(experts, torch.Tensor) or experts.dim() != 1 or experts.numel() == 0 \
            or experts.is_floating_point():
        raise ValueError("experts must be a non-empty 1-D integer tensor")
    if int(experts.min()) < 0 or int(experts.max()) >= n_experts:
        raise ValueError(f"experts must lie in [0, n_experts={n_experts})")
    if not expert_gb > 0:
        raise ValueError(f"expert_gb must be > 0, got {expert_gb}")
    slots = int(hbm.capacity_gb // expert_gb)
    if slots < 1:
        raise ValueError(f"one expert ({expert_gb} GB) does not fit the {hbm.name} tier ({hbm.capacity_gb} GB)")
    if (store is None and n_experts > slots) or (store is not None and n_experts * expert_gb > store.capacity_gb):
        return ServingCost(fits=False, seconds_per_query=float("inf"), switch_fraction=0.0, loads=0)
    # show: start serve
    resident: OrderedDict[int, None] = OrderedDict((e, None) for e in range(n_experts if store is None else 0))
    decode = tokens_per_query * expert_gb / hbm.bandwidth_gbs
    switch_s, decode_s, loads = 0.0, 0.0, 0
    for start in range(0, experts.numel(), batch_size):
        for e in dict.fromkeys(experts[start: start + batch_size].tolist()):  # distinct, in order
            if e in resident:
                resident.move_to_end(e)
            else:  # a switch: copy the expert into HBM, evicting the least recently used one
                if len(resident) == slots:
                    resident.popitem(last=False)
                resident[e] = None
                switch_s += expert_gb / store.bandwidth_gbs
                loads += 1
            decode_s += decode
    total = switch_s + decode_s
    # show: end serve
    return ServingCost(fits=True, seconds_per_query=total / experts.numel(), switch_fraction=switch_s / total,
                       loads=loads)
