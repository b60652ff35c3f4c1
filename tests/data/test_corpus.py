"""Tests for labkit.data.corpus: the standard-library byte corpus."""

from __future__ import annotations

import socket
import sysconfig
from pathlib import Path

import pytest
import torch

from labkit.data import corpus as corpus_module
from labkit.data import FILE_SEPARATOR, TextCorpus, make_generator, stdlib_corpus

SMALL = 60_000  # bytes: enough for a few dozen files, fast to build


@pytest.fixture(autouse=True)
def _tmp_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LABKIT_CACHE_DIR", str(tmp_path))
    return tmp_path


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("labkit.data must not open network connections")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def _tiny(train: bytes = bytes(range(20)), val: bytes = b"hello world") -> TextCorpus:
    return TextCorpus(
        train=torch.tensor(list(train), dtype=torch.uint8),
        val=torch.tensor(list(val), dtype=torch.uint8),
        files_train=("a.py",),
        files_val=("b.py",),
    )


# --- hand-checked examples ----------------------------------------------------------------


def test_get_batch_on_a_counting_stream_shifts_by_one() -> None:
    corpus = _tiny()  # train is 0, 1, ..., 19, so every window counts up by one
    x, y = corpus.get_batch("train", batch_size=5, block_size=4, generator=make_generator(0))
    assert x.shape == y.shape == (5, 4)
    assert x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:] - x[:, :-1], torch.ones(5, 3, dtype=torch.int64))
    assert torch.equal(y, x + 1)
    assert int(x.min()) >= 0 and int(y.max()) <= 19


def test_decode_and_encode_hand_example() -> None:
    corpus = _tiny()
    assert corpus.decode(torch.tensor([104, 105])) == "hi"
    assert corpus.decode([0xC3, 0xA9]) == "\u00e9"  # é in UTF-8
    assert corpus.decode([0xFF]) == "\ufffd"  # invalid UTF-8 is replaced, not raised
    assert corpus.decode(corpus.val) == "hello world"
    assert torch.equal(corpus.encode("hi"), torch.tensor([104, 105]))
    assert corpus.vocab_size == 256


def test_corpus_is_the_separated_sources_in_order() -> None:
    corpus = stdlib_corpus(max_bytes=SMALL, seed=0)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for files, data in ((corpus.files_train, corpus.train), (corpus.files_val, corpus.val)):
        expected = b"".join(FILE_SEPARATOR.format(path=f).encode() + (stdlib / f).read_bytes() for f in files)
        assert bytes(data.numpy()) == expected
    assert corpus.train.dtype == corpus.val.dtype == torch.uint8
    assert corpus.train.dim() == corpus.val.dim() == 1


# --- invariants ----------------------------------------------------------------------------


def test_sizes_split_and_file_filters() -> None:
    corpus = stdlib_corpus(max_bytes=SMALL, val_fraction=0.2, seed=0)
    total = corpus.train.numel() + corpus.val.numel()
    assert 0.5 * SMALL < total <= SMALL
    assert not set(corpus.files_train) & set(corpus.files_val)
    assert corpus.files_train and corpus.files_val
    # Validation takes whole files until it holds at least val_fraction of the bytes.
    assert corpus.val.numel() >= 0.2 * total
    assert corpus.val.numel() < 0.5 * total
    for name in corpus.files_train + corpus.files_val:
        parts = Path(name).parts
        assert name.endswith(".py")
        assert not {"site-packages", "test", "tests", "idlelib", "lib2to3"} & set(parts)


def test_files_are_shuffled_before_the_split() -> None:
    corpus = stdlib_corpus(max_bytes=SMALL, seed=0)
    order = list(corpus.files_val + corpus.files_train)
    assert order != sorted(order)


def test_same_seed_same_corpus_and_other_seed_differs(_tmp_cache: Path) -> None:
    first = stdlib_corpus(max_bytes=SMALL, seed=1)
    for path in (_tmp_cache / "corpus").iterdir():
        path.unlink()  # rebuild from the sources, not from the cache
    second = stdlib_corpus(max_bytes=SMALL, seed=1)
    assert torch.equal(first.train, second.train) and torch.equal(first.val, second.val)
    assert first.files_train == second.files_train and first.files_val == second.files_val
    other = stdlib_corpus(max_bytes=SMALL, seed=2)
    assert set(other.files_val) != set(first.files_val)


