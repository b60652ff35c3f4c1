"""labkit.moe.languages: the synthetic language families and routing-specialisation measures."""

from __future__ import annotations

import math

import pytest
import torch

from labkit.data.corpus import TextCorpus
from labkit.moe.languages import (
    Language,
    default_languages,
    language_expert_counts,
    multilanguage_corpus,
    normalized_mutual_information,
    shared_byte_mask,
)


def _tiny_corpus() -> TextCorpus:
    text = b"def add(a, b):\n    return a + b  # Sum!\n" * 100
    as_tensor = torch.frombuffer(bytearray(text), dtype=torch.uint8)
    return TextCorpus(train=as_tensor.clone(), val=as_tensor[:500].clone(), files_train=("a.py",), files_val=("b.py",))


def _translate(lang: Language, text: str) -> str:
    return text.encode().translate(lang.table).decode("latin-1")


def test_languages_by_hand() -> None:
    langs = {lang.name: lang for lang in default_languages()}
    assert list(langs) == ["latin-plain", "latin-vowels", "rot13-plain", "rot13-vowels", "high-plain", "high-vowels"]
    assert _translate(langs["latin-plain"], "return a + b") == "return a + b"
    assert _translate(langs["latin-vowels"], "return a + b") == "ritarn e + b"  # vowels rotate a->e->i->o->u->a
    assert _translate(langs["rot13-plain"], "Sum: 12") == "Fhz: 12"
    assert _translate(langs["rot13-vowels"], "ab") == "ro"  # a -> e -> r (rot13), b -> o
    high = "abz AZ".encode().translate(langs["high-plain"].table)
    assert list(high) == [0xA0, 0xA1, 0xB9, 32, 0xC0, 0xD9]


def test_every_table_is_a_permutation_and_families_share_script() -> None:
    langs = default_languages()
    for lang in langs:
        assert sorted(lang.table) == list(range(256))
    by_family: dict[str, list[Language]] = {}
    for lang in langs:
        by_family.setdefault(lang.family, []).append(lang)
    letters = bytes(c for c in range(ord("b"), ord("z") + 1) if chr(c) not in "eiou")  # consonants
    for members in by_family.values():  # dialects of a family agree on consonants
        assert len({letters.translate(m.table) for m in members}) == 1
    assert len({letters.translate(ms[0].table) for ms in by_family.values()}) == len(by_family)


def test_corpus_is_parallel_and_batches_are_tagged() -> None:
    mc = multilanguage_corpus(_tiny_corpus())
    assert mc.train.shape == (6, 4000) and mc.val.shape == (6, 500)
    assert mc.families == ("latin", "rot13", "high") and mc.family_index().tolist() == [0, 0, 1, 1, 2, 2]
    shared = shared_byte_mask(mc.train[0].long(), mc.languages)
    assert bool((mc.train[:, shared] == mc.train[0, shared]).all())  # whitespace, punctuation, digits agree
    assert bool((mc.train[:, ~shared] != mc.train[0, ~shared]).any(dim=0).all())  # letters differ somewhere
    gen = torch.Generator().manual_seed(0)
    x, y, lang = mc.get_batch("train", batch_size=16, block_size=12, generator=gen, with_language=True)
    assert x.shape == y.shape == (16, 12) and lang.shape == (16,)
    assert torch.equal(x[:, 1:], y[:, :-1])
    for row, m in zip(x, lang.tolist()):  # each row is a window of its own language's stream
        stream = mc.train[m].long()
        assert any(torch.equal(stream[s:s + 12], row) for s in range(stream.numel() - 12))
    x2, y2 = mc.get_batch("val", batch_size=4, block_size=8, generator=gen, language=3)
    assert x2.shape == (4, 8)
    assert "latin-plain" in repr(mc)


