"""Lattice, kNN-LM datastore and label propagators of labkit.security.infoflow."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.neighbors import NearestNeighbors

from labkit.lm import GPT, GPTConfig
from labkit.security import infoflow as inf


@pytest.fixture(scope="module")
def model() -> GPT:
    cfg = GPTConfig(n_layer=1, d_model=16, n_head=2, block_size=16, ffn="dense", d_ff=32)
    return GPT(cfg, init_seed=3).eval()


DOCS = (b"the cat sat on the mat", b"a dog ran far away", b"the cat sat on a hat",
        b"zebras zigzag")
LABELS = ("public", "secret", "internal", "secret")


@pytest.fixture(scope="module")
def store(model: GPT) -> inf.Datastore:
    return inf.build_datastore(model, DOCS, LABELS)


def test_lattice_join_and_order() -> None:
    lat = inf.Lattice()
    assert lat.join(["public", "internal"]) == "internal"
    assert lat.join(["secret", "public"]) == "secret"
    assert lat.join([]) == "public"
    assert lat.leq("public", "secret") and not lat.leq("secret", "internal")
    with pytest.raises(ValueError, match="not in the lattice"):
        lat.join(["top-secret"])
    with pytest.raises(ValueError, match="distinct"):
        inf.Lattice(("a", "a"))


def test_datastore_entries_are_next_bytes_and_hidden_states(model: GPT, store: inf.Datastore) -> None:
    assert store.keys.shape[0] == sum(len(d) - 1 for d in DOCS)
    first = store.doc == 1
    assert store.values[first].tolist() == list(DOCS[1][1:])
    # documents longer than one block are read in overlapping windows: the stored key of a
    # position is the hidden state of a window that contains it with >= half a block before
    ids = torch.tensor([list(DOCS[0])])
    h, _ = inf.hidden_states(model, ids[:, :16])
    assert torch.allclose(store.keys[store.doc == 0][:16], h[0, :16], atol=1e-6)
    h2, _ = inf.hidden_states(model, ids[:, 8:24])
    assert torch.allclose(store.keys[store.doc == 0][16:], h2[0, 8:13], atol=1e-6)


def test_datastore_bad_inputs(model: GPT) -> None:
    with pytest.raises(ValueError, match="not in the lattice"):
        inf.build_datastore(model, DOCS[:1], ("confidential",))
    with pytest.raises(ValueError, match="equal length"):
        inf.build_datastore(model, DOCS, LABELS[:2])
    with pytest.raises(ValueError, match="documents\\[0\\]"):
        inf.build_datastore(model, (b"a",), ("public",))


def test_knn_lm_mixture(model: GPT, store: inf.Datastore) -> None:
    g = torch.Generator().manual_seed(0)
    h = torch.randn(5, 16, generator=g)
    logp = torch.randn(5, 256, generator=g).log_softmax(-1)
    every = torch.ones(5, store.n_docs, dtype=torch.bool)
    assert torch.allclose(inf.knn_lm_logprobs(store, h, logp, every, lam=0.0), logp, atol=1e-5)
    # lam = 1, one neighbour: all mass on the value of the nearest entry (checked by sklearn)
    nn = NearestNeighbors(n_neighbors=1).fit(store.keys.numpy())
    nearest = nn.kneighbors(h.numpy(), return_distance=False)[:, 0]
    out = inf.knn_lm_logprobs(store, h, logp, every, lam=1.0, k_entries=1)
    assert out.argmax(-1).tolist() == store.values[nearest].tolist()
    assert np.allclose(out.exp().max(-1).values.numpy(), 1.0, atol=1e-5)
    # the search is restricted to allowed documents; none allowed -> the LM alone
    only2 = torch.zeros_like(every)
    only2[:, 2] = True
    keys2 = store.keys[store.doc == 2]
    j = torch.cdist(h, keys2).argmin(1)
    out2 = inf.knn_lm_logprobs(store, h, logp, only2, lam=1.0, k_entries=1)
    assert out2.argmax(-1).tolist() == store.values[store.doc == 2][j].tolist()
    none = torch.zeros_like(every)
    assert torch.allclose(inf.knn_lm_logprobs(store, h, logp, none, lam=0.7), logp, atol=1e-5)
    # mixture sums to one
    mix = inf.knn_lm_logprobs(store, h, logp, every, lam=0.4, k_entries=3)
    assert torch.allclose(mix.exp().sum(-1), torch.ones(5), atol=1e-4)


def test_knn_lm_bad_arguments(store: inf.Datastore) -> None:
    h, logp = torch.zeros(2, 16), torch.zeros(2, 256).log_softmax(-1)
    every = torch.ones(2, store.n_docs, dtype=torch.bool)
    for lam in (-0.1, 1.5):
        with pytest.raises(ValueError, match="lam"):
            inf.knn_lm_logprobs(store, h, logp, every, lam=lam)
    with pytest.raises(ValueError, match="k_entries"):
        inf.knn_lm_logprobs(store, h, logp, every, lam=0.5, k_entries=0)
    with pytest.raises(ValueError, match="allowed"):
        inf.knn_lm_logprobs(store, h, logp, every[:, :2], lam=0.5)
    with pytest.raises(TypeError, match="allowed"):
        inf.knn_lm_logprobs(store, h, logp, every.long(), lam=0.5)


def test_retrieval_finds_the_document_a_query_copies(model: GPT, store: inf.Datastore) -> None:
    queries = torch.tensor([list(DOCS[1][:12]), list(DOCS[3][:12])])
    got = inf.retrieve_documents(model, store, queries, 1, last=4)
    assert got.nonzero()[:, 1].tolist() == [1, 3]
    assert inf.retrieve_documents(model, store, queries, 3).sum(1).tolist() == [3, 3]
    with pytest.raises(ValueError, match="k"):
        inf.retrieve_documents(model, store, queries, 0)
    with pytest.raises(ValueError, match="k"):
        inf.retrieve_documents(model, store, queries, store.n_docs + 1)


def test_generate_with_and_without_cache(model: GPT, store: inf.Datastore) -> None:
    queries = torch.tensor([list(DOCS[0][:8]), list(DOCS[1][:8])])
    allowed = torch.ones(2, store.n_docs, dtype=torch.bool)
    cache: dict = {}
    a = inf.generate(model, store, queries, allowed, n_bytes=5, cache=cache)
    b = inf.generate(model, store, queries, allowed, n_bytes=5)
    assert a.shape == (2, 5) and torch.equal(a, b) and len(cache) == 10
    assert torch.equal(inf.generate(model, store, queries, allowed, n_bytes=5, cache=cache), a)
    with pytest.raises(ValueError, match="n_bytes"):
        inf.generate(model, store, queries, allowed, n_bytes=0)


def _fake_store() -> inf.Datastore:
    z = torch.zeros(3, 2)
    return inf.Datastore(z, torch.zeros(3, dtype=torch.int64), torch.arange(3),
                         ("secret", "secret", "public"), inf.Lattice())


def test_propagators_on_duplicated_secrets() -> None:
    """Documents 0 and 1 (both secret) are duplicates: the output needs either one."""
    store = _fake_store()

    def run(allowed: torch.Tensor) -> torch.Tensor:
        return (allowed[:, 0] | allowed[:, 1]).long()[:, None]

    retrieved = torch.ones(1, 3, dtype=torch.bool)
    loo = inf.leave_one_out(run, store, retrieved)
    assert loo.tolist() == [[False, False, False]]  # no single removal changes the output
    assert inf.join_label(store, loo) == ["public"]
    assert not torch.equal(run(loo), run(retrieved))  # removing them jointly does
    sub = inf.minimal_subset(run, store, retrieved)
    assert sub.sum().item() == 1 and not sub[0, 2]  # one duplicate kept, the public one dropped
    assert torch.equal(run(sub), run(retrieved))
    assert inf.join_label(store, sub) == ["secret"]
    assert inf.join_label(store, retrieved) == ["secret"]


def test_propagators_keep_only_what_matters() -> None:
    """The output copies the public document 2 only: both permissive labels are public."""
    store = _fake_store()

    def run(allowed: torch.Tensor) -> torch.Tensor:
        return allowed[:, 2:3].long()

    retrieved = torch.tensor([[True, True, True], [True, False, True]])
    assert inf.leave_one_out(run, store, retrieved).tolist() == [[False, False, True]] * 2
    assert inf.minimal_subset(run, store, retrieved).tolist() == [[False, False, True]] * 2


def test_labelled_corpus_plants_duplicates() -> None:
    text = torch.tensor(list(b"Lorem ipsum dolor sit amet, consectetur. " * 300), dtype=torch.uint8)
    lc = inf.labelled_corpus(text, n_docs=10, n_duplicates=4, n_queries=6, doc_bytes=100,
                             query_bytes=20, continuation=8)
    assert len(lc.documents) == 10 and len(lc.labels) == 10
    assert lc.duplicate_of[:6] == (-1,) * 6 and all(0 <= d < 6 for d in lc.duplicate_of[6:])
    for j, d in enumerate(lc.duplicate_of[6:]):
        same = lc.labels[6 + j] == lc.labels[d]
        assert same == (j % 2 == 0)  # even copies keep the label, odd ones move up a level
        if j % 2 == 0:
            assert lc.labels[6 + j] == "secret"
    assert lc.queries.shape == (6, 20) and lc.continuations.shape == (6, 8)
    for q, c, s in zip(lc.queries, lc.continuations, lc.source.tolist()):
        assert bytes(c.tolist()) in lc.documents[s]
    with pytest.raises(ValueError, match="n_duplicates"):
        inf.labelled_corpus(text, n_docs=4, n_duplicates=4)
    with pytest.raises(ValueError, match="shares"):
        inf.labelled_corpus(text, shares=(1.0, 0.0))
