"""labkit.moe.model_routing: domain split, n-gram experts, query sets, the CoE serving cost model."""

from __future__ import annotations

import math

import pytest
import torch

from labkit.data.corpus import FILE_SEPARATOR, TextCorpus
from labkit.moe.model_routing import (DOMAINS, MemoryTier, coe_serving_time, domain_corpus, fit_ngram,
                                      mixed_queries)
from labkit.testing import assert_close

_TABLE = "decoding_table = (\n    '\\x41'     #  0x41 -> LATIN CAPITAL LETTER A\n    '\\x42'     #  0x42 -> B\n)\n"
_MODULE = '"""Docstring line one.\n\nLine two of it.\n"""\nimport os\n# a comment\nx = 1  # trailing\n'


def _corpus(copies: int = 6) -> TextCorpus:
    """Files of both kinds, joined the way stdlib_corpus joins them."""
    files = []
    for i in range(copies):
        files.append((f"encodings/cp{i}.py", _TABLE + "import codecs\n"))
        files.append((f"pkg/mod{i}.py", _MODULE + "\n    def f():\n        '''One-line doc.'''\n        return 2\n"))
    chunks = [(FILE_SEPARATOR.format(path=p) + text).encode() for p, text in files]
    half = len(chunks) // 2
    as_tensor = lambda parts: torch.frombuffer(bytearray(b"".join(parts)), dtype=torch.uint8)  # noqa: E731
    return TextCorpus(train=as_tensor(chunks[half:]), val=as_tensor(chunks[:half]), files_train=(), files_val=())


def test_domain_corpus_sorts_lines_by_hand() -> None:
    domains = domain_corpus(_corpus(), held_out=0.3, seed=0)
    assert domains.names == DOMAINS
    text = {n: (domains.train[n].numpy().tobytes() + domains.held_out[n].numpy().tobytes()).decode() for n in DOMAINS}
    assert "'\\x41'     #  0x41 -> LATIN CAPITAL LETTER A" in text["tables"].splitlines()
    assert "decoding_table" in text["code"] and "import codecs" in text["code"]  # no 0x: code
    prose = text["prose"].splitlines()
    assert {'"""Docstring line one.', "Line two of it.", '"""', "# a comment", "'''One-line doc.'''"} <= set(prose)
    assert "x = 1  # trailing" in text["code"].splitlines()  # code with a trailing comment stays code
    assert "        return 2" in text["code"].splitlines()  # code keeps its indentation
    assert all(len(domains.held_out[n]) > 0 and len(domains.train[n]) > 0 for n in DOMAINS)


def test_domain_corpus_keeps_every_line_once() -> None:
    corpus = _corpus()
    domains = domain_corpus(corpus, seed=3)
    source = [ln for f in (corpus.val, corpus.train) for ln in f.numpy().tobytes().decode().splitlines()
              if ln.strip() and not ln.startswith("# ==== file:")]
    out = [ln for n in DOMAINS for part in (domains.train[n], domains.held_out[n])
           for ln in part.numpy().tobytes().decode().splitlines()]
    assert len(out) == len(source)  # every non-blank line lands in exactly one domain
    assert sorted(ln.strip() for ln in out) == sorted(ln.strip() for ln in source)


def test_domain_corpus_rejects_bad_input() -> None:
    with pytest.raises(TypeError, match="TextCorpus"):
        domain_corpus(b"text")
    with pytest.raises(ValueError, match="held_out"):
        domain_corpus(_corpus(), held_out=0.7)
    with pytest.raises(ValueError, match="seed"):
        domain_corpus(_corpus(), seed=-1)
    with pytest.raises(ValueError, match="fewer than two files with prose"):
        domain_corpus(_corpus(copies=1))