def test_mutual_information_by_hand() -> None:
    # Each language has its own expert: I = H(language), normalised 1. Same distribution: 0.
    assert normalized_mutual_information(torch.eye(3, dtype=torch.float64) * 5) == pytest.approx(1.0)
    assert normalized_mutual_information(torch.ones(3, 4, dtype=torch.float64)) == pytest.approx(0.0)
    # Two languages, two experts; expert 0 takes 3/4 of language 0 and 1/4 of language 1.
    c = torch.tensor([[3.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert normalized_mutual_information(c) == pytest.approx((math.log(2) - h) / math.log(2))
    # Grouping two languages that route alike into one family: family NMI is 1.
    fam = torch.tensor([[4.0, 0.0], [4.0, 0.0], [0.0, 4.0]], dtype=torch.float64)
    assert normalized_mutual_information(fam, groups=torch.tensor([0, 0, 1])) == pytest.approx(1.0)


def test_language_expert_counts_by_hand() -> None:
    experts = torch.tensor([[0, 1], [1, -1], [2, 0]])
    lang = torch.tensor([0, 1, 1])
    counts = language_expert_counts(experts, lang, 3, 2)
    assert counts.tolist() == [[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]]
    assert counts.sum() == int((experts >= 0).sum())


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="permutation"):
        Language("x", "f", bytes(256))
    with pytest.raises(TypeError):
        multilanguage_corpus("text")  # type: ignore[arg-type]
    lang = default_languages()[0]
    with pytest.raises(ValueError, match="distinct"):
        multilanguage_corpus(_tiny_corpus(), languages=(lang, lang))
    mc = multilanguage_corpus(_tiny_corpus())
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="split"):
        mc.get_batch("test", batch_size=2, block_size=4, generator=gen)
    with pytest.raises(ValueError, match="block_size"):
        mc.get_batch("val", batch_size=2, block_size=500, generator=gen)
    with pytest.raises(ValueError, match="language"):
        mc.get_batch("val", batch_size=2, block_size=4, generator=gen, language=6)
    with pytest.raises(TypeError, match="generator"):
        mc.get_batch("val", batch_size=2, block_size=4, generator=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tokens"):
        shared_byte_mask(torch.zeros(3), mc.languages)
    with pytest.raises(ValueError, match="experts"):
        language_expert_counts(torch.tensor([[5]]), torch.tensor([0]), 3, 2)
    with pytest.raises(ValueError, match="language"):
        language_expert_counts(torch.tensor([[0]]), torch.tensor([2]), 3, 2)
    with pytest.raises(ValueError, match="counts"):
        normalized_mutual_information(torch.zeros(2, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="groups"):
        normalized_mutual_information(torch.ones(2, 2, dtype=torch.float64), groups=torch.tensor([0]))


def test_within_family_mutual_information() -> None:
    # Two families of two dialects. Families use disjoint experts; dialects inside a family share.
    shared = torch.tensor([[2.0, 2.0, 0.0, 0.0], [2.0, 2.0, 0.0, 0.0], [0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, 2.0]])
    fam = torch.tensor([0, 0, 1, 1])
    assert normalized_mutual_information(shared, groups=fam) == pytest.approx(1.0)
    assert normalized_mutual_information(shared, groups=fam, within=True) == pytest.approx(0.0)
    assert normalized_mutual_information(shared) == pytest.approx(0.5)  # 1 bit of 2 bits
    # Each dialect its own expert: within-family NMI 1, and chain rule I(L;E) = I(F;E) + I(L;E|F).
    own = torch.eye(4, dtype=torch.float64)
    assert normalized_mutual_information(own, groups=fam, within=True) == pytest.approx(1.0)
    gen = torch.Generator().manual_seed(0)
    c = torch.rand(6, 8, generator=gen, dtype=torch.float64) * 10
    fam6 = torch.tensor([0, 0, 1, 1, 2, 2])
    h_lang = -(c.sum(1) / c.sum() * torch.log(c.sum(1) / c.sum())).sum()
    pf = torch.zeros(3, dtype=torch.float64).index_add_(0, fam6, c.sum(1)) / c.sum()
    h_fam = -(pf * torch.log(pf)).sum()
    total = normalized_mutual_information(c) * h_lang
    parts = normalized_mutual_information(c, groups=fam6) * h_fam + \
        normalized_mutual_information(c, groups=fam6, within=True) * (h_lang - h_fam)
    assert float(total) == pytest.approx(float(parts))
    with pytest.raises(ValueError, match="within"):
        normalized_mutual_information(own, within=True)
