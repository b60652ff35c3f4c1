"""A synthetic multi-language byte corpus, and how language-specific an MoE's routing is (Post-MoE).

Paper: "Efficiently Democratizing Medical LLMs for 50 Languages via a Mixture of Language Family
Experts" (Post-MoE).

Post-MoE reads the routing of a multilingual MoE layer by layer and finds the information flow
"spreads out in the end": early layers route tokens of all languages alike, late layers route
them by language. So it keeps the early layers dense and makes only the late ones sparse, and it
groups languages into families that share experts. To see this on a laptop we need languages
with a known family tree. :func:`default_languages` builds them from Python source by
deterministic byte maps, every map a permutation of the 256 byte values, so each language is a
parallel "translation" of the same text, byte for byte:

- a *script* per family: the Latin letters as they are, the letters Caesar-shifted by 13 (same
  bytes, different statistics) or moved to a private range of high bytes (disjoint bytes, like a
  different writing system);
- a *dialect* per language inside a family: the vowels as they are, or rotated
  (a->e->i->o->u->a), which changes every word but keeps its consonant skeleton.

Whitespace, digits and punctuation are the same in every language, so they can only be told
apart by context; that is where :func:`shared_byte_mask` looks.

What the miniature leaves out: real languages and the medical data, translation between them,
unequal amounts of data per language, and Post-MoE's language-family expert assignment (here
routing is learned freely and then measured).

Shapes: B batch, T block size, N tokens, k experts per token, E experts, M languages, F families.
Section: chapter 05, "Post-MoE: where routing turns language-specific".
"""

from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass

import torch

from labkit.data.corpus import TextCorpus
from labkit.validation import check_int

__all__ = ["Language", "MultiLanguageCorpus", "default_languages", "language_expert_counts",
           "multilanguage_corpus", "normalized_mutual_information", "shared_byte_mask"]

_LOWER, _UPPER = string.ascii_lowercase.encode(), string.ascii_uppercase.encode()
_HIGH_LOWER, _HIGH_UPPER = 0xA0, 0xC0  # start of the private "script" ranges, 26 bytes each


@dataclass(frozen=True)
class Language:
    """One synthetic language.

    Attributes:
        name: short name, e.g. ``"rot13-vowels"``.
        family: family name; languages of a family share a script.
        table: 256-byte translation table (a permutation of the byte values).
    """

    name: str
    family: str
    table: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.table, bytes) or sorted(self.table) != list(range(256)):
            raise ValueError(f"language {self.name!r}: table must be a permutation of the 256 byte values")


def _permutation(pairs: dict[int, int]) -> list[int]:
    """Identity on bytes except ``a -> b`` for each pair, completed to a permutation by swapping back."""
    table = list(range(256))
    for a, b in pairs.items():
        table[a] = b
    free = iter(sorted(set(range(256)) - set(table)))
    moved = set(pairs.values())
    for a in range(256):  # bytes whose image was taken by a mapped letter get the freed values
        if a not in pairs and a in moved:
            table[a] = next(free)
    return table


def _compose(*tables: list[int]) -> bytes:
    out = list(range(256))
    for t in tables:
        out = [t[v] for v in out]
    return bytes(out)


def default_languages() -> tuple[Language, ...]:
    """Three families (scripts) of two languages (dialects) each, six languages in all."""
    vowels = "aeiou"
    dialect = {ord(v): ord(vowels[(i + 1) % 5]) for i, v in enumerate(vowels)}
    dialect |= {ord(v.upper()): ord(vowels[(i + 1) % 5].upper()) for i, v in enumerate(vowels)}
    rot13 = {c: alpha[(i + 13) % 26] for alpha in (_LOWER, _UPPER) for i, c in enumerate(alpha)}
    high = {c: start + i for alpha, start in ((_LOWER, _HIGH_LOWER), (_UPPER, _HIGH_UPPER))
            for i, c in enumerate(alpha)}
    plain, rotated = list(range(256)), _permutation(dialect)
    scripts = {"latin": plain, "rot13": _permutation(rot13), "high": _permutation(high)}
    return tuple(Language(f"{family}-{name}", family, _compose(vowel_map, script))
                 for family, script in scripts.items()
                 for name, vowel_map in (("plain", plain), ("vowels", rotated)))


