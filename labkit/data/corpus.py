"""A byte-level text corpus from Python's own standard library.

Every machine that runs the book (a laptop, CI, Colab) has a CPython standard library on
disk, so its ``*.py`` sources make a corpus of a few megabytes that needs no download and no
licence check. Tokens are raw bytes (``vocab_size = 256``), so there is no tokenizer to
train or ship; the character-level GPT chapters read it the way nanoGPT reads Shakespeare.

The files are shuffled with a seed *before* the train/validation split and the split is by
file, so validation holds whole unseen files of every kind of code rather than the tail of
an alphabetical listing (which would put, say, all of ``xml/`` in validation).

What the miniature leaves out: no deduplication, no licence headers stripped, no
tokenizer beyond bytes. The content depends on the Python version that runs it.

Shapes: B batch size, T block (context) length, L length of a split in bytes.
Section: chapter 05, "Top-k routing from scratch" (the tiny GPT's corpus, reused by chapters 10 and 14).
"""

from __future__ import annotations

import os
import sys
import sysconfig
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from labkit.cache import cache_dir, cache_key
from labkit.validation import check_int, check_tensor, check_tokens

__all__ = ["TextCorpus", "stdlib_corpus", "FILE_SEPARATOR"]

#: Put between two files when they are joined; the file's relative path follows it.
FILE_SEPARATOR = "\n\n# ==== file: {path} ====\n\n"
_EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3", "__pycache__"})
_MAX_FILE_BYTES = 200_000
_FORMAT_VERSION = 1  # bump when the layout of the corpus changes, to invalidate caches
_SPLITS = ("train", "val")


