"""Tests of labkit.mpc.attack: P1 recovers P0's secret from one product exactly when the dealer's
randomness comes from a public seed (or the dealer colludes), and learns nothing otherwise."""

from __future__ import annotations

import pytest
import torch

import labkit.mpc as mpc
from labkit.mpc import attack
from labkit.mpc.programs import op_program

N = 4096


def _product(**kw) -> tuple[torch.Tensor, mpc.MPCRun]:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(N, generator=g) * 10, torch.randn(N, generator=g)
    return x, mpc.run(op_program, args=("mul", (N,), (N,)), inputs={0: x, 1: y}, keep_payloads=True, **kw)


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.double(), b.double()]))[0, 1])


def test_a_public_seed_lets_p1_unmask_the_opened_value() -> None:
    x, run = _product(insecure_seed=3)
    view = attack.product_view(run.log, shape_x=(N,), shape_y=(N,))
    got = attack.recover_by_replay(view, range(8))
    assert got.seed == 3 and got.tried == 4  # confirmed: the replay gave back P1's own pieces
    assert torch.equal(got.secret, mpc.encode(x))  # every element, exactly


def test_private_randomness_leaves_p1_with_noise() -> None:
    x, run = _product()
    view = attack.product_view(run.log, shape_x=(N,), shape_y=(N,))
    got = attack.recover_by_replay(view, range(8))
    assert got.seed is None and got.tried == 8  # no candidate reproduces P1's pieces
    assert int((got.secret == mpc.encode(x)).sum()) == 0
    assert abs(_corr(mpc.decode(got.secret), x)) < 5 / N**0.5  # |corr| of independent samples: ~1 / sqrt(N)


def test_a_colluding_dealer_breaks_even_private_randomness() -> None:
    x, run = _product()
    view = attack.product_view(run.log, shape_x=(N,), shape_y=(N,))
    to_p0 = next(m for m in run.log.messages if m.kind == "dealer" and m.receiver == 0)  # what the dealer knows
    assert torch.equal(attack.recover_with_dealer(view, to_p0.payload[:N]), mpc.encode(x))


def test_bad_views() -> None:
    x, run = _product()
    with pytest.raises(ValueError, match="no Beaver product"):
        attack.product_view(run.log, shape_x=(N,), shape_y=(N,), scope="matmul")
    plain = mpc.run(op_program, args=("mul", (4,), (4,)), inputs={0: torch.ones(4), 1: torch.ones(4)})
    with pytest.raises(ValueError, match="keep_payloads"):
        attack.product_view(plain.log, shape_x=(4,), shape_y=(4,))
    view = attack.product_view(run.log, shape_x=(N,), shape_y=(N,))
    with pytest.raises(ValueError, match="at least one"):
        attack.recover_by_replay(view, [])