def test_ngram_probabilities_by_hand() -> None:
    a, b = ord("a"), ord("b")
    model = fit_ngram(torch.tensor([a, b, a, b], dtype=torch.uint8), order=2, discount=0.75)
    assert model.n_params == 2 + 2  # unigrams a, b; bigrams ab, ba
    p1 = (2 - 0.75) / 4 + 0.75 * 2 / 4 / 256  # p_1(a) = p_1(b)
    p2 = (2 - 0.75) / 2 + 0.75 * 1 / 2 * p1  # p_2(b | a): "ab" seen twice, one distinct byte after "a"
    logp = model.log2_probs(torch.tensor([[a, b]]))
    assert_close(logp, torch.tensor([[math.log2(p1), math.log2(p2)]], dtype=torch.float64))
    unseen = model.log2_probs(torch.tensor([[ord("z")]]))  # only the uniform share of order 1
    assert_close(unseen, torch.tensor([[math.log2(0.75 * 2 / 4 / 256)]], dtype=torch.float64))
    scored = model.bits_per_byte(torch.tensor([[a, b]]), start=1)
    assert_close(scored, torch.tensor([-math.log2(p2)], dtype=torch.float64))


@pytest.mark.parametrize("budget", [None, 40, 12])
def test_ngram_distributions_sum_to_one(budget: int | None) -> None:
    data = torch.randint(0, 6, (3000,), generator=torch.Generator().manual_seed(0)).to(torch.uint8)
    model = fit_ngram(data, order=4, max_params=budget)
    if budget is not None:
        assert model.n_params <= budget and model.tables[0][0].numel() == 6  # order 1 is never pruned
    for context in ([1, 2, 3], [5, 5, 0], [200, 1, 2]):  # seen, seen, unseen contexts
        rows = torch.cat([torch.tensor(context).repeat(256, 1), torch.arange(256)[:, None]], dim=1)  # (256, 4)
        assert_close((2 ** model.log2_probs(rows)[:, -1]).sum(), torch.tensor(1.0, dtype=torch.float64))


def test_truncate_and_prune_match_direct_fits() -> None:
    data = torch.randint(0, 4, (500,), generator=torch.Generator().manual_seed(1)).to(torch.uint8)
    tokens = torch.randint(0, 4, (3, 20), generator=torch.Generator().manual_seed(2))
    full = fit_ngram(data, order=5)
    assert_close(full.truncate(2).log2_probs(tokens), fit_ngram(data, order=2).log2_probs(tokens))
    assert full.prune(full.n_params) is full
    pruned = full.prune(100)
    assert pruned.n_params <= 100 < full.n_params
    assert_close(fit_ngram(data, order=5, max_params=100).log2_probs(tokens), pruned.log2_probs(tokens))


def test_ngram_rejects_bad_input() -> None:
    data = torch.zeros(10, dtype=torch.uint8)
    with pytest.raises(ValueError, match="order must be in"):
        fit_ngram(data, order=8)
    with pytest.raises(TypeError, match="order must be an int"):
        fit_ngram(data, order=2.0)
    with pytest.raises(TypeError, match="data must be a 1-D integer tensor"):  # a wrong dtype is a TypeError
        fit_ngram(data.float(), order=2)
    with pytest.raises(ValueError, match="longer than order"):
        fit_ngram(data[:2], order=3)
    with pytest.raises(ValueError, match="discount"):
        fit_ngram(data, order=2, discount=1.0)
    model = fit_ngram(data, order=2)
    with pytest.raises(ValueError, match="2-D integer tensor"):
        model.log2_probs(torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"integers in \[0, 255\]"):
        model.log2_probs(torch.tensor([[256]]))
    with pytest.raises(ValueError, match="at least 1 token"):
        model.bits_per_byte(torch.zeros(2, 0, dtype=torch.long))
    with pytest.raises(TypeError, match=r"tokens must be a 2-D integer tensor \(Q, L\) of bytes"):
        model.log2_probs([[1, 2]])
    with pytest.raises(ValueError, match="start must be in"):
        model.bits_per_byte(torch.zeros(1, 4, dtype=torch.long), start=4)
    with pytest.raises(ValueError, match="max_params must be >="):
        model.prune(0)
    with pytest.raises(ValueError, match="order must be in"):
        model.truncate(3)