@dataclass(frozen=True, eq=False, repr=False)
class MultiLanguageCorpus:
    """The same text in M languages; windows are drawn from one language each.

    Quacks like :class:`labkit.data.corpus.TextCorpus` for :func:`labkit.lm.train_gpt` and
    :func:`labkit.lm.evaluate`: ``get_batch`` returns ``(x, y)``, or ``(x, y, language)`` with
    ``with_language=True``.

    Attributes:
        train, val: (M, L_train) and (M, L_val) uint8, row m is language m.
        languages: the M :class:`Language` objects.
        files_val: validation files of the source corpus (for cache keys).
        source: how it was built, independent of the Python version (for cache keys); ``""``
            when the source corpus has none.
    """

    train: torch.Tensor
    val: torch.Tensor
    languages: tuple[Language, ...]
    files_val: tuple[str, ...]
    vocab_size: int = 256
    source: str = ""

    def __repr__(self) -> str:
        names = ",".join(lang.name for lang in self.languages)
        return f"MultiLanguageCorpus({names}; {self.train.shape[1]:,} train and {self.val.shape[1]:,} val bytes each)"

    @property
    def families(self) -> tuple[str, ...]:
        """Family names in order of first appearance."""
        return tuple(dict.fromkeys(lang.family for lang in self.languages))

    def family_index(self) -> torch.Tensor:
        """(M,) int64 family of each language (index into :attr:`families`)."""
        fams = self.families
        return torch.tensor([fams.index(lang.family) for lang in self.languages])

    def get_batch(self, split: str, *, batch_size: int, block_size: int, generator: torch.Generator,
                  device: torch.device | str | None = None, language: int | None = None,
                  with_language: bool = False) -> tuple[torch.Tensor, ...]:
        """Random windows for next-byte prediction, each from one language (uniform, or ``language``).

        Returns:
            ``(x, y)`` (B, T) int64 with ``y`` shifted by one; and the language of each row,
            (B,) int64, when ``with_language``.
        """
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        data = self.train if split == "train" else self.val  # (M, L)
        check_int("batch_size", batch_size, 1)
        check_int("block_size", block_size, 1, data.shape[1] - 1)
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        if language is None:
            lang = torch.randint(len(self.languages), (batch_size,), generator=generator)
        else:
            lang = torch.full((batch_size,), check_int("language", language, 0, len(self.languages) - 1))
        starts = torch.randint(data.shape[1] - block_size, (batch_size,), generator=generator)
        window = data[lang[:, None], starts[:, None] + torch.arange(block_size + 1)].long()  # (B, T + 1)
        x, y = window[:, :-1], window[:, 1:]
        if device is not None:
            x, y, lang = x.to(device), y.to(device), lang.to(device)
        return (x, y, lang) if with_language else (x, y)


def multilanguage_corpus(corpus: TextCorpus, *, languages: tuple[Language, ...] | None = None,
                         max_bytes: int | None = None) -> MultiLanguageCorpus:
    """Translate a byte corpus into every language (parallel text: the same bytes, mapped).

    Args:
        corpus: the source, e.g. :func:`labkit.data.corpus.stdlib_corpus`.
        languages: defaults to :func:`default_languages`.
        max_bytes: keep at most this many training bytes per language (validation stays whole).

    Returns:
        :class:`MultiLanguageCorpus` with M = len(languages) rows per split.
    """
    if not isinstance(corpus, TextCorpus):
        raise TypeError(f"corpus must be a labkit TextCorpus, got {type(corpus).__name__}")
    languages = default_languages() if languages is None else tuple(languages)
    if not languages or not all(isinstance(lang, Language) for lang in languages):
        raise TypeError("languages must be a non-empty sequence of Language")
    if len({lang.name for lang in languages}) != len(languages):
        raise ValueError("language names must be distinct")
    train = corpus.train if max_bytes is None else corpus.train[:check_int("max_bytes", max_bytes, 1000)]

    def translate(data: torch.Tensor) -> torch.Tensor:
        blob = data.numpy().tobytes()
        rows = [torch.frombuffer(bytearray(blob.translate(lang.table)), dtype=torch.uint8) for lang in languages]
        return torch.stack(rows)  # (M, L)

    source = ""
    if corpus.source:
        tables = hashlib.sha256(b"".join(lang.name.encode() + lang.table for lang in languages)).hexdigest()[:16]
        source = f"multilanguage_corpus({corpus.source}, languages={tables}, max_bytes={max_bytes})"
    return MultiLanguageCorpus(train=translate(train), val=translate(corpus.val), languages=languages,
                               files_val=corpus.files_val, source=source)


def shared_byte_mask(tokens: torch.Tensor, languages: tuple[Language, ...]) -> torch.Tensor:
    """True where a byte means the same in every language (mapped to itself by every table).

    Routing of such bytes can depend on the language only through context, not the byte itself.

    Args:
        tokens: int64 byte tokens of any shape.

    Returns:
        bool tensor of the same shape.
    """
    if not isinstance(tokens, torch.Tensor) or tokens.is_floating_point():
        raise ValueError(f"tokens must be an integer tensor, got {type(tokens).__name__}")
    fixed = torch.ones(256, dtype=torch.bool)
    for lang in languages:
        fixed &= torch.tensor(list(lang.table)) == torch.arange(256)
    return fixed.to(tokens.device)[tokens.long()]


