"""Tests of labkit.mpc.prg: private generators are fresh and unpicklable, insecure ones reproducible."""

from __future__ import annotations

import pickle

import pytest
import torch

import labkit.mpc as mpc
from labkit.mpc.prg import PRG, SEED_BYTES, insecure_prg
from labkit.mpc.ring import random_ring, top_byte
from labkit.mpc.sharing import chi_square_uniform


def test_words_are_uniform_64_bit_and_each_draw_is_new() -> None:
    rng = PRG(b"k" * 32)
    first, second = rng.words((256 * 40,)), rng.words((256 * 40,))
    assert rng.draws == 2 and first.dtype == torch.int64 and not torch.equal(first, second)
    bits = torch.stack([(first >> k) & 1 for k in range(64)]).double().mean(dim=1)
    assert float((bits - 0.5).abs().max()) < 0.05  # every bit, sign included, about half ones
    assert chi_square_uniform(top_byte(first), bins=256).pvalue > 1e-6
    assert rng.words((0, 3)).shape == (0, 3) and rng.words(()).shape == ()


def test_the_same_key_replays_the_same_draws_and_a_fresh_key_does_not() -> None:
    a, b = PRG(b"\x01" * 32), PRG(b"\x01" * 32)
    assert torch.equal(a.words((5,)), b.words((5,))) and torch.equal(a.words((2, 3)), b.words((2, 3)))
    x, y = PRG.from_os(), PRG.from_os()
    assert len(x.seed) == SEED_BYTES and x.seed != y.seed
    assert not torch.equal(random_ring((8,), generator=x), random_ring((8,), generator=y))


def test_insecure_generators_derive_from_the_public_seed_and_rank() -> None:
    assert torch.equal(insecure_prg(3, 2).words((4,)), insecure_prg(3, 2).words((4,)))
    assert insecure_prg(3, 2).seed != insecure_prg(3, 1).seed != insecure_prg(4, 1).seed
    with pytest.raises(ValueError, match="seed"):
        insecure_prg(-1, 0)


def test_the_seed_cannot_leave_by_pickling_or_printing() -> None:
    rng = PRG.from_os()
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(rng)
    assert rng.seed.hex() not in repr(rng) and "private" in repr(rng)


def test_bad_arguments() -> None:
    with pytest.raises(TypeError, match="bytes"):
        PRG("not bytes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="16 bytes"):
        PRG(b"short")
    with pytest.raises(ValueError, match="shape"):
        PRG.from_os().words((-1,))
    with pytest.raises(TypeError, match="PRG or a torch.Generator"):
        mpc.random_ring((3,), generator=7)  # type: ignore[arg-type]