def test_mixed_queries_split_halves() -> None:
    domains = domain_corpus(_corpus(copies=12), held_out=0.5, seed=0)
    queries = mixed_queries(domains, length=20, prompt_len=5, per_domain=2)
    assert queries.tokens.shape == (2 * 2 * 3, 20) and queries.prompt_len == 5
    assert queries.domain.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    assert queries.router_train.tolist() == [True, True, False, False] * 3
    first = domains.held_out["prose"][:20].long()
    assert torch.equal(queries.tokens[0], first)  # windows are cut in order from the held-out text
    every = mixed_queries(domains, length=20, prompt_len=5)
    assert len(every.tokens) >= len(queries.tokens)
    with pytest.raises(ValueError, match="prompt_len must be in"):
        mixed_queries(domains, length=20, prompt_len=20)
    with pytest.raises(ValueError, match="length must be >="):
        mixed_queries(domains, length=1)
    with pytest.raises(ValueError, match="no window"):
        mixed_queries(domains, length=10**6, prompt_len=5)
    with pytest.raises(TypeError, match="DomainCorpus"):
        mixed_queries(_corpus())


def test_serving_time_by_hand() -> None:
    stream = torch.tensor([0, 1, 0, 1])
    hbm, store = MemoryTier("HBM", 10, 100), MemoryTier("DDR", 100, 10)
    # one HBM slot: every distinct expert of a batch is a switch (1 s) and a decode (1 token: 0.1 s)
    cost = coe_serving_time(stream, n_experts=2, expert_gb=10, hbm=hbm, store=store, batch_size=2, tokens_per_query=1)
    assert cost.fits and cost.loads == 4
    assert math.isclose(cost.seconds_per_query, 4.4 / 4) and math.isclose(cost.switch_fraction, 4 / 4.4)
    # the same batches with both experts resident: only the decodes
    big = MemoryTier("HBM", 20, 100)
    resident = coe_serving_time(stream, n_experts=2, expert_gb=10, hbm=big, store=None, batch_size=2,
                                tokens_per_query=1)
    assert resident.fits and resident.loads == 0 and math.isclose(resident.seconds_per_query, 0.1)
    # two slots with a store: two cold loads, then hits
    warm = coe_serving_time(stream, n_experts=2, expert_gb=10, hbm=big, store=store, batch_size=2, tokens_per_query=1)
    assert warm.loads == 2 and math.isclose(warm.seconds_per_query, 2.4 / 4)
    oom = coe_serving_time(stream, n_experts=2, expert_gb=10, hbm=hbm, store=None, batch_size=2, tokens_per_query=1)
    assert not oom.fits and oom.seconds_per_query == float("inf")


def test_serving_faster_store_is_never_slower() -> None:
    stream = torch.randint(0, 50, (400,), generator=torch.Generator().manual_seed(0))
    hbm = MemoryTier("HBM", 100, 1000)
    times = [coe_serving_time(stream, n_experts=50, expert_gb=14, hbm=hbm, store=MemoryTier("s", 1000, bw),
                              batch_size=4, tokens_per_query=10).seconds_per_query for bw in (10, 50, 200)]
    assert times[0] > times[1] > times[2]


def test_serving_rejects_bad_input() -> None:
    hbm = MemoryTier("HBM", 10, 100)
    kw = dict(n_experts=2, expert_gb=5, hbm=hbm, store=None, batch_size=2, tokens_per_query=1)
    with pytest.raises(ValueError, match=r"lie in \[0, n_experts=2\)"):
        coe_serving_time(torch.tensor([0, 2]), **kw)
    with pytest.raises(ValueError, match="1-D integer tensor"):
        coe_serving_time(torch.tensor([0.0]), **kw)
    with pytest.raises(ValueError, match="does not fit"):
        coe_serving_time(torch.tensor([0]), **{**kw, "expert_gb": 11})
    with pytest.raises(ValueError, match="batch_size must be >="):
        coe_serving_time(torch.tensor([0]), **{**kw, "batch_size": 0})
    with pytest.raises(ValueError, match="capacity_gb and bandwidth_gbs"):
        MemoryTier("HBM", 0, 100)