def language_expert_counts(experts: torch.Tensor, language: torch.Tensor, n_experts: int,
                           n_languages: int) -> torch.Tensor:
    """How often each language's tokens went to each expert: one count per (token, choice).

    Args:
        experts: (N, k) int64 experts of one layer (-1 = dropped, not counted).
        language: (N,) int64 language of each token.
        n_experts: E; n_languages: M.

    Returns:
        (M, E) float64 counts.
    """
    check_int("n_experts", n_experts, 1)
    check_int("n_languages", n_languages, 1)
    if not isinstance(experts, torch.Tensor) or experts.dim() != 2 or experts.dtype != torch.int64:
        raise ValueError(f"experts must be an int64 tensor (N, k), got {type(experts).__name__}")
    if not isinstance(language, torch.Tensor) or language.shape != experts.shape[:1] or language.is_floating_point():
        raise ValueError(f"language must be an integer tensor ({experts.shape[0]},)")
    if experts.numel() and int(experts.max()) >= n_experts:
        raise ValueError(f"experts must lie in [0, {n_experts})")
    if language.numel() and not 0 <= int(language.min()) <= int(language.max()) < n_languages:
        raise ValueError(f"language must lie in [0, {n_languages})")
    lang = language[:, None].expand_as(experts)  # (N, k)
    keep = experts >= 0
    flat = lang[keep] * n_experts + experts[keep]
    return torch.bincount(flat, minlength=n_languages * n_experts).double().view(n_languages, n_experts)


def _mi_and_entropy(counts: torch.Tensor) -> tuple[float, float]:
    """``I(row; column)`` and ``H(row)`` in nats of the joint distribution proportional to ``counts``."""
    joint = counts / counts.sum()
    p_row, p_col = joint.sum(1, keepdim=True), joint.sum(0, keepdim=True)
    mi = torch.where(joint > 0, joint * torch.log(joint / (p_row * p_col)), torch.zeros_like(joint)).sum()
    h = -torch.where(p_row > 0, p_row * torch.log(p_row), torch.zeros_like(p_row)).sum()
    return float(mi), float(h)


def normalized_mutual_information(counts: torch.Tensor, *, groups: torch.Tensor | None = None,
                                  within: bool = False) -> float:
    """``I(language; expert) / H(language)`` from a (M, E) contingency table.

    0 when routing ignores the language; 1 when the expert reveals the language.

    Args:
        counts: (M, E) from :func:`language_expert_counts`.
        groups: optional (M,) int64 family of each language. Then, by default, rows are summed
            per family first, measuring ``I(family; expert) / H(family)``; with ``within=True``
            the language is measured *inside* its family instead,
            ``I(language; expert | family) / H(language | family)``: how differently the router
            treats the dialects of one family.
        within: see ``groups``.

    Returns:
        A number in [0, 1] (0 when the measured entropy is zero).
    """
    if not isinstance(counts, torch.Tensor) or counts.dim() != 2 or not counts.is_floating_point():
        raise ValueError("counts must be a 2-D float tensor (M, E)")
    if bool((counts < 0).any()) or not float(counts.sum()) > 0:
        raise ValueError("counts must be non-negative with a positive total")
    if groups is None:
        if within:
            raise ValueError("within=True needs groups")
        mi, h = _mi_and_entropy(counts)
        return mi / h if h > 0 else 0.0
    if not isinstance(groups, torch.Tensor) or groups.shape != counts.shape[:1] or groups.is_floating_point():
        raise ValueError(f"groups must be an integer tensor ({counts.shape[0]},) of family indices")
    if int(groups.min()) < 0:
        raise ValueError("groups must be >= 0")
    if not within:
        summed = torch.zeros(int(groups.max()) + 1, counts.shape[1], dtype=counts.dtype)
        mi, h = _mi_and_entropy(summed.index_add_(0, groups.long(), counts))
        return mi / h if h > 0 else 0.0
    total, mi_sum, h_sum = float(counts.sum()), 0.0, 0.0
    for g in torch.unique(groups).tolist():  # I(L; E | F) = sum_f p(f) I(L; E | F = f), same for H
        rows = counts[groups == g]
        if float(rows.sum()) > 0:
            mi, h = _mi_and_entropy(rows)
            mi_sum, h_sum = mi_sum + float(rows.sum()) / total * mi, h_sum + float(rows.sum()) / total * h
    return mi_sum / h_sum if h_sum > 0 else 0.0