@dataclass(frozen=True, eq=False, repr=False)
class TextCorpus:
    """A byte-level corpus split by file into training and validation streams.

    Attributes:
        train: the training bytes, uint8, shape (L_train,).
        val: the validation bytes, uint8, shape (L_val,).
        files_train: relative paths of the files in ``train``, in order.
        files_val: relative paths of the files in ``val``, in order.
        vocab_size: number of token values (256 for bytes).
        source: how the corpus was built, the same on every Python version (e.g. the arguments
            of :func:`stdlib_corpus`), for the cache keys of models trained on it; ``""`` for a
            corpus built by hand (keys then use its content).
    """

    train: torch.Tensor
    val: torch.Tensor
    files_train: tuple[str, ...]
    files_val: tuple[str, ...]
    vocab_size: int = 256
    source: str = ""

    def __post_init__(self) -> None:
        for name in _SPLITS:
            data = getattr(self, name)
            check_tensor(f"TextCorpus: {name}", data, dims=1, dtype=torch.uint8)

    def __repr__(self) -> str:
        return (
            f"TextCorpus(train={self.train.numel():,} bytes from {len(self.files_train)} files, "
            f"val={self.val.numel():,} bytes from {len(self.files_val)} files, vocab_size={self.vocab_size})"
        )

    def split(self, name: str) -> torch.Tensor:
        """Return the byte stream of ``name`` ("train" or "val"), shape (L,)."""
        if name not in _SPLITS:
            raise ValueError(f"split must be 'train' or 'val', got {name!r}")
        return self.train if name == "train" else self.val

    def decode(self, tokens: torch.Tensor | Sequence[int]) -> str:
        """Turn byte tokens back into text (UTF-8, undecodable bytes become U+FFFD).

        Args:
            tokens: integer token ids in [0, 255], a 1-D tensor or a sequence of ints.

        Returns:
            The decoded string.
        """
        if isinstance(tokens, torch.Tensor):
            tokens = check_tokens("decode: tokens", tokens, dims=1, vocab_size=self.vocab_size)
            blob = tokens.detach().cpu().to(torch.uint8).numpy().tobytes()
        else:
            values = list(tokens)
            if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 256 for v in values):
                raise ValueError("decode: tokens must be integers in [0, 255]")
            blob = bytes(values)
        return blob.decode("utf-8", errors="replace")

    def encode(self, text: str) -> torch.Tensor:
        """Turn text into byte tokens: UTF-8 bytes as int64, shape (L,)."""
        if not isinstance(text, str):
            raise TypeError(f"encode: text must be a str, got {type(text).__name__}")
        return torch.tensor(list(text.encode("utf-8")), dtype=torch.int64)

    def get_batch(
        self,
        split: str,
        *,
        batch_size: int,
        block_size: int,
        generator: torch.Generator,
        device: torch.device | str | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample random windows of ``split`` for next-byte prediction.

        Args:
            split: "train" or "val".
            batch_size: B, number of windows.
            block_size: T, window length; must be shorter than the split.
            generator: the torch generator that picks the window starts (CPU).
            device: where to put the batch (default: CPU).

        Returns:
            ``(x, y)`` with ``y[:, t] == x[:, t + 1]`` for ``t < T - 1`` and ``y[:, -1]`` the
            byte after the window.

        Shapes:
            x: (B, T) int64; y: (B, T) int64.
        """
        data = self.split(split)
        check_int("batch_size", batch_size, 1)
        check_int("block_size", block_size, 1)
        if block_size >= data.numel():
            raise ValueError(
                f"block_size must be smaller than the {split} split ({data.numel()} bytes), got {block_size}"
            )
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        starts = torch.randint(data.numel() - block_size, (batch_size,), generator=generator)
        index = starts[:, None] + torch.arange(block_size + 1)  # (B, T + 1)
        window = data[index].long()  # (B, T + 1)
        x, y = window[:, :-1], window[:, 1:]  # (B, T) each
        if device is not None:
            x, y = x.to(device), y.to(device)
        return x, y


def stdlib_corpus(*, max_bytes: int = 3_000_000, val_fraction: float = 0.1, seed: int = 0) -> TextCorpus:
    """Build (or load from the cache) a byte corpus of the standard library's Python sources.

    The ``*.py`` files under ``sysconfig.get_paths()["stdlib"]`` (leaving out
    ``site-packages``, test suites, ``idlelib``, ``lib2to3`` and files over 200 kB) are
    sorted, shuffled with ``seed``, taken in that order until ``max_bytes`` is reached and
    split by file: the first files, about ``val_fraction`` of the bytes, go to validation.
    Files are joined with :data:`FILE_SEPARATOR` (which names the next file).

    The content depends on the Python version (and its standard library), so the cache key
    includes it; two machines with the same CPython version get the same corpus.

    Args:
        max_bytes: upper bound on the bytes of both splits together, at least 10_000.
        val_fraction: share of the bytes for validation, in (0, 0.5).
        seed: seed of the file shuffle, a non-negative int.

    Returns:
        A :class:`TextCorpus`. The first call reads the files (well under a second for
        3 MB) and saves a ``.pt`` file under ``cache_dir("corpus")``; later calls load it.

    Shapes:
        train: (L_train,) uint8; val: (L_val,) uint8, L_train + L_val <= max_bytes.
    """
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 10_000:
        raise ValueError(f"max_bytes must be an int >= 10_000, got {max_bytes!r}")
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 0.5:
        raise ValueError(f"val_fraction must be a float in (0, 0.5), got {val_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    key = cache_key(
        python=".".join(map(str, sys.version_info[:3])),
        implementation=sys.implementation.name,
        stdlib=str(stdlib),
        max_bytes=max_bytes,
        val_fraction=float(val_fraction),
        seed=seed,
        format=_FORMAT_VERSION,
    )
    path = cache_dir("corpus") / f"stdlib-{key}.pt"
    source = (f"stdlib_corpus(max_bytes={max_bytes}, val_fraction={float(val_fraction)}, seed={seed}, "
              f"format={_FORMAT_VERSION})")  # what the corpus is made of, not the bytes this Python has
    if path.exists():
        try:
            return replace(_from_record(torch.load(path, weights_only=True)), source=source)
        except Exception:  # a truncated or stale file: rebuild it below
            pass
    corpus = _build(stdlib, max_bytes=max_bytes, val_fraction=float(val_fraction), seed=seed)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save(_to_record(corpus), tmp)
    os.replace(tmp, path)  # atomic, so a concurrent reader never sees half a file
    return replace(corpus, source=source)


def _list_sources(stdlib: Path) -> list[tuple[str, int]]:
    """Sorted (relative POSIX path, size in bytes) of the eligible ``*.py`` files under ``stdlib``."""
    found = []
    for folder, subdirs, names in os.walk(stdlib):
        subdirs[:] = [d for d in subdirs if d not in _EXCLUDED_DIRS]
        for name in names:
            full = Path(folder, name)
            if name.endswith(".py") and full.is_file() and (size := full.stat().st_size) <= _MAX_FILE_BYTES:
                found.append((full.relative_to(stdlib).as_posix(), size))
    if not found:
        raise FileNotFoundError(f"no Python sources found under the standard library at {stdlib}")
    return sorted(found)


def _build(stdlib: Path, *, max_bytes: int, val_fraction: float, seed: int) -> TextCorpus:
    files = _list_sources(stdlib)
    order = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed)).tolist()
    chunks: list[tuple[str, bytes]] = []
    total = 0
    for i in order:  # shuffled before the split, so both splits mix every kind of code
        name, size = files[i]
        header = FILE_SEPARATOR.format(path=name).encode()
        if total + len(header) + size > max_bytes:
            continue  # a smaller file further on may still fit
        chunk = header + (stdlib / name).read_bytes()
        if total + len(chunk) > max_bytes:  # the file grew since it was listed
            continue
        chunks.append((name, chunk))
        total += len(chunk)
    if len(chunks) < 2:
        raise ValueError(f"max_bytes={max_bytes} leaves fewer than two files; raise it")

    n_val, val_bytes = 0, 0
    while n_val < len(chunks) - 1 and val_bytes < val_fraction * total:
        val_bytes += len(chunks[n_val][1])
        n_val += 1
    val_part, train_part = chunks[:n_val], chunks[n_val:]
    return TextCorpus(
        train=_to_tensor(b"".join(c for _, c in train_part)),
        val=_to_tensor(b"".join(c for _, c in val_part)),
        files_train=tuple(name for name, _ in train_part),
        files_val=tuple(name for name, _ in val_part),
    )


def _to_tensor(blob: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(blob), dtype=torch.uint8)


def _to_record(corpus: TextCorpus) -> dict:
    return {
        "train": corpus.train,
        "val": corpus.val,
        "files_train": list(corpus.files_train),
        "files_val": list(corpus.files_val),
        "vocab_size": corpus.vocab_size,
    }


def _from_record(record: dict) -> TextCorpus:
    return TextCorpus(
        train=record["train"],
        val=record["val"],
        files_train=tuple(record["files_train"]),
        files_val=tuple(record["files_val"]),
        vocab_size=int(record["vocab_size"]),
    )
