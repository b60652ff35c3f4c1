"""Tests of labkit.mpc.sharing: shares reconstruct, look uniform, and bad input is refused."""

from __future__ import annotations

import pytest
import torch

from labkit.mpc.ring import encode, top_byte
from labkit.mpc.prg import PRG
from labkit.mpc.sharing import (chi_square_uniform, ks_two_sample, reconstruct, reconstruct_xor, share,
                                share_xor)


def test_hand_example_two_shares() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.tensor([5, -3, 0])
    s0, s1 = share(x, generator=g)
    assert torch.equal(s0 + s1, x)  # wrap-around sum
    assert torch.equal(reconstruct([s0, s1]), x)
    assert not torch.equal(s1, x)


@pytest.mark.parametrize("n_parties", [2, 3, 5])
def test_any_number_of_shares_reconstructs(n_parties: int) -> None:
    g = torch.Generator().manual_seed(n_parties)
    x = encode(torch.randn(7, 3, generator=g))
    shares = share(x, n_parties=n_parties, generator=g)
    assert len(shares) == n_parties
    assert torch.equal(reconstruct(shares), x)
    words = torch.randint(-(2**62), 2**62, (9,), generator=g)
    assert torch.equal(reconstruct_xor(share_xor(words, n_parties=n_parties, generator=g)), words)


def test_a_single_share_is_uniform_whatever_the_secret() -> None:
    g = torch.Generator().manual_seed(3)
    n = 256 * 40
    secret = encode(torch.full((n,), 3.25))  # a fixed, small secret: its top byte is always 0
    assert int(top_byte(secret).unique().numel()) == 1
    s0, s1 = share(secret, generator=g)
    for s in (s0, s1):
        assert chi_square_uniform(top_byte(s), bins=256).pvalue > 1e-4
        assert chi_square_uniform(s & 0xFF, bins=256).pvalue > 1e-4


def test_two_sample_test_cannot_tell_two_secrets_apart_but_catches_a_short_mask() -> None:
    n = 4096
    small, large = encode(torch.full((n,), 3.25)), encode(torch.full((n,), -1e6))
    rng = PRG.from_os()  # fresh randomness: the bound holds for any draw with probability 1 - 2e-6
    for party in (0, 1):
        test = ks_two_sample(share(small, generator=rng)[party], share(large, generator=rng)[party])
        assert test.pvalue > 1e-6 and test.n == test.m == n
    for bits in (24, 32):  # a mask of 24 or 32 random bits instead of 64: the two secrets stand apart
        mask = lambda: rng.words((n,)) & ((1 << bits) - 1)
        leaky = ks_two_sample(small - mask(), large - mask())
        assert leaky.statistic > 0.9 and leaky.pvalue < 1e-12


def test_ks_two_sample_by_hand() -> None:
    a = torch.arange(100)
    same = ks_two_sample(a, a.flip(0))
    assert same.statistic == 0.0 and same.pvalue == 1.0
    half = ks_two_sample(a, a + 50)  # the empirical CDFs differ by at most one half
    assert half.statistic == pytest.approx(0.5) and half.pvalue < 1e-4
    with pytest.raises(TypeError, match="integer"):
        ks_two_sample(torch.rand(50), a)
    with pytest.raises(ValueError, match="at least 20"):
        ks_two_sample(a[:5], a)


def test_chi_square_detects_non_uniform_data() -> None:
    skewed = torch.cat([torch.zeros(2000, dtype=torch.int64), torch.arange(256).repeat(20)])
    assert chi_square_uniform(skewed, bins=256).pvalue < 1e-10
    flat = torch.arange(256).repeat(20)
    test = chi_square_uniform(flat, bins=256)
    assert test.statistic == 0.0 and test.pvalue == pytest.approx(1.0) and test.dof == 255


def test_bad_inputs() -> None:
    g = torch.Generator().manual_seed(0)
    with pytest.raises(TypeError, match="int64"):
        share(torch.tensor([1.0]), generator=g)
    with pytest.raises(ValueError, match="n_parties"):
        share(torch.tensor([1]), n_parties=1, generator=g)
    with pytest.raises(ValueError, match="at least 2"):
        reconstruct([torch.tensor([1])])
    with pytest.raises(ValueError, match="one shape"):
        reconstruct([torch.tensor([1]), torch.tensor([1, 2])])
    with pytest.raises(TypeError):
        reconstruct(torch.tensor([1, 2]))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="samples per bin"):
        chi_square_uniform(torch.arange(10), bins=256)
    with pytest.raises(ValueError, match="range"):
        chi_square_uniform(torch.arange(2000), bins=256)
    with pytest.raises(TypeError):
        chi_square_uniform(torch.rand(2000), bins=256)
    with pytest.raises(TypeError, match="generator"):
        share(torch.tensor([1]), generator=3)  # type: ignore[arg-type]