def test_second_call_loads_the_cache(_tmp_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = stdlib_corpus(max_bytes=SMALL, seed=0)
    cached = list((_tmp_cache / "corpus").glob("*.pt"))
    assert len(cached) == 1

    def no_rebuild(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached corpus should have been loaded")

    monkeypatch.setattr(corpus_module, "_build", no_rebuild)
    second = stdlib_corpus(max_bytes=SMALL, seed=0)
    assert torch.equal(first.train, second.train) and first.files_val == second.files_val


def test_a_corrupt_cache_file_is_rebuilt(_tmp_cache: Path) -> None:
    first = stdlib_corpus(max_bytes=SMALL, seed=0)
    (cached,) = (_tmp_cache / "corpus").glob("*.pt")
    cached.write_bytes(b"not a torch file")
    again = stdlib_corpus(max_bytes=SMALL, seed=0)
    assert torch.equal(first.val, again.val)


def test_batches_are_windows_of_the_split() -> None:
    corpus = stdlib_corpus(max_bytes=SMALL, seed=0)
    gen = make_generator(3)
    x, y = corpus.get_batch("val", batch_size=8, block_size=32, generator=gen)
    assert torch.equal(x[:, 1:], y[:, :-1])
    val_text = corpus.decode(corpus.val)
    for row in x:
        text = corpus.decode(row)
        assert text in val_text or "\ufffd" in text  # a window may cut a multi-byte character
    # Same generator seed, same batch.
    x2, y2 = corpus.get_batch("val", batch_size=8, block_size=32, generator=make_generator(3))
    assert torch.equal(x, x2) and torch.equal(y, y2)


def test_repr_is_short() -> None:
    text = repr(_tiny())
    assert "20 bytes" in text and len(text) < 200


# --- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_bytes": 9_999}, "max_bytes must be an int >= 10_000"),
        ({"max_bytes": 1e6}, "max_bytes must be an int"),
        ({"val_fraction": 0.0}, r"val_fraction must be a float in \(0, 0.5\)"),
        ({"val_fraction": 0.5}, r"val_fraction must be a float in \(0, 0.5\)"),
        ({"seed": -1}, "seed must be a non-negative int"),
        ({"seed": "0"}, "seed must be a non-negative int"),
    ],
)
def test_stdlib_corpus_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        stdlib_corpus(**kwargs)


def test_get_batch_rejects_bad_arguments() -> None:
    corpus = _tiny()
    gen = make_generator(0)
    with pytest.raises(ValueError, match="split must be 'train' or 'val'"):
        corpus.get_batch("test", batch_size=1, block_size=2, generator=gen)
    with pytest.raises(ValueError, match=r"block_size must be smaller than the val split \(11 bytes\)"):
        corpus.get_batch("val", batch_size=1, block_size=11, generator=gen)
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        corpus.get_batch("train", batch_size=0, block_size=2, generator=gen)
    with pytest.raises(TypeError, match="block_size must be an int, got float"):  # a wrong type
        corpus.get_batch("train", batch_size=1, block_size=2.5, generator=gen)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        corpus.get_batch("train", batch_size=1, block_size=2, generator=0)


def test_decode_and_constructor_reject_bad_tokens() -> None:
    corpus = _tiny()
    with pytest.raises(ValueError, match=r"tokens must be integers in \[0, 255\]"):
        corpus.decode([256])
    with pytest.raises(ValueError, match=r"tokens must be integers in \[0, 255\]"):
        corpus.decode(torch.tensor([-1, 3]))
    with pytest.raises(ValueError, match="tokens must be a 1-D integer tensor"):
        corpus.decode(torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="tokens must be a 1-D integer tensor"):  # float tokens: a wrong dtype
        corpus.decode(torch.zeros(3))
    with pytest.raises(TypeError, match="train must be a 1-D uint8 tensor"):
        TextCorpus(train=torch.zeros(4), val=torch.zeros(4, dtype=torch.uint8), files_train=(), files_val=())
